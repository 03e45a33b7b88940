//! Issuing tokens: the limits a request is charged to, the token cache, and the mint. Both token
//! routes call [`TokenService::issue`]; this is the one place where limit and Redis outcomes
//! become errors.

use std::net::IpAddr;
use std::sync::Arc;

use tracing::Instrument;

use crate::cache::{CacheError, CachedToken, Provenance, TokenCache};
use crate::error::BrokerError;
use crate::identity::Identity;
use crate::intellia::IntelliaClient;
use crate::limits::{LimitError, Limits, RateLimitStatus, RequestKeys};
use crate::telemetry::metrics::{LimitLabels, Metrics, ResultLabels};

/// A token for the caller, and the limit to tell them about.
pub struct Issued {
    pub token: Arc<CachedToken>,
    pub provenance: Provenance,
    pub limit: Option<RateLimitStatus>,
}

/// Where a request stands with its per-IP limit when it reaches [`TokenService::issue`].
#[derive(Debug, Clone, Copy)]
pub enum IpCharge {
    /// No per-IP limit applies (the sidecar route, or no known client address).
    None,
    /// Not charged yet: charge it together with the user's limit, in one decision.
    Pending(IpAddr),
    /// Already charged (before a session was verified); this is what it said.
    Charged(Option<RateLimitStatus>),
}

pub struct TokenService {
    limits: Limits,
    cache: TokenCache,
    intellia: IntelliaClient,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenService")
            .field("limits", &self.limits)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// Shared limits cannot be checked and the operator chose to refuse rather than guess.
fn shared_state_unavailable() -> BrokerError {
    BrokerError::UpstreamUnavailable {
        retry_after_secs: Some(1),
    }
}

impl TokenService {
    pub fn new(
        limits: Limits,
        cache: TokenCache,
        intellia: IntelliaClient,
        metrics: Arc<Metrics>,
    ) -> TokenService {
        TokenService {
            limits,
            cache,
            intellia,
            metrics,
        }
    }

    fn limit_error(&self, error: LimitError) -> BrokerError {
        match error {
            LimitError::Limited(status) => self.rate_limited(status),
            LimitError::Unavailable => shared_state_unavailable(),
        }
    }

    /// A spent limit, counted.
    pub fn rate_limited(&self, status: RateLimitStatus) -> BrokerError {
        self.metrics
            .rate_limited
            .get_or_create(&LimitLabels { limit: status.name })
            .inc();
        BrokerError::RateLimited(status)
    }

    /// Charges the client's per-IP limit alone: for a request that must be limited before its
    /// session is verified (verifying may call the identity provider).
    pub async fn charge_ip(
        &self,
        client_ip: Option<IpAddr>,
    ) -> Result<Option<RateLimitStatus>, BrokerError> {
        let keys = RequestKeys {
            ip: client_ip,
            user: None,
        };
        self.limits
            .check(keys)
            .instrument(tracing::info_span!("limits.check", subject = "ip"))
            .await
            .map_err(|e| self.limit_error(e))
    }

    /// A request refused before it could be issued a token (no session, a bad one, a cookie from
    /// a foreign origin) still counts against its client's per-IP limit; a spent limit wins.
    pub async fn refuse(&self, client_ip: Option<IpAddr>, error: BrokerError) -> BrokerError {
        match self.charge_ip(client_ip).await {
            Ok(_) => error,
            Err(limited) => limited,
        }
    }

    /// The identity's token: the user's (and a pending per-IP) limit charged in one decision,
    /// then the cached token when it is fresh enough, else a new one (one mint per user at a time,
    /// counted against the upstream limit).
    pub async fn issue(&self, identity: &Identity, ip: IpCharge) -> Result<Issued, BrokerError> {
        let (pending_ip, charged) = match ip {
            IpCharge::None => (None, None),
            IpCharge::Pending(ip) => (Some(ip), None),
            IpCharge::Charged(status) => (None, status),
        };
        let keys = RequestKeys {
            ip: pending_ip,
            user: Some(&identity.user_id),
        };
        let subject = if pending_ip.is_some() {
            "ip+user"
        } else {
            "user"
        };
        let checked = self
            .limits
            .check(keys)
            .instrument(tracing::info_span!("limits.check", subject))
            .await;
        let limit = match checked {
            Ok(Some(status)) => Some(RateLimitStatus::tightest(charged, status)),
            Ok(None) => charged,
            Err(e) => return Err(self.limit_error(e)),
        };
        let cache_span = tracing::info_span!("cache.get_or_mint", result = tracing::field::Empty);
        let (token, provenance) = self
            .cache
            .get_or_mint(&identity.user_id, || async {
                self.limits
                    .check_upstream()
                    .instrument(tracing::info_span!("limits.check", subject = "upstream"))
                    .await
                    .map_err(|e| self.limit_error(e))?;
                self.intellia
                    .assume_role(identity)
                    .await
                    .map_err(BrokerError::from)
            })
            .instrument(cache_span.clone())
            .await
            .map_err(|e| match e {
                CacheError::Mint(e) => e,
                CacheError::SharedUnavailable => shared_state_unavailable(),
            })?;
        let result = match provenance {
            Provenance::Cached => "hit",
            Provenance::Minted => "miss",
        };
        cache_span.record("result", result);
        self.metrics
            .cache_requests
            .get_or_create(&ResultLabels { result })
            .inc();
        Ok(Issued {
            token,
            provenance,
            limit,
        })
    }

    /// Drops what idle users left behind: full limiter buckets and stale tokens.
    pub async fn housekeeping(&self) {
        self.limits.sweep();
        self.cache.run_housekeeping().await;
        self.metrics
            .limiter_keys
            .set(i64::try_from(self.limits.tracked_keys()).unwrap_or(i64::MAX));
    }
}
