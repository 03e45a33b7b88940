//! Configuration: one TOML file plus `BROKER__SECTION__KEY` environment overrides, parsed once into
//! typed structs and validated before anything starts. Every failure is one line naming the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// A configuration problem, phrased for the operator: it always names the key or path at fault.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    fn key(key: &str, problem: impl std::fmt::Display) -> Self {
        ConfigError(one_line(&format!("config key `{key}`: {problem}")))
    }
}

/// Problems quote the operator's values, which may hold control characters; escaped, the message
/// stays one line in a terminal and in a log.
fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub intellia: IntelliaSettings,
    #[serde(default)]
    pub cors: CorsSettings,
    #[serde(default)]
    pub session: SessionSettings,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendSettings>,
    #[serde(default)]
    pub rate_limit: RateLimitSettings,
    #[serde(default)]
    pub cache: CacheSettings,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSettings>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<SocketAddr>,
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    #[serde(default = "default_shutdown_grace_secs")]
    pub shutdown_grace_secs: u64,
    /// After SIGTERM, how long `/readyz` reports 503 while the listener keeps serving, so the
    /// Service stops routing here before connections are refused.
    #[serde(default = "default_drain_delay_secs")]
    pub drain_delay_secs: u64,
    /// How often secret files are checked for rotation.
    #[serde(default = "default_secret_poll_secs")]
    pub secret_poll_secs: u64,
    /// HTTP worker threads; 0 means one per CPU.
    #[serde(default)]
    pub workers: usize,
    /// How long a client may take to send the head of the first request on a connection, and
    /// then each request's body; slower clients get 408 and the connection is closed.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// How long an idle connection waits for its next request; 0 closes every connection after
    /// one response.
    #[serde(default = "default_keep_alive_secs")]
    pub keep_alive_secs: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: default_listen(),
            admin_listen: None,
            trusted_proxies: Vec::new(),
            max_body_bytes: default_max_body_bytes(),
            shutdown_grace_secs: default_shutdown_grace_secs(),
            drain_delay_secs: default_drain_delay_secs(),
            secret_poll_secs: default_secret_poll_secs(),
            workers: 0,
            request_timeout_ms: default_request_timeout_ms(),
            keep_alive_secs: default_keep_alive_secs(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IntelliaSettings {
    #[serde(default = "default_base_url")]
    pub base_url: String,
    pub organization_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Bound on one mint, retries and their waits included; default twice `timeout_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Consecutive failed mints (after retries) that open the circuit breaker.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// How long the open breaker answers 503 at once before letting one probe through.
    #[serde(default = "default_breaker_open_secs")]
    pub breaker_open_secs: u64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CorsSettings {
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    #[serde(default = "default_cors_max_age")]
    pub max_age_secs: u32,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSettings {
    #[serde(default)]
    pub jwt: Vec<JwtIssuerSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introspection: Option<IntrospectionSettings>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtIssuerSettings {
    pub issuer: String,
    pub audience: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    #[serde(default)]
    pub discovery: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hs256_secret_file: Option<PathBuf>,
    #[serde(default)]
    pub algorithms: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    #[serde(default = "default_user_id_claim")]
    pub user_id_claim: String,
    #[serde(default = "default_email_claim")]
    pub email_claim: String,
    #[serde(default = "default_name_claim")]
    pub name_claim: String,
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    #[serde(default)]
    pub user_id_prefix: String,
    /// `claim=value` conditions a session must meet (a string claim equal to the value, or an
    /// array claim containing it); otherwise 403 `forbidden`.
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// Fetch a missing e-mail or name from the provider's userinfo endpoint.
    #[serde(default)]
    pub userinfo: bool,
    /// The userinfo endpoint; with `discovery = true` it is taken from the discovery document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userinfo_url: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionSettings {
    pub url: String,
    pub client_id: String,
    pub client_secret_file: PathBuf,
    /// When set, an `iss` in the introspection answer must equal it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// When set, an `aud` in the introspection answer must contain it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    #[serde(default = "default_user_id_claim")]
    pub user_id_claim: String,
    #[serde(default = "default_email_claim")]
    pub email_claim: String,
    #[serde(default = "default_name_claim")]
    pub name_claim: String,
    #[serde(default)]
    pub user_id_prefix: String,
    #[serde(default)]
    pub required_claims: Vec<String>,
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    /// An active answer is reused for at most this long (and never past the token's `exp`).
    #[serde(default = "default_introspection_ttl")]
    pub cache_ttl_secs: u64,
    /// An inactive answer is remembered this long, so a replayed dead token costs one call.
    #[serde(default = "default_negative_ttl")]
    pub negative_cache_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSettings {
    pub secret_file: PathBuf,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_user: Option<PerMinuteLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_ip: Option<PerMinuteLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<PerSecondLimit>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PerMinuteLimit {
    pub per_minute: u32,
    pub burst: u32,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PerSecondLimit {
    pub per_second: u32,
    pub burst: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "default_min_remaining_secs")]
    pub min_remaining_secs: u64,
    #[serde(default = "default_cache_max_entries")]
    pub max_entries: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            enabled: true,
            min_remaining_secs: default_min_remaining_secs(),
            max_entries: default_cache_max_entries(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    pub url: String,
    #[serde(default)]
    pub on_unavailable: RedisFallback,
    /// Bound on every Redis call; past it the call counts as a failure.
    #[serde(default = "default_redis_timeout_ms")]
    pub timeout_ms: u64,
    /// Replicas sharing the limits: while Redis is unavailable under `on_unavailable = "local"`,
    /// each replica enforces 1/replicas of every limit.
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// Namespace of every key the broker writes.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Key material for encrypting cached tokens; when absent it is derived from the API key
    /// (all replicas share it, and rotating the key simply empties the shared cache).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_secret_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisFallback {
    #[default]
    Local,
    Deny,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}
fn default_max_body_bytes() -> usize {
    4096
}
fn default_shutdown_grace_secs() -> u64 {
    20
}
fn default_drain_delay_secs() -> u64 {
    5
}
fn default_secret_poll_secs() -> u64 {
    2
}
fn default_request_timeout_ms() -> u64 {
    5000
}
fn default_keep_alive_secs() -> u64 {
    5
}
fn default_base_url() -> String {
    "https://api.intellia.com.au".to_owned()
}
fn default_timeout_ms() -> u64 {
    5000
}
fn default_max_retries() -> u32 {
    2
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_open_secs() -> u64 {
    10
}
fn default_cors_max_age() -> u32 {
    600
}
fn default_user_id_claim() -> String {
    "sub".to_owned()
}
fn default_email_claim() -> String {
    "email".to_owned()
}
fn default_name_claim() -> String {
    "name".to_owned()
}
fn default_leeway_secs() -> u64 {
    30
}
fn default_introspection_ttl() -> u64 {
    300
}
fn default_negative_ttl() -> u64 {
    10
}
fn default_redis_timeout_ms() -> u64 {
    50
}
fn default_replicas() -> u32 {
    1
}
fn default_key_prefix() -> String {
    "itb".to_owned()
}
fn default_true() -> bool {
    true
}
fn default_min_remaining_secs() -> u64 {
    900
}
fn default_cache_max_entries() -> u64 {
    100_000
}

/// Algorithms a session JWT may be signed with. `none` is absent by construction.
pub const ASYMMETRIC_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// Where the configuration file is, in the order DESIGN.md gives.
pub fn resolve_config_path(explicit: Option<&Path>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("BROKER_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("config/default.toml"))
}

impl Settings {
    /// Reads the file, applies `BROKER__SECTION__KEY` overrides from the process environment, and
    /// validates the result.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// Like [`Settings::load`] with an explicit environment, so tests never touch the process's.
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            let reason = match e.kind() {
                std::io::ErrorKind::NotFound => "does not exist".to_owned(),
                std::io::ErrorKind::PermissionDenied => {
                    "is not readable (permission denied)".to_owned()
                }
                kind => format!("cannot be read ({kind})"),
            };
            ConfigError(format!("config file {}: {reason}", path.display()))
        })?;
        Self::from_toml_with_env(&text, env)
            .map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))
    }

    /// Parses TOML text plus overrides. Used by tests and `dev`.
    pub fn from_toml_with_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let overrides: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("BROKER__"))
            .collect();
        let env_source = config::Environment::with_prefix("BROKER")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("server.trusted_proxies")
            .with_list_parse_key("cors.allowed_origins")
            .source(Some(overrides));
        let raw = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .add_source(env_source)
            .build()
            .map_err(|e| ConfigError(clean_config_error(&e)))?;
        let settings: Settings = raw
            .try_deserialize()
            .map_err(|e| ConfigError(clean_config_error(&e)))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks every rule that types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        if s.max_body_bytes == 0 || s.max_body_bytes > 1024 * 1024 {
            return Err(ConfigError::key(
                "server.max_body_bytes",
                "must be between 1 and 1048576",
            ));
        }
        if s.shutdown_grace_secs == 0 || s.shutdown_grace_secs > 600 {
            return Err(ConfigError::key(
                "server.shutdown_grace_secs",
                "must be between 1 and 600",
            ));
        }
        if s.drain_delay_secs >= s.shutdown_grace_secs {
            return Err(ConfigError::key(
                "server.drain_delay_secs",
                "must be shorter than server.shutdown_grace_secs, or in-flight requests get no time to finish",
            ));
        }
        in_range("server.secret_poll_secs", s.secret_poll_secs, 1, 300)?;
        in_range("server.workers", s.workers, 0, 256)?;
        in_range(
            "server.request_timeout_ms",
            s.request_timeout_ms,
            100,
            60_000,
        )?;
        in_range("server.keep_alive_secs", s.keep_alive_secs, 0, 300)?;
        if s.admin_listen
            .is_some_and(|a| a == s.listen && a.port() != 0)
        {
            return Err(ConfigError::key(
                "server.admin_listen",
                "must differ from server.listen: metrics never share the public listener",
            ));
        }

        let i = &self.intellia;
        validate_http_url("intellia.base_url", &i.base_url)?;
        if reqwest::Url::parse(&i.base_url)
            .is_ok_and(|url| url.query().is_some() || url.fragment().is_some())
        {
            // `/orgs/{id}/assume-role` is appended to the text, so it would land in the query or
            // fragment and the mint would go to the base URL itself.
            return Err(ConfigError::key(
                "intellia.base_url",
                "must not have a query (`?`) or fragment (`#`)",
            ));
        }
        if i.organization_id.trim().is_empty() {
            return Err(ConfigError::key(
                "intellia.organization_id",
                "must not be empty",
            ));
        }
        if i.organization_id.len() > 128
            || !i
                .organization_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(ConfigError::key(
                "intellia.organization_id",
                "must be 1-128 characters of letters, digits, '-', '_' or '.'",
            ));
        }
        match (&i.api_key_file, &i.api_key_env) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::key(
                    "intellia.api_key_file",
                    "set either api_key_file or api_key_env, not both",
                ));
            }
            (None, None) => {
                return Err(ConfigError::key(
                    "intellia.api_key_file",
                    "missing: set api_key_file (preferred) or api_key_env",
                ));
            }
            (None, Some(name)) if name.trim().is_empty() => {
                return Err(ConfigError::key(
                    "intellia.api_key_env",
                    "must name a variable",
                ));
            }
            _ => {}
        }
        in_range("intellia.timeout_ms", i.timeout_ms, 1, 120_000)?;
        in_range("intellia.max_retries", i.max_retries, 0, 10)?;

        for (n, origin) in self.cors.allowed_origins.iter().enumerate() {
            crate::cors::OriginPattern::parse(origin).map_err(|problem| {
                ConfigError::key(&format!("cors.allowed_origins[{n}]"), problem)
            })?;
        }
        in_range("cors.max_age_secs", self.cors.max_age_secs, 0, 86_400)?;

        let mut issuers = std::collections::HashSet::new();
        for (n, jwt) in self.session.jwt.iter().enumerate() {
            jwt.validate(&format!("session.jwt[{n}]"))?;
            if !issuers.insert(jwt.issuer.as_str()) {
                return Err(ConfigError::key(
                    &format!("session.jwt[{n}].issuer"),
                    "the same issuer is configured twice",
                ));
            }
        }
        if let Some(intro) = &self.session.introspection {
            validate_http_url("session.introspection.url", &intro.url)?;
            if intro.client_id.is_empty() {
                return Err(ConfigError::key(
                    "session.introspection.client_id",
                    "must not be empty",
                ));
            }
            in_range(
                "session.introspection.cache_ttl_secs",
                intro.cache_ttl_secs,
                1,
                3600,
            )?;
            in_range(
                "session.introspection.negative_cache_secs",
                intro.negative_cache_secs,
                0,
                300,
            )?;
            in_range(
                "session.introspection.leeway_secs",
                intro.leeway_secs,
                0,
                300,
            )?;
            validate_claim_names(
                "session.introspection",
                [&intro.user_id_claim, &intro.email_claim, &intro.name_claim],
                &intro.user_id_prefix,
                &intro.required_claims,
            )?;
        }

        for (name, limit) in [
            ("rate_limit.per_user", self.rate_limit.per_user),
            ("rate_limit.per_ip", self.rate_limit.per_ip),
        ] {
            if let Some(l) = limit {
                if l.per_minute == 0 {
                    return Err(ConfigError::key(
                        &format!("{name}.per_minute"),
                        "must be at least 1",
                    ));
                }
                if l.burst == 0 {
                    return Err(ConfigError::key(
                        &format!("{name}.burst"),
                        "must be at least 1",
                    ));
                }
            }
        }
        if let Some(l) = self.rate_limit.upstream {
            if l.per_second == 0 {
                return Err(ConfigError::key(
                    "rate_limit.upstream.per_second",
                    "must be at least 1",
                ));
            }
            if l.burst == 0 {
                return Err(ConfigError::key(
                    "rate_limit.upstream.burst",
                    "must be at least 1",
                ));
            }
        }

        // Intellia tokens live two hours; asking for more than that left would never hit the cache.
        if self.cache.min_remaining_secs >= 7200 {
            return Err(ConfigError::key(
                "cache.min_remaining_secs",
                "must be below 7200 (Intellia tokens live two hours)",
            ));
        }
        if self.cache.max_entries == 0 {
            return Err(ConfigError::key("cache.max_entries", "must be at least 1"));
        }

        if let Some(redis) = &self.redis {
            if redis.url.starts_with("rediss://") {
                // The Redis client is built without TLS (it would bring a second TLS stack);
                // refusing here beats a broker that starts and then never reaches Redis.
                return Err(ConfigError::key(
                    "redis.url",
                    "rediss:// (TLS) is not supported; use redis:// inside the cluster network, or a TLS sidecar",
                ));
            }
            if !redis.url.starts_with("redis://") {
                return Err(ConfigError::key("redis.url", "must start with redis://"));
            }
            // The URL may hold a password, so neither it nor the parser's message is quoted.
            if reqwest::Url::parse(&redis.url).map_or(true, |url| url.host_str().is_none()) {
                return Err(ConfigError::key(
                    "redis.url",
                    "is not a valid URL (redis://[user:password@]host[:port][/db])",
                ));
            }
            in_range("redis.timeout_ms", redis.timeout_ms, 1, 5000)?;
            in_range("redis.replicas", redis.replicas, 1, 1000)?;
            if redis.key_prefix.is_empty()
                || redis.key_prefix.len() > 32
                || !redis
                    .key_prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
            {
                return Err(ConfigError::key(
                    "redis.key_prefix",
                    "must be 1-32 characters of letters, digits, '-', '_', '.' or ':'",
                ));
            }
        }
        Ok(())
    }

    /// The configuration as TOML with every secret-bearing value redacted, for `check-config`.
    pub fn redacted_toml(&self) -> String {
        let mut copy = self.clone();
        if let Some(redis) = copy.redis.as_mut() {
            redis.url = redact_url_password(&redis.url);
        }
        toml::to_string(&copy).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

impl IntelliaSettings {
    /// The bound on one mint, retries included.
    pub fn deadline(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.deadline_ms.unwrap_or(self.timeout_ms * 2))
    }
}

