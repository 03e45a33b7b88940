//! Wiring: builds every part from the settings, binds the listeners (port 0 works, and the bound
//! addresses are exposed), and runs until a signal drains and stops the server.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServerHandle, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::KeepAlive;
use actix_web::middleware::from_fn;
use actix_web::{App, Error, HttpServer, web};
use tracing_actix_web::TracingLogger;

use crate::cache::TokenCache;
use crate::config::Settings;
use crate::http::assets::Assets;
use crate::http::connection::TimedStream;
use crate::http::cors::CorsPolicy;
use crate::http::middleware::{ConnectionPolicy, Drain, request_context};
use crate::http::operations::Readiness;
use crate::http::request_log::BrokerRootSpan;
use crate::http::routes::Route;
use crate::http::{self, RequestLimits};
use crate::intellia::IntelliaClient;
use crate::limits::Limits;
use crate::limits::failures::FailureLimit;
use crate::secrets::{InlineSecrets, Reload, SecretKind, Secrets};
use crate::service::{BackendAuth, TokenService};
use crate::session::SessionVerifier;
use crate::telemetry::metrics::{ExpectedSeries, Metrics, SecretLabels};

/// Routes added beside the public ones (`dev` mode's demo page).
pub(crate) type ExtraRoutes = Arc<dyn Fn(&mut web::ServiceConfig) + Send + Sync>;

/// Overrides for `dev` mode and tests.
#[derive(Default)]
pub struct BuildOptions {
    /// Secrets supplied in memory instead of read from their files.
    pub secrets: InlineSecrets,
    pub extra_routes: Option<ExtraRoutes>,
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

/// The parts the public application is made of, each shared by every worker. Handlers take the
/// parts they need, never this whole.
#[derive(Clone)]
pub struct AppParts {
    pub service: web::Data<TokenService>,
    pub verifier: Arc<SessionVerifier>,
    pub cors: web::Data<CorsPolicy>,
    pub readiness: web::Data<Readiness>,
    pub assets: web::Data<Assets>,
    pub metrics: web::Data<Metrics>,
    pub connection: web::Data<ConnectionPolicy>,
    pub request_limits: web::Data<RequestLimits>,
    pub secrets: Arc<Secrets>,
    pub extra_routes: Option<ExtraRoutes>,
}

impl std::fmt::Debug for AppParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppParts").finish_non_exhaustive()
    }
}

