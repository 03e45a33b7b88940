// Recovery after sleep, a hidden tab and going offline; and stop()/dispose().
import { test } from "node:test";
import assert from "node:assert/strict";
import { IntelliaTokenClient } from "../intellia-token-client.js";
import {
  FakeClock,
  FakeTarget,
  fakeFetch,
  deferredFetch,
  okResponse,
  problemResponse,
  tokenBody,
  baseOptions,
  flush,
} from "../testing/support.mjs";

const SECOND = 1000;

function withTargets(clock, fetch, extra = {}) {
  const document = new FakeTarget({ visibilityState: "visible" });
  const window = new FakeTarget();
  const client = new IntelliaTokenClient(
    baseOptions(clock, fetch, { refreshMarginSecs: 60, document, window, ...extra }),
  );
  return { client, document, window };
}

test("after sleep (timers frozen), becoming visible again refreshes an overdue token", async () => {
  const clock = new FakeClock();
  const f = fakeFetch(clock, [okResponse(tokenBody(1, 600))]);
  const { client, document } = withTargets(clock, f.fetch);
  const tokens = [];
  client.onToken((t) => tokens.push(t.token));
  await client.getToken();
  clock.jump(2 * 3600 * SECOND); // the laptop slept two hours; the refresh timer never fired
  document.visibilityState = "hidden";
  document.fire("visibilitychange");
  await flush();
  assert.equal(f.calls.length, 1, "a tab becoming hidden does not refresh");
  document.visibilityState = "visible";
  document.fire("visibilitychange");
  await flush();
  assert.equal(f.calls.length, 2, "becoming visible re-checks the wall clock and refreshes");
  assert.equal(tokens.length, 2);
  client.stop();
});

for (const event of ["focus", "pageshow"]) {
  test(`window ${event} after sleep refreshes an overdue token, once`, async () => {
    const clock = new FakeClock();
    const f = fakeFetch(clock, [okResponse(tokenBody(1, 600))]);
    const { client, window } = withTargets(clock, f.fetch);
    await client.getToken();
    clock.jump(700 * SECOND);
    window.fire(event);
    window.fire(event); // a second event while the refresh is in flight adds nothing
    await flush();
    assert.equal(f.calls.length, 2);
    window.fire(event);
    await flush();
    assert.equal(f.calls.length, 2, "the fresh token is not refreshed again");
    client.stop();
  });
}

test("a wake-up before the refresh is due sends nothing but re-arms the timer by the wall clock", async () => {
  const clock = new FakeClock();
  const f = fakeFetch(clock, [okResponse(tokenBody(1, 600))]);
  const { client, window } = withTargets(clock, f.fetch);
  await client.getToken();
  clock.jump(500 * SECOND); // slept 500 s: the 540 s timer is stale now
  window.fire("focus");
  await flush();
  assert.equal(f.calls.length, 1);
  await clock.advance(40 * SECOND - 1);
  assert.equal(f.calls.length, 1);
  await clock.advance(1);
  assert.equal(f.calls.length, 2, "refreshed at 540 s of wall-clock time");
  client.stop();
});

test("a wake-up with no token and nothing pending sends nothing", async () => {
  const clock = new FakeClock();
  const f = fakeFetch(clock);
  const { client, document, window } = withTargets(clock, f.fetch);
  document.fire("visibilitychange");
  window.fire("online");
  window.fire("focus");
  window.fire("pageshow");
  await flush();
  assert.equal(f.calls.length, 0);
  client.stop();
});

test("back online: a retry waiting out a network-error backoff goes at once", async () => {
  const clock = new FakeClock();
  const offline = () => new TypeError("Failed to fetch");
  const f = fakeFetch(clock, [offline(), offline(), offline(), offline(), offline()]);
  const { client, window } = withTargets(clock, f.fetch, { random: () => 0.999, backoffMaxMs: 60000 });
  const tokens = [];
  client.onToken((t) => tokens.push(t));
  await client.getToken().catch(() => {});
  await clock.advance(1 + 2 + 4 + 8); // four quick retries, then the backoff is ~16 s
  await clock.advance(15 * SECOND);
  assert.equal(f.calls.length, 5);
  window.fire("online");
  await flush();
  assert.equal(f.calls.length, 6, "online skips the remaining backoff");
  assert.equal(tokens.length, 1);
  client.stop();
});

