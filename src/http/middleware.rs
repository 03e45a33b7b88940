//! Request middleware: the request context (id, client IP, start time) every log line and the
//! root span read, the body deadline, CORS headers on browser routes, and `Connection: close`
//! while draining.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::Method;
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, web};
use futures_util::StreamExt as _;
use ipnet::IpNet;

use super::connection::HeadClock;
use super::request_log::RequestContext;
use super::routes::Route;
use crate::config::ClientIpHeader;
use crate::error::OutcomeCode;
use crate::http::cors::CorsPolicy;
use crate::telemetry::traces::{ServerRequest, ServerSpan};

/// Set once SIGTERM (or a shutdown handle) starts draining; read by `/readyz` and here.
#[derive(Debug, Clone, Default)]
pub struct Drain(Arc<AtomicBool>);

impl Drain {
    pub fn start(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// What the connection-level middleware needs from the configuration.
#[derive(Debug, Clone)]
pub struct ConnectionPolicy {
    pub trusted_proxies: Vec<IpNet>,
    pub client_ip_header: ClientIpHeader,
    pub request_timeout: Duration,
    pub drain: Drain,
}

impl ConnectionPolicy {
    /// The scheme the client used: `https` only when a trusted proxy says so in
    /// `X-Forwarded-Proto`, since the broker itself serves plain HTTP.
    pub(crate) fn forwarded_scheme(&self, req: &ServiceRequest) -> &'static str {
        let trusted = req.peer_addr().is_some_and(|peer| {
            self.trusted_proxies
                .iter()
                .any(|net| net.contains(&peer.ip()))
        });
        let https = trusted
            && req
                .headers()
                .get("x-forwarded-proto")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
        if https { "https" } else { "http" }
    }
}

/// A request id we are willing to echo and log: short, and from a safe alphabet.
fn acceptable_request_id(value: &HeaderValue) -> bool {
    let text = value.as_bytes();
    (1..=128).contains(&text.len())
        && text
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
}

/// A fresh request id: a random (version 4) UUID, formatted on the stack.
fn new_request_id() -> HeaderValue {
    let uuid = uuid::Uuid::new_v4();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    HeaderValue::from_str(uuid.hyphenated().encode_lower(&mut text))
        .unwrap_or_else(|_| HeaderValue::from_static("-"))
}

fn client_ip(req: &ServiceRequest, policy: &ConnectionPolicy) -> Option<IpAddr> {
    let name = match policy.client_ip_header {
        ClientIpHeader::XForwardedFor => "x-forwarded-for",
        ClientIpHeader::Forwarded => "forwarded",
    };
    if policy.trusted_proxies.is_empty() {
        // Nobody's header is believed: skip reading it.
        return crate::http::client_ip::client_ip(
            req.peer_addr(),
            policy.client_ip_header,
            std::iter::empty(),
            &[],
        );
    }
    // Raw bytes: the walk splits each line into hops before decoding any (client_ip.rs).
    let lines = req
        .headers()
        .get_all(name)
        .map(HeaderValue::as_bytes)
        .collect::<Vec<_>>();
    crate::http::client_ip::client_ip(
        req.peer_addr(),
        policy.client_ip_header,
        lines.into_iter(),
        &policy.trusted_proxies,
    )
}

/// Outermost middleware: stamps the request id, start time and client IP before the root span
/// is built, and echoes the id on the response.
pub(crate) async fn request_context(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let start = Instant::now();
    let id = req
        .headers()
        .get(X_REQUEST_ID)
        .filter(|v| acceptable_request_id(v))
        .cloned()
        .unwrap_or_else(new_request_id);
    let policy = req.app_data::<web::Data<ConnectionPolicy>>().cloned();
    let client_ip = policy.as_ref().and_then(|p| client_ip(&req, p));
    if let Some(policy) = &policy {
        bound_body(&mut req, policy.request_timeout);
    }
    let route = Route::of_path(req.path());
    let server = if route.is_none_or(Route::is_traced) {
        ServerSpan::start(&ServerRequest {
            method: req.method().as_str(),
            route: route.map(Route::path),
            scheme: policy.as_ref().map_or("http", |p| p.forwarded_scheme(&req)),
            client_address: client_ip,
            request_id: id.to_str().unwrap_or_default(),
            headers: req.headers(),
        })
    } else {
        None
    };
    let trace = server.as_ref().map(ServerSpan::handle);
    req.extensions_mut().insert(RequestContext {
        id,
        client_ip,
        start,
        route,
        server,
    });
    let draining = policy.as_ref().is_some_and(|p| p.drain.is_draining());
    // The connection's clock for the next head (connection.rs): none is due while this request
    // is here, and the next is due within the bound once it is answered, error or not.
    let clock = req.conn_data::<HeadClock>().cloned();
    if let Some(clock) = &clock {
        clock.request_started();
    }
    let res = match &trace {
        Some(trace) => trace.serve(|| next.call(req)).await,
        None => next.call(req).await,
    };
    if let Some(clock) = &clock {
        clock.request_answered();
    }
    let mut res = match res {
        Ok(res) => res,
        Err(e) => {
            if let Some(trace) = &trace {
                trace.unanswered();
            }
            return Err(e);
        }
    };
    if draining {
        // Clients should not reuse this connection: idle keep-alive connections would otherwise
        // hold the graceful stop open until its timeout.
        res.response_mut()
            .head_mut()
            .set_connection_type(actix_web::http::ConnectionType::Close);
    }
    // The log line is written by now: the id moves to the response instead of being copied.
    let context = res.request().extensions_mut().remove::<RequestContext>();
    if let Some(context) = context {
        if let Some(server) = context.server {
            let outcome = OutcomeCode::of(res.response()).unwrap_or("internal_error");
            server.end(res.status().as_u16(), outcome);
        }
        res.headers_mut().insert(X_REQUEST_ID, context.id);
    }
    Ok(res)
}

const X_REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");

pin_project_lite::pin_project! {
    /// A request body that must arrive within `server.request_timeout_ms` of the request's head.
    /// actix bounds only the head: a body sent a byte at a time would hold its connection for as
    /// long as the client likes. Once the time is up the body reads fail with `TimedOut`, which
    /// the handlers answer with 408 `request_timeout`, closing the connection. The timer lives
    /// inside the stream, so a body costs one allocation here, not two.
    struct DeadlinePayload {
        payload: Payload,
        #[pin]
        deadline: tokio::time::Sleep,
        expired: bool,
    }
}

impl futures_util::Stream for DeadlinePayload {
    type Item = Result<web::Bytes, PayloadError>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::future::Future;
        use std::task::Poll;

