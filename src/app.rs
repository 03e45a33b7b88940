//! Wiring: builds every part from the settings, binds the listeners (port 0 works, and the bound
//! addresses are exposed), and runs until a signal drains and stops the server.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{
    Payload, Server, ServerHandle, ServiceFactory, ServiceRequest, ServiceResponse,
};
use actix_web::error::PayloadError;
use actix_web::http::Method;
use actix_web::http::{KeepAlive, header};
use actix_web::middleware::{Next, from_fn};
use actix_web::{App, Error, HttpMessage, HttpServer, web};
use futures_util::StreamExt;
use secrecy::SecretString;
use tracing_actix_web::TracingLogger;

use crate::cache::TokenCache;
use crate::config::Settings;
use crate::cors::CorsPolicy;
use crate::dev::DevIssuer;
use crate::intellia::IntelliaClient;
use crate::limits::Limits;
use crate::metrics::{Metrics, SecretLabels};
use crate::routes::{self, StaticAsset};
use crate::secrets::{SecretCell, SecretSource};
use crate::session::SessionVerifier;
use crate::telemetry::{BrokerRootSpan, request_context};

/// Files the broker serves, compiled in so the image needs nothing beside the binary.
pub struct Assets {
    pub client_esm: StaticAsset,
    pub client_global: StaticAsset,
    pub dev_page: &'static str,
    pub openapi: String,
}

impl Assets {
    fn new() -> Assets {
        Assets {
            client_esm: StaticAsset::new(
                include_str!("../clients/js/intellia-token-client.js"),
                "text/javascript; charset=utf-8",
            ),
            client_global: StaticAsset::new(
                include_str!("../clients/js/intellia-token-client.global.js"),
                "text/javascript; charset=utf-8",
            ),
            dev_page: include_str!("../clients/js/demo/index.html"),
            openapi: crate::openapi::document_json(),
        }
    }
}

/// Everything a request handler may need, shared by all workers.
pub struct AppState {
    pub settings: Arc<Settings>,
    pub verifier: SessionVerifier,
    pub intellia: IntelliaClient,
    pub limits: Arc<Limits>,
    pub cache: TokenCache,
    pub cors: CorsPolicy,
    pub api_key: Arc<SecretCell>,
    pub backend_secret: Option<Arc<SecretCell>>,
    pub metrics: Arc<Metrics>,
    pub assets: Assets,
    pub dev: Option<Arc<DevIssuer>>,
    draining: AtomicBool,
    stale_secrets: Mutex<Vec<&'static str>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

impl AppState {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Secrets whose source is currently unreadable or empty (the last good value is in use).
    pub fn stale_secrets(&self) -> Vec<&'static str> {
        self.stale_secrets
            .lock()
            .map(|g| g.clone())
            .unwrap_or_default()
    }

    fn mark_secret(&self, name: &'static str, stale: bool) {
        let mut list = match self.stale_secrets.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let present = list.contains(&name);
        if stale && !present {
            list.push(name);
        } else if !stale && present {
            list.retain(|n| *n != name);
        }
        self.metrics
            .secret_stale
            .get_or_create(&SecretLabels { secret: name })
            .set(i64::from(stale));
    }

