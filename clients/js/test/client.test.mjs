import { test } from "node:test";
import assert from "node:assert/strict";
import { IntelliaTokenClient, IntelliaTokenError } from "../intellia-token-client.js";
import {
  FakeClock,
  fakeFetch,
  deferredFetch,
  okResponse,
  problemResponse,
  tokenBody,
  baseOptions,
  flush,
  rejection,
  ENDPOINT,
} from "../testing/support.mjs";

const SECOND = 1000;

test("getToken returns the broker's token and caches it", async () => {
  const clock = new FakeClock();
  const f = fakeFetch(clock);
  const client = new IntelliaTokenClient(baseOptions(clock, f.fetch));
  const first = await client.getToken();
  assert.deepEqual({ ...first }, tokenBody("auto1"));
  await clock.advance(10 * SECOND);
  const second = await client.getToken();
  assert.equal(second.token, first.token);
  assert.equal(second.expiresIn, 7190, "expiresIn counts down by the client's clock");
  assert.equal(f.calls.length, 1, "a cached token needs no second request");
  assert.equal(client.peek().token, first.token);
  client.stop();
});

test("cookie mode: POST with no body, no Content-Type, credentials include (no preflight needed)", async () => {
  const clock = new FakeClock();
  const f = fakeFetch(clock);
  const client = new IntelliaTokenClient(baseOptions(clock, f.fetch));
  await client.getToken();
  const { url, init } = f.calls[0];
  assert.equal(url, ENDPOINT);
  assert.equal(init.method, "POST");
  assert.equal(init.credentials, "include");
  assert.equal(init.body, undefined);
  assert.deepEqual(Object.keys(init.headers), ["Accept"]);
  assert.equal(init.cache, "no-store");
  client.stop();
});

test("bearer mode sends Authorization: Bearer <session token>; jsonBody sends {}", async () => {
  const clock = new FakeClock();
  const f = fakeFetch(clock);
  let asked = 0;
  const client = new IntelliaTokenClient(
    baseOptions(clock, f.fetch, {
      credentials: undefined,
      jsonBody: true,
      getSessionToken: async () => {
        asked++;
        return "session-abc";
      },
    }),
  );
  await client.getToken();
  const { init } = f.calls[0];
  assert.equal(init.headers.Authorization, "Bearer session-abc");
  assert.equal(init.headers["Content-Type"], "application/json");
  assert.equal(init.body, "{}");
  assert.equal(init.credentials, undefined);
  assert.equal(asked, 1);
  client.stop();
});

test("single flight: 10 concurrent getToken() calls make one request", async () => {
  const clock = new FakeClock();
  const d = deferredFetch(clock);
  const client = new IntelliaTokenClient(baseOptions(clock, d.fetch));
  const pending = Array.from({ length: 10 }, () => client.getToken());
  pending.push(client.refresh()); // a forced refresh joins the request in flight too
  await flush();
  assert.equal(d.calls.length, 1);
  d.calls[0].resolve(okResponse(tokenBody(7)));
  const results = await Promise.all(pending);
  assert.equal(new Set(results.map((r) => r.token)).size, 1);
  assert.equal(results[0].token, tokenBody(7).token);
  assert.equal(d.calls.length, 1);
  client.stop();
});

test("single flight holds for failures too, and the next call starts a new request", async () => {
  const clock = new FakeClock();
  const d = deferredFetch(clock);
  const client = new IntelliaTokenClient(baseOptions(clock, d.fetch, { autoRefresh: false }));
  const pending = Array.from({ length: 5 }, () => client.getToken().catch((e) => e));
  await flush();
  assert.equal(d.calls.length, 1);
  d.calls[0].resolve(problemResponse(400, "invalid_request"));
  const errors = await Promise.all(pending);
  for (const e of errors) assert.equal(e.code, "invalid_request");
  await clock.advance(5 * SECOND); // past the backoff after a failure
  const next = client.getToken();
  await flush();
  assert.equal(d.calls.length, 2);
  d.calls[1].resolve(okResponse(tokenBody(2)));
  assert.equal((await next).token, tokenBody(2).token);
  client.stop();
});

