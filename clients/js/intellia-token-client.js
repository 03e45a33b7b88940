// intellia-token-client — browser client for intellia-token-broker (POST /v1/token).
//
// A dependency-free ES module. It fetches a short-lived Intellia chat token for the signed-in
// user, caches it, refreshes it ahead of expiry, recovers after sleep / a hidden tab / going
// offline, honours `429 Retry-After`, backs off with full jitter on 5xx and network errors, and
// tells terminal errors (401/403) from retryable ones.
//
// Clock rule: the broker's `expiresIn` (seconds left, from the broker's clock) is measured
// against this client's own clock at the moment the request was sent. `expiresAt` is passed
// through for display but never compared with the local clock, so a skewed device clock does
// not matter. Timers freeze while a device sleeps, so every wake-up event re-checks the wall clock.
//
// The token is never logged, and never put into an error message.
//
// clients/js/intellia-token-client.global.js is generated from this file by build-global.mjs:
// run `node clients/js/build-global.mjs` after editing it (a unit test fails when it is stale).

const DEFAULTS = Object.freeze({
  refreshMarginSecs: 300,
  timeoutMs: 15000,
  backoffBaseMs: 1000,
  backoffMaxMs: 60000,
});

// Status codes after which the client stops until reset() or a new session token.
const TERMINAL_STATUSES = new Set([401, 403]);

/** Error raised (and passed to onError) for every failure to obtain a token. */
export class IntelliaTokenError extends Error {
  constructor(message, info = {}) {
    super(message);
    this.name = "IntelliaTokenError";
    /** HTTP status, or 0 when no HTTP response was read (network error, timeout, CORS). */
    this.status = info.status ?? 0;
    /** Stable code: the broker's problem `code`, or a client code such as `network_error`. */
    this.code = info.code ?? "unknown_error";
    this.title = info.title;
    this.detail = info.detail;
    /** Seconds until the client will make its next request (429 Retry-After or backoff). */
    this.retryAfterSecs = info.retryAfterSecs;
    /** true for 401/403: the client stops until reset() or a new session token. */
    this.terminal = Boolean(info.terminal);
    /** true when the client retries by itself (429, 5xx, network errors, timeouts). */
    this.retryable = Boolean(info.retryable);
    this.requestId = info.requestId;
    if (info.cause !== undefined) this.cause = info.cause;
  }
}

function classify(status) {
  if (TERMINAL_STATUSES.has(status)) return { terminal: true, retryable: false };
  if (status === 408 || status === 425 || status === 429 || status >= 500) {
    return { terminal: false, retryable: true };
  }
  return { terminal: false, retryable: false };
}

// Retry-After: delta-seconds, or an HTTP-date (only as a fallback; it depends on the local clock).
function parseRetryAfterMs(value, wallNow) {
  if (value == null) return undefined;
  const text = String(value).trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  const at = Date.parse(text);
  if (Number.isFinite(at)) return Math.max(0, at - wallNow());
  return undefined;
}

// RateLimit: "user";r=0;t=12 (draft-ietf-httpapi-ratelimit-headers) — a fallback for Retry-After.
function parseRateLimitResetMs(value) {
  if (value == null) return undefined;
  const m = /(?:^|;)\s*t=(\d+)/.exec(String(value));
  return m ? Number(m[1]) * 1000 : undefined;
}

// What an aborted call rejects with: the signal's reason, as fetch() does (an AbortError
// DOMException unless the caller gave another), or one made here for signals without a reason.
function abortReason(signal) {
  if (signal.reason !== undefined) return signal.reason;
  if (typeof DOMException === "function") return new DOMException("The operation was aborted.", "AbortError");
  return new IntelliaTokenError("The token request was cancelled", { code: "aborted" });
}

function defaultFetch() {
  if (typeof globalThis.fetch !== "function") return undefined;
  return (input, init) => globalThis.fetch(input, init);
}

function eventTarget(candidate) {
  return candidate && typeof candidate.addEventListener === "function" ? candidate : undefined;
}

