//! Scheduling hints a response carries: `Retry-After` (delay-seconds and the
//! three HTTP-date forms), `X-Poll-Interval`, `RateLimit` (the current and
//! the draft-07 forms) / `X-RateLimit-*`, and freshness (`Cache-Control`,
//! `Expires`, `Age`).
//! Pure functions of header values and clocks; the caller caps them.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName};

// Names looked up on every answer, as constants: a `&str` name is parsed
// and checked again at each lookup, and a 304 goes through a dozen.
const AGE: HeaderName = http::header::AGE;
const EXPIRES: HeaderName = http::header::EXPIRES;
const X_POLL_INTERVAL: HeaderName = HeaderName::from_static("x-poll-interval");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET_AFTER: HeaderName = HeaderName::from_static("x-ratelimit-reset-after");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
const X_RATE_LIMIT_REMAINING: HeaderName = HeaderName::from_static("x-rate-limit-remaining");
const X_RATE_LIMIT_RESET: HeaderName = HeaderName::from_static("x-rate-limit-reset");

/// What the server told us about when to come back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hints {
    /// The largest server-requested delay (Retry-After, X-Poll-Interval,
    /// rate-limit reset), capped by the watch's `max_retry_after`.
    pub not_before: Option<Duration>,
    /// Which header `not_before` came from.
    pub reason: Option<&'static str>,
    /// `Retry-After`, uncapped.
    pub retry_after: Option<Duration>,
    /// `X-Poll-Interval`, uncapped.
    pub poll_interval: Option<Duration>,
    /// Time until an exhausted rate-limit window resets, uncapped.
    pub rate_limit_reset: Option<Duration>,
    /// How long the response stays fresh (max-age - Age, or Expires - Date).
    pub fresh_for: Option<Duration>,
}

/// Parses one `Retry-After` value: delay-seconds (saturating on overflow)
/// or an HTTP-date (IMF-fixdate, RFC 850 or asctime). A date is measured
/// against the response's `Date` when there is one, which cancels the
/// skew between the server's clock and ours; a past date means no wait.
/// Anything else (negative, fractional, garbage) is ignored.
pub fn parse_retry_after(
    value: &str,
    response_date: Option<SystemTime>,
    now: SystemTime,
) -> Option<Duration> {
    let value = value.trim();
    if let Some(secs) = delta_seconds(value) {
        return Some(Duration::from_secs(secs));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    let reference = response_date.unwrap_or(now);
    Some(date.duration_since(reference).unwrap_or(Duration::ZERO))
}

/// `1*DIGIT` (RFC 9110 delta-seconds); more digits than u64 holds
/// saturate (RFC 9111 §1.2.2), so a huge wait is still a wait.
fn delta_seconds(value: &str) -> Option<u64> {
    (!value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()))
        .then(|| value.parse::<u64>().unwrap_or(u64::MAX))
}

/// The response's `Date`, if valid.
pub fn response_date(headers: &HeaderMap) -> Option<SystemTime> {
    headers
        .get(http::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v.trim()).ok())
}

fn header_str<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// `Retry-After`: with several headers (a singleton field sent twice),
/// the longest valid wait wins, so that none of them is cut short.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let date = response_date(headers);
    headers
        .get_all(http::header::RETRY_AFTER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| parse_retry_after(v, date, now))
        .max()
}

/// `X-Poll-Interval: SECONDS` (GitHub's hint for how often to poll); with
/// several headers the longest.
pub fn poll_interval(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all(X_POLL_INTERVAL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| delta_seconds(v.trim()))
        .max()
        .map(Duration::from_secs)
}

/// `1*DIGIT ["." 1*DIGIT]` seconds, as rate-limit resets are sometimes
/// sent (Discord: `X-RateLimit-Reset-After: 64.57`), rounded up to the
/// millisecond so that a wait is never cut short; too many digits saturate.
fn decimal_seconds(value: &str) -> Option<Duration> {
    let (whole, fraction) = match value.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (value, None),
    };
    let secs = delta_seconds(whole)?;
    let Some(fraction) = fraction else {
        return Some(Duration::from_secs(secs));
    };
    if fraction.is_empty() || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // The first three digits are milliseconds; any non-zero digit after
    // them rounds up.
    let digits = fraction.as_bytes();
    let millis = (0..3).fold(0u64, |ms, i| {
        ms * 10 + digits.get(i).map_or(0, |d| u64::from(d - b'0'))
    });
    let round_up = digits.iter().skip(3).any(|&d| d != b'0');
    Some(
        Duration::from_secs(secs)
            .saturating_add(Duration::from_millis(millis + u64::from(round_up))),
    )
}

