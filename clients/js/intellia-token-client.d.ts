// Type declarations for the ES module intellia-token-client.js. The classic-script build's globals
// (window.IntelliaTokenClient, window.IntelliaTokenError) are declared apart, in
// intellia-token-client.global.d.ts, so importing the module never adds globals to a program.

/** A chat token as returned by the broker's POST /v1/token. */
export interface IntelliaToken {
  /** The Intellia assume-role token. Never log it. */
  readonly token: string;
  /** Intellia's expiry instant (RFC 3339 UTC), for display only: compare nothing with the local clock. */
  readonly expiresAt: string;
  /** Whole seconds left, measured by this client's own clock since the request was sent. */
  readonly expiresIn: number;
  readonly userId: string;
  readonly organizationId: string;
  readonly role: string;
}

export interface IntelliaTokenClientOptions {
  /** The broker's token URL, e.g. "https://broker.example.com/v1/token". */
  endpoint: string;
  /** "include" for a cookie session on the broker's host (the broker checks Origin). */
  credentials?: RequestCredentials;
  /** Bearer mode: returns the site's session token, sent as `Authorization: Bearer`. */
  getSessionToken?: () => string | Promise<string>;
  /** Called on every new token (same as client.onToken). */
  onToken?: (token: IntelliaToken) => void;
  /** Called on every failure, background refreshes included (same as client.onError). */
  onError?: (error: IntelliaTokenError) => void;
  /** Refresh this long before expiry (default 300), but never before half the token's lifetime. */
  refreshMarginSecs?: number;
  /** Abort a request after this long (default 15000; 0 disables). */
  timeoutMs?: number;
  /** Full-jitter backoff after 5xx/network errors: random() * min(backoffMaxMs, backoffBaseMs * 2^n). */
  backoffBaseMs?: number;
  /** Backoff cap (default 60000). */
  backoffMaxMs?: number;
  /** Refresh ahead of expiry by itself (default true); false refreshes only inside getToken(). */
  autoRefresh?: boolean;
  /** Send `{}` as application/json (causes a CORS preflight); default: no body. */
  jsonBody?: boolean;
  /** Injected for tests and special hosts. */
  fetch?: (input: string, init: RequestInit) => Promise<Response>;
  /** Wall clock in milliseconds (default Date.now). */
  now?: () => number;
  /** Random number in [0, 1) for the backoff jitter (default Math.random). */
  random?: () => number;
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (id: unknown) => void;
  /** Source of `visibilitychange` (default globalThis.document; null disables). */
  document?: EventTarget & { visibilityState?: string } | null;
  /** Source of `online`, `focus`, `pageshow` (default globalThis.window; null disables). */
  window?: EventTarget | null;
}

export interface IntelliaTokenErrorInfo {
  status?: number;
  code?: string;
  title?: string;
  detail?: string;
  retryAfterSecs?: number;
  terminal?: boolean;
  retryable?: boolean;
  requestId?: string;
  cause?: unknown;
}

export class IntelliaTokenError extends Error {
  constructor(message: string, info?: IntelliaTokenErrorInfo);
  readonly name: "IntelliaTokenError";
  /** HTTP status; 0 when no response could be read (network error, timeout, CORS refusal). */
  status: number;
  /**
   * The broker's problem `code` (`unauthenticated`, `origin_forbidden`, `forbidden`, `rate_limited`,
   * `upstream_unavailable`, …) or a client code: `network_error`, `timeout`, `invalid_response`,
   * `no_session`, `session_unavailable`, `client_stopped`, `aborted`, `http_<status>`.
   */
  code: string;
  title?: string;
  detail?: string;
  /** Seconds until the client makes its next request (429 Retry-After, or backoff). */
  retryAfterSecs?: number;
  /** 401/403: no more requests until reset() or a new session token. */
  terminal: boolean;
  /** The client retries by itself (429, 408, 5xx, network errors, timeouts). */
  retryable: boolean;
  /** The broker's X-Request-Id, when it exposed one. */
  requestId?: string;
}

export interface GetTokenOptions {
  /** Ask the broker even when the cached token is not yet due for refresh (never before a 429's Retry-After). */
  forceRefresh?: boolean;
  /**
   * Abandons this call: it rejects with `signal.reason` (an `AbortError` DOMException unless another
   * reason was given, e.g. `TimeoutError` from `AbortSignal.timeout(ms)`), as `fetch` does. The one
   * shared request goes on for other callers and still fills the cache.
   */
  signal?: AbortSignal;
}

export class IntelliaTokenClient {
  constructor(options: IntelliaTokenClientOptions);
  /** The cached token, or a new one when none is cached or it is due for refresh; one request at a time. */
  getToken(options?: GetTokenOptions): Promise<IntelliaToken>;
  /** getToken({ forceRefresh: true }). */
  refresh(): Promise<IntelliaToken>;
  /** The cached, unexpired token without any request, or null. */
  peek(): IntelliaToken | null;
  /** Subscribe to new tokens; returns the unsubscribe function. */
  onToken(cb: (token: IntelliaToken) => void): () => void;
  /** Subscribe to failures; returns the unsubscribe function. */
  onError(cb: (error: IntelliaTokenError) => void): () => void;
  /** Forget the token, a terminal error and the backoff (a 429's Retry-After still holds). */
  reset(): void;
  /** Clear timers and listeners and abort a request in flight; the client is unusable afterwards. */
  stop(): void;
  /** Alias of stop(). */
  dispose(): void;
}

export default IntelliaTokenClient;
