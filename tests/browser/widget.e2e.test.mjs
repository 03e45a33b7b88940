// End-to-end: clients/js in headless Debian Chromium against the real broker binary and its
// Intellia simulator. The pages reach the broker as http://localhost:<p2>; the widget pages are on
// other sites: an allowed origin http://127.0.0.1:<p1> and a disallowed one http://127.0.0.1:<p3>.
// Port p2 is a recording proxy in front of the broker, so the tests can count what really reached
// it (preflights included) — Playwright's request events cannot tell that.
//
// Run through run.sh (installs Chromium and playwright-core when missing):
//   BROKER_BIN=/path/to/intellia-token-broker bash tests/browser/run.sh
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { copyFileSync, existsSync, mkdirSync } from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";
import * as h from "./harness.mjs";

const SCENARIO_TIMEOUT = 60000;
const env = {};

before(
  async () => {
    assert.ok(existsSync(h.BROKER_BIN), `broker binary not found at ${h.BROKER_BIN} (set BROKER_BIN)`);
    env.tmp = h.makeTempDir("itb-e2e-");
    const [simPort, brokerPort, proxyPort, allowedPort, deniedPort] = [
      await h.freePort(),
      await h.freePort(),
      await h.freePort(),
      await h.freePort(),
      await h.freePort(),
    ];

    env.sim = h.startProcess("intellia-simulator", h.BROKER_BIN, [
      "simulate-intellia",
      "--listen",
      `127.0.0.1:${simPort}`,
    ]);
    // Any HTTP answer (a 404 for /) means the simulator is listening.
    await h.waitForHttp(`http://127.0.0.1:${simPort}/`, { proc: env.sim, accept: (s) => s > 0 });

    env.allowedOrigin = `http://127.0.0.1:${allowedPort}`;
    env.deniedOrigin = `http://127.0.0.1:${deniedPort}`;
    const { configPath, hsSecret } = h.writeBrokerConfig(env.tmp, {
      listen: `127.0.0.1:${brokerPort}`,
      intelliaUrl: `http://127.0.0.1:${simPort}`,
      allowedOrigins: [env.allowedOrigin],
      // burst 3: every scenario's user stays within it but the rate-limit scenario's, which
      // exceeds it; refilling 2 a minute makes its Retry-After about 30 s.
      perUser: { perMinute: 2, burst: 3 },
    });
    env.hsSecret = hsSecret;
    env.broker = h.startProcess("broker", h.BROKER_BIN, ["serve", "--config", configPath]);
    env.brokerDirect = `http://127.0.0.1:${brokerPort}`; // for node-side calls
    await h.waitForHttp(`${env.brokerDirect}/readyz`, { proc: env.broker, timeoutMs: 30000 });
    env.proxy = await h.startRecordingProxy(proxyPort, brokerPort);
    env.brokerOrigin = `http://localhost:${proxyPort}`; // what the pages use: a different site

    // CLIENT_FROM=repo: the pages import the working tree's client from their own origin instead
    // of the broker's /v1/client.js (which is compiled into the binary), e.g. to try a client
    // change against an older broker build.
    const esmUrl = process.env.CLIENT_FROM === "repo" ? "/client.js" : `${env.brokerOrigin}/v1/client.js`;
    const pages = (title) => ({
      "/widget.html": {
        type: "text/html; charset=utf-8",
        body: h.widgetPage({ title, esmUrl }),
      },
      "/client.js": {
        type: "text/javascript; charset=utf-8",
        body: h.repoFile("clients/js/intellia-token-client.js"),
      },
      "/widget-global.html": {
        type: "text/html; charset=utf-8",
        body: h.widgetPage({ title, globalUrl: `${env.brokerOrigin}/v1/client.global.js` }),
      },
      // the disallowed origin cannot import /v1/client.js across origins (no CORS for it), so it
      // loads the same client from its own origin
      "/widget-local.html": {
        type: "text/html; charset=utf-8",
        body: h.widgetPage({ title, globalUrl: "/client.global.js" }),
      },
      "/client.global.js": {
        type: "text/javascript; charset=utf-8",
        body: h.repoFile("clients/js/intellia-token-client.global.js"),
      },
    });
    env.allowedSite = await h.servePages(allowedPort, pages("Allowed site"));
    env.deniedSite = await h.servePages(deniedPort, pages("Disallowed site"));
    env.browser = await h.launchBrowser(chromium);
  },
  { timeout: 150000 },
);

