//! Secret material: read from files (preferred) or named environment variables, held in `secrecy`
//! types, exposed only where a header, a MAC or a cipher is built.
//!
//! [`Secrets`] is the one registry of every secret the configuration names. `serve`,
//! `check-config`, rotation and `/readyz` all go through it, so no command can read fewer
//! secrets than another.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

pub(crate) mod client_key;

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::config::{ApiKeySource, IntrospectionAuth, KeySource, Settings};
use client_key::ClientKey;

/// Why a secret could not be loaded; always names the path or variable, never the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("secret environment variable {name}: {reason}")]
    Env { name: String, reason: &'static str },
    #[error("secret {source_name} is shorter than {min} bytes")]
    TooShort { source_name: String, min: usize },
    /// The content is not what the secret must be (e.g. a key file that holds no usable key).
    #[error("secret {source_name} {reason}")]
    Invalid { source_name: String, reason: String },
}

/// Where a secret comes from, so it can be read again when it rotates.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
    /// Generated in memory (dev mode, tests); never re-read.
    Inline,
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::File(p) => write!(f, "file {}", p.display()),
            SecretSource::Env(n) => write!(f, "env {n}"),
            SecretSource::Inline => f.write_str("inline"),
        }
    }
}

impl SecretSource {
    /// Reads the secret now. Surrounding whitespace (and the trailing newline editors add) is
    /// trimmed; an empty result is an error, as is a file that is not valid UTF-8.
    pub fn read(&self) -> Result<SecretString, SecretError> {
        match self {
            SecretSource::File(path) => read_secret_file(path),
            SecretSource::Env(name) => {
                let value = std::env::var(name).map_err(|e| SecretError::Env {
                    name: name.clone(),
                    reason: match e {
                        std::env::VarError::NotPresent => "is not set",
                        std::env::VarError::NotUnicode(_) => "is not valid UTF-8",
                    },
                })?;
                let trimmed = value.trim();
                if trimmed.is_empty() {
                    return Err(SecretError::Env {
                        name: name.clone(),
                        reason: "is empty",
                    });
                }
                Ok(SecretString::from(trimmed.to_owned()))
            }
            SecretSource::Inline => Err(SecretError::Env {
                name: "inline".to_owned(),
                reason: "cannot be re-read",
            }),
        }
    }
}

fn read_secret_file(path: &Path) -> Result<SecretString, SecretError> {
    let err = |reason: String| SecretError::File {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| err(describe_io(&e)))?;
    let text = String::from_utf8(bytes).map_err(|_| err("is not valid UTF-8".to_owned()))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(err("is empty".to_owned()));
    }
    Ok(SecretString::from(trimmed.to_owned()))
}

fn describe_io(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "does not exist".to_owned(),
        std::io::ErrorKind::PermissionDenied => "is not readable (permission denied)".to_owned(),
        _ => format!("cannot be read ({})", e.kind()),
    }
}

/// One value of a secret with what is derived from it, swapped as a whole: a reader never sees
/// a new value with an old fingerprint.
pub struct SecretValue {
    value: SecretString,
    fingerprint: [u8; 32],
    /// Counts rotations, so derived keys (an HMAC key, a cipher) know when to rebuild.
    generation: u64,
}

impl SecretValue {
    pub fn expose(&self) -> &str {
        self.value.expose_secret()
    }

    pub fn secret(&self) -> &SecretString {
        &self.value
    }

    /// SHA-256 of the value: compares secrets in constant time without exposing them.
    pub fn fingerprint(&self) -> &[u8; 32] {
        &self.fingerprint
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// Checks a secret's content beyond its length (a key file must hold a usable key); the error
/// says what is wrong, never the value.
pub(crate) type SecretCheck = Arc<dyn Fn(&SecretString) -> Result<(), String> + Send + Sync>;

/// A secret that can be swapped while requests are using it: readers take a cheap `Arc` snapshot
/// and never hold the lock across an await.
pub struct SecretCell {
    source: SecretSource,
    min_len: usize,
    check: Option<SecretCheck>,
    current: RwLock<Arc<SecretValue>>,
}

impl std::fmt::Debug for SecretCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretCell")
            .field("source", &self.source)
            .field("value", &"[REDACTED]")
            .finish()
    }
}

