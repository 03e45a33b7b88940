//! The broker's test kit: every fixture that tests/, benches/ and fuzz/ share, defined once.
//!
//! - [`consts`]: the issuer, audience, secrets, API key, organization and origins of a test broker.
//! - [`jwt`]: session tokens signed with the fixture keys ([`jwt::session`], [`jwt::rs256`], …).
//! - [`idp`]: [`idp::FakeIdp`], a JWKS/discovery/userinfo server whose keys tests can swap, and a
//!   static JWKS server.
//! - [`config`]: [`config::TestConfig`] and [`config::write_config`], the TOML a test broker runs with.
//! - [`app`]: the broker in-process ([`app::spawn_app`], [`app::TestApp`]) and the simulator.
//! - [`process`]: the real binary as a child process ([`process::BrokerProcess`]).
//! - [`redis`]: `redis-server` launchers: plain, TLS-only, with an ACL user, a three-node cluster.
//! - [`sites`]: the real web sites of `tests/sites/` (express-session, Flask-Login) and a hostile one.
//! - [`otlp`]: [`otlp::OtlpReceiver`], the OTLP trace receiver (`tests/otlp-receiver/`: HTTP and gRPC,
//!   plain or TLS) as a child.
//! - [`assert`]: [`assert::assert_problem`] and [`assert::assert_no_secret`].
//! - [`procfs`], [`memory`], [`loadgen`], [`bench`]: `/proc` readers, the memory driver, the load
//!   generator and the benchmark fixture (simulator and brokers as processes).
//! - [`fuzz`]: the fuzz entry points, called by the cargo-fuzz targets and `tests/fuzz_replay.rs`.
//!
//! [`prelude`] is what an API test imports.

// A failed expectation in a fixture should panic loudly; the no-unwrap rule is for the service.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod app;
pub mod assert;
pub mod bench;
pub mod config;
pub mod consts;
pub mod fuzz;
pub mod idp;
pub mod jwt;
pub mod loadgen;
pub mod memory;
pub mod otlp;
pub mod process;
pub mod procfs;
pub mod redis;
pub mod sites;

/// Everything an API test uses, in one import.
pub mod prelude {
    pub use crate::app::{
        TestApp, http_client, simulator_config, spawn_app, spawn_app_with_simulator,
        start_simulator,
    };
    pub use crate::assert::{assert_no_secret, assert_problem};
    pub use crate::config::{TestConfig, default_config_dir, temp_dir, write_config};
    pub use crate::consts::*;
    pub use crate::idp::{FakeIdp, idp_claims, jwks_issuer};
    pub use crate::jwt::{claims, es256, hs256, now, raw_jwt, rs256, session};
    pub use crate::process::{BrokerProcess, broker_bin, run_broker};
}
