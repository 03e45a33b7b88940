//! The sidecar route's credential: the backend secret, compared in constant time, and the wrong
//! secrets each client address may present.

use std::net::IpAddr;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::AuthFailure;
use crate::limits::RateLimitStatus;
use crate::limits::failures::FailureLimit;
use crate::secrets::SecretCell;

/// The backend secret and the failed attempts per client.
pub(crate) struct BackendAuth {
    secret: Arc<SecretCell>,
    failures: FailureLimit,
}

/// Why a backend credential was not accepted.
pub(super) enum Refusal {
    Unauthenticated(AuthFailure),
    /// The client's failed attempts are spent.
    Limited(RateLimitStatus),
}

impl BackendAuth {
    pub(crate) fn new(secret: Arc<SecretCell>, failures: FailureLimit) -> BackendAuth {
        BackendAuth { secret, failures }
    }

    /// Checks the presented secret. It is compared first: the right secret is accepted whatever
    /// its address has spent, so nobody who shares or claims that address can lock the backend
    /// out. Only a wrong credential counts against the address, and only a wrong one is refused
    /// with 429 once the address's allowance is spent. A request without a credential is a
    /// plain 401 and counts for nothing: it is a caller that forgot the header, not a guess.
    pub(super) async fn authenticate(
        &self,
        presented: Result<Option<&str>, AuthFailure>,
        client: Option<IpAddr>,
    ) -> Result<(), Refusal> {
        let failure = match self.compare(presented) {
            Ok(()) => return Ok(()),
            Err(AuthFailure::Missing) => {
                return Err(Refusal::Unauthenticated(AuthFailure::Missing));
            }
            Err(failure) => failure,
        };
        let Some(ip) = client else {
            return Err(Refusal::Unauthenticated(failure));
        };
        if let Some(refused) = self.failures.blocked(ip).await {
            return Err(Refusal::Limited(refused));
        }
        if let Some(refused) = self.failures.record(ip).await {
            tracing::warn!(client_ip = %ip, "backend-secret failures spent; refusing this client's wrong secrets for a while");
            return Err(Refusal::Limited(refused));
        }
        Err(Refusal::Unauthenticated(failure))
    }

    /// Whether the request carries the backend secret. Comparing digests keeps the comparison
    /// constant-time in the secret's length as well.
    fn compare(&self, presented: Result<Option<&str>, AuthFailure>) -> Result<(), AuthFailure> {
        let presented = presented?.ok_or(AuthFailure::Missing)?;
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        if bool::from(presented.ct_eq(self.secret.get().fingerprint())) {
            Ok(())
        } else {
            Err(AuthFailure::WrongBackendSecret)
        }
    }

    /// Forgets clients whose failure buckets have refilled.
    pub(crate) fn sweep(&self) {
        self.failures.sweep();
    }
}