test("refreshes ahead of expiry: at expiresIn - refreshMarginSecs, not before, exactly once", async () => {
  const clock = new FakeClock();
  const f = fakeFetch(clock, [okResponse(tokenBody(1, 600))]);
  const seen = [];
  const client = new IntelliaTokenClient(baseOptions(clock, f.fetch, { refreshMarginSecs: 60 }));
  client.onToken((t) => seen.push(t.token));
  await client.getToken();
  await clock.advance(540 * SECOND - 1);
  assert.equal(f.calls.length, 1, "no refresh before the margin");
  await clock.advance(1);
  assert.equal(f.calls.length, 2, "one refresh at expiresIn - margin");
  assert.equal(f.calls[1].at - f.calls[0].at, 540 * SECOND);
  assert.deepEqual(seen, [tokenBody(1).token, tokenBody("auto1").token]);
  assert.equal((await client.getToken()).token, seen[1]);
  assert.equal(f.calls.length, 2);
  client.stop();
});

test("without autoRefresh, getToken() inside the margin makes the refresh", async () => {
  const clock = new FakeClock();
  const f = fakeFetch(clock, [okResponse(tokenBody(1, 600))]);
  const client = new IntelliaTokenClient(
    baseOptions(clock, f.fetch, { refreshMarginSecs: 60, autoRefresh: false }),
  );
  await client.getToken();
  await clock.advance(539 * SECOND);
  await client.getToken();
  assert.equal(f.calls.length, 1);
  assert.equal(clock.pendingTimers, 0, "no background timer without autoRefresh");
  await clock.advance(1 * SECOND);
  const t = await client.getToken();
  assert.equal(f.calls.length, 2);
  assert.notEqual(t.token, tokenBody(1).token);
  client.stop();
});

test("a token already inside the margin is refreshed at half its lifetime, not in a loop", async () => {
  const clock = new FakeClock();
  // e.g. a broker cache handing back a token with 200 s left while our margin is 300 s
  const f = fakeFetch(clock, [okResponse(tokenBody(1, 200))]);
  const client = new IntelliaTokenClient(baseOptions(clock, f.fetch, { refreshMarginSecs: 300 }));
  await client.getToken();
  await clock.advance(99 * SECOND);
  assert.equal(f.calls.length, 1);
  await clock.advance(1 * SECOND);
  assert.equal(f.calls.length, 2);
  client.stop();
});

test("skewed client clock: expiry is measured from expiresIn, never from expiresAt", async () => {
  for (const start of [Date.UTC(2026, 10, 28, 18, 0, 0) /* 6 h after expiresAt */, 0 /* 1970 */]) {
    const clock = new FakeClock(start);
    const f = fakeFetch(clock, [okResponse(tokenBody(1, 600, { expiresAt: "2026-11-28T12:00:00Z" }))]);
    const client = new IntelliaTokenClient(baseOptions(clock, f.fetch, { refreshMarginSecs: 60 }));
    const t = await client.getToken();
    assert.equal(t.expiresIn, 600);
    assert.equal(t.expiresAt, "2026-11-28T12:00:00Z", "expiresAt is passed through untouched");
    await clock.advance(500 * SECOND);
    assert.equal((await client.getToken()).expiresIn, 100);
    assert.equal(f.calls.length, 1, `clock at ${start}: still cached`);
    await clock.advance(40 * SECOND);
    assert.equal(f.calls.length, 2, `clock at ${start}: refreshed at 540 s`);
    client.stop();
  }
});

test("a clock set backwards makes the cached token due for refresh", async () => {
  const clock = new FakeClock();
  const f = fakeFetch(clock);
  const client = new IntelliaTokenClient(baseOptions(clock, f.fetch));
  await client.getToken();
  clock.jump(-3600 * SECOND);
  await client.getToken();
  assert.equal(f.calls.length, 2);
  client.stop();
});

