//! `[[session.endpoint]]`: a site whose session lives on its own server (Django, Rails, Laravel,
//! express-session) is asked who the visitor is, with only its own session cookies forwarded, and
//! its JSON answer is read by RFC 6901 JSON Pointers parsed here, once.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::field_error;
use super::values::{Bounded, CookieName, HttpUrl, RoleName, UserIdPrefix};

/// The most cookie names one endpoint may list: a session is one or two cookies, never dozens.
const MAX_COOKIES: usize = 16;

/// An RFC 6901 JSON Pointer (`/identity/id`, `/roles`, `` for the whole document), split into its
/// unescaped reference tokens when the configuration is loaded.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct JsonPointer {
    text: String,
    tokens: Vec<String>,
}

impl JsonPointer {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value the pointer names in `document`, if any. An array is indexed only by a decimal
    /// number without leading zeros; `-` (past the end) names nothing.
    pub fn resolve<'v>(&self, document: &'v Value) -> Option<&'v Value> {
        let mut current = document;
        for token in &self.tokens {
            current = match current {
                Value::Object(map) => map.get(token)?,
                Value::Array(items) => {
                    let canonical = token == "0"
                        || (!token.starts_with('0') && token.bytes().all(|b| b.is_ascii_digit()));
                    if token.is_empty() || !canonical {
                        return None;
                    }
                    items.get(token.parse::<usize>().ok()?)?
                }
                _ => return None,
            };
        }
        Some(current)
    }
}

impl TryFrom<String> for JsonPointer {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        if text.len() > 256 || text.chars().any(char::is_control) {
            return Err("must be a JSON Pointer of at most 256 printable characters".to_owned());
        }
        if text.is_empty() {
            return Ok(JsonPointer {
                text,
                tokens: Vec::new(),
            });
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!(
                "`{text}` is not a JSON Pointer: it must start with `/` (e.g. \"/id\", \"/user/id\")"
            ));
        };
        let mut tokens = Vec::new();
        for raw in rest.split('/') {
            let mut token = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c != '~' {
                    token.push(c);
                    continue;
                }
                match chars.next() {
                    Some('0') => token.push('~'),
                    Some('1') => token.push('/'),
                    _ => {
                        return Err(format!(
                            "`{text}` is not a JSON Pointer: `~` must be followed by 0 (for `~`) or 1 (for `/`)"
                        ));
                    }
                }
            }
            tokens.push(token);
        }
        Ok(JsonPointer { text, tokens })
    }
}

impl From<JsonPointer> for String {
    fn from(p: JsonPointer) -> String {
        p.text
    }
}

/// `roles_pointer` and `required_roles`: where the answer lists the visitor's roles, and the roles
/// of which the session must hold at least one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointerRoles {
    pub pointer: JsonPointer,
    pub required: Vec<RoleName>,
}

/// One site that is asked who the visitor is.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "RawEndpoint", into = "RawEndpoint")]
pub struct EndpointSettings {
    pub url: HttpUrl,
    /// The site's session cookie names: a request carrying one is verified by this endpoint, and
    /// only these cookies are forwarded.
    pub cookies: Vec<CookieName>,
    /// Also an opaque Bearer token that no JWT issuer takes, forwarded as `Authorization`.
    pub bearer: bool,
    pub user_id_pointer: JsonPointer,
    pub email_pointer: Option<JsonPointer>,
    pub name_pointer: Option<JsonPointer>,
    pub roles: Option<PointerRoles>,
    pub user_id_prefix: UserIdPrefix,
    /// A confirmed session is reused this long; 0 asks the site on every request.
    pub cache_secs: Bounded<u64, 0, 300>,
    pub timeout_ms: Bounded<u64, 1, 10_000>,
}

impl EndpointSettings {
    /// The issuer this endpoint stands for in the user-id rules: its URL's origin.
    pub fn issuer(&self) -> String {
        self.url.url().origin().ascii_serialization()
    }

