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
