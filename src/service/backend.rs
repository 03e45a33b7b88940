//! The sidecar route's credential: the backend secret, compared in constant time, and the failed
//! attempts each client address may make.

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

    /// Checks the presented secret. A client whose failures are spent is refused before its
    /// secret is compared; a wrong secret counts as a failure.
    pub(super) async fn authenticate(
        &self,
        presented: Result<Option<&str>, AuthFailure>,
        client: Option<IpAddr>,
    ) -> Result<(), Refusal> {
        if let Some(ip) = client
            && let Some(refused) = self.failures.blocked(ip).await
        {
            return Err(Refusal::Limited(refused));
        }
        let Err(failure) = self.compare(presented) else {
            return Ok(());
        };
        if let Some(ip) = client
            && let Some(refused) = self.failures.record(ip).await
        {
            tracing::warn!(client_ip = %ip, "backend-secret failures spent; refusing this client for a while");
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