test("429: Retry-After is honoured — no request of any kind before it elapses", async () => {
  const clock = new FakeClock();
  const f = fakeFetch(clock, [problemResponse(429, "rate_limited", { "Retry-After": "30" })]);
  const errors = [];
  const tokens = [];
  const client = new IntelliaTokenClient(
    baseOptions(clock, f.fetch, { random: () => 0.999, onError: (e) => errors.push(e), onToken: (t) => tokens.push(t) }),
  );
  const err = await rejection(client.getToken());
  assert.ok(err instanceof IntelliaTokenError);
  assert.equal(err.status, 429);
  assert.equal(err.code, "rate_limited");
  assert.equal(err.retryable, true);
  assert.equal(err.terminal, false);
  assert.ok(err.retryAfterSecs >= 30, `retryAfterSecs ${err.retryAfterSecs}`);
  assert.equal(errors.length, 1);
  assert.equal(errors[0], err);

  await clock.advance(29 * SECOND);
  const gated = await rejection(client.getToken());
  assert.equal(gated.code, "rate_limited");
  assert.equal(gated.retryAfterSecs, 1);
  await rejection(client.refresh());
  assert.equal(f.calls.length, 1, "neither getToken nor a forced refresh may send before Retry-After");
  await clock.advance(SECOND - 1);
  assert.equal(f.calls.length, 1);
  // the background retry comes after Retry-After plus at most one backoff step of jitter
  await clock.advance(1 + 1000);
  assert.equal(f.calls.length, 2);
  assert.ok(f.calls[1].at - f.calls[0].at >= 30 * SECOND);
  assert.equal(tokens.length, 1, "the retry's token reaches onToken");
  assert.equal((await client.getToken()).token, tokens[0].token);
  client.stop();
});

test("429 without Retry-After falls back to the RateLimit header's t=", async () => {
  const clock = new FakeClock();
  const f = fakeFetch(clock, [problemResponse(429, "rate_limited", { RateLimit: '"user";r=0;t=12' })]);
  const client = new IntelliaTokenClient(baseOptions(clock, f.fetch, { random: () => 0 }));
  const err = await rejection(client.getToken());
  assert.equal(err.retryAfterSecs, 12);
  await clock.advance(12 * SECOND - 1);
  assert.equal(f.calls.length, 1);
  await clock.advance(1);
  assert.equal(f.calls.length, 2);
  client.stop();
});

test("a 429 on a background refresh keeps serving the still-valid cached token", async () => {
  const clock = new FakeClock();
  const f = fakeFetch(clock, [
    okResponse(tokenBody(1, 600)),
    problemResponse(429, "rate_limited", { "Retry-After": "20" }),
  ]);
  const errors = [];
  const client = new IntelliaTokenClient(
    baseOptions(clock, f.fetch, { refreshMarginSecs: 60, onError: (e) => errors.push(e) }),
  );
  await client.getToken();
  await clock.advance(540 * SECOND);
  assert.equal(f.calls.length, 2);
  assert.equal(errors.length, 1);
  assert.equal(errors[0].code, "rate_limited");
  assert.equal((await client.getToken()).token, tokenBody(1).token);
  assert.equal(f.calls.length, 2);
  await clock.advance(20 * SECOND + 500);
  assert.equal(f.calls.length, 3);
  assert.notEqual((await client.getToken()).token, tokenBody(1).token);
  client.stop();
});

test("5xx: exponential backoff with full jitter, capped", async () => {
  const clock = new FakeClock();
  const failures = Array.from({ length: 9 }, () => problemResponse(503, "upstream_unavailable"));
  const f = fakeFetch(clock, failures);
  const client = new IntelliaTokenClient(
    baseOptions(clock, f.fetch, { backoffBaseMs: 1000, backoffMaxMs: 30000, random: () => 0.5 }),
  );
  const err = await rejection(client.getToken());
  assert.equal(err.status, 503);
  assert.equal(err.retryable, true);
  await clock.advance(10 * 60 * SECOND);
  assert.equal(f.calls.length, 10);
  const gaps = f.calls.slice(1).map((c, i) => c.at - f.calls[i].at);
  // random() = 0.5 → half of min(cap, base * 2^n)
  assert.deepEqual(gaps, [500, 1000, 2000, 4000, 8000, 15000, 15000, 15000, 15000]);
  client.stop();
});

test("backoff jitter stays within [0, min(cap, base * 2^n)] for any random value", async () => {
  for (const r of [0, 0.999999]) {
    const clock = new FakeClock();
    const f = fakeFetch(clock, Array.from({ length: 7 }, () => new TypeError("Failed to fetch")));
    const client = new IntelliaTokenClient(
      baseOptions(clock, f.fetch, { backoffBaseMs: 1000, backoffMaxMs: 8000, random: () => r }),
    );
    const err = await rejection(client.getToken());
    assert.equal(err.code, "network_error");
    assert.equal(err.status, 0);
    assert.equal(err.retryable, true);
    await clock.advance(120 * SECOND);
    assert.equal(f.calls.length, 8);
    const gaps = f.calls.slice(1).map((c, i) => c.at - f.calls[i].at);
    gaps.forEach((gap, i) => {
      const cap = Math.min(8000, 1000 * 2 ** i);
      assert.ok(gap >= 0 && gap <= cap, `gap ${i} = ${gap} outside [0, ${cap}] (random ${r})`);
      if (r > 0.9) assert.ok(gap > cap * 0.99, `gap ${i} = ${gap} should be near its cap`);
    });
    client.stop();
  }
});

