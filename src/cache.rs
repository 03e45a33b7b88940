//! The token cache: a user who still holds a token with at least `min_remaining_secs` left gets the
//! same token back, with no call to Intellia. Concurrent requests for one user share one mint
//! (single flight), and a failed mint is never cached.
//!
//! Two tiers: the replica's own memory (`moka`) in front, and — with Redis — a shared, encrypted
//! tier behind it, with a short mint lock so concurrent requests for one user on different replicas
//! still make one Intellia call.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use secrecy::SecretString;
use time::OffsetDateTime;

use crate::config::{CacheSettings, RedisFallback};
use crate::error::BrokerError;
use crate::intellia::MintedToken;
use crate::redis_store::RedisStore;

/// A minted token as the cache keeps it.
pub struct CachedToken {
    pub minted: MintedToken,
    /// Monotonic instant after which the token no longer has `min_remaining_secs` left.
    fresh_until: Instant,
    /// Whether this replica minted it or found it in the shared tier.
    origin: Provenance,
}

impl std::fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.minted.fmt(f)
    }
}

/// How long a token still has at least `min_remaining` left.
fn fresh_for(minted: &MintedToken, min_remaining: Duration) -> Duration {
    Duration::try_from(minted.expires_at - OffsetDateTime::now_utc())
        .unwrap_or(Duration::ZERO)
        .saturating_sub(min_remaining)
}

impl CachedToken {
    pub fn new(minted: MintedToken, min_remaining: Duration) -> CachedToken {
        Self::with_origin(minted, min_remaining, Provenance::Minted)
    }

    fn with_origin(
        minted: MintedToken,
        min_remaining: Duration,
        origin: Provenance,
    ) -> CachedToken {
        let fresh = fresh_for(&minted, min_remaining);
        CachedToken {
            minted,
            fresh_until: Instant::now() + fresh,
            origin,
        }
    }

    pub fn token(&self) -> &SecretString {
        &self.minted.token
    }
}

struct UntilNoLongerFresh;

impl Expiry<String, Arc<CachedToken>> for UntilNoLongerFresh {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<CachedToken>,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(value.fresh_until.saturating_duration_since(created_at))
    }
}

/// Whether a token came from the cache or was minted for this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provenance {
    Cached,
    Minted,
}

pub struct TokenCache {
    cache: Option<moka::future::Cache<String, Arc<CachedToken>>>,
    min_remaining: Duration,
    shared: Option<Arc<RedisStore>>,
    /// How long a replica holds a user's mint lock, and how long others wait for its result:
    /// the longest a mint can take.
    mint_deadline: Duration,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("enabled", &self.cache.is_some())
            .field("min_remaining", &self.min_remaining)
            .finish()
    }
}

impl TokenCache {
    pub fn new(settings: &CacheSettings) -> TokenCache {
        Self::with_shared(settings, None, Duration::from_secs(5))
    }

    pub fn with_shared(
        settings: &CacheSettings,
        shared: Option<Arc<RedisStore>>,
        mint_deadline: Duration,
    ) -> TokenCache {
        let cache = settings.enabled.then(|| {
            moka::future::Cache::builder()
                .max_capacity(settings.max_entries)
                .expire_after(UntilNoLongerFresh)
                .build()
        });
        TokenCache {
            shared: shared.filter(|_| settings.enabled),
            cache,
            min_remaining: Duration::from_secs(settings.min_remaining_secs),
            mint_deadline,
        }
    }

    /// Returns the user's fresh token, or mints one with `mint`. With the cache enabled, concurrent
    /// callers for one user await a single `mint`.
    pub async fn get_or_mint<F, Fut>(
        &self,
        user_id: &str,
        mint: F,
    ) -> Result<(Arc<CachedToken>, Provenance), BrokerError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<MintedToken, BrokerError>>,
    {
        let min_remaining = self.min_remaining;
        let Some(cache) = &self.cache else {
            let minted = mint().await?;
            return Ok((
                Arc::new(CachedToken::new(minted, min_remaining)),
                Provenance::Minted,
            ));
        };
        let shared = self.shared.clone();
        let mint_deadline = self.mint_deadline;
        let entry = cache
            .entry_by_ref(user_id)
            .or_try_insert_with(async move {
                let token = match shared {
                    Some(store) => {
                        shared_get_or_mint(&store, user_id, min_remaining, mint_deadline, mint)
                            .await?
                    }
                    None => CachedToken::new(mint().await?, min_remaining),
                };
                Ok::<_, BrokerError>(Arc::new(token))
            })
            .await
            .map_err(Arc::unwrap_or_clone)?;
        let provenance = if entry.is_fresh() {
            entry.value().origin
        } else {
            Provenance::Cached
        };
        Ok((entry.into_value(), provenance))
    }

    /// Drops expired tokens now. moka otherwise does this work only as entries are read or
    /// written, so an idle replica would keep the memory of tokens nobody will ask for.
    pub async fn run_housekeeping(&self) {
        if let Some(cache) = &self.cache {
            cache.run_pending_tasks().await;
        }
    }

