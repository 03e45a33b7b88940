//! The configuration of a test broker: [`TestConfig`] holds the knobs, [`write_config`] writes the
//! TOML (and the secret files) an operator would write.

use std::path::{Path, PathBuf};

use crate::consts::{
    ALLOWED_ORIGIN, API_KEY, AUDIENCE, BACKEND_SECRET, HS_SECRET, ISSUER, ORG, WILDCARD_ORIGIN,
};

/// Knobs for one test broker. The TOML written from it is what an operator would write.
pub struct TestConfig {
    pub per_user: Option<(u32, u32)>,
    pub per_ip: Option<(u32, u32)>,
    pub upstream: Option<(u32, u32)>,
    pub cache: bool,
    /// A `[backend]` section, listening on a free loopback port.
    pub backend: bool,
    /// Appended to the `[backend]` table as is (e.g. `max_failures_per_minute`).
    pub backend_toml: String,
    pub trusted_proxies: Vec<String>,
    pub allowed_origins: Vec<String>,
    pub timeout_ms: u64,
    pub max_retries: u32,
    pub max_body_bytes: usize,
    /// Extra `[[session.jwt]]` tables (TOML) beside the HS256 issuer.
    pub extra_issuers: String,
    /// Appended to the HS256 issuer's own table as is (e.g. a `userinfo_url`).
    pub hs256_toml: String,
    pub admin: bool,
    /// Wait for `/readyz` before handing the app to the test.
    pub expect_ready: bool,
    /// `(breaker_failures, breaker_open_secs)` for `[intellia]`.
    pub breaker: Option<(u32, u64)>,
    /// Appended to the config as is (e.g. a `[redis]` section).
    pub extra_toml: String,
    pub deadline_ms: Option<u64>,
    /// Appended to the `[server]` table as is.
    pub server_toml: String,
}

impl Default for TestConfig {
    fn default() -> Self {
        TestConfig {
            per_user: None,
            per_ip: None,
            upstream: None,
            cache: true,
            backend: true,
            backend_toml: String::new(),
            trusted_proxies: Vec::new(),
            allowed_origins: vec![ALLOWED_ORIGIN.to_owned(), WILDCARD_ORIGIN.to_owned()],
            timeout_ms: 2000,
            max_retries: 0,
            max_body_bytes: 4096,
            extra_issuers: String::new(),
            hs256_toml: String::new(),
            admin: false,
            expect_ready: true,
            breaker: None,
            extra_toml: String::new(),
            deadline_ms: None,
            server_toml: String::new(),
        }
    }
}

fn quoted(list: &[String]) -> String {
    list.iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("broker-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes the config and secret files a test broker runs with; returns the config text.
/// A directory holding the default test configuration and its secret files, for commands that
/// only read them (`check-config`, start-up errors): Intellia is a closed port.
pub fn default_config_dir() -> PathBuf {
    let dir = temp_dir();
    write_config(
        &TestConfig::default(),
        &dir,
        "http://127.0.0.1:9",
        "127.0.0.1:0",
    );
    dir
}

/// The HS256 issuer's `user_id_prefix`: none while it is the only session source, `site:` beside
/// any other, as the broker requires (sources of different issuers never share ids).
pub fn hs256_prefix(cfg: &TestConfig) -> &'static str {
    let others = [&cfg.extra_issuers, &cfg.extra_toml].iter().any(|t| {
        t.contains("[[session.jwt]]")
            || t.contains("[session.introspection]")
            || t.contains("[[session.endpoint]]")
    });
    if others {
        "user_id_prefix = \"site:\"\n"
    } else {
        ""
    }
}

pub fn write_config(cfg: &TestConfig, dir: &Path, simulator: &str, listen: &str) -> String {
    std::fs::write(dir.join("api-key"), format!("{API_KEY}\n")).unwrap();
    std::fs::write(dir.join("hs256"), HS_SECRET).unwrap();
    std::fs::write(dir.join("backend"), BACKEND_SECRET).unwrap();
    let mut text = format!(
        r#"
[server]
listen = "{listen}"
trusted_proxies = [{proxies}]
max_body_bytes = {max_body}
shutdown_grace_secs = 3
drain_delay_secs = 1
secret_poll_secs = 1
workers = 1
{admin}
{server_extra}

[intellia]
base_url = "{simulator}"
organization_id = "{ORG}"
api_key_file = "{dir}/api-key"
timeout_ms = {timeout}
max_retries = {retries}
{breaker}

[cors]
allowed_origins = [{origins}]

[[session.jwt]]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
hs256_secret_file = "{dir}/hs256"
algorithms = ["HS256"]
cookie = "site_session"
leeway_secs = 5
{hs_prefix}{hs256_toml}
{extra}

[cache]
enabled = {cache}
min_remaining_secs = 900
"#,
        proxies = quoted(&cfg.trusted_proxies),
        max_body = cfg.max_body_bytes,
        admin = if cfg.admin {
            "admin_listen = \"127.0.0.1:0\""
        } else {
            ""
        },
        server_extra = cfg.server_toml,
        hs_prefix = hs256_prefix(cfg),
        hs256_toml = cfg.hs256_toml,
        dir = dir.display(),
        timeout = cfg.timeout_ms,
        retries = cfg.max_retries,
        breaker = cfg
            .breaker
            .map_or(String::new(), |(failures, secs)| format!(
                "breaker_failures = {failures}\nbreaker_open_secs = {secs}"
            ))
            + &cfg
                .deadline_ms
                .map_or(String::new(), |ms| format!("\ndeadline_ms = {ms}")),
        origins = quoted(&cfg.allowed_origins),
        extra = cfg.extra_issuers,
        cache = cfg.cache,
    );
    if cfg.backend {
        text.push_str(&format!(
            "\n[backend]\nlisten = \"127.0.0.1:0\"\nsecret_file = \"{}/backend\"\n{}",
            dir.display(),
            cfg.backend_toml
        ));
    }
    if let Some((per_minute, burst)) = cfg.per_user {
        text.push_str(&format!(
            "\n[rate_limit.per_user]\nper_minute = {per_minute}\nburst = {burst}\n"
        ));
    }
    if let Some((per_minute, burst)) = cfg.per_ip {
        text.push_str(&format!(
            "\n[rate_limit.per_ip]\nper_minute = {per_minute}\nburst = {burst}\n"
        ));
    }
    if let Some((per_second, burst)) = cfg.upstream {
        text.push_str(&format!(
            "\n[rate_limit.upstream]\nper_second = {per_second}\nburst = {burst}\n"
        ));
    }
    text.push_str(&cfg.extra_toml);
    std::fs::write(dir.join("config.toml"), &text).unwrap();
    text
}
