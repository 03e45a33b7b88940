//! `[[session.endpoint]]`, `header` on `[[session.jwt]]`, and the rules between session sources.

use serde_json::json;

use super::endpoint::JsonPointer;
use super::tests::{MINIMAL, parse};
use crate::config::{ConfigError, Settings};

fn error(result: Result<Settings, ConfigError>) -> String {
    let err = result.expect_err("refused").0;
    assert!(!err.contains('\n'), "{err}");
    err
}

fn endpoint(keys: &str) -> Result<Settings, ConfigError> {
    parse(&format!(
        "{MINIMAL}\n[[session.endpoint]]\nurl = \"https://www.example.com/api/me\"\n{keys}\n"
    ))
}

const JWT: &str = "[[session.jwt]]\nissuer = \"https://auth.example.com\"\naudience = \"w\"\njwks_url = \"https://auth.example.com/keys\"\nalgorithms = [\"RS256\"]\n";

fn pointer(text: &str) -> JsonPointer {
    JsonPointer::try_from(text.to_owned()).expect("a pointer")
}

#[test]
fn json_pointers_follow_rfc_6901() {
    // The examples of RFC 6901 §5.
    let doc = json!({"foo": ["bar", "baz"], "": 0, "a/b": 1, "c%d": 2, "e^f": 3, "g|h": 4,
                     "i\\j": 5, "k\"l": 6, " ": 7, "m~n": 8});
    for (text, want) in [
        ("", doc.clone()),
        ("/foo", json!(["bar", "baz"])),
        ("/foo/0", json!("bar")),
        ("/", json!(0)),
        ("/a~1b", json!(1)),
        ("/c%d", json!(2)),
        ("/e^f", json!(3)),
        ("/g|h", json!(4)),
        ("/i\\j", json!(5)),
        ("/k\"l", json!(6)),
        ("/ ", json!(7)),
        ("/m~0n", json!(8)),
    ] {
        assert_eq!(pointer(text).resolve(&doc), Some(&want), "{text}");
    }
    for absent in [
        "/foo/2", "/foo/-", "/foo/01", "/foo/+1", "/foo/", "/nope", "/foo/0/x",
    ] {
        assert_eq!(pointer(absent).resolve(&doc), None, "{absent}");
    }
    // `~01` is `~1` unescaped once, never `/`.
    assert_eq!(
        pointer("/~01").resolve(&json!({"~1": "x", "/": "y"})),
        Some(&json!("x"))
    );
    for bad in ["id", "/a~2", "/a~", "~1"] {
        assert!(JsonPointer::try_from(bad.to_owned()).is_err(), "{bad}");
    }
}

#[test]
fn an_endpoint_reads_every_key() {
    let s = endpoint(
        "cookies = [\"sessionid\", \"csrftoken\"]\nuser_id_pointer = \"/identity/id\"\nemail_pointer = \"/email\"\nname_pointer = \"/name\"\nroles_pointer = \"/roles\"\nrequired_roles = [\"chat\"]\nuser_id_prefix = \"site:\"\ncache_secs = 0\ntimeout_ms = 500\n",
    )
    .expect("valid");
    let e = &s.session.endpoint[0];
    assert_eq!(e.cookies.len(), 2);
    assert_eq!(e.user_id_pointer.as_str(), "/identity/id");
    assert_eq!(e.cache_secs.get(), 0);
    assert_eq!(e.timeout_ms.get(), 500);
    assert_eq!(e.issuer(), "https://www.example.com");
    assert!(!e.is_plaintext_remote());
    // Round trip through check-config's output.
    let again = parse(&s.redacted_toml()).expect("check-config's output loads");
    assert_eq!(again.session.endpoint, s.session.endpoint);
    // Defaults.
    let s = endpoint("cookies = [\"sessionid\"]\nuser_id_pointer = \"/id\"").expect("valid");
    let e = &s.session.endpoint[0];
    assert_eq!((e.cache_secs.get(), e.timeout_ms.get()), (30, 2000));
    assert!(!e.bearer && e.email_pointer.is_none() && e.roles.is_none());
}

