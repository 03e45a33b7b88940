//! How verified claims become an identity: claim names (flat or dotted paths), the per-source
//! user-id prefix, and the conditions a session must meet (required claims, required roles).

use serde_json::{Map, Value};

use crate::config::{ClaimRules, RequiredClaim, RoleRule};
use crate::error::{AuthFailure, BrokerError};
use crate::identity::{DisplayName, Email, Identity, UserId};

pub(super) type Claims = Map<String, Value>;

/// The rules of one session source.
pub(super) struct ClaimPolicy {
    rules: ClaimRules,
}

impl ClaimPolicy {
    pub(super) fn new(rules: &ClaimRules) -> ClaimPolicy {
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

    /// Whether the session holds at least one required role (true when none is required).
    /// Roles are read from the roles claim: an array of role names (Keycloak's
    /// `realm_access.roles`; only its strings count), or an object whose keys are role names
    /// (Zitadel's `urn:zitadel:iam:org:project:roles`: `{"chat-user": {"<orgId>": "<domain>"}}`),
    /// where a key counts only when its value is an object (Zitadel's grant) or `true`: a
    /// provider that writes `{"chat-user": false}` is saying the user lacks the role. Any other
    /// shape holds no role.
    fn holds_role(&self, claims: &Claims) -> bool {
        let Some(RoleRule {
            claim: name,
            required,
        }) = &self.rules.roles
        else {
            return true;
        };
        if required.is_empty() {
            return true;
        }
        let held = |role: &str| required.iter().any(|r| r.as_str() == role);
        match claim(claims, name.as_str()) {
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).any(held),
            Some(Value::Object(roles)) => roles
                .iter()
                .filter(|(_, grant)| matches!(grant, Value::Object(_) | Value::Bool(true)))
                .any(|(role, _)| held(role)),
            Some(_) => {
                // The shape, never the roles: a misconfigured roles_claim is found from this.
                tracing::debug!(
                    claim = name.as_str(),
                    "roles claim is neither an array nor an object"
                );
                false
            }
            None => false,
        }
    }

