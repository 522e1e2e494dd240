//! HTTP Range and conditional requests (RFC 9110 §13, §14) for artifact downloads:
//! which status and which bytes, decided from the request's headers alone.

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

/// A request's validators and Range, as sent.
#[derive(Debug, Default, Clone, Copy)]
pub struct Conditions<'a> {
    pub if_none_match: Option<&'a str>,
    pub if_range: Option<&'a str>,
    pub range: Option<&'a str>,
}

/// What to answer a GET of an artifact of `len` bytes whose ETag is `etag`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    NotModified,
    Unsatisfiable,
    /// 200, or 206 with this `Content-Range` value.
    Body {
        start: u64,
        count: u64,
        content_range: Option<String>,
    },
}

/// The answer to a GET of an artifact: shared by the server's hyper handler and its
/// sendfile path, so both answer alike.
pub fn answer(etag: &str, request: &Conditions, len: u64) -> Answer {
    if request.if_none_match.is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*")) {
        return Answer::NotModified;
    }
    // If-Range with another validator means "send it all": the client's copy is stale.
    let if_range_ok = request.if_range.is_none_or(|v| v.trim() == etag);
    match parse_range(request.range.filter(|_| if_range_ok), len) {
        RangeOutcome::Full => Answer::Body { start: 0, count: len, content_range: None },
        RangeOutcome::Partial { start, end } => {
            Answer::Body { start, count: end - start + 1, content_range: Some(format!("bytes {start}-{end}/{len}")) }
        }
        RangeOutcome::Unsatisfiable => Answer::Unsatisfiable,
    }
}

#[cfg(test)]
mod tests {
    use super::RangeOutcome::*;
    use super::*;

    #[test]
    fn conditional_answers() {
        let etag = "\"abc\"";
        let ask = |if_none_match, if_range, range| answer(etag, &Conditions { if_none_match, if_range, range }, 100);
        let whole = Answer::Body { start: 0, count: 100, content_range: None };
        assert_eq!(ask(Some("\"x\", \"abc\""), None, None), Answer::NotModified);
        assert_eq!(ask(Some("*"), None, Some("bytes=0-1")), Answer::NotModified);
        assert_eq!(ask(Some("\"x\""), None, None), whole);
        let tail = Answer::Body { start: 90, count: 10, content_range: Some("bytes 90-99/100".into()) };
        assert_eq!(ask(None, None, Some("bytes=-10")), tail);
        assert_eq!(ask(None, Some("\"abc\""), Some("bytes=-10")), tail, "If-Range matches: the range stands");
        assert_eq!(ask(None, Some("\"old\""), Some("bytes=-10")), whole, "a stale copy gets it all");
        assert_eq!(ask(None, None, Some("bytes=200-")), Answer::Unsatisfiable);
    }
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
