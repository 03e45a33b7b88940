//! Secret material (the Intellia API key, the backend secret, HS256 session secrets): read from
//! files (preferred) or named environment variables, held in `secrecy` types, exposed only where a
//! header or a MAC is built.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// Why a secret could not be loaded; always names the path or variable, never the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("secret environment variable {name}: {reason}")]
    Env { name: String, reason: &'static str },
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

/// A secret that can be swapped while requests are using it: readers take a cheap `Arc` snapshot
/// and never hold the lock across an await.
pub struct SecretCell {
    source: SecretSource,
    current: RwLock<Arc<SecretString>>,
    fingerprint: RwLock<[u8; 32]>,
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
        let value = source.read()?;
        Ok(Self::with_value(source, value))
    }

    pub fn with_value(source: SecretSource, value: SecretString) -> SecretCell {
        let fingerprint = fingerprint(&value);
        SecretCell {
            source,
            current: RwLock::new(Arc::new(value)),
            fingerprint: RwLock::new(fingerprint),
        }
    }

    pub fn source(&self) -> &SecretSource {
        &self.source
    }

    pub fn get(&self) -> Arc<SecretString> {
        // A poisoned lock only means a writer panicked mid-swap of an Arc; the Arc itself is intact.
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// SHA-256 of the current value: lets callers compare secrets in constant time without
    /// exposing them, and detect rotation.
    pub fn fingerprint(&self) -> [u8; 32] {
        match self.fingerprint.read() {
            Ok(guard) => *guard,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    /// Re-reads the source. Returns `Ok(true)` when the value changed, `Ok(false)` when it is the
    /// same, and an error (keeping the last good value) when the source is unreadable or empty.
    pub fn reload(&self) -> Result<bool, SecretError> {
        if self.source == SecretSource::Inline {
            return Ok(false);
        }
        let value = self.source.read()?;
        let new_fp = fingerprint(&value);
        if new_fp == self.fingerprint() {
            return Ok(false);
        }
        match self.current.write() {
            Ok(mut guard) => *guard = Arc::new(value),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(value),
        }
        match self.fingerprint.write() {
            Ok(mut guard) => *guard = new_fp,
            Err(poisoned) => *poisoned.into_inner() = new_fp,
        }
        Ok(true)
    }
}

pub fn fingerprint(value: &SecretString) -> [u8; 32] {
    Sha256::digest(value.expose_secret().as_bytes()).into()
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
        assert_eq!(cell.get().expose_secret(), "sk_live_abc");
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
    fn reload_keeps_last_good_value_when_file_empties() {
        let path = temp_file("rotating", "first");
        let cell = SecretCell::load(SecretSource::File(path.clone())).expect("loads");
        std::fs::write(&path, "second").unwrap_or_default();
        assert!(cell.reload().expect("reload"));
        assert_eq!(cell.get().expose_secret(), "second");
        std::fs::write(&path, "").unwrap_or_default();
        assert!(cell.reload().is_err());
        assert_eq!(cell.get().expose_secret(), "second");
    }
}
