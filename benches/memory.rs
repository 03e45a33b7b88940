//! Memory bounds: 1,000,000 distinct users through the per-user limiter and the token cache;
//! resident memory at the peak and after idle eviction. `cargo bench --bench memory`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use testkit::memory;
use testkit::procfs::mb;

#[global_allocator]
static ALLOCATOR: intellia_token_broker::allocator::Allocator =
    intellia_token_broker::allocator::Allocator;

fn main() {
    let Some(runtime) = testkit::bench::runtime() else {
        return;
    };
    let users: usize = std::env::var("BENCH_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let r = runtime.block_on(memory::drive(
        users,
        users,
        Duration::from_secs(3),
        0,
        Duration::from_secs(20),
    ));
    println!("| measurement | result |\n|---|---|");
    println!(
        "| distinct users driven | {} in {:.1} s (limiter pass {:.1} s, limiter + cache pass {:.1} s) |",
        r.users,
        r.elapsed.as_secs_f64(),
        r.limiter_pass.as_secs_f64(),
        r.cache_pass.as_secs_f64()
    );
    println!("| RSS before | {} |", mb(r.baseline));
    println!(
        "| RSS with {} limiter keys (limiter only) | {} ({:.0} bytes/key) |",
        r.users,
        mb(r.limiter_only),
        r.limiter_only.saturating_sub(r.baseline) as f64 / r.users as f64
    );
    println!(
        "| peak RSS, limiter + cache | {} ({} limiter keys, {} cached tokens) |",
        mb(r.peak),
        r.tracked_keys_at_peak,
        r.cached_at_peak
    );
    println!(
        "| RSS after idle eviction | {} after {:.1} s idle ({} limiter keys, {} cached tokens) |",
        mb(r.after_eviction),
        r.settled_in.as_secs_f64(),
        r.tracked_keys_after,
        r.cached_after
    );
}