    /// Tokens held by this replica (an estimate until housekeeping has run).
    pub fn entry_count(&self) -> u64 {
        self.cache
            .as_ref()
            .map_or(0, moka::future::Cache::entry_count)
    }

    /// Forgets a user's token (e.g. after Intellia reported it revoked).
    pub async fn invalidate(&self, user_id: &str) {
        if let Some(cache) = &self.cache {
            cache.invalidate(user_id).await;
        }
    }
}

/// The shared tier: a fresh token another replica minted, else this replica mints under the
/// user's lock (others wait for the shared result), else — Redis being unavailable — it mints
/// alone or refuses, as configured.
async fn shared_get_or_mint<F, Fut>(
    store: &RedisStore,
    user_id: &str,
    min_remaining: Duration,
    mint_deadline: Duration,
    mint: F,
) -> Result<CachedToken, BrokerError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<MintedToken, BrokerError>>,
{
    let deny = store.fallback() == RedisFallback::Deny;
    let unavailable = || BrokerError::UpstreamUnavailable {
        retry_after_secs: Some(1),
    };
    let fresh = |minted: MintedToken| {
        (!fresh_for(&minted, min_remaining).is_zero())
            .then(|| CachedToken::with_origin(minted, min_remaining, Provenance::Cached))
    };
    match store.get_token(user_id).await {
        Ok(Some(found)) => {
            if let Some(token) = fresh(found) {
                return Ok(token);
            }
        }
        Ok(None) => {}
        Err(_) if deny => return Err(unavailable()),
        Err(_) => return Ok(CachedToken::new(mint().await?, min_remaining)),
    }
    // Take the user's lock and mint, or wait for the replica holding it to share its result;
    // if that replica fails (its lock goes without a token), take the lock in turn.
    let deadline = Instant::now() + mint_deadline;
    loop {
        match store.lock(user_id, mint_deadline).await {
            Ok(Some(lock)) => {
                let minted = mint().await;
                if let Ok(token) = &minted {
                    let _ = store
                        .put_token(token, fresh_for(token, min_remaining))
                        .await;
                }
                store.unlock(user_id, &lock).await;
                return Ok(CachedToken::new(minted?, min_remaining));
            }
            Ok(None) => {}
            Err(_) if deny => return Err(unavailable()),
            Err(_) => break,
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        match store.get_token(user_id).await {
            Ok(Some(found)) => {
                if let Some(token) = fresh(found) {
                    return Ok(token);
                }
            }
            Ok(None) => {}
            Err(_) if deny => return Err(unavailable()),
            Err(_) => break,
        }
    }
    Ok(CachedToken::new(mint().await?, min_remaining))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn minted(ttl: Duration) -> MintedToken {
        MintedToken {
            token: SecretString::from(format!("tok-{}", rand::random::<u32>())),
            expires_at: OffsetDateTime::now_utc() + ttl,
            user_id: "u".into(),
            organization_id: "o".into(),
            role: "chat".into(),
        }
    }

    fn settings(enabled: bool) -> CacheSettings {
        CacheSettings {
            enabled,
            min_remaining_secs: 900,
            max_entries: 100,
        }
    }

    #[tokio::test]
    async fn second_request_is_served_from_cache() {
        let cache = TokenCache::new(&settings(true));
        let calls = AtomicU32::new(0);
        for expected in [Provenance::Minted, Provenance::Cached] {
            let (_, p) = cache
                .get_or_mint("alice", || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok(minted(Duration::from_secs(7200)))
                })
                .await
                .unwrap();
            assert_eq!(p, expected);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn token_below_min_remaining_is_not_reused() {
        let cache = TokenCache::new(&settings(true));
        let calls = AtomicU32::new(0);
        for _ in 0..2 {
            cache
                .get_or_mint("bob", || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok(minted(Duration::from_secs(600)))
                })
                .await
                .unwrap();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn failures_are_not_cached() {
        let cache = TokenCache::new(&settings(true));
        let err = cache
            .get_or_mint("carol", || async { Err(BrokerError::UpstreamTimeout) })
            .await
            .unwrap_err();
        assert_eq!(err.code(), "upstream_timeout");
        let (_, p) = cache
            .get_or_mint("carol", || async { Ok(minted(Duration::from_secs(7200))) })
            .await
            .unwrap();
        assert_eq!(p, Provenance::Minted);
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_mint() {
        let cache = Arc::new(TokenCache::new(&settings(true)));
        let calls = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let cache = Arc::clone(&cache);
            let calls = Arc::clone(&calls);
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_mint("dave", || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok(minted(Duration::from_secs(7200)))
                    })
                    .await
                    .map(|(t, _)| t.minted.expires_at)
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn disabled_cache_always_mints() {
        let cache = TokenCache::new(&settings(false));
        let calls = AtomicU32::new(0);
        for _ in 0..3 {
            let (_, p) = cache
                .get_or_mint("erin", || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok(minted(Duration::from_secs(7200)))
                })
                .await
                .unwrap();
            assert_eq!(p, Provenance::Minted);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
