//! The secrets registry: loading, rotation, the checks a value must pass.

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
    assert_eq!(cell.get().expose(), "sk_live_abc");
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
fn reload_swaps_value_fingerprint_and_generation_together() {
    let path = temp_file("rotating", "first");
    let cell = SecretCell::load(SecretSource::File(path.clone())).expect("loads");
    let before = cell.get();
    std::fs::write(&path, "second").unwrap_or_default();
    assert!(cell.reload().expect("reload"));
    let after = cell.get();
    assert_eq!(after.expose(), "second");
    assert_eq!(after.generation(), before.generation() + 1);
    assert_eq!(
        *after.fingerprint(),
        fingerprint(&SecretString::from("second"))
    );
    std::fs::write(&path, "").unwrap_or_default();
    assert!(cell.reload().is_err());
    assert_eq!(cell.get().expose(), "second");
}

#[test]
fn a_rotated_secret_must_keep_the_minimum_length() {
    let path = temp_file("hmac", &"x".repeat(32));
    let cell =
        SecretCell::load_at_least(SecretSource::File(path.clone()), 32).expect("long enough");
    std::fs::write(&path, "short").unwrap_or_default();
    assert!(matches!(cell.reload(), Err(SecretError::TooShort { .. })));
    assert_eq!(cell.get().expose().len(), 32);
}

fn key_json(pem: &str, key_id: &str) -> String {
    serde_json::json!({
        "type": "application", "keyId": key_id, "key": pem,
        "appId": "1", "clientId": "broker-jwt"
    })
    .to_string()
}

#[test]
fn an_api_key_a_header_cannot_carry_is_refused_now_and_on_rotation() {
    let path = temp_file("api-key-header", "sk_live\u{1}key\n");
    let settings = Settings::from_toml_with_env(
        &format!(
            "[server]\n[intellia]\norganization_id = \"org\"\napi_key_file = \"{}\"\n",
            path.display()
        ),
        Vec::<(String, String)>::new(),
    )
    .expect("settings");
    let refused = Secrets::load(&settings, InlineSecrets::default()).unwrap_err();
    assert!(
        refused.starts_with("config key `intellia.api_key_file`: "),
        "{refused}"
    );
    assert!(refused.contains("HTTP header"), "{refused}");
    assert!(!refused.contains("sk_live"), "{refused}");

    std::fs::write(&path, "sk_live_good_key\n").unwrap_or_default();
    let secrets = Secrets::load(&settings, InlineSecrets::default()).expect("a good key");
    std::fs::write(&path, "sk_live_bad\rkey").unwrap_or_default();
    assert!(
        secrets
            .reload()
            .iter()
            .any(|r| matches!(r, Reload::Failed { .. }))
    );
    assert_eq!(secrets.api_key().get().expose(), "sk_live_good_key");
}

fn private_key_jwt_settings(path: &Path, key_id: Option<&str>) -> Settings {
    let key_id = key_id.map_or(String::new(), |k| format!("key_id = \"{k}\"\n"));
    Settings::from_toml_with_env(
        &format!(
            "[server]\n[intellia]\norganization_id = \"org\"\napi_key_env = \"UNUSED\"\n\
             [session.introspection]\nurl = \"https://auth.test/introspect\"\n\
             client_auth = \"private_key_jwt\"\nclient_key_file = \"{}\"\n{key_id}",
            path.display()
        ),
        Vec::<(String, String)>::new(),
    )
    .expect("settings")
}

fn inline_api_key() -> InlineSecrets {
    InlineSecrets {
        api_key: Some("k".into()),
        ..InlineSecrets::default()
    }
}

#[test]
fn the_client_key_file_is_loaded_checked_and_rotated() {
    let pkcs1 = include_str!("../../tests/fixtures/rsa-private-pkcs1.pem");
    let other = include_str!("../../tests/fixtures/rsa-private-2.pem");
    let path = temp_file("client-key.json", &key_json(pkcs1, "111"));
    let secrets = Secrets::load(&private_key_jwt_settings(&path, None), inline_api_key())
        .expect("a Zitadel key JSON loads");
    let cell = secrets
        .get(SecretKind::IntrospectionClientKey)
        .expect("registered");
    assert!(secrets.get(SecretKind::IntrospectionClient).is_none());
    // A rotated file that holds no usable key is refused; the last good key stays.
    std::fs::write(&path, "{\"type\":\"application\"}").unwrap_or_default();
    let seen = secrets.reload();
    assert!(
        matches!(
            &seen[..],
            [Reload::Failed {
                kind: SecretKind::IntrospectionClientKey,
                first: true,
                ..
            }]
        ),
        "{seen:?}"
    );
    assert_eq!(secrets.stale(), vec!["session.introspection.client_key"]);
    assert_eq!(cell.get().generation(), 0);
    // A good new key is taken.
    std::fs::write(&path, key_json(other, "222")).unwrap_or_default();
    secrets.reload();
    assert_eq!(cell.get().generation(), 1);
    assert!(secrets.stale().is_empty());
}

#[test]
fn a_bad_client_key_file_names_the_config_key_and_never_the_key() {
    let pkcs1 = include_str!("../../tests/fixtures/rsa-private-pkcs1.pem");
    let path = temp_file("client-key-mismatch.json", &key_json(pkcs1, "111"));
    let err = Secrets::load(
        &private_key_jwt_settings(&path, Some("999")),
        inline_api_key(),
    )
    .expect_err("key_id mismatch");
    assert!(
        err.starts_with("config key `session.introspection.client_key_file`: secret file "),
        "{err}"
    );
    assert!(
        err.contains("has keyId \"111\", but session.introspection.key_id is \"999\""),
        "{err}"
    );
    assert!(!err.contains(pkcs1.lines().nth(1).unwrap_or("-")), "{err}");
    let ec = include_str!("../../tests/fixtures/ec-private.pem");
    let path = temp_file("client-key-ec.pem", ec);
    let err = Secrets::load(
        &private_key_jwt_settings(&path, Some("1")),
        inline_api_key(),
    )
    .expect_err("EC key");
    assert!(
        err.contains("session.introspection.client_id must be set"),
        "{err}"
    );
}
