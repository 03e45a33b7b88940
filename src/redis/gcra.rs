//! Shared GCRA buckets: every limit one request needs, decided by one Lua script in one round trip,
//! on Redis's clock (replicas with skewed clocks agree).

use std::time::Duration;

use super::{RedisStore, Unavailable};

/// Checks `KEYS[i]` against `ARGV[2i-1]` (interval in µs) and `ARGV[2i]` (burst), in order. A
/// passing bucket is charged at once; the first refusal stops the walk, so later buckets are not
/// charged for a request that is refused. Returns `{allowed, remaining, retry_after_us, reset_us}`
/// for each bucket it looked at.
const SCRIPT: &str = r"
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local out = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tolerance = interval * burst
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - tolerance
  if allow_at > now then
    table.insert(out, 0); table.insert(out, 0)
    table.insert(out, allow_at - now); table.insert(out, tat - now)
    return out
  end
  -- %.0f: a bare number would be converted with 14 significant digits, losing microseconds.
  redis.call('SET', key, string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
  table.insert(out, 1); table.insert(out, math.floor((now + tolerance - new_tat) / interval))
  table.insert(out, 0); table.insert(out, new_tat - now)
end
return out
";

/// One bucket of a request's check.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    pub key: String,
    pub interval: Duration,
    pub burst: u32,
}

/// A GCRA decision from Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    pub allowed: bool,
    pub remaining: u32,
    pub retry_after: Duration,
    pub reset: Duration,
}

pub(crate) struct Gcra {
    script: redis::Script,
}

impl Gcra {
    pub fn new() -> Gcra {
        Gcra {
            script: redis::Script::new(SCRIPT),
        }
    }

    /// Decides `buckets` in order in one round trip; stops at the first refusal.
    pub async fn check(
        &self,
        store: &RedisStore,
        buckets: &[Bucket],
    ) -> Result<Vec<Decision>, Unavailable> {
        let mut invocation = self.script.prepare_invoke();
        for bucket in buckets {
            let interval_us = u64::try_from(bucket.interval.as_micros())
                .unwrap_or(u64::MAX)
                .max(1);
            invocation
                .key(bucket.key.as_str())
                .arg(interval_us)
                .arg(bucket.burst);
        }
        let flat: Vec<i64> = store
            .call(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await?;
        let micros = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        Ok(flat
            .chunks_exact(4)
            .map(|d| Decision {
                allowed: d[0] == 1,
                remaining: u32::try_from(d[1]).unwrap_or(0),
                retry_after: micros(d[2]),
                reset: micros(d[3]),
            })
            .collect())
    }
}
