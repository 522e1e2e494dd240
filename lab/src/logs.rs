//! Reading the logs the lab's processes write: lossy text, ANSI escapes stripped,
//! tails, and the `key=value` event lines of the tests' client scripts. Pure reads:
//! a file that is not there (yet) reads as empty.

use std::collections::BTreeMap;
use std::path::Path;

/// A file's text (lossily decoded); empty if it cannot be read (yet).
pub fn read_lossy(path: &Path) -> String {
    std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// Strip ANSI escape sequences and carriage returns (tracing's colours, iPXE's and
/// SeaBIOS's console).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else if c != '\r' {
            out.push(c);
        }
    }
    out
}

/// A log file's text, without escape sequences.
pub fn log_text(path: &Path) -> String {
    strip_ansi(&read_lossy(path))
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The last `lines` lines of each log, under its name: what a failed wait shows.
pub fn logs_context<P: AsRef<Path>>(lines: usize, logs: &[(&str, P)]) -> String {
    let part = |(name, path): &(&str, P)| format!("{name}:\n{}", tail(&log_text(path.as_ref()), lines));
    logs.iter().map(part).collect::<Vec<_>>().join("\n")
}

/// `key=value` words per line, as the client scripts of the tests write them.
pub fn events(path: &Path) -> Vec<BTreeMap<String, String>> {
    read_lossy(path)
        .lines()
        .map(|line| {
            line.split_whitespace()
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_colours_and_carriage_returns() {
        assert_eq!(strip_ansi("\u{1b}[32mINFO\u{1b}[0m ok\r\n"), "INFO ok\n");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
