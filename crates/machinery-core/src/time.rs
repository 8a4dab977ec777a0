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
    format_fast(t).unwrap_or_else(|| format_chrono(t))
}

/// The common case by hand (every state carries a creation time, so this runs several times
/// per task): years 0000-9999, no leap second, an offset of whole minutes. `None` otherwise.
fn format_fast(t: &Timestamp) -> Option<String> {
    use chrono::{Datelike, Timelike};
    let local = t.naive_local();
    let year = local.year();
    let nanos = local.nanosecond();
    let offset = t.offset().local_minus_utc();
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 || offset % 60 != 0 {
        return None;
    }
    let mut b = [0u8; 35];
    let two = |b: &mut [u8], at: usize, v: u32| {
        b[at] = b'0' + (v / 10) as u8;
        b[at + 1] = b'0' + (v % 10) as u8;
    };
    let year = year as u32;
    two(&mut b, 0, year / 100);
    two(&mut b, 2, year % 100);
    b[4] = b'-';
    two(&mut b, 5, local.month());
    b[7] = b'-';
    two(&mut b, 8, local.day());
    b[10] = b'T';
    two(&mut b, 11, local.hour());
    b[13] = b':';
    two(&mut b, 14, local.minute());
    b[16] = b':';
    two(&mut b, 17, local.second());
    let mut n = 19;
    if nanos > 0 {
        b[n] = b'.';
        let mut digits = [0u8; 9];
        let mut v = nanos;
        for d in digits.iter_mut().rev() {
            *d = b'0' + (v % 10) as u8;
            v /= 10;
        }
        let keep = 9 - digits.iter().rev().take_while(|&&d| d == b'0').count();
        b[n + 1..n + 1 + keep].copy_from_slice(&digits[..keep]);
        n += 1 + keep;
    }
    if offset == 0 {
        b[n] = b'Z';
        n += 1;
    } else {
        b[n] = if offset < 0 { b'-' } else { b'+' };
        let minutes = offset.unsigned_abs() / 60;
        two(&mut b, n + 1, minutes / 60);
        b[n + 3] = b':';
        two(&mut b, n + 4, minutes % 60);
        n += 6;
    }
    Some(String::from_utf8_lossy(&b[..n]).into_owned())
}

/// Any timestamp, through chrono.
fn format_chrono(t: &Timestamp) -> String {
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
    fn fast_format_matches_chrono() {
        let mut seen = 0;
        for s in [
            "2030-01-02T03:04:05.123456789Z",
            "2030-01-02T05:34:05.123456789+02:30",
            "2020-01-01T00:00:00Z",
            "2026-11-28T16:52:14.01001123Z",
            "0001-01-01T00:00:00Z",
            "0000-01-01T00:00:00.1Z",
            "9999-12-31T23:59:59.999999999Z",
            "2026-11-28T16:52:14.5-07:00",
            "2026-11-28T16:52:14.000000001-00:01",
            "2026-11-28T16:52:14.100000000+14:00",
            "1999-12-31T23:59:60.5Z",
        ] {
            let t = parse(s).unwrap();
            if let Some(fast) = format_fast(&t) {
                assert_eq!(fast, format_chrono(&t), "{s}");
                seen += 1;
            }
        }
        let mut t = now();
        for i in 0..10_000_u64 {
            t = add(&t, std::time::Duration::from_nanos(i * 7_919_123_457 + 13));
            let shifted = t.with_timezone(
                &FixedOffset::east_opt(((i % 48) as i32 - 24) * 1800).expect("offset"),
            );
            assert_eq!(format_fast(&shifted).unwrap(), format_chrono(&shifted));
        }
        assert!(seen >= 10, "{seen}");
    }

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
