//! The real binary as an operator runs it: start-up errors, and no secret in any log line even at
//! `RUST_LOG=trace`.

use std::time::Duration;

use serde_json::json;

use testkit::prelude::*;

use testkit::process::run_broker as run;

#[test]
fn version_and_help() {
    let (code, out, _) = run(&["--version"], &[]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        format!("intellia-token-broker {}", env!("CARGO_PKG_VERSION"))
    );
    let (code, out, _) = run(&["--help"], &[]);
    assert_eq!(code, 0);
    for cmd in [
        "serve",
        "dev",
        "check-config",
        "simulate-intellia",
        "healthcheck",
    ] {
        assert!(out.contains(cmd), "{cmd} missing from --help");
    }
}

fn assert_one_clear_line(stderr: &str, must_contain: &[&str]) {
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    for needle in must_contain {
        assert!(lines[0].contains(needle), "`{needle}` not in: {}", lines[0]);
    }
}

#[test]
fn missing_key_file_is_one_clear_line_naming_the_path() {
    let dir = temp_dir();
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        "[server]\nlisten = \"127.0.0.1:0\"\n[intellia]\norganization_id = \"org-1\"\napi_key_file = \"/nonexistent/intellia/api-key\"\n",
    )
    .unwrap();
    let (code, _, err) = run(&["serve", "--config", cfg.to_str().unwrap()], &[]);
    assert_ne!(code, 0);
    assert_one_clear_line(&err, &["/nonexistent/intellia/api-key", "does not exist"]);

    std::fs::write(dir.join("empty-key"), "\n").unwrap();
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[intellia]\norganization_id = \"org-1\"\napi_key_file = \"{}/empty-key\"\n",
            dir.display()
        ),
    )
    .unwrap();
    let (code, _, err) = run(&["serve", "--config", cfg.to_str().unwrap()], &[]);
    assert_ne!(code, 0);
    assert_one_clear_line(&err, &["empty-key", "is empty"]);
}

#[test]
fn typo_in_a_key_is_one_clear_line_naming_it() {
    let dir = temp_dir();
    let cfg = dir.join("config.toml");
    std::fs::write(dir.join("k"), "key").unwrap();
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nmax_body_byte = 10\n[intellia]\norganization_id = \"org-1\"\napi_key_file = \"{}/k\"\n",
            dir.display()
        ),
    )
    .unwrap();
    let (code, _, err) = run(&["check-config", "--config", cfg.to_str().unwrap()], &[]);
    assert_ne!(code, 0);
    assert_one_clear_line(&err, &["max_body_byte"]);

    let (code, _, err) = run(
        &["serve", "--config", cfg.to_str().unwrap()],
        &[("BROKER__INTELLIA__TIMEOUT_MS", "soon")],
    );
    assert_ne!(code, 0);
    assert!(!err.contains("panicked"));

    let (code, _, err) = run(&["serve", "--config", "/nonexistent/config.toml"], &[]);
    assert_ne!(code, 0);
    assert_one_clear_line(&err, &["/nonexistent/config.toml", "does not exist"]);
}

#[test]
fn check_config_redacts_and_validates_secrets() {
    let dir = temp_dir();
    std::fs::write(dir.join("k"), API_KEY).unwrap();
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[intellia]\norganization_id = \"org-1\"\napi_key_file = \"{}/k\"\n[cors]\nallowed_origins = [\"https://www.example.com\"]\n",
            dir.display()
        ),
    )
    .unwrap();
    let (code, out, err) = run(&["check-config", "--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("organization_id = \"org-1\""));
    assert!(!out.contains(API_KEY));
}

