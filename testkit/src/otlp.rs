//! The OTLP trace receiver (`tests/otlp-receiver/`, a real collector in Python: OTLP/HTTP, and
//! OTLP/gRPC served by `grpcio`, both decoded with `opentelemetry-proto`) as a child process: spans
//! as JSON, modes that make it fail (`500`) or hang, TLS with a client certificate, and a gRPC
//! port that refuses compressed messages.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds the receiver's venv when it is missing (`run.sh --install-only`; PyPI is needed once).
fn python() -> PathBuf {
    let python = repo().join(".venv-otlp/bin/python");
    if !python.exists() {
        let status = Command::new("bash")
            .arg(repo().join("tests/otlp-receiver/run.sh"))
            .arg("--install-only")
            .status()
            .expect("run tests/otlp-receiver/run.sh --install-only");
        assert!(
            status.success(),
            "the OTLP receiver venv could not be built"
        );
    }
    python
}

/// How to start the receiver.
#[derive(Debug, Default, Clone)]
pub struct ReceiverOptions {
    /// Serve both ports over TLS with this certificate (`ca` is what a client must trust).
    pub tls: Option<crate::redis::TlsFiles>,
    /// With `tls`: require a client certificate signed by `tls.ca`.
    pub client_certificate: bool,
    /// Refuse compressed gRPC messages (to tell that a client compresses).
    pub grpc_identity_only: bool,
}

pub struct OtlpReceiver {
    child: Child,
    /// `http(s)://127.0.0.1:PORT`, for `OTEL_EXPORTER_OTLP_ENDPOINT` / `[telemetry] otlp_endpoint`.
    pub endpoint: String,
    pub port: u16,
    /// `http(s)://127.0.0.1:PORT` of the OTLP/gRPC trace service.
    pub grpc_endpoint: String,
    client: reqwest::Client,
}

impl OtlpReceiver {
    /// Starts the receiver on free ports; it exits with this process (its stdin is our pipe).
    pub fn start() -> OtlpReceiver {
        OtlpReceiver::start_with(&ReceiverOptions::default())
    }

    pub fn start_with(options: &ReceiverOptions) -> OtlpReceiver {
        let mut args = vec!["--port".to_owned(), "0".to_owned()];
        if let Some(tls) = &options.tls {
            args.extend(["--tls-cert".to_owned(), tls.cert.display().to_string()]);
            args.extend(["--tls-key".to_owned(), tls.key.display().to_string()]);
            if options.client_certificate {
                args.extend(["--client-ca".to_owned(), tls.ca.display().to_string()]);
            }
        }
        if options.grpc_identity_only {
            args.push("--grpc-identity-only".to_owned());
        }
        let mut child = Command::new(python())
            .arg(repo().join("tests/otlp-receiver/receiver.py"))
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the OTLP receiver");
        let line =
            crate::process::ready_line(&mut child, "the OTLP receiver", Duration::from_secs(60));
        let ready: Value = serde_json::from_str(&line).expect("a JSON ready line");
        // The control API is on the same (TLS) port as the OTLP/HTTP export.
        let client = match &options.tls {
            None => crate::app::http_client(),
            Some(tls) => {
                intellia_token_broker::testing::install_crypto_provider();
                let ca = std::fs::read(&tls.ca).expect("the test CA");
                let mut builder = reqwest::Client::builder()
                    .tls_certs_merge([reqwest::Certificate::from_pem(&ca).expect("a PEM CA")]);
                if options.client_certificate {
                    let key = std::fs::read(&tls.key).expect("the test key");
                    let cert = std::fs::read(&tls.cert).expect("the test certificate");
                    let both = [key.as_slice(), b"\n", cert.as_slice()].concat();
                    builder =
                        builder.identity(reqwest::Identity::from_pem(&both).expect("an identity"));
                }
                builder.build().expect("a client trusting the test CA")
            }
        };
        OtlpReceiver {
            child,
            endpoint: ready["endpoint"].as_str().expect("endpoint").to_owned(),
            port: u16::try_from(ready["port"].as_u64().expect("port")).expect("a port"),
            grpc_endpoint: ready["grpc_endpoint"]
                .as_str()
                .expect("grpc_endpoint")
                .to_owned(),
            client,
        }
    }

    /// Metadata of every export request (`GET /requests`): protocol, headers, encoding, outcome.
    pub async fn requests(&self) -> Vec<Value> {
        self.client
            .get(format!("{}/requests", self.endpoint))
            .send()
            .await
            .expect("GET /requests")
            .json()
            .await
            .expect("requests JSON")
    }

    /// Spans matching `query` (e.g. `trace_id=…`), waiting up to `timeout` for at least `min`.
    pub async fn spans(&self, query: &str, min: usize, timeout: Duration) -> Vec<Value> {
        let url = format!(
            "{}/spans?min={min}&timeout_ms={}&{query}",
            self.endpoint,
            timeout.as_millis()
        );
        let resp = self
            .client
            .get(url)
            .timeout(timeout + Duration::from_secs(5))
            .send()
            .await
            .expect("GET /spans");
        resp.json::<Vec<Value>>().await.expect("spans JSON")
    }

    /// `ok`, `500` or `hang`.
    pub async fn set_mode(&self, mode: &str) {
        let resp = self
            .client
            .post(format!("{}/__control/mode", self.endpoint))
            .json(&json!({ "mode": mode }))
            .send()
            .await
            .expect("POST /__control/mode");
        assert!(resp.status().is_success());
    }

    /// `{"mode", "requests", "by_outcome", "spans", …}`.
    pub async fn stats(&self) -> Value {
        self.client
            .get(format!("{}/__control/stats", self.endpoint))
            .send()
            .await
            .expect("GET /__control/stats")
            .json()
            .await
            .expect("stats JSON")
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
