//! Issuing tokens: everything between a parsed request and the token it gets. The two token
//! routes call one method each — [`TokenService::issue_for_session`] and
//! [`TokenService::issue_for_backend`] — and the order of the steps is decided here, once: the
//! credential, the CSRF guard, the per-IP charge before a new session costs the identity
//! provider a request, verification, the per-user limit, the cache, the mint. This is also the
//! one place where limit and Redis outcomes become errors.

mod backend;

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use actix_web::http::header::HeaderMap;
use prometheus_client::metrics::counter::Counter;
use tracing::Instrument;

pub(crate) use backend::BackendAuth;
use backend::Refusal;

use crate::cache::{CacheError, CachedToken, Provenance, TokenCache};
use crate::error::{AuthFailure, BrokerError};
use crate::identity::Identity;
use crate::intellia::IntelliaClient;
use crate::limits::{LimitError, Limits, RateLimitStatus, RequestKeys};
use crate::session::SessionVerifier;
use crate::telemetry::metrics::{LimitLabels, Metrics, ResultLabels};

/// A token for the caller, and the limit to tell them about.
pub(crate) struct Issued {
    pub token: Arc<CachedToken>,
    pub limit: Option<RateLimitStatus>,
}

impl Issued {
    pub(crate) fn user_id(&self) -> &str {
        &self.token.minted.user_id
    }
}

/// What the browser route knows about a request before the service looks at it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionRequest<'a> {
    /// The request's headers, where the session credential is.
    pub(crate) headers: &'a HeaderMap,
    /// Whether the request's origin may use credentials the browser attaches by itself
    /// (cookies): the CSRF guard, decided by the CORS policy.
    pub(crate) origin_allowed: bool,
    /// The client's address as far as trusted proxies vouch for it.
    pub(crate) client: Option<IpAddr>,
}

/// Where a request stands with its per-IP limit when its token is issued.
#[derive(Debug, Clone, Copy)]
enum IpCharge {
    /// No per-IP limit applies (the sidecar route, or no known client address).
    None,
    /// Not charged yet: charge it together with the user's limit, in one decision.
    Pending(IpAddr),
    /// Already charged (before a session was verified); this is what it said.
    Charged(Option<RateLimitStatus>),
}

impl IpCharge {
    fn pending(client: Option<IpAddr>) -> IpCharge {
        client.map_or(IpCharge::None, IpCharge::Pending)
    }
}

