//! `[server]`: the listeners, what a connection may cost, and how the process stops.

use std::net::SocketAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::field_error;
use super::values::Bounded;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(try_from = "RawServer", into = "RawServer")]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    pub trusted_proxies: Vec<IpNet>,
    pub max_body_bytes: Bounded<usize, 1, 1_048_576>,
    pub shutdown_grace_secs: Bounded<u64, 1, 600>,
    /// After SIGTERM, how long `/readyz` reports 503 while the listener keeps serving, so the
    /// Service stops routing here before connections are refused. Default: 5 s, at most half
    /// the grace period.
    pub drain_delay_secs: Option<Bounded<u64, 0, 599>>,
    /// Which header trusted proxies write the client's address into.
    pub client_ip_header: ClientIpHeader,
    /// How often secret files are checked for rotation.
    pub secret_poll_secs: Bounded<u64, 1, 300>,
    /// HTTP worker threads; 0 means one per CPU.
    pub workers: Bounded<usize, 0, 256>,
    /// How long a client may take to send the head of the first request on a connection, and
    /// then each request's body; slower clients get 408 and the connection is closed. A later
    /// head on a kept-alive connection has `keep_alive_secs` plus this from the previous answer.
    pub request_timeout_ms: Bounded<u64, 100, 60_000>,
    /// How long an idle connection waits for its next request; 0 closes every connection after
    /// one response.
    pub keep_alive_secs: Bounded<u64, 0, 300>,
}

/// The header a deployment's proxies append the client address to. Only one is read: a header
/// the proxies do not write is whatever the client put there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientIpHeader {
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=...`.
    Forwarded,
}

impl ServerSettings {
    /// The drain delay: as configured, else 5 s but at most half the grace period, so any grace
    /// period works alone.
    pub fn drain_delay_secs(&self) -> u64 {
        self.drain_delay_secs
            .map_or((self.shutdown_grace_secs.get() / 2).min(5), Bounded::get)
    }
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    #[serde(default = "default_listen")]
    listen: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    admin_listen: Option<SocketAddr>,
    #[serde(default)]
    trusted_proxies: Vec<IpNet>,
    #[serde(default = "default_max_body_bytes")]
    max_body_bytes: Bounded<usize, 1, 1_048_576>,
    #[serde(default = "default_shutdown_grace_secs")]
    shutdown_grace_secs: Bounded<u64, 1, 600>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    drain_delay_secs: Option<Bounded<u64, 0, 599>>,
    #[serde(default)]
    client_ip_header: ClientIpHeader,
    #[serde(default = "default_secret_poll_secs")]
    secret_poll_secs: Bounded<u64, 1, 300>,
    #[serde(default = "default_workers")]
    workers: Bounded<usize, 0, 256>,
    #[serde(default = "default_request_timeout_ms")]
    request_timeout_ms: Bounded<u64, 100, 60_000>,
    #[serde(default = "default_keep_alive_secs")]
    keep_alive_secs: Bounded<u64, 0, 300>,
}

impl TryFrom<RawServer> for ServerSettings {
    type Error = String;
    fn try_from(raw: RawServer) -> Result<Self, String> {
        let RawServer {
            listen,
            admin_listen,
            trusted_proxies,
            max_body_bytes,
            shutdown_grace_secs,
            drain_delay_secs,
            client_ip_header,
            secret_poll_secs,
            workers,
            request_timeout_ms,
            keep_alive_secs,
        } = raw;
        let settings = ServerSettings {
            listen,
            admin_listen,
            trusted_proxies,
            max_body_bytes,
            shutdown_grace_secs,
            drain_delay_secs,
            client_ip_header,
            secret_poll_secs,
            workers,
            request_timeout_ms,
            keep_alive_secs,
        };
        if settings.drain_delay_secs() >= settings.shutdown_grace_secs.get() {
            return Err(field_error(
                "drain_delay_secs",
                "must be shorter than server.shutdown_grace_secs, or in-flight requests get no time to finish",
            ));
        }
        // Port 0 asks for any free port, so two zeros still get two listeners.
        if admin_listen.is_some_and(|a| a == listen && a.port() != 0) {
            return Err(field_error(
                "admin_listen",
                "must differ from server.listen: metrics never share the public listener",
            ));
        }
        Ok(settings)
    }
}

impl From<ServerSettings> for RawServer {
    fn from(s: ServerSettings) -> RawServer {
        let ServerSettings {
            listen,
            admin_listen,
            trusted_proxies,
            max_body_bytes,
            shutdown_grace_secs,
            drain_delay_secs,
            client_ip_header,
            secret_poll_secs,
            workers,
            request_timeout_ms,
            keep_alive_secs,
        } = s;
        RawServer {
            listen,
            admin_listen,
            trusted_proxies,
            max_body_bytes,
            shutdown_grace_secs,
            drain_delay_secs,
            client_ip_header,
            secret_poll_secs,
            workers,
            request_timeout_ms,
            keep_alive_secs,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}
fn default_max_body_bytes() -> Bounded<usize, 1, 1_048_576> {
    Bounded::new::<4096>()
}
fn default_shutdown_grace_secs() -> Bounded<u64, 1, 600> {
    Bounded::new::<20>()
}
fn default_secret_poll_secs() -> Bounded<u64, 1, 300> {
    Bounded::new::<2>()
}
fn default_workers() -> Bounded<usize, 0, 256> {
    Bounded::new::<0>()
}
fn default_request_timeout_ms() -> Bounded<u64, 100, 60_000> {
    Bounded::new::<5000>()
}
fn default_keep_alive_secs() -> Bounded<u64, 0, 300> {
    Bounded::new::<5>()
}
