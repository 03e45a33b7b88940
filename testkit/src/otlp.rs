//! The OTLP/HTTP trace receiver (`tests/otlp-receiver/`, a real collector endpoint in Python that
//! decodes the protobuf with `opentelemetry-proto`) as a child process: spans as JSON, and modes
//! that make it fail (`500`) or hang.

use std::io::BufRead;
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

pub struct OtlpReceiver {
    child: Child,
    /// `http://127.0.0.1:PORT`, for `OTEL_EXPORTER_OTLP_ENDPOINT` / `[telemetry] otlp_endpoint`.
    pub endpoint: String,
    pub port: u16,
    client: reqwest::Client,
}

impl OtlpReceiver {
    /// Starts the receiver on a free port; it exits with this process (its stdin is our pipe).
    pub fn start() -> OtlpReceiver {
        let mut child = Command::new(python())
            .arg(repo().join("tests/otlp-receiver/receiver.py"))
            .args(["--port", "0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the OTLP receiver");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the receiver's ready line");
        let ready: Value = serde_json::from_str(&line).expect("a JSON ready line");
        OtlpReceiver {
            child,
            endpoint: ready["endpoint"].as_str().expect("endpoint").to_owned(),
            port: u16::try_from(ready["port"].as_u64().expect("port")).expect("a port"),
            client: crate::app::http_client(),
        }
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