export class IntelliaTokenClient {
  /**
   * @param {object} options see intellia-token-client.d.ts
   */
  constructor(options = {}) {
    if (!options || typeof options.endpoint !== "string" || options.endpoint === "") {
      throw new TypeError("IntelliaTokenClient: options.endpoint (the broker's /v1/token URL) is required");
    }
    if (options.getSessionToken !== undefined && typeof options.getSessionToken !== "function") {
      throw new TypeError("IntelliaTokenClient: options.getSessionToken must be a function");
    }
    const fetchImpl = options.fetch ?? defaultFetch();
    if (typeof fetchImpl !== "function") {
      throw new TypeError("IntelliaTokenClient: no fetch available; pass options.fetch");
    }
    this._endpoint = options.endpoint;
    this._credentials = options.credentials;
    this._getSessionToken = options.getSessionToken;
    this._jsonBody = Boolean(options.jsonBody);
    this._fetch = fetchImpl;
    this._now = options.now ?? (() => Date.now());
    this._random = options.random ?? Math.random;
    this._setTimeout = options.setTimeout ?? ((fn, ms) => globalThis.setTimeout(fn, ms));
    this._clearTimeout = options.clearTimeout ?? ((id) => globalThis.clearTimeout(id));
    this._marginMs = 1000 * (options.refreshMarginSecs ?? DEFAULTS.refreshMarginSecs);
    this._timeoutMs = options.timeoutMs ?? DEFAULTS.timeoutMs;
    this._backoffBaseMs = options.backoffBaseMs ?? DEFAULTS.backoffBaseMs;
    this._backoffMaxMs = options.backoffMaxMs ?? DEFAULTS.backoffMaxMs;
    this._autoRefresh = options.autoRefresh !== false;

    this._tokenListeners = new Set();
    this._errorListeners = new Set();
    if (typeof options.onToken === "function") this._tokenListeners.add(options.onToken);
    if (typeof options.onError === "function") this._errorListeners.add(options.onError);

    this._current = null; // {data, sentAt, refreshAt, expiresAtLocal}
    this._inflight = null; // Promise of the one request in flight
    this._abort = null; // AbortController of that request
    this._failures = 0; // consecutive retryable failures (for backoff)
    this._lastError = null;
    this._nextAttemptAt = 0; // backoff gate (soft: force refresh and `online` bypass it)
    this._notBefore = 0; // Retry-After gate (hard: nothing is sent before it)
    this._retryPending = false; // a retryable failure waits for a background retry
    this._terminal = null; // {error, sessionToken}
    this._sentSessionToken = undefined; // kept only to notice a new session after a 401/403
    this._timer = null;
    this._stopped = false;

    this._listeners = [];
    const doc = eventTarget(options.document !== undefined ? options.document : globalThis.document);
    const win = eventTarget(options.window !== undefined ? options.window : globalThis.window);
    if (doc) this._listen(doc, "visibilitychange", () => {
      if (doc.visibilityState === undefined || doc.visibilityState === "visible") this._wake("visible");
    });
    if (win) {
      this._listen(win, "online", () => this._wake("online"));
      this._listen(win, "focus", () => this._wake("focus"));
      this._listen(win, "pageshow", () => this._wake("pageshow"));
    }
  }

  /**
   * The current token, fetching one when none is cached or the cached one is due for refresh.
   * `signal` (an AbortSignal) abandons this call only: it rejects with `signal.reason`, as fetch
   * does, while the one shared request goes on for other callers and still fills the cache.
   * @param {{forceRefresh?: boolean, signal?: AbortSignal}} [opts]
   */
  getToken(opts = {}) {
    const signal = opts ? opts.signal : undefined;
    if (signal === undefined || signal === null) return this._getToken(opts);
    if (typeof signal.aborted !== "boolean" || typeof signal.addEventListener !== "function") {
      return Promise.reject(new TypeError("getToken: `signal` must be an AbortSignal"));
    }
    if (signal.aborted) return Promise.reject(abortReason(signal));
    return new Promise((resolve, reject) => {
      const onAbort = () => reject(abortReason(signal));
      signal.addEventListener("abort", onAbort, { once: true });
      this._getToken(opts)
        .finally(() => signal.removeEventListener("abort", onAbort))
        .then(resolve, reject);
    });
  }

  async _getToken(opts) {
    const force = Boolean(opts && opts.forceRefresh);
    if (this._stopped) throw this._stoppedError();
    if (this._terminal) {
      if (!(await this._sessionChanged())) throw this._terminal.error;
      this._clearTerminal();
    }
    if (this._inflight) return this._inflightResult();
    const now = this._now();
    const cur = this._current;
    if (!force && cur && now >= cur.sentAt && now < cur.refreshAt) return this._view(cur, now);
    if (now < this._notBefore) {
      if (this._usable(cur, now)) return this._view(cur, now);
      throw this._gateError(this._notBefore, now);
    }
    if (!force && now < this._nextAttemptAt) {
      if (this._usable(cur, now)) return this._view(cur, now);
      throw this._gateError(this._nextAttemptAt, now);
    }
    this._start();
    return this._inflightResult();
  }

