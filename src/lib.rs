//! intellia-token-broker: mints short-lived Intellia assume-role chat tokens for a site's
//! signed-in users, without the organization's API key ever reaching a browser.
//!
//! `main.rs` only calls [`cli::main`]; [`app`] wires the parts below together. One request's path
//! through them is drawn in `docs/architecture.md`.

pub mod allocator;
pub mod app;
mod breaker;
pub mod cache;
pub mod cli;
mod client_ip;
pub mod client_key;
pub mod config;
mod console;
pub mod cors;
mod dev;
mod doctor;
pub mod error;
mod hex;
pub mod http_client;
pub mod identity;
pub mod intellia;
pub mod limits;
pub mod metrics;
mod middleware;
mod openapi;
mod process_metrics;
pub mod redis;
pub mod routes;
pub mod secrets;
pub mod service;
pub mod session;
mod telemetry;
mod traces;
