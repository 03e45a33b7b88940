//! Settings that are valid but weaker than they look. Each is logged once at start-up (WARN),
//! printed by `check-config` and flagged by `doctor`, one line naming its key: an operator should
//! hear of them without the broker refusing to run.

use super::{KeySource, Settings, UserinfoSource};
use crate::config::values::is_loopback;

/// One such setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// The config key at issue, e.g. `session.jwt[0].jwks_url`.
    pub key: String,
    pub problem: String,
}

impl std::fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "config key `{}`: {}", self.key, self.problem)
    }
}

/// Why plain HTTP to another host is worth a word: what an attacker on the path gains.
const PLAIN_HTTP: &str = "is plain http:// to a host that is not loopback: anyone on the path can read and change what travels there";

impl Settings {
    /// Every weaker-than-it-looks setting, in the order of the file.
    pub fn warnings(&self) -> Vec<ConfigWarning> {
        let mut found = Vec::new();
        let mut plain_http = |key: String, url: &reqwest::Url, what: &str| {
            if url.scheme() == "http" && !is_loopback(url) {
                found.push(ConfigWarning {
                    key,
                    problem: format!("{PLAIN_HTTP} ({what})"),
                });
            }
        };
        for (n, jwt) in self.session.jwt.iter().enumerate() {
            match &jwt.keys {
                KeySource::Jwks(url) => plain_http(
                    format!("session.jwt[{n}].jwks_url"),
                    url.url(),
                    "the keys that verify sessions: swapped keys forge any session",
                ),
                KeySource::Discovery => {
                    if let Ok(url) = reqwest::Url::parse(&jwt.issuer) {
                        plain_http(
                            format!("session.jwt[{n}].issuer"),
                            &url,
                            "discovery names the keys that verify sessions: swapped keys forge any session",
                        );
                    }
                }
                KeySource::Hs256(_) => {}
            }
            if let Some(UserinfoSource::Url(url)) = &jwt.userinfo {
                plain_http(
                    format!("session.jwt[{n}].userinfo_url"),
                    url.url(),
                    "session tokens are sent there",
                );
            }
        }
        if let Some(introspection) = &self.session.introspection {
            plain_http(
                "session.introspection.url".to_owned(),
                introspection.url.url(),
                "session tokens and the broker's client credentials are sent there, and its answer decides who the user is",
            );
        }
        if let Some(endpoint) = &self.telemetry.otlp_endpoint {
            plain_http(
                "telemetry.otlp_endpoint".to_owned(),
                endpoint.url(),
                "spans with user ids are sent there",
            );
        }
        if let Some(introspection) = &self.session.introspection
            && introspection.audience.is_none()
        {
            found.push(ConfigWarning {
                key: "session.introspection.audience".to_owned(),
                problem: "is not set: an opaque token the provider issued to any other application of it is accepted too; set it to this site's client or project id".to_owned(),
            });
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{MINIMAL, parse};

    #[test]
    fn plain_http_beyond_loopback_and_introspection_without_audience_are_named() {
        let quiet = parse(&format!(
            "{MINIMAL}\n[[session.jwt]]\nissuer = \"http://127.0.0.1:9/a\"\naudience = \"w\"\ndiscovery = true\nalgorithms = [\"RS256\"]\nuser_id_prefix = \"a:\"\n[[session.jwt]]\nissuer = \"https://b.example\"\naudience = \"w\"\njwks_url = \"http://localhost:9/keys\"\nalgorithms = [\"RS256\"]\nuser_id_prefix = \"b:\"\n[telemetry]\notlp_endpoint = \"http://[::1]:4318\"\n"
        ))
        .expect("valid");
        assert_eq!(quiet.warnings(), Vec::new());
        let loud = parse(&format!(
            "{MINIMAL}\n[[session.jwt]]\nissuer = \"http://idp.internal\"\naudience = \"w\"\ndiscovery = true\nalgorithms = [\"RS256\"]\nuser_id_prefix = \"a:\"\n[[session.jwt]]\nissuer = \"https://b.example\"\naudience = \"w\"\njwks_url = \"http://b.example/keys\"\nalgorithms = [\"RS256\"]\nuser_id_prefix = \"b:\"\nuserinfo_url = \"http://b.example/userinfo\"\n[session.introspection]\nurl = \"http://10.0.0.7/introspect\"\nclient_id = \"c\"\nclient_secret_file = \"/s\"\nuser_id_prefix = \"i:\"\n[telemetry]\notlp_endpoint = \"http://collector:4318\"\n"
        ))
        .expect("valid");
        let keys: Vec<String> = loud.warnings().into_iter().map(|w| w.key).collect();
        assert_eq!(
            keys,
            [
                "session.jwt[0].issuer",
                "session.jwt[1].jwks_url",
                "session.jwt[1].userinfo_url",
                "session.introspection.url",
                "telemetry.otlp_endpoint",
                "session.introspection.audience",
            ]
        );
        for warning in loud.warnings() {
            let line = warning.to_string();
            assert!(line.starts_with("config key `"), "{line}");
            assert!(!line.contains('\n'), "{line}");
        }
    }
}
