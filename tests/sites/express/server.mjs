// A small web site as express apps are written: express-session with its Redis store
// (connect-redis on the tests' redis-server), a sign-in form, sign-out, and `GET /api/me`,
// the endpoint the broker asks ([[session.endpoint]]). Test-only.
//
//   node server.mjs --port 0 --redis redis://127.0.0.1:PORT
//
// Prints one JSON line {"url": "http://127.0.0.1:PORT"} when it listens, and exits when its
// stdin closes (so a crashed test leaves no orphan).
//
// Routes:
//   POST /login   {"user": "alice", "roles": [...]}  signs in (a new session id, as on any login)
//   POST /logout                                     destroys the session in Redis
//   GET  /api/me                                     200 {"id","email","name","roles"} or 401
//   GET  /api/me-or-login                            200 as above, or 302 to /login (a page route)
//   GET  /__received                                 what every /api/me* request carried
import express from "express";
import session from "express-session";
import { RedisStore } from "connect-redis";
import { createClient } from "redis";

const arg = (name, fallback) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
};

const client = createClient({ url: arg("redis", "redis://127.0.0.1:6379") });
client.on("error", (e) => console.error("redis:", e.message));
await client.connect();

const app = express();
app.use(express.json());
app.use(
  session({
    store: new RedisStore({ client, prefix: "site:" }),
    secret: "express-site-test-secret",
    resave: false,
    saveUninitialized: false,
    cookie: { httpOnly: true, sameSite: "lax" },
  }),
);

// Everything the broker sent, so tests can tell what it forwards and what it does not.
const received = [];
const record = (req, _res, next) => {
  received.push({
    path: req.path,
    cookie: req.get("cookie") ?? null,
    authorization: req.get("authorization") ?? null,
    accept: req.get("accept") ?? null,
    userAgent: req.get("user-agent") ?? null,
    traceparent: req.get("traceparent") ?? null,
    forwarded: Object.keys(req.headers).filter((h) => h.startsWith("x-forwarded") || h === "forwarded"),
  });
  next();
};

const me = (req) => {
  const user = req.session.user;
  return user && { id: user.id, email: `${user.id}@example.com`, name: `User ${user.id}`, roles: user.roles };
};

app.post("/login", (req, res, next) => {
  const id = String(req.body?.user ?? "");
  if (!id) return res.status(400).json({ error: "user required" });
  req.session.regenerate((err) => {
    if (err) return next(err);
    req.session.user = { id, roles: req.body.roles ?? ["chat"] };
    req.session.save((err) => (err ? next(err) : res.status(204).end()));
  });
});

app.post("/logout", (req, res, next) => {
  req.session.destroy((err) => (err ? next(err) : res.clearCookie("connect.sid").status(204).end()));
});

app.get("/api/me", record, (req, res) => {
  const user = me(req);
  if (!user) return res.status(401).json({ error: "not signed in" });
  res.json(user);
});

app.get("/api/me-or-login", record, (req, res) => {
  const user = me(req);
  if (!user) return res.redirect(302, "/login?next=%2Fapi%2Fme-or-login");
  res.json(user);
});

app.get("/__received", (_req, res) => res.json(received));

const server = app.listen(Number(arg("port", "0")), "127.0.0.1", () => {
  const { port } = server.address();
  process.stdout.write(JSON.stringify({ url: `http://127.0.0.1:${port}` }) + "\n");
});

process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
