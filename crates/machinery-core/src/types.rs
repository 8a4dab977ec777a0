//! Go's argument and result types and their conversion to and from plain Rust types.
//!
//! API SKELETON — the conversion rules are being implemented (see issue 2, item 3).

use serde_json::value::RawValue;

/// A value of one of the Go types Machinery supports (WIRE.md section 2).
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum GoValue {
    Bool(bool),
    Int(i64),
    Int8(i8),
    Int16(i16),
    Int32(i32),
    Int64(i64),
    Uint(u64),
    Uint8(u8),
    Uint16(u16),
    Uint32(u32),
    Uint64(u64),
    Float32(f32),
    Float64(f64),
    String(String),
    BoolSlice(Vec<bool>),
    IntSlice(Vec<i64>),
    Int8Slice(Vec<i8>),
    Int16Slice(Vec<i16>),
    Int32Slice(Vec<i32>),
    Int64Slice(Vec<i64>),
    UintSlice(Vec<u64>),
    /// `[]uint8` / `[]byte`.
    Bytes(Vec<u8>),
    Uint16Slice(Vec<u16>),
    Uint32Slice(Vec<u32>),
    Uint64Slice(Vec<u64>),
    Float32Slice(Vec<f32>),
    Float64Slice(Vec<f64>),
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
    /// Convert a JSON value by Go type name with Go's acceptance rules.
    ///
    /// # Errors
    /// When the type is unsupported or the value does not fit it.
    pub fn decode(type_name: &str, value: &RawValue) -> Result<GoValue, ArgError> {
        let _ = value;
        Err(ArgError::new(format!("{type_name} is not one of supported types")))
    }

    /// The Go type name written on the wire (`[]uint8` for bytes).
    pub fn type_name(&self) -> &'static str {
        "int64"
    }

    /// The JSON value as Go writes it.
    pub fn to_raw(&self) -> Box<RawValue> {
        crate::json::raw_null()
    }
}

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

impl IntoGoValue for i64 {
    fn into_go_value(self) -> GoValue {
        GoValue::Int64(self)
    }
}

impl FromGoValue for i64 {
    const RUST_TYPE: &'static str = "i64";
    fn from_go_value(value: GoValue) -> Result<Self, ArgError> {
        match value {
            GoValue::Int64(v) => Ok(v),
            other => Err(ArgError::new(format!("expected i64, got {other:?}"))),
        }
    }
}

/// The return value of a task: `()`, one [`IntoGoValue`] or a tuple of them.
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

/// Read a task's results back: `()`, one [`FromGoValue`] or a tuple of them.
pub trait FromResults: Sized {
    /// Convert.
    ///
    /// # Errors
    /// When the count or a type does not fit.
    fn from_results(results: &[crate::TaskResult]) -> Result<Self, ArgError>;
}