pub struct TokenService {
    verifier: Arc<SessionVerifier>,
    /// `broker_cache_requests_total{result="hit"}` and `{result="miss"}`, resolved once: every
    /// token request counts one.
    cache_hits: Counter,
    cache_misses: Counter,
    backend: Option<BackendAuth>,
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
    pub(crate) fn new(
        verifier: Arc<SessionVerifier>,
        backend: Option<BackendAuth>,
        limits: Limits,
        cache: TokenCache,
        intellia: IntelliaClient,
        metrics: Arc<Metrics>,
    ) -> TokenService {
        let cache_counter = |result| {
            metrics
                .cache_requests
                .get_or_create(&ResultLabels { result })
                .clone()
        };
        TokenService {
            cache_hits: cache_counter("hit"),
            cache_misses: cache_counter("miss"),
            verifier,
            backend,
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

    /// Whether the sidecar route is configured.
    pub(crate) fn has_backend(&self) -> bool {
        self.backend.is_some()
    }

    /// The browser route: the token of the person whose site session the request carries.
    ///
    /// Every request is charged to its client's per-IP limit, refused ones included (a spent
    /// limit wins over the refusal). A session verified before is charged together with its
    /// user in one decision; a new one is charged to its address first, since verifying it may
    /// cost the identity provider a request.
    pub(crate) async fn issue_for_session(
        &self,
        request: SessionRequest<'_>,
    ) -> Result<Issued, BrokerError> {
        let client = request.client;
        let credential = match self.verifier.credential(request.headers) {
            Ok(credential) => credential,
            Err(failure) => {
                return Err(self
                    .refuse(client, BrokerError::Unauthenticated(failure))
                    .await);
            }
        };
        if credential.is_ambient() && !request.origin_allowed {
            return Err(self.refuse(client, BrokerError::OriginForbidden).await);
        }
        if let Some(identity) = self.verifier.remembered(&credential).await {
            return self.issue(&identity, IpCharge::pending(client)).await;
        }
        let charged = self.charge_ip(client).await?;
        let identity = self.verifier.verify(&credential).await?;
        self.issue(&identity, IpCharge::Charged(charged)).await
    }

    /// The sidecar route: the token of the user a backend names. The backend's credential is
    /// checked before its body is read; a sidecar's callers share one address, so only the
    /// user's limit applies.
    pub(crate) async fn issue_for_backend(
        &self,
        presented: Result<Option<&str>, AuthFailure>,
        client: Option<IpAddr>,
        body: impl Future<Output = Result<Identity, BrokerError>>,
    ) -> Result<Issued, BrokerError> {
        let backend = self.backend.as_ref().ok_or(BrokerError::NotFound)?;
        match backend.authenticate(presented, client).await {
            Ok(()) => {}
            Err(Refusal::Unauthenticated(failure)) => {
                return Err(BrokerError::Unauthenticated(failure));
            }
            Err(Refusal::Limited(status)) => return Err(self.rate_limited(status)),
        }
        let identity = body.await?;
        self.issue(&identity, IpCharge::None).await
    }

    /// A spent limit, counted.
    fn rate_limited(&self, status: RateLimitStatus) -> BrokerError {
        self.metrics
            .rate_limited
            .get_or_create(&LimitLabels { limit: status.name })
            .inc();
        BrokerError::RateLimited(status)
    }

    /// Charges the client's per-IP limit alone: for a request that must be limited before its
    /// session is verified (verifying may call the identity provider).
    async fn charge_ip(
        &self,
        client_ip: Option<IpAddr>,
    ) -> Result<Option<RateLimitStatus>, BrokerError> {
        let keys = RequestKeys {
            ip: client_ip,
            user: None,
        };
        self.charge(keys, "ip")
            .await
            .map_err(|e| self.limit_error(e))
    }

    /// Charges `keys` to their limits. A decision that goes to Redis gets a span, since it is a
    /// network call that can be slow; one taken in this process costs about a tenth of a
    /// microsecond, less than its span would.
    async fn charge(
        &self,
        keys: RequestKeys<'_>,
        subject: &'static str,
    ) -> Result<Option<RateLimitStatus>, LimitError> {
        if self.limits.is_shared() {
            self.limits
                .check(keys)
                .instrument(tracing::info_span!("limits.check", subject))
                .await
        } else {
            self.limits.check(keys).await
        }
    }

    /// A request refused before it could be issued a token (no session, a bad one, a cookie from
    /// a foreign origin) still counts against its client's per-IP limit; a spent limit wins.
    async fn refuse(&self, client_ip: Option<IpAddr>, error: BrokerError) -> BrokerError {
        match self.charge_ip(client_ip).await {
            Ok(_) => error,
            Err(limited) => limited,
        }
    }

    /// The identity's token: the user's (and a pending per-IP) limit charged in one decision,
    /// then the cached token when it is fresh enough, else a new one (one mint per user at a time,
    /// counted against the upstream limit).
    async fn issue(&self, identity: &Identity, ip: IpCharge) -> Result<Issued, BrokerError> {
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
        let checked = self.charge(keys, subject).await;
        let limit = match checked {
            Ok(Some(status)) => Some(RateLimitStatus::tightest(charged, status)),
            Ok(None) => charged,
            Err(e) => return Err(self.limit_error(e)),
        };
        let (token, result) = match self.cache.fresh(&identity.user_id).await {
            Some(token) => (token, "hit"),
            None => self.get_or_mint(identity).await?,
        };
        let counter = if result == "hit" {
            &self.cache_hits
        } else {
            &self.cache_misses
        };
        counter.inc();
        Ok(Issued { token, limit })
    }

    /// The token of a user this replica holds no fresh one for: from the shared tier, or minted
    /// (one mint per user at a time, counted against the upstream limit). Returns whether it was
    /// found (`hit`) or minted (`miss`).
    async fn get_or_mint(
        &self,
        identity: &Identity,
    ) -> Result<(Arc<CachedToken>, &'static str), BrokerError> {
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
        Ok((token, result))
    }

    /// Drops what idle users and clients left behind: full limiter buckets, spent failure
    /// buckets and stale tokens.
    pub(crate) async fn housekeeping(&self) {
        self.limits.sweep();
        if let Some(backend) = &self.backend {
            backend.sweep();
        }
        self.cache.run_housekeeping().await;
        self.metrics
            .limiter_keys
            .set(i64::try_from(self.limits.tracked_keys()).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests;