/// Runs the real binary at `RUST_LOG=trace` through every credential path and checks that no
/// secret shows up in its output or in any response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_logs_or_responses() {
    let (sim_url, sim) = start_simulator(Default::default());
    let dir = temp_dir();
    let cfg = TestConfig {
        allowed_origins: vec![ALLOWED_ORIGIN.to_owned()],
        ..TestConfig::default()
    };
    write_config(&cfg, &dir, &sim_url, "127.0.0.1:0");
    let broker = BrokerProcess::serve(&dir, "trace");
    let base = broker.base.clone();
    let backend = broker.backend_url("");
    let client = http_client();
    let session_token = session("alice");
    let cookie_token = session("bob");
    let mut responses = String::new();
    let requests = vec![
        client
            .post(format!("{base}/v1/token"))
            .bearer_auth(&session_token),
        client
            .post(format!("{base}/v1/token"))
            .header("Cookie", format!("site_session={cookie_token}"))
            .header("Origin", ALLOWED_ORIGIN),
        client
            .post(format!("{base}/v1/token"))
            .header("Cookie", format!("site_session={cookie_token}"))
            .header("Origin", "https://evil.test"),
        client
            .post(format!("{backend}/v1/backend/token"))
            .bearer_auth(BACKEND_SECRET)
            .json(&json!({"userId": "carol", "userEmail": "carol.secret.mail@example.com"})),
        client
            .post(format!("{backend}/v1/backend/token"))
            .bearer_auth("wrong-secret-guess"),
        client.post(format!("{base}/v1/token?access_token={session_token}")),
    ];
    for req in requests {
        let resp = req.send().await.unwrap();
        responses.push_str(&format!("{:?}\n", resp.headers()));
        responses.push_str(&resp.text().await.unwrap());
    }
    let minted: Vec<String> = responses
        .split("\"token\":\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(str::to_owned)
        .collect();
    assert_eq!(minted.len(), 3, "three tokens minted: {responses}");
    assert_eq!(sim.minted(), 3);

    let (status, logs) = broker.stop().await;
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    assert!(logs.len() > 1000, "trace logs captured: {logs}");
    assert!(
        logs.contains("\"route\":\"/v1/token\""),
        "request lines are logged"
    );

    let mut secrets = vec![
        API_KEY.to_owned(),
        BACKEND_SECRET.to_owned(),
        HS_SECRET.to_owned(),
        session_token.clone(),
        cookie_token.clone(),
        "carol.secret.mail@example.com".to_owned(),
    ];
    secrets.extend(minted.iter().cloned());
    assert_no_secret(&logs, &secrets, "the logs");
    for secret in [
        API_KEY,
        BACKEND_SECRET,
        HS_SECRET,
        session_token.as_str(),
        cookie_token.as_str(),
    ] {
        assert!(
            !responses.contains(secret),
            "a secret leaked into a response"
        );
    }
}

#[tokio::test]
async fn healthcheck_command_probes_a_running_broker() {
    let app = spawn_app(TestConfig::default()).await;
    let url = app.url("/healthz");
    let ok = tokio::task::spawn_blocking(move || run(&["healthcheck", "--url", &url], &[]))
        .await
        .unwrap();
    assert_eq!(ok.0, 0, "{ok:?}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}/healthz", closed.local_addr().unwrap());
    drop(closed);
    let (code, _, err) = run(&["healthcheck", "--url", &dead], &[]);
    assert_ne!(code, 0);
    assert_one_clear_line(&err, &["not answering"]);
    let missing = app.url("/nope");
    let (code, _, _) =
        tokio::task::spawn_blocking(move || run(&["healthcheck", "--url", &missing], &[]))
            .await
            .unwrap();
    assert_ne!(code, 0, "a 404 is not healthy");
}

