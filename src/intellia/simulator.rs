//! An Intellia simulator: the same `POST /orgs/{organizationId}/assume-role` route, API-key check
//! with a per-key `assume_role` permission, users created on first sight, two-hour tokens, and
//! injectable faults. `dev` mode, the tests and the benchmarks run against it; other languages can
//! run it alone with `simulate-intellia`.
//!
//! Control routes under `/__simulator/` (never part of the real API):
//! - `GET /__simulator/stats` → `{"calls": n, "minted": n, "users": n}`
//! - `POST /__simulator/faults` with `{"latencyMs": 0, "next": [Fault, ...], "always": Fault|null}`
//!   where a fault is one of
//!   - `{"status": 500, "retryAfter": 3}`: that status (and `Retry-After`), a JSON error body;
//!     `"retryAfterDate": 3` sends `Retry-After` as the HTTP date three seconds ahead instead;
//!   - `{"hang": true}`: no answer for five minutes;
//!   - `{"garbage": true}`: 200 with a cut-off JSON document;
//!   - `{"body": "..."}`: 200 (or `status`) with exactly this body, as `application/json`;
//!   - `{"truncate": true}`: 200 whose body stops short of its `Content-Length`, then a close;
//!   - `{"close": true}`: the request is read, then the connection is closed with no answer.
//! - `POST /__simulator/reset` clears faults and counters.

use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::header;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use base64::Engine;
use rand::RngCore;
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Which API keys the simulator accepts.
#[derive(Clone)]
pub enum KeyPolicy {
    /// Any non-empty key, with `assume_role` permission.
    AnyNonEmpty,
    /// Exactly these keys; the flag is the key's `assume_role` write permission.
    Keys(HashMap<String, bool>),
}

impl std::fmt::Debug for KeyPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyPolicy::AnyNonEmpty => f.write_str("AnyNonEmpty"),
            KeyPolicy::Keys(keys) => write!(f, "Keys({} keys)", keys.len()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    /// When set, other organization ids answer 404.
    pub organization_id: Option<String>,
    pub keys: KeyPolicy,
    pub token_ttl: Duration,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            organization_id: None,
            keys: KeyPolicy::AnyNonEmpty,
            token_ttl: Duration::from_secs(2 * 60 * 60),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub retry_after: Option<u64>,
    /// `Retry-After` as an HTTP date this many seconds ahead.
    #[serde(default)]
    pub retry_after_date: Option<u64>,
    #[serde(default)]
    pub hang: bool,
    #[serde(default)]
    pub garbage: bool,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub truncate: bool,
    #[serde(default)]
    pub close: bool,
}