  /** Forces a new request (still one at a time, and never before a 429's Retry-After). */
  refresh() {
    return this.getToken({ forceRefresh: true });
  }

  /** The cached token without any request, or null. */
  peek() {
    const now = this._now();
    return this._usable(this._current, now) ? this._view(this._current, now) : null;
  }

  /** Calls `cb(token)` on every new token; returns an unsubscribe function. */
  onToken(cb) {
    if (typeof cb !== "function") throw new TypeError("onToken expects a function");
    this._tokenListeners.add(cb);
    return () => {
      this._tokenListeners.delete(cb);
    };
  }

  /** Calls `cb(error)` on every failure, background refreshes included; returns an unsubscribe function. */
  onError(cb) {
    if (typeof cb !== "function") throw new TypeError("onError expects a function");
    this._errorListeners.add(cb);
    return () => {
      this._errorListeners.delete(cb);
    };
  }

  /** Forgets the token, a terminal error and the backoff (a 429's Retry-After still holds). */
  reset() {
    if (this._abort) this._abort.abort();
    this._clearTimer();
    this._current = null;
    this._inflight = null;
    this._abort = null;
    this._failures = 0;
    this._lastError = null;
    this._nextAttemptAt = 0;
    this._retryPending = false;
    this._terminal = null;
    this._sentSessionToken = undefined;
  }

  /** Clears timers and event listeners and aborts a request in flight; the client is then unusable. */
  stop() {
    if (this._stopped) return;
    this._stopped = true;
    this._clearTimer();
    if (this._abort) this._abort.abort();
    for (const [target, type, fn] of this._listeners) target.removeEventListener(type, fn);
    this._listeners = [];
    this._tokenListeners.clear();
    this._errorListeners.clear();
    this._current = null;
  }

  /** Alias of stop(). */
  dispose() {
    this.stop();
  }

  // ---- internals -------------------------------------------------------------------------

  _listen(target, type, fn) {
    target.addEventListener(type, fn);
    this._listeners.push([target, type, fn]);
  }

  _usable(cur, now) {
    return Boolean(cur) && now >= cur.sentAt && now < cur.expiresAtLocal;
  }

  _view(cur, now) {
    const d = cur.data;
    return Object.freeze({
      token: d.token,
      expiresAt: d.expiresAt,
      expiresIn: Math.max(0, Math.floor((cur.expiresAtLocal - now) / 1000)),
      userId: d.userId,
      organizationId: d.organizationId,
      role: d.role,
    });
  }

  _stoppedError() {
    return new IntelliaTokenError("IntelliaTokenClient was stopped", { code: "client_stopped" });
  }

  _gateError(until, now) {
    const last = this._lastError;
    const secs = Math.max(1, Math.ceil((until - now) / 1000));
    return new IntelliaTokenError(last ? last.message : "Waiting before the next request", {
      status: last ? last.status : 0,
      code: last ? last.code : "retry_later",
      title: last && last.title,
      detail: last && last.detail,
      retryAfterSecs: secs,
      retryable: last ? last.retryable : true,
      terminal: false,
      requestId: last && last.requestId,
    });
  }

  async _sessionChanged() {
    if (!this._getSessionToken) return false;
    const refused = this._terminal.sessionToken; // read before awaiting: a concurrent call may clear it
    let token;
    try {
      token = await this._askSession();
    } catch {
      return false;
    }
    return typeof token === "string" && token !== "" && token !== refused;
  }

