//! The introspection client's private key for `private_key_jwt` (RFC 7523, Zitadel's "JWT"
//! authentication method) and the client assertions it signs.
//!
//! The key file is either Zitadel's downloaded application key JSON,
//! `{"type":"application","keyId":"…","key":"-----BEGIN RSA PRIVATE KEY-----…","appId":"…","clientId":"…"}`,
//! or a PEM RSA private key (PKCS#1 `RSA PRIVATE KEY` or PKCS#8 `PRIVATE KEY`) with the client id
//! and key id set in the configuration. Only RSA keys of at least 2048 bits are accepted: Zitadel
//! issues RSA application keys and verifies RS256 assertions, so an EC or Ed25519 key is refused
//! with a message that says so rather than producing assertions the provider would reject.
//!
//! This module sits below `secrets` and `session`: the secrets registry parses the file with it
//! when it loads and when it re-reads the file, so a broken rotated key keeps the last good one in
//! use, and the introspector signs with it. No error message contains key material.
//!
//! RS256 signing uses the `rsa` crate (through jsonwebtoken's `rust_crypto` provider), which
//! carries RUSTSEC-2023-0071: its private-key operations are not constant-time. See the README's
//! security notes for why the broker accepts that here.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// `client_assertion_type` of an RFC 7523 client assertion.
pub(crate) const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How long a client assertion is valid. Short, so a captured one is soon useless; long enough
/// for modest clock skew between the broker and the provider.
pub(crate) const ASSERTION_LIFETIME_SECS: u64 = 60;

/// Smaller RSA keys are refused: the client key here, and the keys of a JWKS.
pub const MIN_RSA_BITS: usize = 2048;

/// The size in bits of an RSA modulus written big-endian (leading zero bytes allowed), counted
/// exactly: a 2047-bit key is 256 bytes long too, and must not pass for 2048 bits.
pub(crate) fn modulus_bits(n: &[u8]) -> usize {
    let n = match n.iter().position(|b| *b != 0) {
        Some(first) => &n[first..],
        None => return 0,
    };
    (n.len() - 1) * 8 + (8 - n[0].leading_zeros() as usize)
}

/// The exact modulus size of a PEM RSA private key (PKCS#1 or PKCS#8), or `None` when the `rsa`
/// crate cannot read it.
fn pem_modulus_bits(pem: &str, pkcs1: bool) -> Option<usize> {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::traits::PublicKeyParts;
    let key = if pkcs1 {
        rsa::RsaPrivateKey::from_pkcs1_pem(pem).ok()?
    } else {
        rsa::RsaPrivateKey::from_pkcs8_pem(pem).ok()?
    };
    Some(modulus_bits(&key.n().to_bytes_be()))
}

/// Why a key file cannot be used. Phrased to follow "secret file PATH: ". Never contains key
/// material; ids (which are not secret) are shown to make a mismatch fixable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientKeyError {
    #[error(
        "is neither a Zitadel key JSON nor a PEM private key (it should start with `{{` or `-----BEGIN`)"
    )]
    Unrecognized,
    #[error("is not valid JSON (line {line}, column {column})")]
    Json { line: usize, column: usize },
    #[error(
        "is a Zitadel key of type {0}; introspection needs the key of an API application (\"type\":\"application\", from the application's Keys)"
    )]
    WrongType(String),
    #[error("has no `{0}` (a Zitadel key JSON has type, keyId, key, appId and clientId)")]
    MissingField(&'static str),
    #[error(
        "holds {0} key; only RSA keys are supported (client assertions are RS256, as Zitadel requires)"
    )]
    NotRsa(&'static str),
    #[error(
        "holds an encrypted private key; store it decrypted (e.g. `openssl pkey -in key.pem -out plain.pem`) and protect the file instead"
    )]
    Encrypted,
    #[error("holds a public key or certificate, not a private key")]
    NotPrivate,
    #[error("holds a PEM block of an unsupported kind; expected RSA PRIVATE KEY or PRIVATE KEY")]
    UnsupportedPem,
    #[error("holds a private key that cannot be read as an RSA key")]
    BadKey,
    #[error("holds a {0}-bit RSA key; at least 2048 bits are required")]
    TooSmall(usize),
    #[error(
        "is a PEM key, so session.introspection.client_id must be set (the client id at the provider)"
    )]
    PemNeedsClientId,
    #[error(
        "is a PEM key, so session.introspection.key_id must be set (the key's id at the provider, sent as `kid`)"
    )]
    PemNeedsKeyId,
    #[error("has clientId {file:?}, but session.introspection.client_id is {config:?}")]
    ClientIdMismatch { file: String, config: String },
    #[error("has keyId {file:?}, but session.introspection.key_id is {config:?}")]
    KeyIdMismatch { file: String, config: String },
    #[error("could not sign a client assertion")]
    Signing,
}

