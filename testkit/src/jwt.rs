//! Session tokens for the test issuers, signed with the fixture keys.

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::consts::{AUDIENCE, HS_SECRET, ISSUER, fixture};

pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Standard claims for a user of the HS256 test issuer, valid for an hour.
pub fn claims(sub: &str) -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": sub,
        "email": format!("{sub}@example.com"),
        "name": format!("User {sub}"),
        "iat": now(),
        "exp": now() + 3600,
    })
}

pub fn hs256(claims: &Value) -> String {
    sign(
        Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
    )
}

/// A valid HS256 session of the test issuer for `sub`.
pub fn session(sub: &str) -> String {
    hs256(&claims(sub))
}

/// The RSA key of `tests/fixtures/{key_file}` (`rsa-private.pem` is `rsa-1` of the JWKS).
pub fn rsa_key(key_file: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(&std::fs::read(fixture(key_file)).unwrap()).unwrap()
}

pub fn rs256(claims: &Value, kid: Option<&str>, key_file: &str) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = kid.map(str::to_owned);
    sign(header, claims, &rsa_key(key_file))
}

pub fn es256(claims: &Value, kid: Option<&str>) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = kid.map(str::to_owned);
    let pem = std::fs::read(fixture("ec-private.pem")).unwrap();
    sign(header, claims, &EncodingKey::from_ec_pem(&pem).unwrap())
}

/// Any header and claims, signed with `key`.
pub fn sign(header: Header, claims: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// Assembles a JWT from raw parts, for tokens no honest library would produce.
pub fn raw_jwt(header: &Value, claims: &Value, signature: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string()),
        b64.encode(signature)
    )
}