impl SecretCell {
    pub fn load(source: SecretSource) -> Result<SecretCell, SecretError> {
        Self::load_at_least(source, 1)
    }

    /// Loads a secret that must be at least `min_len` bytes long, now and after every rotation.
    pub fn load_at_least(source: SecretSource, min_len: usize) -> Result<SecretCell, SecretError> {
        let value = source.read()?;
        check_length(&source, &value, min_len)?;
        let mut cell = Self::with_value(source, value);
        cell.min_len = min_len;
        Ok(cell)
    }

    /// Loads a secret whose content must pass `check`, now and after every rotation: a rotated
    /// value that fails it is refused and the last good value stays in use.
    pub fn load_checked(
        source: SecretSource,
        check: SecretCheck,
    ) -> Result<SecretCell, SecretError> {
        let value = source.read()?;
        run_check(&source, &value, &check)?;
        let mut cell = Self::with_value(source, value);
        cell.check = Some(check);
        Ok(cell)
    }

    pub fn with_value(source: SecretSource, value: SecretString) -> SecretCell {
        SecretCell {
            source,
            min_len: 1,
            check: None,
            current: RwLock::new(Arc::new(SecretValue {
                fingerprint: fingerprint(&value),
                value,
                generation: 0,
            })),
        }
    }

    pub fn source(&self) -> &SecretSource {
        &self.source
    }

    pub fn get(&self) -> Arc<SecretValue> {
        // A poisoned lock only means a writer panicked mid-swap of an Arc; the Arc itself is intact.
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Re-reads the source. Returns `Ok(true)` when the value changed, `Ok(false)` when it is the
    /// same, and an error (keeping the last good value) when the source is unreadable, empty or
    /// too short.
    pub fn reload(&self) -> Result<bool, SecretError> {
        if self.source == SecretSource::Inline {
            return Ok(false);
        }
        let value = self.source.read()?;
        check_length(&self.source, &value, self.min_len)?;
        let new_fp = fingerprint(&value);
        let current = self.get();
        if new_fp == current.fingerprint {
            return Ok(false);
        }
        // Only a changed value is checked: the check may be costly (a key file is parsed).
        if let Some(check) = &self.check {
            run_check(&self.source, &value, check)?;
        }
        let next = Arc::new(SecretValue {
            value,
            fingerprint: new_fp,
            generation: current.generation + 1,
        });
        match self.current.write() {
            Ok(mut guard) => *guard = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        Ok(true)
    }
}

fn check_length(
    source: &SecretSource,
    value: &SecretString,
    min_len: usize,
) -> Result<(), SecretError> {
    if value.expose_secret().len() >= min_len {
        return Ok(());
    }
    Err(SecretError::TooShort {
        source_name: format!("{source:?}"),
        min: min_len,
    })
}

fn run_check(
    source: &SecretSource,
    value: &SecretString,
    check: &SecretCheck,
) -> Result<(), SecretError> {
    check(value).map_err(|reason| SecretError::Invalid {
        source_name: format!("{source:?}"),
        reason,
    })
}

pub(crate) fn fingerprint(value: &SecretString) -> [u8; 32] {
    Sha256::digest(value.expose_secret().as_bytes()).into()
}

/// What a secret is for. Also its metric label, so the set stays closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecretKind {
    ApiKey,
    Backend,
    SessionHs256(usize),
    IntrospectionClient,
    /// The `private_key_jwt` key file (Zitadel's key JSON or a PEM RSA private key).
    IntrospectionClientKey,
    RedisCache,
    RedisPassword,
}

impl SecretKind {
    pub fn label(self) -> &'static str {
        match self {
            SecretKind::ApiKey => "intellia.api_key",
            SecretKind::Backend => "backend.secret",
            SecretKind::SessionHs256(_) => "session.hs256_secret",
            SecretKind::IntrospectionClient => "session.introspection.client_secret",
            SecretKind::IntrospectionClientKey => "session.introspection.client_key",
            SecretKind::RedisCache => "redis.cache_secret",
            SecretKind::RedisPassword => "redis.password",
        }
    }
}

