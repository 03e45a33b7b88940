//! A JSON object that names a key twice. serde_json, and the `config` crate on top of it, keep
//! the last value without a word, so two `cors` objects would leave whichever came second, and a
//! second `trusted_proxies` would replace the first. TOML refuses a duplicate key; so does this
//! check, run over the JSON text before the text is handed on.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Marks the walk's own error among serde_json's (which gets a position appended).
const DUPLICATE: &str = "duplicate key ";

/// The first key a JSON object of `text` names twice, as "config key `a.b[0].c`: …"; `None`
/// when there is none, or when `text` is not JSON at all (the loader then says what is wrong
/// with it, as it always has).
pub(super) fn first_duplicate(text: &str) -> Option<String> {
    let mut reader = serde_json::Deserializer::from_str(text);
    let error = Walk {
        path: String::new(),
    }
    .deserialize(&mut reader)
    .err()?;
    let message = error.to_string();
    let rest = message.strip_prefix(DUPLICATE)?;
    let (path, _) = rest.split_once(' ')?;
    Some(format!(
        "config key `{path}`: appears twice in the same object (line {}, column {}); JSON would keep the last silently, so the configuration is refused, as TOML refuses it",
        error.line(),
        error.column()
    ))
}

/// Walks one JSON value, knowing its key path.
struct Walk {
    path: String,
}

impl Walk {
    fn key(&self, key: &str) -> Walk {
        Walk {
            path: if self.path.is_empty() {
                key.to_owned()
            } else {
                format!("{}.{key}", self.path)
            },
        }
    }
}

impl<'de> DeserializeSeed<'de> for Walk {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let inner = self.key(&key);
            if !seen.insert(key) {
                // The path holds no space (`_` for one), so the marker parses back.
                let path = inner.path.replace(' ', "_");
                return Err(de::Error::custom(format!("{DUPLICATE}{path} ")));
            }
            map.next_value_seed(inner)?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0usize;
        while seq
            .next_element_seed(Walk {
                path: format!("{}[{index}]", self.path),
            })?
            .is_some()
        {
            index += 1;
        }
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_named_twice_is_found_with_its_path() {
        assert_eq!(
            first_duplicate(r#"{"a": 1, "b": {"c": [1, {"d": 2}]}}"#),
            None
        );
        let found = |text: &str| first_duplicate(text).expect(text);
        assert!(
            found(r#"{"cors": {}, "cors": {}}"#).starts_with("config key `cors`: appears twice")
        );
        assert!(
            found(r#"{"server": {"trusted_proxies": [], "trusted_proxies": ["0.0.0.0/0"]}}"#)
                .starts_with("config key `server.trusted_proxies`: ")
        );
        assert!(
            found(r#"{"session": {"jwt": [{"issuer": "a"}, {"issuer": "b", "issuer": "c"}]}}"#)
                .starts_with("config key `session.jwt[1].issuer`: ")
        );
        // Escapes that spell the same key are the same key.
        assert!(found(r#"{"cors": 1, "c\u006frs": 2}"#).starts_with("config key `cors`"));
        // Not JSON: nothing to say here; the loader reports the syntax.
        assert_eq!(first_duplicate("{\"a\": "), None);
        assert_eq!(first_duplicate("[server]\nlisten = 1"), None);
    }
}
