//! Configuration values parsed once, at load time, into the types the rest of the broker uses.
//! Each type refuses what it cannot represent, so no other module re-checks a config string: an
//! error here becomes one line naming the key (the `config` crate adds the key path).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An integer of type `T` in `MIN..=MAX`, so each use gets the integer type it needs with no
/// conversion that could fail. The bounds are `u64` whatever `T` is (a const parameter's type
/// cannot depend on another parameter); a `MAX` that `T` cannot hold is a compile error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(try_from = "u64", into = "u64", bound = "T: BoundedInt")]
pub struct Bounded<T, const MIN: u64, const MAX: u64>(T);

/// The integer types a [`Bounded`] can hold: the unsigned ones.
pub trait BoundedInt: sealed::Int + Copy + Ord + fmt::Debug + fmt::Display {}

mod sealed {
    /// Sealed, so `narrow` is only ever one of the casts below.
    pub trait Int {
        /// The type's largest value, widened.
        const LIMIT: u64;
        /// `value as Self`: exact for every value up to `LIMIT`, which callers check first.
        fn narrow(value: u64) -> Self;
        fn widen(self) -> u64;
    }
}

macro_rules! bounded_int {
    ($($int:ty),*) => {$(
        impl sealed::Int for $int {
            const LIMIT: u64 = <$int>::MAX as u64;
            fn narrow(value: u64) -> Self {
                value as $int
            }
            fn widen(self) -> u64 {
                self as u64
            }
        }
        impl BoundedInt for $int {}
    )*};
}

bounded_int!(u8, u16, u32, u64, usize);

// The `usize` casts above are exact only while it is no wider than `u64`.
const _: () = assert!(usize::BITS <= u64::BITS);

impl<T: BoundedInt, const MIN: u64, const MAX: u64> Bounded<T, MIN, MAX> {
    /// The constant `V`. Outside `MIN..=MAX`, or with a `MAX` that `T` cannot hold, it is a
    /// compile error where the call is instantiated: `cargo build` and `cargo test` stop there
    /// (`cargo check`, which instantiates nothing, does not).
    ///
    /// ```
    /// let _ = intellia_token_broker::testing::Bounded::<u8, 0, 10>::new::<10>();
    /// ```
    ///
    /// ```compile_fail,E0080
    /// let _ = intellia_token_broker::testing::Bounded::<u8, 0, 10>::new::<11>();
    /// ```
    ///
    /// ```compile_fail,E0080
    /// let _ = intellia_token_broker::testing::Bounded::<u8, 0, 256>::new::<1>();
    /// ```
    pub fn new<const V: u64>() -> Self {
        const {
            assert!(
                MIN <= V && V <= MAX && MAX <= T::LIMIT,
                "a Bounded constant outside its range, or a MAX its type cannot hold"
            );
        };
        Bounded(T::narrow(V))
    }

    pub fn get(self) -> T {
        self.0
    }
}

impl<T: BoundedInt, const MIN: u64, const MAX: u64> TryFrom<u64> for Bounded<T, MIN, MAX> {
    type Error = String;
    fn try_from(value: u64) -> Result<Self, String> {
        const { assert!(MAX <= T::LIMIT, "a Bounded whose MAX its type cannot hold") };
        if (MIN..=MAX).contains(&value) {
            Ok(Bounded(T::narrow(value)))
        } else if MIN == 0 {
            Err(format!("must be at most {MAX}"))
        } else {
            Err(format!("must be between {MIN} and {MAX}"))
        }
    }
}

impl<T: BoundedInt, const MIN: u64, const MAX: u64> From<Bounded<T, MIN, MAX>> for u64 {
    fn from(value: Bounded<T, MIN, MAX>) -> u64 {
        value.0.widen()
    }
}

impl<T: BoundedInt, const MIN: u64, const MAX: u64> fmt::Display for Bounded<T, MIN, MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// An `http://` or `https://` URL with a host and no credentials in it (credentials belong in the
/// secret files).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct HttpUrl(reqwest::Url);

