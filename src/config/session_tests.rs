//! `roles_claim` / `required_roles` and the introspection client authentication keys.

use std::path::PathBuf;

use super::session::{IntrospectionAuth, RoleRule};
use super::tests::{MINIMAL, parse};
use crate::config::values::ClaimName;
use crate::config::{ConfigError, Settings};

fn introspection(keys: &str) -> Result<Settings, ConfigError> {
    parse(&format!(
        "{MINIMAL}\n[session.introspection]\nurl = \"https://auth.example.com/oauth/v2/introspect\"\n{keys}\n"
    ))
}

fn jwt(keys: &str) -> Result<Settings, ConfigError> {
    parse(&format!(
        "{MINIMAL}\n[[session.jwt]]\nissuer = \"https://auth.example.com\"\naudience = \"w\"\njwks_url = \"https://auth.example.com/keys\"\nalgorithms = [\"RS256\"]\n{keys}\n"
    ))
}

fn error(result: Result<Settings, ConfigError>) -> String {
    let err = result.expect_err("refused").0;
    assert!(!err.contains('\n'), "{err}");
    err
}

#[test]
fn client_secret_basic_is_the_default() {
    let s = introspection("client_id = \"broker\"\nclient_secret_file = \"/s\"").expect("basic");
    let i = s.session.introspection.expect("introspection");
    assert_eq!(
        i.auth,
        IntrospectionAuth::SecretBasic {
            client_id: "broker".into(),
            secret_file: PathBuf::from("/s")
        }
    );
    // Without issuer, an assertion would be addressed to the URL's origin.
    assert_eq!(i.assertion_audience(), "https://auth.example.com");
}

#[test]
fn client_secret_basic_needs_its_keys_and_refuses_the_jwt_ones() {
    let err = error(introspection("client_secret_file = \"/s\""));
    assert!(
        err.starts_with("config key `session.introspection.client_id`: missing"),
        "{err}"
    );
    let err = error(introspection("client_id = \"broker\""));
    assert!(
        err.starts_with("config key `session.introspection.client_secret_file`: missing"),
        "{err}"
    );
    let err = error(introspection(
        "client_id = \"b\"\nclient_secret_file = \"/s\"\nclient_key_file = \"/k.json\"",
    ));
    assert!(
        err.starts_with("config key `session.introspection.client_key_file`: belongs to client_auth = \"private_key_jwt\""),
        "{err}"
    );
    let err = error(introspection(
        "client_id = \"b\"\nclient_secret_file = \"/s\"\nkey_id = \"1\"",
    ));
    assert!(
        err.starts_with("config key `session.introspection.key_id`"),
        "{err}"
    );
}

#[test]
fn private_key_jwt_with_a_zitadel_key_file_needs_no_client_id() {
    let s = introspection(
        "client_auth = \"private_key_jwt\"\nclient_key_file = \"/k.json\"\nissuer = \"https://auth.example.com\"",
    )
    .expect("private_key_jwt");
    let i = s.session.introspection.clone().expect("introspection");
    assert_eq!(
        i.auth,
        IntrospectionAuth::PrivateKeyJwt {
            key_file: PathBuf::from("/k.json"),
            client_id: None,
            key_id: None
        }
    );
    assert_eq!(i.assertion_audience(), "https://auth.example.com");
    // check-config's TOML loads again.
    let again = parse(&s.redacted_toml()).expect("round trip");
    assert_eq!(again.session.introspection.expect("again").auth, i.auth);
}

#[test]
fn private_key_jwt_keeps_pem_ids_and_refuses_a_client_secret() {
    let s = introspection(
        "client_auth = \"private_key_jwt\"\nclient_key_file = \"/k.pem\"\nclient_id = \"broker\"\nkey_id = \"288122063462782113\"",
    )
    .expect("PEM form");
    assert!(matches!(
        s.session.introspection.expect("introspection").auth,
        IntrospectionAuth::PrivateKeyJwt { client_id: Some(c), key_id: Some(k), .. }
            if c == "broker" && k == "288122063462782113"
    ));
    let err = error(introspection("client_auth = \"private_key_jwt\""));
    assert!(
        err.starts_with("config key `session.introspection.client_key_file`: missing"),
        "{err}"
    );
    let err = error(introspection(
        "client_auth = \"private_key_jwt\"\nclient_key_file = \"/k\"\nclient_secret_file = \"/s\"",
    ));
    assert!(
        err.starts_with("config key `session.introspection.client_secret_file`"),
        "{err}"
    );
    let err = error(introspection(
        "client_auth = \"private_key_jwt\"\nclient_key_file = \"/k\"\nkey_id = \" 1\"",
    ));
    assert!(
        err.starts_with("config key `session.introspection.key_id`"),
        "{err}"
    );
    let err = error(introspection(
        "client_auth = \"tls_client_auth\"\nclient_key_file = \"/k\"",
    ));
    assert!(err.contains("client_auth"), "{err}");
}

#[test]
fn roles_on_both_kinds_of_source() {
    let s = jwt(
        "roles_claim = \"urn:zitadel:iam:org:project:roles\"\nrequired_roles = [\"chat-user\"]",
    )
    .expect("jwt roles");
    let rule = s.session.jwt[0].claims.roles.clone().expect("roles");
    assert_eq!(
        rule.claim,
        ClaimName::of("urn:zitadel:iam:org:project:roles")
    );
    assert_eq!(rule.required[0].as_str(), "chat-user");
    let s = introspection(
        "client_id = \"b\"\nclient_secret_file = \"/s\"\nroles_claim = \"realm_access.roles\"\nrequired_roles = [\"a\", \"b\"]",
    )
    .expect("introspection roles");
    let rule: RoleRule = s
        .session
        .introspection
        .expect("i")
        .claims
        .roles
        .expect("roles");
    assert_eq!(rule.required.len(), 2);
    // A roles claim alone is valid and requires nothing.
    let s = jwt("roles_claim = \"groups\"").expect("claim alone");
    assert!(
        s.session.jwt[0]
            .claims
            .roles
            .as_ref()
            .is_some_and(|r| r.required.is_empty())
    );
}

#[test]
fn required_roles_need_a_roles_claim() {
    let err = error(jwt("required_roles = [\"chat-user\"]"));
    assert!(
        err.starts_with("config key `session.jwt[0].required_roles`: needs roles_claim"),
        "{err}"
    );
    let err = error(introspection(
        "client_id = \"b\"\nclient_secret_file = \"/s\"\nrequired_roles = [\"chat-user\"]",
    ));
    assert!(
        err.starts_with("config key `session.introspection.required_roles`: needs roles_claim"),
        "{err}"
    );
    let err = error(jwt("roles_claim = \"r\"\nrequired_roles = [\"\"]"));
    assert!(err.contains("required_roles"), "{err}");
}
