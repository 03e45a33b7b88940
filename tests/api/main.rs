//! Integration tests: the real broker on a random port, over HTTP, against the Intellia
//! simulator. One test binary, so the crate is linked once.

// A failed expectation in a test should panic loudly; the no-unwrap rule is for the service.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod attacks;
mod backend_route;
mod cache;
mod doctor;
mod fault_matrix;
mod isolation;
mod limits;
mod metrics_names;
mod oidc_provider;
mod operations;
mod otel_env;
mod process;
mod proxies;
mod redis_managed;
mod redis_shared;
mod session_keys;
mod site_attacks;
mod sites;
mod testkit_selftest;
mod token_route;
mod traces;
mod upstream;
mod zitadel;