/// Values of a reset beyond ~30 years are epoch timestamps, not delays.
const EPOCH_THRESHOLD: Duration = Duration::from_secs(1_000_000_000);
/// ... and beyond ~30,000 years, epoch milliseconds.
const EPOCH_MS_THRESHOLD: Duration = Duration::from_secs(1_000_000_000_000);

/// A reset value: delta seconds, or an epoch timestamp (when large: in
/// seconds, or in milliseconds when larger still) measured against `date`;
/// one beyond what `SystemTime` holds is as far off as a wait gets, one
/// already past is no wait. Applied to every form, also those whose spec
/// says delay-seconds: servers do send epochs there, and read as a delay an
/// epoch would park the watch until the `max_retry_after` cap.
fn reset_delay(value: Duration, date: SystemTime) -> Duration {
    if value < EPOCH_THRESHOLD {
        return value;
    }
    let since_epoch = if value < EPOCH_MS_THRESHOLD {
        value
    } else {
        // Whole milliseconds: the value was parsed as seconds.
        Duration::from_millis(value.as_secs())
    };
    SystemTime::UNIX_EPOCH
        .checked_add(since_epoch)
        .map_or(Duration::MAX, |reset| {
            reset.duration_since(date).unwrap_or(Duration::ZERO)
        })
}

/// Whether a `remaining` count is zero: `0`, or a decimal zero such as
/// Reddit's `0.0`.
fn is_exhausted(remaining: &str) -> bool {
    decimal_seconds(remaining).is_some_and(|r| r.is_zero())
}

/// `text` split at `delimiter` where it is not inside a quoted string
/// (RFC 9651 §3.3.3, with `\` escapes): a policy's name or a comment
/// parameter may hold `,`, `;` or `=`.
fn split_unquoted(text: &str, delimiter: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == delimiter && !quoted => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// The time until an exhausted rate-limit window resets, the longest of
/// every form the response carries: the IETF `RateLimit` field in its
/// current and its draft-07 forms (`"default";r=0;t=10`,
/// `limit=100, remaining=0, reset=10`), the draft's `RateLimit-Remaining` /
/// `RateLimit-Reset`, `X-RateLimit-Remaining` with `X-RateLimit-Reset-After`
/// (relative, preferred) or `X-RateLimit-Reset`, and X's
/// `X-Rate-Limit-Remaining` / `X-Rate-Limit-Reset`. Resets may be
/// fractional, delays or epoch timestamps ([`reset_delay`]). Only an
/// exhausted window (remaining 0) asks us to wait. The IETF fields of a
/// response served from a cache (`Age` above 0) describe the window as it
/// was then, and are ignored as their drafts ask.
pub fn rate_limit_reset(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    // Most answers carry none of these: their `Date` is then not parsed.
    let windows = [
        &RATELIMIT,
        &RATELIMIT_REMAINING,
        &X_RATELIMIT_REMAINING,
        &X_RATE_LIMIT_REMAINING,
    ];
    if !windows.into_iter().any(|name| headers.contains_key(name)) {
        return None;
    }
    let date = response_date(headers).unwrap_or(now);
    let from_cache = header_str(headers, &AGE)
        .and_then(delta_seconds)
        .is_some_and(|age| age > 0);
    let mut longest: Option<Duration> = None;
    if !from_cache {
        longest = longest.max(structured_reset(headers, date));
        longest = longest.max(pair_reset(
            headers,
            &RATELIMIT_REMAINING,
            &[(&RATELIMIT_RESET, false)],
            date,
        ));
    }
    longest = longest.max(pair_reset(
        headers,
        &X_RATELIMIT_REMAINING,
        &[
            (&X_RATELIMIT_RESET_AFTER, true),
            (&X_RATELIMIT_RESET, false),
        ],
        date,
    ));
    longest.max(pair_reset(
        headers,
        &X_RATE_LIMIT_REMAINING,
        &[(&X_RATE_LIMIT_RESET, false)],
        date,
    ))
}

/// The `RateLimit` field: a list of `"policy";r=REMAINING;t=RESET` items
/// (the current draft), or draft-07's `limit=N, remaining=N, reset=N`
/// dictionary. The field lines are one list or one dictionary, so a
/// dictionary's members may span lines (and a later member replaces an
/// earlier one, RFC 9651 §4.2); each line is also read on its own, so that
/// a later line (another hop's window) cannot hide an exhausted one.
fn structured_reset(headers: &HeaderMap, date: SystemTime) -> Option<Duration> {
    let mut longest: Option<Duration> = None;
    let (mut joined_remaining, mut joined_reset) = (None, None);
    for field in headers.get_all(RATELIMIT).iter() {
        let Ok(field) = field.to_str() else { continue };
        let (mut line_remaining, mut line_reset) = (None, None);
        for item in split_unquoted(field, ',') {
            let item = item.trim();
            let mut parts = split_unquoted(item, ';').into_iter();
            let head = parts.next().unwrap_or_default();
            // A dictionary member is `key=value` (parameters ignored); a
            // list item starts with its policy's name, a token or a string.
            if let Some((key, value)) = head.split_once('=')
                && !head.starts_with('"')
            {
                let value = value.trim();
                match key.trim() {
                    "remaining" => line_remaining = Some(is_exhausted(value)),
                    "reset" => line_reset = decimal_seconds(value),
                    _ => {}
                }
                continue;
            }
            let (mut exhausted, mut reset) = (false, None);
            for param in parts {
                match param.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
                    Some(("r", v)) => exhausted = is_exhausted(v),
                    Some(("t", v)) => reset = decimal_seconds(v),
                    _ => {}
                }
            }
            if exhausted {
                longest = longest.max(reset.map(|t| reset_delay(t, date)));
            }
        }
        if line_remaining == Some(true) {
            longest = longest.max(line_reset.map(|t| reset_delay(t, date)));
        }
        joined_remaining = line_remaining.or(joined_remaining);
        joined_reset = line_reset.or(joined_reset);
    }
    if joined_remaining == Some(true) {
        longest = longest.max(joined_reset.map(|t| reset_delay(t, date)));
    }
    longest
}

