//! Shared GCRA buckets: every limit one request needs, decided by one Lua script in one round trip,
//! on Redis's clock (replicas with skewed clocks agree).
//!
//! In a Redis Cluster a script may only touch keys of one slot, and a request's buckets live in
//! different slots: the per-IP bucket is shared by every user behind that address, so it cannot
//! carry the user's hash tag. There the buckets are grouped by hash tag and each group is decided
//! by its own script call, all groups concurrently (one round trip of wall time). Every bucket is
//! still decided atomically on its shard, so a burst of B + k against one bucket admits exactly B,
//! across replicas and shards. What changes is the walk across buckets: a group cannot see another
//! group's refusal, so a bucket after the first refused one may have been charged; it is refunded
//! at once (one more call, off the request's path). Until the refund lands, a concurrent request
//! of that bucket sees one charge too many — it can only be refused early, never admitted beyond
//! the limit.

use std::sync::Arc;
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

/// Gives back one charge of each `KEYS[i]` (interval `ARGV[i]` µs): the bucket of a request that
/// a later bucket refused, in cluster mode (see the module docs).
const REFUND: &str = r"
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
for i, key in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', key))
  if tat then
    local new_tat = tat - tonumber(ARGV[i])
    if new_tat <= now then
      redis.call('DEL', key)
    else
      redis.call('SET', key, string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
    end
  end
end
return 0
";

/// One bucket of a request's check.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    pub key: String,
    pub interval: Duration,
    pub burst: u32,
}

impl Bucket {
    fn interval_us(&self) -> u64 {
        u64::try_from(self.interval.as_micros())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// The `{hash tag}` of the key: buckets with one tag share a slot.
    fn tag(&self) -> &str {
        tag_of(&self.key)
    }
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
    refund: Arc<redis::Script>,
}

impl Gcra {
    pub fn new() -> Gcra {
        Gcra {
            script: redis::Script::new(SCRIPT),
            refund: Arc::new(redis::Script::new(REFUND)),
        }
    }

    /// Decides `buckets` in order in one round trip; stops at the first refusal. Returns the
    /// decisions of the buckets up to and including the first refusal.
    pub async fn check(
        &self,
        store: &Arc<RedisStore>,
        buckets: &[Bucket],
    ) -> Result<Vec<Decision>, Unavailable> {
        if !store.is_cluster() || buckets.iter().all(|b| b.tag() == buckets[0].tag()) {
            return self.decide(store, buckets.iter()).await;
        }
        // Cluster, several slots: one script call per hash tag, concurrently.
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for (i, bucket) in buckets.iter().enumerate() {
            match groups
                .iter_mut()
                .find(|g| buckets[g[0]].tag() == bucket.tag())
            {
                Some(group) => group.push(i),
                None => groups.push(vec![i]),
            }
        }
        let calls = groups
            .iter()
            .map(|group| self.decide(store, group.iter().map(|&i| &buckets[i])));
        let results = futures_util::future::join_all(calls).await;
        let mut decided: Vec<Option<Decision>> = vec![None; buckets.len()];
        let mut failed = false;
        for (group, result) in groups.iter().zip(results) {
            match result {
                Ok(decisions) => {
                    for (&i, d) in group.iter().zip(decisions) {
                        decided[i] = Some(d);
                    }
                }
                Err(Unavailable) => failed = true,
            }
        }
        let first_refusal = decided
            .iter()
            .position(|d| d.is_some_and(|d| !d.allowed))
            .unwrap_or(buckets.len());
        // Buckets after the first refusal were not meant to be charged: give their charge back.
        let refunds: Vec<&Bucket> = buckets
            .iter()
            .zip(&decided)
            .enumerate()
            .filter(|(i, (_, d))| (failed || *i > first_refusal) && d.is_some_and(|d| d.allowed))
            .map(|(_, (b, _))| b)
            .collect();
        if !refunds.is_empty() {
            self.spawn_refund(store, &refunds);
        }
        if failed {
            return Err(Unavailable);
        }
        Ok(decided
            .into_iter()
            .take(first_refusal.saturating_add(1))
            .flatten()
            .collect())
    }

    /// One script call deciding `buckets` (all in one slot) in order.
    async fn decide<'b>(
        &self,
        store: &Arc<RedisStore>,
        buckets: impl Iterator<Item = &'b Bucket>,
    ) -> Result<Vec<Decision>, Unavailable> {
        let mut invocation = self.script.prepare_invoke();
        for bucket in buckets {
            invocation
                .key(bucket.key.as_str())
                .arg(bucket.interval_us())
                .arg(bucket.burst);
        }
        let flat: Vec<i64> = store
            .call("limits", |mut c| async move {
                invocation.invoke_async(&mut c).await
            })
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

    /// Refunds `buckets` in the background, one call per hash tag; best effort.
    fn spawn_refund(&self, store: &Arc<RedisStore>, buckets: &[&Bucket]) {
        let mut groups: Vec<Vec<(String, u64)>> = Vec::new();
        for bucket in buckets {
            let entry = (bucket.key.clone(), bucket.interval_us());
            match groups
                .iter_mut()
                .find(|g| g.first().is_some_and(|(k, _)| tag_of(k) == bucket.tag()))
            {
                Some(group) => group.push(entry),
                None => groups.push(vec![entry]),
            }
        }
        let store = Arc::clone(store);
        let script = Arc::clone(&self.refund);
        tokio::spawn(async move {
            for group in groups {
                let mut invocation = script.prepare_invoke();
                for (key, interval) in &group {
                    invocation.key(key.as_str()).arg(*interval);
                }
                let _ = store
                    .call("refund", |mut c| async move {
                        invocation.invoke_async::<i64>(&mut c).await
                    })
                    .await;
            }
        });
    }
}

fn tag_of(key: &str) -> &str {
    match (key.find('{'), key.find('}')) {
        (Some(open), Some(close)) if close > open + 1 => &key[open + 1..close],
        _ => key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_tag_decides_the_slot_group() {
        assert_eq!(tag_of("itb:{abc}:user"), "abc");
        assert_eq!(tag_of("itb:{abc}:ip"), "abc");
        // No tag (or an empty one): Redis hashes the whole key.
        assert_eq!(tag_of("itb:{}:x"), "itb:{}:x");
        assert_eq!(tag_of("plain"), "plain");
    }
}