test("while backing off, getToken() rejects at once with the time left instead of sending", async () => {
  const clock = new FakeClock();
  const f = fakeFetch(clock, [problemResponse(502, "upstream_rejected"), problemResponse(500, "internal")]);
  const client = new IntelliaTokenClient(
    baseOptions(clock, f.fetch, { backoffBaseMs: 10000, random: () => 0.5 }),
  );
  await rejection(client.getToken());
  const gated = await rejection(client.getToken());
  assert.equal(gated.code, "upstream_rejected");
  assert.equal(gated.retryAfterSecs, 5);
  assert.equal(f.calls.length, 1);
  client.stop();
});

test("a 503 with Retry-After waits at least that long", async () => {
  const clock = new FakeClock();
  const f = fakeFetch(clock, [problemResponse(503, "upstream_unavailable", { "Retry-After": "45" })]);
  const client = new IntelliaTokenClient(baseOptions(clock, f.fetch, { random: () => 0 }));
  await rejection(client.getToken());
  await clock.advance(45 * SECOND - 1);
  assert.equal(f.calls.length, 1);
  await clock.advance(1);
  assert.equal(f.calls.length, 2);
  client.stop();
});

test("success resets the backoff", async () => {
  const clock = new FakeClock();
  const f = fakeFetch(clock, [
    problemResponse(503, "x"),
    problemResponse(503, "x"),
    problemResponse(503, "x"),
    okResponse(tokenBody(1, 600)),
    problemResponse(503, "x"),
  ]);
  const client = new IntelliaTokenClient(baseOptions(clock, f.fetch, { refreshMarginSecs: 60 }));
  await rejection(client.getToken());
  await clock.advance(10 * SECOND);
  assert.equal(f.calls.length, 4);
  await clock.advance(f.calls[3].at + 540 * SECOND - clock.t);
  assert.equal(f.calls.length, 5, "the refresh of the token got after three failures");
  await clock.advance(499);
  assert.equal(f.calls.length, 5);
  await clock.advance(1);
  assert.equal(f.calls.length, 6, "after a success the first backoff step is base * random again");
  client.stop();
});

for (const [status, code] of [
  [401, "unauthenticated"],
  [403, "origin_forbidden"],
]) {
  test(`${status} ${code} is terminal: reported once, no retries until reset()`, async () => {
    const clock = new FakeClock();
    const f = fakeFetch(clock, [okResponse(tokenBody(1, 600)), problemResponse(status, code)]);
    const errors = [];
    const client = new IntelliaTokenClient(
      baseOptions(clock, f.fetch, { refreshMarginSecs: 60, onError: (e) => errors.push(e) }),
    );
    await client.getToken();
    await clock.advance(540 * SECOND); // the background refresh meets the terminal error
    assert.equal(f.calls.length, 2);
    assert.equal(errors.length, 1);
    const [err] = errors;
    assert.equal(err.status, status);
    assert.equal(err.code, code);
    assert.equal(err.terminal, true);
    assert.equal(err.retryable, false);
    assert.equal(err.detail, `problem ${code}`);
    assert.equal(err.requestId, `req-${status}`);
    assert.equal(client.peek(), null, "the old token is dropped");
    await clock.advance(3600 * SECOND);
    const again = await rejection(client.getToken());
    assert.equal(again, err);
    await rejection(client.refresh());
    assert.equal(f.calls.length, 2, "no request while terminal");
    assert.equal(clock.pendingTimers, 0);
    client.reset();
    const t = await client.getToken();
    assert.equal(f.calls.length, 3);
    assert.ok(t.token);
    client.stop();
  });
}