after(
  async () => {
    const steps = [
      () => env.browser?.close(),
      () => env.allowedSite?.close(),
      () => env.deniedSite?.close(),
      () => env.proxy?.close(),
      () => env.broker?.stop(),
      () => env.sim?.stop(),
      () => env.dev?.stop(),
    ];
    // all at once: the broker drains for a few seconds after SIGTERM
    const results = await Promise.allSettled(steps.map((step) => step()));
    for (const r of results) {
      if (r.status === "rejected") console.error(`cleanup: ${r.reason?.message ?? r.reason}`);
    }
    h.removeDir(env.tmp);
  },
  { timeout: 60000 },
);

const session = (sub) => h.sessionJwt(env.hsSecret, sub);

/** Opens a widget page; `wire` lists what reached the broker since the page was opened. */
async function openWidget(origin, file = "widget.html") {
  const wire = env.proxy.since();
  const page = await env.browser.context.newPage();
  const seen = h.watchPage(page, env.brokerOrigin);
  (env.seenPages ||= []).push(seen);
  await page.goto(`${origin}/${file}`);
  await page.waitForFunction(() => window.clientReady === true, null, { timeout: 15000 });
  return { page, seen, wire };
}

/** Builds window[name] in the page: a client whose events land in window.events[name]. */
async function makeClient(page, { name = "client", credentials, sessionToken, refreshMarginSecs, backoffBaseMs } = {}) {
  await page.evaluate(
    ({ name, endpoint, credentials, sessionToken, refreshMarginSecs, backoffBaseMs }) => {
      window.skewMs = window.skewMs || 0;
      window.events = window.events || {};
      window.sessions = window.sessions || {};
      const events = (window.events[name] = { tokens: [], errors: [] });
      const options = {
        endpoint,
        now: () => Date.now() + window.skewMs, // lets a test move the page's clock
        onToken: (t) => events.tokens.push({ prefix: t.token.slice(0, 8), expiresIn: t.expiresIn }),
        onError: (e) =>
          events.errors.push({
            name: e.name,
            status: e.status,
            code: e.code,
            detail: e.detail,
            retryAfterSecs: e.retryAfterSecs,
            terminal: e.terminal,
            retryable: e.retryable,
          }),
      };
      if (credentials) options.credentials = credentials;
      if (sessionToken) {
        window.sessions[name] = sessionToken; // a test may swap it, as a site does on re-login
        options.getSessionToken = async () => window.sessions[name];
      }
      if (refreshMarginSecs !== undefined) options.refreshMarginSecs = refreshMarginSecs;
      if (backoffBaseMs !== undefined) options.backoffBaseMs = backoffBaseMs;
      window[name] = new window.IntelliaTokenClient(options);
    },
    { name, endpoint: `${env.brokerOrigin}/v1/token`, credentials, sessionToken, refreshMarginSecs, backoffBaseMs },
  );
}

/** Calls window[name].getToken(opts) in the page; never throws, returns {ok, token | error}. */
function getToken(page, name = "client", opts = {}) {
  return page.evaluate(
    async ({ name, opts }) => {
      try {
        const t = await window[name].getToken(opts);
        return { ok: true, token: { ...t } };
      } catch (e) {
        return {
          ok: false,
          error: { name: e.name, status: e.status, code: e.code, retryAfterSecs: e.retryAfterSecs, terminal: e.terminal },
        };
      }
    },
    { name, opts },
  );
}

function assertNoCorsOrPageErrors(seen) {
  assert.deepEqual(seen.corsErrors(), [], "no CORS errors in the console");
  assert.deepEqual(seen.pageErrors, [], "no uncaught page errors");
}

function assertTokenShape(t, userId) {
  assert.equal(typeof t.token, "string");
  assert.ok(t.token.length > 10);
  assert.equal(t.userId, userId);
  assert.equal(t.organizationId, h.ORG_ID);
  assert.equal(typeof t.role, "string");
  assert.ok(Number.isFinite(Date.parse(t.expiresAt)), `expiresAt ${t.expiresAt} is RFC 3339`);
  assert.ok(t.expiresIn > 900 && t.expiresIn <= 7200, `expiresIn ${t.expiresIn}`);
}

