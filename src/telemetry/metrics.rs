//! Prometheus metrics, served on `admin_listen` only. Labels are closed sets chosen by the code
//! (route patterns, outcome codes, status classes); no user id, e-mail or token ever becomes a label.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusClassLabels {
    pub status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuerLabels {
    /// Index of the `[[session.jwt]]` table: issuers are configuration, not user data, but an
    /// index keeps labels short and stable.
    pub issuer: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatusLabels {
    pub route: &'static str,
    /// The numeric HTTP status the broker answered with (a closed set: the broker's own answers).
    pub status: u16,
}

/// The exemplar of a sampled request: its trace, to jump from a latency bucket to the trace.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceExemplar {
    pub trace_id: String,
}

/// A request latency histogram with the trace of its latest sampled request per bucket.
pub(crate) type RequestHistogram = HistogramWithExemplars<TraceExemplar>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// `jwt` or `introspection`.
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuerIndexLabels {
    /// Index of the `[[session.jwt]]` table, as in `broker_jwks_fetches_total`.
    pub issuer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SecretLabels {
    pub secret: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RedisOpLabels {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// Index of the `[[session.endpoint]]` table, as issuers are labelled by theirs.
    pub endpoint: String,
    /// What the site's answer meant: `signed_in`, `signed_out`, `redirected`, `no_user_id`,
    /// `failed`, `invalid`, `timeout`, `unreachable`, `saturated`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// The label values a configured broker will use, for [`Metrics::start_at_zero`].
#[derive(Debug, Default)]
pub struct ExpectedSeries<'a> {
    /// The token routes served (`route` of requests and their latency).
    pub token_routes: &'a [&'static str],
    /// The outcome codes of the error table (`code` of requests).
    pub codes: &'a [&'static str],
    /// The configured rate limits (`limit`).
    pub limits: &'a [&'static str],
    /// The configured session sources (`source` of session verification).
    pub session_sources: &'a [&'static str],
    /// Whether Redis is configured.
    pub redis: bool,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub upstream_requests: Family<StatusClassLabels, Counter>,
    pub upstream_duration: Family<StatusClassLabels, Histogram>,
    pub upstream_retries: Counter,
    pub cache_requests: Family<ResultLabels, Counter>,
    pub rate_limited: Family<LimitLabels, Counter>,
    pub jwks_fetches: Family<IssuerLabels, Counter>,
    pub secret_reloads: Family<SecretLabels, Counter>,
    pub secret_reload_failures: Family<SecretLabels, Counter>,
    pub secret_stale: Family<SecretLabels, Gauge>,
    pub ready: Gauge,
    pub limiter_keys: Gauge,
    pub redis_up: Gauge,
    pub redis_failures: Family<ReasonLabels, Counter>,
    pub redis_duration: Family<RedisOpLabels, Histogram>,
    pub upstream_circuit_open: Gauge,
    pub request_duration: Family<RouteStatusLabels, HistogramWithExemplars<TraceExemplar>>,
    pub session_verify_duration: Family<SourceLabels, Histogram>,
    pub jwks_last_success: Family<IssuerIndexLabels, Gauge>,
    pub trace_export_failures: Counter,
    pub session_endpoint_requests: Family<EndpointLabels, Counter>,
    pub session_endpoint_duration: Family<EndpointLabels, Histogram>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn latency_histogram() -> Histogram {
    // 5 ms .. ~20 s
    Histogram::new(exponential_buckets(0.005, 2.0, 13))
}

fn redis_histogram() -> Histogram {
    // 100 µs .. ~0.4 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 13))
}

/// Whole requests and session checks, 10 µs to 10 s in 1-2.5-5 steps: a cached answer takes
/// about 10 µs, a mint tens of milliseconds, so the quantiles of each land in buckets of their own.
const REQUEST_BUCKETS: [f64; 19] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn request_histogram() -> RequestHistogram {
    HistogramWithExemplars::new(REQUEST_BUCKETS.into_iter())
}

fn session_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS)
}

