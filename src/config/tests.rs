use super::*;

pub(super) const MINIMAL: &str = r#"
[server]
listen = "127.0.0.1:0"
[intellia]
organization_id = "org-456"
api_key_file = "/tmp/key"
"#;

pub(super) fn parse(text: &str) -> Result<Settings, ConfigError> {
    Settings::from_toml_with_env(text, Vec::<(String, String)>::new())
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let s = parse(MINIMAL).expect("minimal config parses");
    assert_eq!(s.server.max_body_bytes.get(), 4096);
    assert_eq!(s.server.shutdown_grace_secs.get(), 20);
    assert_eq!(s.intellia.timeout_ms.get(), 5000);
    assert_eq!(s.intellia.max_retries.get(), 2);
    assert_eq!(
        s.intellia.base_url.url().as_str(),
        "https://api.intellia.com.au/"
    );
    assert!(s.cache.enabled);
    assert_eq!(s.cache.min_remaining_secs.get(), 900);
    assert!(s.rate_limit.per_user.is_none());
}

#[test]
fn unknown_key_is_named() {
    let err = parse(&format!("{MINIMAL}\n[cache]\nenabeld = true\n")).expect_err("typo rejected");
    assert!(err.0.contains("enabeld"), "{}", err.0);
    assert!(!err.0.contains('\n'));
}

#[test]
fn env_overrides_win_and_unknown_env_keys_fail() {
    let env = vec![(
        "BROKER__INTELLIA__ORGANIZATION_ID".to_owned(),
        "org-999".to_owned(),
    )];
    let s = Settings::from_toml_with_env(MINIMAL, env).expect("override applies");
    assert_eq!(s.intellia.organization_id.as_str(), "org-999");

    let env = vec![(
        "BROKER__INTELLIA__ORGANISATION_ID".to_owned(),
        "x".to_owned(),
    )];
    let err = Settings::from_toml_with_env(MINIMAL, env).expect_err("typo in env rejected");
    assert!(err.0.contains("organisation_id"), "{}", err.0);
}

