//! Go's argument and result types and their conversion to and from plain Rust types.
//!
//! # Decoding (`GoValue::decode`)
//!
//! A Go worker converts each `{"Type": ..., "Value": ...}` pair with `tasks.ReflectValue` after
//! decoding the message with `UseNumber`. [`GoValue::decode`] accepts and rejects exactly what
//! Go does and yields the same value, with Go's error text (`x is not int64`,
//! `strconv.ParseInt: parsing "1.0": invalid syntax`, `int128 is not one of supported types`),
//! except where Go is buggy (`args-reflect.json` rows with a `note`):
//!
//! * out-of-range values for narrow types (`int8` `300`, `uint8` `256`, `float32` `1e39`) are
//!   rejected with `300 is out of range for int8` instead of being truncated;
//! * a value that is neither an array nor `null` for a slice type (Go iterates a string or
//!   number byte by byte, or panics on a bool or object) is rejected with
//!   `expected a JSON array for []int64, got "abc"`; the unsigned slice types (`[]uint`,
//!   `[]uint8` / `[]byte`, `[]uint16`, `[]uint32`, `[]uint64`) also accept a base64 string,
//!   like Go, and `[]byte` given a number is rejected (Go takes the number's digits as bytes).
//!
//! # Encoding (`GoValue::to_raw`)
//!
//! Go's `json.Marshal` form: shortest floats (`100`, `1e+21`), `<>&` escaped in strings,
//! `[]uint8` as a padded base64 string, slices as arrays (`[]` when empty; `""` for empty
//! bytes). Go cannot encode NaN or infinities; they are written as `null`.
//!
//! # Rust conversions
//!
//! [`FromGoValue`] is lossless and never truncates:
//!
//! * integer types accept every Go integer kind whose value fits (`i64` from `uint8`, or from
//!   `uint64` when at most `i64::MAX`); vectors of integers likewise, element by element;
//! * `f64` accepts `float64` and `float32` (widening is exact); `f32` accepts `float32` only;
//!   no integer kind converts to a float (Go's `reflect.Call` refuses it as well, and a silent
//!   conversion would hide a type mismatch between sender and task);
//! * `bool`, `String` and their vectors accept exactly their Go type; `Vec<u8>` is `[]uint8`;
//! * [`GoValue`] accepts anything.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::value::RawValue;

use crate::json;
use crate::state::TaskResult;

/// A value of one of the Go types Machinery supports (WIRE.md section 2).
#[derive(Debug, Clone, PartialEq)]
pub enum GoValue {
    /// `bool`.
    Bool(bool),
    /// `int` (64-bit on every platform Go Machinery runs on).
    Int(i64),
    /// `int8`.
    Int8(i8),
    /// `int16`.
    Int16(i16),
    /// `int32`.
    Int32(i32),
    /// `int64`.
    Int64(i64),
    /// `uint` (64-bit).
    Uint(u64),
    /// `uint8`.
    Uint8(u8),
    /// `uint16`.
    Uint16(u16),
    /// `uint32`.
    Uint32(u32),
    /// `uint64`.
    Uint64(u64),
    /// `float32`.
    Float32(f32),
    /// `float64`.
    Float64(f64),
    /// `string`.
    String(String),
    /// `[]bool`.
    BoolSlice(Vec<bool>),
    /// `[]int`.
    IntSlice(Vec<i64>),
    /// `[]int8`.
    Int8Slice(Vec<i8>),
    /// `[]int16`.
    Int16Slice(Vec<i16>),
    /// `[]int32`.
    Int32Slice(Vec<i32>),
    /// `[]int64`.
    Int64Slice(Vec<i64>),
    /// `[]uint`.
    UintSlice(Vec<u64>),
    /// `[]uint8` / `[]byte` (a base64 string on the wire).
    Bytes(Vec<u8>),
    /// `[]uint16`.
    Uint16Slice(Vec<u16>),
    /// `[]uint32`.
    Uint32Slice(Vec<u32>),
    /// `[]uint64`.
    Uint64Slice(Vec<u64>),
    /// `[]float32`.
    Float32Slice(Vec<f32>),
    /// `[]float64`.
    Float64Slice(Vec<f64>),
    /// `[]string`.
    StringSlice(Vec<String>),
}

/// Why an argument or result could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ArgError {
    /// Human-readable reason naming the type and the value.
    pub message: String,
}

impl ArgError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        ArgError {
            message: message.into(),
        }
    }
}

impl GoValue {
    /// Convert a JSON value by Go type name with Go's acceptance rules (see the module docs).
    ///
    /// # Errors
    /// When the type is unsupported or the value does not fit it; the message is Go's where Go
    /// rejects the value too.
    pub fn decode(type_name: &str, value: &RawValue) -> Result<GoValue, ArgError> {
        let Some((elem, slice)) = parse_type(type_name) else {
            return Err(ArgError::new(format!(
                "{type_name} is not one of supported types"
            )));
        };
        let raw = value.get().trim();
        // No supported type nests deeper than an array; the parser below recurses, so a
        // deeply nested value from the wire is refused before it is parsed.
        if crate::signature::json_nesting(raw.as_bytes()) > 32 {
            return Err(ArgError::new(format!(
                "{} is not {type_name}: nested too deep",
                shorten(raw)
            )));
        }
        let json = Json::parse(raw)?;
        if slice {
            decode_slice(type_name, elem, &json, raw)
        } else {
            decode_scalar(elem, &json)
        }
    }

