//! Task results between machinery's `{Type, Value}` JSON and Go's BSON `{type, value}`.
//!
//! Written as Go's MongoDB driver writes them, except where Go loses a type:
//!
//! | Go type | BSON |
//! |---|---|
//! | `int`, `int64`, `uint`, `uint32`, `uint64` | Int64 (Go writes `int` as Int32 when it fits, and then cannot read it back as `int`) |
//! | `int8`, `int16`, `int32`, `uint8`, `uint16` | Int32 |
//! | `uint64`, `uint` above `i64::MAX` | the decimal text (Go's write fails: its document stays STARTED) |
//! | `float32`, `float64` | Double |
//! | `bool`, `string` | Boolean, String |
//! | `[]byte` / `[]uint8` | Binary subtype 0 |
//! | `[]T` | Array of T; a JSON `null` (Go's nil slice) is BSON null |
//! | anything else (maps, structs) | the JSON turned into BSON: integers Int64, fractions Double |
//!
//! Read back, every BSON type is accepted where Go might have written it (Int32 for a 64-bit
//! type, Int64 for a narrow one, Binary as base64), and Go's special case
//! `{type: "json", value: <document>}` (a `string` result that held a JSON object) becomes
//! the `string` result it was, with the object's JSON text.

use base64::Engine;
use machinery_core::{GoValue, TaskResult, json};
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{Binary, Bson, Document, doc};
use serde_json::Value;

/// Go's type for a string result that held a JSON object.
const GO_JSON_TYPE: &str = "json";

/// The BSON array Go stores in `results`.
pub(crate) fn results_to_bson(results: &[TaskResult]) -> Bson {
    Bson::Array(
        results
            .iter()
            .map(|r| {
                let value = serde_json::from_str::<Value>(r.value.get()).unwrap_or(Value::Null);
                Bson::Document(doc! {
                    "type": r.type_name.as_str(),
                    "value": value_to_bson(&r.type_name, &value),
                })
            })
            .collect(),
    )
}

/// A stored `results` array read back; `Err` names what does not fit.
pub(crate) fn results_from_bson(results: &Bson) -> Result<Option<Vec<TaskResult>>, String> {
    let items = match results {
        Bson::Null => return Ok(None),
        Bson::Array(items) => items,
        other => {
            return Err(format!(
                "`results` is a {:?}, not an array",
                other.element_type()
            ));
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let Bson::Document(d) = item else {
                return Err(format!("results[{i}] is not a document"));
            };
            result_from_document(d).map_err(|e| format!("results[{i}]: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn result_from_document(d: &Document) -> Result<TaskResult, String> {
    let type_name = match d.get("type") {
        Some(Bson::String(t)) => t.as_str(),
        Some(_) => return Err("`type` is not a string".to_owned()),
        None => return Err("no `type`".to_owned()),
    };
    let value = d.get("value").unwrap_or(&Bson::Null);
    if type_name == GO_JSON_TYPE {
        // Go decoded a string holding a JSON object and stored the object; give the string
        // back. Its numbers came back as Double: whole ones are written as integers again.
        let text = json::to_string(&bson_to_value(value, Read::GoJson))
            .map_err(|e| format!("json value: {e}"))?;
        return Ok(TaskResult {
            type_name: "string".to_owned(),
            value: json::to_raw(&text),
        });
    }
    let read = if matches!(type_name, "uint" | "uint64" | "[]uint" | "[]uint64") {
        Read::BigUnsigned
    } else {
        Read::Plain
    };
    let value = bson_to_value(value, read);
    let value = match value {
        Value::Null => json::raw_null(),
        value => {
            let raw = json::to_raw(&value);
            // Write the value as Go's json.Marshal would (float64 3 as `3`), where it fits.
            match GoValue::decode(type_name, &raw) {
                Ok(v) => v.to_raw(),
                Err(_) => raw,
            }
        }
    };
    Ok(TaskResult {
        type_name: type_name.to_owned(),
        value,
    })
}

/// `[]uint8` and `[]byte` (Go's `[]byte` prints as `[]uint8`).
fn is_bytes(type_name: &str) -> bool {
    matches!(type_name, "[]uint8" | "[]byte")
}

fn value_to_bson(type_name: &str, value: &Value) -> Bson {
    if value.is_null() {
        return Bson::Null;
    }
    if is_bytes(type_name)
        && let Some(bytes) = bytes_of(value)
    {
        return Bson::Binary(Binary {
            subtype: BinarySubtype::Generic,
            bytes,
        });
    }
    if let Some(elem) = type_name.strip_prefix("[]")
        && let Value::Array(items) = value
    {
        return Bson::Array(items.iter().map(|v| value_to_bson(elem, v)).collect());
    }
    match (type_name, value) {
        ("int8" | "int16" | "int32" | "uint8" | "uint16", Value::Number(n)) => {
            if let Some(i) = n.as_i64().and_then(|i| i32::try_from(i).ok()) {
                return Bson::Int32(i);
            }
        }
        ("int" | "int64" | "uint" | "uint32" | "uint64", Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                return Bson::Int64(i);
            }
            if let Some(u) = n.as_u64() {
                // Over i64::MAX: no BSON integer holds it, the text does exactly.
                return Bson::String(u.to_string());
            }
        }
        ("float32" | "float64", Value::Number(n)) => {
            if let Some(f) = n.as_f64() {
                return Bson::Double(f);
            }
        }
        _ => {}
    }
    json_to_bson(value)
}

/// Bytes from Go's JSON forms: base64 text or an array of numbers.
fn bytes_of(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::String(s) => base64::engine::general_purpose::STANDARD.decode(s).ok(),
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_u64().and_then(|n| u8::try_from(n).ok()))
            .collect(),
        _ => None,
    }
}

/// Plain JSON to BSON: integers Int64, other numbers Double.
pub(crate) fn json_to_bson(value: &Value) -> Bson {
    match value {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Bson::Int64(i),
            (None, Some(u)) => Bson::String(u.to_string()),
            _ => Bson::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Bson::String(s.clone()),
        Value::Array(items) => Bson::Array(items.iter().map(json_to_bson).collect()),
        Value::Object(map) => Bson::Document(
            map.iter()
                .map(|(k, v)| (k.clone(), json_to_bson(v)))
                .collect(),
        ),
    }
}

/// How [`bson_to_value`] reads numbers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Read {
    /// As they are.
    Plain,
    /// An unsigned 64-bit type: text holding an integer above `i64::MAX` is that integer.
    BigUnsigned,
    /// Go's `json` special case: every number is a Double; whole ones are integers.
    GoJson,
}

