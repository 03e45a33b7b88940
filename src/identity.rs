//! Who a token is for. The three values Intellia is sent are checked once, when they are made,
//! whether they come from a verified session or from a sidecar's request body: whoever holds an
//! [`Identity`] holds values Intellia will accept.

use std::fmt;

/// Intellia's `userId`: 1–256 characters, none of them control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserId(String);

pub const MAX_USER_ID_CHARS: usize = 256;

impl UserId {
    pub fn parse(id: String) -> Option<UserId> {
        let count = id.chars().count();
        ((1..=MAX_USER_ID_CHARS).contains(&count) && !id.chars().any(char::is_control))
            .then_some(UserId(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A plausible e-mail address: `local@domain.tld`, no spaces or control characters, at most 320
/// characters. Deliverability is Intellia's business; this only stops obvious garbage.
#[derive(Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(email: String) -> Option<Email> {
        plausible_email(&email).then_some(Email(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Addresses are personal data: kept out of `Debug` output, so no log line carries one.
impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Email([REDACTED])")
    }
}

fn plausible_email(email: &str) -> bool {
    if email.chars().count() > 320 || email.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return false;
    }
    let Some((local, domain)) = email.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.chars().count() <= 64
        && !local.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
}

/// A display name: 1–256 printable characters.
#[derive(Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(name: String) -> Option<DisplayName> {
        let count = name.chars().count();
        ((1..=256).contains(&count) && !name.chars().any(char::is_control))
            .then_some(DisplayName(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DisplayName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DisplayName([REDACTED])")
    }
}

/// The person a token is minted for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: UserId,
    pub email: Option<Email>,
    pub name: Option<DisplayName>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_plausibility() {
        for good in ["a@b.co", "john.doe+chat@example.com", "ü@exämple.de"] {
            assert!(Email::parse(good.into()).is_some(), "{good}");
        }
        for bad in [
            "",
            "a",
            "a@b",
            "@b.com",
            "a@.com",
            "a@b.com.",
            "a b@c.com",
            "a@b..com",
            "a\n@b.com",
        ] {
            assert!(Email::parse(bad.into()).is_none(), "{bad}");
        }
        assert!(Email::parse(format!("{}@example.com", "a".repeat(65))).is_none());
    }

    #[test]
    fn user_id_rules() {
        assert!(UserId::parse("user-123".into()).is_some());
        assert!(UserId::parse("ünïcødé".into()).is_some());
        assert!(UserId::parse(String::new()).is_none());
        assert!(UserId::parse("a\nb".into()).is_none());
        assert!(UserId::parse("x".repeat(257)).is_none());
        assert!(UserId::parse("x".repeat(256)).is_some());
    }

    #[test]
    fn names_are_printable_and_bounded() {
        assert!(DisplayName::parse("Ann".into()).is_some());
        assert!(DisplayName::parse("x".repeat(257)).is_none());
        assert!(DisplayName::parse("a\u{7}".into()).is_none());
        assert!(!format!("{:?}", Email::parse("a@b.co".into())).contains("a@b.co"));
    }
}