test("bearer mode: a terminal 401 clears when the site hands out a new session token", async () => {
  const clock = new FakeClock();
  const f = fakeFetch(clock, [problemResponse(401, "unauthenticated", { "WWW-Authenticate": "Bearer" })]);
  let session = "session-1";
  const client = new IntelliaTokenClient(
    baseOptions(clock, f.fetch, { credentials: undefined, getSessionToken: async () => session }),
  );
  const err = await rejection(client.getToken());
  assert.equal(err.terminal, true);
  await rejection(client.getToken());
  assert.equal(f.calls.length, 1, "the same session token is not tried again");
  session = "session-2";
  const t = await client.getToken();
  assert.equal(f.calls.length, 2);
  assert.equal(f.calls[1].init.headers.Authorization, "Bearer session-2");
  assert.ok(t.token);
  client.stop();
});

test("no session: getSessionToken() returning nothing rejects without a request or a retry loop", async () => {
  const clock = new FakeClock();
  const f = fakeFetch(clock);
  let session = "";
  const errors = [];
  const client = new IntelliaTokenClient(
    baseOptions(clock, f.fetch, { getSessionToken: () => session, onError: (e) => errors.push(e) }),
  );
  const err = await rejection(client.getToken());
  assert.equal(err.code, "no_session");
  assert.equal(err.terminal, false);
  assert.equal(errors.length, 1);
  await clock.advance(600 * SECOND);
  assert.equal(f.calls.length, 0);
  session = "signed-in";
  await client.getToken();
  assert.equal(f.calls.length, 1);
  client.stop();
});

test("other 4xx are neither terminal nor retried in the background", async () => {
  const clock = new FakeClock();
  const f = fakeFetch(clock, [problemResponse(400, "invalid_request")]);
  const client = new IntelliaTokenClient(baseOptions(clock, f.fetch));
  const err = await rejection(client.getToken());
  assert.equal(err.status, 400);
  assert.equal(err.terminal, false);
  assert.equal(err.retryable, false);
  await clock.advance(3600 * SECOND);
  assert.equal(f.calls.length, 1);
  client.stop();
});

test("a malformed 200 is a retryable invalid_response", async () => {
  const clock = new FakeClock();
  const f = fakeFetch(clock, [
    new Response("<html>proxy page</html>", { status: 200 }),
    okResponse({ token: "t", expiresIn: "soon" }),
  ]);
  const client = new IntelliaTokenClient(baseOptions(clock, f.fetch));
  const err = await rejection(client.getToken());
  assert.equal(err.code, "invalid_response");
  assert.equal(err.retryable, true);
  await clock.advance(SECOND);
  assert.equal(f.calls.length, 2);
  await clock.advance(5 * SECOND);
  assert.equal(f.calls.length, 3);
  assert.ok(client.peek());
  client.stop();
});

test("a request that hangs times out after timeoutMs and is retried", async () => {
  const clock = new FakeClock();
  const f = fakeFetch(clock, ["hang"]);
  const client = new IntelliaTokenClient(baseOptions(clock, f.fetch, { timeoutMs: 5000 }));
  const pending = rejection(client.getToken());
  await clock.advance(4999);
  assert.equal(f.calls.length, 1);
  await clock.advance(1);
  const err = await pending;
  assert.equal(err.code, "timeout");
  assert.equal(err.retryable, true);
  assert.equal(f.calls[0].init.signal.aborted, true);
  await clock.advance(SECOND);
  assert.equal(f.calls.length, 2);
  client.stop();
});

test("onToken fires on every new token; its unsubscribe works; a throwing listener is contained", async () => {
  const clock = new FakeClock();
  const f = fakeFetch(clock, [
    okResponse(tokenBody(1, 600)),
    okResponse(tokenBody(1, 600)), // the broker's cache may return the same token: not "new"
    okResponse(tokenBody(2, 600)),
    okResponse(tokenBody(3, 600)),
  ]);
  const client = new IntelliaTokenClient(baseOptions(clock, f.fetch, { refreshMarginSecs: 60 }));
  const a = [];
  const b = [];
  client.onToken(() => {
    throw new Error("listener bug");
  });
  const unsubscribeA = client.onToken((t) => a.push(t.token));
  client.onToken((t) => b.push(t.token));
  await client.getToken();
  await client.refresh();
  await client.refresh();
  unsubscribeA();
  await client.refresh();
  assert.deepEqual(a, [tokenBody(1).token, tokenBody(2).token]);
  assert.deepEqual(b, [tokenBody(1).token, tokenBody(2).token, tokenBody(3).token]);
  assert.equal(f.calls.length, 4);
  client.stop();
});

