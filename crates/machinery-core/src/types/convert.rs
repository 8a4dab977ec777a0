//! Rust conversions: [`FromGoValue`] (lossless, never truncating) and [`IntoGoValue`].

use super::{ArgError, GoValue};

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