impl HttpUrl {
    pub fn url(&self) -> &reqwest::Url {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl TryFrom<String> for HttpUrl {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let url = reqwest::Url::parse(&text).map_err(|e| format!("not a valid URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err("must be an http:// or https:// URL with a host".to_owned());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry credentials; use the secret files instead".to_owned());
        }
        Ok(HttpUrl(url))
    }
}

impl From<HttpUrl> for String {
    fn from(url: HttpUrl) -> String {
        url.0.into()
    }
}

/// Whether a URL's host is this machine: a loopback address, or `localhost`. Plain HTTP to it
/// never crosses a network.
pub(crate) fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// Intellia's base URL: an [`HttpUrl`] that may carry a path prefix but no query or fragment,
/// because `/orgs/{id}/assume-role` is appended to it, and `https://` unless its host is
/// loopback: the API key travels there with every mint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct BaseUrl(HttpUrl);

impl BaseUrl {
    pub fn url(&self) -> &reqwest::Url {
        self.0.url()
    }
}

impl TryFrom<String> for BaseUrl {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let url = HttpUrl::try_from(text)?;
        // The mint path would land in the query or fragment and go to the base URL itself.
        if url.url().query().is_some() || url.url().fragment().is_some() {
            return Err("must not have a query (`?`) or fragment (`#`)".to_owned());
        }
        if url.url().scheme() == "http" && !is_loopback(url.url()) {
            return Err(
                "must be https:// (the API key travels there); plain http:// only to a loopback host (127.0.0.1, ::1, localhost)"
                    .to_owned(),
            );
        }
        Ok(BaseUrl(url))
    }
}

impl From<BaseUrl> for String {
    fn from(url: BaseUrl) -> String {
        url.0.into()
    }
}

/// A `redis://` or `rediss://` URL. Its text may hold a password, so neither the text nor the
/// parser's message ever appears in an error, and `Debug` redacts the password.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct RedisUrl(reqwest::Url);

impl RedisUrl {
    pub fn url(&self) -> &reqwest::Url {
        &self.0
    }

    pub fn is_tls(&self) -> bool {
        self.0.scheme() == "rediss"
    }

    /// The ACL user name the URL carries, if any.
    pub fn username(&self) -> Option<&str> {
        Some(self.0.username()).filter(|u| !u.is_empty())
    }

    pub fn has_password(&self) -> bool {
        self.0.password().is_some()
    }

    /// The database number in the path (`/0`), if any.
    pub fn database(&self) -> Option<&str> {
        Some(self.0.path().trim_matches('/')).filter(|p| !p.is_empty())
    }

    /// The URL with its password replaced, for display.
    pub fn redacted(&self) -> String {
        let mut shown = self.0.clone();
        if shown.password().is_some() {
            // Only fails for URLs that cannot have a password, which this one has.
            let _ = shown.set_password(Some("REDACTED"));
        }
        shown.into()
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl TryFrom<String> for RedisUrl {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        if !text.starts_with("redis://") && !text.starts_with("rediss://") {
            return Err("must start with redis:// or rediss://".to_owned());
        }
        match reqwest::Url::parse(&text) {
            // `#insecure` is how the Redis client is told to skip certificate checks: never.
            Ok(url) if url.fragment().is_some() => Err(
                "must not carry a `#fragment` (`#insecure` would skip certificate checks, which the broker refuses)"
                    .to_owned(),
            ),
            Ok(url) if url.host_str().is_some_and(|h| !h.is_empty()) => Ok(RedisUrl(url)),
            _ => {
                Err("is not a valid URL (redis[s]://[user[:password]@]host[:port][/db])".to_owned())
            }
        }
    }
}

impl From<RedisUrl> for String {
    fn from(url: RedisUrl) -> String {
        url.0.into()
    }
}

/// A fraction in `0.0..=1.0` (a trace sampling ratio).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Deserialize, Serialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Ratio(f64);

impl Ratio {
    pub const ONE: Ratio = Ratio(1.0);

