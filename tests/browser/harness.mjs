// Harness for the browser end-to-end tests: free ports, child processes (the broker, its Intellia
// simulator) that are always killed, broker config files, HS256 session JWTs, widget pages served
// from other origins, and Debian Chromium driven by playwright-core.
import { spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { createWriteStream, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(HERE, "..", "..");
export const ARTIFACTS = path.join(HERE, "artifacts");
export const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
export const BROKER_BIN = path.resolve(
  REPO,
  process.env.BROKER_BIN || path.join("target", "debug", "intellia-token-broker"),
);

mkdirSync(ARTIFACTS, { recursive: true });

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Rejects when `promise` takes longer than `ms`. */
export async function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** A free TCP port on 127.0.0.1: listen on port 0, read it, close. */
export async function freePort() {
  const server = net.createServer();
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

// ---- child processes ---------------------------------------------------------------------------

const children = new Set();

function killAllSync() {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) {
      try {
        child.kill("SIGKILL");
      } catch {
        // already gone
      }
    }
  }
}
// Last resort when the test process dies without running its after() hooks.
process.once("exit", killAllSync);
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.once(signal, () => {
    killAllSync();
    process.exit(130);
  });
}

/**
 * Starts `bin args`, logging its output to artifacts/<name>.log. Returns a handle with
 * `exited` (a promise), `tail()` (the last lines, for error messages) and `stop()`.
 */
