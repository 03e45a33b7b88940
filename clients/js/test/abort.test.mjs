// getToken({ signal }): a per-call AbortSignal abandons that call only.
import { test } from "node:test";
import assert from "node:assert/strict";
import { IntelliaTokenClient } from "../intellia-token-client.js";
import { FakeClock, fakeFetch, deferredFetch, okResponse, tokenBody, baseOptions, flush, rejection } from "../testing/support.mjs";

test("an already aborted signal rejects at once with its reason and sends nothing", async () => {
  const clock = new FakeClock();
  const f = fakeFetch(clock);
  const client = new IntelliaTokenClient(baseOptions(clock, f.fetch));
  const err = await rejection(client.getToken({ signal: AbortSignal.abort() }));
  assert.equal(err.name, "AbortError");
  const reason = new Error("page left");
  assert.equal(await rejection(client.getToken({ signal: AbortSignal.abort(reason) })), reason);
  await flush();
  assert.equal(f.calls.length, 0, "no request for an aborted call");
  client.stop();
});

test("aborting one call rejects it with the signal's reason; the shared request goes on for the others", async () => {
  const clock = new FakeClock();
  const d = deferredFetch(clock);
  const client = new IntelliaTokenClient(baseOptions(clock, d.fetch));
  const errors = [];
  client.onError((e) => errors.push(e));
  const controller = new AbortController();
  const abandoned = rejection(client.getToken({ signal: controller.signal }));
  const other = client.getToken();
  await flush();
  assert.equal(d.calls.length, 1, "one request for both callers");
  controller.abort();
  const err = await abandoned;
  assert.equal(err.name, "AbortError");
  assert.equal(d.calls[0].init.signal.aborted, false, "the shared request is not cancelled");
  d.calls[0].resolve(okResponse(tokenBody(1)));
  assert.equal((await other).token, tokenBody(1).token);
  assert.equal(client.peek().token, tokenBody(1).token, "the answer still fills the cache");
  assert.deepEqual(errors, [], "a caller's abort is not a client error");
  client.stop();
});

test("an abort after the answer changes nothing, and the listener is removed", async () => {
  const clock = new FakeClock();
  const f = fakeFetch(clock);
  const client = new IntelliaTokenClient(baseOptions(clock, f.fetch));
  const controller = new AbortController();
  let added = 0;
  let removed = 0;
  const signal = controller.signal;
  const add = signal.addEventListener.bind(signal);
  const remove = signal.removeEventListener.bind(signal);
  signal.addEventListener = (...a) => {
    added++;
    add(...a);
  };
  signal.removeEventListener = (...a) => {
    removed++;
    remove(...a);
  };
  const t = await client.getToken({ signal });
  controller.abort();
  assert.equal(t.token, tokenBody("auto1").token);
  assert.equal(added, 1);
  assert.equal(removed, 1, "no listener left on a long-lived signal");
  client.stop();
});

test("AbortSignal.timeout rejects with a TimeoutError while the request hangs", async () => {
  const clock = new FakeClock();
  const d = deferredFetch(clock);
  const client = new IntelliaTokenClient(baseOptions(clock, d.fetch));
  // AbortSignal.timeout's timer does not hold the event loop open; this one does.
  const keepAlive = setTimeout(() => {}, 5000);
  const err = await rejection(client.getToken({ signal: AbortSignal.timeout(20) }));
  clearTimeout(keepAlive);
  assert.equal(err.name, "TimeoutError");
  client.stop();
});

test("a signal that is not an AbortSignal is a TypeError", async () => {
  const clock = new FakeClock();
  const f = fakeFetch(clock);
  const client = new IntelliaTokenClient(baseOptions(clock, f.fetch));
  const err = await rejection(client.getToken({ signal: { aborted: "no" } }));
  assert.ok(err instanceof TypeError, String(err));
  await client.getToken({ signal: null });
  assert.equal(f.calls.length, 1, "null means no signal");
  client.stop();
});