    /// The Go type name written on the wire (`[]uint8` for bytes).
    pub fn type_name(&self) -> &'static str {
        match self {
            GoValue::Bool(_) => "bool",
            GoValue::Int(_) => "int",
            GoValue::Int8(_) => "int8",
            GoValue::Int16(_) => "int16",
            GoValue::Int32(_) => "int32",
            GoValue::Int64(_) => "int64",
            GoValue::Uint(_) => "uint",
            GoValue::Uint8(_) => "uint8",
            GoValue::Uint16(_) => "uint16",
            GoValue::Uint32(_) => "uint32",
            GoValue::Uint64(_) => "uint64",
            GoValue::Float32(_) => "float32",
            GoValue::Float64(_) => "float64",
            GoValue::String(_) => "string",
            GoValue::BoolSlice(_) => "[]bool",
            GoValue::IntSlice(_) => "[]int",
            GoValue::Int8Slice(_) => "[]int8",
            GoValue::Int16Slice(_) => "[]int16",
            GoValue::Int32Slice(_) => "[]int32",
            GoValue::Int64Slice(_) => "[]int64",
            GoValue::UintSlice(_) => "[]uint",
            GoValue::Bytes(_) => "[]uint8",
            GoValue::Uint16Slice(_) => "[]uint16",
            GoValue::Uint32Slice(_) => "[]uint32",
            GoValue::Uint64Slice(_) => "[]uint64",
            GoValue::Float32Slice(_) => "[]float32",
            GoValue::Float64Slice(_) => "[]float64",
            GoValue::StringSlice(_) => "[]string",
        }
    }

    /// The JSON value as Go's `json.Marshal` writes it.
    pub fn to_raw(&self) -> Box<RawValue> {
        RawValue::from_string(self.to_json_text()).expect("a go value encodes to valid json")
    }

    fn to_json_text(&self) -> String {
        match self {
            GoValue::Bool(v) => v.to_string(),
            GoValue::Int(v) | GoValue::Int64(v) => v.to_string(),
            GoValue::Int8(v) => v.to_string(),
            GoValue::Int16(v) => v.to_string(),
            GoValue::Int32(v) => v.to_string(),
            GoValue::Uint(v) | GoValue::Uint64(v) => v.to_string(),
            GoValue::Uint8(v) => v.to_string(),
            GoValue::Uint16(v) => v.to_string(),
            GoValue::Uint32(v) => v.to_string(),
            GoValue::Float32(v) => json::format_f32(*v),
            GoValue::Float64(v) => json::format_f64(*v),
            GoValue::String(v) => json::to_string(v).expect("a string encodes"),
            GoValue::BoolSlice(v) => json_array(v, ToString::to_string),
            GoValue::IntSlice(v) | GoValue::Int64Slice(v) => json_array(v, ToString::to_string),
            GoValue::Int8Slice(v) => json_array(v, ToString::to_string),
            GoValue::Int16Slice(v) => json_array(v, ToString::to_string),
            GoValue::Int32Slice(v) => json_array(v, ToString::to_string),
            GoValue::UintSlice(v) | GoValue::Uint64Slice(v) => json_array(v, ToString::to_string),
            GoValue::Bytes(v) => {
                format!(
                    "\"{}\"",
                    base64::engine::general_purpose::STANDARD.encode(v)
                )
            }
            GoValue::Uint16Slice(v) => json_array(v, ToString::to_string),
            GoValue::Uint32Slice(v) => json_array(v, ToString::to_string),
            GoValue::Float32Slice(v) => json_array(v, |f| json::format_f32(*f)),
            GoValue::Float64Slice(v) => json_array(v, |f| json::format_f64(*f)),
            GoValue::StringSlice(v) => json::to_string(v).expect("strings encode"),
        }
    }

    /// `int64 value 5`, for error messages.
    fn describe(&self) -> String {
        format!(
            "{} value {}",
            self.type_name(),
            shorten(&self.to_json_text())
        )
    }
}

fn json_array<T>(items: &[T], f: impl Fn(&T) -> String) -> String {
    let mut out = String::with_capacity(2 + items.len() * 4);
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&f(item));
    }
    out.push(']');
    out
}

/// Long values are cut in error messages.
fn shorten(text: &str) -> String {
    const MAX: usize = 64;
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

// ---------------------------------------------------------------------------------------------
// Decoding with Go's rules

/// The element type of a supported Go type name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Elem {
    Bool,
    Int,
    Int8,
    Int16,
    Int32,
    Int64,
    Uint,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Float32,
    Float64,
    String,
}

impl Elem {
    fn parse(name: &str) -> Option<Elem> {
        Some(match name {
            "bool" => Elem::Bool,
            "int" => Elem::Int,
            "int8" => Elem::Int8,
            "int16" => Elem::Int16,
            "int32" => Elem::Int32,
            "int64" => Elem::Int64,
            "uint" => Elem::Uint,
            "uint8" => Elem::Uint8,
            "uint16" => Elem::Uint16,
            "uint32" => Elem::Uint32,
            "uint64" => Elem::Uint64,
            "float32" => Elem::Float32,
            "float64" => Elem::Float64,
            "string" => Elem::String,
            _ => return None,
        })
    }

    fn is_unsigned(self) -> bool {
        matches!(
            self,
            Elem::Uint | Elem::Uint8 | Elem::Uint16 | Elem::Uint32 | Elem::Uint64
        )
    }
}

/// `(element, is_slice)` for a supported type name. `byte` alone is not supported (as in Go).
fn parse_type(name: &str) -> Option<(Elem, bool)> {
    match name.strip_prefix("[]") {
        Some("byte") => Some((Elem::Uint8, true)),
        Some(elem) => Elem::parse(elem).map(|e| (e, true)),
        None => Elem::parse(name).map(|e| (e, false)),
    }
}

fn decode_scalar(elem: Elem, v: &Json) -> Result<GoValue, ArgError> {
    Ok(match elem {
        Elem::Bool => GoValue::Bool(get_bool(v)?),
        Elem::Int => GoValue::Int(get_int(v, "int")?),
        Elem::Int8 => GoValue::Int8(get_int(v, "int8")?),
        Elem::Int16 => GoValue::Int16(get_int(v, "int16")?),
        Elem::Int32 => GoValue::Int32(get_int(v, "int32")?),
        Elem::Int64 => GoValue::Int64(get_int(v, "int64")?),
        Elem::Uint => GoValue::Uint(get_uint(v, "uint")?),
        Elem::Uint8 => GoValue::Uint8(get_uint(v, "uint8")?),
        Elem::Uint16 => GoValue::Uint16(get_uint(v, "uint16")?),
        Elem::Uint32 => GoValue::Uint32(get_uint(v, "uint32")?),
        Elem::Uint64 => GoValue::Uint64(get_uint(v, "uint64")?),
        Elem::Float32 => GoValue::Float32(get_f32(v)?),
        Elem::Float64 => GoValue::Float64(get_f64(v, "float64")?),
        Elem::String => GoValue::String(get_string(v)?),
    })
}

