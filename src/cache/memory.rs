//! The replica's own tier: `moka`, each entry living until its token is no longer fresh, one
//! initialisation per key at a time (single flight).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;

use super::{CacheError, CachedToken, Provenance};
use crate::identity::UserId;

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

pub(super) struct MemoryTier {
    cache: moka::future::Cache<String, Arc<CachedToken>>,
}

impl MemoryTier {
    pub(super) fn new(max_entries: u64) -> MemoryTier {
        MemoryTier {
            cache: moka::future::Cache::builder()
                .max_capacity(max_entries)
                .expire_after(UntilNoLongerFresh)
                .build(),
        }
    }

    /// The user's entry, if it is still fresh (expired entries are never returned).
    pub(super) async fn get(&self, user_id: &UserId) -> Option<Arc<CachedToken>> {
        self.cache.get(user_id.as_str()).await
    }

    /// The user's entry, or the result of `init`; concurrent callers for one user share one
    /// `init`, and an error is not stored.
    pub(super) async fn get_or_insert<Fut, E>(
        &self,
        user_id: &UserId,
        init: Fut,
    ) -> Result<(Arc<CachedToken>, Provenance), CacheError<E>>
    where
        Fut: Future<Output = Result<Arc<CachedToken>, CacheError<E>>>,
        E: Clone + Send + Sync + 'static,
    {
        let entry = self
            .cache
            .entry_by_ref(user_id.as_str())
            .or_try_insert_with(init)
            .await
            .map_err(Arc::unwrap_or_clone)?;
        let provenance = if entry.is_fresh() {
            entry.value().origin
        } else {
            Provenance::Cached
        };
        Ok((entry.into_value(), provenance))
    }

    pub(super) async fn run_housekeeping(&self) {
        self.cache.run_pending_tasks().await;
    }

    pub(super) fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }
}