    /// Whether the URL is plain `http://` to a host that is not this machine: the forwarded
    /// session cookies would cross a network unencrypted.
    pub fn is_plaintext_remote(&self) -> bool {
        let url = self.url.url();
        if url.scheme() != "http" {
            return false;
        }
        let host = url.host_str().unwrap_or_default();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        match bare.parse::<std::net::IpAddr>() {
            Ok(ip) => !ip.is_loopback(),
            Err(_) => !(host.eq_ignore_ascii_case("localhost") || host.ends_with(".localhost")),
        }
    }
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    url: HttpUrl,
    #[serde(default)]
    cookies: Vec<CookieName>,
    #[serde(default)]
    bearer: bool,
    user_id_pointer: JsonPointer,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    email_pointer: Option<JsonPointer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name_pointer: Option<JsonPointer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    roles_pointer: Option<JsonPointer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    required_roles: Vec<RoleName>,
    #[serde(default)]
    user_id_prefix: UserIdPrefix,
    #[serde(default = "default_cache_secs")]
    cache_secs: Bounded<u64, 0, 300>,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: Bounded<u64, 1, 10_000>,
}

impl TryFrom<RawEndpoint> for EndpointSettings {
    type Error = String;
    fn try_from(raw: RawEndpoint) -> Result<Self, String> {
        let url = raw.url.url();
        if url.fragment().is_some() {
            return Err(field_error("url", "must not have a fragment (`#`)"));
        }
        if raw.cookies.is_empty() && !raw.bearer {
            return Err(field_error(
                "cookies",
                "list the site's session cookie names (e.g. [\"sessionid\"]), or set bearer = true",
            ));
        }
        if raw.cookies.len() > MAX_COOKIES {
            return Err(field_error(
                "cookies",
                format!("at most {MAX_COOKIES} cookie names"),
            ));
        }
        for (n, cookie) in raw.cookies.iter().enumerate() {
            if raw.cookies[..n].contains(cookie) {
                return Err(field_error(
                    "cookies",
                    format!("`{}` is listed twice", cookie.as_str()),
                ));
            }
        }
        let roles = match (raw.roles_pointer, raw.required_roles) {
            (Some(pointer), required) => Some(PointerRoles { pointer, required }),
            (None, required) if required.is_empty() => None,
            (None, _) => {
                return Err(field_error(
                    "required_roles",
                    "needs roles_pointer: where the answer lists the roles, e.g. \"/roles\"",
                ));
            }
        };
        Ok(EndpointSettings {
            url: raw.url,
            cookies: raw.cookies,
            bearer: raw.bearer,
            user_id_pointer: raw.user_id_pointer,
            email_pointer: raw.email_pointer,
            name_pointer: raw.name_pointer,
            roles,
            user_id_prefix: raw.user_id_prefix,
            cache_secs: raw.cache_secs,
            timeout_ms: raw.timeout_ms,
        })
    }
}

impl From<EndpointSettings> for RawEndpoint {
    fn from(s: EndpointSettings) -> RawEndpoint {
        let (roles_pointer, required_roles) = match s.roles {
            Some(roles) => (Some(roles.pointer), roles.required),
            None => (None, Vec::new()),
        };
        RawEndpoint {
            url: s.url,
            cookies: s.cookies,
            bearer: s.bearer,
            user_id_pointer: s.user_id_pointer,
            email_pointer: s.email_pointer,
            name_pointer: s.name_pointer,
            roles_pointer,
            required_roles,
            user_id_prefix: s.user_id_prefix,
            cache_secs: s.cache_secs,
            timeout_ms: s.timeout_ms,
        }
    }
}

fn default_cache_secs() -> Bounded<u64, 0, 300> {
    Bounded::new::<30>()
}
fn default_timeout_ms() -> Bounded<u64, 1, 10_000> {
    Bounded::new::<2000>()
}
