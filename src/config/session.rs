//! `[[session.jwt]]` and `[session.introspection]`: where sessions come from, how they are checked,
//! and how their claims become an identity.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::endpoint::EndpointSettings;
use super::field_error;
use super::values::{
    Bounded, ClaimName, CookieName, HttpUrl, JwtAlgorithm, RequiredClaim, RoleName, UserIdPrefix,
};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(try_from = "RawSession", into = "RawSession")]
pub struct SessionSettings {
    pub jwt: Vec<JwtIssuerSettings>,
    pub introspection: Option<IntrospectionSettings>,
    pub endpoint: Vec<EndpointSettings>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawSession {
    #[serde(default)]
    jwt: Vec<JwtIssuerSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    introspection: Option<IntrospectionSettings>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    endpoint: Vec<EndpointSettings>,
}

impl TryFrom<RawSession> for SessionSettings {
    type Error = String;
    fn try_from(raw: RawSession) -> Result<Self, String> {
        let settings = SessionSettings {
            jwt: raw.jwt,
            introspection: raw.introspection,
            endpoint: raw.endpoint,
        };
        settings.check_issuers_unique()?;
        settings.check_hs256_files_distinct()?;
        settings.check_id_spaces()?;
        settings.check_credentials_unambiguous()?;
        Ok(settings)
    }
}

impl From<SessionSettings> for RawSession {
    fn from(s: SessionSettings) -> RawSession {
        RawSession {
            jwt: s.jwt,
            introspection: s.introspection,
            endpoint: s.endpoint,
        }
    }
}

/// How claims become an identity, for one session source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRules {
    pub user_id_claim: ClaimName,
    pub email_claim: ClaimName,
    pub name_claim: ClaimName,
    pub user_id_prefix: UserIdPrefix,
    /// `claim=value` conditions a session must meet; otherwise 403 `forbidden`.
    pub required_claims: Vec<RequiredClaim>,
    /// Where the session's roles are, and which of them grant access.
    pub roles: Option<RoleRule>,
}

/// `roles_claim` and `required_roles`: the claim holding the session's roles (an array of role
/// names, or an object whose keys are role names, as Zitadel writes them) and the roles of which
/// the session must hold at least one. An empty list requires nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleRule {
    pub claim: ClaimName,
    pub required: Vec<RoleName>,
}

impl RoleRule {
    /// Parses `roles_claim` and `required_roles` as they appear in one session source.
    fn from_raw(
        claim: Option<ClaimName>,
        required: Vec<RoleName>,
    ) -> Result<Option<RoleRule>, String> {
        match claim {
            Some(claim) => Ok(Some(RoleRule { claim, required })),
            None if required.is_empty() => Ok(None),
            None => Err(field_error(
                "required_roles",
                "needs roles_claim: the claim that holds the roles, e.g. \"urn:zitadel:iam:org:project:roles\" or \"realm_access.roles\"",
            )),
        }
    }

    fn into_raw(rule: Option<RoleRule>) -> (Option<ClaimName>, Vec<RoleName>) {
        match rule {
            Some(rule) => (Some(rule.claim), rule.required),
            None => (None, Vec::new()),
        }
    }
}

impl Default for ClaimRules {
    fn default() -> Self {
        ClaimRules {
            user_id_claim: default_user_id_claim(),
            email_claim: default_email_claim(),
            name_claim: default_name_claim(),
            user_id_prefix: UserIdPrefix::default(),
            required_claims: Vec::new(),
            roles: None,
        }
    }
}

/// Where an issuer's verification keys come from. The source fixes the algorithm family: a
/// shared secret verifies HS256 only, a key set asymmetric algorithms only, so a public key can
/// never be used as an HMAC secret (algorithm confusion).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Jwks(HttpUrl),
    /// `{issuer}/.well-known/openid-configuration`, whose `issuer` must match exactly.
    Discovery,
    Hs256(PathBuf),
}

/// Where a missing e-mail or name is looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserinfoSource {
    Url(HttpUrl),
    /// The endpoint the discovery document names.
    Discovered,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(try_from = "RawJwtIssuer", into = "RawJwtIssuer")]