#[test]
fn a_bad_env_value_names_the_variable_not_the_file() {
    let dir = std::env::temp_dir().join(format!("itb-config-env-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("broker.toml");
    std::fs::write(&path, MINIMAL).unwrap();
    let load = |var: &str, value: &str| {
        Settings::load_with_env(&path, vec![(var.to_owned(), value.to_owned())])
            .expect_err("refused")
            .0
    };
    let err = load("BROKER__SERVER__MAX_BODY_BYTES", "0");
    assert!(
        err.starts_with(
            "environment variable BROKER__SERVER__MAX_BODY_BYTES (config key `server.max_body_bytes`): "
        ),
        "{err}"
    );
    assert!(!err.contains("broker.toml"), "not the file's fault: {err}");
    let err = load("BROKER__CORS__ALLOWED_ORIGINS", "https://a.example.com,*");
    assert!(
        err.starts_with("environment variable BROKER__CORS__ALLOWED_ORIGINS (config key `cors.allowed_origins[1]`): "),
        "a list element: {err}"
    );
    let err = load("BROKER__INTELLIA__ORGANISATION_ID", "x");
    assert!(
        err.starts_with("environment variable BROKER__INTELLIA__ORGANISATION_ID: unknown config key `organisation_id`"),
        "an unknown key set by a variable: {err}"
    );
    // The same problem in the file is the file's, even with an unrelated variable set.
    std::fs::write(
        &path,
        format!("{MINIMAL}\n[cors]\nallowed_origins = [\"*\"]\n"),
    )
    .unwrap();
    let err = load("BROKER__SERVER__MAX_BODY_BYTES", "8192");
    assert!(
        err.starts_with(&format!(
            "{}: config key `cors.allowed_origins[0]`",
            path.display()
        )),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn env_lists_split_on_commas() {
    let env = vec![(
        "BROKER__CORS__ALLOWED_ORIGINS".to_owned(),
        "https://a.example.com,https://b.example.com".to_owned(),
    )];
    let s = Settings::from_toml_with_env(MINIMAL, env).expect("list override");
    assert_eq!(s.cors.allowed_origins.len(), 2);
}

#[test]
fn hs256_with_jwks_is_rejected_as_confusable() {
    let text = format!(
        "{MINIMAL}\n[[session.jwt]]\nissuer = \"https://auth.example.com\"\naudience = \"w\"\njwks_url = \"https://auth.example.com/keys\"\nalgorithms = [\"RS256\", \"HS256\"]\n"
    );
    let err = parse(&text).expect_err("mixed families rejected");
    assert!(err.0.contains("session.jwt[0].algorithms"), "{}", err.0);
}

#[test]
fn none_algorithm_is_never_accepted() {
    let text = format!(
        "{MINIMAL}\n[[session.jwt]]\nissuer = \"https://auth.example.com\"\naudience = \"w\"\njwks_url = \"https://auth.example.com/keys\"\nalgorithms = [\"none\"]\n"
    );
    assert!(parse(&text).is_err());
}

#[test]
fn errors_stay_on_one_line_whatever_the_value_holds() {
    // Found by the fuzz seed `fuzz/seeds/config/reject-alg-with-newline`.
    let text = format!(
        "{MINIMAL}\n[[session.jwt]]\nissuer = \"https://auth.example.com\"\naudience = \"w\"\njwks_url = \"https://auth.example.com/keys\"\nalgorithms = [\"RS256\\nforged log line\\r\\u0007\"]\n"
    );
    let err = parse(&text).expect_err("unknown algorithm rejected");
    assert!(!err.0.contains(['\n', '\r', '\u{7}']), "{:?}", err.0);
    assert!(err.0.contains("RS256\\nforged log line"), "{}", err.0);

    let err = parse(&format!("{MINIMAL}\n[cache]\n\"a\\rb\" = 1\n")).expect_err("unknown key");
    assert!(!err.0.contains('\r'), "{:?}", err.0);
}

/// The API key travels to `intellia.base_url` with every mint: plain HTTP only to this machine.
#[test]
fn intellia_base_url_is_https_unless_loopback() {
    let with = |base: &str| {
        parse(&MINIMAL.replace("[intellia]", &format!("[intellia]\nbase_url = \"{base}\"")))
    };
    for base in [
        "http://api.intellia.com.au",
        "http://10.0.0.7:8080/intellia",
        "http://127.0.0.1.nip.io",
        "http://localhost.evil.example",
        "http://0.0.0.0:8080",
        "http://[::ffff:10.0.0.1]",
    ] {
        let err = with(base).expect_err(base).0;
        assert_eq!(
            err,
            "config key `intellia.base_url`: must be https:// (the API key travels there); plain http:// only to a loopback host (127.0.0.1, ::1, localhost)",
            "{base}"
        );
    }
    for base in [
        "https://api.intellia.com.au",
        "http://127.0.0.1:9000",
        "http://127.8.9.10",
        "http://[::1]:9000/prefix/",
        "http://localhost:9000",
        "http://LOCALHOST",
    ] {
        with(base).unwrap_or_else(|e| panic!("{base}: {}", e.0));
    }
}

#[test]
fn intellia_base_url_with_query_or_fragment_is_refused() {
    // Found by the `config` fuzz target's rule that the mint URL ends in
    // `/orgs/{org}/assume-role`: these were accepted and minted at `https://api.example.com/`.
    for base in [
        "https://api.example.com/?x=",
        "https://api.example.com#frag",
        "https://api.example.com/?",
    ] {
        let text = MINIMAL.replace("[intellia]", &format!("[intellia]\nbase_url = \"{base}\""));
        let err = parse(&text).expect_err(base);
        assert!(err.0.contains("intellia.base_url"), "{}", err.0);
    }
    let text = MINIMAL.replace(
        "[intellia]",
        "[intellia]\nbase_url = \"https://api.example.com/intellia/\"",
    );
    let s = parse(&text).expect("a path prefix is fine");
    assert_eq!(
        s.intellia.assume_role_url().as_str(),
        "https://api.example.com/intellia/orgs/org-456/assume-role"
    );
}

#[test]
fn redis_url_that_start_up_cannot_parse_is_refused_without_quoting_it() {
    // Found by the `config` fuzz target: validation only checked the scheme, so `check-config`
    // passed and printed `url = "REDACTED"`, a configuration that does not load.
    let text = format!("{MINIMAL}\n[redis]\nurl = \"redis://:hunter2@redis:6379[x]/0\"\n");
    let err = parse(&text).expect_err("unparseable URL");
    assert!(err.0.contains("redis.url"), "{}", err.0);
    assert!(!err.0.contains("hunter2"), "{}", err.0);
    let ok = format!("{MINIMAL}\n[redis]\nurl = \"redis://:p%40ss@redis:6379/0\"\n");
    let shown = parse(&ok).expect("valid URL").redacted_toml();
    parse(&shown).expect("check-config's output loads");
}

#[test]
fn both_key_sources_rejected() {
    let text = MINIMAL.replace(
        "api_key_file = \"/tmp/key\"",
        "api_key_file = \"/tmp/key\"\napi_key_env = \"K\"",
    );
    let err = parse(&text).expect_err("ambiguous key source");
    assert!(err.0.contains("intellia.api_key_file"));
}

#[test]
fn shipped_configs_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut files = vec![root.join("default.toml")];
    for entry in std::fs::read_dir(root.join("examples")).unwrap() {
        files.push(entry.unwrap().path());
    }
    assert!(files.len() >= 4);
    for file in files {
        Settings::load_with_env(&file, Vec::<(String, String)>::new())
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    }
}

#[test]
fn redacted_toml_hides_redis_password_and_loads_again() {
    let text = format!("{MINIMAL}\n[redis]\nurl = \"rediss://broker:hunter2@redis:6380/0\"\n");
    let shown = parse(&text).expect("TLS Redis URL").redacted_toml();
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(
        shown.contains("rediss://broker:REDACTED@redis:6380/0"),
        "{shown}"
    );
    parse(&shown).expect("check-config's output loads");
}

#[test]
fn struct_level_problems_name_the_field() {
    let text = format!(
        "{MINIMAL}\n[[session.jwt]]\nissuer = \"https://a.example\"\naudience = \"w\"\nalgorithms = [\"RS256\"]\n"
    );
    let err = parse(&text).expect_err("no key source");
    assert!(
        err.0
            .starts_with("config key `session.jwt[0].jwks_url`: set exactly one"),
        "{}",
        err.0
    );
    let err = parse(&MINIMAL.replace("api_key_file = \"/tmp/key\"", "")).expect_err("no key");
    assert!(
        err.0
            .starts_with("config key `intellia.api_key_file`: missing"),
        "{}",
        err.0
    );
    let err =
        parse(&format!("{MINIMAL}\n[cache]\nmin_remaining_secs = 7200\n")).expect_err("range");
    assert_eq!(
        err.0,
        "config key `cache.min_remaining_secs`: must be at most 7199"
    );
}

fn two_issuers(prefix_a: &str, prefix_b: &str, issuer_b: &str) -> String {
    format!(
        "{MINIMAL}\n[[session.jwt]]\nissuer = \"https://a.example\"\naudience = \"w\"\njwks_url = \"https://a.example/keys\"\nalgorithms = [\"RS256\"]\nuser_id_prefix = \"{prefix_a}\"\n[[session.jwt]]\nissuer = \"{issuer_b}\"\naudience = \"w\"\njwks_url = \"https://b.example/keys\"\nalgorithms = [\"RS256\"]\nuser_id_prefix = \"{prefix_b}\"\n"
    )
}

#[test]
fn two_sources_never_share_user_ids_by_accident() {
    for (a, b, named) in [
        ("", "", "session.jwt[1].user_id_prefix"),
        ("a:", "", "session.jwt[1].user_id_prefix"),
        ("", "b:", "session.jwt[0].user_id_prefix"),
        ("x:", "x:", "session.jwt[1].user_id_prefix"),
        ("x", "x:", "session.jwt[1].user_id_prefix"),
        ("acme:eu:", "acme:", "session.jwt[1].user_id_prefix"),
    ] {
        let err = parse(&two_issuers(a, b, "https://b.example")).expect_err("collision refused");
        assert!(
            err.0.starts_with(&format!("config key `{named}`")),
            "{a:?} {b:?}: {}",
            err.0
        );
        assert!(!err.0.contains('\n'));
    }
    parse(&two_issuers("a:", "b:", "https://b.example")).expect("distinct prefixes");
}

#[test]
fn introspection_shares_the_id_space_of_its_own_issuer_only() {
    let intro = |issuer: &str, prefix: &str| {
        format!(
            "{MINIMAL}\n[[session.jwt]]\nissuer = \"https://a.example\"\naudience = \"w\"\njwks_url = \"https://a.example/keys\"\nalgorithms = [\"RS256\"]\nuser_id_prefix = \"a:\"\n[session.introspection]\nurl = \"https://a.example/introspect\"\nclient_id = \"broker\"\nclient_secret_file = \"/tmp/s\"\n{issuer}user_id_prefix = \"{prefix}\"\n"
        )
    };
    parse(&intro("issuer = \"https://a.example\"\n", "a:")).expect("same issuer, same prefix");
    let err = parse(&intro("issuer = \"https://a.example\"\n", "")).expect_err("same issuer");
    assert!(
        err.0.contains("session.introspection.user_id_prefix"),
        "{}",
        err.0
    );
    let err = parse(&intro("", "")).expect_err("no issuer named: another source");
    assert!(
        err.0.contains("session.introspection.user_id_prefix"),
        "{}",
        err.0
    );
    parse(&intro("", "opaque:")).expect("own prefix");
}

#[test]
fn any_grace_period_works_alone() {
    for grace in [1, 2, 5, 10, 600] {
        let text = MINIMAL.replace(
            "[server]",
            &format!("[server]\nshutdown_grace_secs = {grace}"),
        );
        let s = parse(&text).unwrap_or_else(|e| panic!("grace {grace}: {e}"));
        assert!(s.server.drain_delay_secs() < grace);
    }
    assert_eq!(parse(MINIMAL).unwrap().server.drain_delay_secs(), 5);
}

#[test]
fn managed_redis_keys_parse_and_conflicts_are_named() {
    let ok = format!(
        "{MINIMAL}\n[redis]\nurl = \"rediss://broker@redis:6380\"\npassword_file = \"/run/pw\"\nca_file = \"/etc/ca.pem\"\ncluster = true\n"
    );
    let s = parse(&ok).expect("TLS, ACL user, password file, CA, cluster");
    let redis = s.redis.expect("[redis]");
    assert!(redis.cluster && redis.url.is_tls());
    assert_eq!(redis.url.username(), Some("broker"));
    parse(&s_redacted(&ok)).expect("check-config's output loads");

    for (text, key) in [
        // The password in two places: refused rather than one silently winning.
        (
            "url = \"redis://broker:pw@redis\"\npassword_file = \"/run/pw\"",
            "redis.password_file",
        ),
        // A CA for a plain-text connection means the operator expected TLS.
        (
            "url = \"redis://redis\"\nca_file = \"/etc/ca.pem\"",
            "redis.ca_file",
        ),
        // `#insecure` would skip certificate checks.
        ("url = \"rediss://redis:6380/#insecure\"", "redis.url"),
        ("url = \"redis://redis/2\"\ncluster = true", "redis.url"),
    ] {
        let err = parse(&format!("{MINIMAL}\n[redis]\n{text}\n")).expect_err(text);
        assert!(err.0.contains(key), "{text}: {}", err.0);
        assert!(!err.0.contains(":pw@"), "{}", err.0);
    }
}

fn s_redacted(text: &str) -> String {
    parse(text).expect("valid").redacted_toml()
}

/// `MINIMAL` as the Helm chart writes it (`toPrettyJson`).
const MINIMAL_JSON: &str = r#"{
  "server": {"listen": "127.0.0.1:0"},
  "intellia": {"organization_id": "org-456", "api_key_file": "/tmp/key"}
}"#;

fn parse_json(text: &str) -> Result<Settings, ConfigError> {
    Settings::from_text_with_env(text, ConfigFormat::Json, Vec::<(String, String)>::new())
}

#[test]
fn json_config_reads_like_its_toml_twin() {
    let text = r#"{
      "server": {"listen": "127.0.0.1:0", "max_body_bytes": 8192, "trusted_proxies": ["10.0.0.0/8", "fd00::/8"]},
      "intellia": {"organization_id": "org-456", "api_key_file": "/tmp/key", "timeout_ms": 1500},
      "cors": {"allowed_origins": ["https://www.example.com"]},
      "session": {"jwt": [{"issuer": "https://auth.example.com", "audience": "w",
                           "jwks_url": "https://auth.example.com/keys", "algorithms": ["RS256"],
                           "leeway_secs": 10}]},
      "rate_limit": {"per_user": {"per_minute": 10, "burst": 5}, "per_ip": null},
      "telemetry": {"otlp_endpoint": "http://collector:4318", "sample_ratio": 1}
    }"#;
    let s = parse_json(text).expect("JSON config parses");
    assert_eq!(s.server.max_body_bytes.get(), 8192);
    assert_eq!(s.server.trusted_proxies.len(), 2);
    assert_eq!(s.intellia.timeout_ms.get(), 1500);
    assert_eq!(s.session.jwt.len(), 1);
    assert!(s.rate_limit.per_user.is_some() && s.rate_limit.per_ip.is_none());
    // Go's JSON writes 1.0 as 1: an integer where the broker reads a float is still the float.
    assert!((s.telemetry.sample_ratio.get() - 1.0).abs() < f64::EPSILON);
    // The same settings as TOML, so `check-config` shows one configuration whatever the syntax.
    assert_eq!(
        s.redacted_toml(),
        parse(&s.redacted_toml())
            .expect("round trip")
            .redacted_toml()
    );
    assert_eq!(
        parse_json(MINIMAL_JSON).expect("minimal").redacted_toml(),
        parse(MINIMAL).expect("minimal").redacted_toml()
    );
}

#[test]
fn json_unknown_key_is_named_on_one_line() {
    let text = MINIMAL_JSON.replace(
        r#""listen": "127.0.0.1:0""#,
        r#""listen": "127.0.0.1:0", "max_body_byte": 10"#,
    );
    let err = parse_json(&text).expect_err("typo rejected");
    assert!(
        err.0.starts_with("unknown config key `max_body_byte`"),
        "{}",
        err.0
    );
    assert!(!err.0.contains('\n'), "{:?}", err.0);
    let text = MINIMAL_JSON.replace("\n}", ",\n  \"cache\": {\"enabeld\": true}\n}");
    let err = parse_json(&text).expect_err("typo in a section");
    assert!(err.0.contains("enabeld"), "{}", err.0);
}

#[test]
fn json_wrong_type_names_the_key_path() {
    let text = MINIMAL_JSON.replace(
        r#""listen": "127.0.0.1:0""#,
        r#""listen": "127.0.0.1:0", "max_body_bytes": "big""#,
    );
    let err = parse_json(&text).expect_err("a string for an integer");
    assert!(
        err.0.starts_with("config key `server.max_body_bytes`: "),
        "{}",
        err.0
    );
    // Inside an array of tables the path reads as in TOML: `session.jwt[0].leeway_secs`.
    let text = MINIMAL_JSON.replace(
        "\n}",
        r#", "session": {"jwt": [{"issuer": "https://a.example", "audience": "w", "jwks_url": "https://a.example/keys", "algorithms": ["RS256"], "leeway_secs": "soon"}]}}"#,
    );
    let err = parse_json(&text).expect_err("a word for an integer");
    assert!(
        err.0
            .starts_with("config key `session.jwt[0].leeway_secs`: "),
        "{}",
        err.0
    );
    let err = parse_json(&MINIMAL_JSON.replace("\"org-456\"", "{\"id\": 456}"))
        .expect_err("an object for a string");
    assert!(err.0.contains("intellia.organization_id"), "{}", err.0);
    let err = parse_json("{\"server\": {\"listen\": \"127.0.0.1:0\",}").expect_err("bad JSON");
    assert!(!err.0.contains('\n'), "{:?}", err.0);
}

#[test]
fn the_file_extension_picks_the_syntax() {
    assert_eq!(
        ConfigFormat::of_path(Path::new("/etc/b/config.json")),
        ConfigFormat::Json
    );
    assert_eq!(
        ConfigFormat::of_path(Path::new("/etc/b/CONFIG.JSON")),
        ConfigFormat::Json
    );
    for toml in [
        "/etc/b/config.toml",
        "/etc/b/config",
        "/etc/b/config.conf",
        "/etc/b/json",
    ] {
        assert_eq!(
            ConfigFormat::of_path(Path::new(toml)),
            ConfigFormat::Toml,
            "{toml}"
        );
    }
    let dir = std::env::temp_dir().join(format!("broker-config-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let none = Vec::<(String, String)>::new;
    std::fs::write(dir.join("config.json"), MINIMAL_JSON).unwrap();
    std::fs::write(dir.join("config.toml"), MINIMAL).unwrap();
    // Each text under the other extension is a syntax error naming the file.
    std::fs::write(dir.join("json-as.toml"), MINIMAL_JSON).unwrap();
    std::fs::write(dir.join("toml-as.json"), MINIMAL).unwrap();
    Settings::load_with_env(&dir.join("config.json"), none()).expect("JSON by extension");
    Settings::load_with_env(&dir.join("config.toml"), none()).expect("TOML by extension");
    for wrong in ["json-as.toml", "toml-as.json"] {
        let err = Settings::load_with_env(&dir.join(wrong), none()).expect_err(wrong);
        assert!(
            err.0.contains(wrong) && !err.0.contains('\n'),
            "{:?}",
            err.0
        );
    }
    let env = vec![(
        "BROKER__INTELLIA__ORGANIZATION_ID".to_owned(),
        "org-9".to_owned(),
    )];
    let s = Settings::load_with_env(&dir.join("config.json"), env).expect("env override");
    assert_eq!(s.intellia.organization_id.as_str(), "org-9");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every cross-key rule's message, in full: where a rule is checked may move, what the operator
/// reads may not.
#[test]
fn cross_key_problems_read_exactly() {
    let server = |keys: &str| MINIMAL.replace("listen = \"127.0.0.1:0\"", keys);
    let redis = |keys: &str| format!("{MINIMAL}\n[redis]\n{keys}\n");
    let introspection = format!(
        "{}[session.introspection]\nurl = \"https://a.example/introspect\"\nclient_id = \"broker\"\nclient_secret_file = \"/tmp/s\"\nissuer = \"https://a.example\"\nuser_id_prefix = \"i:\"\n",
        two_issuers("a:", "b:", "https://b.example")
    );
    for (text, expected) in [
        (
            server("shutdown_grace_secs = 10\ndrain_delay_secs = 10"),
            "config key `server.drain_delay_secs`: must be shorter than server.shutdown_grace_secs, or in-flight requests get no time to finish",
        ),
        (
            server("listen = \"127.0.0.1:9000\"\nadmin_listen = \"127.0.0.1:9000\""),
            "config key `server.admin_listen`: must differ from server.listen: metrics never share the public listener",
        ),
        (
            format!("{MINIMAL}\n[backend]\nlisten = \"127.0.0.1:0\"\nsecret_file = \"/s\"\n")
                .replace(
                    "listen = \"127.0.0.1:0\"\n[intellia]",
                    "listen = \"127.0.0.1:8081\"\n[intellia]",
                )
                .replace("listen = \"127.0.0.1:0\"\nsecret_file", "secret_file"),
            "config key `backend.listen`: must differ from server.listen and server.admin_listen: the sidecar route never shares a listener with public or metrics routes",
        ),
        (
            format!(
                "{}\n[backend]\nlisten = \"127.0.0.1:9091\"\nsecret_file = \"/s\"\n",
                server("admin_listen = \"127.0.0.1:9091\"")
            ),
            "config key `backend.listen`: must differ from server.listen and server.admin_listen: the sidecar route never shares a listener with public or metrics routes",
        ),
        (
            two_issuers("a:", "b:", "https://a.example"),
            "config key `session.jwt[1].issuer`: the same issuer is configured twice",
        ),
        (
            introspection,
            "config key `session.introspection.user_id_prefix`: must equal session.jwt[0].user_id_prefix: both name the same issuer, so one person must be one user",
        ),
        (
            two_issuers("", "b:", "https://b.example"),
            "config key `session.jwt[0].user_id_prefix`: must be set (e.g. \"acme:\"): session.jwt[0] and session.jwt[1] are different session sources, and without distinct prefixes the same user id at both would be one user and get one token",
        ),
        (
            two_issuers("acme:eu:", "acme:", "https://b.example"),
            "config key `session.jwt[1].user_id_prefix`: `acme:` and session.jwt[0].user_id_prefix `acme:eu:` must differ and neither may begin with the other, or ids of the two sources can collide",
        ),
        (
            redis("url = \"redis://broker:pw@redis\"\npassword_file = \"/run/pw\""),
            "config key `redis.password_file`: the URL carries a password too; keep the password in one place (remove it from redis.url)",
        ),
        (
            redis("url = \"redis://redis\"\nca_file = \"/etc/ca.pem\""),
            "config key `redis.ca_file`: applies to TLS only; use a rediss:// URL",
        ),
        (
            redis("url = \"redis://redis/2\"\ncluster = true"),
            "config key `redis.url`: a Redis Cluster has only database 0; remove the database from the URL",
        ),
    ] {
        assert_eq!(parse(&text).expect_err(expected).0, expected);
    }
}

/// A section deserialized on its own, as the test kit builds `[redis]`: the rules hold there
/// too, because they are part of the conversion, not of loading.
fn alone<T: serde::de::DeserializeOwned>(section: serde_json::Value) -> Result<T, String> {
    serde_json::from_value(section).map_err(|e| e.to_string())
}

#[test]
fn server_rules_hold_for_the_section_alone() {
    use serde_json::json;
    let err = alone::<ServerSettings>(json!({"shutdown_grace_secs": 10, "drain_delay_secs": 10}))
        .expect_err("no time left to finish");
    assert!(
        err.starts_with("@drain_delay_secs: must be shorter"),
        "{err}"
    );
    let err = alone::<ServerSettings>(
        json!({"listen": "127.0.0.1:9000", "admin_listen": "127.0.0.1:9000"}),
    )
    .expect_err("one listener twice");
    assert!(err.starts_with("@admin_listen: must differ"), "{err}");
    alone::<ServerSettings>(json!({"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0"}))
        .expect("port 0 twice is two free ports");
    let err = alone::<ServerSettings>(json!({"listn": "127.0.0.1:0"})).expect_err("typo");
    assert!(err.contains("listn"), "{err}");
}

#[test]
fn session_rules_hold_for_the_section_alone() {
    use serde_json::json;
    let issuer = |issuer: &str, prefix: &str| {
        json!({"issuer": issuer, "audience": "w", "jwks_url": "https://a.example/keys",
               "algorithms": ["RS256"], "user_id_prefix": prefix})
    };
    let err = alone::<SessionSettings>(json!({"jwt": [
        issuer("https://a.example", "a:"), issuer("https://a.example", "b:")
    ]}))
    .expect_err("one issuer twice");
    assert!(err.starts_with("@jwt[1].issuer: the same issuer"), "{err}");
    let err = alone::<SessionSettings>(json!({"jwt": [
        issuer("https://a.example", "a:"), issuer("https://b.example", "")
    ]}))
    .expect_err("two sources, one id space");
    assert!(
        err.starts_with("@jwt[1].user_id_prefix: must be set"),
        "{err}"
    );
    let err = alone::<SessionSettings>(json!({
        "jwt": [issuer("https://a.example", "a:")],
        "introspection": {"url": "https://a.example/introspect", "client_id": "b",
                          "client_secret_file": "/s", "issuer": "https://a.example",
                          "user_id_prefix": "i:"}
    }))
    .expect_err("one issuer, two prefixes");
    assert!(
        err.starts_with("@introspection.user_id_prefix: must equal session.jwt[0]"),
        "{err}"
    );
    alone::<SessionSettings>(json!({"jwt": [
        issuer("https://a.example", "a:"), issuer("https://b.example", "b:")
    ]}))
    .expect("distinct issuers, distinct prefixes");
    let err = alone::<SessionSettings>(json!({"jwts": []})).expect_err("typo");
    assert!(err.contains("jwts"), "{err}");
}

#[test]
fn redis_rules_hold_for_the_section_alone() {
    use serde_json::json;
    for (section, field) in [
        (
            json!({"url": "redis://broker:pw@redis", "password_file": "/run/pw"}),
            "@password_file: ",
        ),
        (
            json!({"url": "redis://redis", "ca_file": "/etc/ca.pem"}),
            "@ca_file: ",
        ),
        (json!({"url": "redis://redis/2", "cluster": true}), "@url: "),
    ] {
        let err = alone::<RedisSettings>(section.clone()).expect_err(&section.to_string());
        assert!(err.starts_with(field), "{section}: {err}");
        assert!(!err.contains(":pw@"), "{err}");
    }
    alone::<RedisSettings>(json!({
        "url": "rediss://broker@redis:6380/0", "password_file": "/run/pw",
        "ca_file": "/etc/ca.pem", "cluster": true
    }))
    .expect("TLS, ACL user, password file, CA, cluster");
    let err =
        alone::<RedisSettings>(json!({"url": "redis://redis", "replica": 2})).expect_err("typo");
    assert!(err.contains("replica"), "{err}");
}

/// The defaults that only a parser can check: a typo in one fails here, not at a deployment's
/// first start.
#[test]
fn literal_defaults_parse() {
    let s = parse(&format!("{MINIMAL}\n[redis]\nurl = \"redis://redis\"\n")).expect("defaults");
    assert_eq!(
        s.intellia.base_url.url().as_str(),
        "https://api.intellia.com.au/"
    );
    assert_eq!(s.redis.expect("[redis]").key_prefix.as_str(), "itb");
    assert_eq!(s.telemetry.service_name.as_str(), "intellia-token-broker");
}

/// Every configuration the repository ships loads as it stands, and none of them teaches what the
/// hardening review found wrong: a trusted proxy range wide enough to hold other workloads, or
/// introspection without an audience.
#[test]
fn the_shipped_configurations_load_and_are_safe_to_copy() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut files = vec![root.join("default.toml")];
    let mut examples: Vec<_> = std::fs::read_dir(root.join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    examples.sort();
    assert!(examples.len() >= 4, "{examples:?}");
    files.extend(examples);
    for file in files {
        let s = Settings::load_with_env(&file, Vec::<(String, String)>::new())
            .unwrap_or_else(|e| panic!("{}: {}", file.display(), e.0));
        for net in &s.server.trusted_proxies {
            let narrow = match net {
                ipnet::IpNet::V4(v4) => v4.prefix_len() >= 24,
                ipnet::IpNet::V6(v6) => v6.prefix_len() >= 64,
            };
            assert!(narrow, "{}: trusts all of {net}", file.display());
        }
        if let Some(introspection) = &s.session.introspection {
            assert!(
                introspection.audience.is_some(),
                "{}: introspection without audience",
                file.display()
            );
        }
        if let Some(backend) = &s.backend {
            assert!(
                backend.listen.ip().is_loopback(),
                "{}: the sidecar route beyond loopback",
                file.display()
            );
        }
    }
}