/// A `*-Remaining` header with its reset headers (`(name, relative)`, the
/// first present and valid wins): the wait when the window is exhausted.
fn pair_reset(
    headers: &HeaderMap,
    remaining: &HeaderName,
    resets: &[(&HeaderName, bool)],
    date: SystemTime,
) -> Option<Duration> {
    if !header_str(headers, remaining).is_some_and(is_exhausted) {
        return None;
    }
    resets.iter().find_map(|&(name, relative)| {
        let value = header_str(headers, name).and_then(decimal_seconds)?;
        Some(if relative {
            value
        } else {
            reset_delay(value, date)
        })
    })
}

/// How long the response stays fresh (RFC 9111 §4.2): its lifetime,
/// `Cache-Control: max-age` (else `s-maxage`, else `Expires - Date`, with
/// our clock standing in for a missing `Date`), minus its `Age`. A
/// directive given twice counts once, by its first occurrence (§4.2.1).
/// `no-cache` / `no-store` mean no freshness.
pub fn fresh_for(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let mut max_age = None;
    let mut s_maxage = None;
    for value in headers.get_all(http::header::CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in value.split(',') {
            let directive = directive.trim().to_ascii_lowercase();
            if directive == "no-cache" || directive == "no-store" {
                return None;
            }
            if let Some(v) = directive.strip_prefix("max-age=") {
                max_age = max_age.or_else(|| delta_seconds(v.trim_matches('"')));
            } else if let Some(v) = directive.strip_prefix("s-maxage=") {
                s_maxage = s_maxage.or_else(|| delta_seconds(v.trim_matches('"')));
            }
        }
    }
    let age = Duration::from_secs(
        header_str(headers, &AGE)
            .and_then(delta_seconds)
            .unwrap_or(0),
    );
    let lifetime = match max_age.or(s_maxage) {
        Some(secs) => Duration::from_secs(secs),
        None => {
            let expires =
                header_str(headers, &EXPIRES).and_then(|v| httpdate::parse_http_date(v).ok())?;
            let date = response_date(headers).unwrap_or(now);
            expires.duration_since(date).unwrap_or(Duration::ZERO)
        }
    };
    Some(lifetime.saturating_sub(age))
}