pub struct JwtIssuerSettings {
    pub issuer: String,
    pub audience: String,
    pub keys: KeySource,
    /// The allow-list, all of the key source's family.
    pub algorithms: Vec<JwtAlgorithm>,
    pub cookie: Option<CookieName>,
    /// The request header an identity-aware proxy puts this issuer's assertion in; then the
    /// token is read from there only.
    pub header: Option<ProxyHeader>,
    pub claims: ClaimRules,
    pub leeway_secs: Bounded<u64, 0, 300>,
    pub userinfo: Option<UserinfoSource>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawJwtIssuer {
    issuer: String,
    audience: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jwks_url: Option<HttpUrl>,
    #[serde(default)]
    discovery: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hs256_secret_file: Option<PathBuf>,
    #[serde(default)]
    algorithms: Vec<JwtAlgorithm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cookie: Option<CookieName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    header: Option<ProxyHeader>,
    #[serde(default = "default_user_id_claim")]
    user_id_claim: ClaimName,
    #[serde(default = "default_email_claim")]
    email_claim: ClaimName,
    #[serde(default = "default_name_claim")]
    name_claim: ClaimName,
    #[serde(default)]
    user_id_prefix: UserIdPrefix,
    #[serde(default)]
    required_claims: Vec<RequiredClaim>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    roles_claim: Option<ClaimName>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    required_roles: Vec<RoleName>,
    #[serde(default = "default_leeway_secs")]
    leeway_secs: Bounded<u64, 0, 300>,
    /// Fetch a missing e-mail or name from the provider's userinfo endpoint.
    #[serde(default)]
    userinfo: bool,
    /// The userinfo endpoint; with `discovery = true` it is taken from the discovery document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    userinfo_url: Option<HttpUrl>,
}

impl TryFrom<RawJwtIssuer> for JwtIssuerSettings {
    type Error = String;
    fn try_from(raw: RawJwtIssuer) -> Result<Self, String> {
        if raw.issuer.trim().is_empty() {
            return Err(field_error("issuer", "must not be empty"));
        }
        if raw.audience.trim().is_empty() {
            return Err(field_error("audience", "must not be empty"));
        }
        let keys = match (raw.jwks_url, raw.discovery, raw.hs256_secret_file) {
            (Some(url), false, None) => KeySource::Jwks(url),
            (None, true, None) => {
                HttpUrl::try_from(raw.issuer.clone()).map_err(|e| field_error("issuer", e))?;
                KeySource::Discovery
            }
            (None, false, Some(path)) => KeySource::Hs256(path),
            _ => {
                return Err(field_error(
                    "jwks_url",
                    "set exactly one of jwks_url, discovery = true, or hs256_secret_file",
                ));
            }
        };
        if raw.algorithms.is_empty() {
            return Err(field_error(
                "algorithms",
                "list at least one algorithm, e.g. [\"RS256\"]",
            ));
        }
        let hmac = matches!(keys, KeySource::Hs256(_));
        if let Some(alg) = raw.algorithms.iter().find(|a| a.is_symmetric() != hmac) {
            return Err(field_error(
                "algorithms",
                format!(
                    "`{}` does not fit the key source: HS256 needs hs256_secret_file, asymmetric algorithms need jwks_url or discovery",
                    String::from(*alg)
                ),
            ));
        }
        if raw.header.is_some() && raw.cookie.is_some() {
            return Err(field_error(
                "cookie",
                "cannot be combined with header: a proxy's assertion is read from its header only",
            ));
        }
        let roles = RoleRule::from_raw(raw.roles_claim, raw.required_roles)?;
        let userinfo = match (raw.userinfo, raw.userinfo_url, &keys) {
            (false, None, _) => None,
            (_, Some(url), _) => Some(UserinfoSource::Url(url)),
            (true, None, KeySource::Discovery) => Some(UserinfoSource::Discovered),
            (true, None, _) => {
                return Err(field_error(
                    "userinfo",
                    "needs discovery = true or a userinfo_url",
                ));
            }
        };
        Ok(JwtIssuerSettings {
            issuer: raw.issuer,
            audience: raw.audience,
            keys,
            algorithms: raw.algorithms,
            cookie: raw.cookie,
            header: raw.header,
            claims: ClaimRules {
                user_id_claim: raw.user_id_claim,
                email_claim: raw.email_claim,
                name_claim: raw.name_claim,
                user_id_prefix: raw.user_id_prefix,
                required_claims: raw.required_claims,
                roles,
            },
            leeway_secs: raw.leeway_secs,
            userinfo,
        })
    }
}

impl From<JwtIssuerSettings> for RawJwtIssuer {
    fn from(s: JwtIssuerSettings) -> RawJwtIssuer {
        let (jwks_url, discovery, hs256_secret_file) = match s.keys {
            KeySource::Jwks(url) => (Some(url), false, None),
            KeySource::Discovery => (None, true, None),
            KeySource::Hs256(path) => (None, false, Some(path)),
        };
        let (userinfo, userinfo_url) = match s.userinfo {
            None => (false, None),
            Some(UserinfoSource::Url(url)) => (true, Some(url)),
            Some(UserinfoSource::Discovered) => (true, None),
        };
        let (roles_claim, required_roles) = RoleRule::into_raw(s.claims.roles);
        RawJwtIssuer {
            issuer: s.issuer,
            audience: s.audience,
            jwks_url,
            discovery,
            hs256_secret_file,
            algorithms: s.algorithms,
            cookie: s.cookie,
            header: s.header,
            user_id_claim: s.claims.user_id_claim,
            email_claim: s.claims.email_claim,
            name_claim: s.claims.name_claim,
            user_id_prefix: s.claims.user_id_prefix,
            required_claims: s.claims.required_claims,
            roles_claim,
            required_roles,
            leeway_secs: s.leeway_secs,
            userinfo,
            userinfo_url,
        }
    }
}

/// A request header an identity-aware proxy sets (`Cf-Access-Jwt-Assertion`,
/// `X-Goog-Iap-Jwt-Assertion`, `X-Pomerium-Jwt-Assertion`): an HTTP field name, kept as written
/// and compared without regard to case. Headers with another meaning to the broker are refused.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProxyHeader(String);

/// Headers that carry something else: a proxy assertion read from one of them would be confused
/// with the request's own credentials, origin or framing.
const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "host",
    "origin",
    "referer",
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "x-request-id",
    "traceparent",
    "tracestate",
    "forwarded",
    "x-forwarded-for",
];