fn decode_slice(type_name: &str, elem: Elem, v: &Json, raw: &str) -> Result<GoValue, ArgError> {
    let items: &[Json] = match v {
        Json::Null => &[],
        Json::Array(items) => items,
        Json::Str(s) if elem.is_unsigned() => return Ok(bytes_as_slice(elem, go_base64(s)?)),
        _ => {
            let expected = if elem.is_unsigned() {
                "a JSON array or a base64 string"
            } else {
                "a JSON array"
            };
            return Err(ArgError::new(format!(
                "expected {expected} for {type_name}, got {}",
                shorten(raw)
            )));
        }
    };
    Ok(match elem {
        Elem::Bool => GoValue::BoolSlice(collect(items, get_bool)?),
        Elem::Int => GoValue::IntSlice(collect(items, |x| get_int(x, "int"))?),
        Elem::Int8 => GoValue::Int8Slice(collect(items, |x| get_int(x, "int8"))?),
        Elem::Int16 => GoValue::Int16Slice(collect(items, |x| get_int(x, "int16"))?),
        Elem::Int32 => GoValue::Int32Slice(collect(items, |x| get_int(x, "int32"))?),
        Elem::Int64 => GoValue::Int64Slice(collect(items, |x| get_int(x, "int64"))?),
        Elem::Uint => GoValue::UintSlice(collect(items, |x| get_uint(x, "uint"))?),
        Elem::Uint8 => GoValue::Bytes(collect(items, |x| get_uint(x, "uint8"))?),
        Elem::Uint16 => GoValue::Uint16Slice(collect(items, |x| get_uint(x, "uint16"))?),
        Elem::Uint32 => GoValue::Uint32Slice(collect(items, |x| get_uint(x, "uint32"))?),
        Elem::Uint64 => GoValue::Uint64Slice(collect(items, |x| get_uint(x, "uint64"))?),
        Elem::Float32 => GoValue::Float32Slice(collect(items, get_f32)?),
        Elem::Float64 => GoValue::Float64Slice(collect(items, |x| get_f64(x, "float64"))?),
        Elem::String => GoValue::StringSlice(collect(items, get_string)?),
    })
}

fn collect<T>(
    items: &[Json],
    f: impl Fn(&Json) -> Result<T, ArgError>,
) -> Result<Vec<T>, ArgError> {
    items.iter().map(f).collect()
}

fn bytes_as_slice(elem: Elem, bytes: Vec<u8>) -> GoValue {
    match elem {
        Elem::Uint => GoValue::UintSlice(bytes.into_iter().map(u64::from).collect()),
        Elem::Uint16 => GoValue::Uint16Slice(bytes.into_iter().map(u16::from).collect()),
        Elem::Uint32 => GoValue::Uint32Slice(bytes.into_iter().map(u32::from).collect()),
        Elem::Uint64 => GoValue::Uint64Slice(bytes.into_iter().map(u64::from).collect()),
        _ => GoValue::Bytes(bytes),
    }
}

/// Go's `typeConversionError`: `<%v of the value> is not <type>`.
fn not_type(v: &Json, go_type: &str) -> ArgError {
    let mut text = String::new();
    v.go_format(&mut text);
    ArgError::new(format!("{text} is not {go_type}"))
}

fn out_of_range(text: &str, go_type: &str) -> ArgError {
    ArgError::new(format!("{text} is out of range for {go_type}"))
}

fn get_bool(v: &Json) -> Result<bool, ArgError> {
    match v {
        Json::Bool(b) => Ok(*b),
        _ => Err(not_type(v, "bool")),
    }
}

fn get_string(v: &Json) -> Result<String, ArgError> {
    match v {
        Json::Str(s) => Ok(s.clone()),
        _ => Err(not_type(v, "string")),
    }
}

/// The literal of a `json.Number`, or Go's conversion error for anything else.
fn number<'a>(v: &'a Json, go_type: &str) -> Result<&'a str, ArgError> {
    match v {
        Json::Number(text) => Ok(text),
        _ => Err(not_type(v, go_type)),
    }
}

fn get_int<T: TryFrom<i64>>(v: &Json, go_type: &str) -> Result<T, ArgError> {
    let text = number(v, go_type)?;
    let n = parse_go_int(text)?;
    T::try_from(n).map_err(|_| out_of_range(text, go_type))
}

fn get_uint<T: TryFrom<u64>>(v: &Json, go_type: &str) -> Result<T, ArgError> {
    let text = number(v, go_type)?;
    let n = parse_go_uint(text).map_err(|e| e.error("ParseUint", text))?;
    T::try_from(n).map_err(|_| out_of_range(text, go_type))
}

/// `json.Number.Float64`: Rust's parser rounds correctly like Go's; only overflow needs Go's
/// range error (underflow is 0 in both).
fn parse_go_float(text: &str) -> Result<f64, ArgError> {
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(f),
        Ok(_) => Err(NumError::Range.error("ParseFloat", text)),
        Err(_) => Err(NumError::Syntax.error("ParseFloat", text)),
    }
}

fn get_f64(v: &Json, go_type: &str) -> Result<f64, ArgError> {
    parse_go_float(number(v, go_type)?)
}

fn get_f32(v: &Json) -> Result<f32, ArgError> {
    // Go parses at 64 bits, then converts (round to nearest even), so do we: parsing at 32 bits
    // directly could round differently.
    let text = number(v, "float32")?;
    let narrow = parse_go_float(text)? as f32;
    if narrow.is_infinite() {
        return Err(out_of_range(text, "float32"));
    }
    Ok(narrow)
}

/// The failure kinds of Go's `strconv` number parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumError {
    Syntax,
    Range,
}

impl NumError {
    /// Go's `*strconv.NumError` text.
    fn error(self, func: &str, text: &str) -> ArgError {
        let what = match self {
            NumError::Syntax => "invalid syntax",
            NumError::Range => "value out of range",
        };
        ArgError::new(format!("strconv.{func}: parsing {text:?}: {what}"))
    }
}

