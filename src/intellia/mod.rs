//! Intellia: the upstream client the broker uses, and a simulator of the same API for `dev`, tests
//! and benchmarks.

pub mod client;
pub mod simulator;

pub use client::{IntelliaClient, MintedToken, UpstreamError};
