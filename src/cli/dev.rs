//! `dev` mode: the broker, an in-process Intellia simulator and a throwaway HS256 session issuer,
//! with a demo page at `/dev/`. Nothing in it can reach the real Intellia: the upstream is always
//! the simulator on loopback and the API key is generated.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use super::console;
use crate::app::{Application, BuildOptions};
use crate::config::Settings;
use crate::http::routes::Route;
use crate::intellia::simulator::{Simulator, SimulatorConfig};
use crate::secrets::InlineSecrets;

/// The demo page: a mock chat widget using the browser client.
const DEV_PAGE: &str = include_str!("../../clients/js/demo/index.html");

pub(super) const DEV_ISSUER: &str = "urn:intellia-token-broker:dev";
pub(super) const DEV_AUDIENCE: &str = "intellia-chat-widget";
pub(super) const DEV_ORGANIZATION: &str = "org-dev";
const SESSION_TTL: Duration = Duration::from_secs(60 * 60);

/// Mints dev session tokens, as a site's login would.
pub(super) struct DevIssuer {
    key: EncodingKey,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DevIssuer")
    }
}

#[derive(Serialize)]
struct DevClaims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    email: &'a str,
    name: &'a str,
    iat: u64,
    exp: u64,
}

fn random_secret() -> SecretString {
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    SecretString::from(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
}

impl DevIssuer {
    /// A fresh issuer with a random secret; the secret is returned for the verifier.
    pub(super) fn generate() -> (DevIssuer, SecretString) {
        let secret = random_secret();
        let key = EncodingKey::from_secret(secret.expose_secret().as_bytes());
        (DevIssuer { key }, secret)
    }

    pub(super) fn mint(
        &self,
        user_id: &str,
        email: &str,
        name: &str,
        ttl: Duration,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = DevClaims {
            iss: DEV_ISSUER,
            aud: DEV_AUDIENCE,
            sub: user_id,
            email,
            name,
            iat: now,
            exp: now + ttl.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)
    }
}

/// The configuration `dev` runs with, as TOML so it reads like an operator's file.
fn dev_settings(listen: SocketAddr, simulator: &str) -> Result<Settings, String> {
    let origins = if listen.ip().is_unspecified() {
        format!(
            "\"http://127.0.0.1:{port}\", \"http://localhost:{port}\"",
            port = listen.port()
        )
    } else if listen.ip().is_loopback() {
        format!(
            "\"http://{listen}\", \"http://localhost:{port}\"",
            port = listen.port()
        )
    } else {
        format!("\"http://{listen}\"")
    };
    let text = format!(
        r#"
[server]
listen = "{listen}"
shutdown_grace_secs = 2
drain_delay_secs = 0

[intellia]
base_url = "{simulator}"
organization_id = "{DEV_ORGANIZATION}"
# The key is generated in memory; this variable is never read.
api_key_env = "BROKER_DEV_UNUSED"
timeout_ms = 3000

[cors]
allowed_origins = [{origins}]

[[session.jwt]]
issuer = "{DEV_ISSUER}"
audience = "{DEV_AUDIENCE}"
hs256_secret_file = "/dev/null"
algorithms = ["HS256"]
cookie = "dev_session"

[rate_limit.per_user]
per_minute = 30
burst = 10

[rate_limit.per_ip]
per_minute = 120
burst = 40

[rate_limit.upstream]
per_second = 20
burst = 40

[cache]
enabled = true
min_remaining_secs = 900
"#
    );
    Settings::from_toml_with_env(&text, Vec::<(String, String)>::new()).map_err(|e| e.to_string())
}

/// Runs `dev` until interrupted.
pub(super) async fn run(listen: SocketAddr) -> Result<(), String> {
    if let Some((name, _)) = std::env::vars().find(|(k, _)| k.starts_with("BROKER__INTELLIA__")) {
        return Err(format!(
            "dev mode never talks to the real Intellia and ignores configuration; unset {name} (use `serve --config` for a real deployment)"
        ));
    }
    let sim_listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot bind the simulator on 127.0.0.1: {e}"))?;
    let simulator = Simulator::start(sim_listener, SimulatorConfig::default())
        .map_err(|e| format!("cannot start the simulator: {e}"))?;
    let sim_url = simulator.base_url();
    tokio::spawn(simulator.server);

    let settings = dev_settings(listen, &sim_url)?;
    let (issuer, secret) = DevIssuer::generate();
    let issuer = Arc::new(issuer);
    let routes_issuer = web::Data::from(Arc::clone(&issuer));
    let options = BuildOptions {
        secrets: InlineSecrets {
            api_key: Some(random_secret()),
            session_hs256: vec![(0, secret)],
        },
        extra_routes: Some(Arc::new(move |cfg: &mut web::ServiceConfig| {
            cfg.app_data(routes_issuer.clone());
            let dev = Route::Dev.path();
            cfg.route(dev, web::get().to(redirect_to_page));
            cfg.route(&format!("{dev}/"), web::get().to(page));
            cfg.route(&format!("{dev}/session"), web::post().to(session));
        })),
        handle_signals: true,
    };
    let app = Application::build(settings, options)
        .await
        .map_err(|e| e.to_string())?;
    let addr = app.public_addr();
    let shown = if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    let token = issuer
        .mint(
            "dev-user",
            "dev.user@example.com",
            "Dev User",
            Duration::from_secs(12 * 60 * 60),
        )
        .map_err(|e| format!("cannot mint a dev session: {e}"))?;
    console::line("");
    console::line(&format!(
        "  intellia-token-broker dev mode (simulated Intellia at {sim_url}, nothing real is called)"
    ));
    console::line("");
    console::line(&format!("  Demo page:   http://{shown}/dev/"));
    console::line(&format!(
        "  Get a token: curl -s -X POST http://{shown}/v1/token -H 'Authorization: Bearer {token}'"
    ));
    console::line("");
    console::line("  The dev session above is valid for 12 hours. Press Ctrl-C to stop.");
    console::line("");
    app.run_until_stopped().await.map_err(|e| e.to_string())
}

/// `GET /dev/`: the demo page.
async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'",
        ))
        .body(DEV_PAGE)
}

async fn redirect_to_page() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, "/dev/"))
        .finish()
}

/// `POST /dev/session`: a dev session token for the demo user, as a site's login would issue.
async fn session(issuer: web::Data<DevIssuer>) -> HttpResponse {
    match issuer.mint("dev-user", "dev.user@example.com", "Dev User", SESSION_TTL) {
        Ok(token) => HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(serde_json::json!({
                "sessionToken": token,
                "expiresIn": SESSION_TTL.as_secs(),
                "userId": "dev-user",
            })),
        Err(_) => HttpResponse::InternalServerError().finish(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_settings_are_valid() {
        let s = dev_settings("127.0.0.1:8080".parse().unwrap(), "http://127.0.0.1:9999").unwrap();
        let origins: Vec<String> = s
            .cors
            .allowed_origins
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(
            origins,
            vec!["http://127.0.0.1:8080", "http://localhost:8080"]
        );
        assert_eq!(s.intellia.base_url.url().as_str(), "http://127.0.0.1:9999/");
    }
}