/// Every hint of a response; `not_before` is the largest explicit request,
/// capped by `cap`. The largest, not `Retry-After` first as the rate-limit
/// drafts order them: a wait the server asked for is never cut short, and
/// the drafts ask servers not to send a Retry-After earlier than the reset.
/// `Retry-After` is read on every 3xx, 4xx and 5xx: besides 429, 503 and 3xx
/// (RFC 9110 §10.2.3), servers send it on other refusals, such as GitHub's
/// 403 for a secondary rate limit.
pub fn hints(status: u16, headers: &HeaderMap, now: SystemTime, cap: Duration) -> Hints {
    let retry_after = matches!(status, 300..=599)
        .then(|| retry_after(headers, now))
        .flatten();
    let poll_interval = poll_interval(headers);
    let rate_limit_reset = rate_limit_reset(headers, now);
    let fresh_for = fresh_for(headers, now);
    let (not_before, reason) = [
        (retry_after, "Retry-After"),
        (poll_interval, "X-Poll-Interval"),
        (rate_limit_reset, "RateLimit"),
    ]
    .into_iter()
    .filter_map(|(d, why)| d.map(|d| (d, why)))
    .max_by_key(|(d, _)| *d)
    .map_or((None, None), |(d, why)| (Some(d.min(cap)), Some(why)));
    Hints {
        not_before,
        reason,
        retry_after,
        poll_interval,
        rate_limit_reset,
        fresh_for,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    // Sun, 06 Nov 1994 08:49:37 GMT
    const T: u64 = 784_111_777;
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);

    /// Headers in the order given; a name may come several times.
    fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            let name = http::HeaderName::from_bytes(name.as_bytes()).unwrap();
            headers.append(name, value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn retry_after_every_form() {
        let now = at(T);
        let s = |v: &str| parse_retry_after(v, None, now);
        assert_eq!(s("120"), Some(Duration::from_secs(120)));
        assert_eq!(s("0"), Some(Duration::ZERO));
        assert_eq!(s("-5"), None);
        assert_eq!(s("1.5"), None);
        assert_eq!(s("soon"), None);
        assert_eq!(s(""), None);
        assert_eq!(
            s("99999999999999999999"),
            Some(Duration::from_secs(u64::MAX)),
            "20 digits saturate"
        );
        // The three date forms, 60 s after `now`.
        assert_eq!(
            s("Sun, 06 Nov 1994 08:50:37 GMT"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            s("Sunday, 06-Nov-94 08:50:37 GMT"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(s("Sun Nov  6 08:50:37 1994"), Some(Duration::from_secs(60)));
        // A past date: no extra wait.
        assert_eq!(s("Sun, 06 Nov 1994 08:00:00 GMT"), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_date_is_measured_against_the_response_date() {
        // Our clock is an hour ahead of the server's: the server's Date cancels it.
        let server_now = at(T);
        let our_now = at(T + 3600);
        let d = parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", Some(server_now), our_now);
        assert_eq!(d, Some(Duration::from_secs(60)));
    }

    #[test]
    fn several_retry_after_headers_take_the_longest_valid_and_cap_applies() {
        let mut headers = HeaderMap::new();
        headers.append("retry-after", "garbage".parse().unwrap());
        headers.append("retry-after", "90".parse().unwrap());
        headers.append("retry-after", "30".parse().unwrap());
        headers.append("retry-after", "-600".parse().unwrap());
        assert_eq!(retry_after(&headers, at(T)), Some(Duration::from_secs(90)));
        // A date among them counts too.
        headers.append(
            "retry-after",
            httpdate::fmt_http_date(at(T + 120)).parse().unwrap(),
        );
        assert_eq!(retry_after(&headers, at(T)), Some(Duration::from_secs(120)));
        let h = hints(429, &headers, at(T), Duration::from_secs(10));
        assert_eq!(h.not_before, Some(Duration::from_secs(10)));
        assert_eq!(h.reason, Some("Retry-After"));
        // Not on a 200, but on any refusal: GitHub's secondary rate limit
        // is a 403 with Retry-After.
        assert_eq!(hints(200, &headers, at(T), Duration::MAX).retry_after, None);
        for status in [403, 500, 502, 504] {
            let h = hints(status, &headers, at(T), Duration::MAX);
            assert_eq!(h.not_before, Some(Duration::from_secs(120)), "{status}");
        }
    }

    #[test]
    fn rate_limit_forms() {
        let mut headers = HeaderMap::new();
        headers.insert("ratelimit", "\"default\";r=0;t=10".parse().unwrap());
        assert_eq!(
            rate_limit_reset(&headers, at(T)),
            Some(Duration::from_secs(10))
        );
        headers.insert("ratelimit", "\"default\";r=5;t=10".parse().unwrap());
        assert_eq!(rate_limit_reset(&headers, at(T)), None, "not exhausted");
        // A second field line is part of the same list: its exhausted
        // policy counts.
        headers.append("ratelimit", "\"hourly\";r=0;t=600".parse().unwrap());
        assert_eq!(
            rate_limit_reset(&headers, at(T)),
            Some(Duration::from_secs(600))
        );
        headers.insert(
            "ratelimit",
            "\"a\";r=0;t=30, \"b\";r=0;t=99999999999999999999, \"c\";r=-1;t=5"
                .parse()
                .unwrap(),
        );
        assert!(
            rate_limit_reset(&headers, at(T)).is_some_and(|d| d > CENTURY),
            "the longest exhausted policy; too many digits saturate"
        );

        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-remaining", "0".parse().unwrap());
        let now = 1_700_000_000; // 2023: epoch seconds, not a delta
        headers.insert("x-ratelimit-reset", (now + 42).to_string().parse().unwrap());
        headers.insert("date", httpdate::fmt_http_date(at(now)).parse().unwrap());
        assert_eq!(
            rate_limit_reset(&headers, at(0)),
            Some(Duration::from_secs(42)),
            "epoch seconds against Date"
        );
        // An epoch beyond any date: a wait as long as they get (then
        // capped), not an overflow panic.
        headers.insert("x-ratelimit-reset", u64::MAX.to_string().parse().unwrap());
        assert!(rate_limit_reset(&headers, at(0)).is_some_and(|d| d > CENTURY));
        let h = hints(200, &headers, at(0), Duration::from_secs(3600));
        assert_eq!(h.not_before, Some(Duration::from_secs(3600)));
        // A reset already past: no wait.
        headers.insert("x-ratelimit-reset", (now - 5).to_string().parse().unwrap());
        assert_eq!(rate_limit_reset(&headers, at(0)), Some(Duration::ZERO));
        headers.insert("x-ratelimit-reset", "7".parse().unwrap());
        assert_eq!(
            rate_limit_reset(&headers, at(T)),
            Some(Duration::from_secs(7)),
            "delta seconds"
        );
    }

    #[test]
    fn rate_limit_draft_07_dictionary_and_fractional_resets() {
        let reset = |pairs: &[(&str, &str)], now| rate_limit_reset(&header_map(pairs), now);
        let ms = |ms| Some(Duration::from_millis(ms));
        let secs = |s| Some(Duration::from_secs(s));
        // Draft-07: one dictionary, possibly over several field lines.
        let dict = |v: &str| reset(&[("ratelimit", v)], at(T));
        assert_eq!(dict("limit=100, remaining=0, reset=30"), secs(30));
        assert_eq!(dict("limit=100, remaining=3, reset=30"), None);
        assert_eq!(dict("limit=100, reset=30"), None, "no remaining");
        assert_eq!(
            reset(
                &[
                    ("ratelimit", "limit=100, remaining=0"),
                    ("ratelimit", "reset=45")
                ],
                at(T)
            ),
            secs(45),
            "members split over field lines"
        );
        assert_eq!(dict("\"a=b\";r=0;t=12"), secs(12), "a policy name with '='");
        assert_eq!(dict("\"default\";r=0;t=2.5"), ms(2_500));

        // Discord: fractional epoch seconds, and a relative Reset-After
        // that wins over the epoch.
        let now = 1_470_173_000;
        let date = httpdate::fmt_http_date(at(now));
        let x = |extra: &[(&str, &str)]| {
            let mut pairs = vec![("x-ratelimit-remaining", "0"), ("date", date.as_str())];
            pairs.extend_from_slice(extra);
            reset(&pairs, at(0))
        };
        assert_eq!(x(&[("x-ratelimit-reset", "1470173023.5")]), ms(23_500));
        assert_eq!(
            x(&[
                ("x-ratelimit-reset", "1470173023.5"),
                ("x-ratelimit-reset-after", "64.57")
            ]),
            ms(64_570)
        );
        assert_eq!(
            x(&[
                ("x-ratelimit-reset", "1470173023"),
                ("x-ratelimit-reset-after", "garbage")
            ]),
            secs(23),
            "an invalid Reset-After falls back to Reset"
        );
        assert_eq!(
            x(&[("x-ratelimit-reset-after", "1470173023")]),
            secs(1_470_173_023),
            "Reset-After is always relative"
        );
        // Rounded up to the millisecond, never cut short.
        assert_eq!(x(&[("x-ratelimit-reset-after", "0.0001")]), ms(1));
        assert_eq!(x(&[("x-ratelimit-reset-after", "2.999000")]), ms(2_999));
        assert_eq!(
            x(&[("x-ratelimit-reset-after", "99999999999999999999.5")]),
            Some(Duration::from_secs(u64::MAX) + Duration::from_millis(500)),
            "too many digits saturate (Reset-After is never an epoch)"
        );
        for bad in ["1.", ".5", "1.5.5", "-1.5", "1e3", "1,5", "+1.5", ""] {
            assert_eq!(x(&[("x-ratelimit-reset-after", bad)]), None, "{bad:?}");
        }
        // Not exhausted: no wait, whatever the reset says.
        assert_eq!(
            reset(
                &[
                    ("x-ratelimit-remaining", "4"),
                    ("x-ratelimit-reset-after", "64.57")
                ],
                at(0)
            ),
            None
        );
    }

    /// The cases of a review of the draft-07 and fractional forms.
    #[test]
    fn rate_limit_edges() {
        let reset =
            |pairs: &[(&str, &str)]| rate_limit_reset(&header_map(pairs), at(1_700_000_000));
        let secs = |s| Some(Duration::from_secs(s));
        // An epoch where the spec says delay-seconds: measured, not a
        // 54-year wait; epoch milliseconds too.
        assert_eq!(
            reset(&[("ratelimit", "limit=10, remaining=0, reset=1700000030")]),
            secs(30)
        );
        assert_eq!(reset(&[("ratelimit", "\"d\";r=0;t=1700000045")]), secs(45));
        assert_eq!(
            reset(&[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "1700000060000")
            ]),
            secs(60)
        );
        // A later line (another hop's window) does not hide an exhausted
        // one, in either order.
        let exhausted = ("ratelimit", "limit=10, remaining=0, reset=50");
        let plenty = ("ratelimit", "limit=1000, remaining=500, reset=3000");
        assert_eq!(reset(&[exhausted, plenty]), secs(50));
        assert_eq!(reset(&[plenty, exhausted]), secs(50));
        // Parameters on members are ignored; a repeated key takes the
        // last value.
        assert_eq!(
            reset(&[("ratelimit", "remaining=0;x=1, reset=20;y=\"z\"")]),
            secs(20)
        );
        assert_eq!(
            reset(&[("ratelimit", "remaining=0, remaining=4, reset=20")]),
            None
        );
        // Reddit's decimal counts.
        assert_eq!(
            reset(&[
                ("x-ratelimit-remaining", "0.0"),
                ("x-ratelimit-reset", "300")
            ]),
            secs(300)
        );
        assert_eq!(
            reset(&[
                ("x-ratelimit-remaining", "0.5"),
                ("x-ratelimit-reset", "300")
            ]),
            None
        );
        // X (Twitter).
        assert_eq!(
            reset(&[
                ("x-rate-limit-remaining", "0"),
                ("x-rate-limit-reset", "1700000090")
            ]),
            secs(90)
        );
        // Every form counts: the longest wait wins, whatever the order.
        assert_eq!(
            reset(&[
                ("ratelimit", "\"d\";r=0;t=1"),
                ("ratelimit-remaining", "0"),
                ("ratelimit-reset", "5"),
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset-after", "60")
            ]),
            secs(60)
        );
        // Quoted strings may hold the delimiters.
        assert_eq!(
            reset(&[(
                "ratelimit",
                "\"d\";r=5;t=1;c=\"a, remaining=0, reset=99, b\""
            )]),
            None,
            "a comment parameter is not a member"
        );
        assert_eq!(reset(&[("ratelimit", "\"x,y=z\";r=0;t=30")]), secs(30));
        assert_eq!(
            reset(&[("ratelimit", "\"a\\\"b,c\";r=0;t=40")]),
            secs(40),
            "an escaped quote does not end the string"
        );
        // From a cache (Age > 0): the IETF fields describe a window of the
        // past and are ignored; the X- headers are not theirs to ignore.
        assert_eq!(
            reset(&[
                ("age", "300"),
                ("ratelimit", "limit=10, remaining=0, reset=30")
            ]),
            None
        );
        assert_eq!(
            reset(&[
                ("age", "0"),
                ("ratelimit", "limit=10, remaining=0, reset=30")
            ]),
            secs(30)
        );
        // Rounding carries into the seconds; a fractional epoch already
        // past is no wait.
        assert_eq!(
            reset(&[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset-after", "2.9999")
            ]),
            secs(3)
        );
        assert_eq!(
            reset(&[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "1699999990.5")
            ]),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn freshness() {
        let mut headers = HeaderMap::new();
        headers.insert("cache-control", "public, max-age=300".parse().unwrap());
        headers.insert("age", "100".parse().unwrap());
        assert_eq!(fresh_for(&headers, at(T)), Some(Duration::from_secs(200)));
        headers.insert("cache-control", "no-cache, max-age=300".parse().unwrap());
        assert_eq!(fresh_for(&headers, at(T)), None);
        let mut headers = HeaderMap::new();
        headers.insert("date", httpdate::fmt_http_date(at(T)).parse().unwrap());
        headers.insert(
            "expires",
            httpdate::fmt_http_date(at(T + 600)).parse().unwrap(),
        );
        assert_eq!(fresh_for(&headers, at(T)), Some(Duration::from_secs(600)));
        headers.insert("x-poll-interval", "60".parse().unwrap());
        headers.append("x-poll-interval", "garbage".parse().unwrap());
        headers.append("x-poll-interval", "0".parse().unwrap());
        let h = hints(200, &headers, at(T), Duration::from_secs(3600));
        assert_eq!(h.not_before, Some(Duration::from_secs(60)));
        assert_eq!(h.reason, Some("X-Poll-Interval"));
    }

    #[test]
    fn freshness_edges() {
        let fresh = |pairs: &[(&str, &str)]| fresh_for(&header_map(pairs), at(T));
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(fresh(&[("cache-control", "max-age=\"300\"")]), secs(300));
        // The first max-age counts; s-maxage (for shared caches) only
        // without one.
        assert_eq!(
            fresh(&[
                ("cache-control", "max-age=60"),
                ("cache-control", "max-age=600")
            ]),
            secs(60)
        );
        assert_eq!(
            fresh(&[("cache-control", "s-maxage=600, max-age=60")]),
            secs(60)
        );
        assert_eq!(fresh(&[("cache-control", "s-maxage=600")]), secs(600));
        assert_eq!(
            fresh(&[("cache-control", "max-age=99999999999999999999")]),
            secs(u64::MAX),
            "too many digits saturate"
        );
        assert_eq!(
            fresh(&[("cache-control", "max-age=60"), ("age", "600")]),
            secs(0),
            "older than its lifetime: stale"
        );
        // Expires is a lifetime too: Age is subtracted from it, and without
        // a Date our clock stands in.
        let date = httpdate::fmt_http_date(at(T));
        let expires = httpdate::fmt_http_date(at(T + 600));
        assert_eq!(
            fresh(&[("date", &date), ("expires", &expires), ("age", "100")]),
            secs(500)
        );
        assert_eq!(fresh(&[("expires", &expires)]), secs(600));
        assert_eq!(fresh(&[("date", &date), ("expires", "0")]), None);
        // max-age wins over Expires.
        assert_eq!(
            fresh(&[
                ("date", &date),
                ("expires", &expires),
                ("cache-control", "max-age=5")
            ]),
            secs(5)
        );
    }

    #[test]
    fn x_poll_interval_edges() {
        let poll = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append("x-poll-interval", v.parse().unwrap());
            }
            poll_interval(&headers)
        };
        assert_eq!(poll(&["0"]), Some(Duration::ZERO), "0 asks for no wait");
        assert_eq!(poll(&["garbage"]), None);
        assert_eq!(poll(&["-60"]), None);
        assert_eq!(poll(&["+60"]), None);
        assert_eq!(poll(&["1.5"]), None);
        assert_eq!(poll(&[" 60 "]), Some(Duration::from_secs(60)));
        assert_eq!(
            poll(&["99999999999999999999"]),
            Some(Duration::from_secs(u64::MAX)),
            "a huge interval saturates (then the cap applies), not ignored"
        );
        assert_eq!(poll(&["60", "300"]), Some(Duration::from_secs(300)));
        let mut headers = HeaderMap::new();
        headers.insert("x-poll-interval", "99999999999999999999".parse().unwrap());
        let h = hints(200, &headers, at(T), Duration::from_secs(3600));
        assert_eq!(h.not_before, Some(Duration::from_secs(3600)));
    }
}
