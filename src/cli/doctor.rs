//! `doctor`: checks every live dependency the configuration names and prints one
//! line per dependency, `ok` or `FAIL` with the cause: DNS, connect, TLS, HTTP status, issuer
//! mismatch, no usable key, credentials refused. Exit 0 only when every check passes.
//!
//! - every `[[session.jwt]]` issuer: discovery (its `issuer` must match) and the JWKS, which must
//!   hold at least one key the verifier can use; an HS256 issuer has nothing to fetch;
//! - introspection: a token that cannot exist is introspected with our credentials; the provider
//!   must answer 200 `{"active":false}` (401/403: it refuses our credentials);
//! - every `[[session.endpoint]]`: reachable, and a request without a session is answered as
//!   signed out (401, 403, a redirect, or a 200 naming nobody); a 200 naming a user would let
//!   anybody in, and anything else would be a 503 for every visitor;
//! - Redis: connect (TLS for `rediss://`), authenticate, `PING`;
//! - the OTLP collector, when traces are on: an export with no spans, over the protocol, TLS and
//!   headers `serve` would use;
//! - Intellia: `POST …/assume-role` with our key and a body naming no user — a request that
//!   cannot mint (there is nobody to mint for): 400/422 means the key and organization were
//!   accepted and the body refused; 401/403 that the key is refused; 404 an unknown
//!   organization. If Intellia ever validated the body before the key, this would prove only
//!   reachability and TLS: `--mint-test-user ID` is the end-to-end check (it mints one real token
//!   for that user and prints only its expiry).
//!
//! Checks run in parallel, each bounded by `--timeout-secs` (at most 25), so the whole run ends
//! within 30 s even when endpoints hang. Nothing secret is printed: no key, secret, token or
//! response body, and every line is scrubbed of the loaded secret values as a last guard.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use time::format_description::well_known::Rfc3339;

use crate::config::{KeySource, Settings};
use crate::identity::{Identity, UserId};
use crate::intellia::IntelliaClient;
use crate::secrets::{InlineSecrets, SecretKind, Secrets};
use crate::session::{DiscoveryDocument, Introspector, Probe, Site, SiteProbe, usable_keys};
use crate::telemetry::metrics::Metrics;

/// The most any one check may take; with the start-up work this keeps a run under 30 s.
pub(super) const MAX_CHECK_SECS: u64 = 25;

/// Answers larger than this are not discovery or JWKS documents.
const MAX_DOCUMENT_BYTES: usize = 512 * 1024;

/// How much of a value a remote server sent is quoted in a line of the report.
const REMOTE_TEXT_CHARS: usize = 200;

/// How a line of the report reads: a check passed or failed, or a setting works but is weaker
/// than it looks (it does not fail the run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mark {
    Ok,
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Line {
    pub name: String,
    pub mark: Mark,
    pub detail: String,
}

impl Line {
    fn ok(name: impl Into<String>, detail: impl Into<String>) -> Line {
        Line {
            name: name.into(),
            mark: Mark::Ok,
            detail: detail.into(),
        }
    }

    fn fail(name: impl Into<String>, detail: impl Into<String>) -> Line {
        Line {
            name: name.into(),
            mark: Mark::Fail,
            detail: detail.into(),
        }
    }