/// `strconv.ParseUint(s, 10, 64)`: digits only; overflow is reported as soon as it happens,
/// before any later syntax error.
fn parse_go_uint(text: &str) -> Result<u64, NumError> {
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
fn parse_go_int(text: &str) -> Result<i64, ArgError> {
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

/// `base64.StdEncoding.DecodeString` with Go's acceptance rules and error offsets: padding
/// required, `\r` and `\n` skipped, non-zero trailing bits tolerated.
fn go_base64(s: &str) -> Result<Vec<u8>, ArgError> {
    fn corrupt(at: usize) -> ArgError {
        ArgError::new(format!("illegal base64 data at input byte {at}"))
    }
    fn sextet(c: u8) -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    }
    let src = s.as_bytes();
    let skip_newlines = |mut i: usize| {
        while i < src.len() && (src[i] == b'\n' || src[i] == b'\r') {
            i += 1;
        }
        i
    };
    let mut out = Vec::with_capacity(src.len() / 4 * 3);
    let mut si = 0;
    loop {
        let mut quantum = [0u32; 4];
        let mut len = 0;
        let mut padded = false;
        while len < 4 {
            if si == src.len() {
                if len == 0 {
                    return Ok(out);
                }
                return Err(corrupt(si - len));
            }
            let c = src[si];
            si += 1;
            if let Some(v) = sextet(c) {
                quantum[len] = v;
                len += 1;
                continue;
            }
            if c == b'\n' || c == b'\r' {
                continue;
            }
            if c != b'=' || len < 2 {
                return Err(corrupt(si - 1));
            }
            if len == 2 {
                // "==" expected; the first is consumed.
                si = skip_newlines(si);
                if si == src.len() {
                    return Err(corrupt(src.len()));
                }
                if src[si] != b'=' {
                    return Err(corrupt(si - 1));
                }
                si += 1;
            }
            si = skip_newlines(si);
            if si < src.len() {
                return Err(corrupt(si));
            }
            padded = true;
            break;
        }
        let bits = quantum[0] << 18 | quantum[1] << 12 | quantum[2] << 6 | quantum[3];
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..len]);
        if padded {
            return Ok(out);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JSON as Go's decoder sees it with UseNumber: numbers keep their literal text

#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    /// The literal, as `json.Number`.
    Number(String),
    Str(String),
    Array(Vec<Json>),
    /// Go decodes objects into a map: the last duplicate key wins, `%v` sorts the keys.
    Object(BTreeMap<String, Json>),
}

impl Json {
    /// Parse one JSON value (the text was validated by serde_json as a `RawValue`).
    fn parse(text: &str) -> Result<Json, ArgError> {
        let mut p = Parser {
            s: text.as_bytes(),
            pos: 0,
        };
        let v = p.value();
        p.ws();
        match v {
            Some(v) if p.pos == p.s.len() => Ok(v),
            _ => Err(ArgError::new(format!(
                "invalid json value {}",
                shorten(text)
            ))),
        }
    }

    /// Go's `fmt` `%v` of the decoded `interface{}`.
    fn go_format(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("<nil>"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Number(s) | Json::Str(s) => out.push_str(s),
            Json::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(' ');
                    }
                    item.go_format(out);
                }
                out.push(']');
            }
            Json::Object(map) => {
                out.push_str("map[");
                for (i, (k, v)) in map.iter().enumerate() {
                    if i > 0 {
                        out.push(' ');
                    }
                    out.push_str(k);
                    out.push(':');
                    v.go_format(out);
                }
                out.push(']');
            }
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self
            .s
            .get(self.pos)
            .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        {
            self.pos += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        self.ws();
        if self.s.get(self.pos) == Some(&b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn literal(&mut self, word: &[u8], v: Json) -> Option<Json> {
        if self.s[self.pos..].starts_with(word) {
            self.pos += word.len();
            Some(v)
        } else {
            None
        }
    }

    fn value(&mut self) -> Option<Json> {
        self.ws();
        match *self.s.get(self.pos)? {
            b'n' => self.literal(b"null", Json::Null),
            b't' => self.literal(b"true", Json::Bool(true)),
            b'f' => self.literal(b"false", Json::Bool(false)),
            b'"' => self.string().map(Json::Str),
            b'[' => {
                self.pos += 1;
                let mut items = Vec::new();
                if self.eat(b']') {
                    return Some(Json::Array(items));
                }
                loop {
                    items.push(self.value()?);
                    if self.eat(b']') {
                        return Some(Json::Array(items));
                    }
                    if !self.eat(b',') {
                        return None;
                    }
                }
            }
            b'{' => {
                self.pos += 1;
                let mut map = BTreeMap::new();
                if self.eat(b'}') {
                    return Some(Json::Object(map));
                }
                loop {
                    self.ws();
                    let key = self.string()?;
                    if !self.eat(b':') {
                        return None;
                    }
                    let v = self.value()?;
                    map.insert(key, v);
                    if self.eat(b'}') {
                        return Some(Json::Object(map));
                    }
                    if !self.eat(b',') {
                        return None;
                    }
                }
            }
            b'-' | b'0'..=b'9' => {
                let start = self.pos;
                while self
                    .s
                    .get(self.pos)
                    .is_some_and(|b| matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                {
                    self.pos += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.pos]).ok()?;
                Some(Json::Number(text.to_owned()))
            }
            _ => None,
        }
    }

    /// A string literal; lone surrogate escapes become U+FFFD, as Go decodes them.
    fn string(&mut self) -> Option<String> {
        if self.s.get(self.pos) != Some(&b'"') {
            return None;
        }
        self.pos += 1;
        let mut out = String::new();
        loop {
            let start = self.pos;
            while !matches!(self.s.get(self.pos), Some(b'"' | b'\\') | None) {
                self.pos += 1;
            }
            out.push_str(std::str::from_utf8(&self.s[start..self.pos]).ok()?);
            match *self.s.get(self.pos)? {
                b'"' => {
                    self.pos += 1;
                    return Some(out);
                }
                _ => {
                    self.pos += 1;
                    let c = *self.s.get(self.pos)?;
                    self.pos += 1;
                    match c {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let unit = self.hex4()?;
                            out.push(self.unicode_escape(unit));
                        }
                        _ => return None,
                    }
                }
            }
        }
    }

    fn hex4(&mut self) -> Option<u16> {
        let digits = self.s.get(self.pos..self.pos + 4)?;
        let n = u16::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()?;
        self.pos += 4;
        Some(n)
    }

    /// The character for `\uXXXX` (already read as `unit`), joining a following low surrogate.
    fn unicode_escape(&mut self, unit: u16) -> char {
        if (0xD800..0xDC00).contains(&unit)
            && self.s.get(self.pos..self.pos + 2) == Some(b"\\u".as_slice())
        {
            let save = self.pos;
            self.pos += 2;
            if let Some(low) = self.hex4()
                && (0xDC00..0xE000).contains(&low)
            {
                let c = 0x10000 + ((u32::from(unit) - 0xD800) << 10) + (u32::from(low) - 0xDC00);
                return char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER);
            }
            self.pos = save;
        }
        char::from_u32(u32::from(unit)).unwrap_or(char::REPLACEMENT_CHARACTER)
    }
}

// ---------------------------------------------------------------------------------------------
// Rust conversions

/// A Rust type that can be built from a [`GoValue`].
pub trait FromGoValue: Sized {
    /// The Rust type's name for error messages.
    const RUST_TYPE: &'static str;
    /// Convert.
    ///
    /// # Errors
    /// When the value's type or range does not fit.
    fn from_go_value(value: GoValue) -> Result<Self, ArgError>;
}

/// A Rust type that can be sent as a Go-typed argument or result.
pub trait IntoGoValue {
    /// Convert.
    fn into_go_value(self) -> GoValue;
}

fn mismatch(value: &GoValue, rust: &str) -> ArgError {
    ArgError::new(format!("cannot use {} as {rust}", value.describe()))
}

fn value_out_of_range(value: &GoValue, rust: &str) -> ArgError {
    ArgError::new(format!(
        "cannot use {} as {rust}: out of range",
        value.describe()
    ))
}

/// The value of any Go integer kind.
fn integer(value: &GoValue) -> Option<i128> {
    Some(match *value {
        GoValue::Int(n) | GoValue::Int64(n) => n.into(),
        GoValue::Int8(n) => n.into(),
        GoValue::Int16(n) => n.into(),
        GoValue::Int32(n) => n.into(),
        GoValue::Uint(n) | GoValue::Uint64(n) => n.into(),
        GoValue::Uint8(n) => n.into(),
        GoValue::Uint16(n) => n.into(),
        GoValue::Uint32(n) => n.into(),
        _ => return None,
    })
}