impl Fault {
    pub fn status(status: u16) -> Fault {
        Fault {
            status: Some(status),
            ..Fault::default()
        }
    }
    pub fn too_many(retry_after: u64) -> Fault {
        Fault {
            retry_after: Some(retry_after),
            ..Fault::status(429)
        }
    }
    pub fn hang() -> Fault {
        Fault {
            hang: true,
            ..Fault::default()
        }
    }
    pub fn garbage() -> Fault {
        Fault {
            garbage: true,
            ..Fault::default()
        }
    }
    pub fn body(body: impl Into<String>) -> Fault {
        Fault {
            body: Some(body.into()),
            ..Fault::default()
        }
    }
    pub fn truncate() -> Fault {
        Fault {
            truncate: true,
            ..Fault::default()
        }
    }
    pub fn close() -> Fault {
        Fault {
            close: true,
            ..Fault::default()
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FaultPlan {
    #[serde(default)]
    latency_ms: u64,
    #[serde(default)]
    next: VecDeque<Fault>,
    #[serde(default)]
    always: Option<Fault>,
}

#[derive(Debug, Clone)]
pub struct SimUser {
    pub email: Option<String>,
    pub name: Option<String>,
}

/// Shared state of a running simulator; tests hold it to inject faults and count calls.
#[derive(Debug)]
pub struct SimulatorState {
    config: SimulatorConfig,
    faults: Mutex<FaultPlan>,
    users: Mutex<HashMap<String, SimUser>>,
    calls: AtomicU64,
    minted: AtomicU64,
    last_authorization: Mutex<Option<String>>,
    last_traceparent: Mutex<Option<String>>,
    /// The trace-context headers (W3C, baggage, B3) of the last request.
    last_trace_headers: Mutex<HashMap<String, String>>,
}

impl SimulatorState {
    pub fn new(config: SimulatorConfig) -> Arc<SimulatorState> {
        Arc::new(SimulatorState {
            config,
            faults: Mutex::new(FaultPlan::default()),
            users: Mutex::new(HashMap::new()),
            calls: AtomicU64::new(0),
            minted: AtomicU64::new(0),
            last_authorization: Mutex::new(None),
            last_traceparent: Mutex::new(None),
            last_trace_headers: Mutex::new(HashMap::new()),
        })
    }

    /// Every assume-role request that reached the simulator, faults included.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn minted(&self) -> u64 {
        self.minted.load(Ordering::SeqCst)
    }

    pub fn user(&self, id: &str) -> Option<SimUser> {
        lock(&self.users).get(id).cloned()
    }

    /// The `Authorization` header of the last request, so tests can check the key sent.
    pub fn last_authorization(&self) -> Option<String> {
        lock(&self.last_authorization).clone()
    }

    /// The W3C `traceparent` header of the last request, so tests can check the trace is
    /// carried on.
    pub fn last_traceparent(&self) -> Option<String> {
        lock(&self.last_traceparent).clone()
    }

    /// A trace-context header (`tracestate`, `baggage`, `b3`, `x-b3-traceid`, …) of the last
    /// request, by its lower-case name.
    pub fn last_trace_header(&self, name: &str) -> Option<String> {
        lock(&self.last_trace_headers).get(name).cloned()
    }

    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        lock(&self.faults).next.extend(faults);
    }

    pub fn set_always(&self, fault: Option<Fault>) {
        lock(&self.faults).always = fault;
    }

    pub fn set_latency(&self, latency: Duration) {
        lock(&self.faults).latency_ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
    }

    pub fn reset(&self) {
        *lock(&self.faults) = FaultPlan::default();
        self.calls.store(0, Ordering::SeqCst);
        self.minted.store(0, Ordering::SeqCst);
    }

    fn next_fault(&self) -> (Duration, Option<Fault>) {
        let mut plan = lock(&self.faults);
        let latency = Duration::from_millis(plan.latency_ms);
        let fault = plan.next.pop_front().or_else(|| plan.always.clone());
        (latency, fault)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AssumeRoleBody {
    user_id: Option<String>,
    user_email: Option<String>,
    user_name: Option<String>,
}

fn error(status: actix_web::http::StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": message }))
}

async fn assume_role(
    state: web::Data<Arc<SimulatorState>>,
    path: web::Path<String>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    use actix_web::http::StatusCode;
    state.calls.fetch_add(1, Ordering::SeqCst);
    *lock(&state.last_traceparent) = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    *lock(&state.last_trace_headers) = req
        .headers()
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            matches!(name, "traceparent" | "tracestate" | "baggage" | "b3")
                || name.starts_with("x-b3-")
        })
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect();
    let (latency, fault) = state.next_fault();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(fault) = fault {
        if fault.hang {
            // Long enough to outlast any client timeout, short enough to end a forgotten test.
            tokio::time::sleep(Duration::from_secs(300)).await;
        }
        if fault.close {
            return close_connection(&req);
        }
        if fault.truncate {
            return truncated_response();
        }
        if fault.garbage {
            return HttpResponse::Ok()
                .content_type("application/json")
                .body("{\"token\": ");
        }
        if let Some(body) = fault.body {
            let status = fault
                .status
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::OK);
            return HttpResponse::build(status)
                .content_type("application/json")
                .body(body);
        }
        if let Some(status) = fault.status.and_then(|s| StatusCode::from_u16(s).ok()) {
            let mut resp = HttpResponse::build(status);
            if let Some(secs) = fault.retry_after {
                resp.insert_header((header::RETRY_AFTER, secs));
            }
            if let Some(secs) = fault.retry_after_date {
                let at = std::time::SystemTime::now() + Duration::from_secs(secs);
                resp.insert_header((header::RETRY_AFTER, httpdate::fmt_http_date(at)));
            }
            // A realistic upstream error body, which the broker must never pass on.
            return resp.json(
                json!({"error": "simulated failure", "detail": "internal trace id sim-5f3a"}),
            );
        }
    }

    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    *lock(&state.last_authorization) = auth.clone();
    let Some(key) = auth.as_deref().and_then(|a| a.strip_prefix("Bearer ")) else {
        return error(StatusCode::UNAUTHORIZED, "missing API key");
    };
    let permitted = match &state.config.keys {
        KeyPolicy::AnyNonEmpty => (!key.trim().is_empty()).then_some(true),
        KeyPolicy::Keys(keys) => keys.get(key).copied(),
    };
    match permitted {
        None => return error(StatusCode::UNAUTHORIZED, "invalid API key"),
        Some(false) => {
            return error(
                StatusCode::FORBIDDEN,
                "API key lacks assume_role write permission",
            );
        }
        Some(true) => {}
    }
    let org = path.into_inner();
    if state
        .config
        .organization_id
        .as_ref()
        .is_some_and(|o| *o != org)
    {
        return error(StatusCode::NOT_FOUND, "organization not found");
    }
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return error(StatusCode::BAD_REQUEST, "expected application/json");
    }
    let Ok(parsed) = serde_json::from_slice::<AssumeRoleBody>(&body) else {
        return error(StatusCode::BAD_REQUEST, "malformed JSON");
    };
    let Some(user_id) = parsed.user_id.filter(|u| !u.is_empty()) else {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "userId is required");
    };
    lock(&state.users)
        .entry(user_id.clone())
        .and_modify(|u| {
            if parsed.user_email.is_some() {
                u.email.clone_from(&parsed.user_email);
            }
            if parsed.user_name.is_some() {
                u.name.clone_from(&parsed.user_name);
            }
        })
        .or_insert(SimUser {
            email: parsed.user_email,
            name: parsed.user_name,
        });

    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let token = format!(
        "sim_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    );
    let expires_at = (OffsetDateTime::now_utc() + state.config.token_ttl)
        .replace_nanosecond(0)
        .unwrap_or_else(|_| OffsetDateTime::now_utc());
    state.minted.fetch_add(1, Ordering::SeqCst);
    HttpResponse::Ok().json(json!({
        "token": token,
        "expiresAt": expires_at.format(&Rfc3339).unwrap_or_default(),
        "userId": user_id,
        "organizationId": org,
        "role": "chat",
    }))
}

