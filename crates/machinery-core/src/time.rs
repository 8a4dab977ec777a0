//! Go's `time.Time` JSON form: RFC 3339 with up to nine fractional digits, trailing zeros
//! trimmed, `Z` for a zero offset, the offset otherwise kept as written.

use chrono::{DateTime, FixedOffset, NaiveDate, SecondsFormat, Utc};
use serde::Serializer;

/// A point in time with the offset it was written with (Go keeps it, so do we).
pub type Timestamp = DateTime<FixedOffset>;

/// Now, in UTC, as Go's `time.Now().UTC()`.
pub fn now() -> Timestamp {
    Utc::now().fixed_offset()
}

/// Now plus `d`, in UTC, saturating at [`latest`]: a duration from the wire can be anything
/// and must never panic the worker.
pub fn after(d: std::time::Duration) -> Timestamp {
    add(&now(), d)
}

/// `t` plus `d`, saturating at [`latest`] (never panics, whatever `d` is).
pub fn add(t: &Timestamp, d: std::time::Duration) -> Timestamp {
    let latest = latest();
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .map_or(latest, |t| if t > latest { latest } else { t })
}

/// The latest time computed here: `9999-12-31T23:59:59.999999999Z`, the last instant Go's
/// `time.Time` can write as JSON (a later year makes Go's `MarshalJSON` fail).
pub fn latest() -> Timestamp {
    NaiveDate::from_ymd_opt(9999, 12, 31)
        .expect("valid date")
        .and_hms_nano_opt(23, 59, 59, 999_999_999)
        .expect("valid time")
        .and_utc()
        .fixed_offset()
}

/// Go's zero `time.Time`: `0001-01-01T00:00:00Z`.
pub fn zero() -> Timestamp {
    NaiveDate::from_ymd_opt(1, 1, 1)
        .expect("valid date")
        .and_hms_opt(0, 0, 0)
        .expect("valid time")
        .and_utc()
        .fixed_offset()
}

/// Whether `t` is Go's zero time.
pub fn is_zero(t: &Timestamp) -> bool {
    *t == zero()
}

/// Format as Go's `time.RFC3339Nano`.
pub fn format(t: &Timestamp) -> String {
    // chrono's AutoSi picks 0, 3, 6 or 9 digits; Go trims every trailing zero.
    let s = t.to_rfc3339_opts(SecondsFormat::Nanos, true);
    let Some(dot) = s.find('.') else {
        return s;
    };
    let end = s[dot..]
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or(s.len(), |i| dot + i);
    let frac = s[dot + 1..end].trim_end_matches('0');
    if frac.is_empty() {
        format!("{}{}", &s[..dot], &s[end..])
    } else {
        format!("{}.{}{}", &s[..dot], frac, &s[end..])
    }
}

/// Parse RFC 3339 as Go's `time.Time.UnmarshalJSON` does.
pub fn parse(s: &str) -> Result<Timestamp, chrono::ParseError> {
    DateTime::parse_from_rfc3339(s)
}

/// Unix time in nanoseconds (Redis ZSET score for delayed tasks).
pub fn unix_nanos(t: &Timestamp) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(i64::MAX)
}

pub(crate) fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(t))
}

pub(crate) fn serialize_opt<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&format(t)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_go() {
        for s in [
            "2030-01-02T03:04:05.123456789Z",
            "2030-01-02T05:34:05.123456789+02:30",
            "2020-01-01T00:00:00Z",
            "2026-11-28T16:52:14.01001123Z",
            "0001-01-01T00:00:00Z",
            "2026-11-28T16:52:14.5-07:00",
        ] {
            assert_eq!(format(&parse(s).unwrap()), s);
        }
        assert_eq!(format(&zero()), "0001-01-01T00:00:00Z");
    }

    #[test]
    fn adding_any_duration_saturates() {
        let max = std::time::Duration::MAX;
        assert_eq!(after(max), latest());
        assert_eq!(add(&latest(), std::time::Duration::from_nanos(1)), latest());
        // Over chrono's own range (year 262 143) and just under it.
        assert_eq!(
            after(std::time::Duration::from_secs(u64::MAX / 2)),
            latest()
        );
        assert_eq!(
            after(std::time::Duration::from_secs(9_000_000_000_000)),
            latest()
        );
        assert_eq!(format(&latest()), "9999-12-31T23:59:59.999999999Z");
        assert_eq!(unix_nanos(&latest()), i64::MAX);
        let t = parse("2030-01-02T03:04:05Z").unwrap();
        assert_eq!(
            format(&add(&t, std::time::Duration::from_secs(60))),
            "2030-01-02T03:05:05Z"
        );
    }
}