/// An RSA private key with the ids a client assertion names. `Debug` shows the ids only.
pub struct ClientKey {
    client_id: String,
    key_id: String,
    key: EncodingKey,
    bits: usize,
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKey")
            .field("client_id", &self.client_id)
            .field("key_id", &self.key_id)
            .field("bits", &self.bits)
            .field("key", &"[REDACTED]")
            .finish()
    }
}

/// Zitadel's downloaded key file. Fields are optional here so that a missing one gets its own
/// message; unknown fields are ignored (Zitadel may add some, e.g. an expiration date).
#[derive(Deserialize)]
struct ZitadelKeyFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(rename = "keyId")]
    key_id: Option<String>,
    key: Option<SecretString>,
    #[serde(rename = "clientId")]
    client_id: Option<String>,
}

/// The claims of an RFC 7523 client assertion.
#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
    jti: String,
}

impl ClientKey {
    /// Parses a key file's text. `client_id` and `key_id` are the configuration's values: with a
    /// PEM key both are required; with Zitadel's JSON they are optional and, when set, must equal
    /// the file's `clientId` and `keyId`.
    pub fn parse(
        text: &str,
        client_id: Option<&str>,
        key_id: Option<&str>,
    ) -> Result<ClientKey, ClientKeyError> {
        let text = text.trim_start_matches('\u{feff}').trim();
        if text.starts_with('{') {
            Self::parse_json(text, client_id, key_id)
        } else if text.starts_with("-----BEGIN ") {
            let client_id = client_id.ok_or(ClientKeyError::PemNeedsClientId)?;
            let key_id = key_id.ok_or(ClientKeyError::PemNeedsKeyId)?;
            Self::from_pem(text, client_id.to_owned(), key_id.to_owned())
        } else {
            Err(ClientKeyError::Unrecognized)
        }
    }

    fn parse_json(
        text: &str,
        client_id: Option<&str>,
        key_id: Option<&str>,
    ) -> Result<ClientKey, ClientKeyError> {
        // serde_json's messages can quote the input; only the position is reported.
        let file: ZitadelKeyFile =
            serde_json::from_str(text).map_err(|e| ClientKeyError::Json {
                line: e.line(),
                column: e.column(),
            })?;
        match file.kind.as_deref() {
            Some("application") => {}
            Some(other) => return Err(ClientKeyError::WrongType(printable(other))),
            None => return Err(ClientKeyError::MissingField("type")),
        }
        let file_key_id = nonempty(file.key_id).ok_or(ClientKeyError::MissingField("keyId"))?;
        let pem = file.key.ok_or(ClientKeyError::MissingField("key"))?;
        let file_client_id =
            nonempty(file.client_id).ok_or(ClientKeyError::MissingField("clientId"))?;
        if let Some(config) = client_id
            && config != file_client_id
        {
            return Err(ClientKeyError::ClientIdMismatch {
                file: printable(&file_client_id),
                config: config.to_owned(),
            });
        }
        if let Some(config) = key_id
            && config != file_key_id
        {
            return Err(ClientKeyError::KeyIdMismatch {
                file: printable(&file_key_id),
                config: config.to_owned(),
            });
        }
        let pem = pem.expose_secret().trim();
        if !pem.starts_with("-----BEGIN ") {
            return Err(ClientKeyError::BadKey);
        }
        Self::from_pem(pem, file_client_id, file_key_id)
    }