impl JwtIssuerSettings {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        if self.issuer.trim().is_empty() {
            return Err(ConfigError::key(
                &format!("{at}.issuer"),
                "must not be empty",
            ));
        }
        if self.audience.trim().is_empty() {
            return Err(ConfigError::key(
                &format!("{at}.audience"),
                "must not be empty",
            ));
        }
        let sources = usize::from(self.jwks_url.is_some())
            + usize::from(self.discovery)
            + usize::from(self.hs256_secret_file.is_some());
        if sources != 1 {
            return Err(ConfigError::key(
                &format!("{at}.jwks_url"),
                "set exactly one of jwks_url, discovery = true, or hs256_secret_file",
            ));
        }
        if let Some(url) = &self.jwks_url {
            validate_http_url(&format!("{at}.jwks_url"), url)?;
        }
        if self.discovery {
            validate_http_url(&format!("{at}.issuer"), &self.issuer)?;
        }
        if self.algorithms.is_empty() {
            return Err(ConfigError::key(
                &format!("{at}.algorithms"),
                "list at least one algorithm, e.g. [\"RS256\"]",
            ));
        }
        for alg in &self.algorithms {
            let symmetric = alg == "HS256";
            let asymmetric = ASYMMETRIC_ALGORITHMS.contains(&alg.as_str());
            if !symmetric && !asymmetric {
                return Err(ConfigError::key(
                    &format!("{at}.algorithms"),
                    format!(
                        "`{alg}` is not accepted; use HS256 or one of {ASYMMETRIC_ALGORITHMS:?}"
                    ),
                ));
            }
            // Mixing families per issuer is how algorithm confusion happens: a public key used as
            // an HMAC secret. A key source decides the family, and the list must agree.
            if symmetric != self.hs256_secret_file.is_some() {
                return Err(ConfigError::key(
                    &format!("{at}.algorithms"),
                    format!(
                        "`{alg}` does not fit the key source: HS256 needs hs256_secret_file, asymmetric algorithms need jwks_url or discovery"
                    ),
                ));
            }
        }
        if let Some(cookie) = &self.cookie
            && (cookie.is_empty()
                || !cookie
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
        {
            return Err(ConfigError::key(
                &format!("{at}.cookie"),
                "must be a plain cookie name (letters, digits, '-', '_', '.')",
            ));
        }
        validate_claim_names(
            at,
            [&self.user_id_claim, &self.email_claim, &self.name_claim],
            &self.user_id_prefix,
            &self.required_claims,
        )?;
        if self.userinfo && self.userinfo_url.is_none() && !self.discovery {
            return Err(ConfigError::key(
                &format!("{at}.userinfo"),
                "needs discovery = true or a userinfo_url",
            ));
        }
        if let Some(url) = &self.userinfo_url {
            validate_http_url(&format!("{at}.userinfo_url"), url)?;
        }
        if self.leeway_secs > 300 {
            return Err(ConfigError::key(
                &format!("{at}.leeway_secs"),
                "must be at most 300",
            ));
        }
        Ok(())
    }
}

