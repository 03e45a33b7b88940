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
use futures_util::StreamExt;
use ipnet::IpNet;

use super::connection::HeadClock;
use super::request_log::{ClientIp, RequestId, RequestStart};
use crate::config::ClientIpHeader;
use crate::http::cors::CorsPolicy;

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

/// A request id we are willing to echo and log: short, and from a safe alphabet.
fn acceptable_request_id(value: &HeaderValue) -> Option<&str> {
    let text = value.to_str().ok()?;
    let ok = (1..=128).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    ok.then_some(text)
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
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(acceptable_request_id)
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    let policy = req.app_data::<web::Data<ConnectionPolicy>>().cloned();
    let client_ip = policy.as_ref().and_then(|p| client_ip(&req, p));
    {
        let mut ext = req.extensions_mut();
        ext.insert(RequestStart(Instant::now()));
        ext.insert(RequestId(id.clone()));
        if let Some(ip) = client_ip {
            ext.insert(ClientIp(ip));
        }
    }
    let draining = policy.as_ref().is_some_and(|p| p.drain.is_draining());
    // The connection's clock for the next head (connection.rs): none is due while this request
    // is here, and the next is due within the bound once it is answered, error or not.
    let clock = req.conn_data::<HeadClock>().cloned();
    if let Some(clock) = &clock {
        clock.request_started();
    }
    let res = next.call(req).await;
    if let Some(clock) = &clock {
        clock.request_answered();
    }
    let mut res = res?;
    if draining {
        // Clients should not reuse this connection: idle keep-alive connections would otherwise
        // hold the graceful stop open until its timeout.
        res.response_mut()
            .head_mut()
            .set_connection_type(actix_web::http::ConnectionType::Close);
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(
            actix_web::http::header::HeaderName::from_static("x-request-id"),
            value,
        );
    }
    Ok(res)
}

/// Gives a request body `server.request_timeout_ms` from the end of the head to arrive. actix
/// bounds only the head: a body sent a byte at a time would hold its connection for as long as
/// the client likes. When the time is up the body reads fail with `TimedOut`, which the handlers
/// answer with 408 `request_timeout`, closing the connection.
pub(crate) async fn body_deadline(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let limit = req
        .app_data::<web::Data<ConnectionPolicy>>()
        .map(|p| p.request_timeout);
    if let Some(limit) = limit {
        match req.take_payload() {
            Payload::None => {}
            payload => req.set_payload(Payload::Stream {
                payload: Box::pin(with_deadline(payload, limit)),
            }),
        }
    }
    next.call(req).await
}

fn with_deadline(
    payload: Payload,
    limit: Duration,
) -> impl futures_util::Stream<Item = Result<web::Bytes, PayloadError>> {
    let timer = Box::pin(tokio::time::sleep(limit));
    futures_util::stream::unfold(Some((payload, timer)), |state| async move {
        let (mut payload, mut timer) = state?;
        tokio::select! {
            chunk = payload.next() => chunk.map(|c| (c, Some((payload, timer)))),
            () = &mut timer => {
                let late = std::io::Error::from(std::io::ErrorKind::TimedOut);
                Some((Err(PayloadError::Io(late)), None))
            }
        }
    })
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
        assert_eq!(
            acceptable_request_id(&HeaderValue::from_static("abc-123_x.y:z")),
            Some("abc-123_x.y:z")
        );
        assert_eq!(
            acceptable_request_id(&HeaderValue::from_static("has space")),
            None
        );
        assert_eq!(acceptable_request_id(&HeaderValue::from_static("")), None);
        let long = "a".repeat(129);
        assert_eq!(
            acceptable_request_id(&HeaderValue::from_str(&long).unwrap()),
            None
        );
    }
}