    pub fn get(self) -> f64 {
        self.0
    }
}

impl TryFrom<f64> for Ratio {
    type Error = String;
    fn try_from(value: f64) -> Result<Self, String> {
        if (0.0..=1.0).contains(&value) {
            Ok(Ratio(value))
        } else {
            Err("must be between 0.0 and 1.0".to_owned())
        }
    }
}

impl From<Ratio> for f64 {
    fn from(value: Ratio) -> f64 {
        value.0
    }
}

/// The `service.name` traces are reported under: 1-255 printable characters.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceName(String);

impl ServiceName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ServiceName {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        if text.trim().is_empty() || text.len() > 255 || text.chars().any(char::is_control) {
            return Err("must be 1-255 printable characters".to_owned());
        }
        Ok(ServiceName(text))
    }
}

impl From<ServiceName> for String {
    fn from(name: ServiceName) -> String {
        name.0
    }
}

/// An algorithm a session JWT may be signed with. `none` (and every HMAC but HS256) has no
/// representation, so it can never be allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct JwtAlgorithm(jsonwebtoken::Algorithm);

/// The asymmetric algorithms the verifier supports, by name.
pub(crate) const ASYMMETRIC_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

impl JwtAlgorithm {
    pub fn get(self) -> jsonwebtoken::Algorithm {
        self.0
    }

    pub fn is_symmetric(self) -> bool {
        self.0 == jsonwebtoken::Algorithm::HS256
    }

    /// Parses a JOSE `alg` name as a token header carries it.
    pub fn from_name(name: &str) -> Option<JwtAlgorithm> {
        use jsonwebtoken::Algorithm as A;
        Some(JwtAlgorithm(match name {
            "HS256" => A::HS256,
            "RS256" => A::RS256,
            "RS384" => A::RS384,
            "RS512" => A::RS512,
            "PS256" => A::PS256,
            "PS384" => A::PS384,
            "PS512" => A::PS512,
            "ES256" => A::ES256,
            "ES384" => A::ES384,
            "EdDSA" => A::EdDSA,
            _ => return None,
        }))
    }
}

impl TryFrom<String> for JwtAlgorithm {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        Self::from_name(&name).ok_or_else(|| {
            format!("`{name}` is not accepted; use HS256 or one of {ASYMMETRIC_ALGORITHMS:?}")
        })
    }
}

impl From<JwtAlgorithm> for String {
    fn from(alg: JwtAlgorithm) -> String {
        format!("{:?}", alg.0)
    }
}

/// A `claim=value` condition: a string (number, boolean) claim equal to the value, or an array
/// claim containing it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct RequiredClaim {
    pub claim: String,
    pub value: String,
}

impl TryFrom<String> for RequiredClaim {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        match text.split_once('=') {
            Some((claim, value)) if !claim.is_empty() && !value.is_empty() => Ok(RequiredClaim {
                claim: claim.to_owned(),
                value: value.to_owned(),
            }),
            _ => Err("must look like `claim=value`, e.g. `groups=chat-users`".to_owned()),
        }
    }
}

impl From<RequiredClaim> for String {
    fn from(c: RequiredClaim) -> String {
        format!("{}={}", c.claim, c.value)
    }
}

/// A claim name: a flat name (`email`, `urn:zitadel:iam:org:project:roles`) or a dotted path into
/// nested objects (`realm_access.roles`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClaimName(String);

impl ClaimName {
    pub fn of(name: &str) -> ClaimName {
        ClaimName(name.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ClaimName {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
            return Err("must be 1-256 printable characters".to_owned());
        }
        Ok(ClaimName(name))
    }
}

impl From<ClaimName> for String {
    fn from(c: ClaimName) -> String {
        c.0
    }
}

/// A role name required of a session.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct RoleName(String);

impl RoleName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RoleName {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
            return Err("a role name must be 1-256 printable characters".to_owned());
        }
        Ok(RoleName(name))
    }
}

impl From<RoleName> for String {
    fn from(r: RoleName) -> String {
        r.0
    }
}

/// A prefix put in front of every user id of one session source, at most 64 printable characters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserIdPrefix(String);

