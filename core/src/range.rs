//! HTTP Range requests (RFC 9110 §14) for artifact downloads: pure parsing.

/// What to send for a request's `Range` header against a body of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeOutcome {
    /// 200 with the whole body (no header, or one we may ignore).
    Full,
    /// 206 with bytes `start..=end`.
    Partial { start: u64, end: u64 },
    /// 416: no byte of the range exists, or several ranges were asked for.
    Unsatisfiable,
}

/// Decide a `Range` header. Only single byte ranges are served; a multi-range
/// request is refused with 416 rather than answered with multipart bodies, which no
/// boot client uses. A header that does not parse is ignored (RFC 9110 §14.2).
pub fn parse_range(header: Option<&str>, len: u64) -> RangeOutcome {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeOutcome::Full;
    };
    if spec.contains(',') {
        return RangeOutcome::Unsatisfiable;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeOutcome::Full;
    };
    let parse = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // bytes=-N: the last N bytes.
        return match parse(last) {
            Some(0) => RangeOutcome::Unsatisfiable,
            Some(_) if len == 0 => RangeOutcome::Unsatisfiable,
            Some(suffix) => RangeOutcome::Partial { start: len.saturating_sub(suffix), end: len - 1 },
            None => RangeOutcome::Full,
        };
    }
    let Some(start) = parse(first) else {
        return RangeOutcome::Full;
    };
    let end = if last.is_empty() {
        None
    } else {
        match parse(last) {
            Some(end) if end >= start => Some(end),
            // An end before the start, or garbage: an invalid spec, ignored.
            _ => return RangeOutcome::Full,
        }
    };
    if start >= len {
        return RangeOutcome::Unsatisfiable;
    }
    RangeOutcome::Partial { start, end: end.map_or(len - 1, |e| e.min(len - 1)) }
}

#[cfg(test)]
mod tests {
    use super::RangeOutcome::*;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn single_ranges() {
        assert_eq!(parse_range(None, 10), Full);
        assert_eq!(parse_range(Some("bytes=0-4"), 10), Partial { start: 0, end: 4 });
        assert_eq!(parse_range(Some("bytes=5-"), 10), Partial { start: 5, end: 9 });
        assert_eq!(parse_range(Some("bytes=-3"), 10), Partial { start: 7, end: 9 });
        assert_eq!(parse_range(Some("bytes=-30"), 10), Partial { start: 0, end: 9 });
        assert_eq!(parse_range(Some("bytes=8-100"), 10), Partial { start: 8, end: 9 });
    }

    #[test]
    fn unsatisfiable_and_ignored_ranges() {
        assert_eq!(parse_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=5-2"), 10), Full);
        assert_eq!(parse_range(Some("items=0-1"), 10), Full);
        assert_eq!(parse_range(Some("bytes=a-b"), 10), Full);
        assert_eq!(parse_range(Some("bytes=1-x"), 10), Full);
        assert_eq!(parse_range(Some("bytes=+1-2"), 10), Full);
    }

    proptest! {
        #[test]
        fn partial_ranges_are_always_inside_the_body(h in ".{0,40}", len in 0u64..10_000) {
            if let Partial { start, end } = parse_range(Some(&h), len) {
                prop_assert!(start <= end && end < len);
            }
        }
    }
}
