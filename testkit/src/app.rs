//! The broker in-process: [`spawn_app`] builds the real `Application` from a [`TestConfig`] on a
//! free port, against the in-process Intellia simulator, and hands back a [`TestApp`].

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;

use intellia_token_broker::testing::Settings;
use intellia_token_broker::testing::{AppParts, Application, BuildOptions, ShutdownHandle};
use intellia_token_broker::testing::{KeyPolicy, Simulator, SimulatorConfig, SimulatorState};
use serde_json::Value;

use crate::config::{TestConfig, temp_dir, write_config};
use crate::consts::{API_KEY, ORG};

/// A broker running in this process, and what a test needs to talk to it.
pub struct TestApp {
    pub base: String,
    pub admin: Option<String>,
    /// The backend listener (`backend.listen`), the only one serving the sidecar route.
    pub backend: Option<String>,
    pub sim: Arc<SimulatorState>,
    pub client: reqwest::Client,
    pub shutdown: ShutdownHandle,
    pub dir: PathBuf,
    /// The running parts: metrics, secrets, the token service.
    pub parts: AppParts,
}

/// A plain test client. reqwest needs the process's rustls provider installed first, whichever
/// test happens to build a client first.
pub fn http_client() -> reqwest::Client {
    intellia_token_broker::testing::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The simulator as a test broker needs it: the test organization, and [`API_KEY`] (plus `extra_keys`)
/// as the valid keys.
pub fn simulator_config(extra_keys: &[&str]) -> SimulatorConfig {
    let keys = std::iter::once(API_KEY)
        .chain(extra_keys.iter().copied())
        .map(|k| (k.to_owned(), true))
        .collect::<HashMap<_, _>>();
    SimulatorConfig {
        organization_id: Some(ORG.to_owned()),
        keys: KeyPolicy::Keys(keys),
        ..SimulatorConfig::default()
    }
}

/// The in-process simulator on a free port, served on the calling runtime; returns its URL and state.
pub fn start_simulator(config: SimulatorConfig) -> (String, Arc<SimulatorState>) {
    let sim = Simulator::start(TcpListener::bind("127.0.0.1:0").unwrap(), config).unwrap();
    let url = sim.base_url();
    let state = sim.state.clone();
    tokio::spawn(sim.server);
    (url, state)
}

pub async fn spawn_app(cfg: TestConfig) -> TestApp {
    let (sim_url, sim) = start_simulator(simulator_config(&[]));
    spawn_app_with_simulator(cfg, sim_url, sim).await
}

pub async fn spawn_app_with_simulator(
    cfg: TestConfig,
    sim_url: String,
    sim: Arc<SimulatorState>,
) -> TestApp {
    let dir = temp_dir();
    let expect_ready = cfg.expect_ready;
    let text = write_config(&cfg, &dir, &sim_url, "127.0.0.1:0");
    let settings = Settings::from_toml_with_env(&text, Vec::<(String, String)>::new()).unwrap();
    let app = Application::build(settings, BuildOptions::default())
        .await
        .unwrap();
    let base = format!("http://{}", app.public_addr());
    let admin = app.admin_addr().map(|a| format!("http://{a}"));
    let backend = app.backend_addr().map(|a| format!("http://{a}"));
    let shutdown = app.shutdown_handle();
    let parts = app.parts();
    tokio::spawn(app.run_until_stopped());
    let client = http_client();
    let test_app = TestApp {
        base,
        admin,
        backend,
        sim,
        client,
        shutdown,
        dir,
        parts,
    };
    if expect_ready {
        test_app.wait_ready().await;
    }
    test_app
}

impl TestApp {
    pub async fn wait_ready(&self) {
        for _ in 0..100 {
            if let Ok(r) = self
                .client
                .get(format!("{}/readyz", self.base))
                .send()
                .await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("broker at {} never became ready", self.base);
    }

    /// `GET /readyz`: the status and the JSON body (`null` when it is not JSON).
    pub async fn readyz(&self) -> (u16, Value) {
        let resp = self.client.get(self.url("/readyz")).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn token(&self, session: &str) -> reqwest::Response {
        self.client
            .post(self.url("/v1/token"))
            .bearer_auth(session)
            .send()
            .await
            .unwrap()
    }

    /// A URL on the backend listener.
    pub fn backend_url(&self, path: &str) -> String {
        let base = self
            .backend
            .as_deref()
            .expect("this broker has a backend listener ([backend])");
        format!("{base}{path}")
    }

    /// A URL on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        let base = self
            .admin
            .as_deref()
            .expect("this broker has an admin listener (TestConfig::admin)");
        format!("{base}{path}")
    }

    /// `GET /metrics` on the admin listener: the exposition text.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// `POST /v1/backend/token` on the backend listener.
    pub async fn backend(&self, secret: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.backend_url("/v1/backend/token"))
            .bearer_auth(secret)
            .json(&body)
            .send()
            .await
            .unwrap()
    }
}