/// SIGTERM under a steady stream of requests: readiness flips at once, the stream (which stops
/// when readiness flips, as a load balancer would) sees no error, an in-flight slow request
/// finishes, and the process exits within the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_without_failing_a_request() {
    let (sim_url, sim) = start_simulator(Default::default());
    let dir = temp_dir();
    write_config(
        &TestConfig {
            cache: false,
            ..TestConfig::default()
        },
        &dir,
        &sim_url,
        "127.0.0.1:0",
    );
    let broker = BrokerProcess::serve(&dir, "info");
    let base = broker.base.clone();
    let client = http_client();
    for _ in 0..100 {
        if client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stream = {
        let (client, base, stop) = (client.clone(), base.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                match client
                    .post(format!("{base}/v1/token"))
                    .bearer_auth(session(&format!("s{n}")))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) => failed.push(format!("status {}", r.status())),
                    Err(e) => failed.push(format!("connection: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (ok, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A slow request in flight when the listener stops must still complete.
    sim.set_latency(Duration::from_millis(800));
    let slow = {
        let (client, base) = (client.clone(), base.clone());
        tokio::spawn(async move {
            // Sent just before the drain delay (1 s) ends, finishing after it.
            tokio::time::sleep(Duration::from_millis(600)).await;
            client
                .post(format!("{base}/v1/token"))
                .bearer_auth(session("slow"))
                .send()
                .await
        })
    };
    let started = std::time::Instant::now();
    broker.sigterm();
    // Readiness turns 503 at once.
    let mut flipped = None;
    for _ in 0..50 {
        match client.get(format!("{base}/readyz")).send().await {
            Ok(r) if r.status() == 503 => {
                flipped = Some(started.elapsed());
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let flipped = flipped.expect("readyz turned 503");
    assert!(flipped < Duration::from_millis(500), "{flipped:?}");
    // The load balancer reacts within a probe period; the stream stops then.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = stream.await.unwrap();
    assert!(ok > 10, "{ok} requests served");
    assert!(failed.is_empty(), "failed during drain: {failed:?}");
    let slow = slow
        .await
        .unwrap()
        .expect("the in-flight request was not cut off");
    assert_eq!(slow.status(), 200);
    let (status, _) = tokio::task::spawn_blocking(move || broker.wait())
        .await
        .unwrap();
    let exited = started.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        exited < Duration::from_secs(3),
        "exited after {exited:?}, grace is 3 s"
    );
    assert!(
        exited >= Duration::from_secs(1),
        "the drain delay was honoured"
    );
}

#[test]
fn check_config_reads_every_secret_serve_reads() {
    // `check-config` once skipped `redis.cache_secret_file` and passed configs `serve` refused.
    let dir = default_config_dir();
    let config = dir.join("config.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(
        "\n[redis]\nurl = \"redis://127.0.0.1:9\"\ncache_secret_file = \"/nonexistent/cache-secret\"\n",
    );
    std::fs::write(&config, text).unwrap();
    for command in ["check-config", "serve"] {
        let (code, _, err) = run(&[command, "--config", config.to_str().unwrap()], &[]);
        assert_ne!(code, 0, "{command} accepted a missing secret file");
        assert_one_clear_line(
            &err,
            &["redis.cache_secret_file", "/nonexistent/cache-secret"],
        );
    }
}

/// The Helm chart ships `config.json`: `check-config` and `serve` read it by its extension, with
/// the same checks as TOML.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_config_is_checked_and_served() {
    let (sim_url, sim) = start_simulator(Default::default());
    let dir = temp_dir();
    let toml = write_config(&TestConfig::default(), &dir, &sim_url, "127.0.0.1:0");
    let settings =
        intellia_token_broker::testing::Settings::from_toml_with_env(&toml, Vec::new()).unwrap();
    let json = dir.join("config.json");
    std::fs::write(&json, serde_json::to_string_pretty(&settings).unwrap()).unwrap();
    let json_arg = json.to_str().unwrap().to_owned();

    let (code, out, err) = run(&["check-config", "--config", &json_arg], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("organization_id = \"{ORG}\"")),
        "{out}"
    );
    assert!(!out.contains(API_KEY));

    let typo = dir.join("typo.json");
    let mut value: serde_json::Value = serde_json::to_value(&settings).unwrap();
    value["cache"]["enabeld"] = json!(true);
    std::fs::write(&typo, value.to_string()).unwrap();
    let (code, _, err) = run(&["check-config", "--config", typo.to_str().unwrap()], &[]);
    assert_ne!(code, 0);
    assert_one_clear_line(&err, &["typo.json", "enabeld"]);

    let mut serve = std::process::Command::new(broker_bin());
    serve.args(["serve", "--config", &json_arg]);
    let broker = BrokerProcess::spawn_captured(serve, "info");
    let resp = http_client()
        .post(broker.url("/v1/token"))
        .bearer_auth(session("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    assert_eq!(sim.minted(), 1);
    let (status, logs) = broker.stop().await;
    assert!(status.success(), "{status:?}: {logs}");
}

/// The backend listener is bound like the others: a taken `backend.listen` is one clear line.
#[test]
fn a_taken_backend_listen_address_is_one_clear_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = default_config_dir();
    let config = dir.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "[backend]\nlisten = \"127.0.0.1:0\"",
        &format!("[backend]\nlisten = \"{addr}\""),
        1,
    );
    assert!(text.contains(&addr.to_string()));
    std::fs::write(&config, text).unwrap();
    let (code, _, err) = run(&["serve", "--config", config.to_str().unwrap()], &[]);
    assert_ne!(code, 0);
    assert_one_clear_line(&err, &[&format!("cannot listen on {addr}")]);
}

/// The attack of the last review: a second `cors` object (or `trusted_proxies` list) later in a
/// JSON config silently replaced the first, leaving an attacker's origin (or 0.0.0.0/0). A key
/// named twice is refused, naming it, by `check-config` and `serve` alike.
#[test]
fn a_json_key_named_twice_is_refused_naming_it() {
    let dir = default_config_dir();
    let toml = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    let settings =
        intellia_token_broker::testing::Settings::from_toml_with_env(&toml, Vec::new()).unwrap();
    let json = serde_json::to_string_pretty(&settings).unwrap();
    let cases = [
        (
            "cors",
            json.replacen(
                "\n  \"cors\": {",
                "\n  \"cors\": {\"allowed_origins\": [\"https://evil.example\"]},\n  \"cors\": {",
                1,
            ),
        ),
        (
            "server.trusted_proxies",
            json.replacen(
                "\"trusted_proxies\": [",
                "\"trusted_proxies\": [\"0.0.0.0/0\"], \"trusted_proxies\": [",
                1,
            ),
        ),
        (
            "session.jwt[0].audience",
            json.replacen(
                "\"audience\": ",
                "\"audience\": \"someone-elses-app\", \"audience\": ",
                1,
            ),
        ),
    ];
    for (key, text) in cases {
        assert_ne!(text, json, "{key}: the duplicate was inserted");
        let path = dir.join("twice.json");
        std::fs::write(&path, &text).unwrap();
        for command in ["check-config", "serve"] {
            let (code, _, err) = run(&[command, "--config", path.to_str().unwrap()], &[]);
            assert_ne!(code, 0, "{command} accepted {key} twice");
            assert_one_clear_line(
                &err,
                &["twice.json", &format!("config key `{key}`"), "twice"],
            );
        }
    }
}

/// The API key travels to `intellia.base_url` with every mint: plain HTTP beyond loopback is
/// refused. Other plain-HTTP endpoints to other hosts, and introspection without an audience,
/// work but are named: one WARN each at start-up, a warning from `check-config`, a `warn` line
/// from `doctor` (which does not fail the run for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_and_introspection_without_audience_are_named() {
    let dir = default_config_dir();
    let config = dir.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    for base in ["http://api.intellia.com.au", "http://127.0.0.1.nip.io:8080"] {
        let bad = text.replacen(
            "base_url = \"http://127.0.0.1:9\"",
            &format!("base_url = \"{base}\""),
            1,
        );
        assert_ne!(bad, text);
        std::fs::write(&config, bad).unwrap();
        for command in ["check-config", "serve"] {
            let (code, _, err) = run(&[command, "--config", config.to_str().unwrap()], &[]);
            assert_ne!(code, 0, "{command} accepted {base}");
            assert_one_clear_line(&err, &["intellia.base_url", "must be https://"]);
        }
    }
    std::fs::write(dir.join("introspection-secret"), "client-secret").unwrap();
    let weak = format!(
        "{text}\n[[session.jwt]]\nissuer = \"https://idp.example\"\naudience = \"{AUDIENCE}\"\njwks_url = \"http://idp.invalid/keys\"\nalgorithms = [\"RS256\"]\nuser_id_prefix = \"idp:\"\n\n[session.introspection]\nurl = \"http://idp.invalid/introspect\"\nclient_id = \"broker\"\nclient_secret_file = \"{}/introspection-secret\"\nuser_id_prefix = \"op:\"\n",
        dir.display()
    )
    .replacen("\n[[session.jwt]]\nissuer = \"https://auth.test.example\"", "\n[[session.jwt]]\nuser_id_prefix = \"site:\"\nissuer = \"https://auth.test.example\"", 1);
    std::fs::write(&config, &weak).unwrap();
    let keys = [
        "session.jwt[1].jwks_url",
        "session.introspection.url",
        "session.introspection.audience",
    ];

    let (code, _, err) = run(&["check-config", "--config", config.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
    for key in keys {
        assert_eq!(
            err.lines()
                .filter(
                    |l| l.starts_with("warning: config key `") && l.contains(&format!("`{key}`"))
                )
                .count(),
            1,
            "{key}: {err}"
        );
    }

    let broker = BrokerProcess::serve(&dir, "info");
    let (_, output) = broker.stop().await;
    for key in keys {
        let warned: Vec<&str> = output
            .lines()
            .filter(|l| {
                l.contains("\"level\":\"WARN\"") && l.contains(&format!("\"key\":\"{key}\""))
            })
            .collect();
        assert_eq!(warned.len(), 1, "one WARN for {key}: {output}");
    }

    let (code, stdout, _) = run(
        &[
            "doctor",
            "--config",
            config.to_str().unwrap(),
            "--timeout-secs",
            "2",
        ],
        &[],
    );
    assert_eq!(code, 1, "the unreachable provider fails: {stdout}");
    for key in keys {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("warn config {key}: "))),
            "{key}: {stdout}"
        );
    }
    assert!(stdout.contains("3 warnings"), "{stdout}");
    assert!(
        !stdout.contains("5 failed"),
        "warnings are not failures: {stdout}"
    );

    // With an audience and HTTPS endpoints there is nothing to say.
    let strong = weak
        .replace("http://idp.invalid", "https://idp.invalid")
        .replace(
            "user_id_prefix = \"op:\"\n",
            "user_id_prefix = \"op:\"\naudience = \"site\"\n",
        );
    std::fs::write(&config, strong).unwrap();
    let (code, _, err) = run(&["check-config", "--config", config.to_str().unwrap()], &[]);
    assert_eq!((code, err.as_str()), (0, ""));
}

/// `dev` is read by a person: short plain lines (no JSON, no colour codes in a pipe, no actix
/// start-up chatter) around its banner. `--log-format json` still gives JSON lines. (`serve`
/// keeps JSON as its default: `BrokerProcess::serve` finds its address in the JSON listening line.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_logs_plain_lines_unless_json_is_asked_for() {
    use std::time::Instant;
    use testkit::process::{BrokerProcess, broker_bin, free_addr, wait_ok};

    for json in [false, true] {
        let dir = temp_dir();
        let addr = free_addr();
        let mut cmd = std::process::Command::new(broker_bin());
        if json {
            cmd.args(["--log-format", "json"]);
        }
        cmd.args(["dev", "--listen", &addr.to_string()])
            .env_remove("BROKER_LOG_FORMAT");
        let broker =
            BrokerProcess::spawn_to_files(cmd, addr, &dir.join("stdout"), &dir.join("stderr"));
        assert!(
            wait_ok(addr, "/healthz", Instant::now(), Duration::from_secs(20))
                .await
                .is_some(),
            "dev did not start: {}",
            broker.output()
        );
        let status = testkit::app::http_client()
            .post(broker.url("/v1/token"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 401);
        let (_, out) = broker.stop().await;
        assert!(out.contains("Demo page:"), "{out}");
        let logs: Vec<&str> = out
            .lines()
            .filter(|l| l.contains(" INFO ") || l.starts_with('{'))
            .collect();
        let listening = logs
            .iter()
            .find(|l| l.contains("broker listening"))
            .unwrap_or_else(|| panic!("no listening line: {out}"));
        let request = logs
            .iter()
            .find(|l| l.contains("/v1/token"))
            .unwrap_or_else(|| panic!("no request line: {out}"));
        if json {
            for line in [listening, request] {
                serde_json::from_str::<serde_json::Value>(line)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            }
        } else {
            assert!(!out.lines().any(|l| l.starts_with('{')), "{out}");
            assert!(!out.contains('\u{1b}'), "colour codes in a pipe: {out}");
            assert!(!out.contains("starting service"), "{out}");
            assert!(request.contains("status=401"), "{request}");
        }
    }
}

/// Every file of `config/examples/` (one per kind of site) and `config/default.toml` passes
/// `check-config` as shipped, with its secret files in place: each `/var/run/secrets/…` path is
/// moved under a temporary directory and given a value of the kind it names.
#[test]
fn every_shipped_example_passes_check_config() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(root.join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.push(root.join("default.toml"));
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for kind in [
        "oidc-single-site.toml",
        "zitadel.toml",
        "site-sessions.toml",
        "identity-aware-proxy.toml",
        "sidecar.toml",
    ] {
        assert!(
            names.iter().any(|n| n == kind),
            "config/examples/{kind} missing: {names:?}"
        );
    }
    let key_pem = std::fs::read_to_string(testkit::consts::fixture("rsa-private.pem")).unwrap();
    for file in files {
        let dir = temp_dir();
        let secrets = dir.join("secrets");
        let text = std::fs::read_to_string(&file)
            .unwrap()
            .replace("/var/run/secrets/", &format!("{}/", secrets.display()));
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            let Some((key, rest)) = line.split_once('=') else {
                continue;
            };
            let key = key.trim();
            if !key.ends_with("_file") {
                continue;
            }
            let path = std::path::PathBuf::from(
                rest.trim()
                    .trim_start_matches('"')
                    .split('"')
                    .next()
                    .unwrap(),
            );
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let value = if key == "client_key_file" {
                serde_json::json!({"type": "application", "keyId": "k-1", "key": key_pem,
                                   "appId": "1", "clientId": "broker@example"})
                .to_string()
            } else {
                "example-secret-value-that-is-long-enough-0123456789".to_owned()
            };
            std::fs::write(&path, value).unwrap();
        }
        let config = dir.join(file.file_name().unwrap());
        std::fs::write(&config, &text).unwrap();
        let (code, out, err) = run(&["check-config", "--config", config.to_str().unwrap()], &[]);
        assert_eq!(code, 0, "{}: {err}", file.display());
        assert!(out.contains("is valid"), "{}: {out}", file.display());
    }
}