/// The elements of any Go integer slice kind, each converted to `T` if it fits.
fn integer_vec<T: TryFrom<i128>>(value: &GoValue, rust: &str) -> Result<Vec<T>, ArgError> {
    fn each<T: TryFrom<i128>, N: Copy + Into<i128>>(
        value: &GoValue,
        rust: &str,
        items: &[N],
    ) -> Result<Vec<T>, ArgError> {
        items
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let n: i128 = n.into();
                T::try_from(n).map_err(|_| {
                    ArgError::new(format!(
                        "cannot use {} as {rust}: element {i} ({n}) is out of range",
                        value.describe()
                    ))
                })
            })
            .collect()
    }
    match value {
        GoValue::IntSlice(v) | GoValue::Int64Slice(v) => each(value, rust, v),
        GoValue::Int8Slice(v) => each(value, rust, v),
        GoValue::Int16Slice(v) => each(value, rust, v),
        GoValue::Int32Slice(v) => each(value, rust, v),
        GoValue::UintSlice(v) | GoValue::Uint64Slice(v) => each(value, rust, v),
        GoValue::Bytes(v) => each(value, rust, v),
        GoValue::Uint16Slice(v) => each(value, rust, v),
        GoValue::Uint32Slice(v) => each(value, rust, v),
        _ => Err(mismatch(value, rust)),
    }
}

macro_rules! integer_conversions {
    ($($t:ty => $variant:ident, $slice:ident;)*) => {$(
        impl IntoGoValue for $t {
            fn into_go_value(self) -> GoValue {
                GoValue::$variant(self)
            }
        }

        impl FromGoValue for $t {
            const RUST_TYPE: &'static str = stringify!($t);
            fn from_go_value(value: GoValue) -> Result<Self, ArgError> {
                let n = integer(&value).ok_or_else(|| mismatch(&value, Self::RUST_TYPE))?;
                <$t>::try_from(n).map_err(|_| value_out_of_range(&value, Self::RUST_TYPE))
            }
        }

        impl IntoGoValue for Vec<$t> {
            fn into_go_value(self) -> GoValue {
                GoValue::$slice(self)
            }
        }

        impl FromGoValue for Vec<$t> {
            const RUST_TYPE: &'static str = concat!("Vec<", stringify!($t), ">");
            fn from_go_value(value: GoValue) -> Result<Self, ArgError> {
                match value {
                    GoValue::$slice(v) => Ok(v),
                    other => integer_vec(&other, Self::RUST_TYPE),
                }
            }
        }
    )*};
}

integer_conversions! {
    i8 => Int8, Int8Slice;
    i16 => Int16, Int16Slice;
    i32 => Int32, Int32Slice;
    i64 => Int64, Int64Slice;
    u8 => Uint8, Bytes;
    u16 => Uint16, Uint16Slice;
    u32 => Uint32, Uint32Slice;
    u64 => Uint64, Uint64Slice;
}

/// Conversions that accept exactly one [`GoValue`] variant.
macro_rules! exact_conversions {
    ($($t:ty => $variant:ident;)*) => {$(
        impl IntoGoValue for $t {
            fn into_go_value(self) -> GoValue {
                GoValue::$variant(self)
            }
        }

        impl FromGoValue for $t {
            const RUST_TYPE: &'static str = stringify!($t);
            fn from_go_value(value: GoValue) -> Result<Self, ArgError> {
                match value {
                    GoValue::$variant(v) => Ok(v),
                    other => Err(mismatch(&other, Self::RUST_TYPE)),
                }
            }
        }
    )*};
}

exact_conversions! {
    bool => Bool;
    f32 => Float32;
    String => String;
    Vec<bool> => BoolSlice;
    Vec<f32> => Float32Slice;
    Vec<String> => StringSlice;
}

impl IntoGoValue for f64 {
    fn into_go_value(self) -> GoValue {
        GoValue::Float64(self)
    }
}

impl FromGoValue for f64 {
    const RUST_TYPE: &'static str = "f64";
    fn from_go_value(value: GoValue) -> Result<Self, ArgError> {
        match value {
            GoValue::Float64(v) => Ok(v),
            GoValue::Float32(v) => Ok(v.into()),
            other => Err(mismatch(&other, Self::RUST_TYPE)),
        }
    }
}

impl IntoGoValue for Vec<f64> {
    fn into_go_value(self) -> GoValue {
        GoValue::Float64Slice(self)
    }
}

impl FromGoValue for Vec<f64> {
    const RUST_TYPE: &'static str = "Vec<f64>";
    fn from_go_value(value: GoValue) -> Result<Self, ArgError> {
        match value {
            GoValue::Float64Slice(v) => Ok(v),
            GoValue::Float32Slice(v) => Ok(v.into_iter().map(f64::from).collect()),
            other => Err(mismatch(&other, Self::RUST_TYPE)),
        }
    }
}

impl IntoGoValue for &str {
    fn into_go_value(self) -> GoValue {
        GoValue::String(self.to_owned())
    }
}

impl IntoGoValue for Vec<&str> {
    fn into_go_value(self) -> GoValue {
        GoValue::StringSlice(self.into_iter().map(str::to_owned).collect())
    }
}

impl IntoGoValue for GoValue {
    fn into_go_value(self) -> GoValue {
        self
    }
}

impl FromGoValue for GoValue {
    const RUST_TYPE: &'static str = "GoValue";
    fn from_go_value(value: GoValue) -> Result<Self, ArgError> {
        Ok(value)
    }
}

// ---------------------------------------------------------------------------------------------
// Task results

/// The return value of a task: `()`, one [`IntoGoValue`] or a tuple of up to six of them.
pub trait IntoResults {
    /// The values in order.
    fn into_results(self) -> Vec<GoValue>;
}

impl IntoResults for () {
    fn into_results(self) -> Vec<GoValue> {
        Vec::new()
    }
}

impl<T: IntoGoValue> IntoResults for T {
    fn into_results(self) -> Vec<GoValue> {
        vec![self.into_go_value()]
    }
}

/// Read a task's results back: `()` (no results), one [`FromGoValue`] (exactly one result),
/// a tuple of up to six (exactly that many), or `Vec<GoValue>` (any number).
pub trait FromResults: Sized {
    /// Convert.
    ///
    /// # Errors
    /// When the count or a type does not fit.
    fn from_results(results: &[TaskResult]) -> Result<Self, ArgError>;
}

fn expect_count(results: &[TaskResult], expected: usize) -> Result<(), ArgError> {
    if results.len() == expected {
        return Ok(());
    }
    let plural = if expected == 1 { "" } else { "s" };
    Err(ArgError::new(format!(
        "expected {expected} result{plural}, got {}",
        results.len()
    )))
}