#[test]
fn endpoint_problems_name_the_key() {
    for (keys, key) in [
        ("user_id_pointer = \"/id\"", "session.endpoint[0].cookies"),
        (
            "cookies = [\"a\", \"a\"]\nuser_id_pointer = \"/id\"",
            "session.endpoint[0].cookies",
        ),
        ("cookies = [\"a b\"]\nuser_id_pointer = \"/id\"", "cookies"),
        (
            "cookies = [\"a\"]\nuser_id_pointer = \"id\"",
            "user_id_pointer",
        ),
        ("cookies = [\"a\"]", "user_id_pointer"),
        (
            "cookies = [\"a\"]\nuser_id_pointer = \"/id\"\nrequired_roles = [\"r\"]",
            "session.endpoint[0].required_roles",
        ),
        (
            "cookies = [\"a\"]\nuser_id_pointer = \"/id\"\ncache_secs = 301",
            "cache_secs",
        ),
        (
            "cookies = [\"a\"]\nuser_id_pointer = \"/id\"\ntimeout_ms = 0",
            "timeout_ms",
        ),
        (
            "cookies = [\"a\"]\nuser_id_pointer = \"/id\"\nforward_all = true",
            "forward_all",
        ),
    ] {
        let err = error(endpoint(keys));
        assert!(err.contains(key), "{keys}: {err}");
    }
    let err = error(parse(&format!(
        "{MINIMAL}\n[[session.endpoint]]\nurl = \"https://u:p@www.example.com/me\"\ncookies = [\"a\"]\nuser_id_pointer = \"/id\"\n"
    )));
    assert!(err.contains("url") && !err.contains("u:p"), "{err}");
    let err = error(parse(&format!(
        "{MINIMAL}\n[[session.endpoint]]\nurl = \"https://www.example.com/me#x\"\ncookies = [\"a\"]\nuser_id_pointer = \"/id\"\n"
    )));
    assert!(err.contains("session.endpoint[0].url"), "{err}");
}

#[test]
fn plain_http_is_remote_unless_loopback() {
    for (url, remote) in [
        ("http://127.0.0.1:8000/me", false),
        ("http://[::1]:8000/me", false),
        ("http://localhost:3000/me", false),
        ("http://web.default.svc/me", true),
        ("http://10.0.0.5/me", true),
        ("https://www.example.com/me", false),
    ] {
        let s = parse(&format!(
            "{MINIMAL}\n[[session.endpoint]]\nurl = \"{url}\"\ncookies = [\"a\"]\nuser_id_pointer = \"/id\"\n"
        ))
        .expect("valid");
        assert_eq!(s.session.endpoint[0].is_plaintext_remote(), remote, "{url}");
    }
}

fn two_endpoints(second_url: &str, a: &str, b: &str) -> Result<Settings, ConfigError> {
    parse(&format!(
        "{MINIMAL}\n[[session.endpoint]]\nurl = \"https://www.example.com/api/me\"\ncookies = [\"sessionid\"]\nuser_id_pointer = \"/id\"\n{a}\n[[session.endpoint]]\nurl = \"{second_url}\"\ncookies = [\"connect.sid\"]\nuser_id_pointer = \"/id\"\n{b}\n"
    ))
}

#[test]
fn two_sites_need_distinct_prefixes() {
    let err = error(two_endpoints("https://shop.example.com/me", "", ""));
    assert!(
        err.starts_with("config key `session.endpoint[1].user_id_prefix`: must be set"),
        "{err}"
    );
    let err = error(two_endpoints(
        "https://shop.example.com/me",
        "user_id_prefix = \"site:\"",
        "user_id_prefix = \"site:shop:\"",
    ));
    assert!(
        err.contains("session.endpoint[1].user_id_prefix") && err.contains("begin with"),
        "{err}"
    );
    two_endpoints(
        "https://shop.example.com/me",
        "user_id_prefix = \"site:\"",
        "user_id_prefix = \"shop:\"",
    )
    .expect("distinct prefixes");
    // Two endpoints of one origin are one site: one id space, one prefix.
    two_endpoints("https://www.example.com/api/v2/me", "", "").expect("same origin");
    let err = error(two_endpoints(
        "https://www.example.com/api/v2/me",
        "user_id_prefix = \"a:\"",
        "",
    ));
    assert!(
        err.contains("must equal session.endpoint[0].user_id_prefix"),
        "{err}"
    );
}