test("back online does not override a 429's Retry-After", async () => {
  const clock = new FakeClock();
  const f = fakeFetch(clock, [problemResponse(429, "rate_limited", { "Retry-After": "60" })]);
  const { client, window, document } = withTargets(clock, f.fetch, { random: () => 0 });
  await client.getToken().catch(() => {});
  await clock.advance(10 * SECOND);
  window.fire("online");
  window.fire("focus");
  document.fire("visibilitychange");
  await flush();
  assert.equal(f.calls.length, 1);
  await clock.advance(50 * SECOND);
  assert.equal(f.calls.length, 2);
  client.stop();
});

test("a timer overdue after sleep fires the retry on wake-up", async () => {
  const clock = new FakeClock();
  const f = fakeFetch(clock, [problemResponse(503, "upstream_unavailable")]);
  const { client, document } = withTargets(clock, f.fetch);
  await client.getToken().catch(() => {});
  clock.jump(3600 * SECOND);
  document.fire("visibilitychange");
  await flush();
  assert.equal(f.calls.length, 2);
  assert.ok(client.peek());
  client.stop();
});

test("stop() removes every listener, clears every timer and aborts the request in flight", async () => {
  const clock = new FakeClock();
  const d = deferredFetch(clock);
  const document = new FakeTarget({ visibilityState: "visible" });
  const window = new FakeTarget();
  const client = new IntelliaTokenClient(baseOptions(clock, d.fetch, { document, window }));
  assert.equal(document.listenerCount, 1);
  assert.equal(window.listenerCount, 3);
  const pending = client.getToken().catch((e) => e);
  await flush();
  assert.equal(d.calls.length, 1);
  assert.ok(clock.pendingTimers > 0, "the request timeout is armed");
  client.stop();
  assert.equal(d.calls[0].init.signal.aborted, true);
  d.calls[0].reject(new DOMException("aborted", "AbortError"));
  const err = await pending;
  assert.equal(err.code, "client_stopped");
  assert.equal(document.listenerCount, 0);
  assert.equal(window.listenerCount, 0);
  assert.equal(clock.pendingTimers, 0);
  await assert.rejects(client.getToken(), (e) => e.code === "client_stopped");
  assert.equal(d.calls.length, 1);
});

test("dispose() after a token: no refresh timer fires, no event reaches a stopped client", async () => {
  const clock = new FakeClock();
  const f = fakeFetch(clock, [okResponse(tokenBody(1, 600))]);
  const { client, document, window } = withTargets(clock, f.fetch);
  let notified = 0;
  client.onToken(() => notified++);
  await client.getToken();
  assert.equal(clock.pendingTimers, 1, "the refresh timer");
  client.dispose();
  assert.equal(clock.pendingTimers, 0);
  await clock.advance(3 * 3600 * SECOND);
  document.fire("visibilitychange");
  window.fire("online");
  await flush();
  assert.equal(f.calls.length, 1);
  assert.equal(notified, 1);
  assert.equal(client.peek(), null);
});

test("reset() cancels the request in flight without letting it touch the new state", async () => {
  const clock = new FakeClock();
  const d = deferredFetch(clock);
  const client = new IntelliaTokenClient(baseOptions(clock, d.fetch));
  const first = client.getToken().catch((e) => e);
  await flush();
  client.reset();
  const second = client.getToken();
  await flush();
  assert.equal(d.calls.length, 2);
  d.calls[1].resolve(okResponse(tokenBody(2)));
  d.calls[0].resolve(okResponse(tokenBody(1))); // the cancelled one answers late
  assert.equal((await second).token, tokenBody(2).token);
  assert.equal((await first).code, "aborted");
  assert.equal(client.peek().token, tokenBody(2).token);
  client.stop();
});

test("with no document/window (a worker, Node) the client still works", async () => {
  const clock = new FakeClock();
  const f = fakeFetch(clock);
  const client = new IntelliaTokenClient(baseOptions(clock, f.fetch, { document: undefined, window: undefined }));
  assert.ok((await client.getToken()).token);
  client.stop();
});
