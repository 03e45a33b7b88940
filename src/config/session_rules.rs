//! The rules that span the session sources of `[session]`: one user-id space per issuer, and
//! every credential on a request belonging to exactly one source.

use super::field_error;
use super::session::KeySource;
use super::session::SessionSettings;
use super::values::CookieName;

/// One session source in the user-id rules: its key under `[session]`, the issuer it speaks for
/// (when it names one), and its prefix.
struct IdSpace<'a> {
    key: String,
    issuer: Option<String>,
    prefix: &'a str,
}

impl SessionSettings {
    pub(super) fn check_issuers_unique(&self) -> Result<(), String> {
        let mut issuers = std::collections::HashSet::new();
        for (n, jwt) in self.jwt.iter().enumerate() {
            if !issuers.insert(jwt.issuer.as_str()) {
                return Err(field_error(
                    &format!("jwt[{n}].issuer"),
                    "the same issuer is configured twice",
                ));
            }
        }
        Ok(())
    }

    /// Two issuers never share one HS256 secret: either site could then sign sessions the other
    /// accepts, for any of its users. One file named twice is the plain case; two files holding
    /// the same value are refused when the secrets are loaded.
    pub(super) fn check_hs256_files_distinct(&self) -> Result<(), String> {
        for (n, jwt) in self.jwt.iter().enumerate() {
            let KeySource::Hs256(path) = &jwt.keys else {
                continue;
            };
            let first = self.jwt[..n]
                .iter()
                .position(|other| matches!(&other.keys, KeySource::Hs256(p) if p == path));
            if let Some(first) = first {
                return Err(field_error(
                    &format!("jwt[{n}].hs256_secret_file"),
                    format!(
                        "is also session.jwt[{first}].hs256_secret_file; each HS256 issuer needs a secret of its own, or either site could sign sessions for the other's users"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Two session sources share one user-id space only when they name the same issuer (then
    /// they must also agree on the prefix, so one person is one user). Any other pair must have
    /// distinct, non-empty prefixes, neither a prefix of the other: `sub=123` at issuer A and
    /// `sub=123` at issuer B would otherwise receive each other's tokens. A site asked through
    /// `[[session.endpoint]]` is its own issuer, named by its URL's origin.
    pub(super) fn check_id_spaces(&self) -> Result<(), String> {
        let mut sources: Vec<IdSpace<'_>> = self
            .jwt
            .iter()
            .enumerate()
            .map(|(n, j)| IdSpace {
                key: format!("jwt[{n}]"),
                issuer: Some(j.issuer.clone()),
                prefix: j.claims.user_id_prefix.as_str(),
            })
            .collect();
        if let Some(intro) = &self.introspection {
            sources.push(IdSpace {
                key: "introspection".to_owned(),
                issuer: intro.issuer.clone(),
                prefix: intro.claims.user_id_prefix.as_str(),
            });
        }
        sources.extend(self.endpoint.iter().enumerate().map(|(n, e)| IdSpace {
            key: format!("endpoint[{n}]"),
            issuer: Some(e.issuer()),
            prefix: e.user_id_prefix.as_str(),
        }));
        for (i, b) in sources.iter().enumerate() {
            for a in &sources[..i] {
                let at = format!("{}.user_id_prefix", b.key);
                if a.issuer.is_some() && a.issuer == b.issuer {
                    if a.prefix != b.prefix {
                        return Err(field_error(
                            &at,
                            format!(
                                "must equal session.{}.user_id_prefix: both name the same issuer, so one person must be one user",
                                a.key
                            ),
                        ));
                    }
                    continue;
                }
                if a.prefix.is_empty() || b.prefix.is_empty() {
                    let key = if b.prefix.is_empty() { &b.key } else { &a.key };
                    return Err(field_error(
                        &format!("{key}.user_id_prefix"),
                        format!(
                            "must be set (e.g. \"acme:\"): session.{} and session.{} are different session sources, and without distinct prefixes the same user id at both would be one user and get one token",
                            a.key, b.key
                        ),
                    ));
                }
                if a.prefix.starts_with(b.prefix) || b.prefix.starts_with(a.prefix) {
                    return Err(field_error(
                        &at,
                        format!(
                            "`{}` and session.{}.user_id_prefix `{}` must differ and neither may begin with the other, or ids of the two sources can collide",
                            b.prefix, a.key, a.prefix
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every credential a request can carry belongs to one source: a cookie name an endpoint
    /// forwards is nobody else's (its value would otherwise be sent to a site it was not made
    /// for), at most one endpoint takes opaque Bearer tokens, and not while introspection does.
    pub(super) fn check_credentials_unambiguous(&self) -> Result<(), String> {
        let mut claimed: Vec<(&CookieName, String)> = self
            .jwt
            .iter()
            .enumerate()
            .filter_map(|(n, j)| Some((j.cookie.as_ref()?, format!("session.jwt[{n}].cookie"))))
            .collect();
        for (n, endpoint) in self.endpoint.iter().enumerate() {
            for cookie in &endpoint.cookies {
                if let Some((_, owner)) = claimed.iter().find(|(c, _)| *c == cookie) {
                    return Err(field_error(
                        &format!("endpoint[{n}].cookies"),
                        format!(
                            "`{}` is already {owner}: a cookie belongs to one session source",
                            cookie.as_str()
                        ),
                    ));
                }
            }
            claimed.extend(
                endpoint
                    .cookies
                    .iter()
                    .map(|c| (c, format!("session.endpoint[{n}].cookies"))),
            );
        }
        let mut bearer = self.endpoint.iter().enumerate().filter(|(_, e)| e.bearer);
        if let Some((first, _)) = bearer.next() {
            if let Some((second, _)) = bearer.next() {
                return Err(field_error(
                    &format!("endpoint[{second}].bearer"),
                    format!(
                        "only one endpoint may take Bearer tokens (session.endpoint[{first}] does): a token must go to the one site that issued it"
                    ),
                ));
            }
            if self.introspection.is_some() {
                return Err(field_error(
                    &format!("endpoint[{first}].bearer"),
                    "cannot be combined with [session.introspection], which takes every opaque Bearer token",
                ));
            }
        }
        Ok(())
    }

    /// Every cookie name a `[[session.jwt]]` issuer reads, once.
    pub fn cookie_names(&self) -> Vec<CookieName> {
        let mut names: Vec<CookieName> = Vec::new();
        for cookie in self.jwt.iter().filter_map(|j| j.cookie.as_ref()) {
            if !names.contains(cookie) {
                names.push(cookie.clone());
            }
        }
        names
    }
}
