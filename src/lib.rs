//! intellia-token-broker: mints short-lived Intellia assume-role chat tokens for a site's
//! signed-in users, without the organization's API key ever reaching a browser.
//!
//! `main.rs` only calls [`cli::main`]; [`app`] wires the parts below together. One request's path
//! through them is drawn in `docs/architecture.md`.

// `pub` only for the deliberate surface (`testing`, `cli::main`, `allocator`); everything else is
// `pub(crate)`, so the compiler can tell dead code and a reader can tell what is API.
#![warn(unreachable_pub)]

pub mod allocator;
mod app;
mod breaker;
mod cache;
pub mod cli;
mod config;
mod error;
mod hex;
mod http;
mod http_client;
mod identity;
mod intellia;
mod limits;
mod redis;
mod secrets;
mod service;
mod session;
mod telemetry;

/// What the test kit, the integration tests, the benchmarks and the fuzz targets drive the broker
/// through: one deliberate list, so everything else stays `pub(crate)` and the compiler can tell
/// unused code. Not a stable API for anyone else; it follows the tests.
pub mod testing {
    pub use crate::app::{
        AppParts, Application, BuildOptions, ShutdownHandle, backend_app, public_app,
    };
    pub use crate::cache::{CachedToken, TokenCache};
    pub use crate::config::redis::RedisSettings;
    pub use crate::config::values::Bounded;
    pub use crate::config::{CacheSettings, Count, PerMinuteLimit, RateLimitSettings, Settings};
    pub use crate::error::{BrokerError, ErrorCode, PROBLEM_JSON};
    pub use crate::http::cors::CorsPolicy;
    pub use crate::http::{TokenResponse, token_response};
    pub use crate::http_client::{builder as http_client_builder, install_crypto_provider};
    pub use crate::identity::{Identity, UserId};
    pub use crate::intellia::client::{MintedToken, UpstreamError};
    pub use crate::intellia::client::{error_for_status, parse_assume_role_body};
    pub use crate::intellia::simulator::{
        Fault, KeyPolicy, Simulator, SimulatorConfig, SimulatorState,
    };
    pub use crate::limits::{LimitError, Limits, RequestKeys};
    pub use crate::redis::RedisStore;
    pub use crate::secrets::client_key::{ClientKey, MIN_RSA_BITS};
    pub use crate::secrets::{InlineSecrets, Secrets};
    pub use crate::session::SessionVerifier;
    pub use crate::session::credential::Credential;
    pub use crate::telemetry::metrics::{
        IssuerIndexLabels, IssuerLabels, LimitLabels, Metrics, SecretLabels,
    };
}