/// A second handle on a connection's socket, taken when it is accepted, so a `close` fault can
/// end the connection before actix writes anything.
#[cfg(unix)]
struct ConnSocket(std::net::TcpStream);

#[cfg(unix)]
fn remember_socket(conn: &dyn std::any::Any, ext: &mut actix_web::dev::Extensions) {
    use std::os::fd::AsFd;
    if let Some(stream) = conn.downcast_ref::<actix_web::rt::net::TcpStream>()
        && let Ok(fd) = stream.as_fd().try_clone_to_owned()
    {
        ext.insert(ConnSocket(std::net::TcpStream::from(fd)));
    }
}

/// A body that sends `first` (if any), lets it be flushed, then fails: actix drops the connection
/// mid-answer. After `close` has shut the socket down it only makes sure nothing else is tried.
fn failing_body(
    first: Option<web::Bytes>,
) -> impl futures_util::Stream<Item = std::io::Result<web::Bytes>> {
    futures_util::stream::unfold(Some(first), |state| async move {
        match state {
            Some(Some(chunk)) => Some((Ok(chunk), Some(None))),
            Some(None) => {
                // Long enough for what was sent so far to be flushed before the failure.
                tokio::time::sleep(Duration::from_millis(50)).await;
                Some((Err(std::io::Error::other("simulated close")), None))
            }
            None => None,
        }
    })
}