test("the broker serves clients/js as /v1/client.js (ESM, CORS) and /v1/client.global.js", { timeout: SCENARIO_TIMEOUT }, async () => {
  const esm = await fetch(`${env.brokerDirect}/v1/client.js`, { headers: { Origin: env.allowedOrigin } });
  assert.equal(esm.status, 200);
  assert.match(esm.headers.get("content-type") || "", /^text\/javascript/);
  assert.equal(esm.headers.get("access-control-allow-origin"), env.allowedOrigin);
  assert.equal(
    await esm.text(),
    h.repoFile("clients/js/intellia-token-client.js").toString(),
    "/v1/client.js is clients/js/intellia-token-client.js (a stale broker build serves an old copy)",
  );
  const global = await fetch(`${env.brokerDirect}/v1/client.global.js`);
  assert.equal(global.status, 200);
  assert.match(global.headers.get("content-type") || "", /^text\/javascript/);
  assert.equal(await global.text(), h.repoFile("clients/js/intellia-token-client.global.js").toString());
});

test("bearer mode from the allowed origin gets a token; cached; single flight in the browser", { timeout: SCENARIO_TIMEOUT }, async () => {
  const { page, seen, wire } = await openWidget(env.allowedOrigin);
  try {
    await makeClient(page, { sessionToken: session("e2e-bearer") });
    const first = await getToken(page);
    assert.ok(first.ok, `getToken failed: ${JSON.stringify(first.error)}`);
    assertTokenShape(first.token, "e2e-bearer");

    const posts = wire.tokenPosts();
    assert.equal(posts.length, 1);
    assert.match(posts[0].headers.authorization || "", /^Bearer ey/);
    assert.equal(posts[0].headers.origin, env.allowedOrigin);
    const res = posts[0];
    assert.equal(res.status, 200);
    assert.equal(res.resHeaders["cache-control"], "no-store");
    assert.equal(res.resHeaders["access-control-allow-origin"], env.allowedOrigin);
    assert.ok(res.resHeaders["ratelimit"] && res.resHeaders["ratelimit-policy"], "RateLimit headers on 200");
    const exposed = (res.resHeaders["access-control-expose-headers"] || "").toLowerCase();
    for (const name of ["ratelimit", "ratelimit-policy", "retry-after", "x-request-id"]) {
      assert.ok(exposed.includes(name), `Access-Control-Expose-Headers lists ${name}: ${exposed}`);
    }
    // Bearer mode preflights (Authorization is not a safelisted header).
    const [preflight] = wire.preflights();
    assert.ok(preflight, "a CORS preflight was made for the Bearer request");
    assert.match(preflight.headers["access-control-request-headers"] || "", /authorization/i);
    assert.ok(preflight.status >= 200 && preflight.status < 300, `preflight status ${preflight.status}`);
    assert.equal(preflight.resHeaders["access-control-allow-origin"], env.allowedOrigin);
    assert.equal(preflight.resHeaders["access-control-allow-credentials"], "true");
    assert.match(preflight.resHeaders["access-control-allow-headers"] || "", /authorization/i);
    assert.ok(Number(preflight.resHeaders["access-control-max-age"]) > 0, "Access-Control-Max-Age");

    const again = await getToken(page);
    assert.equal(again.token.token, first.token.token);
    assert.equal(wire.tokenPosts().length, 1, "the cached token needs no request");

    // ten concurrent calls on a fresh client: one request
    await makeClient(page, { name: "burst", sessionToken: session("e2e-bearer-burst") });
    const results = await page.evaluate(async () => {
      const all = await Promise.all(Array.from({ length: 10 }, () => window.burst.getToken()));
      return all.map((t) => t.token);
    });
    assert.equal(new Set(results).size, 1);
    assert.equal(wire.tokenPosts().length, 2, "10 concurrent getToken() → 1 POST");
    const events = await page.evaluate(() => window.events);
    assert.equal(events.client.tokens.length, 1);
    assert.equal(events.client.errors.length, 0);
    assertNoCorsOrPageErrors(seen);
  } finally {
    await page.close();
  }
});