export function startProcess(name, bin, args, { env } = {}) {
  const logPath = path.join(ARTIFACTS, `${name}.log`);
  const log = createWriteStream(logPath);
  const child = spawn(bin, args, {
    cwd: REPO,
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "info", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.add(child);
  let recent = "";
  let stopped = false;
  const keep = (chunk) => {
    log.write(chunk);
    recent = (recent + chunk.toString()).slice(-4000);
  };
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  const exited = new Promise((resolve) => {
    child.once("exit", (code, signal) => {
      children.delete(child);
      resolve({ code, signal });
    });
    child.once("error", (err) => {
      children.delete(child);
      keep(`spawn error: ${err.message}\n`);
      resolve({ code: -1, signal: null, error: err });
    });
  });
  return {
    name,
    child,
    logPath,
    exited,
    tail: () => recent,
    output: () => recent,
    async stop() {
      if (stopped) return;
      stopped = true;
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGTERM");
        const done = await Promise.race([exited.then(() => true), sleep(5000).then(() => false)]);
        if (!done) {
          child.kill("SIGKILL");
          await withTimeout(exited, 5000, `${name} to die after SIGKILL`);
        }
      }
      await new Promise((resolve) => log.end(resolve));
    },
  };
}

/** Polls `url` until `accept(status)` or the deadline; fails early when `proc` exits. */
export async function waitForHttp(url, { proc, timeoutMs = 30000, accept = (s) => s === 200 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last = "no answer";
  let exited = null;
  proc?.exited.then((r) => {
    exited = r;
  });
  while (Date.now() < deadline) {
    if (exited) {
      throw new Error(
        `${proc.name} exited (${JSON.stringify(exited)}) before ${url} was ready; its output:\n${proc.tail()}`,
      );
    }
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
      await res.arrayBuffer();
      if (accept(res.status)) return;
      last = `HTTP ${res.status}`;
    } catch (err) {
      last = err.cause?.code || err.message;
    }
    await sleep(100);
  }
  throw new Error(`${url} not ready after ${timeoutMs} ms (last: ${last})${proc ? `; output:\n${proc.tail()}` : ""}`);
}

// ---- sessions ----------------------------------------------------------------------------------

const b64url = (value) => Buffer.from(value).toString("base64url");

/** An HS256 JWT signed with node:crypto. */
export function signHs256(claims, secret) {
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify(claims));
  const sig = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

export const ISSUER = "https://auth.e2e.example";
export const AUDIENCE = "chat-widget";
export const COOKIE_NAME = "site_session";
export const ORG_ID = "org-e2e";

/** Session JWT for `sub`, valid for an hour. */
export function sessionJwt(secret, sub, extra = {}) {
  const now = Math.floor(Date.now() / 1000);
  return signHs256(
    {
      iss: ISSUER,
      aud: AUDIENCE,
      sub,
      email: `${sub}@example.com`,
      name: `Test ${sub}`,
      iat: now,
      exp: now + 3600,
      ...extra,
    },
    secret,
  );
}

// ---- the broker --------------------------------------------------------------------------------

const toml = (s) => JSON.stringify(s); // a JSON string is a valid TOML basic string here

/**
 * Writes a config for `serve` (keys as in the README's configuration reference) plus its secret files into `dir`.
 * Returns {configPath, hsSecret}.
 */
export function writeBrokerConfig(dir, { listen, intelliaUrl, allowedOrigins, perUser, cache = true }) {
  const apiKeyFile = path.join(dir, "intellia-api-key");
  const hsSecretFile = path.join(dir, "session-hs256-secret");
  const hsSecret = randomBytes(32).toString("hex");
  writeFileSync(apiKeyFile, "e2e-intellia-api-key\n", { mode: 0o600 });
  writeFileSync(hsSecretFile, `${hsSecret}\n`, { mode: 0o600 });
  const lines = [
    "[server]",
    `listen = ${toml(listen)}`,
    "",
    "[intellia]",
    `base_url = ${toml(intelliaUrl)}`,
    `organization_id = ${toml(ORG_ID)}`,
    `api_key_file = ${toml(apiKeyFile)}`,
    "",
    "[cors]",
    `allowed_origins = [${allowedOrigins.map(toml).join(", ")}]`,
    "",
    "[[session.jwt]]",
    `issuer = ${toml(ISSUER)}`,
    `audience = ${toml(AUDIENCE)}`,
    `hs256_secret_file = ${toml(hsSecretFile)}`,
    'algorithms = ["HS256"]',
    `cookie = ${toml(COOKIE_NAME)}`,
    "",
    "[rate_limit.per_user]",
    `per_minute = ${perUser.perMinute}`,
    `burst = ${perUser.burst}`,
    "",
    "[cache]",
    `enabled = ${cache ? "true" : "false"}`,
    "min_remaining_secs = 900",
    "",
  ];
  const configPath = path.join(dir, "broker.toml");
  writeFileSync(configPath, lines.join("\n"));
  return { configPath, hsSecret };
}

export function makeTempDir(prefix) {
  return mkdtempSync(path.join(os.tmpdir(), prefix));
}

export function removeDir(dir) {
  if (dir) rmSync(dir, { recursive: true, force: true });
}

// ---- what really crosses the wire ----------------------------------------------------------------

/**
 * A recording reverse proxy: listens on 127.0.0.1:<port> and forwards everything unchanged to
 * 127.0.0.1:<targetPort>, keeping {method, path, headers, status, resHeaders, body} of each
 * exchange (bodies of errors and JSON answers, up to 4 KiB). Playwright's events miss CORS preflights and
 * list requests the browser then refused to send; this sees exactly what reached the broker.
 */
export async function startRecordingProxy(port, targetPort) {
  const exchanges = [];
  const server = http.createServer((req, res) => {
    const entry = { method: req.method, path: new URL(req.url, "http://x").pathname, headers: req.headers };
    exchanges.push(entry);
    const upstream = http.request(
      { host: "127.0.0.1", port: targetPort, method: req.method, path: req.url, headers: req.headers },
      (up) => {
        entry.status = up.statusCode;
        entry.resHeaders = up.headers;
        res.writeHead(up.statusCode, up.rawHeaders);
        if (up.statusCode >= 400 || /json/.test(up.headers["content-type"] || "")) {
          const chunks = [];
          up.on("data", (c) => {
            if (chunks.reduce((n, x) => n + x.length, 0) < 4096) chunks.push(c);
          });
          up.on("end", () => {
            entry.body = Buffer.concat(chunks).toString("utf8");
          });
        }
        up.pipe(res);
      },
    );
    upstream.on("error", (err) => {
      entry.status = 502;
      entry.error = err.message;
      if (!res.headersSent) res.writeHead(502);
      res.end();
    });
    req.pipe(upstream);
  });
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", resolve);
  });
  return {
    exchanges,
    /** Exchanges from now on: call before a scenario, read it after. */
    since() {
      const start = exchanges.length;
      const view = () => exchanges.slice(start);
      view.tokenPosts = () => view().filter((e) => e.method === "POST" && e.path === "/v1/token");
      view.preflights = () => view().filter((e) => e.method === "OPTIONS" && e.path === "/v1/token");
      return view;
    },
    close: () =>
      withTimeout(
        new Promise((resolve) => {
          server.close(resolve);
          server.closeAllConnections?.();
        }),
        5000,
        "proxy to close",
      ),
  };
}

// ---- widget pages on other origins -------------------------------------------------------------

/**
 * A static server for widget pages at http://127.0.0.1:<port>. `routes` maps a path to
 * {type, body}. /favicon.ico answers 204 so no stray 404 reaches the console.
 */
