//! Who a token is for. The three values Intellia is sent are checked once, when they are made,
//! whether they come from a verified session or from a sidecar's request body: whoever holds an
//! [`Identity`] holds values Intellia will accept.

use std::fmt;

use utoipa::openapi::schema::{Object, ObjectBuilder, SchemaType, Type};

/// The characters no identity value may hold: Unicode's control characters (C0, DEL and C1),
/// exactly those `char::is_control` names. The check and the OpenAPI patterns are both made from
/// this table.
const CONTROL: [(char, char); 2] = [('\u{0}', '\u{1f}'), ('\u{7f}', '\u{9f}')];

fn is_control(c: char) -> bool {
    CONTROL
        .iter()
        .any(|&(first, last)| (first..=last).contains(&c))
}

/// The control characters as the body of a regular-expression class: `\u0000-\u001f...`.
fn control_class() -> String {
    CONTROL
        .iter()
        .map(|&(first, last)| format!("\\u{:04x}-\\u{:04x}", u32::from(first), u32::from(last)))
        .collect()
}

fn printable(text: &str, max_chars: usize) -> bool {
    text.chars().count() <= max_chars && !text.chars().any(is_control)
}

/// A string schema for the OpenAPI document; an optional one (no minimum) may also be `null`.
fn string_schema(description: String, min: Option<usize>, max: usize, pattern: String) -> Object {
    let schema_type = if min.is_some() {
        SchemaType::Type(Type::String)
    } else {
        SchemaType::from_iter([Type::String, Type::Null])
    };
    ObjectBuilder::new()
        .schema_type(schema_type)
        .description(Some(description))
        .min_length(min)
        .max_length(Some(max))
        .pattern(Some(pattern))
        .build()
}

/// Intellia's `userId`: 1–256 characters, none of them control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserId(String);

pub(crate) const MAX_USER_ID_CHARS: usize = 256;

impl UserId {
    pub fn parse(id: String) -> Option<UserId> {
        (!id.is_empty() && printable(&id, MAX_USER_ID_CHARS)).then_some(UserId(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The rule, as an error message or a document states it.
    pub(crate) fn rule() -> String {
        format!("1-{MAX_USER_ID_CHARS} printable characters")
    }

    pub(crate) fn schema() -> Object {
        string_schema(
            format!("{}.", Self::rule()),
            Some(1),
            MAX_USER_ID_CHARS,
            format!("^[^{}]*$", control_class()),
        )
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

const MAX_EMAIL_CHARS: usize = 320;
const MAX_EMAIL_LOCAL_CHARS: usize = 64;

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

    pub(crate) fn rule() -> String {
        format!("a plausible e-mail address of at most {MAX_EMAIL_CHARS} characters")
    }

    pub(crate) fn schema() -> Object {
        let not = format!("@\\s{}", control_class());
        string_schema(
            format!(
                "A plausible e-mail address (`local@domain.tld`), at most {MAX_EMAIL_CHARS} characters."
            ),
            None,
            MAX_EMAIL_CHARS,
            format!("^[^{not}]{{1,{MAX_EMAIL_LOCAL_CHARS}}}@[^{not}.]+(\\.[^{not}.]+)+$"),
        )
    }
}

/// Addresses are personal data: kept out of `Debug` output, so no log line carries one.
impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Email([REDACTED])")
    }
}

fn plausible_email(email: &str) -> bool {
    if !printable(email, MAX_EMAIL_CHARS) || email.chars().any(char::is_whitespace) {
        return false;
    }
    let Some((local, domain)) = email.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.chars().count() <= MAX_EMAIL_LOCAL_CHARS
        && !local.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
}

const MAX_NAME_CHARS: usize = 256;

/// A display name: 1–256 printable characters.
#[derive(Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(name: String) -> Option<DisplayName> {
        (!name.is_empty() && printable(&name, MAX_NAME_CHARS)).then_some(DisplayName(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The rule for a name a caller sends, where an empty name means none.
    pub(crate) fn rule() -> String {
        format!("at most {MAX_NAME_CHARS} printable characters")
    }

    pub(crate) fn schema() -> Object {
        let mut rule = Self::rule();
        rule[..1].make_ascii_uppercase();
        string_schema(
            format!("{rule}."),
            None,
            MAX_NAME_CHARS,
            format!("^[^{}]*$", control_class()),
        )
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
    fn the_control_table_is_what_is_control_means() {
        for c in (0..=0x10ffff).filter_map(char::from_u32) {
            assert_eq!(is_control(c), c.is_control(), "{c:?}");
        }
        assert_eq!(control_class(), r"\u0000-\u001f\u007f-\u009f");
    }

    #[test]
    fn names_are_printable_and_bounded() {
        assert!(DisplayName::parse("Ann".into()).is_some());
        assert!(DisplayName::parse("x".repeat(257)).is_none());
        assert!(DisplayName::parse("a\u{7}".into()).is_none());
        assert!(!format!("{:?}", Email::parse("a@b.co".into())).contains("a@b.co"));
    }
}