test("the broker's global build works as a classic <script> on the allowed origin", { timeout: SCENARIO_TIMEOUT }, async () => {
  const { page, seen, wire } = await openWidget(env.allowedOrigin, "widget-global.html");
  try {
    await makeClient(page, { sessionToken: session("e2e-global") });
    const r = await getToken(page);
    assert.ok(r.ok, `getToken failed: ${JSON.stringify(r.error)}`);
    assertTokenShape(r.token, "e2e-global");
    assertNoCorsOrPageErrors(seen);
  } finally {
    await page.close();
  }
});

test("cookie mode from the allowed origin: a cross-site session cookie, no preflight", { timeout: SCENARIO_TIMEOUT }, async () => {
  await env.browser.context.addCookies([
    {
      name: h.COOKIE_NAME,
      value: session("e2e-cookie"),
      domain: "localhost", // the broker's host; the page is on 127.0.0.1, another site
      path: "/",
      httpOnly: true,
      secure: true, // http://localhost counts as a secure context in Chromium
      sameSite: "None",
    },
  ]);
  const { page, seen, wire } = await openWidget(env.allowedOrigin);
  try {
    await makeClient(page, { credentials: "include" });
    const r = await getToken(page);
    assert.ok(r.ok, `getToken failed: ${JSON.stringify(r.error)} (console: ${JSON.stringify(seen.console)})`);
    assertTokenShape(r.token, "e2e-cookie");
    assert.deepEqual(
      wire().filter((q) => q.path === "/v1/token").map((q) => q.method),
      ["POST"],
      "a body-less POST with only safelisted headers needs no CORS preflight",
    );
    const [res] = wire.tokenPosts();
    assert.match(res.headers.cookie || "", new RegExp(`${h.COOKIE_NAME}=`), "the cross-site cookie was sent");
    assert.equal(res.headers.authorization, undefined);
    assert.equal(res.headers.origin, env.allowedOrigin);
    assert.equal(res.status, 200);
    assert.equal(res.resHeaders["access-control-allow-origin"], env.allowedOrigin);
    assert.equal(res.resHeaders["access-control-allow-credentials"], "true");
    assertNoCorsOrPageErrors(seen);
  } finally {
    await page.close();
  }
});

test("cookie mode from a disallowed origin is refused (403 origin_forbidden) and reported through onError", { timeout: SCENARIO_TIMEOUT }, async () => {
  // the cookie from the previous scenario is still in the browser; set it again to stand alone
  const cookie = session("e2e-cookie-denied");
  await env.browser.context.addCookies([
    { name: h.COOKIE_NAME, value: cookie, domain: "localhost", path: "/", httpOnly: true, secure: true, sameSite: "None" },
  ]);
  const { page, seen, wire } = await openWidget(env.deniedOrigin, "widget-local.html");
  try {
    // a long backoff keeps the client's automatic retry out of this test's window
    await makeClient(page, { credentials: "include", backoffBaseMs: 60000 });
    const r = await getToken(page);
    assert.equal(r.ok, false, "no token for a disallowed origin");
    const events = await page.evaluate(() => window.events.client);
    assert.equal(events.tokens.length, 0);
    assert.ok(events.errors.length >= 1, "the refusal reaches onError");
    const [err] = events.errors;
    assert.equal(err.name, "IntelliaTokenError");
    // The broker sends no CORS headers to a disallowed origin, so the browser hides the 403 from
    // the page: the client can only see a failed fetch.
    assert.equal(err.status, 0);
    assert.equal(err.code, "network_error");
    assert.equal(r.error.code, "network_error");

    // What the broker actually answered the browser:
    const posts = wire.tokenPosts();
    assert.equal(posts.length, 1, "the request was made once (no preflight: a simple request)");
    assert.equal(wire.preflights().length, 0);
    const [res] = posts;
    assert.equal(res.headers.origin, env.deniedOrigin);
    assert.match(res.headers.cookie || "", new RegExp(`${h.COOKIE_NAME}=`), "the browser did send the cookie");
    assert.equal(res.status, 403);
    assert.equal(JSON.parse(res.body).code, "origin_forbidden");
    assert.match(res.resHeaders["content-type"] || "", /^application\/problem\+json/);
    assert.equal(res.resHeaders["access-control-allow-origin"], undefined, "no CORS headers for a disallowed origin");
    assert.ok(seen.corsErrors().length >= 1, "Chromium reports the CORS refusal in the console");

    // The same request outside the browser shows the problem body the page may not read.
    const replay = await fetch(`${env.brokerDirect}/v1/token`, {
      method: "POST",
      headers: { Origin: env.deniedOrigin, Cookie: `${h.COOKIE_NAME}=${cookie}`, "Sec-Fetch-Site": "cross-site" },
    });
    assert.equal(replay.status, 403);
    assert.match(replay.headers.get("content-type") || "", /^application\/problem\+json/);
    const problem = await replay.json();
    assert.equal(problem.code, "origin_forbidden");
    assert.equal(problem.status, 403);
    assert.equal(replay.headers.get("access-control-allow-origin"), null);
  } finally {
    await page.close();
  }
});