    fn from_pem(pem: &str, client_id: String, key_id: String) -> Result<ClientKey, ClientKeyError> {
        let label = pem
            .strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.split_once("-----"))
            .map(|(label, _)| label)
            .ok_or(ClientKeyError::Unrecognized)?;
        let key = match label {
            "RSA PRIVATE KEY" if pem.contains("Proc-Type: 4,ENCRYPTED") => {
                return Err(ClientKeyError::Encrypted);
            }
            "RSA PRIVATE KEY" => {
                EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|_| ClientKeyError::BadKey)?
            }
            "PRIVATE KEY" => match EncodingKey::from_rsa_pem(pem.as_bytes()) {
                Ok(key) => key,
                Err(_) if EncodingKey::from_ec_pem(pem.as_bytes()).is_ok() => {
                    return Err(ClientKeyError::NotRsa("an EC"));
                }
                Err(_) if EncodingKey::from_ed_pem(pem.as_bytes()).is_ok() => {
                    return Err(ClientKeyError::NotRsa("an Ed25519"));
                }
                Err(_) => return Err(ClientKeyError::BadKey),
            },
            "EC PRIVATE KEY" => return Err(ClientKeyError::NotRsa("an EC")),
            "ENCRYPTED PRIVATE KEY" => return Err(ClientKeyError::Encrypted),
            "PUBLIC KEY" | "RSA PUBLIC KEY" | "CERTIFICATE" => {
                return Err(ClientKeyError::NotPrivate);
            }
            _ => return Err(ClientKeyError::UnsupportedPem),
        };
        // jsonwebtoken only checks the ASN.1 framing; signing once proves the key is a usable
        // RSA key. Its size is read from the modulus itself: a signature's length is whole bytes,
        // so it would round a 2041-2047-bit key up to 2048.
        jsonwebtoken::crypto::sign(b"key check", &key, Algorithm::RS256)
            .map_err(|_| ClientKeyError::BadKey)?;
        let bits =
            pem_modulus_bits(pem, label == "RSA PRIVATE KEY").ok_or(ClientKeyError::BadKey)?;
        if bits < MIN_RSA_BITS {
            return Err(ClientKeyError::TooSmall(bits));
        }
        Ok(ClientKey {
            client_id,
            key_id,
            key,
            bits,
        })
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The modulus size in bits.
    pub fn bits(&self) -> usize {
        self.bits
    }

    /// A fresh client assertion: RS256, header `kid` = key id, `iss` = `sub` = client id,
    /// `aud` = `audience` (the provider's issuer), `iat` = `now`, `exp` = `now` + 60 s, and a
    /// random 128-bit `jti`, so no two assertions are alike and a replay is detectable.
    pub fn assertion(&self, audience: &str, now: u64) -> Result<String, ClientKeyError> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.key_id.clone());
        header.typ = Some("JWT".to_owned());
        let mut jti = [0u8; 16];
        rand::rng().fill_bytes(&mut jti);
        let claims = AssertionClaims {
            iss: &self.client_id,
            sub: &self.client_id,
            aud: audience,
            iat: now,
            exp: now.saturating_add(ASSERTION_LIFETIME_SECS),
            jti: crate::hex::encode(&jti),
        };
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(|_| ClientKeyError::Signing)
    }
}

fn nonempty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

