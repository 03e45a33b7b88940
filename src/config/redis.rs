//! `[redis]`: the shared store for limits and cached tokens, and how to reach it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::field_error;
use super::values::{Bounded, KeyPrefix, RedisUrl};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(try_from = "RawRedis", into = "RawRedis")]
pub struct RedisSettings {
    pub url: RedisUrl,
    pub on_unavailable: RedisFallback,
    /// Bound on every Redis call; past it the call counts as a failure.
    pub timeout_ms: Bounded<u64, 1, 5000>,
    /// Replicas sharing the limits: while Redis is unavailable under `on_unavailable = "local"`,
    /// each replica enforces 1/replicas of every limit.
    pub replicas: Bounded<u32, 1, 1000>,
    /// Namespace of every key the broker writes.
    pub key_prefix: KeyPrefix,
    /// Key material for encrypting cached tokens; when absent it is derived from the API key
    /// (all replicas share it, and rotating the key simply empties the shared cache).
    pub cache_secret_file: Option<PathBuf>,
    /// The password for `AUTH` (the ACL user comes from the URL), from a file (a Kubernetes
    /// Secret); re-read on change. Mutually exclusive with a password in the URL.
    pub password_file: Option<PathBuf>,
    /// A PEM CA bundle trusted for `rediss://` in addition to the system roots (Memorystore's
    /// in-transit encryption, a private CA). Read at start.
    pub ca_file: Option<PathBuf>,
    /// The URL names one node of a Redis Cluster: every command goes to its key's shard.
    pub cluster: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisFallback {
    #[default]
    Local,
    Deny,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawRedis {
    url: RedisUrl,
    #[serde(default)]
    on_unavailable: RedisFallback,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: Bounded<u64, 1, 5000>,
    #[serde(default = "default_replicas")]
    replicas: Bounded<u32, 1, 1000>,
    #[serde(default = "default_key_prefix")]
    key_prefix: KeyPrefix,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cache_secret_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    cluster: bool,
}

impl TryFrom<RawRedis> for RedisSettings {
    type Error = String;
    fn try_from(raw: RawRedis) -> Result<Self, String> {
        // The password in two places: refused rather than one silently winning.
        if raw.password_file.is_some() && raw.url.has_password() {
            return Err(field_error(
                "password_file",
                "the URL carries a password too; keep the password in one place (remove it from redis.url)",
            ));
        }
        // A CA for a plain-text connection means the operator expected TLS.
        if raw.ca_file.is_some() && !raw.url.is_tls() {
            return Err(field_error(
                "ca_file",
                "applies to TLS only; use a rediss:// URL",
            ));
        }
        if raw.cluster && raw.url.database().is_some_and(|db| db != "0") {
            return Err(field_error(
                "url",
                "a Redis Cluster has only database 0; remove the database from the URL",
            ));
        }
        let RawRedis {
            url,
            on_unavailable,
            timeout_ms,
            replicas,
            key_prefix,
            cache_secret_file,
            password_file,
            ca_file,
            cluster,
        } = raw;
        Ok(RedisSettings {
            url,
            on_unavailable,
            timeout_ms,
            replicas,
            key_prefix,
            cache_secret_file,
            password_file,
            ca_file,
            cluster,
        })
    }
}

impl From<RedisSettings> for RawRedis {
    fn from(s: RedisSettings) -> RawRedis {
        let RedisSettings {
            url,
            on_unavailable,
            timeout_ms,
            replicas,
            key_prefix,
            cache_secret_file,
            password_file,
            ca_file,
            cluster,
        } = s;
        RawRedis {
            url,
            on_unavailable,
            timeout_ms,
            replicas,
            key_prefix,
            cache_secret_file,
            password_file,
            ca_file,
            cluster,
        }
    }
}

fn default_timeout_ms() -> Bounded<u64, 1, 5000> {
    Bounded::new::<50>()
}
fn default_replicas() -> Bounded<u32, 1, 1000> {
    Bounded::new::<1>()
}
// Checked by the test `literal_defaults_parse` (parsing cannot run at compile time): with it
// passing, the `unreachable!` arm is never taken.
fn default_key_prefix() -> KeyPrefix {
    KeyPrefix::try_from("itb".to_owned()).unwrap_or_else(|_| unreachable!("a valid prefix"))
}