        let this = self.project();
        if *this.expired {
            return Poll::Ready(None);
        }
        // What has arrived is handed on, even at the last moment.
        if let Poll::Ready(item) = this.payload.poll_next_unpin(cx) {
            return Poll::Ready(item);
        }
        if this.deadline.poll(cx).is_ready() {
            *this.expired = true;
            let late = std::io::Error::from(std::io::ErrorKind::TimedOut);
            return Poll::Ready(Some(Err(PayloadError::Io(late))));
        }
        Poll::Pending
    }
}

/// Bounds the arrival of a request's body, if it has one.
fn bound_body(req: &mut ServiceRequest, limit: Duration) {
    match req.take_payload() {
        Payload::None => {}
        payload => req.set_payload(Payload::Stream {
            payload: Box::pin(DeadlinePayload {
                payload,
                deadline: tokio::time::sleep(limit),
                expired: false,
            }),
        }),
    }
}

/// Adds CORS headers to every non-preflight response of a browser route, errors included.
pub(crate) async fn cors_layer(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let preflight = req.method() == Method::OPTIONS;
    let cors = req.app_data::<web::Data<CorsPolicy>>().cloned();
    let mut res = next.call(req).await?;
    if let (false, Some(cors)) = (preflight, cors) {
        cors.apply(origin.as_ref(), res.headers_mut());
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_validated() {
        assert!(acceptable_request_id(&HeaderValue::from_static(
            "abc-123_x.y:z"
        )));
        assert!(!acceptable_request_id(&HeaderValue::from_static(
            "has space"
        )));
        assert!(!acceptable_request_id(&HeaderValue::from_static("")));
        let long = "a".repeat(129);
        assert!(!acceptable_request_id(
            &HeaderValue::from_str(&long).unwrap()
        ));
    }

    #[test]
    fn generated_request_ids_are_version_4_uuids() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        let parsed = uuid::Uuid::parse_str(a.to_str().unwrap()).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
        assert!(acceptable_request_id(&a));
    }
}
