//! Stamps the git revision the broker is built from into `BROKER_GIT_REVISION`, for the
//! `revision` label of `broker_build_info`. `BROKER_REVISION` (e.g. a Docker build argument)
//! wins; outside a git checkout (the Docker build context leaves `.git` out) it is `unknown`.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_owned())
}

/// A revision as a label value: short hex, or `unknown`.
fn clean(revision: &str) -> Option<String> {
    let revision = revision.trim();
    let ok = (4..=64).contains(&revision.len())
        && revision
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
    ok.then(|| revision.to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=BROKER_REVISION");
    let given = std::env::var("BROKER_REVISION")
        .ok()
        .and_then(|r| clean(&r));
    let revision = given.or_else(|| {
        // Rebuild when HEAD moves: the HEAD file (a branch switch) and the branch's ref (a
        // commit), in this worktree's git directory and the shared one.
        // (Only files that exist: cargo reruns the script on every build for one that does not.)
        let reference = git(&["symbolic-ref", "-q", "HEAD"]);
        for dir in [
            git(&["rev-parse", "--git-dir"]),
            git(&["rev-parse", "--git-common-dir"]),
        ]
        .into_iter()
        .flatten()
        {
            let dir = Path::new(&dir);
            let mut watched = vec![dir.join("HEAD"), dir.join("packed-refs")];
            watched.extend(reference.as_ref().map(|r| dir.join(r)));
            for path in watched.into_iter().filter(|p| p.is_file()) {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
        git(&["rev-parse", "--short=12", "HEAD"]).and_then(|r| clean(&r))
    });
    println!(
        "cargo:rustc-env=BROKER_GIT_REVISION={}",
        revision.as_deref().unwrap_or("unknown")
    );
}