/// The API key travels as `Authorization: Bearer <key>`: a key a header cannot carry (a line
/// break inside it, a control character) could never mint, so it is refused when it is read, at
/// start-up and on rotation, with the same test the request uses.
fn api_key_check() -> SecretCheck {
    Arc::new(|key| {
        reqwest::header::HeaderValue::from_str(&format!("Bearer {}", key.expose_secret()))
            .map(drop)
            .map_err(|_| {
                "holds characters an HTTP header cannot carry (only printable ASCII is sent)"
                    .to_owned()
            })
    })
}

/// Shared secrets shorter than this are refused, at start-up and on rotation: a short HS256
/// secret can be brute-forced offline from one session token, a short backend secret online.
pub(crate) const MIN_SHARED_SECRET_BYTES: usize = 32;

struct Entry {
    kind: SecretKind,
    /// The config key that names the source, for errors.
    key: String,
    cell: Arc<SecretCell>,
    stale: AtomicBool,
}

/// A rotation seen by [`Secrets::reload`].
#[derive(Debug)]
pub enum Reload {
    Rotated(SecretKind),
    /// The source is unreadable; the last good value stays in use. `first` is true the first
    /// time this is seen, so it is logged once.
    Failed {
        kind: SecretKind,
        error: SecretError,
        first: bool,
    },
    Recovered(SecretKind),
}

/// Every secret the configuration names, loaded once.
pub struct Secrets {
    entries: Vec<Entry>,
    /// The Intellia API key's cell, also in `entries`: the one secret every configuration has.
    api_key: Arc<SecretCell>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| &e.key))
            .finish()
    }
}

/// Secrets supplied in memory instead of read from their sources (`dev` mode, tests).
#[derive(Default)]
pub struct InlineSecrets {
    pub api_key: Option<SecretString>,
    /// HS256 secrets by `[[session.jwt]]` index.
    pub session_hs256: Vec<(usize, SecretString)>,
}