    fn warn(name: impl Into<String>, detail: impl Into<String>) -> Line {
        Line {
            name: name.into(),
            mark: Mark::Warn,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mark = match self.mark {
            Mark::Ok => "ok  ",
            Mark::Warn => "warn",
            Mark::Fail => "FAIL",
        };
        write!(f, "{mark} {}: {}", self.name, self.detail)
    }
}

/// Runs every check, prints the report on stdout, and fails when any check failed.
pub(super) async fn run(
    config: &Path,
    mint_test_user: Option<&str>,
    timeout_secs: u64,
) -> Result<(), String> {
    let started = Instant::now();
    let budget = Duration::from_secs(timeout_secs.clamp(1, MAX_CHECK_SECS));
    let settings = match Settings::load(config) {
        Ok(settings) => settings,
        Err(e) => {
            super::console::line(&Line::fail("config", e.to_string()).to_string());
            return Err("doctor: the configuration does not load".to_owned());
        }
    };
    let secrets = Secrets::load(&settings, InlineSecrets::default());
    let mut lines = vec![match &secrets {
        Ok(secrets) => Line::ok(
            "config",
            format!(
                "{} is valid; {} secret(s) readable",
                config.display(),
                secrets.describe().len()
            ),
        ),
        Err(e) => Line::fail("config", e.clone()),
    }];
    let secrets = secrets.ok().map(Arc::new);
    // What `serve` warns about at start-up, flagged without failing the run.
    let warnings: Vec<Line> = settings
        .warnings()
        .into_iter()
        .map(|w| Line::warn(format!("config {}", w.key), w.problem))
        .collect();
    let warned = warnings.len();
    lines.extend(warnings);
    lines.extend(check_all(&settings, secrets.as_ref(), mint_test_user, budget).await);

    let scrub = Scrubber::new(secrets.as_deref(), &settings);
    let failed = lines.iter().filter(|l| l.mark == Mark::Fail).count();
    let checks = lines.len() - warned;
    for line in &lines {
        // Scrubbed first (a secret is matched as it was sent), then made printable: a line holds
        // what remote servers answered, and none of it may steer the terminal or forge a line.
        super::console::line(&super::console::printable(&scrub.apply(&line.to_string())));
    }
    let warned = match warned {
        0 => String::new(),
        1 => ", 1 warning".to_owned(),
        n => format!(", {n} warnings"),
    };
    super::console::line(&format!(
        "{checks} checks, {failed} failed{warned}, in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    if failed == 0 {
        Ok(())
    } else {
        Err(format!("doctor: {failed} of {checks} checks failed"))
    }
}

type Check<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Line> + Send + 'a>>;

async fn check_all(
    settings: &Settings,
    secrets: Option<&Arc<Secrets>>,
    mint_test_user: Option<&str>,
    budget: Duration,
) -> Vec<Line> {
    // Inner timeouts a little past the check's own bound, so a hang reads the same everywhere.
    let inner = budget + Duration::from_secs(1);
    let http = match crate::http_client::builder()
        .timeout(inner)
        .connect_timeout(budget.min(Duration::from_secs(5)))
        .build()
    {
        Ok(http) => http,
        Err(e) => return vec![Line::fail("http client", e.to_string())],
    };
    let metrics = Arc::new(Metrics::new());
    let mut checks: Vec<(String, Check<'_>)> = Vec::new();
    for (index, issuer) in settings.session.jwt.iter().enumerate() {
        let name = format!("issuer[{index}] {}", issuer.issuer);
        let http = http.clone();
        checks.push((
            name,
            Box::pin(
                async move {
                    match &issuer.keys {
                        KeySource::Hs256(_) => {
                            Ok("HS256 with a shared secret; nothing to fetch".into())
                        }
                        KeySource::Jwks(url) => check_jwks(&http, url.as_str()).await,
                        KeySource::Discovery => check_discovery(&http, &issuer.issuer).await,
                    }
                }
                .then_line(),
            ),
        ));
    }
    if let Some(introspection) = &settings.session.introspection {
        let name = format!("introspection {}", introspection.url.as_str());
        match secrets.map(|s| crate::session::introspector(introspection, s, &http)) {
            Some(Ok(introspector)) => {
                checks.push((
                    name,
                    Box::pin(async move { check_introspection(&introspector).await }.then_line()),
                ));
            }
            Some(Err(e)) => checks.push((name, Box::pin(std::future::ready(Line::fail("", e))))),
            None => checks.push((name, skipped())),
        }
    }
    for (index, endpoint) in settings.session.endpoint.iter().enumerate() {
        let site = Site::new(index, endpoint, &http, &metrics);
        checks.push((
            format!("endpoint[{index}] {}", site.url()),
            Box::pin(async move { check_site(&site).await }.then_line()),
        ));
    }
    if let Some(redis) = &settings.redis {
        let name = format!("redis {}", redis.url.redacted());
        checks.push((
            name,
            Box::pin(
                check_redis(
                    redis,
                    secrets.and_then(|s| s.get(SecretKind::RedisPassword)),
                    inner,
                )
                .then_line(),
            ),
        ));
    }
    let name = format!("intellia {}", settings.intellia.base_url.url());
    match secrets.map(|s| s.api_key()) {
        Some(key) => {
            let mut intellia_settings = settings.intellia.clone();
            // One attempt, within the check's budget: doctor reports, it does not retry.
            intellia_settings.max_retries = crate::config::Bounded::new::<0>();
            match IntelliaClient::new(&intellia_settings, key, Arc::clone(&metrics)) {
                Ok(client) => {
                    let client = Arc::new(client);
                    let probe = Arc::clone(&client);
                    checks.push((
                        name,
                        Box::pin(async move { check_intellia(&probe).await }.then_line()),
                    ));
                    if let Some(user) = mint_test_user {
                        checks.push((
                            format!("mint-test-user {user}"),
                            Box::pin(async move { mint(&client, user).await }.then_line()),
                        ));
                    }
                }
                Err(e) => checks.push((name, Box::pin(std::future::ready(Line::fail("", e))))),
            }
        }
        None => checks.push((name, skipped())),
    }
    // The collector, when traces are on: an export with no spans (the OTEL_* variables as
    // `serve` reads them).
    match crate::telemetry::traces::environment::resolve(
        &settings.telemetry,
        &crate::telemetry::traces::environment::OtelEnv::from_process(),
    ) {
        Ok(resolved) => {
            if let Some(config) = resolved.config {
                let name = format!(
                    "traces {}",
                    crate::telemetry::traces::environment::redacted(&config.endpoint.url)
                );
                checks.push((
                    name,
                    Box::pin(
                        async move { crate::telemetry::traces::export::probe(&config).await }
                            .then_line(),
                    ),
                ));
            }
        }
        Err(e) => checks.push((
            "traces".to_owned(),
            Box::pin(std::future::ready(Line::fail("", e))),
        )),
    }
    let runs = checks.into_iter().map(|(name, check)| async move {
        let mut line = match tokio::time::timeout(budget, check).await {
            Ok(line) => line,
            Err(_) => Line::fail(
                "",
                format!(
                    "no answer within {} s (hanging endpoint?)",
                    budget.as_secs()
                ),
            ),
        };
        line.name = name;
        line
    });
    join_all(runs).await
}

fn skipped() -> Check<'static> {
    Box::pin(std::future::ready(Line::fail(
        "",
        "skipped: its secret could not be read (see the config line)",
    )))
}

/// A check's outcome as a line (named by the caller).
trait ThenLine: std::future::Future<Output = Result<String, String>> + Sized + Send {
    fn then_line(self) -> impl std::future::Future<Output = Line> + Send {
        async move {
            match self.await {
                Ok(detail) => Line::ok("", detail),
                Err(cause) => Line::fail("", cause),
            }
        }
    }
}

impl<F: std::future::Future<Output = Result<String, String>> + Send> ThenLine for F {}

/// Why a request got no HTTP answer, in the operator's terms: DNS, connect, TLS or timeout.
pub(super) fn transport_cause(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".to_owned();
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut innermost = e.to_string();
    while let Some(err) = source {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return format!("TLS handshake failed: {tls}");
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return "connection refused".to_owned(),
                std::io::ErrorKind::TimedOut => return "connect timed out".to_owned(),
                _ => {}
            }
            if let Some(tls) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                return format!("TLS handshake failed: {tls}");
            }
        }
        let text = err.to_string();
        if text.contains("dns error") || text.contains("failed to lookup address") {
            return "DNS lookup failed (no such host?)".to_owned();
        }
        // rustls's errors as they reach us through the connector's `io::Error`.
        if [
            "certificate",
            "corrupt message",
            "handshake",
            "received fatal alert",
            "peer is incompatible",
        ]
        .iter()
        .any(|needle| text.contains(needle))
        {
            return format!("TLS handshake failed: {text}");
        }
        innermost = text;
        source = err.source();
    }
    format!("connection failed ({innermost})")
}