/// `value` must lie in `min..=max`; the error names the key and the range.
fn in_range<T>(key: &str, value: T, min: T, max: T) -> Result<(), ConfigError>
where
    T: PartialOrd + std::fmt::Display + Default + Copy,
{
    if (min..=max).contains(&value) {
        return Ok(());
    }
    Err(ConfigError::key(
        key,
        if min == T::default() {
            format!("must be at most {max}")
        } else {
            format!("must be between {min} and {max}")
        },
    ))
}

fn validate_claim_names(
    at: &str,
    names: [&String; 3],
    prefix: &str,
    required: &[String],
) -> Result<(), ConfigError> {
    for (key, value) in ["user_id_claim", "email_claim", "name_claim"]
        .iter()
        .zip(names)
    {
        if value.is_empty() {
            return Err(ConfigError::key(
                &format!("{at}.{key}"),
                "must not be empty",
            ));
        }
    }
    if prefix.len() > 64 || prefix.chars().any(char::is_control) {
        return Err(ConfigError::key(
            &format!("{at}.user_id_prefix"),
            "must be at most 64 printable characters",
        ));
    }
    for (n, condition) in required.iter().enumerate() {
        if !condition
            .split_once('=')
            .is_some_and(|(claim, value)| !claim.is_empty() && !value.is_empty())
        {
            return Err(ConfigError::key(
                &format!("{at}.required_claims[{n}]"),
                "must look like `claim=value`, e.g. `groups=chat-users`",
            ));
        }
    }
    Ok(())
}