impl UserIdPrefix {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TryFrom<String> for UserIdPrefix {
    type Error = String;
    fn try_from(prefix: String) -> Result<Self, String> {
        if prefix.len() > 64 || prefix.chars().any(char::is_control) {
            return Err("must be at most 64 printable characters".to_owned());
        }
        Ok(UserIdPrefix(prefix))
    }
}

impl From<UserIdPrefix> for String {
    fn from(p: UserIdPrefix) -> String {
        p.0
    }
}

/// A token made of letters, digits and a few punctuation characters: an organization id, a
/// cookie name, a Redis key prefix.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Word<const MAX: usize, const KIND: char>(String);

/// `KIND` tells which punctuation is allowed and how the error reads.
pub(crate) const ORG_ID: char = 'o';
pub(crate) const COOKIE: char = 'c';
pub(crate) const KEY_PREFIX: char = 'k';

impl<const MAX: usize, const KIND: char> Word<MAX, KIND> {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn punctuation() -> &'static [u8] {
        match KIND {
            KEY_PREFIX => b"-_.:",
            _ => b"-_.",
        }
    }
}

impl<const MAX: usize, const KIND: char> TryFrom<String> for Word<MAX, KIND> {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let ok = !text.is_empty()
            && text.len() <= MAX
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || Self::punctuation().contains(&b));
        if ok {
            return Ok(Word(text));
        }
        Err(match KIND {
            COOKIE => "must be a plain cookie name (letters, digits, '-', '_', '.')".to_owned(),
            KEY_PREFIX => {
                format!("must be 1-{MAX} characters of letters, digits, '-', '_', '.' or ':'")
            }
            _ => format!("must be 1-{MAX} characters of letters, digits, '-', '_' or '.'"),
        })
    }
}

impl<const MAX: usize, const KIND: char> From<Word<MAX, KIND>> for String {
    fn from(w: Word<MAX, KIND>) -> String {
        w.0
    }
}

impl<const MAX: usize, const KIND: char> FromStr for Word<MAX, KIND> {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::try_from(s.to_owned())
    }
}

pub(crate) type OrganizationId = Word<128, ORG_ID>;
pub(crate) type CookieName = Word<128, COOKIE>;
pub(crate) type KeyPrefix = Word<32, KEY_PREFIX>;

/// An allowed browser origin: exact (`https://www.example.com`) or a pattern of one or more DNS
/// labels in front of a domain (`https://*.example.com`), compared as parsed
/// `scheme://host[:port]` triples, never as substrings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum OriginPattern {
    Exact(String),
    /// `scheme://*.suffix[:port]`, stored as the scheme, the suffix with its leading dot, and the
    /// explicit port text (empty when absent).
    Wildcard {
        scheme: String,
        suffix: String,
        port: String,
    },
}

impl OriginPattern {
    /// Parses one configured origin; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<OriginPattern, String> {
        if text == "*" {
            return Err("`*` is not allowed: list the exact origins of your sites".to_owned());
        }
        if text == "null" {
            return Err("`null` is not an origin that can be trusted".to_owned());
        }
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| format!("`{text}` is not an origin like https://www.example.com"))?;
        if scheme != "https" && scheme != "http" {
            return Err(format!("`{text}` must use http or https"));
        }
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "`{text}` must be scheme://host[:port] with no path or trailing slash"
            ));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.contains(']') || h.ends_with(']') => {
                if p.is_empty()
                    || !p.bytes().all(|b| b.is_ascii_digit())
                    || p.parse::<u16>().is_err()
                {
                    return Err(format!("`{text}` has an invalid port"));
                }
                (h, p)
            }
            _ => (rest, ""),
        };
        if host != host.to_ascii_lowercase() {
            return Err(format!("`{text}` must be lower case, as browsers send it"));
        }
        if let Some(suffix) = host.strip_prefix("*.") {
            if suffix.contains('*') || !is_dns_name(suffix) || !suffix.contains('.') {
                return Err(format!(
                    "`{text}`: a wildcard must be a leading `*.` before a domain with at least two labels"
                ));
            }
            return Ok(OriginPattern::Wildcard {
                scheme: scheme.to_owned(),
                suffix: format!(".{suffix}"),
                port: port.to_owned(),
            });
        }
        if host.contains('*') {
            return Err(format!("`{text}`: `*` may only stand as the first label"));
        }
        if !(is_dns_name(host) || is_ip_literal(host)) {
            return Err(format!("`{text}` does not have a valid host"));
        }
        Ok(OriginPattern::Exact(text.to_owned()))
    }

    /// Whether a request's `Origin` is this one (or, for a pattern, one it covers).
    pub fn matches(&self, origin: &str) -> bool {
        match self {
            OriginPattern::Exact(exact) => exact == origin,
            OriginPattern::Wildcard {
                scheme,
                suffix,
                port,
            } => {
                let Some(rest) = origin
                    .strip_prefix(scheme.as_str())
                    .and_then(|r| r.strip_prefix("://"))
                else {
                    return false;
                };
                let (host, origin_port) = match rest.rsplit_once(':') {
                    Some((h, p)) => (h, p),
                    None => (rest, ""),
                };
                if origin_port != port {
                    return false;
                }
                match host.strip_suffix(suffix.as_str()) {
                    Some(labels) => !labels.is_empty() && is_dns_name(labels),
                    None => false,
                }
            }
        }
    }
}

