//! The token cache: a user who still holds a token with at least `min_remaining_secs` left gets the
//! same token back, with no call to Intellia. Concurrent requests for one user share one mint
//! (single flight), and a failed mint is never cached.
//!
//! Two tiers: the replica's own memory ([`memory`]) in front, and — with Redis — a shared,
//! encrypted tier ([`shared`]) behind it, with a short mint lock so concurrent requests for one
//! user on different replicas still make one Intellia call.

mod memory;
pub(crate) mod seal;
mod shared;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use time::OffsetDateTime;

use crate::config::CacheSettings;
use crate::identity::UserId;
use crate::intellia::MintedToken;
use crate::redis::RedisStore;
use memory::MemoryTier;
use shared::SharedTier;

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
}

/// Whether a token came from the cache or was minted for this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provenance {
    Cached,
    Minted,
}

/// Why no token came back.
#[derive(Debug, Clone, PartialEq)]
pub enum CacheError<E> {
    /// The mint failed.
    Mint(E),
    /// The shared tier is unavailable and the operator chose to refuse rather than mint alone.
    SharedUnavailable,
}

pub struct TokenCache {
    memory: Option<MemoryTier>,
    shared: Option<SharedTier>,
    min_remaining: Duration,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("enabled", &self.memory.is_some())
            .field("min_remaining", &self.min_remaining)
            .finish()
    }
}

impl TokenCache {
    /// `mint_deadline` is the longest a mint can take: how long a replica holds a user's mint
    /// lock in the shared tier, and how long the others wait for its result. `key_material` seals
    /// the shared tier's entries.
    pub fn new(
        settings: &CacheSettings,
        shared: Option<(Arc<RedisStore>, &SecretString)>,
        mint_deadline: Duration,
    ) -> TokenCache {
        let min_remaining = Duration::from_secs(settings.min_remaining_secs.get());
        TokenCache {
            memory: settings
                .enabled
                .then(|| MemoryTier::new(settings.max_entries.get())),
            shared: shared
                .filter(|_| settings.enabled)
                .map(|(store, material)| {
                    SharedTier::new(store, material, min_remaining, mint_deadline)
                }),
            min_remaining,
        }
    }

    /// The user's token when this replica holds a fresh one: the common case, answered by one
    /// lookup, without the single-flight machinery (or a span around it).
    pub(crate) async fn fresh(&self, user_id: &UserId) -> Option<Arc<CachedToken>> {
        self.memory.as_ref()?.get(user_id).await
    }

    /// Returns the user's fresh token, or mints one with `mint`. With the cache enabled, concurrent
    /// callers for one user await a single `mint`.
    pub async fn get_or_mint<F, Fut, E>(
        &self,
        user_id: &UserId,
        mint: F,
    ) -> Result<(Arc<CachedToken>, Provenance), CacheError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<MintedToken, E>>,
        E: Clone + Send + Sync + 'static,
    {
        let min_remaining = self.min_remaining;
        let Some(memory) = &self.memory else {
            let minted = mint().await.map_err(CacheError::Mint)?;
            return Ok((
                Arc::new(CachedToken::new(minted, min_remaining)),
                Provenance::Minted,
            ));
        };
        memory
            .get_or_insert(user_id, async move {
                let token = match &self.shared {
                    Some(shared) => shared.get_or_mint(user_id, mint).await?,
                    None => {
                        CachedToken::new(mint().await.map_err(CacheError::Mint)?, min_remaining)
                    }
                };
                Ok(Arc::new(token))
            })
            .await
    }

    /// Drops expired tokens now. moka otherwise does this work only as entries are read or
    /// written, so an idle replica would keep the memory of tokens nobody will ask for.
    pub async fn run_housekeeping(&self) {
        if let Some(memory) = &self.memory {
            memory.run_housekeeping().await;
        }
    }

    /// Tokens held by this replica (an estimate until housekeeping has run).
    pub fn entry_count(&self) -> u64 {
        self.memory.as_ref().map_or(0, MemoryTier::entry_count)
    }
}

#[cfg(test)]
mod tests;
