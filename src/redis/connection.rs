//! How the broker reaches Redis: one node (a multiplexed connection that reconnects by itself) or
//! a Redis Cluster (a connection per shard, `MOVED`/`ASK` followed, topology refreshed), over TCP
//! or TLS (rustls with the ring provider the broker installs; the system roots plus `ca_file`).
//! Certificate checks are never skipped: `#insecure` URLs are refused by the config, and the
//! `tls-rustls-insecure` feature is not built.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{ConnectionInfo, ErrorKind, IntoConnectionInfo, RedisError, ServerErrorKind};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::config::RedisSettings;
use crate::secrets::SecretCell;

/// How long one attempt to connect (TCP, TLS, `AUTH`, cluster topology) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// An open connection of either kind; cloning shares it.
#[derive(Clone)]
pub(crate) enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// Everything needed to (re)connect: the URL's address and ACL user, the password (from
/// `password_file`, re-read on rotation, or the URL), the trusted roots, the topology kind.
pub(crate) struct Connector {
    info: ConnectionInfo,
    password: Option<Arc<SecretCell>>,
    roots: Option<redis::TlsCertificates>,
    cluster: bool,
    response_timeout: Duration,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("cluster", &self.cluster)
            .field("password_file", &self.password.is_some())
            .field("ca_file", &self.roots.is_some())
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// Checks the URL and reads `ca_file` now; errors name the config key.
    pub(crate) fn new(
        settings: &RedisSettings,
        password: Option<Arc<SecretCell>>,
    ) -> Result<Connector, String> {
        let info = settings
            .url
            .url()
            .as_str()
            .into_connection_info()
            .map_err(|e| format!("config key `redis.url`: {}", describe(&e)))?;
        let roots = settings.ca_file.as_deref().map(trusted_roots).transpose()?;
        Ok(Connector {
            info,
            password,
            roots,
            cluster: settings.cluster,
            response_timeout: Duration::from_millis(settings.timeout_ms.get()),
        })
    }

    pub(crate) fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// Changes when the password file rotates; a new generation means reconnecting.
    pub(crate) fn credentials_generation(&self) -> u64 {
        self.password.as_ref().map_or(0, |p| p.get().generation())
    }

    fn connection_info(&self) -> ConnectionInfo {
        match &self.password {
            Some(cell) => {
                let redis = self
                    .info
                    .redis_settings()
                    .clone()
                    .set_password(cell.get().expose());
                self.info.clone().set_redis_settings(redis)
            }
            None => self.info.clone(),
        }
    }

    /// Opens a connection: TCP/TLS, `HELLO`/`AUTH` as the ACL user, and for a cluster the slot
    /// map. Fails on a wrong password rather than later.
    pub(crate) async fn connect(&self) -> redis::RedisResult<Connection> {
        let info = self.connection_info();
        if self.cluster {
            let mut builder = ClusterClientBuilder::new(vec![info])
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(self.response_timeout.max(Duration::from_millis(100)))
                // The broker's own timeout bounds every call; a short retry budget keeps a
                // redirect storm from hiding behind it.
                .retries(3)
                .min_retry_wait(5)
                .max_retry_wait(50);
            if let Some(roots) = &self.roots {
                builder = builder.certs(roots.clone());
            }
            let client = builder.build()?;
            let connection =
                tokio::time::timeout(CONNECT_TIMEOUT * 2, client.get_async_connection())
                    .await
                    .map_err(|_| RedisError::from((ErrorKind::Io, "connect timed out")))??;
            // A cluster connection is made lazily per node; make sure we can talk to one.
            let mut probe = Connection::Cluster(connection);
            redis::cmd("PING").query_async::<()>(&mut probe).await?;
            Ok(probe)
        } else {
            let client = match &self.roots {
                Some(roots) => redis::Client::build_with_tls(info, roots.clone())?,
                None => redis::Client::open(info)?,
            };
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(CONNECT_TIMEOUT))
                .set_number_of_retries(2);
            let manager = ConnectionManager::new_with_config(client, config).await?;
            Ok(Connection::Single(manager))
        }
    }
}

/// The roots trusted for `rediss://` when `ca_file` is set: the file's certificates and the
/// system's (the redis client takes one PEM bundle that replaces its default roots).
fn trusted_roots(path: &Path) -> Result<redis::TlsCertificates, String> {
    let fail = |reason: &str| format!("config key `redis.ca_file`: {}: {reason}", path.display());
    let pem = std::fs::read(path).map_err(|e| fail(&format!("cannot be read ({})", e.kind())))?;
    let own: Vec<CertificateDer<'_>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|_| fail("is not a PEM certificate bundle"))?;
    if own.is_empty() {
        return Err(fail("holds no PEM certificate"));
    }
    let mut bundle = pem.clone();
    bundle.push(b'\n');
    for cert in rustls_native_certs::load_native_certs().certs {
        bundle.extend_from_slice(pem_encode(&cert).as_bytes());
    }
    Ok(redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(bundle),
    })
}

fn pem_encode(cert: &CertificateDer<'_>) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Why a Redis call failed, as a closed set for the failures metric and the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum FailureReason {
    Timeout,
    Connection,
    Auth,
    Cluster,
    Other,
}

impl FailureReason {
    pub(crate) fn label(self) -> &'static str {
        match self {
            FailureReason::Timeout => "timeout",
            FailureReason::Connection => "connection",
            FailureReason::Auth => "auth",
            FailureReason::Cluster => "cluster",
            FailureReason::Other => "other",
        }
    }

    pub(crate) fn of(e: &RedisError) -> FailureReason {
        let text = describe(e);
        match e.kind() {
            ErrorKind::AuthenticationFailed | ErrorKind::Server(ServerErrorKind::NoPerm) => {
                FailureReason::Auth
            }
            ErrorKind::Server(
                ServerErrorKind::Moved
                | ServerErrorKind::Ask
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::CrossSlot
                | ServerErrorKind::MasterDown,
            )
            | ErrorKind::ClusterConnectionNotFound => FailureReason::Cluster,
            _ if text.contains("WRONGPASS") || text.contains("NOAUTH") => FailureReason::Auth,
            _ if e.is_timeout() => FailureReason::Timeout,
            _ if e.is_cluster_error() => FailureReason::Cluster,
            _ if e.is_io_error()
                || e.is_connection_refusal()
                || e.is_connection_dropped()
                || e.is_unrecoverable_error() =>
            {
                FailureReason::Connection
            }
            _ => FailureReason::Other,
        }
    }
}

/// An error as one line without the values of the command (the client never puts arguments in
/// its errors, but the URL's password must not slip through either).
pub(crate) fn describe(e: &RedisError) -> String {
    let text = e.to_string();
    text.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect()
}