/// GETs a JSON document: its body, or the cause in the operator's terms.
async fn get_document(http: &reqwest::Client, what: &str, url: &str) -> Result<Vec<u8>, String> {
    let mut response = crate::telemetry::traces::traced(http.get(url))
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| format!("{what} {url}: {}", transport_cause(&e)))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("{what} {url}: HTTP {}", status.as_u16()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("{what} {url}: {}", transport_cause(&e)))?
    {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(format!("{what} {url}: larger than any {what}"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn check_jwks(http: &reqwest::Client, url: &str) -> Result<String, String> {
    let body = get_document(http, "JWKS", url).await?;
    match usable_keys(&body) {
        Ok((0, total)) => Err(format!(
            "JWKS {url}: no usable key ({total} key(s), none a public signature key the broker supports)"
        )),
        Ok((usable, _)) => Ok(format!("JWKS {url}: {usable} usable key(s)")),
        Err(e) => Err(format!("JWKS {url}: {e}")),
    }
}

async fn check_discovery(http: &reqwest::Client, issuer: &str) -> Result<String, String> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let body = get_document(http, "discovery", &url).await?;
    let doc: DiscoveryDocument = serde_json::from_slice(&body)
        .map_err(|e| format!("discovery {url}: not a discovery document ({e})"))?;
    if doc.issuer != issuer {
        return Err(format!(
            "discovery {url}: issuer mismatch: it names `{}`, the config `{issuer}`",
            super::console::quoted_remote(&doc.issuer, REMOTE_TEXT_CHARS)
        ));
    }
    let jwks = check_jwks(http, &doc.jwks_uri).await?;
    Ok(format!("discovery ok; {jwks}"))
}

async fn check_introspection(introspector: &Introspector) -> Result<String, String> {
    match introspector.probe().await {
        Probe::Unreachable(e) => Err(transport_cause(&e)),
        Probe::KeyUnusable => Err(
            "credentials unusable: the client key cannot sign an assertion (session.introspection.client_key_file)"
                .to_owned(),
        ),
        Probe::Answered {
            status: 200,
            active: Some(false),
            ..
        } => Ok("credentials accepted (a made-up token is reported inactive)".to_owned()),
        Probe::Answered {
            status: 200,
            active: Some(true),
            ..
        } => Err(
            "answered active for a made-up token: this is not a working introspection endpoint"
                .to_owned(),
        ),
        Probe::Answered { status: 200, .. } => {
            Err("HTTP 200 but the answer is not an introspection response".to_owned())
        }
        Probe::Answered { status, error, .. }
            if matches!(status, 401 | 403)
                || matches!(
                    error.as_deref(),
                    Some("invalid_client" | "unauthorized_client")
                ) =>
        {
            Err(format!(
                "credentials refused: HTTP {status}{} (check the client id and its secret or key)",
                error
                    .map(|e| format!(" {}", super::console::quoted_remote(&e, 64)))
                    .unwrap_or_default()
            ))
        }
        Probe::Answered { status, .. } => Err(format!("HTTP {status}")),
    }
}

/// A remote server's text as one printable line: control characters escaped, at most 200
/// characters.
fn remote_text(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars().take(200) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if text.chars().count() > 200 {
        out.push('…');
    }
    out
}

async fn check_site(site: &Site) -> Result<String, String> {
    let plaintext = if site.settings().is_plaintext_remote() {
        "; WARNING: plain http:// to a host that is not this machine, so visitors' session cookies cross the network unencrypted"
    } else {
        ""
    };
    match site.probe().await {
        SiteProbe::SignedOut { status, location } => {
            let how = match (status, location) {
                (300..=399, Some(location)) => format!(
                    "HTTP {status}, a redirect to {} (never followed; if it only adds a slash, fix the url)",
                    remote_text(&location)
                ),
                (200, _) => "HTTP 200 naming no user".to_owned(),
                (status, _) => format!("HTTP {status}"),
            };
            Ok(format!(
                "reachable; a request without a session is answered as signed out ({how}){plaintext}"
            ))
        }
        SiteProbe::NamesSomebody => Err(
            "answered a request without any session with a user id: this endpoint would let anybody in (check url and user_id_pointer)"
                .to_owned(),
        ),
        SiteProbe::Unusable { status, outcome } => Err(format!(
            "HTTP {status} ({}): every visitor would get 503; it must answer 401/403 or a redirect when signed out and a JSON object of at most 64 KiB when signed in",
            outcome.label()
        )),
        SiteProbe::Timeout => Err("timed out (timeout_ms)".to_owned()),
        SiteProbe::Unreachable(e) => Err(transport_cause(&e)),
    }
}

/// Connects as `serve` does (TLS with `ca_file`, the ACL user, `password_file`, a cluster's
/// every primary) and `PING`s; for a cluster also `cluster_state`.
async fn check_redis(
    settings: &crate::config::RedisSettings,
    password: Option<Arc<crate::secrets::SecretCell>>,
    budget: Duration,
) -> Result<String, String> {
    let started = Instant::now();
    let outcome = tokio::time::timeout(budget, crate::redis::diagnose(settings, password))
        .await
        .map_err(|_| "timed out".to_owned())?;
    let detail = outcome.map_err(|e| match e {
        crate::redis::Diagnosis::Config(text) => text,
        crate::redis::Diagnosis::Redis(e) => redis_cause(&e),
        crate::redis::Diagnosis::ClusterState(state) => format!("cluster_state:{state}"),
    })?;
    Ok(format!(
        "connected, authenticated, {detail} in {} ms",
        started.elapsed().as_millis()
    ))
}

fn redis_cause(e: &redis::RedisError) -> String {
    use redis::ErrorKind;
    if e.kind() == ErrorKind::AuthenticationFailed
        || e.code()
            .is_some_and(|c| c == "WRONGPASS" || c == "NOAUTH" || c == "NOPERM")
    {
        return format!(
            "credentials refused ({})",
            e.code().unwrap_or("authentication failed")
        );
    }
    if e.is_connection_refusal() {
        return "connection refused".to_owned();
    }
    if e.is_timeout() {
        return "timed out".to_owned();
    }
    let text = e.to_string();
    if text.contains("failed to lookup address") || text.contains("dns error") {
        return "DNS lookup failed (no such host?)".to_owned();
    }
    if text.to_ascii_lowercase().contains("tls") || text.contains("certificate") {
        return format!("TLS failed ({})", e.category());
    }
    match e.code() {
        Some(code) => format!("Redis answered {code}"),
        None => format!("{} error", e.category()),
    }
}

async fn check_intellia(client: &IntelliaClient) -> Result<String, String> {
    let status = client
        .probe()
        .await
        .map_err(|e| transport_cause(&e))?
        .as_u16();
    match status {
        400 | 422 => Ok(format!(
            "reachable; API key and organization accepted (a request naming no user was refused with HTTP {status}; nothing minted)"
        )),
        401 => Err("credentials refused: HTTP 401 (the API key is not valid)".to_owned()),
        403 => Err(
            "credentials refused: HTTP 403 (the API key lacks assume_role write permission)"
                .to_owned(),
        ),
        404 => Err(format!(
            "HTTP 404 for {}: unknown organization id or wrong base_url",
            client.url()
        )),
        429 => Err("HTTP 429: Intellia is rate-limiting this key".to_owned()),
        s if (200..300).contains(&s) => {
            Err(format!("unexpected HTTP {s} to a request naming no user"))
        }
        s => Err(format!("HTTP {s}")),
    }
}

async fn mint(client: &IntelliaClient, user: &str) -> Result<String, String> {
    let user_id = UserId::parse(user.to_owned())
        .ok_or_else(|| "--mint-test-user must be 1-256 printable characters".to_owned())?;
    let identity = Identity {
        user_id,
        email: None,
        name: None,
    };
    let minted = client
        .assume_role(&identity)
        .await
        .map_err(|e| e.to_string())?;
    let expires = minted
        .expires_at
        .format(&Rfc3339)
        .unwrap_or_else(|_| "an unprintable time".to_owned());
    Ok(format!(
        "minted a token (not shown) that expires at {expires}"
    ))
}

/// Removes every loaded secret value from a line before it is printed.
struct Scrubber {
    values: Vec<String>,
}

/// Values this short would blank out ordinary words; no real secret is this short.
const MIN_SCRUBBED_CHARS: usize = 4;

impl Scrubber {
    fn new(secrets: Option<&Secrets>, settings: &Settings) -> Scrubber {
        let mut values = Vec::new();
        let mut add = |value: &str| {
            values.push(value.to_owned());
            // A multi-line secret (a PEM or JSON key file) never appears whole on one line of
            // the report, but any of its lines might.
            if value.contains('\n') {
                values.extend(
                    value
                        .lines()
                        .map(str::trim)
                        .filter(|line| line.len() >= 16 && !line.starts_with("-----"))
                        .map(str::to_owned),
                );
            }
        };
        if let Some(secrets) = secrets {
            secrets.for_each_value(&mut add);
        }
        // The one credential that lives inside a configuration value, not in the registry.
        if let Some(password) = settings.redis.as_ref().and_then(|r| r.url.url().password()) {
            add(password);
        }
        values.retain(|v| v.len() >= MIN_SCRUBBED_CHARS);
        // Longest first, so a secret that contains another is replaced whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        Scrubber { values }
    }

    fn apply(&self, line: &str) -> String {
        let mut out = line.to_owned();
        for value in &self.values {
            out = out.replace(value.as_str(), "[REDACTED]");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_ok_or_fail_with_the_cause() {
        assert_eq!(
            Line::ok("redis redis://r:6379", "connected").to_string(),
            "ok   redis redis://r:6379: connected"
        );
        assert_eq!(
            Line::fail("issuer[0] https://a", "JWKS https://a/k: HTTP 500").to_string(),
            "FAIL issuer[0] https://a: JWKS https://a/k: HTTP 500"
        );
    }

    #[test]
    fn scrubber_removes_secret_values() {
        let scrub = Scrubber {
            values: vec!["sk-live-123456".to_owned()],
        };
        assert_eq!(scrub.apply("x sk-live-123456 y"), "x [REDACTED] y");
    }

    #[test]
    fn scrubber_covers_every_secret_of_the_registry() {
        let dir = std::env::temp_dir().join(format!("doctor-scrub-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let key_pem = include_str!("../../tests/fixtures/rsa-private.pem");
        let files = [
            ("api-key", "sk-live-api-key-0001"),
            ("backend", "backend-secret-that-is-long-enough-0002"),
            ("redis-password", "redis-password-0003"),
            ("cache-secret", "cache-secret-that-is-long-enough-0004"),
            ("client-key.pem", key_pem),
        ];
        for (name, value) in files {
            std::fs::write(dir.join(name), value).unwrap();
        }
        let path = |name: &str| dir.join(name).display().to_string();
        let text = format!(
            r#"
[server]
[intellia]
organization_id = "org"
api_key_file = "{}"
[backend]
secret_file = "{}"
[session.introspection]
url = "https://idp.example/introspect"
client_auth = "private_key_jwt"
client_key_file = "{}"
client_id = "broker"
key_id = "k1"
[redis]
url = "redis://broker@redis:6379"
password_file = "{}"
cache_secret_file = "{}"
"#,
            path("api-key"),
            path("backend"),
            path("client-key.pem"),
            path("redis-password"),
            path("cache-secret"),
        );
        let settings = Settings::from_toml_with_env(&text, Vec::<(String, String)>::new()).unwrap();
        let secrets = Secrets::load(&settings, InlineSecrets::default()).unwrap();
        let scrub = Scrubber::new(Some(&secrets), &settings);
        let key_line = key_pem.lines().nth(3).unwrap();
        let report = format!(
            "{} {} {} {} {key_line}",
            files[0].1, files[1].1, files[2].1, files[3].1
        );
        let shown = scrub.apply(&report);
        assert_eq!(shown.matches("[REDACTED]").count(), 5, "{shown}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn transport_causes_name_connect_and_dns() {
        let http = crate::http_client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        let e = http
            .get(format!("http://127.0.0.1:{port}/"))
            .send()
            .await
            .expect_err("refused");
        assert_eq!(transport_cause(&e), "connection refused");
        let e = http
            .get("http://no-such-host.invalid/")
            .send()
            .await
            .expect_err("no host");
        assert!(
            transport_cause(&e).starts_with("DNS"),
            "{}",
            transport_cause(&e)
        );
    }
}