impl ProxyHeader {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PartialEq for ProxyHeader {
    fn eq(&self, other: &ProxyHeader) -> bool {
        self.0.eq_ignore_ascii_case(&other.0)
    }
}

impl Eq for ProxyHeader {}

impl TryFrom<String> for ProxyHeader {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        let token = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return Err("must be an HTTP header name of at most 64 characters".to_owned());
        }
        if RESERVED_HEADERS
            .iter()
            .any(|reserved| reserved.eq_ignore_ascii_case(&name))
        {
            return Err(format!(
                "`{name}` has another meaning to the broker; name the header your proxy sets, e.g. \"Cf-Access-Jwt-Assertion\""
            ));
        }
        Ok(ProxyHeader(name))
    }
}

impl From<ProxyHeader> for String {
    fn from(h: ProxyHeader) -> String {
        h.0
    }
}

/// How the broker authenticates itself to the introspection endpoint (`client_auth`). Holds
/// paths and ids only; the secret and the key are read by the secrets registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntrospectionAuth {
    /// `client_secret_basic`: HTTP Basic with the client id and the secret from the file.
    SecretBasic {
        client_id: String,
        secret_file: PathBuf,
    },
    /// `private_key_jwt` (RFC 7523, Zitadel's "JWT" method): a fresh RS256 client assertion per
    /// call, signed with the key in `key_file` (Zitadel's key JSON or a PEM RSA private key).
    /// `client_id` and `key_id` may come from the key JSON; where both are given they must agree,
    /// which is checked when the key file is loaded (with every other secret).
    PrivateKeyJwt {
        key_file: PathBuf,
        client_id: Option<String>,
        key_id: Option<String>,
    },
}

