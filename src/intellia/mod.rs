//! Intellia: the upstream client the broker uses, and a simulator of the same API for `dev`, tests
//! and benchmarks.

pub(crate) mod client;
pub(crate) mod simulator;

pub(crate) use client::{IntelliaClient, MintedToken};