export async function servePages(port, routes) {
  const server = http.createServer((req, res) => {
    const { pathname } = new URL(req.url, "http://x");
    const route = routes[pathname];
    if (pathname === "/favicon.ico") {
      res.writeHead(204).end();
    } else if (route) {
      res.writeHead(200, { "Content-Type": route.type, "Cache-Control": "no-store" }).end(route.body);
    } else {
      res.writeHead(404, { "Content-Type": "text/plain" }).end("not found");
    }
  });
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", resolve);
  });
  return {
    origin: `http://127.0.0.1:${port}`,
    close: () =>
      withTimeout(
        new Promise((resolve) => {
          server.close(resolve);
          server.closeAllConnections?.();
        }),
        5000,
        "page server to close",
      ),
  };
}

/** The widget page: loads the client, exposes it as window.IntelliaTokenClient, sets window.clientReady. */
export function widgetPage({ title, esmUrl, globalUrl }) {
  const loader = esmUrl
    ? `<script type="module">
import { IntelliaTokenClient, IntelliaTokenError } from ${JSON.stringify(esmUrl)};
window.IntelliaTokenClient = IntelliaTokenClient;
window.IntelliaTokenError = IntelliaTokenError;
window.clientReady = true;
</script>`
    : `<script src=${JSON.stringify(globalUrl)}></script>
<script>window.clientReady = typeof IntelliaTokenClient === "function";</script>`;
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${title}</title></head>
<body><h1>${title}</h1><div id="chat">chat widget placeholder</div>
${loader}
</body></html>`;
}

/** Text of a file by absolute path. */
export function repoFileAbs(p) {
  return readFileSync(p, "utf8");
}

/** Source of a file in the repository. */
export function repoFile(rel) {
  return readFileSync(path.join(REPO, rel));
}

// ---- the browser -------------------------------------------------------------------------------

export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/**
 * Debian Chromium in a fresh user-data dir, as one persistent context.
 *
 * Third-party cookies: this Chromium blocks them by default, both in Playwright's incognito-like
 * contexts and in a fresh regular profile, so a cookie on the broker's host (localhost) is not
 * sent with a fetch from a page on 127.0.0.1 — a different site. No command-line flag turns that
 * off (tried: --disable-features=ForceThirdPartyCookieBlocking / TrackingProtection3pcd /
 * ThirdPartyStoragePartitioning, --test-third-party-cookie-phaseout=false). The setting is the
 * profile preference `profile.cookie_controls_mode` (0 = allow third-party cookies, what the
 * "Allow third-party cookies" switch in chrome://settings/cookies writes), so the fresh profile is
 * seeded with it before launch. Real sites embedding the widget on another site have the same
 * constraint: cookie mode across sites needs the browser to allow third-party cookies, else use
 * Bearer mode (or host the broker on the site's own domain).
 */
export async function launchBrowser(chromium) {
  const userDataDir = makeTempDir("itb-chromium-");
  mkdirSync(path.join(userDataDir, "Default"), { recursive: true });
  writeFileSync(
    path.join(userDataDir, "Default", "Preferences"),
    JSON.stringify({ profile: { cookie_controls_mode: 0 } }),
  );
  const context = await withTimeout(
    chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 1280, height: 800 },
      timeout: 60000,
    }),
    90000,
    "Chromium to start",
  );
  context.setDefaultTimeout(15000);
  context.setDefaultNavigationTimeout(15000);
  return {
    context,
    async close() {
      try {
        await withTimeout(context.close(), 15000, "Chromium to close");
      } finally {
        removeDir(userDataDir);
      }
    },
  };
}

/** Records a page's console messages, uncaught errors and the requests it starts to `brokerOrigin`. */
export function watchPage(page, brokerOrigin) {
  const seen = { console: [], pageErrors: [], requests: [] };
  page.on("console", (msg) => seen.console.push({ type: msg.type(), text: msg.text() }));
  page.on("pageerror", (err) => seen.pageErrors.push(String(err && err.message)));
  page.on("request", (req) => {
    if (req.url().startsWith(brokerOrigin)) {
      seen.requests.push({ method: req.method(), path: new URL(req.url()).pathname });
    }
  });
  // Playwright lists a request when the page starts it, even one the browser then refuses to send
  // (a failed CORS preflight); the recording proxy is the ground truth for what was sent.
  seen.tokenPosts = () => seen.requests.filter((r) => r.method === "POST" && r.path === "/v1/token");
  seen.corsErrors = () =>
    seen.console.filter((m) => /CORS|Access-Control|cross-origin/i.test(m.text)).map((m) => m.text);
  return seen;
}