/// BSON to plain JSON.
fn bson_to_value(value: &Bson, read: Read) -> Value {
    let again = |v: &Bson| bson_to_value(v, read);
    match value {
        Bson::Null | Bson::Undefined => Value::Null,
        Bson::Boolean(b) => Value::Bool(*b),
        Bson::Int32(i) => Value::from(*i),
        Bson::Int64(i) => Value::from(*i),
        Bson::Double(f) => {
            if read == Read::GoJson && f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
                #[allow(clippy::cast_possible_truncation)]
                Value::from(*f as i64)
            } else {
                serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)
            }
        }
        Bson::String(s) => match s.parse::<u64>() {
            // An integer too large for Int64 was stored as its text.
            Ok(u) if read == Read::BigUnsigned && u > i64::MAX.unsigned_abs() => Value::from(u),
            _ => Value::String(s.clone()),
        },
        Bson::Array(items) => Value::Array(items.iter().map(again).collect()),
        Bson::Document(d) => Value::Object(d.iter().map(|(k, v)| (k.clone(), again(v))).collect()),
        Bson::Binary(b) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(&b.bytes))
        }
        Bson::DateTime(t) => t
            .try_to_rfc3339_string()
            .map_or_else(|_| Value::from(t.timestamp_millis()), Value::String),
        Bson::ObjectId(id) => Value::String(id.to_hex()),
        Bson::Decimal128(d) => Value::String(d.to_string()),
        other => other.clone().into_relaxed_extjson(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(t: &str, v: &str) -> TaskResult {
        TaskResult {
            type_name: t.to_owned(),
            value: serde_json::value::RawValue::from_string(v.to_owned()).unwrap(),
        }
    }

    fn roundtrip(t: &str, v: &str) -> (Bson, TaskResult) {
        let bson = results_to_bson(&[result(t, v)]);
        let back = results_from_bson(&bson).unwrap().unwrap().remove(0);
        let Bson::Array(a) = bson else { panic!() };
        let Bson::Document(d) = &a[0] else { panic!() };
        (d.get("value").unwrap().clone(), back)
    }

    #[test]
    fn sixty_four_bit_integers_are_int64() {
        for t in ["int", "int64", "uint", "uint32", "uint64"] {
            let (b, back) = roundtrip(t, "5");
            assert_eq!(b, Bson::Int64(5), "{t}");
            assert_eq!(back, result(t, "5"));
        }
        let (b, _) = roundtrip("int8", "-8");
        assert_eq!(b, Bson::Int32(-8));
    }

    #[test]
    fn uint64_above_int64_survives() {
        let (b, back) = roundtrip("uint64", "18446744073709551615");
        assert_eq!(b, Bson::String("18446744073709551615".into()));
        assert_eq!(back, result("uint64", "18446744073709551615"));
    }

    #[test]
    fn bytes_are_binary() {
        let (b, back) = roundtrip("[]uint8", r#""aGkA/w==""#);
        assert_eq!(
            b,
            Bson::Binary(Binary {
                subtype: BinarySubtype::Generic,
                bytes: b"hi\x00\xff".to_vec()
            })
        );
        assert_eq!(back, result("[]uint8", r#""aGkA/w==""#));
    }

    #[test]
    fn floats_are_written_as_go_does() {
        let (b, back) = roundtrip("float64", "3");
        assert_eq!(b, Bson::Double(3.0));
        assert_eq!(back, result("float64", "3"));
    }

    #[test]
    fn nil_slice_stays_null() {
        let (b, back) = roundtrip("[]string", "null");
        assert_eq!(b, Bson::Null);
        assert_eq!(back, result("[]string", "null"));
    }

    #[test]
    fn go_json_type_reads_as_the_string() {
        let stored = Bson::Array(vec![Bson::Document(doc! {
            "type": "json",
            "value": {"a": 1.0, "b": "x", "c": [1.0, 2.5]},
        })]);
        let back = results_from_bson(&stored).unwrap().unwrap();
        assert_eq!(back[0].type_name, "string");
        assert_eq!(
            back[0].get::<String>().unwrap(),
            r#"{"a":1,"b":"x","c":[1,2.5]}"#
        );
    }
}
