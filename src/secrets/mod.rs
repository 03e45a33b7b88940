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
use zeroize::Zeroizing;

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
                let value = Zeroizing::new(std::env::var(name).map_err(|e| SecretError::Env {
                    name: name.clone(),
                    reason: match e {
                        std::env::VarError::NotPresent => "is not set",
                        std::env::VarError::NotUnicode(_) => "is not valid UTF-8",
                    },
                })?);
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

/// Secret files larger than this are refused. The largest real one, a Zitadel key JSON holding a
/// 4096-bit PEM key, is under 4 KiB; a path to a device or a log file is a mistake.
const MAX_SECRET_FILE_BYTES: usize = 64 * 1024;

/// Reads a secret file, which happens every `secret_poll_secs` for every file. The bytes go into
/// one buffer of fixed size that is wiped when dropped, and from there into the `SecretString`
/// (wiped too): no copy of a secret is left behind in freed memory, as growing a `Vec` or
/// building a `String` from it would leave one.
fn read_secret_file(path: &Path) -> Result<SecretString, SecretError> {
    use std::io::Read;
    let err = |reason: String| SecretError::File {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = std::fs::File::open(path).map_err(|e| err(describe_io(&e)))?;
    let mut buffer = Zeroizing::new(vec![0u8; MAX_SECRET_FILE_BYTES + 1]);
    let mut filled = 0;
    loop {
        if filled == buffer.len() {
            return Err(err("is larger than 64 KiB".to_owned()));
        }
        match file.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(err(describe_io(&e))),
        }
    }
    let text =
        std::str::from_utf8(&buffer[..filled]).map_err(|_| err("is not valid UTF-8".to_owned()))?;
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
        self.reload_unless(|_| None)
    }

    /// [`SecretCell::reload`], refusing a changed value whose fingerprint `refuse` objects to
    /// (with its reason) before it is ever in use: a rule that compares secrets with each other.
    pub(crate) fn reload_unless(
        &self,
        refuse: impl Fn(&[u8; 32]) -> Option<String>,
    ) -> Result<bool, SecretError> {
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
        if let Some(reason) = refuse(&new_fp) {
            return Err(SecretError::Invalid {
                source_name: format!("{:?}", self.source),
                reason,
            });
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
        let header = Zeroizing::new(format!("Bearer {}", key.expose_secret()));
        reqwest::header::HeaderValue::from_str(&header)
            .map(drop)
            .map_err(|_| {
                "holds characters an HTTP header cannot carry (only printable ASCII is sent)"
                    .to_owned()
            })
    })
}

/// Shared secrets shorter than this are refused, at start-up and on rotation: a short HS256
/// secret can be brute-forced offline from one session token, a short backend secret online, a
/// short cache secret offline from one sealed token in Redis.
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

/// The first two HS256 issuers whose secrets are equal: with one secret, either site could sign
/// sessions the other's issuer accepts, for any user.
fn shared_hs256(entries: &[Entry]) -> Option<(&Entry, &Entry)> {
    let hs256: Vec<(&Entry, [u8; 32])> = entries
        .iter()
        .filter(|e| matches!(e.kind, SecretKind::SessionHs256(_)))
        .map(|e| (e, *e.cell.get().fingerprint()))
        .collect();
    hs256.iter().enumerate().find_map(|(i, (b, fp_b))| {
        hs256[..i]
            .iter()
            .find(|(_, fp_a)| fp_a == fp_b)
            .map(|(a, _)| (*a, *b))
    })
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
            // Key material for the cipher of every cached token: a short one is guessed from one
            // entry in Redis offline, so it is held to the shared-secret minimum.
            add(
                SecretKind::RedisCache,
                "redis.cache_secret_file".into(),
                SecretCell::load_at_least(
                    SecretSource::File(path.clone()),
                    MIN_SHARED_SECRET_BYTES,
                ),
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
        if let Some((a, b)) = shared_hs256(&entries) {
            return Err(format!(
                "config key `{}`: holds the same secret as {}; each HS256 issuer needs a secret of its own, or either site could sign sessions for the other's users",
                b.key, a.key
            ));
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
    /// A rotated HS256 secret equal to another issuer's is refused like an unreadable one.
    pub fn reload(&self) -> Vec<Reload> {
        let mut seen = Vec::new();
        for entry in &self.entries {
            let outcome = match entry.kind {
                SecretKind::SessionHs256(_) => entry.cell.reload_unless(|fingerprint| {
                    self.entries
                        .iter()
                        .filter(|other| {
                            matches!(other.kind, SecretKind::SessionHs256(_))
                                && other.kind != entry.kind
                        })
                        .find(|other| other.cell.get().fingerprint() == fingerprint)
                        .map(|other| {
                            format!(
                                "holds the same secret as {}; each HS256 issuer needs a secret of its own",
                                other.key
                            )
                        })
                }),
                _ => entry.cell.reload(),
            };
            match outcome {
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
mod tests;
