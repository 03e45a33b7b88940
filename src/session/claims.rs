//! How verified claims become an identity: claim names (flat or dotted paths), the per-source
//! user-id prefix, and the conditions a session must meet.

use serde_json::{Map, Value};

use crate::config::{ClaimRules, RequiredClaim};
use crate::error::{AuthFailure, BrokerError};
use crate::identity::{DisplayName, Email, Identity, UserId};

pub type Claims = Map<String, Value>;

/// The rules of one session source.
pub struct ClaimPolicy {
    rules: ClaimRules,
}

impl ClaimPolicy {
    pub fn new(rules: &ClaimRules) -> ClaimPolicy {
        ClaimPolicy {
            rules: rules.clone(),
        }
    }

    /// Whether the claims meet every `claim=value` condition: a string (or number or boolean)
    /// equal to the value, or an array containing it.
    fn satisfied(&self, claims: &Claims) -> bool {
        self.rules.required_claims.iter().all(
            |RequiredClaim {
                 claim: name,
                 value: wanted,
             }| {
                let matches = |v: &Value| match v {
                    Value::String(s) => s == wanted,
                    Value::Bool(b) => b.to_string() == *wanted,
                    Value::Number(n) => n.to_string() == *wanted,
                    _ => false,
                };
                match claim(claims, name) {
                    Some(Value::Array(items)) => items.iter().any(matches),
                    Some(v) => matches(v),
                    None => false,
                }
            },
        )
    }

    fn text(claims: &Claims, name: &str) -> Option<String> {
        claim(claims, name)
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    pub fn email(&self, claims: &Claims) -> Option<Email> {
        Self::text(claims, self.rules.email_claim.as_str()).and_then(Email::parse)
    }

    pub fn name(&self, claims: &Claims) -> Option<DisplayName> {
        Self::text(claims, self.rules.name_claim.as_str()).and_then(DisplayName::parse)
    }

    /// Maps verified claims to an identity, enforcing the user-id rules and required claims.
    pub fn identity(&self, claims: &Claims) -> Result<Identity, BrokerError> {
        let raw_id = match claim(claims, self.rules.user_id_claim.as_str()) {
            Some(Value::String(s)) => s.as_str(),
            _ => return Err(BrokerError::Unauthenticated(AuthFailure::MissingClaim)),
        };
        if raw_id.is_empty() {
            return Err(BrokerError::Unauthenticated(AuthFailure::InvalidUserId));
        }
        let user_id = UserId::parse(format!("{}{raw_id}", self.rules.user_id_prefix.as_str()))
            .ok_or(BrokerError::Unauthenticated(AuthFailure::InvalidUserId))?;
        if !self.satisfied(claims) {
            return Err(BrokerError::Forbidden(
                "the session lacks a claim this service requires".into(),
            ));
        }
        Ok(Identity {
            user_id,
            email: self.email(claims),
            name: self.name(claims),
        })
    }
}

/// Looks a claim up by name. A name present as-is wins (Zitadel's `urn:zitadel:iam:...` names are
/// flat); otherwise a dotted path walks nested objects (`realm_access.roles`).
pub fn claim<'a>(claims: &'a Claims, name: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    let mut parts = name.split('.');
    let mut current = claims.get(parts.next()?)?;
    for part in parts {
        current = current.as_object()?.get(part)?;
    }
    Some(current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_and_flat_claim_names() {
        let claims = json!({
            "urn:zitadel:iam:user:resourceowner:id": "org-1",
            "realm_access": {"roles": ["chat"]},
            "a.b": "flat wins"
        });
        let map = claims.as_object().unwrap();
        assert_eq!(
            claim(map, "urn:zitadel:iam:user:resourceowner:id"),
            Some(&json!("org-1"))
        );
        assert_eq!(claim(map, "realm_access.roles"), Some(&json!(["chat"])));
        assert_eq!(claim(map, "a.b"), Some(&json!("flat wins")));
        assert_eq!(claim(map, "realm_access.missing"), None);
    }
}
