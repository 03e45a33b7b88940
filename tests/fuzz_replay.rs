//! Replays every committed fuzz seed and regression input (`fuzz/seeds/<target>/`,
//! `fuzz/regressions/<target>/`) through the fuzz targets' own entry points (`testkit::fuzz`), on the stable
//! toolchain, so an input that once crashed a target fails `cargo test` if the bug comes back.
//! Files named `accept-*` must be accepted and `reject-*` refused: the seeds must keep reaching the
//! code they were written for.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use testkit::fuzz as harness;
use testkit::fuzz::Verdict;

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for kind in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(kind).join(target)) else {
            continue;
        };
        files.extend(entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()));
    }
    files.sort();
    files
}

fn replay(target: &str, entry: fn(&[u8]) -> Verdict) {
    let files = inputs(target);
    assert!(files.len() >= 5, "{target}: only {} inputs", files.len());
    let (mut accepted, mut rejected) = (0, 0);
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        // Shown with the panic's message when an input breaks an invariant.
        eprintln!("{target}: {}", file.display());
        let verdict = entry(&std::fs::read(file).unwrap());
        if name.starts_with("accept-") {
            assert_eq!(verdict, Verdict::Accepted, "{target}/{name}");
            accepted += 1;
        } else if name.starts_with("reject-") {
            assert!(
                matches!(verdict, Verdict::Rejected(_)),
                "{target}/{name}: {verdict:?}"
            );
            rejected += 1;
        }
    }
    assert!(
        accepted > 0 && rejected > 0,
        "{target}: the seeds must include accept-* and reject-* inputs"
    );
}

#[test]
fn session_token() {
    harness::init();
    replay("session_token", harness::session_token);
}

#[test]
fn token_request() {
    harness::init();
    replay("token_request", harness::token_request);
}

#[test]
fn backend_request() {
    harness::init();
    replay("backend_request", harness::backend_request);
}

#[test]
fn config() {
    replay("config", harness::config);
}

#[test]
fn intellia_response() {
    replay("intellia_response", harness::intellia_response);
}

#[test]
fn client_key() {
    replay("client_key", harness::client_key);
}