impl TryFrom<String> for OriginPattern {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        OriginPattern::parse(&text)
    }
}

impl From<OriginPattern> for String {
    fn from(p: OriginPattern) -> String {
        match p {
            OriginPattern::Exact(text) => text,
            OriginPattern::Wildcard {
                scheme,
                suffix,
                port,
            } => {
                let port = if port.is_empty() {
                    String::new()
                } else {
                    format!(":{port}")
                };
                format!("{scheme}://*{suffix}{port}")
            }
        }
    }
}

fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn is_ip_literal(host: &str) -> bool {
    host.parse::<std::net::Ipv4Addr>().is_ok()
        || host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_names_its_range() {
        assert_eq!(
            Bounded::<u64, 1, 10>::try_from(0).unwrap_err(),
            "must be between 1 and 10"
        );
        assert_eq!(
            Bounded::<u64, 0, 10>::try_from(11).unwrap_err(),
            "must be at most 10"
        );
        assert_eq!(
            Bounded::<u64, 1, 10>::try_from(10).map(Bounded::get),
            Ok(10)
        );
    }

    #[test]
    fn bounded_holds_its_own_integer_type_and_reads_as_a_plain_integer() {
        let prefix: Bounded<u8, 32, 128> = serde_json::from_value(serde_json::json!(128)).unwrap();
        let bits: u8 = prefix.get();
        assert_eq!(bits, 128);
        assert_eq!(
            serde_json::to_value(prefix).unwrap(),
            serde_json::json!(128)
        );
        let err = serde_json::from_value::<Bounded<u8, 32, 128>>(serde_json::json!(300));
        assert_eq!(err.unwrap_err().to_string(), "must be between 32 and 128");
        let count: u32 = Bounded::<u32, 1, { u32::MAX as u64 }>::new::<{ u32::MAX as u64 }>().get();
        assert_eq!(count, u32::MAX);
        let bytes: usize = Bounded::<usize, 0, 10>::try_from(10)
            .map(Bounded::get)
            .unwrap();
        assert_eq!(bytes, 10);
    }

    #[test]
    fn redis_url_never_shows_its_password() {
        let url = RedisUrl::try_from("rediss://broker:hunter2@redis:6380/0".to_owned()).unwrap();
        assert!(url.is_tls());
        assert_eq!(url.redacted(), "rediss://broker:REDACTED@redis:6380/0");
        assert!(!format!("{url:?}").contains("hunter2"));
        let err = RedisUrl::try_from("redis://:hunter2@redis:6379[x]/0".to_owned()).unwrap_err();
        assert!(!err.contains("hunter2"));
    }

    #[test]
    fn origin_patterns_round_trip() {
        for text in ["https://www.example.com", "https://*.example.org:8443"] {
            let parsed = OriginPattern::parse(text).unwrap();
            assert_eq!(String::from(parsed), text);
        }
    }

    #[test]
    fn none_is_no_algorithm() {
        assert!(JwtAlgorithm::try_from("none".to_owned()).is_err());
        assert!(JwtAlgorithm::try_from("HS512".to_owned()).is_err());
        assert!(JwtAlgorithm::try_from("RS256".to_owned()).is_ok());
    }
}
