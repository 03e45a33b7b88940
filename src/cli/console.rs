//! What the commands print for a person or a script. A reader that goes away
//! (`check-config | head -1`) ends the output, never the process with a panic, as `println!`
//! would on a closed pipe.

use std::io::Write;

/// Writes `text` to standard output; a closed or failing stdout is ignored.
pub(super) fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}

/// Writes `text` and a line break to standard output.
pub(super) fn line(text: &str) {
    out(&format!("{text}\n"));
}

/// Writes `text` and a line break to standard error; a closed stderr is ignored.
pub(super) fn error_line(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// `text` as one line that cannot steer a terminal: control characters (escape sequences, line
/// breaks, carriage returns) and the bidirectional-text overrides that reorder what a reader sees
/// are written as `\u{..}` escapes. For text that came from elsewhere: a remote server's answer
/// must never write a line of its own into a report.
pub(super) fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let steers = c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if steers {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// At most `max` characters of `text` from elsewhere, [`printable`], with a mark when cut.
pub(super) fn quoted_remote(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}… ({} bytes)", printable(&text[..cut]), text.len()),
        None => printable(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_server_sent_cannot_write_a_line_or_move_the_cursor() {
        let evil = "https://idp\u{1b}[2K\r\nok   issuer[9] fake: fine\u{7}\u{9b}31m\u{202e}";
        let shown = printable(evil);
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(!shown.contains('\u{202e}'), "{shown:?}");
        assert_eq!(
            shown,
            "https://idp\\u{1b}[2K\\u{d}\\u{a}ok   issuer[9] fake: fine\\u{7}\\u{9b}31m\\u{202e}"
        );
        assert_eq!(printable("plain ü text"), "plain ü text");
        assert_eq!(quoted_remote("abcdef", 3), "abc… (6 bytes)");
        assert_eq!(quoted_remote("abc", 3), "abc");
    }
}
