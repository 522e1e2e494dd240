//! How the dashboard writes times and sizes: short, and the same on every page.

/// A duration of `ms` milliseconds: `850 ms`, `12.4 s`, `3 min 5 s`, `2 h 10 min`.
pub fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => with_rest(ms / 60_000, "min", ms % 60_000 / 1000, "s"),
        3_600_000..=172_799_999 => with_rest(ms / 3_600_000, "h", ms % 3_600_000 / 60_000, "min"),
        _ => format!("{} d", ms / 86_400_000),
    }
}

/// `3 min 5 s`, or `5 min` when the smaller unit is zero.
fn with_rest(big: i64, big_unit: &str, small: i64, small_unit: &str) -> String {
    if small == 0 {
        format!("{big} {big_unit}")
    } else {
        format!("{big} {big_unit} {small} {small_unit}")
    }
}

/// How long ago `at_ms` was, seen at `now_ms`: `5 s ago`, `3 min ago`.
pub fn ago(at_ms: i64, now_ms: i64) -> String {
    let d = now_ms - at_ms;
    if d < 1_000 {
        return "just now".into();
    }
    let text = duration(d);
    // Ages read better in whole units.
    let whole = match d {
        1_000..=59_999 => format!("{} s", d / 1000),
        60_000..=3_599_999 => format!("{} min", d / 60_000),
        _ => text,
    };
    format!("{whole} ago")
}

/// A wall-clock time in UTC, to the second: `2026-12-05 14:03:08`.
pub fn time(at_ms: i64) -> String {
    let text = crate::cli::format_ms(at_ms);
    // RFC 3339 with milliseconds: keep date and time to the second.
    text.get(..19).map(|t| t.replace('T', " ")).unwrap_or(text)
}

/// `at_ms` for a `<time datetime>` attribute.
pub fn iso(at_ms: i64) -> String {
    crate::cli::format_ms(at_ms)
}

/// Bytes in binary units, as everything else of ramboot writes them.
pub use ramboot_proto::human_bytes as bytes;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_ages_read_short() {
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(12_400), "12.4 s");
        assert_eq!(duration(185_000), "3 min 5 s");
        assert_eq!(duration(7_800_000), "2 h 10 min");
        assert_eq!(duration(300_000), "5 min");
        assert_eq!(duration(-5), "0 ms");
        assert_eq!(ago(0, 500), "just now");
        assert_eq!(ago(0, 42_000), "42 s ago");
        assert_eq!(ago(0, 185_000), "3 min ago");
        assert_eq!(time(0), "1970-01-01 00:00:00");
    }
}