    fn text(claims: &Claims, name: &str) -> Option<String> {
        claim(claims, name)
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    pub(super) fn email(&self, claims: &Claims) -> Option<Email> {
        Self::text(claims, self.rules.email_claim.as_str()).and_then(Email::parse)
    }

    pub(super) fn name(&self, claims: &Claims) -> Option<DisplayName> {
        Self::text(claims, self.rules.name_claim.as_str()).and_then(DisplayName::parse)
    }

    /// Maps verified claims to an identity, enforcing the user-id rules and required claims.
    pub(super) fn identity(&self, claims: &Claims) -> Result<Identity, BrokerError> {
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
        if !self.holds_role(claims) {
            return Err(BrokerError::Forbidden(
                "the session lacks a role this service requires".into(),
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
pub(super) fn claim<'a>(claims: &'a Claims, name: &str) -> Option<&'a Value> {
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
    use crate::config::values::{ClaimName, RoleName};
    use serde_json::json;

    fn policy(roles_claim: &str, required: &[&str]) -> ClaimPolicy {
        ClaimPolicy::new(&ClaimRules {
            roles: Some(RoleRule {
                claim: ClaimName::of(roles_claim),
                required: required
                    .iter()
                    .map(|r| RoleName::try_from((*r).to_owned()).expect("role name"))
                    .collect(),
            }),
            ..ClaimRules::default()
        })
    }

    fn decide(policy: &ClaimPolicy, claims: serde_json::Value) -> Result<String, &'static str> {
        let map = claims.as_object().expect("object");
        match policy.identity(map) {
            Ok(identity) => Ok(identity.user_id.as_str().to_owned()),
            Err(BrokerError::Forbidden(_)) => Err("forbidden"),
            Err(_) => Err("other"),
        }
    }

    const ZITADEL: &str = "urn:zitadel:iam:org:project:roles";

    #[test]
    fn roles_as_an_array_of_names() {
        let p = policy("realm_access.roles", &["chat-user", "admin"]);
        let ok = json!({"sub": "u", "realm_access": {"roles": ["offline_access", "admin"]}});
        assert_eq!(decide(&p, ok), Ok("u".into()));
        let none = json!({"sub": "u", "realm_access": {"roles": ["offline_access"]}});
        assert_eq!(decide(&p, none), Err("forbidden"));
        // Non-strings in the array are not roles.
        let odd = json!({"sub": "u", "realm_access": {"roles": [1, null, {"chat-user": 1}]}});
        assert_eq!(decide(&p, odd), Err("forbidden"));
    }

    #[test]
    fn roles_as_zitadel_object_keys() {
        let p = policy(ZITADEL, &["chat-user"]);
        let ok = json!({"sub": "u", ZITADEL: {"chat-user": {"2876543210987654321": "acme.example.com"}}});
        assert_eq!(decide(&p, ok), Ok("u".into()));
        // A role's value (org id → domain) is not a role name.
        let other = json!({"sub": "u", ZITADEL: {"reader": {"chat-user": "acme.example.com"}}});
        assert_eq!(decide(&p, other), Err("forbidden"));
        let empty = json!({"sub": "u", ZITADEL: {}});
        assert_eq!(decide(&p, empty), Err("forbidden"));
        // The project-scoped claim works the same way.
        let scoped = "urn:zitadel:iam:org:project:2876500000000000000:roles";
        let p = policy(scoped, &["chat-user"]);
        let ok = json!({"sub": "u", scoped: {"chat-user": {"1": "a"}}});
        assert_eq!(decide(&p, ok), Ok("u".into()));
    }

    #[test]
    fn an_object_role_counts_only_when_granted() {
        let p = policy(ZITADEL, &["chat-user"]);
        for denied in [
            json!(false),
            json!(null),
            json!(0),
            json!(""),
            json!("false"),
            json!([]),
        ] {
            let claims = json!({"sub": "u", ZITADEL: {"chat-user": denied}});
            assert_eq!(decide(&p, claims.clone()), Err("forbidden"), "{claims}");
        }
        for granted in [
            json!(true),
            json!({}),
            json!({"2876543210": "acme.example.com"}),
        ] {
            let claims = json!({"sub": "u", ZITADEL: {"chat-user": granted}});
            assert_eq!(decide(&p, claims.clone()), Ok("u".into()), "{claims}");
        }
    }

    #[test]
    fn roles_under_a_nested_path_and_flat_names_win() {
        let p = policy("resource_access.chat-widget.roles", &["reader"]);
        let ok = json!({"sub": "u", "resource_access": {"chat-widget": {"roles": ["reader"]}}});
        assert_eq!(decide(&p, ok), Ok("u".into()));
        // A claim literally named like the path is taken first.
        let p = policy("app.roles", &["reader"]);
        let flat = json!({"sub": "u", "app.roles": ["writer"], "app": {"roles": ["reader"]}});
        assert_eq!(decide(&p, flat), Err("forbidden"));
    }

    #[test]
    fn absent_or_wrongly_typed_roles_are_forbidden() {
        let p = policy(ZITADEL, &["chat-user"]);
        for claims in [
            json!({"sub": "u"}),
            json!({"sub": "u", ZITADEL: "chat-user"}),
            json!({"sub": "u", ZITADEL: null}),
            json!({"sub": "u", ZITADEL: true}),
            json!({"sub": "u", ZITADEL: 7}),
        ] {
            assert_eq!(decide(&p, claims.clone()), Err("forbidden"), "{claims}");
        }
        // The user id is still checked first: no sub is a 401, not a 403.
        assert_eq!(
            decide(&p, json!({ZITADEL: {"chat-user": {}}})),
            Err("other")
        );
    }

    #[test]
    fn a_roles_claim_without_required_roles_requires_nothing() {
        let p = policy(ZITADEL, &[]);
        assert_eq!(decide(&p, json!({"sub": "u"})), Ok("u".into()));
        let p = ClaimPolicy::new(&ClaimRules::default());
        assert_eq!(decide(&p, json!({"sub": "u"})), Ok("u".into()));
    }

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
