//! Shared GCRA buckets: every limit one request needs, decided by one Lua script in one round trip,
//! on Redis's clock (replicas with skewed clocks agree).
//!
//! Standalone Redis: concurrent requests share script calls. While [`IN_FLIGHT`] calls are out,
//! arriving requests queue and leave together in the next one, which decides them one after the
//! other exactly as separate calls would (a key two of them share sees the first one's charge).
//! Redis pays a call's fixed cost (parsing, the script's set-up, `TIME`, the reply) once per batch
//! instead of once per request, which is what bounded the limiter under load; a request that
//! arrives at an idle queue leaves at once.
//!
//! In a Redis Cluster a script may only touch keys of one slot, and a request's buckets live in
//! different slots: the per-IP bucket is shared by every user behind that address, so it cannot
//! carry the user's hash tag. There the buckets are grouped by hash tag and each group is decided
//! by its own script call, all groups concurrently (one round trip of wall time); requests are not
//! batched (their keys would span slots). Every bucket is still decided atomically on its shard,
//! so a burst of B + k against one bucket admits exactly B, across replicas and shards. What
//! changes is the walk across buckets: a group cannot see another group's refusal, so a bucket
//! after the first refused one may have been charged; it is refunded at once (one more call, off
//! the request's path). Until the refund lands, a concurrent request of that bucket sees one
//! charge too many — it can only be refused early, never admitted beyond the limit.

use std::borrow::Borrow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::redis::{RedisStore, Unavailable};

