//! The command line: `serve`, `dev`, `check-config`, `doctor`, `simulate-intellia`,
//! `healthcheck`, `--version`. Every failure ends as one line on stderr and a non-zero exit, never a panic.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

mod console;
mod dev;
mod doctor;

use clap::{Parser, Subcommand};

use crate::app::{Application, BuildOptions};
use crate::config::{Settings, resolve_config_path};
use crate::intellia::simulator::{KeyPolicy, Simulator, SimulatorConfig};
use crate::secrets::{InlineSecrets, Secrets};
use crate::telemetry::{LogFormat, LogTarget};

#[derive(Debug, Parser)]
#[command(
    name = "intellia-token-broker",
    version,
    about = "Mints short-lived Intellia chat tokens for your site's signed-in users, keeping the API key server-side.",
    after_help = "Start with `intellia-token-broker dev` to see it work with nothing else installed.\nLog level: RUST_LOG (e.g. RUST_LOG=debug). Config overrides: BROKER__SECTION__KEY."
)]
pub struct Cli {
    /// Log format: JSON lines (for log pipelines) or short human-readable lines. Default: json,
    /// except `dev`, which is read by a person: pretty.
    #[arg(long, global = true, value_enum, env = "BROKER_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the production server.
    Serve {
        /// Config file; defaults to $BROKER_CONFIG, else config/default.toml.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Try it locally: broker + simulated Intellia + dev sessions + a demo page at /dev/.
    Dev {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
        listen: SocketAddr,
    },
    /// Validate a config file and its secrets, and print it with secrets redacted.
    CheckConfig {
        /// Config file; defaults to $BROKER_CONFIG, else config/default.toml.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Run the Intellia simulator alone (for benchmarks and tests in other languages).
    SimulateIntellia {
        /// Address to listen on, e.g. 127.0.0.1:9000 (port 0 picks a free port).
        #[arg(long, value_name = "ADDR")]
        listen: SocketAddr,
        /// Accepted API keys, one per line; a line ending in ` !assume_role` is a key without the
        /// assume_role permission (answers 403). Without this file any non-empty key is accepted.
        #[arg(long, value_name = "PATH")]
        api_key_file: Option<PathBuf>,
        /// Only this organization id exists (others answer 404).
        #[arg(long, value_name = "ID")]
        organization_id: Option<String>,
        /// Lifetime of minted tokens.
        #[arg(long, default_value_t = 7200, value_name = "SECS")]
        token_ttl_secs: u64,
    },
    /// Check every live dependency (identity providers, introspection, Redis, Intellia), one line
    /// each; exit 0 only when all pass. Never prints a secret. Bounded to 30 s.
    Doctor {
        /// Config file; defaults to $BROKER_CONFIG, else config/default.toml.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Also mint one real token for this user id (Intellia creates unknown users) and print
        /// only its expiry.
        #[arg(long, value_name = "ID")]
        mint_test_user: Option<String>,
        /// Bound on each check (they run in parallel); at most 25, so a run ends within 30 s.
        #[arg(long, default_value_t = 10, value_name = "SECS",
              value_parser = clap::value_parser!(u64).range(1..=doctor::MAX_CHECK_SECS))]
        timeout_secs: u64,
    },
    /// Print the OpenAPI document of the HTTP API.
    Openapi,
    /// Exit 0 when the broker's /healthz answers (for images without curl).
    Healthcheck {
        #[arg(
            long,
            default_value = "http://127.0.0.1:8080/healthz",
            value_name = "URL"
        )]
        url: String,
    },
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    // `serve` loads its settings before logging starts, so traces are set up from them (a bad
    // config is one line on stderr either way); `doctor` keeps stdout for its report.
    let settings = match &cli.command {
        Command::Serve { config } => {
            let path = resolve_config_path(config.as_deref());
            match Settings::load(&path) {
                Ok(settings) => Some(settings),
                Err(e) => return fail(&e.to_string()),
            }
        }
        _ => None,
    };
    let target = match cli.command {
        Command::Doctor { .. } => LogTarget::Stderr,
        _ => LogTarget::Stdout,
    };
    let format = cli.log_format.unwrap_or(match cli.command {
        Command::Dev { .. } => LogFormat::Pretty,
        _ => LogFormat::Json,
    });
    let telemetry = {
        let _runtime = runtime.enter();
        crate::telemetry::init(format, target, settings.as_ref().map(|s| &s.telemetry))
    };
    let telemetry = match telemetry {
        Ok(telemetry) => telemetry,
        Err(e) => return fail(&e),
    };
    if let Err(message) = crate::allocator::enable_background_purge() {
        // Memory is still freed, only not returned to the OS while idle: worth a warning, not a
        // refusal to start.
        tracing::warn!("{message}");
    }
    let result = runtime.block_on(run(cli.command, settings));
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(&message),
    }
}

fn fail(message: &str) -> ExitCode {
    console::error_line(&format!("error: {message}"));
    ExitCode::FAILURE
}