    /// Re-reads every secret file; a failure keeps the last good value and is reported.
    fn reload_secrets(&self) {
        let mut cells: Vec<(&'static str, &SecretCell)> = vec![("intellia.api_key", &self.api_key)];
        if let Some(backend) = &self.backend_secret {
            cells.push(("backend.secret", backend));
        }
        for (name, cell) in cells {
            match cell.reload() {
                Ok(changed) => {
                    if changed {
                        tracing::info!(secret = name, source = ?cell.source(), "secret rotated");
                        self.metrics
                            .secret_reloads
                            .get_or_create(&SecretLabels { secret: name })
                            .inc();
                    }
                    self.mark_secret(name, false);
                }
                Err(e) => {
                    if !self.stale_secrets().contains(&name) {
                        tracing::error!(secret = name, error = %e, "secret source unreadable; keeping the last good value");
                    }
                    self.metrics
                        .secret_reload_failures
                        .get_or_create(&SecretLabels { secret: name })
                        .inc();
                    self.mark_secret(name, true);
                }
            }
        }
        let failures = self.verifier.reload_secrets();
        self.mark_secret("session.hs256_secret", !failures.is_empty());
        for (index, error) in failures {
            tracing::error!(issuer = index, error = %error, "session secret unreadable; keeping the last good value");
        }
    }
}

/// Overrides for `dev` mode and tests: secrets supplied in memory instead of files.
#[derive(Default)]
pub struct BuildOptions {
    pub api_key: Option<SecretString>,
    pub session_secrets: HashMap<usize, SecretCell>,
    pub dev: Option<Arc<DevIssuer>>,
    /// Drain and stop on SIGTERM/SIGINT. Off in tests, which stop servers themselves.
    pub handle_signals: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A built, listening broker.
pub struct Application {
    public_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    server: Server,
    admin: Option<Server>,
    state: web::Data<AppState>,
    handle_signals: bool,
}

/// Pending connections the kernel queues for `accept`: actix's own default, where std's
/// `TcpListener::bind` would give 128. With a short queue a burst of new connections overflows
/// it, and the overflow is silently dropped: those clients believe they are connected and wait.
const LISTEN_BACKLOG: u32 = 1024;

fn bind(addr: SocketAddr) -> Result<TcpListener, StartupError> {
    let fail = |source| StartupError::Bind { addr, source };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(fail)?;
    // As std does: a restarted broker can bind while old connections are in TIME_WAIT.
    #[cfg(unix)]
    socket.set_reuseaddr(true).map_err(fail)?;
    socket.bind(addr).map_err(fail)?;
    socket
        .listen(LISTEN_BACKLOG)
        .and_then(|listener| listener.into_std())
        .map_err(fail)
}

/// Adds CORS headers to every non-preflight response of a browser route, errors included.
async fn cors_layer(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let preflight = req.method() == Method::OPTIONS;
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let mut res = next.call(req).await?;
    if let (false, Some(state)) = (preflight, state) {
        state.cors.apply(origin.as_ref(), res.headers_mut());
    }
    Ok(res)
}

/// Gives a request body `server.request_timeout_ms` from the end of the head to arrive. actix
/// bounds only the head: a body sent a byte at a time would hold its connection for as long as
/// the client likes. When the time is up the body reads fail with `TimedOut`, which the handlers
/// answer with 408 `request_timeout`, closing the connection.
async fn body_deadline(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let limit = req
        .app_data::<web::Data<AppState>>()
        .map(|s| Duration::from_millis(s.settings.server.request_timeout_ms));
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

fn configure(cfg: &mut web::ServiceConfig, with_backend: bool, with_dev: bool) {
    cfg.service(
        web::resource("/v1/token")
            .wrap(from_fn(cors_layer))
            .route(web::post().to(routes::token))
            .route(web::method(Method::OPTIONS).to(routes::preflight("POST")))
            .default_service(web::to(routes::method_not_allowed("POST, OPTIONS"))),
    );
    cfg.service(
        web::resource("/v1/client.js")
            .wrap(from_fn(cors_layer))
            .route(web::get().to(routes::client_js))
            .route(web::head().to(routes::client_js))
            .route(web::method(Method::OPTIONS).to(routes::preflight("GET")))
            .default_service(web::to(routes::method_not_allowed("GET, HEAD, OPTIONS"))),
    );
    cfg.service(
        web::resource("/v1/client.global.js")
            .wrap(from_fn(cors_layer))
            .route(web::get().to(routes::client_global_js))
            .route(web::head().to(routes::client_global_js))
            .route(web::method(Method::OPTIONS).to(routes::preflight("GET")))
            .default_service(web::to(routes::method_not_allowed("GET, HEAD, OPTIONS"))),
    );
    if with_backend {
        cfg.service(
            web::resource("/v1/backend/token")
                .route(web::post().to(routes::backend_token))
                .default_service(web::to(routes::method_not_allowed("POST"))),
        );
    }
    cfg.service(
        web::resource("/healthz")
            .route(web::get().to(routes::healthz))
            .route(web::head().to(routes::healthz))
            .default_service(web::to(routes::method_not_allowed("GET, HEAD"))),
    );
    cfg.service(
        web::resource("/readyz")
            .route(web::get().to(routes::readyz))
            .route(web::head().to(routes::readyz))
            .default_service(web::to(routes::method_not_allowed("GET, HEAD"))),
    );
    cfg.service(
        web::resource("/openapi.json")
            .route(web::get().to(routes::openapi))
            .route(web::head().to(routes::openapi))
            .default_service(web::to(routes::method_not_allowed("GET, HEAD"))),
    );
    if with_dev {
        cfg.route("/dev", web::get().to(crate::dev::redirect_to_page));
        cfg.route("/dev/", web::get().to(crate::dev::page));
        cfg.route("/dev/session", web::post().to(crate::dev::session));
    }
}

/// The public listener's application: middleware, routes and the fallback. Each server worker
/// builds one; the fuzz targets drive the same one in process.
pub fn public_app(
    state: web::Data<AppState>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = Error,
        InitError = (),
    >,
> {
    let with_backend = state.backend_secret.is_some();
    let with_dev = state.dev.is_some();
    App::new()
        .app_data(state)
        .wrap(from_fn(body_deadline))
        .wrap(TracingLogger::<BrokerRootSpan>::new())
        .wrap(from_fn(request_context))
        .configure(|cfg| configure(cfg, with_backend, with_dev))
        .default_service(web::to(routes::not_found))
}

impl Application {
    /// Builds every part and binds the listeners. Must run inside a Tokio runtime.
    pub async fn build(
        settings: Settings,
        options: BuildOptions,
    ) -> Result<Application, StartupError> {
        let invalid = StartupError::Invalid;
        let metrics = Arc::new(Metrics::new());

        let api_key = match options.api_key {
            Some(key) => SecretCell::with_value(SecretSource::Inline, key),
            None => {
                let (source, key) = match (
                    &settings.intellia.api_key_file,
                    &settings.intellia.api_key_env,
                ) {
                    (Some(path), _) => (SecretSource::File(path.clone()), "intellia.api_key_file"),
                    (None, Some(name)) => (SecretSource::Env(name.clone()), "intellia.api_key_env"),
                    (None, None) => {
                        return Err(invalid(
                            "config key `intellia.api_key_file`: missing".into(),
                        ));
                    }
                };
                SecretCell::load(source).map_err(|e| invalid(format!("config key `{key}`: {e}")))?
            }
        };
        let api_key = Arc::new(api_key);
        let backend_secret = match &settings.backend {
            Some(b) => Some(Arc::new(
                SecretCell::load(SecretSource::File(b.secret_file.clone()))
                    .map_err(|e| invalid(format!("config key `backend.secret_file`: {e}")))?,
            )),
            None => None,
        };

        let session_http = crate::http_client::builder()
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| invalid(format!("cannot build the session HTTP client: {e}")))?;
        let verifier = SessionVerifier::new(
            &settings.session,
            &session_http,
            &metrics,
            options.session_secrets,
        )
        .map_err(invalid)?;
        let intellia = IntelliaClient::new(
            &settings.intellia,
            Arc::clone(&api_key),
            Arc::clone(&metrics),
        )
        .map_err(invalid)?;
        let shared = match &settings.redis {
            Some(redis) => {
                let material = match &redis.cache_secret_file {
                    Some(path) => SecretCell::load(SecretSource::File(path.clone()))
                        .map_err(|e| invalid(format!("config key `redis.cache_secret_file`: {e}")))?
                        .get(),
                    None => api_key.get(),
                };
                metrics.redis_up.set(0);
                Some(
                    crate::redis_store::RedisStore::start(redis, &material, Arc::clone(&metrics))
                        .map_err(invalid)?,
                )
            }
            None => None,
        };
        let replicas = settings.redis.as_ref().map_or(1, |r| r.replicas);
        let limits = Arc::new(Limits::with_shared(
            &settings.rate_limit,
            shared.clone(),
            replicas,
        ));
        // The longest a mint can take, plus a margin: how long a replica holds a user's mint lock.
        let mint_deadline = settings.intellia.deadline() + Duration::from_secs(1);
        let cache = TokenCache::with_shared(&settings.cache, shared, mint_deadline);
        let cors = CorsPolicy::new(&settings.cors.allowed_origins, settings.cors.max_age_secs)
            .map_err(|e| invalid(format!("config key `cors.allowed_origins`: {e}")))?;

        let settings = Arc::new(settings);
        let with_backend = backend_secret.is_some();
        let state = web::Data::new(AppState {
            settings: Arc::clone(&settings),
            verifier,
            intellia,
            limits: Arc::clone(&limits),
            cache,
            cors,
            api_key,
            backend_secret,
            metrics: Arc::clone(&metrics),
            assets: Assets::new(),
            dev: options.dev,
            draining: AtomicBool::new(false),
            stale_secrets: Mutex::new(Vec::new()),
        });

        // Evicts what idle users left behind, full limiter buckets and stale tokens: `moka` evicts
        // only as entries are touched, so an idle replica would otherwise keep a burst's memory.
        spawn_periodic(
            Arc::downgrade(&state.clone().into_inner()),
            Duration::from_secs(60),
            |state| async move {
                state.limits.sweep();
                state.cache.run_housekeeping().await;
            },
        );
        state.verifier.spawn_refreshers();
        spawn_periodic(
            Arc::downgrade(&state.clone().into_inner()),
            Duration::from_secs(settings.server.secret_poll_secs),
            |state| async move {
                state.reload_secrets();
                state
                    .metrics
                    .limiter_keys
                    .set(i64::try_from(state.limits.tracked_keys()).unwrap_or(i64::MAX));
            },
        );

        let listener = bind(settings.server.listen)?;
        let public_addr = listener.local_addr().map_err(|source| StartupError::Bind {
            addr: settings.server.listen,
            source,
        })?;
        let workers = match settings.server.workers {
            0 => std::thread::available_parallelism().map_or(2, std::num::NonZero::get),
            n => n,
        };
        // In-flight requests get what is left of the grace period after the drain delay, less a
        // second, so the process is gone within `shutdown_grace_secs` even when idle keep-alive
        // connections hold the graceful stop open until its timeout.
        let stop_timeout = settings
            .server
            .shutdown_grace_secs
            .saturating_sub(settings.server.drain_delay_secs)
            .saturating_sub(1)
            .max(1);
        let app_state = state.clone();
        let server = HttpServer::new(move || public_app(app_state.clone()))
            .workers(workers)
            .client_request_timeout(Duration::from_millis(settings.server.request_timeout_ms))
            .keep_alive(match settings.server.keep_alive_secs {
                0 => KeepAlive::Disabled,
                secs => KeepAlive::Timeout(Duration::from_secs(secs)),
            })
            .shutdown_timeout(stop_timeout)
            .disable_signals()
            .listen(listener)
            .map_err(|source| StartupError::Bind {
                addr: public_addr,
                source,
            })?
            .run();

        let (admin, admin_addr) = match settings.server.admin_listen {
            Some(addr) => {
                let listener = bind(addr)?;
                let bound = listener
                    .local_addr()
                    .map_err(|source| StartupError::Bind { addr, source })?;
                let metrics_data = web::Data::new(Arc::clone(&metrics));
                let admin = HttpServer::new(move || {
                    App::new()
                        .app_data(metrics_data.clone())
                        .route("/metrics", web::get().to(routes::metrics))
                        .route("/healthz", web::get().to(routes::healthz))
                        .default_service(web::to(routes::not_found))
                })
                .workers(1)
                .shutdown_timeout(1)
                .disable_signals()
                .listen(listener)
                .map_err(|source| StartupError::Bind {
                    addr: bound,
                    source,
                })?
                .run();
                (Some(admin), Some(bound))
            }
            None => (None, None),
        };

        tracing::info!(
            listen = %public_addr,
            admin = admin_addr.map(tracing::field::display),
            issuers = settings.session.jwt.len(),
            backend_route = with_backend,
            version = env!("CARGO_PKG_VERSION"),
            "broker listening"
        );
        Ok(Application {
            public_addr,
            admin_addr,
            server,
            admin,
            state,
            handle_signals: options.handle_signals,
        })
    }

    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    /// A handle that drains and stops this application, as SIGTERM does.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            state: self.state.clone(),
            server: self.server.handle(),
            admin: self.admin.as_ref().map(Server::handle),
        }
    }