impl AppParts {
    /// Builds every part from the settings. Must run inside a Tokio runtime (Redis connects in
    /// the background).
    pub fn build(settings: &Settings, options: BuildOptions) -> Result<AppParts, String> {
        let metrics = Arc::new(Metrics::new());
        let mut token_routes = vec![Route::Token.path()];
        token_routes.extend(
            settings
                .backend
                .as_ref()
                .map(|_| Route::BackendToken.path()),
        );
        let limits = &settings.rate_limit;
        let limit_names = [
            limits.per_user.as_ref().map(|_| "user"),
            limits.per_ip.as_ref().map(|_| "ip"),
            limits.upstream.as_ref().map(|_| "upstream"),
            settings
                .backend
                .as_ref()
                .map(|_| crate::limits::failures::NAME),
        ];
        let codes: Vec<&'static str> = crate::error::ErrorCode::ALL
            .iter()
            .map(|c| c.as_str())
            .collect();
        let limit_names: Vec<&'static str> = limit_names.into_iter().flatten().collect();
        let session_sources = [
            (!settings.session.jwt.is_empty()).then_some("jwt"),
            settings
                .session
                .introspection
                .as_ref()
                .map(|_| "introspection"),
        ];
        let session_sources: Vec<&'static str> = session_sources.into_iter().flatten().collect();
        metrics.start_at_zero(&ExpectedSeries {
            token_routes: &token_routes,
            codes: &codes,
            limits: &limit_names,
            session_sources: &session_sources,
            redis: settings.redis.is_some(),
        });
        let secrets = Arc::new(Secrets::load(settings, options.secrets)?);
        for label in secrets.labels() {
            metrics
                .secret_stale
                .get_or_create(&SecretLabels { secret: label })
                .set(0);
        }
        let session_http = crate::http_client::builder()
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| format!("cannot build the session HTTP client: {e}"))?;
        let verifier = Arc::new(SessionVerifier::new(
            &settings.session,
            &secrets,
            &session_http,
            &metrics,
        )?);
        let intellia =
            IntelliaClient::new(&settings.intellia, secrets.api_key(), Arc::clone(&metrics))?;
        let store = settings
            .redis
            .as_ref()
            .map(|redis| {
                crate::redis::RedisStore::start(
                    redis,
                    secrets.get(SecretKind::RedisPassword),
                    Arc::clone(&metrics),
                )
            })
            .transpose()?;
        let replicas = settings.redis.as_ref().map_or(1, |r| r.replicas.get());
        let limits = Limits::new(&settings.rate_limit, store.clone(), replicas);
        // The longest a mint can take, plus a margin: how long a replica holds a user's mint lock.
        let mint_deadline = settings.intellia.deadline() + Duration::from_secs(1);
        let key_material = secrets.cache_key_material().get();
        let cache = TokenCache::new(
            &settings.cache,
            store.map(|store| (store, key_material.secret())),
            mint_deadline,
        );
        let backend = settings
            .backend
            .as_ref()
            .zip(secrets.get(SecretKind::Backend))
            .map(|(backend, secret)| {
                BackendAuth::new(
                    secret,
                    FailureLimit::new(
                        backend.max_failures_per_minute.get(),
                        settings.rate_limit.ipv6_prefix(),
                    ),
                )
            });
        let service = TokenService::new(
            Arc::clone(&verifier),
            backend,
            limits,
            cache,
            intellia,
            Arc::clone(&metrics),
        );
        let drain = Drain::default();
        Ok(AppParts {
            service: web::Data::new(service),
            verifier: Arc::clone(&verifier),
            cors: web::Data::new(CorsPolicy::new(&settings.cors)),
            readiness: web::Data::new(Readiness {
                drain: drain.clone(),
                verifier,
                secrets: Arc::clone(&secrets),
                metrics: Arc::clone(&metrics),
            }),
            assets: web::Data::new(Assets::new(crate::http::openapi::document_json())),
            metrics: web::Data::from(metrics),
            connection: web::Data::new(ConnectionPolicy {
                trusted_proxies: settings.server.trusted_proxies.clone(),
                client_ip_header: settings.server.client_ip_header,
                request_timeout: Duration::from_millis(settings.server.request_timeout_ms.get()),
                drain,
            }),
            request_limits: web::Data::new(RequestLimits {
                max_body_bytes: settings.server.max_body_bytes.get(),
            }),
            secrets,
            extra_routes: options.extra_routes,
        })
    }

    /// Re-reads every secret; a failure keeps the last good value and is reported once.
    fn reload_secrets(&self) {
        for event in self.secrets.reload() {
            match event {
                Reload::Rotated(kind) => {
                    tracing::info!(secret = kind.label(), "secret rotated");
                    self.metrics
                        .secret_reloads
                        .get_or_create(&SecretLabels {
                            secret: kind.label(),
                        })
                        .inc();
                    if matches!(kind, SecretKind::SessionHs256(_)) {
                        self.verifier.secret_rotated();
                    }
                }
                Reload::Recovered(kind) => {
                    tracing::info!(secret = kind.label(), "secret readable again");
                }
                Reload::Failed { kind, error, first } => {
                    if first {
                        tracing::error!(secret = kind.label(), error = %error, "secret source unreadable; keeping the last good value");
                    }
                    self.metrics
                        .secret_reload_failures
                        .get_or_create(&SecretLabels {
                            secret: kind.label(),
                        })
                        .inc();
                }
            }
        }
        let stale = self.secrets.stale();
        for label in self.secrets.labels() {
            self.metrics
                .secret_stale
                .get_or_create(&SecretLabels { secret: label })
                .set(i64::from(stale.contains(&label)));
        }
    }
}

