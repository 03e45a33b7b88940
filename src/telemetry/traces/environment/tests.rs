use super::*;

fn settings(toml: &str) -> TelemetrySettings {
    let text =
        format!("[server]\n[intellia]\norganization_id = \"o\"\napi_key_env = \"K\"\n{toml}");
    crate::config::Settings::from_toml_with_env(&text, Vec::<(String, String)>::new())
        .expect("valid")
        .telemetry
}

fn resolved(toml: &str, pairs: &[(&str, &str)]) -> Result<Resolved, String> {
    let env = OtelEnv {
        vars: pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        not_unicode: Vec::new(),
    };
    resolve(&settings(toml), &env)
}

fn config(toml: &str, pairs: &[(&str, &str)]) -> TraceConfig {
    resolved(toml, pairs)
        .expect("resolves")
        .config
        .expect("traces on")
}

fn warnings(r: &Resolved) -> Vec<&str> {
    r.notes
        .iter()
        .filter_map(|n| match n {
            Note::Warn(w) => Some(w.as_str()),
            Note::Info(_) => None,
        })
        .collect()
}

fn refused(pairs: &[(&str, &str)], naming: &str) {
    let e = resolved("", pairs).expect_err("refused");
    assert!(e.starts_with(naming), "{e} should name {naming}");
    assert!(!e.contains('\n'), "one line: {e}");
}

const EP: (&str, &str) = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");

#[test]
fn off_without_an_endpoint_and_quiet_when_nothing_is_set() {
    let r = resolved("", &[]).unwrap();
    assert_eq!(r.config, None);
    assert!(r.notes.is_empty(), "{:?}", r.notes);
}

