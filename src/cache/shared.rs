//! The shared tier: tokens in Redis, sealed (AES-256-GCM, the user id as associated data), living
//! until they stop being fresh, and a per-user mint lock so one replica mints while the others
//! wait for its result.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{CacheError, CachedToken, Provenance, fresh_for};
use crate::cache::seal::Sealer;
use crate::config::RedisFallback;
use crate::identity::UserId;
use crate::intellia::MintedToken;
use crate::redis::{RedisStore, Unavailable};

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SealedToken {
    token: String,
    expires_at: i64,
    user_id: String,
    organization_id: String,
    role: String,
}

pub(super) struct SharedTier {
    store: Arc<RedisStore>,
    sealer: Sealer,
    min_remaining: Duration,
    mint_deadline: Duration,
}

impl SharedTier {
    pub(super) fn new(
        store: Arc<RedisStore>,
        material: &SecretString,
        min_remaining: Duration,
        mint_deadline: Duration,
    ) -> SharedTier {
        SharedTier {
            store,
            sealer: Sealer::derive(material),
            min_remaining,
            mint_deadline,
        }
    }

    async fn get(&self, user_id: &UserId) -> Result<Option<MintedToken>, Unavailable> {
        let sealed = self
            .store
            .get(self.store.key(user_id.as_str(), "token"))
            .await?;
        Ok(sealed.and_then(|bytes| self.open(user_id, &bytes)))
    }

    /// Shares `user_id`'s new token. Stored under the user it was asked for, and only when the
    /// token names that user: a token for someone else is never shared (the client refuses such
    /// an answer already; this keeps the shared tier safe on its own).
    async fn put(&self, user_id: &UserId, minted: &MintedToken) {
        let ttl = fresh_for(minted, self.min_remaining);
        if ttl.is_zero() || minted.user_id != user_id.as_str() {
            return;
        }
        let key = self.store.key(user_id.as_str(), "token");
        // Best effort: a token that is not shared is only minted once more elsewhere.
        let _ = self.store.set_px(key, self.seal(minted), ttl).await;
    }

    fn seal(&self, minted: &MintedToken) -> Vec<u8> {
        let plain = SealedToken {
            token: minted.token.expose_secret().to_owned(),
            expires_at: minted.expires_at.unix_timestamp(),
            user_id: minted.user_id.clone(),
            organization_id: minted.organization_id.clone(),
            role: minted.role.clone(),
        };
        let mut json = serde_json::to_vec(&plain).unwrap_or_default();
        let sealed = self.sealer.seal(&json, minted.user_id.as_bytes());
        json.fill(0);
        sealed
    }

    fn open(&self, user_id: &UserId, bytes: &[u8]) -> Option<MintedToken> {
        let mut plain = self.sealer.open(bytes, user_id.as_str().as_bytes())?;
        let parsed: Option<SealedToken> = serde_json::from_slice(&plain).ok();
        plain.fill(0);
        let parsed = parsed?;
        Some(MintedToken {
            token: SecretString::from(parsed.token),
            expires_at: OffsetDateTime::from_unix_timestamp(parsed.expires_at).ok()?,
            user_id: parsed.user_id,
            organization_id: parsed.organization_id,
            role: parsed.role,
        })
    }

    /// The user's shared token, if another replica minted one that is still fresh enough.
    async fn shared_fresh(&self, user_id: &UserId) -> Result<Option<CachedToken>, Unavailable> {
        let found = self.get(user_id).await?;
        Ok(found
            .filter(|minted| !fresh_for(minted, self.min_remaining).is_zero())
            .map(|minted| CachedToken::with_origin(minted, self.min_remaining, Provenance::Cached)))
    }

    /// A fresh token another replica minted, else this replica mints under the user's lock
    /// (others wait for the shared result), else — Redis being unavailable — it mints alone or
    /// refuses, as configured.
    pub(super) async fn get_or_mint<F, Fut, E>(
        &self,
        user_id: &UserId,
        mint: F,
    ) -> Result<CachedToken, CacheError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<MintedToken, E>>,
    {
        let deny = self.store.fallback() == RedisFallback::Deny;
        let mint_alone = |mint: F| async move {
            Ok(CachedToken::new(
                mint().await.map_err(CacheError::Mint)?,
                self.min_remaining,
            ))
        };
        match self.shared_fresh(user_id).await {
            Ok(Some(token)) => return Ok(token),
            Ok(None) => {}
            Err(Unavailable) if deny => return Err(CacheError::SharedUnavailable),
            Err(Unavailable) => return mint_alone(mint).await,
        }
        // Take the user's lock and mint, or wait for the replica holding it to share its result;
        // if that replica fails (its lock goes without a token), take the lock in turn.
        let lock_key = self.store.key(user_id.as_str(), "lock");
        let deadline = Instant::now() + self.mint_deadline;
        loop {
            match self.store.lock(lock_key.clone(), self.mint_deadline).await {
                Ok(Some(lock)) => {
                    let minted = mint().await;
                    if let Ok(token) = &minted {
                        self.put(user_id, token).await;
                    }
                    self.store.unlock(lock_key, &lock).await;
                    return Ok(CachedToken::new(
                        minted.map_err(CacheError::Mint)?,
                        self.min_remaining,
                    ));
                }
                Ok(None) => {}
                Err(Unavailable) if deny => return Err(CacheError::SharedUnavailable),
                Err(Unavailable) => break,
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            match self.shared_fresh(user_id).await {
                Ok(Some(token)) => return Ok(token),
                Ok(None) => {}
                Err(Unavailable) if deny => return Err(CacheError::SharedUnavailable),
                Err(Unavailable) => break,
            }
        }
        mint_alone(mint).await
    }
}