async fn run(command: Command, settings: Option<Settings>) -> Result<(), String> {
    match command {
        Command::Serve { .. } => match settings {
            Some(settings) => serve(settings).await,
            None => Err("serve: no settings loaded".to_owned()),
        },
        Command::Doctor {
            config,
            mint_test_user,
            timeout_secs,
        } => {
            let path = resolve_config_path(config.as_deref());
            doctor::run(&path, mint_test_user.as_deref(), timeout_secs).await
        }
        Command::Dev { listen } => dev::run(listen).await,
        Command::CheckConfig { config } => check_config(config),
        Command::SimulateIntellia {
            listen,
            api_key_file,
            organization_id,
            token_ttl_secs,
        } => simulate(listen, api_key_file, organization_id, token_ttl_secs).await,
        Command::Healthcheck { url } => healthcheck(&url).await,
        Command::Openapi => {
            console::out(&crate::http::openapi::document_json());
            Ok(())
        }
    }
}

async fn serve(settings: Settings) -> Result<(), String> {
    let app = Application::build(
        settings,
        BuildOptions {
            handle_signals: true,
            ..BuildOptions::default()
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    app.run_until_stopped()
        .await
        .map_err(|e| format!("server failed: {e}"))
}

fn check_config(config: Option<PathBuf>) -> Result<(), String> {
    let path = resolve_config_path(config.as_deref());
    let settings = Settings::load(&path).map_err(|e| e.to_string())?;
    // Every secret `serve` reads, read now, so a missing or empty file is reported here rather
    // than at start-up.
    let secrets = Secrets::load(&settings, InlineSecrets::default())?;
    if let Some(redis) = &settings.redis {
        crate::redis::RedisStore::check_settings(redis)?;
    }
    for warning in settings.warnings() {
        console::error_line(&format!("warning: {warning}"));
    }
    // `serve` refuses an OTEL_* value it cannot honour; so does this.
    let traces = crate::telemetry::traces::environment::resolve(
        &settings.telemetry,
        &crate::telemetry::traces::environment::OtelEnv::from_process(),
    )?;
    console::line(&format!("# {} is valid", path.display()));
    match &traces.config {
        Some(config) => console::line(&format!("# traces: {}", config.describe())),
        None => console::line("# traces: off"),
    }
    for note in &traces.notes {
        if let crate::telemetry::traces::environment::Note::Warn(text) = note {
            console::line(&format!("# warning: {text}"));
        }
    }
    for (key, source) in secrets.describe() {
        console::line(&format!("# {key}: readable ({source}), value redacted"));
    }
    console::out(&settings.redacted_toml());
    Ok(())
}

fn read_key_file(path: &PathBuf) -> Result<KeyPolicy, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--api-key-file {}: {}", path.display(), e.kind()))?;
    let mut keys = HashMap::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        match line.strip_suffix("!assume_role") {
            Some(key) => keys.insert(key.trim().to_owned(), false),
            None => keys.insert(line.to_owned(), true),
        };
    }
    if keys.is_empty() {
        return Err(format!("--api-key-file {}: holds no key", path.display()));
    }
    Ok(KeyPolicy::Keys(keys))
}

async fn simulate(
    listen: SocketAddr,
    api_key_file: Option<PathBuf>,
    organization_id: Option<String>,
    token_ttl_secs: u64,
) -> Result<(), String> {
    let keys = match &api_key_file {
        Some(path) => read_key_file(path)?,
        None => KeyPolicy::AnyNonEmpty,
    };
    let listener =
        TcpListener::bind(listen).map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let simulator = Simulator::start(
        listener,
        SimulatorConfig {
            organization_id,
            keys,
            token_ttl: Duration::from_secs(token_ttl_secs),
        },
    )
    .map_err(|e| format!("cannot start the simulator: {e}"))?;
    tracing::info!(listen = %simulator.addr, "Intellia simulator listening");
    console::line(&format!(
        "Intellia simulator listening on {}",
        simulator.base_url()
    ));
    let handle = simulator.server.handle();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        handle.stop(false).await;
    });
    #[cfg(unix)]
    {
        let handle = simulator.server.handle();
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::spawn(async move {
                term.recv().await;
                handle.stop(false).await;
            });
        }
    }
    simulator
        .server
        .await
        .map_err(|e| format!("simulator failed: {e}"))
}

/// A plain HTTP/1.1 GET on loopback: minimal images have no CA bundle and no curl, and a health
/// probe needs neither TLS nor a full client.
async fn healthcheck(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: healthcheck supports http:// URLs only"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let probe = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| format!("{url} is not answering: {}", e.kind()))?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: intellia-token-broker-healthcheck\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("{url}: {}", e.kind()))?;
        let mut head = vec![0u8; 64];
        let n = stream
            .read(&mut head)
            .await
            .map_err(|e| format!("{url}: {}", e.kind()))?;
        let line = String::from_utf8_lossy(&head[..n]);
        let status = line
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| line.strip_prefix("HTTP/1.0 "))
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| format!("{url} did not answer HTTP"))?;
        Ok::<u16, String>(status)
    };
    let status = tokio::time::timeout(Duration::from_secs(3), probe)
        .await
        .map_err(|_| format!("{url} did not answer within 3 s"))??;
    if (200..300).contains(&status) {
        console::line(&format!("ok: {url} answered {status}"));
        Ok(())
    } else {
        Err(format!("{url} answered {status}"))
    }
}