fn result_at<T: FromGoValue>(results: &[TaskResult], i: usize) -> Result<T, ArgError> {
    results[i]
        .decode()
        .and_then(T::from_go_value)
        .map_err(|e| ArgError::new(format!("result {i}: {e}")))
}

impl FromResults for () {
    fn from_results(results: &[TaskResult]) -> Result<Self, ArgError> {
        expect_count(results, 0)
    }
}

impl<T: FromGoValue> FromResults for T {
    fn from_results(results: &[TaskResult]) -> Result<Self, ArgError> {
        expect_count(results, 1)?;
        result_at(results, 0)
    }
}

impl FromResults for Vec<GoValue> {
    fn from_results(results: &[TaskResult]) -> Result<Self, ArgError> {
        (0..results.len()).map(|i| result_at(results, i)).collect()
    }
}

macro_rules! tuple_results {
    ($($n:literal => ($($t:ident $i:tt),+);)*) => {$(
        impl<$($t: IntoGoValue),+> IntoResults for ($($t,)+) {
            fn into_results(self) -> Vec<GoValue> {
                vec![$(self.$i.into_go_value()),+]
            }
        }

        impl<$($t: FromGoValue),+> FromResults for ($($t,)+) {
            fn from_results(results: &[TaskResult]) -> Result<Self, ArgError> {
                expect_count(results, $n)?;
                Ok(($(result_at::<$t>(results, $i)?,)+))
            }
        }
    )*};
}

