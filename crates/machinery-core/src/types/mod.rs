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
//!
//! # Layout
//!
//! - `mod.rs` (here): the value model, [`GoValue`] and [`ArgError`];
//! - `reflect.rs`: decoding with Go's `tasks.ReflectValue` rules ([`GoValue::decode`]);
//! - `gojson.rs`: JSON as Go writes it ([`GoValue::to_raw`]) and as Go's decoder reads it
//!   with `UseNumber` (numbers keep their literal text);
//! - `strconv.rs`: Go's `strconv` number parsing with its error texts;
//! - `gobase64.rs`: Go's `base64.StdEncoding.DecodeString`;
//! - `convert.rs`: [`FromGoValue`] / [`IntoGoValue`], the Rust conversions;
//! - `results.rs`: [`IntoResults`] / [`FromResults`], a task's results.

mod convert;
mod gobase64;
mod gojson;
mod reflect;
mod results;
mod strconv;
#[cfg(test)]
mod tests;

pub use convert::{FromGoValue, IntoGoValue};
pub use results::{FromResults, IntoResults};

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

    /// `int64 value 5`, for error messages.
    fn describe(&self) -> String {
        format!(
            "{} value {}",
            self.type_name(),
            shorten(&self.to_json_text())
        )
    }
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
