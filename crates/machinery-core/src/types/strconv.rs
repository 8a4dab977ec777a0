//! Go's `strconv` number parsing, with its acceptance rules and error texts.

use super::ArgError;

/// `json.Number.Float64`: Rust's parser rounds correctly like Go's; only overflow needs Go's
/// range error (underflow is 0 in both).
pub(super) fn parse_go_float(text: &str) -> Result<f64, ArgError> {
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(f),
        Ok(_) => Err(NumError::Range.error("ParseFloat", text)),
        Err(_) => Err(NumError::Syntax.error("ParseFloat", text)),
    }
}

/// The failure kinds of Go's `strconv` number parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NumError {
    Syntax,
    Range,
}

impl NumError {
    /// Go's `*strconv.NumError` text.
    pub(super) fn error(self, func: &str, text: &str) -> ArgError {
        let what = match self {
            NumError::Syntax => "invalid syntax",
            NumError::Range => "value out of range",
        };
        ArgError::new(format!("strconv.{func}: parsing {text:?}: {what}"))
    }
}

/// `strconv.ParseUint(s, 10, 64)`: digits only; overflow is reported as soon as it happens,
/// before any later syntax error.
pub(super) fn parse_go_uint(text: &str) -> Result<u64, NumError> {
    if text.is_empty() {
        return Err(NumError::Syntax);
    }
    let mut n: u64 = 0;
    for b in text.bytes() {
        if !b.is_ascii_digit() {
            return Err(NumError::Syntax);
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or(NumError::Range)?;
    }
    Ok(n)
}

/// `strconv.ParseInt(s, 10, 64)` (what `json.Number.Int64` calls).
pub(super) fn parse_go_int(text: &str) -> Result<i64, ArgError> {
    let (neg, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let fail = |e: NumError| e.error("ParseInt", text);
    let un = match parse_go_uint(digits) {
        Ok(un) => un,
        Err(NumError::Syntax) => return Err(fail(NumError::Syntax)),
        Err(NumError::Range) => return Err(fail(NumError::Range)),
    };
    let n = if neg {
        0i64.checked_sub_unsigned(un)
    } else {
        i64::try_from(un).ok()
    };
    n.ok_or_else(|| fail(NumError::Range))
}
