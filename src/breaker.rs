//! A small lock-free circuit breaker: after `threshold` consecutive failures it opens for
//! `cooldown`, during which callers fail fast; then it lets one probe through (half-open) and
//! closes on its success or opens again on its failure.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub(crate) struct CircuitBreaker {
    threshold: u32,
    cooldown_ms: u64,
    failures: AtomicU32,
    /// Milliseconds since `epoch` until which the breaker is open; 0 when closed.
    open_until_ms: AtomicU64,
    epoch: Instant,
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("open", &(self.open_until_ms.load(Ordering::Relaxed) != 0))
            .finish()
    }
}

impl CircuitBreaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> CircuitBreaker {
        CircuitBreaker {
            threshold: threshold.max(1),
            cooldown_ms: u64::try_from(cooldown.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether a call may go ahead. While open, only the first caller after the cool-down gets
    /// through (and pushes the window on, so the others keep failing fast).
    pub(crate) fn allow(&self) -> bool {
        let until = self.open_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        let now = self.now_ms();
        now >= until
            && self
                .open_until_ms
                .compare_exchange(
                    until,
                    now + self.cooldown_ms,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }

    /// How long until a probe may go through, for `Retry-After`.
    pub(crate) fn retry_after(&self) -> Duration {
        let until = self.open_until_ms.load(Ordering::Acquire);
        Duration::from_millis(until.saturating_sub(self.now_ms()))
    }

    /// Records a success; returns true when this closed an open breaker.
    pub(crate) fn success(&self) -> bool {
        self.failures.store(0, Ordering::Release);
        self.open_until_ms.swap(0, Ordering::AcqRel) != 0
    }

    /// Records a failure; returns true when this opened the breaker.
    pub(crate) fn failure(&self) -> bool {
        let failures = self
            .failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        if failures >= self.threshold {
            let until = self.now_ms() + self.cooldown_ms;
            return self.open_until_ms.swap(until, Ordering::AcqRel) == 0;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_probes_after_cooldown() {
        let b = CircuitBreaker::new(3, Duration::from_millis(100));
        assert!(b.allow());
        assert!(!b.failure());
        assert!(!b.failure());
        assert!(b.failure(), "third failure opens");
        assert!(!b.allow(), "open: no calls");
        assert!(b.retry_after() > Duration::ZERO);
        std::thread::sleep(Duration::from_millis(120));
        assert!(b.allow(), "one probe after the cool-down");
        assert!(!b.allow(), "only one");
        assert!(b.success(), "closing is reported");
        assert!(b.allow());
    }

    #[test]
    fn a_failed_probe_reopens() {
        let b = CircuitBreaker::new(1, Duration::from_millis(50));
        assert!(b.failure());
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.allow());
        b.failure();
        assert!(!b.allow());
    }
}