test("bearer mode: 401 is terminal in the browser — reported once, no retry — until a new session token", { timeout: SCENARIO_TIMEOUT }, async () => {
  const { page, seen, wire } = await openWidget(env.allowedOrigin);
  try {
    const forged = h.signHs256(
      { iss: h.ISSUER, aud: h.AUDIENCE, sub: "e2e-forged", exp: Math.floor(Date.now() / 1000) + 600 },
      "not-the-broker-secret-not-the-broker-secret",
    );
    await makeClient(page, { sessionToken: forged });
    const r = await getToken(page);
    assert.equal(r.ok, false);
    assert.equal(r.error.status, 401, "the 401 carries CORS headers, so the page can read it");
    assert.equal(r.error.code, "unauthenticated");
    assert.equal(r.error.terminal, true);
    let events = await page.evaluate(() => window.events.client);
    assert.equal(events.errors.length, 1);
    assert.equal(events.errors[0].terminal, true);
    assert.equal(events.errors[0].retryable, false);
    assert.equal(wire.tokenPosts().length, 1);

    // terminal: more calls and wake-ups send nothing while the session token is the same
    assert.equal((await getToken(page)).error.code, "unauthenticated");
    await page.evaluate(() => {
      window.dispatchEvent(new Event("online"));
      window.dispatchEvent(new Event("focus"));
    });
    await h.sleep(1500);
    assert.equal(wire.tokenPosts().length, 1, "no retry after a terminal error");

    // the site signs the user in again: the next getToken() uses the new session token
    await page.evaluate((t) => {
      window.sessions.client = t;
    }, session("e2e-relogin"));
    const again = await getToken(page);
    assert.ok(again.ok, JSON.stringify(again.error));
    assertTokenShape(again.token, "e2e-relogin");
    assert.equal(wire.tokenPosts().length, 2);
    events = await page.evaluate(() => window.events.client);
    assert.equal(events.tokens.length, 1);
    assertNoCorsOrPageErrors(seen);
  } finally {
    await page.close();
  }
});

test("bearer mode from a disallowed origin: the preflight gets no CORS headers, so no POST is sent", { timeout: SCENARIO_TIMEOUT }, async () => {
  const { page, seen, wire } = await openWidget(env.deniedOrigin, "widget-local.html");
  try {
    await makeClient(page, { sessionToken: session("e2e-bearer-denied"), backoffBaseMs: 60000 });
    const r = await getToken(page);
    assert.equal(r.ok, false);
    assert.equal(r.error.code, "network_error", "a CORS refusal looks like a network error to the page");
    const events = await page.evaluate(() => window.events.client);
    assert.equal(events.errors.length, 1, "reported through onError");
    const preflights = wire.preflights();
    assert.equal(preflights.length, 1, "the browser asked first");
    assert.equal(preflights[0].headers.origin, env.deniedOrigin);
    assert.equal(preflights[0].resHeaders["access-control-allow-origin"], undefined, "no CORS headers");
    assert.equal(preflights[0].resHeaders["access-control-allow-headers"], undefined);
    assert.equal(wire.tokenPosts().length, 0, "the browser never sent the POST");
    assert.ok(seen.corsErrors().length >= 1, "Chromium reports the CORS refusal in the console");
  } finally {
    await page.close();
  }
});

