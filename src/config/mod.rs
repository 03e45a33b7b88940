//! Configuration: one TOML (or JSON) file plus `BROKER__SECTION__KEY` environment overrides, parsed
//! once into typed values (see [`values`]) before anything starts. Every failure is one line naming
//! the key.
//!
//! A rule that spans several keys belongs to the conversion of the section holding them (a
//! `TryFrom<Raw…>`, reporting through `field_error`), not to a pass after loading: a section
//! deserialized on its own, as the test kit does, is held to it too.

mod endpoint;
mod json_keys;
pub(crate) mod redis;
mod server;
mod session;
mod session_rules;
pub(crate) mod values;
mod warnings;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub(crate) use endpoint::{EndpointSettings, JsonPointer};
pub(crate) use redis::{RedisFallback, RedisSettings};
pub(crate) use server::{ClientIpHeader, ServerSettings};
pub(crate) use session::{
    ClaimRules, IntrospectionAuth, IntrospectionSettings, JwtIssuerSettings, KeySource, RoleRule,
    SessionSettings, UserinfoSource,
};
pub(crate) use values::{
    BaseUrl, Bounded, HttpUrl, JwtAlgorithm, OrganizationId, OriginPattern, Ratio, RequiredClaim,
    ServiceName,
};

/// A configuration problem, phrased for the operator: it always names the key or path at fault.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

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
#[serde(try_from = "RawSettings", into = "RawSettings")]
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
    #[serde(default)]
    pub telemetry: TelemetrySettings,
}

/// The file as written; [`Settings`] is it with the rules that span sections checked.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    server: ServerSettings,
    intellia: IntelliaSettings,
    #[serde(default)]
    cors: CorsSettings,
    #[serde(default)]
    session: SessionSettings,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    backend: Option<BackendSettings>,
    #[serde(default)]
    rate_limit: RateLimitSettings,
    #[serde(default)]
    cache: CacheSettings,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    redis: Option<RedisSettings>,
    #[serde(default)]
    telemetry: TelemetrySettings,
}

impl TryFrom<RawSettings> for Settings {
    type Error = String;
    fn try_from(raw: RawSettings) -> Result<Self, String> {
        let RawSettings {
            server,
            intellia,
            cors,
            session,
            backend,
            rate_limit,
            cache,
            redis,
            telemetry,
        } = raw;
        if let Some(backend) = &backend {
            // Port 0 asks for any free port, so two zeros still get two listeners.
            let taken = |addr: std::net::SocketAddr| addr == backend.listen && addr.port() != 0;
            if taken(server.listen) || server.admin_listen.is_some_and(taken) {
                return Err(field_error(
                    "backend.listen",
                    "must differ from server.listen and server.admin_listen: the sidecar route never shares a listener with public or metrics routes",
                ));
            }
        }
        Ok(Settings {
            server,
            intellia,
            cors,
            session,
            backend,
            rate_limit,
            cache,
            redis,
            telemetry,
        })
    }
}

impl From<Settings> for RawSettings {
    fn from(s: Settings) -> RawSettings {
        let Settings {
            server,
            intellia,
            cors,
            session,
            backend,
            rate_limit,
            cache,
            redis,
            telemetry,
        } = s;
        RawSettings {
            server,
            intellia,
            cors,
            session,
            backend,
            rate_limit,
            cache,
            redis,
            telemetry,
        }
    }
}

/// OpenTelemetry traces. The standard `OTEL_*` variables take precedence; without an
/// endpoint from either, traces are off and cost nothing.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// The collector: for OTLP/HTTP its base URL (`/v1/traces` is appended), e.g.
    /// `http://otel-collector:4318`; for OTLP/gRPC its endpoint, as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<HttpUrl>,
    #[serde(default = "default_service_name")]
    pub service_name: ServiceName,
    /// Share of traces recorded, by trace id; a caller's sampled flag is not followed.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: Ratio,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            otlp_endpoint: None,
            service_name: default_service_name(),
            sample_ratio: default_sample_ratio(),
        }
    }
}

/// Where the Intellia API key is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKeySource {
    File(PathBuf),
    Env(String),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(try_from = "RawIntellia", into = "RawIntellia")]
