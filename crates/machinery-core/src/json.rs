//! JSON exactly as Go's `encoding/json` writes it.
//!
//! Differences from serde_json's defaults that matter for byte identity with Go:
//! `<`, `>`, `&`, U+2028 and U+2029 are escaped as `\u003c` ..., and floats use Go's
//! shortest form (`100`, `1e+21`, `1e-7`, `-0`) instead of Rust's (`100.0`, `1e21`).

use std::io;

use serde::Serialize;
use serde_json::value::RawValue;

/// A `serde_json` formatter that writes Go's `encoding/json` output.
#[derive(Debug, Clone, Copy, Default)]
pub struct GoFormatter;

impl serde_json::ser::Formatter for GoFormatter {
    fn write_f64<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        writer.write_all(format_f64(value).as_bytes())
    }

    fn write_f32<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f32) -> io::Result<()> {
        writer.write_all(format_f32(value).as_bytes())
    }

    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        // Byte scan: '<' '>' '&' and the UTF-8 lead byte 0xE2 of U+2028 / U+2029 are the only
        // places Go escapes more than serde_json does.
        let bytes = fragment.as_bytes();
        let mut start = 0;
        let mut i = 0;
        while i < bytes.len() {
            // Skip plain bytes quickly (most fragments have nothing to escape).
            match bytes[i..]
                .iter()
                .position(|b| matches!(b, b'<' | b'>' | b'&' | 0xE2))
            {
                Some(p) => i += p,
                None => break,
            }
            let esc: &[u8] = match bytes[i] {
                b'<' => b"\\u003c",
                b'>' => b"\\u003e",
                b'&' => b"\\u0026",
                0xE2 if bytes.get(i + 1) == Some(&0x80) && bytes.get(i + 2) == Some(&0xA8) => {
                    b"\\u2028"
                }
                0xE2 if bytes.get(i + 1) == Some(&0x80) && bytes.get(i + 2) == Some(&0xA9) => {
                    b"\\u2029"
                }
                _ => {
                    i += 1;
                    continue;
                }
            };
            writer.write_all(&bytes[start..i])?;
            writer.write_all(esc)?;
            i += if bytes[i] == 0xE2 { 3 } else { 1 };
            start = i;
        }
        writer.write_all(&bytes[start..])
    }
}

/// Serialize `value` to compact JSON bytes the way Go's `json.Marshal` would.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, GoFormatter);
    value.serialize(&mut ser)?;
    Ok(out)
}

/// Append `s` as a JSON string, exactly as [`to_vec`] writes it. Strings with nothing to
/// escape (task UUIDs, names, queue names, timestamps: nearly all of them) are copied in one
/// go; the rest take serde_json's path with [`GoFormatter`].
pub(crate) fn push_str(out: &mut Vec<u8>, s: &str) {
    let plain = s
        .bytes()
        .all(|b| b >= 0x20 && !matches!(b, b'"' | b'\\' | b'<' | b'>' | b'&' | 0xE2));
    if plain {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        push_value(out, s).expect("a string always encodes");
    }
}

/// Append any serializable value the way [`to_vec`] writes it.
pub(crate) fn push_value<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    value: &T,
) -> serde_json::Result<()> {
    let mut ser = serde_json::Serializer::with_formatter(out, GoFormatter);
    value.serialize(&mut ser)
}

/// Append a decimal integer.
pub(crate) fn push_int(out: &mut Vec<u8>, n: i64) {
    if (0..10).contains(&n) {
        out.push(b'0' + n as u8);
    } else {
        out.extend_from_slice(n.to_string().as_bytes());
    }
}

/// Append `true` / `false`.
pub(crate) fn push_bool(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

/// Serialize `value` to a compact JSON string the way Go's `json.Marshal` would.
pub fn to_string<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<String> {
    // GoFormatter only ever writes valid UTF-8.
    to_vec(value).map(|v| String::from_utf8(v).expect("json output is utf-8"))
}

/// A raw JSON value written in Go's form.
pub fn to_raw<T: Serialize + ?Sized>(value: &T) -> Box<RawValue> {
    let s = to_string(value).expect("serializing a plain value cannot fail");
    RawValue::from_string(s).expect("serializer output is valid json")
}

/// The JSON `null` as a raw value.
pub fn raw_null() -> Box<RawValue> {
    RawValue::from_string("null".to_owned()).expect("null is json")
}

/// Go's `strconv.FormatFloat(f, 'f' or 'e', -1, 64)` as used by `encoding/json`.
pub fn format_f64(f: f64) -> String {
    let abs = f.abs();
    let exponent = abs != 0.0 && !(1e-6..1e21).contains(&abs);
    go_float(f.is_finite(), exponent, format!("{f}"), || format!("{f:e}"))
}

/// Go's float32 encoding: the shortest form that round-trips at 32 bits.
pub fn format_f32(f: f32) -> String {
    // Go compares in float32 here: `float32(1e-6)` is just below 1e-6 and is written as
    // `0.000001`, not `1e-6`.
    let abs = f.abs();
    let exponent = abs != 0.0 && !(1e-6_f32..1e21_f32).contains(&abs);
    go_float(f.is_finite(), exponent, format!("{f}"), || format!("{f:e}"))
}

fn go_float(finite: bool, exponent: bool, plain: String, exp: impl FnOnce() -> String) -> String {
    if !finite {
        // Go refuses to encode these; JSON has no form for them. Write null like JavaScript.
        return "null".to_owned();
    }
    if exponent {
        // Rust: `1e21`, `1e-7`, `1.5e-7`; Go: `1e+21`, `1e-07` cleaned up to `1e-7`.
        let s = exp();
        let (mant, e) = s.split_once('e').expect("exponent form has an e");
        let (sign, digits) = match e.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', e),
        };
        return format!("{mant}e{sign}{digits}");
    }
    plain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_match_go() {
        assert_eq!(format_f64(100.0), "100");
        assert_eq!(format_f64(100.5), "100.5");
        assert_eq!(format_f64(1e21), "1e+21");
        assert_eq!(format_f64(1e-7), "1e-7");
        assert_eq!(format_f64(-0.0), "-0");
        assert_eq!(format_f64(0.1), "0.1");
        assert_eq!(format_f64(f64::MAX), "1.7976931348623157e+308");
        assert_eq!(format_f64(5e-324), "5e-324");
        assert_eq!(format_f64(123456789.0), "123456789");
        assert_eq!(format_f64(1e20), "100000000000000000000");
        assert_eq!(format_f64(0.000001), "0.000001");
        assert_eq!(format_f32(0.1), "0.1");
        assert_eq!(format_f32(f32::MAX), "3.4028235e+38");
        assert_eq!(format_f32(1.5), "1.5");
        // Go: `float32(abs) < 1e-6` is false for float32(1e-6), so it stays in 'f' form.
        assert_eq!(format_f32(1e-6), "0.000001");
        assert_eq!(format_f32(9.9e-7), "9.9e-7");
        assert_eq!(format_f32(1e21), "1e+21");
        assert_eq!(format_f32(-1e-7), "-1e-7");
    }

    #[test]
    fn strings_escape_like_go() {
        assert_eq!(
            to_string("<a>&\u{2028}\u{2029}\n\u{1}é").unwrap(),
            r#""\u003ca\u003e\u0026\u2028\u2029\n\u0001é""#
        );
    }
}
