// Test doubles for the client's injected dependencies: a fake clock with fake timers, a scripted
// fake fetch that records every request, and event targets standing in for document/window.

import assert from "node:assert/strict";

/** The reason `promise` rejects with; the test fails if it fulfils. */
export async function rejection(promise) {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  assert.fail("expected the promise to reject");
}

/** Lets pending promise callbacks (fetch → text → state updates) run. */
export async function flush() {
  for (let i = 0; i < 10; i++) await new Promise((resolve) => setImmediate(resolve));
}

/**
 * A wall clock plus timers that only fire from advance(). jump() moves the wall clock without
 * firing anything — what a laptop lid or a frozen background tab does to real timers.
 */
export class FakeClock {
  constructor(start = Date.UTC(2026, 10, 28, 10, 0, 0)) {
    this.t = start;
    this.timers = new Map();
    this.nextId = 1;
    this.now = () => this.t;
    this.setTimeout = (fn, ms) => {
      const id = this.nextId++;
      this.timers.set(id, { at: this.t + Math.max(0, Number(ms) || 0), fn });
      return id;
    };
    this.clearTimeout = (id) => {
      this.timers.delete(id);
    };
  }

  /** Moves time forward by `ms`, firing due timers in order, with microtasks settled between them. */
  async advance(ms) {
    const end = this.t + ms;
    await flush();
    for (;;) {
      let next = null;
      for (const [id, timer] of this.timers) {
        if (timer.at <= end && (next === null || timer.at < next[1].at)) next = [id, timer];
      }
      if (next === null) break;
      this.timers.delete(next[0]);
      this.t = Math.max(this.t, next[1].at);
      next[1].fn();
      await flush();
    }
    this.t = end;
    await flush();
  }

  /** Moves the wall clock without firing timers (they were frozen). */
  jump(ms) {
    this.t += ms;
  }

  get pendingTimers() {
    return this.timers.size;
  }
}

export function tokenBody(n, expiresIn = 7200, extra = {}) {
  return {
    token: `tok-${n}-${"x".repeat(24)}`,
    expiresAt: "2026-11-28T12:00:00Z",
    expiresIn,
    userId: "user-123",
    organizationId: "org-456",
    role: "chat",
    ...extra,
  };
}

export function okResponse(body) {
  return new Response(JSON.stringify(body), {
    status: 200,
    headers: { "Content-Type": "application/json", "Cache-Control": "no-store" },
  });
}

const TITLES = {
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  429: "Too Many Requests",
  500: "Internal Server Error",
  502: "Bad Gateway",
  503: "Service Unavailable",
  504: "Gateway Timeout",
};

export function problemResponse(status, code, headers = {}) {
  const body = {
    type: "about:blank",
    title: TITLES[status] ?? "Error",
    status,
    code,
    detail: `problem ${code}`,
  };
  return new Response(JSON.stringify(body), {
    status,
    headers: { "Content-Type": "application/problem+json", "X-Request-Id": `req-${status}`, ...headers },
  });
}

/**
 * A scripted fetch. Each request takes the next responder from `script` (a Response, a function
 * returning one, an Error to throw, or "hang" for a request that only ends when aborted); when the
 * script is empty, every request gets a fresh token (tok-auto1-…, tok-auto2-…).
 */
export function fakeFetch(clock, script = []) {
  let minted = 0;
  const calls = [];
  const fetch = async (url, init = {}) => {
    calls.push({ url, init, at: clock.t });
    const step = script.length ? script.shift() : null;
    if (step === null) return okResponse(tokenBody(`auto${++minted}`));
    if (step === "hang") {
      return new Promise((_, reject) => {
        init.signal?.addEventListener("abort", () => reject(new DOMException("aborted", "AbortError")));
      });
    }
    if (step instanceof Error) throw step;
    if (typeof step === "function") return step(url, init);
    return step;
  };
  return { fetch, calls, script };
}

/** A manually resolved fetch, for requests that must stay in flight. */
export function deferredFetch(clock) {
  const calls = [];
  const fetch = (url, init = {}) =>
    new Promise((resolve, reject) => {
      calls.push({ url, init, at: clock.t, resolve, reject });
    });
  return { fetch, calls };
}

/** An EventTarget that also counts its listeners, standing in for `document` or `window`. */
export class FakeTarget extends EventTarget {
  constructor(props = {}) {
    super();
    Object.assign(this, props);
    this.listenerCount = 0;
  }
  addEventListener(type, fn, opts) {
    this.listenerCount++;
    super.addEventListener(type, fn, opts);
  }
  removeEventListener(type, fn, opts) {
    this.listenerCount--;
    super.removeEventListener(type, fn, opts);
  }
  fire(type) {
    this.dispatchEvent(new Event(type));
  }
}

export const ENDPOINT = "https://broker.example.com/v1/token";

/** Options that wire a client to the fakes; `document`/`window` are off unless given. */
export function baseOptions(clock, fetch, extra = {}) {
  return {
    endpoint: ENDPOINT,
    credentials: "include",
    fetch,
    now: clock.now,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    random: () => 0.5,
    document: null,
    window: null,
    ...extra,
  };
}