/// The `client_auth` key as written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
enum ClientAuthMethod {
    #[default]
    ClientSecretBasic,
    PrivateKeyJwt,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(try_from = "RawIntrospection", into = "RawIntrospection")]
pub struct IntrospectionSettings {
    pub url: HttpUrl,
    pub auth: IntrospectionAuth,
    /// When set, an `iss` in the introspection answer must equal it. It is also what makes
    /// introspection share a user-id space with a `[[session.jwt]]` of the same issuer, and the
    /// `aud` of a `private_key_jwt` client assertion.
    pub issuer: Option<String>,
    /// When set, an `aud` in the introspection answer must contain it.
    pub audience: Option<String>,
    pub claims: ClaimRules,
    pub leeway_secs: Bounded<u64, 0, 300>,
    /// An active answer is reused for at most this long (and never past the token's `exp`).
    pub cache_ttl_secs: Bounded<u64, 1, 3600>,
    /// An inactive answer is remembered this long, so a replayed dead token costs one call.
    pub negative_cache_secs: Bounded<u64, 0, 300>,
}

impl IntrospectionSettings {
    /// The `aud` of a `private_key_jwt` client assertion: the provider's issuer. That is
    /// `issuer` when set, else the origin of the introspection URL (Zitadel's issuer is the
    /// origin of its endpoints; a provider whose issuer has a path needs `issuer` set).
    pub fn assertion_audience(&self) -> String {
        match &self.issuer {
            Some(issuer) => issuer.clone(),
            None => self.url.url().origin().ascii_serialization(),
        }
    }
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawIntrospection {
    url: HttpUrl,
    #[serde(default)]
    client_auth: ClientAuthMethod,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_secret_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_key_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    audience: Option<String>,
    #[serde(default = "default_user_id_claim")]
    user_id_claim: ClaimName,
    #[serde(default = "default_email_claim")]
    email_claim: ClaimName,
    #[serde(default = "default_name_claim")]
    name_claim: ClaimName,
    #[serde(default)]
    user_id_prefix: UserIdPrefix,
    #[serde(default)]
    required_claims: Vec<RequiredClaim>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    roles_claim: Option<ClaimName>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    required_roles: Vec<RoleName>,
    #[serde(default = "default_leeway_secs")]
    leeway_secs: Bounded<u64, 0, 300>,
    #[serde(default = "default_introspection_ttl")]
    cache_ttl_secs: Bounded<u64, 1, 3600>,
    #[serde(default = "default_negative_ttl")]
    negative_cache_secs: Bounded<u64, 0, 300>,
}

/// A client id or key id: printable, no surrounding whitespace (it goes into a JWT and a form).
fn identifier(field: &str, value: Option<String>) -> Result<Option<String>, String> {
    match value {
        None => Ok(None),
        Some(v)
            if v.is_empty()
                || v.len() > 256
                || v.trim() != v
                || v.chars().any(char::is_control) =>
        {
            Err(field_error(
                field,
                "must be 1-256 printable characters without surrounding spaces",
            ))
        }
        Some(v) => Ok(Some(v)),
    }
}

fn parse_auth(raw: &mut RawIntrospection) -> Result<IntrospectionAuth, String> {
    let client_id = identifier("client_id", raw.client_id.take())?;
    let key_id = identifier("key_id", raw.key_id.take())?;
    match raw.client_auth {
        ClientAuthMethod::ClientSecretBasic => {
            if raw.client_key_file.is_some() || key_id.is_some() {
                let field = if raw.client_key_file.is_some() {
                    "client_key_file"
                } else {
                    "key_id"
                };
                return Err(field_error(
                    field,
                    "belongs to client_auth = \"private_key_jwt\" (the default is client_secret_basic)",
                ));
            }
            let client_id = client_id.ok_or_else(|| {
                field_error(
                    "client_id",
                    "missing: client_secret_basic needs a client id",
                )
            })?;
            let secret_file = raw.client_secret_file.take().ok_or_else(|| {
                field_error(
                    "client_secret_file",
                    "missing: client_secret_basic needs the client secret's file",
                )
            })?;
            Ok(IntrospectionAuth::SecretBasic {
                client_id,
                secret_file,
            })
        }
        ClientAuthMethod::PrivateKeyJwt => {
            if raw.client_secret_file.is_some() {
                return Err(field_error(
                    "client_secret_file",
                    "is not used with client_auth = \"private_key_jwt\"; set client_key_file",
                ));
            }
            let key_file = raw.client_key_file.take().ok_or_else(|| {
                field_error(
                    "client_key_file",
                    "missing: private_key_jwt needs the key file (Zitadel's key JSON or a PEM RSA private key)",
                )
            })?;
            Ok(IntrospectionAuth::PrivateKeyJwt {
                key_file,
                client_id,
                key_id,
            })
        }
    }
}

impl TryFrom<RawIntrospection> for IntrospectionSettings {
    type Error = String;
    fn try_from(mut raw: RawIntrospection) -> Result<Self, String> {
        let auth = parse_auth(&mut raw)?;
        if raw.issuer.as_deref().is_some_and(|i| i.trim().is_empty()) {
            return Err(field_error("issuer", "must not be empty"));
        }
        let roles = RoleRule::from_raw(raw.roles_claim, raw.required_roles)?;
        Ok(IntrospectionSettings {
            url: raw.url,
            auth,
            issuer: raw.issuer,
            audience: raw.audience,
            claims: ClaimRules {
                user_id_claim: raw.user_id_claim,
                email_claim: raw.email_claim,
                name_claim: raw.name_claim,
                user_id_prefix: raw.user_id_prefix,
                required_claims: raw.required_claims,
                roles,
            },
            leeway_secs: raw.leeway_secs,
            cache_ttl_secs: raw.cache_ttl_secs,
            negative_cache_secs: raw.negative_cache_secs,
        })
    }
}

impl From<IntrospectionSettings> for RawIntrospection {
    fn from(s: IntrospectionSettings) -> RawIntrospection {
        let (client_auth, client_id, client_secret_file, client_key_file, key_id) = match s.auth {
            IntrospectionAuth::SecretBasic {
                client_id,
                secret_file,
            } => (
                ClientAuthMethod::ClientSecretBasic,
                Some(client_id),
                Some(secret_file),
                None,
                None,
            ),
            IntrospectionAuth::PrivateKeyJwt {
                key_file,
                client_id,
                key_id,
            } => (
                ClientAuthMethod::PrivateKeyJwt,
                client_id,
                None,
                Some(key_file),
                key_id,
            ),
        };
        let (roles_claim, required_roles) = RoleRule::into_raw(s.claims.roles);
        RawIntrospection {
            url: s.url,
            client_auth,
            client_id,
            client_secret_file,
            client_key_file,
            key_id,
            issuer: s.issuer,
            audience: s.audience,
            user_id_claim: s.claims.user_id_claim,
            email_claim: s.claims.email_claim,
            name_claim: s.claims.name_claim,
            user_id_prefix: s.claims.user_id_prefix,
            required_claims: s.claims.required_claims,
            roles_claim,
            required_roles,
            leeway_secs: s.leeway_secs,
            cache_ttl_secs: s.cache_ttl_secs,
            negative_cache_secs: s.negative_cache_secs,
        }
    }
}

fn default_user_id_claim() -> ClaimName {
    ClaimName::of("sub")
}
fn default_email_claim() -> ClaimName {
    ClaimName::of("email")
}
fn default_name_claim() -> ClaimName {
    ClaimName::of("name")
}
fn default_leeway_secs() -> Bounded<u64, 0, 300> {
    Bounded::new::<30>()
}
fn default_introspection_ttl() -> Bounded<u64, 1, 3600> {
    Bounded::new::<300>()
}
fn default_negative_ttl() -> Bounded<u64, 0, 300> {
    Bounded::new::<10>()
}
