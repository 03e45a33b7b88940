//! intellia-token-broker: mints short-lived Intellia assume-role chat tokens for a site's
//! signed-in users, without the organization's API key ever reaching a browser.
//!
//! `main.rs` only calls [`cli::main`]; [`app`] wires the parts below together.

pub mod allocator;
pub mod app;
pub mod breaker;
pub mod cache;
pub mod cli;
pub mod client_ip;
pub mod config;
pub mod cors;
pub mod dev;
pub mod error;
pub mod http_client;
pub mod intellia;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod redis_store;
pub mod routes;
pub mod secrets;
pub mod session;
pub mod telemetry;