fn close_connection(req: &HttpRequest) -> HttpResponse {
    #[cfg(unix)]
    if let Some(ConnSocket(socket)) = req.conn_data::<ConnSocket>() {
        let _ = socket.shutdown(std::net::Shutdown::Both);
    }
    #[cfg(not(unix))]
    let _ = req;
    HttpResponse::Ok().streaming(failing_body(None))
}

/// A success that promises more bytes than it sends: the first half of a real-looking answer.
fn truncated_response() -> HttpResponse {
    let full = json!({
        "token": "sim_truncated_token_never_complete",
        "expiresAt": "2030-01-01T00:00:00Z",
        "userId": "u",
        "organizationId": "o",
        "role": "chat",
    })
    .to_string();
    let half = web::Bytes::from(full[..full.len() / 2].to_owned());
    HttpResponse::Ok()
        .content_type("application/json")
        .body(actix_web::body::SizedStream::new(
            full.len() as u64,
            failing_body(Some(half)),
        ))
}

async fn stats(state: web::Data<Arc<SimulatorState>>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "calls": state.calls(),
        "minted": state.minted(),
        "users": lock(&state.users).len(),
    }))
}

async fn set_faults(state: web::Data<Arc<SimulatorState>>, body: web::Bytes) -> HttpResponse {
    match serde_json::from_slice::<FaultPlan>(&body) {
        Ok(plan) => {
            *lock(&state.faults) = plan;
            HttpResponse::NoContent().finish()
        }
        Err(e) => error(actix_web::http::StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

async fn reset(state: web::Data<Arc<SimulatorState>>) -> HttpResponse {
    state.reset();
    HttpResponse::NoContent().finish()
}

/// A running simulator.
pub struct Simulator {
    pub addr: SocketAddr,
    pub state: Arc<SimulatorState>,
    pub server: actix_web::dev::Server,
}

impl Simulator {
    /// Binds and starts serving on the current Tokio runtime. Port 0 picks a free port.
    pub fn start(listener: TcpListener, config: SimulatorConfig) -> std::io::Result<Simulator> {
        let state = SimulatorState::new(config);
        let addr = listener.local_addr()?;
        let data = web::Data::new(Arc::clone(&state));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(64 * 1024))
                .route("/orgs/{org}/assume-role", web::post().to(assume_role))
                .route("/__simulator/stats", web::get().to(stats))
                .route("/__simulator/faults", web::post().to(set_faults))
                .route("/__simulator/reset", web::post().to(reset))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1);
        #[cfg(unix)]
        let server = server.on_connect(remember_socket);
        let server = server.listen(listener)?.run();
        Ok(Simulator {
            addr,
            state,
            server,
        })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_plans_parse_every_fault_and_refuse_unknown_fields() {
        let plan: FaultPlan = serde_json::from_str(
            r#"{"latencyMs": 5, "next": [{"close": true}, {"truncate": true},
                {"body": "<html>", "status": 502}, {"status": 429, "retryAfter": 3}],
                "always": {"garbage": true}}"#,
        )
        .unwrap();
        assert_eq!(plan.latency_ms, 5);
        assert_eq!(
            Vec::from(plan.next),
            vec![
                Fault::close(),
                Fault::truncate(),
                Fault {
                    status: Some(502),
                    ..Fault::body("<html>")
                },
                Fault::too_many(3),
            ]
        );
        assert_eq!(plan.always, Some(Fault::garbage()));
        assert!(serde_json::from_str::<FaultPlan>(r#"{"next": [{"closed": true}]}"#).is_err());
    }
}