/// The git revision the binary was built from (`build.rs`; `unknown` outside a checkout).
const REVISION: &str = env!("BROKER_GIT_REVISION");

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        // Process metrics carry the conventional unprefixed names; everything else is `broker_`.
        let mut root = Registry::default();
        crate::telemetry::process_metrics::register(&mut root);
        let registry = root.sub_registry_with_prefix("broker");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Token and support requests by route and outcome code",
            requests.clone(),
        );
        let upstream_requests = Family::<StatusClassLabels, Counter>::default();
        registry.register(
            "upstream_requests",
            "Attempts to call Intellia by status class",
            upstream_requests.clone(),
        );
        let upstream_duration = Family::<StatusClassLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register_with_unit(
            "upstream_duration",
            "Latency of attempts to call Intellia",
            Unit::Seconds,
            upstream_duration.clone(),
        );
        let upstream_retries = Counter::default();
        registry.register(
            "upstream_retries",
            "Retries of Intellia calls after 429, 5xx or connect errors",
            upstream_retries.clone(),
        );
        let cache_requests = Family::<ResultLabels, Counter>::default();
        registry.register(
            "cache_requests",
            "Token cache lookups by result (hit, miss)",
            cache_requests.clone(),
        );
        let rate_limited = Family::<LimitLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit",
            rate_limited.clone(),
        );
        let jwks_fetches = Family::<IssuerLabels, Counter>::default();
        registry.register(
            "jwks_fetches",
            "JWKS (and discovery) fetches by issuer index and result",
            jwks_fetches.clone(),
        );
        let secret_reloads = Family::<SecretLabels, Counter>::default();
        registry.register(
            "secret_reloads",
            "Secrets re-read after they changed on disk",
            secret_reloads.clone(),
        );
        let secret_reload_failures = Family::<SecretLabels, Counter>::default();
        registry.register(
            "secret_reload_failures",
            "Failed re-reads of a secret; the last good value stays in use",
            secret_reload_failures.clone(),
        );
        let secret_stale = Family::<SecretLabels, Gauge>::default();
        registry.register(
            "secret_stale",
            "Whether a secret's source is unreadable or empty (1) and the last good value is served",
            secret_stale.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "Whether /readyz answers 200 (1) or not (0)",
            ready.clone(),
        );
        let limiter_keys = Gauge::default();
        registry.register(
            "limiter_keys",
            "Keys tracked by the per-user and per-IP limiters",
            limiter_keys.clone(),
        );
        let redis_up = Gauge::default();
        registry.register(
            "redis_up",
            "Whether Redis answers: 1 = shared limits and cache, 0 = the fallback is in use",
            redis_up.clone(),
        );
        let redis_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "redis_failures",
            "Redis calls and connection attempts that failed, by reason (timeout, connection, auth, cluster, other)",
            redis_failures.clone(),
        );
        let redis_duration = Family::<RedisOpLabels, Histogram>::new_with_constructor(
            redis_histogram as fn() -> Histogram,
        );
        registry.register_with_unit(
            "redis_duration",
            "Latency of Redis calls by operation (limits, get, set, lock, unlock, refund, ping)",
            Unit::Seconds,
            redis_duration.clone(),
        );
        let upstream_circuit_open = Gauge::default();
        registry.register(
            "upstream_circuit_open",
            "Whether the circuit breaker toward Intellia is open (1) or closed (0)",
            upstream_circuit_open.clone(),
        );
        let request_duration = Family::<RouteStatusLabels, RequestHistogram>::new_with_constructor(
            request_histogram as fn() -> RequestHistogram,
        );
        registry.register_with_unit(
            "request_duration",
            "Time from a request's arrival to its answer, by route and HTTP status; sampled requests carry their trace_id as an exemplar",
            Unit::Seconds,
            request_duration.clone(),
        );
        let session_verify_duration = Family::<SourceLabels, Histogram>::new_with_constructor(
            session_histogram as fn() -> Histogram,
        );
        registry.register_with_unit(
            "session_verify_duration",
            "Time to verify a session not seen before, by source (jwt, introspection); includes key fetches and userinfo",
            Unit::Seconds,
            session_verify_duration.clone(),
        );
        let jwks_last_success = Family::<IssuerIndexLabels, Gauge>::default();
        registry.register_with_unit(
            "jwks_last_success_timestamp",
            "Unix time of the last successful JWKS fetch by issuer index (0 = never)",
            Unit::Seconds,
            jwks_last_success.clone(),
        );
        let trace_export_failures = crate::telemetry::traces::export::failures_counter();
        registry.register(
            "trace_export_failures",
            "OTLP trace exports that failed or timed out; each drops its batch of spans (0 with traces off)",
            trace_export_failures.clone(),
        );
        let session_endpoint_requests = Family::<EndpointLabels, Counter>::default();
        registry.register(
            "session_endpoint_requests",
            "Calls to a site's session endpoint ([[session.endpoint]]) by endpoint index and outcome",
            session_endpoint_requests.clone(),
        );
        let session_endpoint_duration = Family::<EndpointLabels, Histogram>::new_with_constructor(
            session_histogram as fn() -> Histogram,
        );
        registry.register(
            "session_endpoint_duration_seconds",
            "Latency of calls to a site's session endpoint by endpoint index and outcome",
            session_endpoint_duration.clone(),
        );
        let build_info = Info::new(vec![
            ("version", env!("CARGO_PKG_VERSION")),
            ("revision", REVISION),
        ]);
        registry.register("build", "Build information", build_info);
        Metrics {
            registry: root,
            requests,
            upstream_requests,
            upstream_duration,
            upstream_retries,
            cache_requests,
            rate_limited,
            jwks_fetches,
            secret_reloads,
            secret_reload_failures,
            secret_stale,
            ready,
            limiter_keys,
            redis_up,
            redis_failures,
            redis_duration,
            upstream_circuit_open,
            request_duration,
            session_verify_duration,
            jwks_last_success,
            trace_export_failures,
            session_endpoint_requests,
            session_endpoint_duration,
        }
    }

    /// One call to a site's session endpoint: counted by what its answer meant, and timed.
    pub fn observe_session_endpoint(
        &self,
        endpoint: usize,
        outcome: &'static str,
        elapsed: Duration,
    ) {
        let labels = EndpointLabels {
            endpoint: endpoint.to_string(),
            outcome,
        };
        self.session_endpoint_requests.get_or_create(&labels).inc();
        self.session_endpoint_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Creates at zero the series the chart's alerts and dashboard read before their first
    /// event, so a first failure counts in `rate()`, ratios have a denominator, and every family
    /// the dashboard names is on `/metrics` from the start (a family without a series is not).
    pub fn start_at_zero(&self, expected: &ExpectedSeries<'_>) {
        for &route in expected.token_routes {
            for &code in std::iter::once(&"ok").chain(expected.codes) {
                let _ = self.requests.get_or_create(&RequestLabels { route, code });
            }
            let _ = self
                .request_duration
                .get_or_create(&RouteStatusLabels { route, status: 200 });
        }
        for result in ["hit", "miss"] {
            let _ = self.cache_requests.get_or_create(&ResultLabels { result });
        }
        for status_class in ["2xx", "4xx", "429", "5xx", "timeout", "connect_error"] {
            let _ = self
                .upstream_requests
                .get_or_create(&StatusClassLabels { status_class });
        }
        for &limit in expected.limits {
            let _ = self.rate_limited.get_or_create(&LimitLabels { limit });
        }
        for &source in expected.session_sources {
            let _ = self
                .session_verify_duration
                .get_or_create(&SourceLabels { source });
        }
        if expected.redis {
            // The health check pings from the start; the other operations follow traffic.
            let _ = self
                .redis_duration
                .get_or_create(&RedisOpLabels { op: "ping" });
        }
    }

    /// Records a request's latency; `exemplar` is its trace when it was sampled.
    pub fn observe_request(
        &self,
        route: &'static str,
        status: u16,
        seconds: f64,
        exemplar: Option<opentelemetry::trace::TraceId>,
    ) {
        let exemplar = exemplar.map(|id| TraceExemplar {
            trace_id: crate::hex::encode(&id.to_bytes()),
        });
        let timestamp = exemplar.as_ref().map(|_| std::time::SystemTime::now());
        self.request_duration
            .get_or_create(&RouteStatusLabels { route, status })
            .observe(seconds, exemplar, timestamp);
    }

    pub fn observe_session_verify(&self, source: &'static str, elapsed: Duration) {
        self.session_verify_duration
            .get_or_create(&SourceLabels { source })
            .observe(elapsed.as_secs_f64());
    }

    pub fn observe_upstream(&self, status_class: &'static str, elapsed: Duration) {
        let labels = StatusClassLabels { status_class };
        self.upstream_requests.get_or_create(&labels).inc();
        self.upstream_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    pub fn observe_redis(&self, op: &'static str, elapsed: Duration) {
        self.redis_duration
            .get_or_create(&RedisOpLabels { op })
            .observe(elapsed.as_secs_f64());
    }

    pub fn count_redis_failure(&self, reason: &'static str) {
        self.redis_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn count_request(&self, route: &'static str, code: &'static str) {
        self.requests
            .get_or_create(&RequestLabels { route, code })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_the_documented_series() {
        let m = Metrics::new();
        m.count_request("/v1/token", "ok");
        m.observe_upstream("2xx", Duration::from_millis(12));
        m.observe_request("/v1/token", 200, 0.000_012, None);
        let trace =
            opentelemetry::trace::TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        m.observe_request("/v1/token", 200, 0.004, Some(trace));
        m.observe_session_verify("jwt", Duration::from_millis(3));
        m.observe_session_endpoint(0, "signed_in", Duration::from_millis(4));
        m.jwks_last_success
            .get_or_create(&IssuerIndexLabels { issuer: "0".into() })
            .set(0);
        m.cache_requests
            .get_or_create(&ResultLabels { result: "hit" })
            .inc();
        m.observe_redis("limits", Duration::from_micros(300));
        m.count_redis_failure("auth");
        let text = m.encode();
        for series in [
            "broker_requests_total{route=\"/v1/token\",code=\"ok\"} 1",
            "broker_upstream_requests_total{status_class=\"2xx\"} 1",
            "broker_upstream_duration_seconds_bucket",
            "broker_cache_requests_total{result=\"hit\"} 1",
            "broker_build_info{version=",
            "broker_redis_duration_seconds_count{op=\"limits\"} 1",
            "broker_redis_failures_total{reason=\"auth\"} 1",
            "broker_request_duration_seconds_bucket{le=\"0.00001\",route=\"/v1/token\",status=\"200\"} 0",
            "broker_request_duration_seconds_bucket{le=\"0.000025\",route=\"/v1/token\",status=\"200\"} 1",
            "broker_request_duration_seconds_bucket{le=\"0.005\",route=\"/v1/token\",status=\"200\"} 2 # {trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\"} 0.004 ",
            "broker_request_duration_seconds_count{route=\"/v1/token\",status=\"200\"} 2",
            "# UNIT broker_request_duration_seconds seconds",
            "# UNIT broker_upstream_duration_seconds seconds",
            "# UNIT broker_jwks_last_success_timestamp_seconds seconds",
            "broker_trace_export_failures_total ",
            "broker_session_verify_duration_seconds_count{source=\"jwt\"} 1",
            "broker_jwks_last_success_timestamp_seconds{issuer=\"0\"} 0",
            "broker_session_endpoint_requests_total{endpoint=\"0\",outcome=\"signed_in\"} 1",
            "broker_session_endpoint_duration_seconds_count{endpoint=\"0\",outcome=\"signed_in\"} 1",
        ] {
            assert!(text.contains(series), "missing {series} in\n{text}");
        }
    }
}