impl Secrets {
    /// Reads every secret the settings name; the error names the config key and the path or
    /// variable, never the value.
    pub fn load(settings: &Settings, inline: InlineSecrets) -> Result<Secrets, String> {
        let mut entries = Vec::new();
        let mut add = |kind: SecretKind, key: String, cell: Result<SecretCell, SecretError>| {
            let cell = cell.map_err(|e| format!("config key `{key}`: {e}"))?;
            entries.push(Entry {
                kind,
                key,
                cell: Arc::new(cell),
                stale: AtomicBool::new(false),
            });
            Ok::<(), String>(())
        };
        match (inline.api_key, &settings.intellia.api_key) {
            (Some(value), _) => add(
                SecretKind::ApiKey,
                "intellia.api_key_file".into(),
                Ok(SecretCell::with_value(SecretSource::Inline, value)),
            )?,
            (None, ApiKeySource::File(path)) => add(
                SecretKind::ApiKey,
                "intellia.api_key_file".into(),
                SecretCell::load_checked(SecretSource::File(path.clone()), api_key_check()),
            )?,
            (None, ApiKeySource::Env(name)) => add(
                SecretKind::ApiKey,
                "intellia.api_key_env".into(),
                SecretCell::load_checked(SecretSource::Env(name.clone()), api_key_check()),
            )?,
        }
        if let Some(backend) = &settings.backend {
            add(
                SecretKind::Backend,
                "backend.secret_file".into(),
                SecretCell::load_at_least(
                    SecretSource::File(backend.secret_file.clone()),
                    MIN_SHARED_SECRET_BYTES,
                ),
            )?;
        }
        for (index, jwt) in settings.session.jwt.iter().enumerate() {
            let key = format!("session.jwt[{index}].hs256_secret_file");
            if let Some((_, value)) = inline.session_hs256.iter().find(|(i, _)| *i == index) {
                add(
                    SecretKind::SessionHs256(index),
                    key,
                    Ok(SecretCell::with_value(SecretSource::Inline, value.clone())),
                )?;
            } else if let KeySource::Hs256(path) = &jwt.keys {
                add(
                    SecretKind::SessionHs256(index),
                    key,
                    SecretCell::load_at_least(
                        SecretSource::File(path.clone()),
                        MIN_SHARED_SECRET_BYTES,
                    ),
                )?;
            }
        }
        match settings.session.introspection.as_ref().map(|i| &i.auth) {
            None => {}
            Some(IntrospectionAuth::SecretBasic { secret_file, .. }) => add(
                SecretKind::IntrospectionClient,
                "session.introspection.client_secret_file".into(),
                SecretCell::load(SecretSource::File(secret_file.clone())),
            )?,
            Some(IntrospectionAuth::PrivateKeyJwt {
                key_file,
                client_id,
                key_id,
            }) => {
                let (client_id, key_id) = (client_id.clone(), key_id.clone());
                let check: SecretCheck = Arc::new(move |text| {
                    ClientKey::parse(
                        text.expose_secret(),
                        client_id.as_deref(),
                        key_id.as_deref(),
                    )
                    .map(drop)
                    .map_err(|e| e.to_string())
                });
                add(
                    SecretKind::IntrospectionClientKey,
                    "session.introspection.client_key_file".into(),
                    SecretCell::load_checked(SecretSource::File(key_file.clone()), check),
                )?;
            }
        }
        if let Some(path) = settings
            .redis
            .as_ref()
            .and_then(|r| r.cache_secret_file.as_ref())
        {
            add(
                SecretKind::RedisCache,
                "redis.cache_secret_file".into(),
                SecretCell::load(SecretSource::File(path.clone())),
            )?;
        }
        if let Some(path) = settings
            .redis
            .as_ref()
            .and_then(|r| r.password_file.as_ref())
        {
            add(
                SecretKind::RedisPassword,
                "redis.password_file".into(),
                SecretCell::load(SecretSource::File(path.clone())),
            )?;
        }
        let api_key = entries
            .iter()
            .find(|e| e.kind == SecretKind::ApiKey)
            .map(|e| Arc::clone(&e.cell))
            .ok_or_else(|| "config key `intellia.api_key_file`: not loaded".to_owned())?;
        Ok(Secrets { entries, api_key })
    }

    fn find(&self, kind: SecretKind) -> Option<&Entry> {
        self.entries.iter().find(|e| e.kind == kind)
    }

    pub fn get(&self, kind: SecretKind) -> Option<Arc<SecretCell>> {
        self.find(kind).map(|e| Arc::clone(&e.cell))
    }

    /// The Intellia API key; always present.
    pub fn api_key(&self) -> Arc<SecretCell> {
        Arc::clone(&self.api_key)
    }

    /// Calls `each` with the current value of every secret in the registry, for the one use that
    /// needs them all: scrubbing text before it is shown (`doctor`). A secret added to the
    /// registry is scrubbed without anything else changing.
    pub(crate) fn for_each_value(&self, mut each: impl FnMut(&str)) {
        for entry in &self.entries {
            each(entry.cell.get().expose());
        }
    }

    /// The key material for the shared token cache: its own secret, else the API key.
    pub fn cache_key_material(&self) -> Arc<SecretCell> {
        self.get(SecretKind::RedisCache)
            .unwrap_or_else(|| self.api_key())
    }

    /// `(config key, source)` of every secret, for `check-config`'s report.
    pub fn describe(&self) -> Vec<(String, String)> {
        self.entries
            .iter()
            .map(|e| (e.key.clone(), format!("{:?}", e.cell.source())))
            .collect()
    }

    /// Re-reads every secret; a failure keeps the last good value and marks the secret stale.
    pub fn reload(&self) -> Vec<Reload> {
        let mut seen = Vec::new();
        for entry in &self.entries {
            match entry.cell.reload() {
                Ok(changed) => {
                    if entry.stale.swap(false, Ordering::AcqRel) {
                        seen.push(Reload::Recovered(entry.kind));
                    }
                    if changed {
                        seen.push(Reload::Rotated(entry.kind));
                    }
                }
                Err(error) => seen.push(Reload::Failed {
                    kind: entry.kind,
                    error,
                    first: !entry.stale.swap(true, Ordering::AcqRel),
                }),
            }
        }
        seen
    }