test("onError can be unsubscribed", async () => {
  const clock = new FakeClock();
  const f = fakeFetch(clock, [problemResponse(500, "x"), problemResponse(500, "x")]);
  const client = new IntelliaTokenClient(baseOptions(clock, f.fetch, { random: () => 0 }));
  const seen = [];
  const off = client.onError((e) => seen.push(e.status));
  await rejection(client.getToken());
  off();
  await clock.advance(SECOND);
  assert.equal(f.calls.length, 3);
  assert.deepEqual(seen, [500]);
  client.stop();
});

test("the token and the session token never reach the console or an error", async () => {
  const clock = new FakeClock();
  const secretSession = "session-SECRET-123";
  const f = fakeFetch(clock, [
    okResponse(tokenBody(1, 600)),
    problemResponse(503, "upstream_unavailable"),
    new TypeError("Failed to fetch"),
    problemResponse(401, "unauthenticated"),
  ]);
  const printed = [];
  const saved = {};
  for (const m of ["log", "info", "warn", "error", "debug", "trace"]) {
    saved[m] = console[m];
    console[m] = (...args) => printed.push(args.map(String).join(" "));
  }
  const errors = [];
  try {
    const client = new IntelliaTokenClient(
      baseOptions(clock, f.fetch, {
        getSessionToken: () => secretSession,
        refreshMarginSecs: 60,
        onError: (e) => errors.push(e),
      }),
    );
    await client.getToken();
    await clock.advance(600 * SECOND);
    client.stop();
  } finally {
    Object.assign(console, saved);
  }
  assert.equal(errors.length, 3);
  assert.equal(errors[2].code, "unauthenticated");
  const token = tokenBody(1).token;
  for (const line of printed) {
    assert.ok(!line.includes(token) && !line.includes(secretSession), `leaked: ${line}`);
  }
  for (const e of errors) {
    const text = `${e.message} ${e.stack} ${JSON.stringify(e)} ${String(e.cause)}`;
    assert.ok(!text.includes(token) && !text.includes(secretSession), `leaked in error: ${text}`);
  }
});

test("constructor validates its options", () => {
  assert.throws(() => new IntelliaTokenClient({}), TypeError);
  assert.throws(
    () => new IntelliaTokenClient({ endpoint: ENDPOINT, fetch: async () => {}, getSessionToken: "x" }),
    TypeError,
  );
});

test("a getSessionToken() that never answers times out instead of blocking every caller", async () => {
  const clock = new FakeClock();
  const f = fakeFetch(clock);
  let hang = true;
  const client = new IntelliaTokenClient(
    baseOptions(clock, f.fetch, {
      timeoutMs: 5000,
      getSessionToken: () => (hang ? new Promise(() => {}) : "session-ok"),
    }),
  );
  const pending = Promise.all([rejection(client.getToken()), rejection(client.getToken())]);
  await clock.advance(5000);
  const [a, b] = await pending;
  assert.equal(a.code, "session_unavailable");
  assert.equal(b, a, "both callers shared the one attempt");
  assert.equal(f.calls.length, 0);
  assert.equal(clock.pendingTimers, 0, "no timer left behind");
  hang = false;
  assert.ok((await client.getToken()).token);
  client.stop();
});

test("concurrent getToken() calls after a terminal error with a new session make one request", async () => {
  const clock = new FakeClock();
  const f = fakeFetch(clock, [problemResponse(401, "unauthenticated")]);
  let session = "old";
  let asked = 0;
  // each call answers a little later than the one before, as a real session store might
  const later = async (turns) => {
    for (let i = 0; i < turns; i++) await new Promise((resolve) => setImmediate(resolve));
  };
  const client = new IntelliaTokenClient(
    baseOptions(clock, f.fetch, {
      getSessionToken: async () => {
        await later(asked++ % 6);
        return session;
      },
    }),
  );
  await rejection(client.getToken());
  session = "new";
  const results = await Promise.all(Array.from({ length: 5 }, () => client.getToken()));
  assert.equal(new Set(results.map((t) => t.token)).size, 1);
  assert.equal(f.calls.length, 2);
  client.stop();
});
