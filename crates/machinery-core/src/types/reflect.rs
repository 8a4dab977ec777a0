//! Decoding with Go's rules: what a Go worker's `tasks.ReflectValue` accepts for each
//! supported type name (see the module docs of [`super`]).

use serde_json::value::RawValue;

use super::gobase64::go_base64;
use super::gojson::Json;
use super::strconv::{parse_go_float, parse_go_int, parse_go_uint};
use super::{ArgError, GoValue, shorten};

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
        // The parsed value is consumed: its strings move into the result, never copied
        // (a 10 MB string argument is parsed once, not parsed and cloned).
        let json = Json::parse(raw)?;
        if slice {
            decode_slice(type_name, elem, json, raw)
        } else {
            decode_scalar(elem, json)
        }
    }
}

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

fn decode_scalar(elem: Elem, json: Json) -> Result<GoValue, ArgError> {
    let v = &json;
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
        Elem::String => GoValue::String(into_string(json)?),
    })
}

fn decode_slice(type_name: &str, elem: Elem, v: Json, raw: &str) -> Result<GoValue, ArgError> {
    let items: Vec<Json> = match v {
        Json::Null => Vec::new(),
        Json::Array(items) => items,
        Json::Str(s) if elem.is_unsigned() => return Ok(bytes_as_slice(elem, go_base64(&s)?)),
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
    if elem == Elem::String {
        let strings: Result<Vec<String>, ArgError> = items.into_iter().map(into_string).collect();
        return strings.map(GoValue::StringSlice);
    }
    let items = &items[..];
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
        Elem::String => unreachable!("string slices are decoded above"),
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

fn into_string(v: Json) -> Result<String, ArgError> {
    match v {
        Json::Str(s) => Ok(s),
        _ => Err(not_type(&v, "string")),
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