/// Decides the buckets of several requests, one request after the other, as if each had made its
/// own call. `ARGV[1]` is the number of requests; then, per request, its number of buckets `n`
/// followed by `n` pairs of interval (µs) and burst; `KEYS` holds every request's buckets in the
/// same order. Within a request a passing bucket is charged at once and the first refusal stops the
/// walk, so later buckets are not charged for a refused request. Returns
/// `{allowed, remaining, retry_after_us, reset_us}` per bucket, `allowed = 2` for a bucket the walk
/// did not reach. Keys are read with one `MGET`, charged in a table (a key two requests share sees
/// the first one's charge) and each charged key is written once at the end.
const SCRIPT: &str = r"
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local stored = redis.call('MGET', unpack(KEYS))
local charged = {}
local out = {}
local k = 1
local a = 2
for _ = 1, tonumber(ARGV[1]) do
  local refused = false
  for _ = 1, tonumber(ARGV[a]) do
    local key = KEYS[k]
    local interval = tonumber(ARGV[a + 1])
    local burst = tonumber(ARGV[a + 2])
    a = a + 2
    if refused then
      out[#out + 1] = 2; out[#out + 1] = 0; out[#out + 1] = 0; out[#out + 1] = 0
    else
      local tat = charged[key] or tonumber(stored[k]) or now
      if tat < now then tat = now end
      local new_tat = tat + interval
      local tolerance = interval * burst
      local allow_at = new_tat - tolerance
      if allow_at > now then
        refused = true
        out[#out + 1] = 0; out[#out + 1] = 0; out[#out + 1] = allow_at - now; out[#out + 1] = tat - now
      else
        charged[key] = new_tat
        out[#out + 1] = 1; out[#out + 1] = math.floor((now + tolerance - new_tat) / interval)
        out[#out + 1] = 0; out[#out + 1] = new_tat - now
      end
    end
    k = k + 1
  end
  a = a + 1
end
for key, tat in pairs(charged) do
  -- %.0f: a bare number would be converted with 14 significant digits, losing microseconds.
  redis.call('SET', key, string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
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

/// Requests of a standalone Redis that wait for their decision to be sent.
struct Queue {
    waiting: Vec<Waiter>,
    /// Batches being sent (at most [`IN_FLIGHT`]).
    flushing: usize,
}

struct Waiter {
    buckets: Vec<Bucket>,
    reply: oneshot::Sender<Result<Vec<Decision>, Unavailable>>,
}

/// Script calls out at once per broker. One would leave Redis idle while a batch's reply travels
/// back and the next batch is sent (measured: 60 % of its core, 34k decisions/s at 64 callers);
/// four keep it busy while still batching (59k/s, p99 1.8 ms; BENCHMARKS.md).
const IN_FLIGHT: usize = 4;
/// Requests decided by one script call at most, so that one call stays short for Redis (a script
/// blocks the server while it runs) and within Lua's `unpack` limit.
const MAX_BATCH: usize = 64;

pub(crate) struct Gcra {
    script: Arc<redis::Script>,
    refund: Arc<redis::Script>,
    queue: Arc<Mutex<Queue>>,
}

impl Gcra {
    pub(crate) fn new() -> Gcra {
        Gcra {
            script: Arc::new(redis::Script::new(SCRIPT)),
            refund: Arc::new(redis::Script::new(REFUND)),
            queue: Arc::new(Mutex::new(Queue {
                waiting: Vec::new(),
                flushing: 0,
            })),
        }
    }

    /// Decides `buckets` in order in one round trip; stops at the first refusal. Returns the
    /// decisions of the buckets up to and including the first refusal.
    pub(crate) async fn check(
        &self,
        store: &Arc<RedisStore>,
        buckets: Vec<Bucket>,
    ) -> Result<Vec<Decision>, Unavailable> {
        if !store.is_cluster() {
            return self.queued(store, buckets).await;
        }
        if buckets.iter().all(|b| b.tag() == buckets[0].tag()) {
            return decide_one(&self.script, store, &buckets).await;
        }
        self.across_slots(store, &buckets).await
    }

    /// Standalone Redis: joins the queue; the first request of an idle queue starts a flusher
    /// that sends what has queued up, again and again until the queue is empty. The flusher is a
    /// task of its own, so a request that goes away (its client hung up) cannot strand the
    /// requests batched with it.
    async fn queued(
        &self,
        store: &Arc<RedisStore>,
        buckets: Vec<Bucket>,
    ) -> Result<Vec<Decision>, Unavailable> {
        let (reply, decided) = oneshot::channel();
        let start = {
            let mut queue = lock(&self.queue);
            queue.waiting.push(Waiter { buckets, reply });
            let start = queue.flushing < IN_FLIGHT;
            if start {
                queue.flushing += 1;
            }
            start
        };
        if start {
            tokio::spawn(flush(
                Arc::clone(&self.queue),
                Arc::clone(&self.script),
                Arc::clone(store),
            ));
        }
        decided.await.unwrap_or(Err(Unavailable))
    }

    /// Cluster, several slots: one script call per hash tag, concurrently.
    async fn across_slots(
        &self,
        store: &Arc<RedisStore>,
        buckets: &[Bucket],
    ) -> Result<Vec<Decision>, Unavailable> {
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
        let members: Vec<Vec<&Bucket>> = groups
            .iter()
            .map(|g| g.iter().map(|&i| &buckets[i]).collect())
            .collect();
        let calls = members
            .iter()
            .map(|group| decide_one(&self.script, store, group));
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

fn lock(queue: &Mutex<Queue>) -> std::sync::MutexGuard<'_, Queue> {
    // Nothing panics while holding it; a poisoned queue is still a consistent queue.
    queue
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sends the queued requests, a batch at a time, until none is left.
async fn flush(queue: Arc<Mutex<Queue>>, script: Arc<redis::Script>, store: Arc<RedisStore>) {
    let mut slot = FlushSlot {
        queue,
        released: false,
    };
    loop {
        let batch: Vec<Waiter> = {
            let mut queue = lock(&slot.queue);
            if queue.waiting.is_empty() {
                // Under the same lock as the emptiness check: a request queued after it starts
                // a flusher of its own.
                queue.flushing -= 1;
                slot.released = true;
                return;
            }
            let take = queue.waiting.len().min(MAX_BATCH);
            queue.waiting.drain(..take).collect()
        };
        let requests: Vec<&[Bucket]> = batch.iter().map(|w| w.buckets.as_slice()).collect();
        match decide(&script, &store, &requests).await {
            Ok(decisions) => {
                for (waiter, decided) in batch.into_iter().zip(decisions) {
                    // A waiter whose request went away is simply not told.
                    let _ = waiter.reply.send(Ok(decided));
                }
            }
            Err(Unavailable) => {
                for waiter in batch {
                    let _ = waiter.reply.send(Err(Unavailable));
                }
            }
        }
    }
}

/// A flusher's place among the [`IN_FLIGHT`]. A flusher that ends without finding the queue empty
/// (its runtime shut down, a worker restarted) gives its place back, and when it was the last one
/// the requests still queued are answered `Unavailable` rather than left waiting for a flusher that
/// no longer comes.
struct FlushSlot {
    queue: Arc<Mutex<Queue>>,
    released: bool,
}

impl Drop for FlushSlot {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let stranded: Vec<Waiter> = {
            let mut queue = lock(&self.queue);
            queue.flushing -= 1;
            if queue.flushing == 0 {
                queue.waiting.drain(..).collect()
            } else {
                Vec::new()
            }
        };
        for waiter in stranded {
            let _ = waiter.reply.send(Err(Unavailable));
        }
    }
}

/// One script call deciding one request's buckets (all in one slot).
async fn decide_one<B: Borrow<Bucket>>(
    script: &redis::Script,
    store: &Arc<RedisStore>,
    buckets: &[B],
) -> Result<Vec<Decision>, Unavailable> {
    let mut decided = decide(script, store, &[buckets]).await?;
    Ok(decided.pop().unwrap_or_default())
}

/// One script call deciding `requests` (each one's buckets in one slot) in order; per request, the
/// decisions of its buckets up to and including its first refusal. Buckets are borrowed (`B` is
/// `Bucket` for a queued request's own, `&Bucket` for a cluster group picked out of a request).
async fn decide<B: Borrow<Bucket>>(
    script: &redis::Script,
    store: &Arc<RedisStore>,
    requests: &[&[B]],
) -> Result<Vec<Vec<Decision>>, Unavailable> {
    let mut invocation = script.prepare_invoke();
    invocation.arg(requests.len());
    for buckets in requests {
        invocation.arg(buckets.len());
        for bucket in buckets.iter().map(Borrow::borrow) {
            invocation
                .key(bucket.key.as_str())
                .arg(bucket.interval_us())
                .arg(bucket.burst);
        }
    }
    let flat: Vec<i64> = store
        .call("limits", |mut c| async move {
            invocation.invoke_async(&mut c).await
        })
        .await?;
    let micros = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
    let mut rows = flat.chunks_exact(4);
    let mut out = Vec::with_capacity(requests.len());
    for buckets in requests {
        let mut decisions = Vec::with_capacity(buckets.len());
        for row in rows.by_ref().take(buckets.len()) {
            // 2: not reached, a bucket after this request's refusal.
            if row[0] == 2 {
                continue;
            }
            decisions.push(Decision {
                allowed: row[0] == 1,
                remaining: u32::try_from(row[1]).unwrap_or(0),
                retry_after: micros(row[2]),
                reset: micros(row[3]),
            });
        }
        out.push(decisions);
    }
    Ok(out)
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

    fn waiter() -> (
        Waiter,
        oneshot::Receiver<Result<Vec<Decision>, Unavailable>>,
    ) {
        let (reply, decided) = oneshot::channel();
        (
            Waiter {
                buckets: Vec::new(),
                reply,
            },
            decided,
        )
    }

    #[test]
    fn a_flusher_that_dies_answers_the_stranded_requests_when_it_was_the_last() {
        let (first, mut first_rx) = waiter();
        let queue = Arc::new(Mutex::new(Queue {
            waiting: vec![first],
            flushing: 2,
        }));
        // Another flusher is still running: it will serve the queue.
        drop(FlushSlot {
            queue: Arc::clone(&queue),
            released: false,
        });
        assert_eq!(lock(&queue).flushing, 1);
        assert!(
            first_rx.try_recv().is_err(),
            "still waiting for the other flusher"
        );
        // The last one: nobody else will, so the request is answered now.
        drop(FlushSlot {
            queue: Arc::clone(&queue),
            released: false,
        });
        assert_eq!(lock(&queue).flushing, 0);
        assert!(lock(&queue).waiting.is_empty());
        assert_eq!(first_rx.try_recv().unwrap(), Err(Unavailable));
        // A flusher that found the queue empty already gave its place back.
        drop(FlushSlot {
            queue: Arc::clone(&queue),
            released: true,
        });
        assert_eq!(lock(&queue).flushing, 0);
    }

    #[test]
    fn the_hash_tag_decides_the_slot_group() {
        assert_eq!(tag_of("itb:{abc}:user"), "abc");
        assert_eq!(tag_of("itb:{abc}:ip"), "abc");
        // No tag (or an empty one): Redis hashes the whole key.
        assert_eq!(tag_of("itb:{}:x"), "itb:{}:x");
        assert_eq!(tag_of("plain"), "plain");
    }
}
