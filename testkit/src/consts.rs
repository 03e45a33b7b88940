//! The names and secrets of a test broker. Every secret says DO_NOT_LEAK, so a leak is easy to
//! spot, and [`crate::assert::assert_no_secret`] looks for them.

use std::path::PathBuf;

pub const ISSUER: &str = "https://auth.test.example";
pub const AUDIENCE: &str = "chat-widget";
pub const HS_SECRET: &str = "test-hs256-secret-that-is-long-enough-0123456789";
pub const API_KEY: &str = "sk_test_intellia_api_key_DO_NOT_LEAK_7f3a9c";
pub const BACKEND_SECRET: &str = "backend-secret-DO-NOT-LEAK-52d1e0";
pub const ORG: &str = "org-456";
pub const ALLOWED_ORIGIN: &str = "https://www.example.com";
/// The second allowed origin of [`crate::config::TestConfig::default`]: a wildcard.
pub const WILDCARD_ORIGIN: &str = "https://*.example.org";

/// `tests/fixtures/` of the broker's repository: test keys and the JWKS holding their public halves.
pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

/// A file of `tests/fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(FIXTURES).join(name)
}