pub struct IntelliaSettings {
    pub base_url: BaseUrl,
    pub organization_id: OrganizationId,
    pub api_key: ApiKeySource,
    pub timeout_ms: Bounded<u64, 1, 120_000>,
    pub max_retries: Bounded<u32, 0, 10>,
    /// Bound on one mint, retries and their waits included; default twice `timeout_ms`.
    pub deadline_ms: Option<Bounded<u64, 1, 600_000>>,
    /// Consecutive failed mints (after retries) that open the circuit breaker.
    pub breaker_failures: Bounded<u32, 1, 1000>,
    /// How long the open breaker answers 503 at once before letting one probe through.
    pub breaker_open_secs: Bounded<u64, 1, 3600>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawIntellia {
    #[serde(default = "default_base_url")]
    base_url: BaseUrl,
    organization_id: OrganizationId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    api_key_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    api_key_env: Option<String>,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: Bounded<u64, 1, 120_000>,
    #[serde(default = "default_max_retries")]
    max_retries: Bounded<u32, 0, 10>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deadline_ms: Option<Bounded<u64, 1, 600_000>>,
    #[serde(default = "default_breaker_failures")]
    breaker_failures: Bounded<u32, 1, 1000>,
    #[serde(default = "default_breaker_open_secs")]
    breaker_open_secs: Bounded<u64, 1, 3600>,
}

/// A struct-level problem names its field this way; [`clean_config_error`] appends it to the key
/// path the `config` crate reports for the struct.
pub(crate) fn field_error(field: &str, problem: impl std::fmt::Display) -> String {
    format!("@{field}: {problem}")
}

impl TryFrom<RawIntellia> for IntelliaSettings {
    type Error = String;
    fn try_from(raw: RawIntellia) -> Result<Self, String> {
        let api_key = match (raw.api_key_file, raw.api_key_env) {
            (Some(_), Some(_)) => {
                return Err(field_error(
                    "api_key_file",
                    "set either api_key_file or api_key_env, not both",
                ));
            }
            (None, None) => {
                return Err(field_error(
                    "api_key_file",
                    "missing: set api_key_file (preferred) or api_key_env",
                ));
            }
            (None, Some(name)) if name.trim().is_empty() => {
                return Err(field_error("api_key_env", "must name a variable"));
            }
            (Some(path), None) => ApiKeySource::File(path),
            (None, Some(name)) => ApiKeySource::Env(name),
        };
        Ok(IntelliaSettings {
            base_url: raw.base_url,
            organization_id: raw.organization_id,
            api_key,
            timeout_ms: raw.timeout_ms,
            max_retries: raw.max_retries,
            deadline_ms: raw.deadline_ms,
            breaker_failures: raw.breaker_failures,
            breaker_open_secs: raw.breaker_open_secs,
        })
    }
}

impl From<IntelliaSettings> for RawIntellia {
    fn from(s: IntelliaSettings) -> RawIntellia {
        let (api_key_file, api_key_env) = match s.api_key {
            ApiKeySource::File(path) => (Some(path), None),
            ApiKeySource::Env(name) => (None, Some(name)),
        };
        RawIntellia {
            base_url: s.base_url,
            organization_id: s.organization_id,
            api_key_file,
            api_key_env,
            timeout_ms: s.timeout_ms,
            max_retries: s.max_retries,
            deadline_ms: s.deadline_ms,
            breaker_failures: s.breaker_failures,
            breaker_open_secs: s.breaker_open_secs,
        }
    }
}

impl IntelliaSettings {
    /// The bound on one mint, retries included.
    pub fn deadline(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.deadline_ms
                .map_or(self.timeout_ms.get() * 2, Bounded::get),
        )
    }