#[test]
fn an_endpoint_and_an_issuer_are_different_id_spaces() {
    let err = error(parse(&format!(
        "{MINIMAL}\n{JWT}\n[[session.endpoint]]\nurl = \"https://www.example.com/api/me\"\ncookies = [\"sessionid\"]\nuser_id_pointer = \"/id\"\nuser_id_prefix = \"site:\"\n"
    )));
    assert!(err.contains("session.jwt[0].user_id_prefix"), "{err}");
    parse(&format!(
        "{MINIMAL}\n{JWT}user_id_prefix = \"idp:\"\n[[session.endpoint]]\nurl = \"https://www.example.com/api/me\"\ncookies = [\"sessionid\"]\nuser_id_pointer = \"/id\"\nuser_id_prefix = \"site:\"\n"
    ))
    .expect("distinct prefixes");
    // The site that is also the JWT issuer (same origin) is one id space.
    parse(&format!(
        "{MINIMAL}\n{}\n[[session.endpoint]]\nurl = \"https://auth.example.com/api/me\"\ncookies = [\"sessionid\"]\nuser_id_pointer = \"/id\"\n",
        JWT
    ))
    .expect("same issuer");
}

#[test]
fn a_cookie_belongs_to_one_source() {
    let err = error(parse(&format!(
        "{MINIMAL}\n{JWT}cookie = \"sessionid\"\nuser_id_prefix = \"idp:\"\n[[session.endpoint]]\nurl = \"https://www.example.com/api/me\"\ncookies = [\"sessionid\"]\nuser_id_pointer = \"/id\"\nuser_id_prefix = \"site:\"\n"
    )));
    assert!(
        err.starts_with(
            "config key `session.endpoint[0].cookies`: `sessionid` is already session.jwt[0].cookie"
        ),
        "{err}"
    );
    let err = error(parse(&format!(
        "{MINIMAL}\n[[session.endpoint]]\nurl = \"https://a.example.com/me\"\ncookies = [\"sid\"]\nuser_id_pointer = \"/id\"\nuser_id_prefix = \"a:\"\n[[session.endpoint]]\nurl = \"https://b.example.com/me\"\ncookies = [\"other\", \"sid\"]\nuser_id_pointer = \"/id\"\nuser_id_prefix = \"b:\"\n"
    )));
    assert!(err.contains("session.endpoint[1].cookies"), "{err}");
}

#[test]
fn bearer_goes_to_one_site_only() {
    let err = error(parse(&format!(
        "{MINIMAL}\n[[session.endpoint]]\nurl = \"https://a.example.com/me\"\nbearer = true\nuser_id_pointer = \"/id\"\nuser_id_prefix = \"a:\"\n[[session.endpoint]]\nurl = \"https://b.example.com/me\"\nbearer = true\nuser_id_pointer = \"/id\"\nuser_id_prefix = \"b:\"\n"
    )));
    assert!(
        err.starts_with("config key `session.endpoint[1].bearer`: only one endpoint"),
        "{err}"
    );
    let err = error(parse(&format!(
        "{MINIMAL}\n[session.introspection]\nurl = \"https://auth.example.com/introspect\"\nclient_id = \"b\"\nclient_secret_file = \"/s\"\nuser_id_prefix = \"i:\"\n[[session.endpoint]]\nurl = \"https://a.example.com/me\"\nbearer = true\nuser_id_pointer = \"/id\"\nuser_id_prefix = \"a:\"\n"
    )));
    assert!(err.contains("session.endpoint[0].bearer"), "{err}");
}

#[test]
fn a_proxy_header_is_read_instead_of_cookies_and_authorization() {
    let s = parse(&format!(
        "{MINIMAL}\n{JWT}header = \"Cf-Access-Jwt-Assertion\"\n"
    ))
    .expect("valid");
    assert_eq!(
        s.session.jwt[0].header.as_ref().map(|h| h.as_str()),
        Some("Cf-Access-Jwt-Assertion")
    );
    let again = parse(&s.redacted_toml()).expect("round trip");
    assert_eq!(again.session.jwt[0].header, s.session.jwt[0].header);
    for bad in [
        "Authorization",
        "cookie",
        "Origin",
        "X Y",
        "",
        "x-forwarded-for",
    ] {
        let err = error(parse(&format!("{MINIMAL}\n{JWT}header = \"{bad}\"\n")));
        assert!(err.contains("session.jwt[0].header"), "{bad}: {err}");
    }
    let err = error(parse(&format!(
        "{MINIMAL}\n{JWT}header = \"X-Pomerium-Jwt-Assertion\"\ncookie = \"s\"\n"
    )));
    assert!(err.contains("session.jwt[0].cookie"), "{err}");
}