    /// Serves until stopped (by a signal when enabled, or through a [`ShutdownHandle`]).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        if self.handle_signals {
            let handle = self.shutdown_handle();
            tokio::spawn(async move {
                wait_for_signal().await;
                handle.drain_and_stop().await;
            });
        }
        match self.admin {
            Some(admin) => {
                let (public, admin) = tokio::join!(self.server, admin);
                public.and(admin)
            }
            None => self.server.await,
        }
    }
}

#[derive(Clone)]
pub struct ShutdownHandle {
    state: web::Data<AppState>,
    server: ServerHandle,
    admin: Option<ServerHandle>,
}

impl ShutdownHandle {
    /// Turns `/readyz` to 503 at once, keeps serving for `drain_delay_secs` so load balancers
    /// stop sending traffic, then stops accepting and lets in-flight requests finish.
    pub async fn drain_and_stop(&self) {
        self.state.draining.store(true, Ordering::Release);
        self.state.metrics.ready.set(0);
        let server = &self.state.settings.server;
        tracing::info!(
            drain_delay_secs = server.drain_delay_secs,
            grace_secs = server.shutdown_grace_secs,
            "draining: readiness is now 503"
        );
        tokio::time::sleep(Duration::from_secs(server.drain_delay_secs)).await;
        tracing::info!("stopping: finishing in-flight requests");
        self.server.stop(true).await;
        if let Some(admin) = &self.admin {
            admin.stop(true).await;
        }
        tracing::info!("stopped");
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = int.recv() => tracing::info!("SIGINT received"),
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs `work` every `period` while the state lives; a slow round delays the next instead of
/// bunching them up.
fn spawn_periodic<F, Fut>(state: Weak<AppState>, period: Duration, work: F)
where
    F: Fn(Arc<AppState>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(state) = state.upgrade() else { return };
            work(state).await;
        }
    });
}