    /// `{base_url}/orgs/{organization_id}/assume-role`. A path prefix of the base URL is kept.
    pub fn assume_role_url(&self) -> reqwest::Url {
        let mut url = self.base_url.url().clone();
        let path = format!(
            "{}/orgs/{}/assume-role",
            url.path().trim_end_matches('/'),
            self.organization_id.as_str()
        );
        url.set_path(&path);
        url
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CorsSettings {
    #[serde(default)]
    pub allowed_origins: Vec<OriginPattern>,
    #[serde(default = "default_cors_max_age")]
    pub max_age_secs: Bounded<u64, 0, 86_400>,
}

impl Default for CorsSettings {
    fn default() -> Self {
        CorsSettings {
            allowed_origins: Vec::new(),
            max_age_secs: default_cors_max_age(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSettings {
    /// The sidecar route's own listener: `POST /v1/backend/token` is served here and nowhere
    /// else, so no ingress in front of the public listener can ever expose it.
    #[serde(default = "default_backend_listen")]
    pub listen: std::net::SocketAddr,
    pub secret_file: PathBuf,
    /// Wrong backend secrets a client address may present per minute (the burst as well);
    /// past it every wrong one from that address gets 429 until the bucket refills. The right
    /// secret is compared first and never refused.
    #[serde(default = "default_backend_failures")]
    pub max_failures_per_minute: Bounded<u32, 1, 10_000>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_user: Option<PerMinuteLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_ip: Option<PerIpLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<PerSecondLimit>,
}

impl RateLimitSettings {
    /// The prefix length IPv6 clients are keyed by, in every per-address limit (the per-IP
    /// limit and the backend route's failures): as configured, else the default.
    pub fn ipv6_prefix(&self) -> u8 {
        self.per_ip
            .map_or_else(default_ipv6_prefix, |p| p.ipv6_prefix)
            .get()
    }
}

/// Up to `u32::MAX`, the range of a GCRA quota.
pub type Count = Bounded<u32, 1, { u32::MAX as u64 }>;

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PerMinuteLimit {
    pub per_minute: Count,
    pub burst: Count,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PerIpLimit {
    pub per_minute: Count,
    pub burst: Count,
    /// IPv6 clients are limited per prefix of this length: one subscriber holds at least a /64,
    /// so a per-address limit would be no limit.
    #[serde(default = "default_ipv6_prefix")]
    pub ipv6_prefix: Bounded<u8, 32, 128>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PerSecondLimit {
    pub per_second: Count,
    pub burst: Count,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Below 7200: Intellia tokens live two hours, so asking for more would never hit the cache.
    #[serde(default = "default_min_remaining_secs")]
    pub min_remaining_secs: Bounded<u64, 0, 7199>,
    #[serde(default = "default_cache_max_entries")]
    pub max_entries: Bounded<u64, 1, 100_000_000>,
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

// Parsing a URL or a name cannot run at compile time, so these literals are checked by the test
// `literal_defaults_parse` instead: with it passing, the `unreachable!` arms are never taken.
fn default_base_url() -> BaseUrl {
    BaseUrl::try_from("https://api.intellia.com.au".to_owned())
        .unwrap_or_else(|_| unreachable!("the default base URL parses"))
}
fn default_timeout_ms() -> Bounded<u64, 1, 120_000> {
    Bounded::new::<5000>()
}
fn default_max_retries() -> Bounded<u32, 0, 10> {
    Bounded::new::<2>()
}
fn default_breaker_failures() -> Bounded<u32, 1, 1000> {
    Bounded::new::<5>()
}
fn default_breaker_open_secs() -> Bounded<u64, 1, 3600> {
    Bounded::new::<10>()
}
fn default_ipv6_prefix() -> Bounded<u8, 32, 128> {
    Bounded::new::<64>()
}
fn default_backend_listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 8081))
}
fn default_backend_failures() -> Bounded<u32, 1, 10_000> {
    Bounded::new::<10>()
}
fn default_cors_max_age() -> Bounded<u64, 0, 86_400> {
    Bounded::new::<600>()
}
// Checked by `literal_defaults_parse`, as `default_base_url` is.
fn default_service_name() -> ServiceName {
    ServiceName::try_from("intellia-token-broker".to_owned())
        .unwrap_or_else(|_| unreachable!("a valid service name"))
}
fn default_sample_ratio() -> Ratio {
    Ratio::ONE
}
fn default_true() -> bool {
    true
}
fn default_min_remaining_secs() -> Bounded<u64, 0, 7199> {
    Bounded::new::<900>()
}
fn default_cache_max_entries() -> Bounded<u64, 1, 100_000_000> {
    Bounded::new::<100_000>()
}

/// The syntax of a configuration file. TOML is the documented format; JSON is what generators
/// write best (the Helm chart renders `config.json` with `toPrettyJson`: Helm's TOML writer prints
/// every number as a float, which integer keys refuse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigFormat {
    Toml,
    Json,
}

impl ConfigFormat {
    /// By the file's extension: `.json` is JSON, anything else TOML, so every path that worked
    /// before still reads as it did.
    pub fn of_path(path: &Path) -> ConfigFormat {
        match path.extension() {
            Some(ext) if ext.eq_ignore_ascii_case("json") => ConfigFormat::Json,
            _ => ConfigFormat::Toml,
        }
    }

    fn file_format(self) -> config::FileFormat {
        match self {
            ConfigFormat::Toml => config::FileFormat::Toml,
            ConfigFormat::Json => config::FileFormat::Json,
        }
    }
}

/// Where the configuration file is: `--config`, else `BROKER_CONFIG`, else `config/default.toml`.
pub(crate) fn resolve_config_path(explicit: Option<&Path>) -> PathBuf {
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
        // A problem in a `BROKER__…` value names the variable, not the file it never was in.
        Self::parse(&text, ConfigFormat::of_path(path), env).map_err(|e| match e {
            Blame::File(msg) => ConfigError(format!("{}: {msg}", path.display())),
            Blame::Env(msg) => ConfigError(msg),
        })
    }

    /// Parses TOML text plus overrides. Used by tests and `dev`.
    pub fn from_toml_with_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        Self::from_text_with_env(text, ConfigFormat::Toml, env)
    }

    /// Parses TOML or JSON text plus overrides: the same keys, types and checks either way.
    pub fn from_text_with_env(
        text: &str,
        format: ConfigFormat,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        Self::parse(text, format, env).map_err(|e| match e {
            Blame::File(msg) | Blame::Env(msg) => ConfigError(msg),
        })
    }

    fn parse(
        text: &str,
        format: ConfigFormat,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, Blame> {
        if format == ConfigFormat::Json
            && let Some(problem) = json_keys::first_duplicate(text)
        {
            return Err(Blame::File(problem));
        }
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
            .source(Some(overrides.clone()));
        let blame = |e: config::ConfigError| blame(clean_config_error(&e), &overrides);
        let raw = config::Config::builder()
            .add_source(config::File::from_str(text, format.file_format()))
            .add_source(env_source)
            .build()
            .map_err(blame)?;
        raw.try_deserialize().map_err(blame)
    }

    /// The configuration as TOML with every secret-bearing value redacted, for `check-config`.
    pub fn redacted_toml(&self) -> String {
        let mut value = match toml::Value::try_from(self) {
            Ok(v) => v,
            Err(e) => return format!("# cannot render: {e}\n"),
        };
        if let (Some(redis), Some(table)) = (
            &self.redis,
            value.get_mut("redis").and_then(toml::Value::as_table_mut),
        ) {
            table.insert("url".to_owned(), toml::Value::String(redis.url.redacted()));
        }
        toml::to_string(&value).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// Where a configuration problem is: in the file, or in a `BROKER__…` environment variable.
enum Blame {
    File(String),
    Env(String),
}

/// Puts the problem on the environment variable that set the key at fault, when one did:
/// "environment variable BROKER__SERVER__MAX_BODY_BYTES (config key `server.max_body_bytes`): …".
/// A variable names a key as `BROKER__` + its path in upper case with `__` for `.`; a list
/// variable covers the key's elements too (`cors.allowed_origins[1]`). A problem across keys
/// (a struct-level rule) stays on the file.
fn blame(message: String, overrides: &config::Map<String, String>) -> Blame {
    let variables = overrides.keys().map(|var| {
        let key = var
            .trim_start_matches("BROKER__")
            .to_ascii_lowercase()
            .replace("__", ".");
        (var, key)
    });
    if let Some(rest) = message.strip_prefix("config key `")
        && let Some((path, problem)) = rest.split_once("`: ")
    {
        let covers = |key: &str| {
            path == key
                || path
                    .strip_prefix(key)
                    .is_some_and(|tail| tail.starts_with(['[', '.']))
        };
        for (var, key) in variables {
            if covers(&key) {
                return Blame::Env(format!(
                    "environment variable {var} (config key `{path}`): {problem}"
                ));
            }
        }
    } else if let Some(rest) = message.strip_prefix("unknown config key `")
        && let Some((field, _)) = rest.split_once('`')
    {
        for (var, key) in variables {
            if key.rsplit('.').next() == Some(field) {
                return Blame::Env(format!("environment variable {var}: {message}"));
            }
        }
    }
    Blame::File(message)
}

/// The `config` crate phrases errors for developers ("`x` is wrong for key `a.b[0]c`"); keep the
/// useful part on one line, with the key first, as every other configuration error reads.
fn clean_config_error(e: &config::ConfigError) -> String {
    let raw = e.to_string();
    // A value error may quote the operator's value, whose line breaks are escaped to stay
    // visible; a TOML syntax error spreads its context over lines, which read well joined.
    let text = if raw.contains(" for key `") {
        one_line(&raw)
    } else {
        one_line(&raw.replace('\n', " "))
    };
    if let Some(rest) = text.strip_prefix("unknown field ") {
        return format!("unknown config key {rest}");
    }
    let Some((problem, key)) = text
        .rsplit_once(" for key `")
        .and_then(|(p, k)| Some((p, k.strip_suffix('`')?)))
    else {
        // A rule spanning sections names its key in full; the crate adds no path to it.
        return match text
            .strip_prefix('@')
            .and_then(|rest| rest.split_once(": "))
        {
            Some((field, problem)) => format!("config key `{field}`: {problem}"),
            None => text,
        };
    };
    // `session.jwt[1]algorithms[0]` → `session.jwt[1].algorithms[0]`
    let mut path = String::with_capacity(key.len() + 4);
    let mut after_index = false;
    for c in key.chars() {
        if after_index && c != '[' && c != '.' {
            path.push('.');
        }
        after_index = c == ']';
        path.push(c);
    }
    let path = path.trim_start_matches('.');
    match problem
        .strip_prefix('@')
        .and_then(|rest| rest.split_once(": "))
    {
        Some((field, problem)) => format!("config key `{path}.{field}`: {problem}"),
        None => format!("config key `{path}`: {problem}"),
    }
}

#[cfg(test)]
mod endpoint_tests;
#[cfg(test)]
mod session_tests;
#[cfg(test)]
mod tests;