fn validate_http_url(key: &str, value: &str) -> Result<(), ConfigError> {
    let url = reqwest::Url::parse(value)
        .map_err(|e| ConfigError::key(key, format!("not a valid URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ConfigError::key(
            key,
            "must be an http:// or https:// URL with a host",
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError::key(
            key,
            "must not carry credentials; use the secret files instead",
        ));
    }
    Ok(())
}

fn redact_url_password(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            // set_password only fails for URLs that cannot have one, which this one does.
            let _ = parsed.set_password(Some("REDACTED"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "REDACTED".to_owned(),
    }
}

/// The `config` crate phrases errors for developers ("... for key `x` in ..."); keep the useful part
/// on one line.
fn clean_config_error(e: &config::ConfigError) -> String {
    let text = one_line(&e.to_string().replace('\n', " "));
    if let Some(rest) = text.strip_prefix("unknown field ") {
        return format!("unknown config key {rest}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[server]
listen = "127.0.0.1:0"
[intellia]
organization_id = "org-456"
api_key_file = "/tmp/key"
"#;

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        Settings::from_toml_with_env(text, Vec::<(String, String)>::new())
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let s = parse(MINIMAL).expect("minimal config parses");
        assert_eq!(s.server.max_body_bytes, 4096);
        assert_eq!(s.server.shutdown_grace_secs, 20);
        assert_eq!(s.intellia.timeout_ms, 5000);
        assert_eq!(s.intellia.max_retries, 2);
        assert_eq!(s.intellia.base_url, "https://api.intellia.com.au");
        assert!(s.cache.enabled);
        assert_eq!(s.cache.min_remaining_secs, 900);
        assert!(s.rate_limit.per_user.is_none());
    }

    #[test]
    fn unknown_key_is_named() {
        let err =
            parse(&format!("{MINIMAL}\n[cache]\nenabeld = true\n")).expect_err("typo rejected");
        assert!(err.0.contains("enabeld"), "{}", err.0);
        assert!(!err.0.contains('\n'));
    }

    #[test]
    fn env_overrides_win_and_unknown_env_keys_fail() {
        let env = vec![(
            "BROKER__INTELLIA__ORGANIZATION_ID".to_owned(),
            "org-999".to_owned(),
        )];
        let s = Settings::from_toml_with_env(MINIMAL, env).expect("override applies");
        assert_eq!(s.intellia.organization_id, "org-999");

        let env = vec![(
            "BROKER__INTELLIA__ORGANISATION_ID".to_owned(),
            "x".to_owned(),
        )];
        let err = Settings::from_toml_with_env(MINIMAL, env).expect_err("typo in env rejected");
        assert!(err.0.contains("organisation_id"), "{}", err.0);
    }

    #[test]
    fn env_lists_split_on_commas() {
        let env = vec![(
            "BROKER__CORS__ALLOWED_ORIGINS".to_owned(),
            "https://a.example.com,https://b.example.com".to_owned(),
        )];
        let s = Settings::from_toml_with_env(MINIMAL, env).expect("list override");
        assert_eq!(s.cors.allowed_origins.len(), 2);
    }

    #[test]
    fn hs256_with_jwks_is_rejected_as_confusable() {
        let text = format!(
            "{MINIMAL}\n[[session.jwt]]\nissuer = \"https://auth.example.com\"\naudience = \"w\"\njwks_url = \"https://auth.example.com/keys\"\nalgorithms = [\"RS256\", \"HS256\"]\n"
        );
        let err = parse(&text).expect_err("mixed families rejected");
        assert!(err.0.contains("session.jwt[0].algorithms"), "{}", err.0);
    }

    #[test]
    fn none_algorithm_is_never_accepted() {
        let text = format!(
            "{MINIMAL}\n[[session.jwt]]\nissuer = \"https://auth.example.com\"\naudience = \"w\"\njwks_url = \"https://auth.example.com/keys\"\nalgorithms = [\"none\"]\n"
        );
        assert!(parse(&text).is_err());
    }

    #[test]
    fn errors_stay_on_one_line_whatever_the_value_holds() {
        // Found by the fuzz seed `fuzz/seeds/config/reject-alg-with-newline`.
        let text = format!(
            "{MINIMAL}\n[[session.jwt]]\nissuer = \"https://auth.example.com\"\naudience = \"w\"\njwks_url = \"https://auth.example.com/keys\"\nalgorithms = [\"RS256\\nforged log line\\r\\u0007\"]\n"
        );
        let err = parse(&text).expect_err("unknown algorithm rejected");
        assert!(!err.0.contains(['\n', '\r', '\u{7}']), "{:?}", err.0);
        assert!(err.0.contains("RS256\\nforged log line"), "{}", err.0);

        let err = parse(&format!("{MINIMAL}\n[cache]\n\"a\\rb\" = 1\n")).expect_err("unknown key");
        assert!(!err.0.contains('\r'), "{:?}", err.0);
    }

    #[test]
    fn rediss_is_refused_at_start_up_not_at_first_use() {
        let text = format!("{MINIMAL}\n[redis]\nurl = \"rediss://:pw@redis.internal:6380\"\n");
        let err = parse(&text).expect_err("TLS Redis is not built in");
        assert!(
            err.0.contains("redis.url") && err.0.contains("not supported"),
            "{}",
            err.0
        );
        assert!(!err.0.contains("pw"), "{}", err.0);
    }

    #[test]
    fn intellia_base_url_with_query_or_fragment_is_refused() {
        // Found by the `config` fuzz target's rule that the mint URL ends in
        // `/orgs/{org}/assume-role`: these were accepted and minted at `https://api.example.com/`.
        for base in [
            "https://api.example.com/?x=",
            "https://api.example.com#frag",
            "https://api.example.com/?",
        ] {
            let text = MINIMAL.replace("[intellia]", &format!("[intellia]\nbase_url = \"{base}\""));
            let err = parse(&text).expect_err(base);
            assert!(err.0.contains("intellia.base_url"), "{}", err.0);
        }
        let text = MINIMAL.replace(
            "[intellia]",
            "[intellia]\nbase_url = \"https://api.example.com/intellia/\"",
        );
        let s = parse(&text).expect("a path prefix is fine");
        assert_eq!(
            crate::intellia::client::assume_role_url(&s.intellia)
                .unwrap()
                .as_str(),
            "https://api.example.com/intellia/orgs/org-456/assume-role"
        );
    }

    #[test]
    fn redis_url_that_start_up_cannot_parse_is_refused_without_quoting_it() {
        // Found by the `config` fuzz target: validation only checked the scheme, so `check-config`
        // passed and printed `url = "REDACTED"`, a configuration that does not load.
        let text = format!("{MINIMAL}\n[redis]\nurl = \"redis://:hunter2@redis:6379[x]/0\"\n");
        let err = parse(&text).expect_err("unparseable URL");
        assert!(err.0.contains("redis.url"), "{}", err.0);
        assert!(!err.0.contains("hunter2"), "{}", err.0);
        let ok = format!("{MINIMAL}\n[redis]\nurl = \"redis://:p%40ss@redis:6379/0\"\n");
        let shown = parse(&ok).expect("valid URL").redacted_toml();
        parse(&shown).expect("check-config's output loads");
    }

    #[test]
    fn both_key_sources_rejected() {
        let text = MINIMAL.replace(
            "api_key_file = \"/tmp/key\"",
            "api_key_file = \"/tmp/key\"\napi_key_env = \"K\"",
        );
        let err = parse(&text).expect_err("ambiguous key source");
        assert!(err.0.contains("intellia.api_key_file"));
    }

    #[test]
    fn shipped_configs_are_valid() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut files = vec![root.join("default.toml")];
        for entry in std::fs::read_dir(root.join("examples")).unwrap() {
            files.push(entry.unwrap().path());
        }
        assert!(files.len() >= 4);
        for file in files {
            Settings::load_with_env(&file, Vec::<(String, String)>::new())
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        }
    }

    #[test]
    fn redacted_toml_hides_redis_password() {
        assert_eq!(
            redact_url_password("redis://user:hunter2@redis:6379/0"),
            "redis://user:REDACTED@redis:6379/0"
        );
    }
}