test("429: the client surfaces the broker's Retry-After and sends nothing before it elapses", { timeout: SCENARIO_TIMEOUT }, async () => {
  const { page, seen, wire } = await openWidget(env.allowedOrigin);
  try {
    const sessionToken = session("e2e-ratelimit");
    await makeClient(page, { sessionToken });
    // burst is 3: one getToken and two forced refreshes spend it, the third refresh is refused
    assert.ok((await getToken(page)).ok);
    assert.ok((await getToken(page, "client", { forceRefresh: true })).ok);
    assert.ok((await getToken(page, "client", { forceRefresh: true })).ok);
    const limited = await getToken(page, "client", { forceRefresh: true });
    assert.ok(limited.ok, "a refresh refused with 429 still yields the cached, valid token");
    assert.equal(wire.tokenPosts().length, 4);

    assert.deepEqual(wire.tokenPosts().map((q) => q.status), [200, 200, 200, 429]);
    const res429 = wire.tokenPosts()[3];
    const retryAfter = Number(res429.resHeaders["retry-after"]);
    assert.ok(retryAfter >= 1, `Retry-After: ${res429.resHeaders["retry-after"]}`);
    assert.ok(res429.resHeaders["ratelimit"] && res429.resHeaders["ratelimit-policy"], "RateLimit headers on 429");
    assert.match(res429.resHeaders["content-type"] || "", /^application\/problem\+json/);
    assert.equal(JSON.parse(res429.body).code, "rate_limited");
    assert.equal(res429.resHeaders["access-control-allow-origin"], env.allowedOrigin);

    const events = await page.evaluate(() => window.events.client);
    assert.equal(events.errors.length, 1);
    const [err] = events.errors;
    assert.equal(err.status, 429);
    assert.equal(err.code, "rate_limited");
    assert.equal(err.retryable, true);
    assert.equal(err.terminal, false);
    assert.ok(
      err.retryAfterSecs >= retryAfter,
      `retryAfterSecs ${err.retryAfterSecs} < Retry-After ${retryAfter}: is Retry-After exposed to the page?`,
    );

    // A second client for the same user has no token: its getToken() rejects with the retry time.
    await makeClient(page, { name: "second", sessionToken });
    const second = await getToken(page, "second");
    assert.equal(second.ok, false);
    assert.equal(second.error.code, "rate_limited");
    assert.ok(second.error.retryAfterSecs >= 1);
    assert.equal(wire.tokenPosts().length, 5);

    // Inside the Retry-After window neither client sends anything, whatever the page asks.
    const gated = await getToken(page, "second");
    assert.equal(gated.ok, false);
    assert.equal(gated.error.code, "rate_limited");
    await getToken(page, "client", { forceRefresh: true });
    await page.evaluate(() => {
      window.dispatchEvent(new Event("online"));
      window.dispatchEvent(new Event("focus"));
    });
    await h.sleep(1500);
    assert.equal(wire.tokenPosts().length, 5, "no request before Retry-After elapses");
    assertNoCorsOrPageErrors(seen);
    await page.evaluate(() => {
      window.client.stop();
      window.second.stop();
    });
  } finally {
    await page.close();
  }
});

test("near expiry (page clock moved forward), a wake-up plus 5 getToken() calls make exactly one refresh", { timeout: SCENARIO_TIMEOUT }, async () => {
  const { page, seen, wire } = await openWidget(env.allowedOrigin);
  try {
    await makeClient(page, { sessionToken: session("e2e-refresh"), refreshMarginSecs: 300 });
    const first = await getToken(page);
    assert.ok(first.ok, JSON.stringify(first.error));
    assert.equal(wire.tokenPosts().length, 1);

    // Nothing is due yet: wake-ups and calls are served from the cache.
    await page.evaluate(() => {
      window.dispatchEvent(new Event("focus"));
      document.dispatchEvent(new Event("visibilitychange"));
    });
    await getToken(page);
    await h.sleep(300);
    assert.equal(wire.tokenPosts().length, 1);

    // Move the page's clock to 10 s inside the refresh margin, as after a sleep with frozen timers.
    const skewMs = (first.token.expiresIn - 300 + 10) * 1000;
    const refreshed = await page.evaluate(async (skewMs) => {
      window.skewMs = skewMs;
      window.dispatchEvent(new Event("focus"));
      window.dispatchEvent(new Event("pageshow"));
      document.dispatchEvent(new Event("visibilitychange"));
      const all = await Promise.all(Array.from({ length: 5 }, () => window.client.getToken()));
      return all.map((t) => ({ ...t }));
    }, skewMs);
    await h.sleep(1500); // give a second, unwanted refresh time to show up
    assert.equal(wire.tokenPosts().length, 2, "exactly one refresh request");
    for (const t of refreshed) {
      assert.ok(t.expiresIn > 7000, `after the refresh the token counts from the new answer (${t.expiresIn})`);
      assertTokenShape(t, "e2e-refresh");
    }
    const again = await getToken(page);
    assert.ok(again.ok);
    assert.equal(wire.tokenPosts().length, 2, "the refreshed token is cached");
    const events = await page.evaluate(() => window.events.client);
    assert.equal(events.errors.length, 0);
    assertNoCorsOrPageErrors(seen);
  } finally {
    await page.close();
  }
});