tuple_results! {
    1 => (A 0);
    2 => (A 0, B 1);
    3 => (A 0, B 1, C 2);
    4 => (A 0, B 1, C 2, D 3);
    5 => (A 0, B 1, C 2, D 3, E 4);
    6 => (A 0, B 1, C 2, D 3, E 4, F 5);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(type_name: &str, json: &str) -> Result<GoValue, ArgError> {
        GoValue::decode(type_name, &RawValue::from_string(json.to_owned()).unwrap())
    }

    fn err(type_name: &str, json: &str) -> String {
        decode(type_name, json).unwrap_err().message
    }

    fn from<T: FromGoValue>(v: GoValue) -> Result<T, String> {
        T::from_go_value(v).map_err(|e| e.message)
    }

    #[test]
    fn rust_values_get_go_types() {
        let cases: Vec<(GoValue, &str, &str)> = vec![
            (true.into_go_value(), "bool", "true"),
            (5i8.into_go_value(), "int8", "5"),
            (5i16.into_go_value(), "int16", "5"),
            ((-5i32).into_go_value(), "int32", "-5"),
            (i64::MIN.into_go_value(), "int64", "-9223372036854775808"),
            (255u8.into_go_value(), "uint8", "255"),
            (5u16.into_go_value(), "uint16", "5"),
            (5u32.into_go_value(), "uint32", "5"),
            (u64::MAX.into_go_value(), "uint64", "18446744073709551615"),
            (0.1f32.into_go_value(), "float32", "0.1"),
            (100f64.into_go_value(), "float64", "100"),
            ("<&>".into_go_value(), "string", r#""\u003c\u0026\u003e""#),
            (String::from("x").into_go_value(), "string", r#""x""#),
            (
                b"hello".to_vec().into_go_value(),
                "[]uint8",
                r#""aGVsbG8=""#,
            ),
            (Vec::<u8>::new().into_go_value(), "[]uint8", r#""""#),
            (vec![true].into_go_value(), "[]bool", "[true]"),
            (vec![-1i8].into_go_value(), "[]int8", "[-1]"),
            (vec![-1i16].into_go_value(), "[]int16", "[-1]"),
            (vec![-1i32].into_go_value(), "[]int32", "[-1]"),
            (vec![1i64, 2].into_go_value(), "[]int64", "[1,2]"),
            (Vec::<i64>::new().into_go_value(), "[]int64", "[]"),
            (vec![1u16].into_go_value(), "[]uint16", "[1]"),
            (vec![1u32].into_go_value(), "[]uint32", "[1]"),
            (
                vec![u64::MAX].into_go_value(),
                "[]uint64",
                "[18446744073709551615]",
            ),
            (vec![1.5f32, 0.1].into_go_value(), "[]float32", "[1.5,0.1]"),
            (
                vec![1e21f64, -0.0].into_go_value(),
                "[]float64",
                "[1e+21,-0]",
            ),
            (vec!["a", ""].into_go_value(), "[]string", r#"["a",""]"#),
            (
                vec![String::from("b")].into_go_value(),
                "[]string",
                r#"["b"]"#,
            ),
            (GoValue::Int(7).into_go_value(), "int", "7"),
            (GoValue::Uint(7), "uint", "7"),
            (GoValue::IntSlice(vec![7]), "[]int", "[7]"),
            (GoValue::UintSlice(vec![7]), "[]uint", "[7]"),
        ];
        for (value, type_name, json) in cases {
            assert_eq!(value.type_name(), type_name, "{value:?}");
            assert_eq!(value.to_raw().get(), json, "{value:?}");
        }
        // Go cannot encode these; we write null rather than fail.
        assert_eq!(GoValue::Float64(f64::NAN).to_raw().get(), "null");
        assert_eq!(
            GoValue::Float32Slice(vec![f32::INFINITY]).to_raw().get(),
            "[null]"
        );
    }

    #[test]
    fn integers_convert_when_the_value_fits() {
        assert_eq!(from::<i64>(GoValue::Int(-3)), Ok(-3));
        assert_eq!(from::<i64>(GoValue::Int8(-3)), Ok(-3));
        assert_eq!(from::<i64>(GoValue::Uint8(200)), Ok(200));
        assert_eq!(
            from::<i64>(GoValue::Uint32(u32::MAX)),
            Ok(i64::from(u32::MAX))
        );
        assert_eq!(from::<i64>(GoValue::Uint64(1 << 62)), Ok(1 << 62));
        assert_eq!(from::<u64>(GoValue::Uint(u64::MAX)), Ok(u64::MAX));
        assert_eq!(from::<u64>(GoValue::Int64(i64::MAX)), Ok(i64::MAX as u64));
        assert_eq!(from::<u8>(GoValue::Int(255)), Ok(255));
        assert_eq!(from::<i8>(GoValue::Int16(-128)), Ok(-128));
        assert_eq!(from::<u16>(GoValue::Int32(65535)), Ok(65535));
        assert_eq!(from::<i32>(GoValue::Uint16(65535)), Ok(65535));

        assert_eq!(
            from::<i64>(GoValue::Uint64(u64::MAX)),
            Err("cannot use uint64 value 18446744073709551615 as i64: out of range".into())
        );
        assert_eq!(
            from::<u64>(GoValue::Int(-1)),
            Err("cannot use int value -1 as u64: out of range".into())
        );
        assert_eq!(
            from::<i8>(GoValue::Int64(128)),
            Err("cannot use int64 value 128 as i8: out of range".into())
        );
        assert_eq!(
            from::<u8>(GoValue::Uint16(256)),
            Err("cannot use uint16 value 256 as u8: out of range".into())
        );
        assert_eq!(
            from::<i64>(GoValue::String("5".into())),
            Err(r#"cannot use string value "5" as i64"#.into())
        );
        assert_eq!(
            from::<i64>(GoValue::Float64(5.0)),
            Err("cannot use float64 value 5 as i64".into())
        );
        assert_eq!(
            from::<i32>(GoValue::Int64Slice(vec![1])),
            Err("cannot use []int64 value [1] as i32".into())
        );
    }

    #[test]
    fn floats_bools_and_strings_convert_exactly() {
        assert_eq!(from::<f64>(GoValue::Float64(0.5)), Ok(0.5));
        assert_eq!(from::<f64>(GoValue::Float32(0.1)), Ok(f64::from(0.1f32)));
        assert_eq!(from::<f32>(GoValue::Float32(0.1)), Ok(0.1));
        // No integer-to-float conversion, and no lossy float64-to-float32 narrowing.
        assert_eq!(
            from::<f64>(GoValue::Int64(1)),
            Err("cannot use int64 value 1 as f64".into())
        );
        assert_eq!(
            from::<f32>(GoValue::Float64(0.5)),
            Err("cannot use float64 value 0.5 as f32".into())
        );
        assert_eq!(from::<bool>(GoValue::Bool(true)), Ok(true));
        assert_eq!(
            from::<bool>(GoValue::Int(1)),
            Err("cannot use int value 1 as bool".into())
        );
        assert_eq!(from::<String>(GoValue::String("x".into())), Ok("x".into()));
        assert_eq!(
            from::<String>(GoValue::Bytes(b"x".to_vec())),
            Err(r#"cannot use []uint8 value "eA==" as String"#.into())
        );
        assert_eq!(from::<GoValue>(GoValue::Uint(3)), Ok(GoValue::Uint(3)));
        let long = from::<i64>(GoValue::String("é".repeat(100))).unwrap_err();
        assert!(long.ends_with("... as i64"), "{long}");
    }

    #[test]
    fn vectors_convert_element_by_element() {
        assert_eq!(from::<Vec<u8>>(GoValue::Bytes(vec![1, 2])), Ok(vec![1, 2]));
        assert_eq!(
            from::<Vec<u8>>(GoValue::IntSlice(vec![1, 255])),
            Ok(vec![1, 255])
        );
        assert_eq!(from::<Vec<i64>>(GoValue::IntSlice(vec![-1])), Ok(vec![-1]));
        assert_eq!(from::<Vec<i64>>(GoValue::Int8Slice(vec![-1])), Ok(vec![-1]));
        assert_eq!(from::<Vec<i64>>(GoValue::Bytes(vec![7])), Ok(vec![7]));
        assert_eq!(
            from::<Vec<u64>>(GoValue::UintSlice(vec![u64::MAX])),
            Ok(vec![u64::MAX])
        );
        assert_eq!(from::<Vec<u16>>(GoValue::Uint32Slice(vec![9])), Ok(vec![9]));
        assert_eq!(
            from::<Vec<i16>>(GoValue::Int16Slice(vec![-9])),
            Ok(vec![-9])
        );
        assert_eq!(from::<Vec<i32>>(GoValue::Int64Slice(vec![])), Ok(vec![]));
        assert_eq!(from::<Vec<u32>>(GoValue::Uint16Slice(vec![1])), Ok(vec![1]));
        assert_eq!(
            from::<Vec<i8>>(GoValue::Int64Slice(vec![1, 300])),
            Err(
                "cannot use []int64 value [1,300] as Vec<i8>: element 1 (300) is out of range"
                    .into()
            )
        );
        assert_eq!(
            from::<Vec<i64>>(GoValue::Uint64Slice(vec![u64::MAX])),
            Err(
                "cannot use []uint64 value [18446744073709551615] as Vec<i64>: element 0 \
                 (18446744073709551615) is out of range"
                    .into()
            )
        );
        assert_eq!(
            from::<Vec<i64>>(GoValue::Int64(1)),
            Err("cannot use int64 value 1 as Vec<i64>".into())
        );
        assert_eq!(
            from::<Vec<i64>>(GoValue::Float64Slice(vec![1.0])),
            Err("cannot use []float64 value [1] as Vec<i64>".into())
        );
        assert_eq!(
            from::<Vec<f64>>(GoValue::Float64Slice(vec![0.5])),
            Ok(vec![0.5])
        );
        assert_eq!(
            from::<Vec<f64>>(GoValue::Float32Slice(vec![0.5])),
            Ok(vec![0.5])
        );
        assert_eq!(
            from::<Vec<f32>>(GoValue::Float32Slice(vec![0.5])),
            Ok(vec![0.5])
        );
        assert!(from::<Vec<f32>>(GoValue::Float64Slice(vec![0.5])).is_err());
        assert_eq!(
            from::<Vec<bool>>(GoValue::BoolSlice(vec![true])),
            Ok(vec![true])
        );
        assert!(from::<Vec<bool>>(GoValue::Bool(true)).is_err());
        assert_eq!(
            from::<Vec<String>>(GoValue::StringSlice(vec!["a".into()])),
            Ok(vec!["a".to_owned()])
        );
        assert_eq!(
            from::<Vec<String>>(GoValue::String("a".into())),
            Err(r#"cannot use string value "a" as Vec<String>"#.into())
        );
    }

    #[test]
    fn results_from_tuples_and_back() {
        assert!(().into_results().is_empty());
        assert_eq!(5i64.into_results(), [GoValue::Int64(5)]);
        assert_eq!(
            ("a", 1u8).into_results(),
            [GoValue::String("a".into()), GoValue::Uint8(1)]
        );
        assert_eq!((1i64,).into_results(), [GoValue::Int64(1)]);
        let six = (true, 1i8, 2u16, 3.5f64, "x", vec![1u8]).into_results();
        assert_eq!(six.len(), 6);
        let stored: Vec<TaskResult> = six.into_iter().map(TaskResult::new).collect();
        let (a, b, c, d, e, f) =
            <(bool, i8, u16, f64, String, Vec<u8>)>::from_results(&stored).unwrap();
        assert_eq!((a, b, c, d, e.as_str(), f), (true, 1, 2, 3.5, "x", vec![1]));
        // Integers widen into any Rust integer type they fit.
        let (x, y, z) = <(bool, i64, i64)>::from_results(&stored[..3]).unwrap();
        assert_eq!((x, y, z), (true, 1, 2));
        assert_eq!(
            <(i64, i64)>::from_results(&stored[..1])
                .unwrap_err()
                .message,
            "expected 2 results, got 1"
        );
        assert_eq!(
            <()>::from_results(&stored[..1]).unwrap_err().message,
            "expected 0 results, got 1"
        );
        assert_eq!(
            <(bool, String)>::from_results(&stored[..2])
                .unwrap_err()
                .message,
            "result 1: cannot use int8 value 1 as String"
        );
        assert_eq!(Vec::<GoValue>::from_results(&stored).unwrap().len(), 6);
        assert!(Vec::<GoValue>::from_results(&[]).unwrap().is_empty());
    }

    #[test]
    fn decoding_follows_go_beyond_the_fixture_table() {
        // strconv reports overflow as soon as it happens, before a later syntax error.
        assert_eq!(
            err("int64", "99999999999999999999.5"),
            r#"strconv.ParseInt: parsing "99999999999999999999.5": value out of range"#
        );
        assert_eq!(
            err("uint64", "99999999999999999999e1"),
            r#"strconv.ParseUint: parsing "99999999999999999999e1": value out of range"#
        );
        assert_eq!(
            err("int", "-9223372036854775809"),
            r#"strconv.ParseInt: parsing "-9223372036854775809": value out of range"#
        );
        // Float underflow is 0 without error (Go's ParseFloat), overflow is an error.
        assert_eq!(decode("float64", "1e-400"), Ok(GoValue::Float64(0.0)));
        assert_eq!(decode("float32", "1e-50"), Ok(GoValue::Float32(0.0)));
        assert_eq!(
            err("[]float64", "[1,1e400]"),
            r#"strconv.ParseFloat: parsing "1e400": value out of range"#
        );
        // float32 rounds from the float64 value; just below the overflow threshold is MAX.
        assert_eq!(
            decode("float32", "3.4028235e38"),
            Ok(GoValue::Float32(f32::MAX))
        );
        assert_eq!(
            err("[]float32", "[1e39]"),
            "1e39 is out of range for float32"
        );
        assert_eq!(
            err("[]uint16", "[65536]"),
            "65536 is out of range for uint16"
        );
        assert_eq!(
            err("int8", "-1e3"),
            r#"strconv.ParseInt: parsing "-1e3": invalid syntax"#
        );
        // `%v` of nested values, as Go prints the decoded interface{}.
        assert_eq!(
            err("int64", r#"[1,[2,"x"],null]"#),
            "[1 [2 x] <nil>] is not int64"
        );
        assert_eq!(
            err("string", r#"{"b":[true],"a":{"c":1.5}}"#),
            "map[a:map[c:1.5] b:[true]] is not string"
        );
        assert_eq!(err("[]int", r#"[1,{"a":null}]"#), "map[a:<nil>] is not int");
        assert_eq!(err("[]byte", r#"["a"]"#), "a is not uint8");
        assert_eq!(err("bool", r#""""#), " is not bool");
        // Whitespace around the raw value is fine.
        assert_eq!(decode("int64", " 5 "), Ok(GoValue::Int64(5)));
        assert_eq!(
            decode("[]int8", "[ 1 , -2 ]"),
            Ok(GoValue::Int8Slice(vec![1, -2]))
        );
        // Lone surrogates become U+FFFD like Go's decoder; pairs join.
        assert_eq!(
            decode("string", r#""a\ud800b\ud83d\ude80\udc00""#),
            Ok(GoValue::String("a\u{fffd}b🚀\u{fffd}".into()))
        );
        assert_eq!(
            decode("[]string", r#"["\ud800\u0041", "\"\\\/\b\f\n\r\t"]"#),
            Ok(GoValue::StringSlice(vec![
                "\u{fffd}A".into(),
                "\"\\/\u{8}\u{c}\n\r\t".into()
            ]))
        );
        // Unsupported names are checked before the value, and are case sensitive.
        assert_eq!(err("Bool", "{}"), "Bool is not one of supported types");
        assert_eq!(err("[]Byte", "1"), "[]Byte is not one of supported types");
        assert_eq!(err("[]", "[]"), "[] is not one of supported types");
        // A long value is shortened in our own messages.
        let long = err("[]int64", &format!("\"{}\"", "x".repeat(500)));
        assert!(long.len() < 140 && long.ends_with("..."), "{long}");
    }

    #[test]
    fn base64_follows_gos_std_encoding() {
        let bytes = |s: &str| decode("[]uint8", &format!("\"{s}\""));
        assert_eq!(bytes("AQID"), Ok(GoValue::Bytes(vec![1, 2, 3])));
        assert_eq!(bytes("AQ=="), Ok(GoValue::Bytes(vec![1])));
        assert_eq!(bytes("AQI="), Ok(GoValue::Bytes(vec![1, 2])));
        // Go skips CR and LF anywhere, and tolerates non-zero trailing bits (not strict).
        assert_eq!(bytes(r"AQ\r\nID"), Ok(GoValue::Bytes(vec![1, 2, 3])));
        assert_eq!(bytes(r"AQ=\n="), Ok(GoValue::Bytes(vec![1])));
        assert_eq!(bytes("AR=="), Ok(GoValue::Bytes(vec![1])));
        assert_eq!(bytes("/+8="), Ok(GoValue::Bytes(vec![255, 239])));
        // Error offsets as Go reports them.
        assert_eq!(
            bytes("A").unwrap_err().message,
            "illegal base64 data at input byte 0"
        );
        assert_eq!(
            bytes("AQIDA").unwrap_err().message,
            "illegal base64 data at input byte 4"
        );
        assert_eq!(
            bytes("AQ=").unwrap_err().message,
            "illegal base64 data at input byte 3"
        );
        assert_eq!(
            bytes("AQ=x").unwrap_err().message,
            "illegal base64 data at input byte 2"
        );
        assert_eq!(
            bytes("A===").unwrap_err().message,
            "illegal base64 data at input byte 1"
        );
        assert_eq!(
            bytes("AQI=AQID").unwrap_err().message,
            "illegal base64 data at input byte 4"
        );
        assert_eq!(
            bytes("AQID-_").unwrap_err().message,
            "illegal base64 data at input byte 4"
        );
        // The same base64 rules for every unsigned slice type.
        assert_eq!(
            decode("[]uint32", r#""/w==""#),
            Ok(GoValue::Uint32Slice(vec![255]))
        );
        assert_eq!(
            err("[]uint64", r#""A""#),
            "illegal base64 data at input byte 0"
        );
        assert_eq!(
            err("[]int64", r#""AQID""#),
            r#"expected a JSON array for []int64, got "AQID""#
        );
    }
}