#[test]
fn off_without_an_endpoint_names_what_is_not_used() {
    let r = resolved("", &[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).unwrap();
    assert_eq!(r.config, None);
    let w = warnings(&r);
    assert_eq!(w.len(), 1);
    assert!(w[0].contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{w:?}");
}

#[test]
fn config_endpoint_gets_the_signal_path_and_ratio() {
    let c = config(
        "[telemetry]\notlp_endpoint = \"http://collector:4318\"\nsample_ratio = 0.25\nservice_name = \"broker-eu\"",
        &[],
    );
    assert_eq!(c.endpoint.url.as_str(), "http://collector:4318/v1/traces");
    assert_eq!(
        c.endpoint.given.as_deref(),
        Some("http://collector:4318/v1/traces")
    );
    assert_eq!(c.service_name.as_deref(), Some("broker-eu"));
    assert_eq!(c.sampler, SamplerChoice::ParentBasedRatio(0.25));
    assert_eq!(c.protocol, Protocol::HttpProtobuf);
    assert_eq!(c.timeout, Duration::from_secs(10));
}

#[test]
fn variables_win_over_the_file_and_are_left_to_the_sdk() {
    let file = "[telemetry]\notlp_endpoint = \"http://collector:4318\"";
    let c = config(
        file,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:4318/"),
            ("OTEL_SERVICE_NAME", "svc"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
        ],
    );
    assert_eq!(c.endpoint.url.as_str(), "http://other:4318/v1/traces");
    assert_eq!(c.endpoint.given, None, "the SDK reads it");
    assert_eq!(c.service_name, None, "the SDK reads OTEL_SERVICE_NAME");
    assert_eq!(c.sampler, SamplerChoice::Ratio(0.5));
    let c = config(
        file,
        &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:1/custom")],
    );
    assert_eq!(c.endpoint.url.as_str(), "http://t:1/custom");
    assert_eq!(
        resolved(file, &[("OTEL_SDK_DISABLED", "TRUE")])
            .unwrap()
            .config,
        None
    );
    assert_eq!(
        resolved(file, &[("OTEL_TRACES_EXPORTER", "none")])
            .unwrap()
            .config,
        None
    );
}

#[test]
fn grpc_endpoints_are_used_as_given() {
    let c = config(
        "[telemetry]\notlp_endpoint = \"http://collector:4317\"",
        &[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
    );
    assert_eq!(c.protocol, Protocol::Grpc);
    assert_eq!(c.endpoint.url.as_str(), "http://collector:4317/");
    let c = config(
        "",
        &[
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317"),
        ],
    );
    assert_eq!(c.protocol, Protocol::Grpc, "the signal variable wins");
    assert_eq!(c.endpoint.url.as_str(), "https://collector:4317/");
}

#[test]
fn an_empty_endpoint_variable_makes_the_endpoint_given() {
    let c = config(
        "[telemetry]\notlp_endpoint = \"http://collector:4317\"",
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", ""),
        ],
    );
    assert_eq!(c.endpoint.given.as_deref(), Some("http://collector:4317/"));
}

#[test]
fn otlp_named_alone_uses_the_default_endpoint() {
    let c = config("", &[("OTEL_TRACES_EXPORTER", "otlp")]);
    assert_eq!(c.endpoint.url.as_str(), "http://localhost:4318/v1/traces");
    let c = config(
        "",
        &[
            ("OTEL_TRACES_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    );
    assert_eq!(c.endpoint.url.as_str(), "http://localhost:4317/");
}

#[test]
fn unsupported_values_are_refused_naming_the_variable() {
    refused(
        &[EP, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
        "OTEL_EXPORTER_OTLP_PROTOCOL=http/json",
    );
    refused(
        &[EP, ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "thrift")],
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    );
    refused(
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")],
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    );
    refused(
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://c")],
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    );
    refused(
        &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://a b/")],
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    );
    refused(
        &[EP, ("OTEL_EXPORTER_OTLP_COMPRESSION", "none")],
        "OTEL_EXPORTER_OTLP_COMPRESSION=none",
    );
    refused(
        &[EP, ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")],
        "OTEL_EXPORTER_OTLP_COMPRESSION=zstd",
    );
    refused(
        &[EP, ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "")],
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
    );
    refused(
        &[EP, ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")],
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    );
    refused(
        &[EP, ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "0")],
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    );
    refused(
        &[EP, ("OTEL_TRACES_EXPORTER", "zipkin")],
        "OTEL_TRACES_EXPORTER=zipkin",
    );
    refused(
        &[EP, ("OTEL_TRACES_EXPORTER", "otlp,console")],
        "OTEL_TRACES_EXPORTER",
    );
    refused(
        &[EP, ("OTEL_PROPAGATORS", "tracecontext,xray")],
        "OTEL_PROPAGATORS",
    );
    refused(&[EP, ("OTEL_PROPAGATORS", "none,b3")], "OTEL_PROPAGATORS");
    refused(
        &[EP, ("OTEL_TRACES_SAMPLER", "jaeger_remote")],
        "OTEL_TRACES_SAMPLER=",
    );
    refused(
        &[
            EP,
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "7"),
        ],
        "OTEL_TRACES_SAMPLER_ARG=7",
    );
    refused(
        &[EP, ("OTEL_TRACES_SAMPLER_ARG", "half")],
        "OTEL_TRACES_SAMPLER_ARG",
    );
    refused(
        &[EP, ("OTEL_BSP_MAX_QUEUE_SIZE", "-1")],
        "OTEL_BSP_MAX_QUEUE_SIZE",
    );
    refused(
        &[EP, ("OTEL_BSP_SCHEDULE_DELAY", "0")],
        "OTEL_BSP_SCHEDULE_DELAY=0",
    );
    refused(
        &[EP, ("OTEL_SPAN_EVENT_COUNT_LIMIT", "99999999999")],
        "OTEL_SPAN_EVENT_COUNT_LIMIT",
    );
    refused(
        &[EP, ("OTEL_EXPORTER_OTLP_HEADERS", "x-key")],
        "OTEL_EXPORTER_OTLP_HEADERS",
    );
    refused(
        &[EP, ("OTEL_EXPORTER_OTLP_HEADERS", "bad name=v")],
        "OTEL_EXPORTER_OTLP_HEADERS",
    );
    refused(
        &[EP, ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "a=%zz")],
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    );
    refused(
        &[
            EP,
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", ""),
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=b"),
        ],
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    );
    refused(
        &[EP, ("OTEL_RESOURCE_ATTRIBUTES", "team")],
        "OTEL_RESOURCE_ATTRIBUTES",
    );
    refused(
        &[EP, ("OTEL_RESOURCE_ATTRIBUTES", "=x")],
        "OTEL_RESOURCE_ATTRIBUTES",
    );
    refused(
        &[EP, ("OTEL_EXPORTER_OTLP_INSECURE", "yes")],
        "OTEL_EXPORTER_OTLP_INSECURE",
    );
    refused(
        &[
            EP,
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem"),
        ],
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
    );
    refused(
        &[
            EP,
            (
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                "/nonexistent/c.pem",
            ),
        ],
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE is set alone",
    );
    refused(
        &[EP, ("OTEL_CONFIG_FILE", "/etc/otel.yaml")],
        "OTEL_CONFIG_FILE",
    );
}

#[test]
fn header_values_never_appear_in_errors_or_the_description() {
    let secret = "Bearer%20s3cr3t-value";
    let c = config(
        "",
        &[
            EP,
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                &format!("Authorization={secret},x-tenant=acme"),
            ),
        ],
    );
    assert_eq!(c.header_names, ["authorization", "x-tenant"]);
    assert!(!c.describe().contains("s3cr3t"), "{}", c.describe());
    let e = resolved(
        "",
        &[
            EP,
            ("OTEL_EXPORTER_OTLP_HEADERS", "Authorization=s3cr3t\u{1}"),
        ],
    )
    .expect_err("a control character");
    assert!(!e.contains("s3cr3t"), "{e}");
}

#[test]
fn the_certificate_is_read_and_checked() {
    let dir = std::env::temp_dir().join(format!("itb-otel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let not_pem = dir.join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let e = resolved(
        "",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", not_pem.to_str().unwrap()),
        ],
    )
    .expect_err("no certificate in it");
    assert!(e.contains("holds no PEM certificate"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn service_name_in_resource_attributes_beats_the_file() {
    let file = "[telemetry]\notlp_endpoint = \"http://c:4318\"\nservice_name = \"from-file\"";
    let c = config(
        file,
        &[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "service.name=from-attrs,team=web",
        )],
    );
    assert_eq!(
        c.service_name, None,
        "the SDK reads service.name from the attributes"
    );
    let c = config(file, &[]);
    assert_eq!(c.service_name.as_deref(), Some("from-file"));
    // Percent-encoded values are decoded (the SDK keeps them as written).
    let c = config(
        file,
        &[("OTEL_RESOURCE_ATTRIBUTES", "service.name=a%20b,team=x%2Cy")],
    );
    assert!(
        c.resource
            .contains(&("service.name".to_owned(), "a b".to_owned()))
    );
    assert!(c.resource.contains(&("team".to_owned(), "x,y".to_owned())));
    // OTEL_SERVICE_NAME wins over the attribute.
    let c = config(
        file,
        &[
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=a%20b"),
            ("OTEL_SERVICE_NAME", "svc"),
        ],
    );
    assert!(!c.resource.iter().any(|(k, _)| k == "service.name"));
    assert_eq!(
        c.service_name.as_deref(),
        Some("svc"),
        "given again: the SDK would let the attribute win"
    );
    assert!(c.resource.iter().any(|(k, _)| k == "service.version"));
    assert_eq!(
        config(file, &[("OTEL_SERVICE_NAME", "svc")]).service_name,
        None
    );
}

#[test]
fn the_default_sampler_takes_the_ratio_from_the_argument_then_the_file() {
    let file = "[telemetry]\notlp_endpoint = \"http://c:4318\"\nsample_ratio = 0.1";
    assert_eq!(
        config(file, &[]).sampler,
        SamplerChoice::ParentBasedRatio(0.1)
    );
    assert_eq!(
        config(file, &[("OTEL_TRACES_SAMPLER_ARG", "0.3")]).sampler,
        SamplerChoice::ParentBasedRatio(0.3)
    );
    assert_eq!(
        config(file, &[("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")]).sampler,
        SamplerChoice::ParentBasedRatio(0.1)
    );
    let r = resolved(
        file,
        &[
            ("OTEL_TRACES_SAMPLER", "always_on"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.3"),
        ],
    )
    .unwrap();
    assert_eq!(r.config.as_ref().unwrap().sampler, SamplerChoice::AlwaysOn);
    assert!(
        warnings(&r)
            .iter()
            .any(|w| w.contains("OTEL_TRACES_SAMPLER_ARG"))
    );
}

#[test]
fn propagators_default_to_w3c_and_take_the_named_ones() {
    assert_eq!(
        config("", &[EP]).propagators,
        [PropagatorName::TraceContext]
    );
    assert_eq!(
        config(
            "",
            &[
                EP,
                ("OTEL_PROPAGATORS", "tracecontext, baggage,b3,b3multi,b3")
            ]
        )
        .propagators,
        [
            PropagatorName::TraceContext,
            PropagatorName::Baggage,
            PropagatorName::B3,
            PropagatorName::B3Multi
        ]
    );
    assert!(
        config("", &[EP, ("OTEL_PROPAGATORS", "none")])
            .propagators
            .is_empty()
    );
}

#[test]
fn variables_the_broker_does_not_use_are_named_in_one_warning() {
    let r = resolved(
        "",
        &[
            EP,
            ("OTEL_LOG_LEVEL", "debug"),
            ("OTEL_METRICS_EXPORTER", "otlp"),
            ("OTEL_LOGS_EXPORTER", "none"),
            ("OTEL_EXPORTER_OTLP_ENDPIONT", "http://typo"),
        ],
    )
    .unwrap();
    let w = warnings(&r);
    assert_eq!(w.len(), 1, "{w:?}");
    for name in [
        "OTEL_LOG_LEVEL",
        "OTEL_METRICS_EXPORTER",
        "OTEL_EXPORTER_OTLP_ENDPIONT",
    ] {
        assert!(w[0].contains(name), "{w:?}");
    }
    assert!(
        !w[0].contains("OTEL_LOGS_EXPORTER"),
        "none is what the broker does: {w:?}"
    );
}

#[test]
fn contradictions_warn() {
    let r = resolved("", &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")]).unwrap();
    assert!(
        warnings(&r).iter().any(|w| w.contains("4317")),
        "{:?}",
        r.notes
    );
    let r = resolved(
        "",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_INSECURE", "true"),
        ],
    )
    .unwrap();
    assert!(
        warnings(&r)
            .iter()
            .any(|w| w.contains("OTEL_EXPORTER_OTLP_INSECURE"))
    );
    let r = resolved(
        "",
        &[
            EP,
            ("OTEL_BSP_MAX_QUEUE_SIZE", "8"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "16"),
        ],
    )
    .unwrap();
    assert!(
        warnings(&r)
            .iter()
            .any(|w| w.contains("OTEL_BSP_MAX_EXPORT_BATCH_SIZE"))
    );
    let r = resolved("", &[EP, ("OTEL_SDK_DISABLED", "maybe")]).unwrap();
    assert!(r.config.is_some());
    assert!(warnings(&r).iter().any(|w| w.contains("OTEL_SDK_DISABLED")));
}

#[test]
fn the_export_timeout_is_read_and_concurrent_exports_are_named() {
    assert_eq!(config("", &[EP]).export_timeout, Duration::from_secs(30));
    assert_eq!(
        config("", &[EP, ("OTEL_BSP_EXPORT_TIMEOUT", "500")]).export_timeout,
        Duration::from_millis(500)
    );
    let concurrency = |n: &str| {
        let r = resolved("", &[EP, ("OTEL_BSP_MAX_CONCURRENT_EXPORTS", n)]).unwrap();
        warnings(&r)
            .iter()
            .any(|w| w.contains("OTEL_BSP_MAX_CONCURRENT_EXPORTS"))
    };
    assert!(concurrency("4"));
    assert!(!concurrency("1"));
}

#[test]
fn the_description_has_no_credentials() {
    let c = config(
        "",
        &[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "https://u:p4ss@c.example:443/v1/traces?key=k3y",
        )],
    );
    let d = c.describe();
    assert!(!d.contains("p4ss") && !d.contains("k3y"), "{d}");
    assert!(d.contains("https://c.example/v1/traces"), "{d}");
}

#[test]
fn sample_ratio_takes_integers_and_environment_overrides() {
    let base = "[server]\n[intellia]\norganization_id = \"o\"\napi_key_env = \"K\"\n";
    let s = crate::config::Settings::from_toml_with_env(
        &format!("{base}[telemetry]\nsample_ratio = 0"),
        Vec::<(String, String)>::new(),
    )
    .expect("an integer ratio");
    assert_eq!(s.telemetry.sample_ratio.get(), 0.0);
    let s = crate::config::Settings::from_toml_with_env(
        base,
        vec![
            (
                "BROKER__TELEMETRY__SAMPLE_RATIO".to_owned(),
                "0.5".to_owned(),
            ),
            (
                "BROKER__TELEMETRY__OTLP_ENDPOINT".to_owned(),
                "http://c:4318".to_owned(),
            ),
        ],
    )
    .expect("overrides");
    assert_eq!(s.telemetry.sample_ratio.get(), 0.5);
    assert!(s.telemetry.otlp_endpoint.is_some());
}

#[test]
fn sample_ratio_outside_zero_to_one_is_a_config_error() {
    let text = "[server]\n[intellia]\norganization_id = \"o\"\napi_key_env = \"K\"\n[telemetry]\nsample_ratio = 1.5";
    let e = crate::config::Settings::from_toml_with_env(text, Vec::<(String, String)>::new())
        .expect_err("out of range");
    assert!(e.0.contains("telemetry.sample_ratio"), "{}", e.0);
}