test("dev mode: the demo page at /dev/ shows a token, counts a forced refresh; screenshot", { timeout: SCENARIO_TIMEOUT }, async () => {
  const port = await h.freePort();
  env.dev = h.startProcess("broker-dev", h.BROKER_BIN, ["dev", "--listen", `127.0.0.1:${port}`]);
  const base = `http://127.0.0.1:${port}`;
  await h.waitForHttp(`${base}/readyz`, { proc: env.dev, timeoutMs: 30000 });
  const page = await env.browser.context.newPage();
  const seen = h.watchPage(page, base);
  (env.seenPages ||= []).push(seen);
  try {
    await page.goto(`${base}/dev/`);
    await page.waitForSelector('body[data-token-state="ready"]', { timeout: 20000 });
    const prefix = await page.textContent("#token-prefix");
    assert.match(prefix, /^.{12}…$/, `only a prefix of the token is shown (${prefix.length} chars)`);
    await page.waitForFunction(() => /^\d\d:\d\d:\d\d$/.test(document.getElementById("countdown").textContent), null, {
      timeout: 5000,
    });
    assert.equal(await page.textContent("#refresh-count"), "0");
    await page.click("#force-refresh");
    await page.waitForFunction(() => document.getElementById("refresh-count").textContent === "1", null, {
      timeout: 10000,
    });
    assert.equal(seen.tokenPosts().length, 2);
    assert.deepEqual(
      seen.console.filter((m) => m.type === "error").map((m) => m.text),
      [],
      "no console errors on the demo page",
    );
    assert.deepEqual(seen.pageErrors, []);
    await page.waitForTimeout(600); // let the chat widget's "connected" line settle
    const shot = path.join(h.ARTIFACTS, "demo.png");
    await page.screenshot({ path: shot, timeout: 15000 });
    if (process.env.UPDATE_DOCS_SCREENSHOT === "1") {
      mkdirSync(path.join(h.REPO, "docs"), { recursive: true });
      copyFileSync(shot, path.join(h.REPO, "docs", "demo.png"));
    }
  } finally {
    await page.close();
    await env.dev.stop();
  }
});

test("no chat token or session token ever reached the broker's log or a page's console", { timeout: SCENARIO_TIMEOUT }, async () => {
  const secrets = new Set();
  for (const e of env.proxy.exchanges) {
    const bearer = /^Bearer (.+)$/.exec(e.headers.authorization || "");
    if (bearer) secrets.add(bearer[1]);
    const cookie = new RegExp(`${h.COOKIE_NAME}=([^;]+)`).exec(e.headers.cookie || "");
    if (cookie) secrets.add(cookie[1]);
    if (e.status === 200 && e.path === "/v1/token" && e.body) secrets.add(JSON.parse(e.body).token);
  }
  assert.ok(secrets.size >= 10, `collected ${secrets.size} tokens to look for`);
  await env.broker.stop(); // flushes its log
  const logs = [env.broker.logPath, env.sim.logPath].map((p) => h.repoFileAbs(p)).join("\n");
  const consoles = (env.seenPages || []).flatMap((s) => s.console.map((m) => m.text)).join("\n");
  for (const secret of secrets) {
    assert.ok(!logs.includes(secret), "a token appears in the broker's or simulator's log");
    assert.ok(!consoles.includes(secret), "a token appears in a page's console");
  }
});