/// A value from the file, made safe for a one-line error message.
fn printable(value: &str) -> String {
    value.chars().filter(|c| !c.is_control()).take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PKCS8: &str = include_str!("../../tests/fixtures/rsa-private.pem");
    const PKCS1: &str = include_str!("../../tests/fixtures/rsa-private-pkcs1.pem");
    const PUBLIC: &str = include_str!("../../tests/fixtures/rsa-public.pem");
    const SMALL: &str = include_str!("../../tests/fixtures/rsa-1024-private.pem");
    const ALMOST: &str = include_str!("../../tests/fixtures/rsa-2047-private.pem");
    const EC_PKCS8: &str = include_str!("../../tests/fixtures/ec-private.pem");
    const EC_SEC1: &str = include_str!("../../tests/fixtures/ec-private-sec1.pem");

    fn zitadel_json(key: &str) -> serde_json::Value {
        json!({
            "type": "application",
            "keyId": "288122063462782113",
            "key": key,
            "appId": "681843748352897652",
            "clientId": "broker-jwt"
        })
    }

    fn parse_json(value: &serde_json::Value) -> Result<ClientKey, ClientKeyError> {
        ClientKey::parse(&value.to_string(), None, None)
    }

    /// The assertion's header and claims, checked against the public key.
    fn verified(assertion: &str) -> (Header, serde_json::Value) {
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(PUBLIC.as_bytes()).expect("public key");
        let mut validation = jsonwebtoken::Validation::new(Algorithm::RS256);
        validation.set_audience(&["https://auth.example.com"]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "sub", "aud", "jti"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(assertion, &key, &validation)
            .expect("the assertion verifies with the public key");
        (data.header, data.claims)
    }

    #[test]
    fn zitadel_key_json_with_its_pkcs1_key() {
        let key = parse_json(&zitadel_json(PKCS1)).expect("Zitadel's key file");
        assert_eq!(key.client_id(), "broker-jwt");
        assert_eq!(key.key_id(), "288122063462782113");
        assert_eq!(key.bits(), 2048);
    }

    #[test]
    fn a_2047_bit_key_is_not_2048_bits() {
        assert_eq!(
            ClientKey::parse(ALMOST, Some("broker"), Some("kid-1")).unwrap_err(),
            ClientKeyError::TooSmall(2047)
        );
        assert_eq!(
            parse_json(&zitadel_json(ALMOST)).unwrap_err().to_string(),
            "holds a 2047-bit RSA key; at least 2048 bits are required"
        );
    }

    #[test]
    fn zitadel_key_json_with_matching_config_ids_and_a_pkcs8_key() {
        let key = ClientKey::parse(
            &zitadel_json(PKCS8).to_string(),
            Some("broker-jwt"),
            Some("288122063462782113"),
        )
        .expect("ids agree");
        assert_eq!(key.client_id(), "broker-jwt");
    }

    #[test]
    fn pem_keys_pkcs1_and_pkcs8_take_their_ids_from_the_config() {
        for pem in [PKCS1, PKCS8] {
            let key = ClientKey::parse(pem, Some("broker"), Some("kid-1")).expect("PEM key");
            assert_eq!((key.client_id(), key.key_id()), ("broker", "kid-1"));
        }
    }

    #[test]
    fn pem_keys_need_client_id_and_key_id() {
        assert_eq!(
            ClientKey::parse(PKCS8, None, Some("kid")).unwrap_err(),
            ClientKeyError::PemNeedsClientId
        );
        assert_eq!(
            ClientKey::parse(PKCS1, Some("broker"), None).unwrap_err(),
            ClientKeyError::PemNeedsKeyId
        );
    }

    #[test]
    fn config_ids_must_match_the_key_json() {
        let text = zitadel_json(PKCS1).to_string();
        let err = ClientKey::parse(&text, None, Some("999")).unwrap_err();
        assert_eq!(
            err,
            ClientKeyError::KeyIdMismatch {
                file: "288122063462782113".into(),
                config: "999".into()
            }
        );
        assert!(err.to_string().contains("session.introspection.key_id"));
        let err = ClientKey::parse(&text, Some("other"), None).unwrap_err();
        assert!(matches!(err, ClientKeyError::ClientIdMismatch { .. }));
        assert!(err.to_string().contains("session.introspection.client_id"));
    }

    #[test]
    fn bad_json_reports_the_position_only() {
        let err =
            ClientKey::parse("{\"type\": \"application\", \"key\": \"sec", None, None).unwrap_err();
        assert!(matches!(err, ClientKeyError::Json { line: 1, .. }), "{err}");
        assert!(!err.to_string().contains("sec\""));
        // A field of the wrong JSON type is a JSON error too, without echoing the value.
        let err =
            parse_json(&json!({"type": "application", "keyId": 7, "key": PKCS1})).unwrap_err();
        assert!(matches!(err, ClientKeyError::Json { .. }));
        assert!(!err.to_string().contains("PRIVATE"));
    }

    #[test]
    fn wrong_type_is_refused_with_the_type_named() {
        let mut file = zitadel_json(PKCS1);
        file["type"] = json!("serviceaccount");
        let err = parse_json(&file).unwrap_err();
        assert_eq!(err, ClientKeyError::WrongType("serviceaccount".into()));
        assert!(err.to_string().contains("API application"));
    }

    #[test]
    fn missing_fields_are_named() {
        for field in ["type", "keyId", "key", "clientId"] {
            let mut file = zitadel_json(PKCS1);
            file.as_object_mut().map(|o| o.remove(field));
            assert_eq!(
                parse_json(&file).unwrap_err(),
                ClientKeyError::MissingField(field),
                "{field}"
            );
        }
        let mut file = zitadel_json(PKCS1);
        file["clientId"] = json!(" ");
        assert_eq!(
            parse_json(&file).unwrap_err(),
            ClientKeyError::MissingField("clientId")
        );
        // appId is not needed for an assertion.
        let mut file = zitadel_json(PKCS1);
        file.as_object_mut().map(|o| o.remove("appId"));
        assert!(parse_json(&file).is_ok());
    }

    #[test]
    fn ec_and_ed25519_keys_are_refused_clearly() {
        for pem in [EC_PKCS8, EC_SEC1] {
            let err = ClientKey::parse(pem, Some("b"), Some("k")).unwrap_err();
            assert_eq!(err, ClientKeyError::NotRsa("an EC"));
            assert!(err.to_string().contains("only RSA keys are supported"));
            assert_eq!(
                parse_json(&zitadel_json(pem)).unwrap_err(),
                ClientKeyError::NotRsa("an EC")
            );
        }
    }

    #[test]
    fn other_pem_contents_are_refused() {
        let ids = (Some("b"), Some("k"));
        assert_eq!(
            ClientKey::parse(PUBLIC, ids.0, ids.1).unwrap_err(),
            ClientKeyError::NotPrivate
        );
        assert_eq!(
            ClientKey::parse(SMALL, ids.0, ids.1).unwrap_err(),
            ClientKeyError::TooSmall(1024)
        );
        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert_eq!(
            ClientKey::parse(encrypted, ids.0, ids.1).unwrap_err(),
            ClientKeyError::Encrypted
        );
        let garbage = "-----BEGIN RSA PRIVATE KEY-----\nTUlJ\n-----END RSA PRIVATE KEY-----\n";
        assert_eq!(
            ClientKey::parse(garbage, ids.0, ids.1).unwrap_err(),
            ClientKeyError::BadKey
        );
        // PKCS#1 framing around a PKCS#8 body is not an RSA key.
        let mislabelled = PKCS8.replace("PRIVATE KEY", "RSA PRIVATE KEY");
        assert_eq!(
            ClientKey::parse(&mislabelled, ids.0, ids.1).unwrap_err(),
            ClientKeyError::BadKey
        );
        assert_eq!(
            ClientKey::parse("", ids.0, ids.1).unwrap_err(),
            ClientKeyError::Unrecognized
        );
        assert_eq!(
            ClientKey::parse("key: value", ids.0, ids.1).unwrap_err(),
            ClientKeyError::Unrecognized
        );
        assert_eq!(
            parse_json(&zitadel_json("not a pem")).unwrap_err(),
            ClientKeyError::BadKey
        );
    }

    #[test]
    fn errors_and_debug_never_show_key_material() {
        let body_line = PKCS1.lines().nth(1).expect("a base64 line");
        let key = parse_json(&zitadel_json(PKCS1)).expect("key");
        assert!(!format!("{key:?}").contains(body_line));
        let mut file = zitadel_json(PKCS1);
        file["keyId"] = json!(["x"]);
        let err = parse_json(&file).unwrap_err();
        assert!(!err.to_string().contains(body_line));
    }

    #[test]
    fn assertions_are_fresh_short_lived_and_verify() {
        let key = ClientKey::parse(PKCS8, Some("broker-jwt"), Some("kid-7")).expect("key");
        let now = jsonwebtoken::get_current_timestamp();
        let first = key
            .assertion("https://auth.example.com", now)
            .expect("signs");
        let second = key
            .assertion("https://auth.example.com", now)
            .expect("signs");
        let (header, claims) = verified(&first);
        assert_eq!(header.alg, Algorithm::RS256);
        assert_eq!(header.kid.as_deref(), Some("kid-7"));
        assert_eq!(claims["iss"], "broker-jwt");
        assert_eq!(claims["sub"], "broker-jwt");
        assert_eq!(claims["aud"], "https://auth.example.com");
        assert_eq!(claims["iat"], now);
        assert_eq!(claims["exp"], now + ASSERTION_LIFETIME_SECS);
        let jti = claims["jti"].as_str().expect("jti");
        assert_eq!(jti.len(), 32);
        let (_, again) = verified(&second);
        assert_ne!(
            again["jti"], claims["jti"],
            "every assertion has its own jti"
        );
    }
}