/// Every readable, writable mapping of a process (heap, stacks, allocator arenas), read through
/// `/proc/<pid>/mem`: what a core dump or a memory-reading attacker on the host would see.
fn process_memory(pid: u32) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut all = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !perms.starts_with("rw") || line.contains("[vvar") || line.contains("[vsyscall") {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (start, end) = (
            u64::from_str_radix(start, 16).unwrap(),
            u64::from_str_radix(end, 16).unwrap(),
        );
        let mut at = start;
        let mut chunk = vec![0u8; 1 << 20];
        while at < end {
            let len = ((end - at) as usize).min(chunk.len());
            match mem.read_at(&mut chunk[..len], at) {
                Ok(n) if n > 0 => all.extend_from_slice(&chunk[..n]),
                _ => {}
            }
            at += len as u64;
        }
    }
    all
}

/// Secret files are re-read every `secret_poll_secs`. Each read's buffers are wiped: once a
/// secret is rotated away, no copy of it is left in the broker's memory for a core dump or an
/// attacker who can read it to find.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_leaves_no_copy_in_memory() {
    const OLD: &str = "rotated-away-backend-secret-OLD-MARKER-0123456789";
    const NEW: &str = "current-backend-secret-NEW-MARKER-that-is-a-good-deal-longer-than-the-old-one-0123456789abcdef0123456789abcdef";
    let dir = default_config_dir();
    std::fs::write(dir.join("backend"), format!("{OLD}\n")).unwrap();
    let broker = BrokerProcess::serve(&dir, "info");
    let attempt = |secret: &'static str| {
        http_client()
            .post(broker.backend_url("/v1/backend/token"))
            .bearer_auth(secret)
            .json(&json!({"userId": "memory-user"}))
            .send()
    };
    // A few polls with the old secret in place, each reading it again. (No request carries it:
    // a request's own bytes are the client's, not the broker's copy.)
    tokio::time::sleep(Duration::from_millis(3500)).await;
    std::fs::write(dir.join("backend"), format!("{NEW}\n")).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        attempt(NEW).await.unwrap().status(),
        503,
        "the new secret is in use"
    );
    let memory = process_memory(broker.pid());
    let found = |needle: &str| memory.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(
        found(NEW),
        "the scan reads the broker's memory: the current secret is there"
    );
    assert!(
        !found(OLD),
        "a copy of the rotated-away secret is left in memory"
    );
    broker.stop().await;
}