    /// Labels of the secrets whose source is unreadable (the last good value is in use).
    pub fn stale(&self) -> Vec<&'static str> {
        let mut labels: Vec<&'static str> = self
            .entries
            .iter()
            .filter(|e| e.stale.load(Ordering::Acquire))
            .map(|e| e.kind.label())
            .collect();
        labels.dedup();
        labels
    }

    /// Every label, for metrics that should read 0 before anything goes stale.
    pub fn labels(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.entries.iter().map(|e| e.kind.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, contents: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("broker-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_default();
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap_or_default();
        path
    }

    #[test]
    fn trims_trailing_newline_and_whitespace() {
        let path = temp_file("key", "  sk_live_abc\n");
        let cell = SecretCell::load(SecretSource::File(path)).expect("loads");
        assert_eq!(cell.get().expose(), "sk_live_abc");
    }

    #[test]
    fn empty_file_is_an_error_naming_the_path() {
        let path = temp_file("empty", "\n  \n");
        let err = SecretCell::load(SecretSource::File(path.clone())).expect_err("empty rejected");
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("empty"));
    }

    #[test]
    fn missing_file_is_an_error_naming_the_path() {
        let err = SecretCell::load(SecretSource::File("/nonexistent/dir/key".into()))
            .expect_err("missing rejected");
        assert_eq!(
            err.to_string(),
            "secret file /nonexistent/dir/key: does not exist"
        );
    }

    #[test]
    fn debug_never_shows_the_value() {
        let cell = SecretCell::with_value(SecretSource::Inline, SecretString::from("hunter2"));
        assert!(!format!("{cell:?}").contains("hunter2"));
    }

    #[test]
    fn reload_swaps_value_fingerprint_and_generation_together() {
        let path = temp_file("rotating", "first");
        let cell = SecretCell::load(SecretSource::File(path.clone())).expect("loads");
        let before = cell.get();
        std::fs::write(&path, "second").unwrap_or_default();
        assert!(cell.reload().expect("reload"));
        let after = cell.get();
        assert_eq!(after.expose(), "second");
        assert_eq!(after.generation(), before.generation() + 1);
        assert_eq!(
            *after.fingerprint(),
            fingerprint(&SecretString::from("second"))
        );
        std::fs::write(&path, "").unwrap_or_default();
        assert!(cell.reload().is_err());
        assert_eq!(cell.get().expose(), "second");
    }

    #[test]
    fn a_rotated_secret_must_keep_the_minimum_length() {
        let path = temp_file("hmac", &"x".repeat(32));
        let cell =
            SecretCell::load_at_least(SecretSource::File(path.clone()), 32).expect("long enough");
        std::fs::write(&path, "short").unwrap_or_default();
        assert!(matches!(cell.reload(), Err(SecretError::TooShort { .. })));
        assert_eq!(cell.get().expose().len(), 32);
    }

    fn key_json(pem: &str, key_id: &str) -> String {
        serde_json::json!({
            "type": "application", "keyId": key_id, "key": pem,
            "appId": "1", "clientId": "broker-jwt"
        })
        .to_string()
    }

    #[test]
    fn an_api_key_a_header_cannot_carry_is_refused_now_and_on_rotation() {
        let path = temp_file("api-key-header", "sk_live\u{1}key\n");
        let settings = Settings::from_toml_with_env(
            &format!(
                "[server]\n[intellia]\norganization_id = \"org\"\napi_key_file = \"{}\"\n",
                path.display()
            ),
            Vec::<(String, String)>::new(),
        )
        .expect("settings");
        let refused = Secrets::load(&settings, InlineSecrets::default()).unwrap_err();
        assert!(
            refused.starts_with("config key `intellia.api_key_file`: "),
            "{refused}"
        );
        assert!(refused.contains("HTTP header"), "{refused}");
        assert!(!refused.contains("sk_live"), "{refused}");

        std::fs::write(&path, "sk_live_good_key\n").unwrap_or_default();
        let secrets = Secrets::load(&settings, InlineSecrets::default()).expect("a good key");
        std::fs::write(&path, "sk_live_bad\rkey").unwrap_or_default();
        assert!(
            secrets
                .reload()
                .iter()
                .any(|r| matches!(r, Reload::Failed { .. }))
        );
        assert_eq!(secrets.api_key().get().expose(), "sk_live_good_key");
    }

    fn private_key_jwt_settings(path: &Path, key_id: Option<&str>) -> Settings {
        let key_id = key_id.map_or(String::new(), |k| format!("key_id = \"{k}\"\n"));
        Settings::from_toml_with_env(
            &format!(
                "[server]\n[intellia]\norganization_id = \"org\"\napi_key_env = \"UNUSED\"\n\
                 [session.introspection]\nurl = \"https://auth.test/introspect\"\n\
                 client_auth = \"private_key_jwt\"\nclient_key_file = \"{}\"\n{key_id}",
                path.display()
            ),
            Vec::<(String, String)>::new(),
        )
        .expect("settings")
    }

    fn inline_api_key() -> InlineSecrets {
        InlineSecrets {
            api_key: Some("k".into()),
            ..InlineSecrets::default()
        }
    }

    #[test]
    fn the_client_key_file_is_loaded_checked_and_rotated() {
        let pkcs1 = include_str!("../../tests/fixtures/rsa-private-pkcs1.pem");
        let other = include_str!("../../tests/fixtures/rsa-private-2.pem");
        let path = temp_file("client-key.json", &key_json(pkcs1, "111"));
        let secrets = Secrets::load(&private_key_jwt_settings(&path, None), inline_api_key())
            .expect("a Zitadel key JSON loads");
        let cell = secrets
            .get(SecretKind::IntrospectionClientKey)
            .expect("registered");
        assert!(secrets.get(SecretKind::IntrospectionClient).is_none());
        // A rotated file that holds no usable key is refused; the last good key stays.
        std::fs::write(&path, "{\"type\":\"application\"}").unwrap_or_default();
        let seen = secrets.reload();
        assert!(
            matches!(
                &seen[..],
                [Reload::Failed {
                    kind: SecretKind::IntrospectionClientKey,
                    first: true,
                    ..
                }]
            ),
            "{seen:?}"
        );
        assert_eq!(secrets.stale(), vec!["session.introspection.client_key"]);
        assert_eq!(cell.get().generation(), 0);
        // A good new key is taken.
        std::fs::write(&path, key_json(other, "222")).unwrap_or_default();
        secrets.reload();
        assert_eq!(cell.get().generation(), 1);
        assert!(secrets.stale().is_empty());
    }

    #[test]
    fn a_bad_client_key_file_names_the_config_key_and_never_the_key() {
        let pkcs1 = include_str!("../../tests/fixtures/rsa-private-pkcs1.pem");
        let path = temp_file("client-key-mismatch.json", &key_json(pkcs1, "111"));
        let err = Secrets::load(
            &private_key_jwt_settings(&path, Some("999")),
            inline_api_key(),
        )
        .expect_err("key_id mismatch");
        assert!(
            err.starts_with("config key `session.introspection.client_key_file`: secret file "),
            "{err}"
        );
        assert!(
            err.contains("has keyId \"111\", but session.introspection.key_id is \"999\""),
            "{err}"
        );
        assert!(!err.contains(pkcs1.lines().nth(1).unwrap_or("-")), "{err}");
        let ec = include_str!("../../tests/fixtures/ec-private.pem");
        let path = temp_file("client-key-ec.pem", ec);
        let err = Secrets::load(
            &private_key_jwt_settings(&path, Some("1")),
            inline_api_key(),
        )
        .expect_err("EC key");
        assert!(
            err.contains("session.introspection.client_id must be set"),
            "{err}"
        );
    }
}