/// A built, listening broker.
pub struct Application {
    public_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    backend_addr: Option<SocketAddr>,
    server: Server,
    admin: Option<Server>,
    backend: Option<Server>,
    parts: AppParts,
    /// Keeps the periodic tasks (secret poller, housekeeping) going while the application runs.
    _reloader: Arc<AppParts>,
    drain_delay: Duration,
    signals: Option<Signals>,
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

/// The public listener's application: middleware, routes and the fallback. Each server worker
/// builds one; the fuzz targets drive the same one in process.
pub fn public_app(
    parts: AppParts,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = Error,
        InitError = (),
    >,
> {
    let app = App::new()
        .app_data(parts.service)
        .app_data(parts.cors)
        .app_data(parts.readiness)
        .app_data(parts.assets)
        .app_data(parts.metrics)
        .app_data(parts.connection)
        .app_data(parts.request_limits);
    let extra = parts.extra_routes;
    app.wrap(TracingLogger::<BrokerRootSpan>::new())
        .wrap(from_fn(request_context))
        .configure(|cfg| {
            http::configure(cfg);
            if let Some(extra) = &extra {
                extra(cfg);
            }
        })
        .default_service(web::to(http::not_found))
}

/// The backend listener's application: the sidecar route alone, behind the same request
/// context, log line and body deadline as the public routes. Its client address is the TCP
/// peer's: nobody proxies a private listener, so no forwarding header is believed there, and no
/// caller can claim another's address.
pub fn backend_app(
    parts: AppParts,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = Error,
        InitError = (),
    >,
> {
    let connection = web::Data::new(ConnectionPolicy {
        trusted_proxies: Vec::new(),
        ..parts.connection.get_ref().clone()
    });
    App::new()
        .app_data(parts.service)
        .app_data(parts.metrics)
        .app_data(connection)
        .app_data(parts.request_limits)
        .wrap(TracingLogger::<BrokerRootSpan>::new())
        .wrap(from_fn(request_context))
        .configure(http::configure_backend)
        .default_service(web::to(http::not_found))
}

/// How every HTTP listener of the broker treats its connections.
#[derive(Debug, Clone, Copy)]
struct ServerTuning {
    workers: usize,
    request_timeout: Duration,
    keep_alive: KeepAlive,
    /// From an answer to the next head on its connection (`http::connection`).
    next_head: Duration,
    stop_timeout: u64,
}

/// Serves `factory`'s application on a listener bound to `configured`, with the broker's
/// connection limits; returns the server and the bound address. What `HttpServer::listen` does,
/// with one addition it cannot make: each connection's stream is a [`TimedStream`], so a request
/// head that is not the connection's first is bounded too.
fn http_server<T, B>(
    factory: impl Fn() -> App<T> + Send + Clone + 'static,
    configured: SocketAddr,
    tuning: ServerTuning,
) -> Result<(Server, SocketAddr), StartupError>
where
    T: ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<B>,
            Error = Error,
            InitError = (),
        > + 'static,
    B: MessageBody + 'static,
{
    use actix_http::{HttpService, Protocol};
    use actix_service::{IntoServiceFactory, ServiceFactoryExt, fn_service, map_config};
    use actix_web::rt::net::TcpStream;

    let listener = bind(configured)?;
    let addr = listener.local_addr().map_err(|source| StartupError::Bind {
        addr: configured,
        source,
    })?;
    let builder = actix_server::Server::build();
    // Tells connections when a graceful stop begins, so idle keep-alive ones close at once.
    let stopping = builder.graceful_shutdown_signal();
    let server = builder
        .workers(tuning.workers)
        .shutdown_timeout(tuning.stop_timeout)
        .disable_signals()
        .listen(format!("broker-{addr}"), listener, move || {
            let stopping = stopping.clone();
            let app = factory()
                .into_factory()
                .map_err(|e: Error| e.error_response());
            let http = HttpService::build()
                .graceful_shutdown_signal(move || {
                    let stopping = stopping.clone();
                    async move { stopping.notified().await }
                })
                .keep_alive(tuning.keep_alive)
                .client_request_timeout(tuning.request_timeout)
                .client_disconnect_timeout(Duration::from_secs(1))
                .local_addr(addr)
                .on_connect_ext(|io: &TimedStream<TcpStream>, data| {
                    data.insert(io.clock());
                })
                .finish(map_config(app, |()| actix_web::dev::AppConfig::default()));
            fn_service(move |io: TcpStream| {
                let peer = io.peer_addr().ok();
                std::future::ready(Ok::<_, actix_http::error::DispatchError>((
                    TimedStream::new(io, tuning.next_head),
                    Protocol::Http1,
                    peer,
                )))
            })
            .and_then(http)
        })
        .map_err(|source| StartupError::Bind { addr, source })?
        .run();
    Ok((server, addr))
}

impl Application {
    /// Builds every part and binds the listeners. Must run inside a Tokio runtime.
    pub async fn build(
        settings: Settings,
        options: BuildOptions,
    ) -> Result<Application, StartupError> {
        let signals = options.handle_signals.then(Signals::install);
        let parts = AppParts::build(&settings, options).map_err(StartupError::Invalid)?;

        parts.verifier.spawn_refreshers();
        let reloader = Arc::new(parts.clone());
        spawn_periodic(
            Arc::downgrade(&reloader),
            Duration::from_secs(settings.server.secret_poll_secs.get()),
            |parts| async move { parts.reload_secrets() },
        );
        // Evicts what idle clients left behind: `moka` evicts only as entries are touched, so an
        // idle replica would otherwise keep a burst's memory.
        spawn_periodic(
            Arc::downgrade(&reloader),
            Duration::from_secs(60),
            |parts| async move { parts.service.housekeeping().await },
        );

        let server_settings = &settings.server;
        // In-flight requests get what is left of the grace period after the drain delay, less a
        // second, so the process is gone within `shutdown_grace_secs` even when idle keep-alive
        // connections hold the graceful stop open until its timeout.
        let stop_timeout = server_settings
            .shutdown_grace_secs
            .get()
            .saturating_sub(server_settings.drain_delay_secs())
            .saturating_sub(1)
            .max(1);
        let tuning = ServerTuning {
            workers: match server_settings.workers.get() {
                0 => std::thread::available_parallelism().map_or(2, std::num::NonZero::get),
                n => n,
            },
            request_timeout: Duration::from_millis(server_settings.request_timeout_ms.get()),
            keep_alive: match server_settings.keep_alive_secs.get() {
                0 => KeepAlive::Disabled,
                secs => KeepAlive::Timeout(Duration::from_secs(secs)),
            },
            next_head: Duration::from_secs(server_settings.keep_alive_secs.get())
                + Duration::from_millis(server_settings.request_timeout_ms.get()),
            stop_timeout,
        };
        let app_parts = parts.clone();
        let (server, public_addr) = http_server(
            move || public_app(app_parts.clone()),
            server_settings.listen,
            tuning,
        )?;
        // The sidecar route has a listener of its own, and only there is it served.
        let (backend, backend_addr) = match &settings.backend {
            Some(backend) if parts.service.has_backend() => {
                let app_parts = parts.clone();
                let (server, addr) = http_server(
                    move || backend_app(app_parts.clone()),
                    backend.listen,
                    tuning,
                )?;
                (Some(server), Some(addr))
            }
            _ => (None, None),
        };

        let (admin, admin_addr) = match server_settings.admin_listen {
            Some(addr) => {
                let listener = bind(addr)?;
                let bound = listener
                    .local_addr()
                    .map_err(|source| StartupError::Bind { addr, source })?;
                let metrics = parts.metrics.clone();
                let readiness = parts.readiness.clone();
                let admin = HttpServer::new(move || {
                    App::new()
                        .app_data(metrics.clone())
                        .app_data(readiness.clone())
                        .route(
                            Route::Metrics.path(),
                            http::on(actix_web::http::Method::GET).to(http::operations::metrics),
                        )
                        .route(
                            Route::Healthz.path(),
                            http::on(actix_web::http::Method::GET).to(http::operations::healthz),
                        )
                        .route(
                            Route::Readyz.path(),
                            http::on(actix_web::http::Method::GET)
                                .to(http::operations::readyz_detail),
                        )
                        .default_service(web::to(http::not_found))
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

        for warning in settings.warnings() {
            tracing::warn!(key = %warning.key, "{warning}");
        }
        tracing::info!(
            listen = %public_addr,
            admin = admin_addr.map(tracing::field::display),
            backend = backend_addr.map(tracing::field::display),
            issuers = settings.session.jwt.len(),
            backend_route = backend_addr.is_some(),
            version = env!("CARGO_PKG_VERSION"),
            "broker listening"
        );
        Ok(Application {
            public_addr,
            admin_addr,
            backend_addr,
            server,
            admin,
            backend,
            parts,
            _reloader: reloader,
            drain_delay: Duration::from_secs(server_settings.drain_delay_secs()),
            signals,
        })
    }

    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The sidecar route's listener (`backend.listen`), when `[backend]` is configured.
    pub fn backend_addr(&self) -> Option<SocketAddr> {
        self.backend_addr
    }

    /// The running parts, for tests that look inside (metrics, secrets).
    pub fn parts(&self) -> AppParts {
        self.parts.clone()
    }

    /// A handle that drains and stops this application, as SIGTERM does.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            drain: self.parts.connection.drain.clone(),
            metrics: self.parts.metrics.clone(),
            drain_delay: self.drain_delay,
            servers: std::iter::once(&self.server)
                .chain(self.admin.as_ref())
                .chain(self.backend.as_ref())
                .map(Server::handle)
                .collect(),
        }
    }

    /// Serves until stopped (by a signal when enabled, or through a [`ShutdownHandle`]).
    pub async fn run_until_stopped(mut self) -> std::io::Result<()> {
        if let Some(signals) = self.signals.take() {
            let handle = self.shutdown_handle();
            tokio::spawn(async move {
                signals.received().await;
                handle.drain_and_stop().await;
            });
        }
        let servers = std::iter::once(self.server)
            .chain(self.admin)
            .chain(self.backend);
        futures_util::future::join_all(servers)
            .await
            .into_iter()
            .collect()
    }
}

#[derive(Clone)]
pub struct ShutdownHandle {
    drain: Drain,
    metrics: web::Data<Metrics>,
    drain_delay: Duration,
    /// The public listener first, then the admin and backend listeners.
    servers: Vec<ServerHandle>,
}

impl ShutdownHandle {
    /// Turns `/readyz` to 503 at once, keeps serving for `drain_delay_secs` so load balancers
    /// stop sending traffic, then stops accepting and lets in-flight requests finish.
    pub async fn drain_and_stop(&self) {
        self.drain.start();
        self.metrics.ready.set(0);
        tracing::info!(
            drain_delay_secs = self.drain_delay.as_secs(),
            "draining: readiness is now 503"
        );
        tokio::time::sleep(self.drain_delay).await;
        tracing::info!("stopping: finishing in-flight requests");
        // Together: each listener's in-flight requests get the whole stop timeout.
        futures_util::future::join_all(self.servers.iter().map(|server| server.stop(true))).await;
        tracing::info!("stopped");
    }
}

/// SIGTERM and SIGINT, listened for from the moment the application is built: a signal that
/// arrives right after the "broker listening" line must drain the broker, not kill it.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Signals {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn received(self) {
        #[cfg(unix)]
        if let (Some(mut term), Some(mut int)) = (self.term, self.int) {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs `work` every `period` while its subject lives; a slow round delays the next instead of
/// bunching them up.
fn spawn_periodic<T, F, Fut>(subject: std::sync::Weak<T>, period: Duration, work: F)
where
    T: Send + Sync + 'static,
    F: Fn(Arc<T>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(subject) = subject.upgrade() else {
                return;
            };
            work(subject).await;
        }
    });
}