  // The site's session token, bounded by timeoutMs like the request itself.
  _askSession() {
    const asked = Promise.resolve().then(() => this._getSessionToken());
    if (!(this._timeoutMs > 0)) return asked;
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = this._setTimeout(() => reject(new Error("getSessionToken() timed out")), this._timeoutMs);
    });
    return Promise.race([asked, timeout]).finally(() => this._clearTimeout(timer));
  }

  _clearTerminal() {
    this._terminal = null;
    this._failures = 0;
    this._nextAttemptAt = 0;
    this._lastError = null;
  }

  _inflightResult() {
    const p = this._inflight;
    return p.then((outcome) => {
      if (outcome.ok) return this._view(outcome.cur, this._now());
      const now = this._now();
      if (!outcome.stale && !outcome.error.terminal && this._usable(this._current, now)) {
        return this._view(this._current, now);
      }
      throw outcome.error;
    });
  }

  // Starts the single request; its promise never rejects (it resolves to an outcome).
  _start() {
    this._clearTimer();
    const p = this._request().then(
      (cur) => this._succeeded(p, cur),
      (error) => this._failed(p, error),
    );
    this._inflight = p;
    return p;
  }

  async _request() {
    let sessionToken;
    if (this._getSessionToken) {
      try {
        sessionToken = await this._askSession();
      } catch (cause) {
        throw new IntelliaTokenError("Could not get the site session token", {
          code: "session_unavailable",
          cause,
        });
      }
      if (typeof sessionToken !== "string" || sessionToken === "") {
        throw new IntelliaTokenError("No site session: the user is not signed in", { code: "no_session" });
      }
    }
    if (this._stopped) throw this._stoppedError();
    const headers = { Accept: "application/json" };
    if (sessionToken) headers.Authorization = `Bearer ${sessionToken}`;
    const init = { method: "POST", headers, cache: "no-store", mode: "cors" };
    if (this._credentials) init.credentials = this._credentials;
    if (this._jsonBody) {
      headers["Content-Type"] = "application/json";
      init.body = "{}";
    }
    const abort = typeof AbortController === "function" ? new AbortController() : null;
    if (abort) init.signal = abort.signal;
    this._abort = abort;
    let timedOut = false;
    const timer =
      abort && this._timeoutMs > 0
        ? this._setTimeout(() => {
            timedOut = true;
            abort.abort();
          }, this._timeoutMs)
        : null;
    this._sentSessionToken = sessionToken;
    const sentAt = this._now();
    let res;
    try {
      res = await this._fetch(this._endpoint, init);
    } catch (cause) {
      if (this._stopped) throw this._stoppedError();
      if (abort && abort.signal.aborted && !timedOut) {
        throw new IntelliaTokenError("The token request was cancelled", { code: "aborted" });
      }
      if (timedOut) {
        throw new IntelliaTokenError("The token request timed out", { code: "timeout", retryable: true });
      }
      // A CORS refusal looks exactly like this too: the browser hides the response.
      throw new IntelliaTokenError("Network error while requesting a token", {
        code: "network_error",
        retryable: true,
        cause,
      });
    } finally {
      if (timer != null) this._clearTimeout(timer);
    }
    let text = "";
    try {
      text = await res.text();
    } catch (cause) {
      if (this._stopped) throw this._stoppedError();
      throw new IntelliaTokenError("Network error while reading the token response", {
        status: res.status,
        code: "network_error",
        retryable: true,
        cause,
      });
    }
    const requestId = res.headers.get("X-Request-Id") || undefined;
    if (!res.ok) throw this._httpError(res, text, requestId);
    let data;
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
    if (
      !data ||
      typeof data.token !== "string" ||
      data.token === "" ||
      typeof data.expiresIn !== "number" ||
      !Number.isFinite(data.expiresIn) ||
      data.expiresIn < 0
    ) {
      throw new IntelliaTokenError("The broker sent an unexpected token response", {
        status: res.status,
        code: "invalid_response",
        retryable: true,
        requestId,
      });
    }
    const lifetimeMs = data.expiresIn * 1000;
    // Refresh `refreshMarginSecs` before expiry, but never sooner than half the lifetime:
    // a broker cache may hand back a token that is already inside our margin.
    const refreshInMs = Math.max(lifetimeMs - this._marginMs, lifetimeMs / 2);
    return {
      data: {
        token: data.token,
        expiresAt: data.expiresAt,
        expiresIn: data.expiresIn,
        userId: data.userId,
        organizationId: data.organizationId,
        role: data.role,
      },
      sentAt,
      refreshAt: sentAt + refreshInMs,
      expiresAtLocal: sentAt + lifetimeMs,
    };
  }

  _httpError(res, text, requestId) {
    let problem = {};
    try {
      const parsed = JSON.parse(text);
      if (parsed && typeof parsed === "object") problem = parsed;
    } catch {
      // not problem+json: keep the status only
    }
    const status = res.status;
    const kind = classify(status);
    const code = typeof problem.code === "string" ? problem.code : `http_${status}`;
    const title = typeof problem.title === "string" ? problem.title : res.statusText || undefined;
    const detail = typeof problem.detail === "string" ? problem.detail : undefined;
    let retryAfterMs = parseRetryAfterMs(res.headers.get("Retry-After"), this._now);
    if (retryAfterMs === undefined && status === 429) {
      retryAfterMs = parseRateLimitResetMs(res.headers.get("RateLimit"));
    }
    const message = [title || `HTTP ${status}`, detail].filter(Boolean).join(": ");
    const err = new IntelliaTokenError(message, {
      status,
      code,
      title,
      detail,
      retryAfterSecs: retryAfterMs === undefined ? undefined : Math.ceil(retryAfterMs / 1000),
      terminal: kind.terminal,
      retryable: kind.retryable,
      requestId,
    });
    err._retryAfterMs = retryAfterMs;
    return err;
  }

  _succeeded(p, cur) {
    if (this._stopped) return { ok: false, stale: true, error: this._stoppedError() };
    // A request that reset() cancelled must not touch the new state.
    if (this._inflight !== p) return { ok: false, stale: true, error: this._staleError() };
    this._inflight = null;
    this._abort = null;
    this._sentSessionToken = undefined;
    const previous = this._current;
    this._current = cur;
    this._failures = 0;
    this._lastError = null;
    this._nextAttemptAt = 0;
    this._retryPending = false;
    this._arm();
    if (!previous || previous.data.token !== cur.data.token) {
      const view = this._view(cur, this._now());
      for (const cb of [...this._tokenListeners]) this._call(cb, view);
    }
    return { ok: true, cur };
  }

  _failed(p, error) {
    if (this._stopped) return { ok: false, stale: true, error: this._stoppedError() };
    if (this._inflight !== p) return { ok: false, stale: true, error: this._staleError() };
    this._inflight = null;
    this._abort = null;
    if (!(error instanceof IntelliaTokenError)) {
      error = new IntelliaTokenError("Unexpected client error", { code: "client_error", cause: error });
    }
    const now = this._now();
    this._lastError = error;
    const sentSessionToken = this._sentSessionToken;
    this._sentSessionToken = undefined;
    if (error.terminal) {
      this._terminal = { error, sessionToken: sentSessionToken };
      this._current = null;
      this._retryPending = false;
      this._clearTimer();
    } else if (error.code === "no_session" || error.code === "session_unavailable") {
      // Nothing was sent; the next getToken() asks the site for its session again.
      this._retryPending = false;
      this._arm();
    } else {
      this._failures += 1;
      const cap = Math.min(this._backoffMaxMs, this._backoffBaseMs * 2 ** Math.min(this._failures - 1, 30));
      const backoffMs = this._random() * cap; // full jitter
      const retryAfterMs = error._retryAfterMs;
      if (retryAfterMs !== undefined) this._notBefore = Math.max(this._notBefore, now + retryAfterMs);
      this._nextAttemptAt = Math.max(now + backoffMs, this._notBefore);
      error.retryAfterSecs = Math.max(0, Math.ceil((this._nextAttemptAt - now) / 1000));
      this._retryPending = error.retryable;
      this._arm();
    }
    delete error._retryAfterMs;
    for (const cb of [...this._errorListeners]) this._call(cb, error);
    return { ok: false, error };
  }

  _staleError() {
    return new IntelliaTokenError("The token request was cancelled by reset()", { code: "aborted" });
  }

  _call(cb, arg) {
    try {
      cb(arg);
    } catch (e) {
      if (typeof globalThis.reportError === "function") globalThis.reportError(e);
    }
  }

  // When the next background request is due (wall clock), or null when none is.
  _dueAt() {
    if (this._stopped || this._terminal) return null;
    // After an error that retrying cannot fix (e.g. no session, 400), wait for getToken().
    if (this._lastError && !this._lastError.retryable) return null;
    let at = null;
    if (this._retryPending) at = this._nextAttemptAt;
    else if (this._current && this._autoRefresh) at = this._current.refreshAt;
    if (at === null) return null;
    return Math.max(at, this._nextAttemptAt, this._notBefore);
  }

  _arm() {
    this._clearTimer();
    const at = this._dueAt();
    if (at === null) return;
    // setTimeout overflows past 2^31-1 ms; long waits are re-armed when they fire.
    const delay = Math.min(Math.max(0, at - this._now()), 2147483647);
    const id = this._setTimeout(() => {
      this._timer = null;
      this._wake("timer");
    }, delay);
    if (id && typeof id.unref === "function") id.unref();
    this._timer = id;
  }

  _clearTimer() {
    if (this._timer !== null) {
      this._clearTimeout(this._timer);
      this._timer = null;
    }
  }

  // Timers freeze while the device sleeps or the tab is frozen: re-check by the wall clock.
  _wake(reason) {
    if (this._stopped || this._terminal || this._inflight) return;
    const now = this._now();
    if (reason === "online" && this._retryPending) this._nextAttemptAt = Math.min(this._nextAttemptAt, now);
    // A clock set backwards makes the cached token's age unknowable: refresh it.
    if (this._current && now < this._current.sentAt) this._current.refreshAt = now;
    const at = this._dueAt();
    if (at === null) return;
    if (now >= at) {
      this._start();
    } else {
      this._arm();
    }
  }
}

export default IntelliaTokenClient;
