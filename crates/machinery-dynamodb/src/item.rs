//! Go's item layout: task states and group metas to and from DynamoDB attribute values,
//! result values with their types, Go's `%v` text form, both `CreatedAt` forms, item sizes.

use std::collections::HashMap;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue as Av;
use base64::Engine as _;
use chrono::DateTime;
use machinery_core::time::{self, Timestamp};
use machinery_core::{Error, GoValue, GroupMeta, Result, State, TaskResult, TaskState, json};
use serde_json::value::RawValue;

/// An item as the SDK gives and takes it.
pub(crate) type Item = HashMap<String, Av>;

// Go's attribute names (the field names of its TaskState and GroupMeta structs).
pub(crate) const TASK_UUID: &str = "TaskUUID";
pub(crate) const TASK_NAME: &str = "TaskName";
pub(crate) const STATE: &str = "State";
pub(crate) const RESULTS: &str = "Results";
pub(crate) const ERROR: &str = "Error";
pub(crate) const CREATED_AT: &str = "CreatedAt";
pub(crate) const TTL: &str = "TTL";
pub(crate) const GROUP_UUID: &str = "GroupUUID";
pub(crate) const TASK_UUIDS: &str = "TaskUUIDs";
pub(crate) const CHORD_TRIGGERED: &str = "ChordTriggered";
pub(crate) const LOCK: &str = "Lock";
/// Ours: the string set of members that reached SUCCESS or FAILURE (Go ignores it).
pub(crate) const DONE_TASK_UUIDS: &str = "DoneTaskUUIDs";

// Inside one result map.
const TYPE: &str = "Type";
const VALUE: &str = "Value";
/// Ours: the exact JSON text of a value that has no faithful DynamoDB form (Go ignores it).
const JSON: &str = "JSON";

/// DynamoDB's item size limit (400 KB).
pub(crate) const ITEM_LIMIT: usize = 400 * 1024;

fn s(v: impl Into<String>) -> Av {
    Av::S(v.into())
}

fn n(v: impl ToString) -> Av {
    Av::N(v.to_string())
}

// ---------------------------------------------------------------------------------------------
// Results

/// One result as the map `{Type: S, Value: <typed>}` (or `{Type: S, JSON: S}`).
///
/// The value gets the DynamoDB type that keeps it exactly: numbers N, `bool` BOOL, `string`
/// S, `[]uint8` B, other slices L of those, JSON `null` NULL. A value that would not read
/// back byte for byte that way (a type outside WIRE.md section 2, a float beyond N's range,
/// a non-canonical literal) is kept as its JSON text in `JSON` instead.
pub(crate) fn result_to_av(r: &TaskResult) -> Av {
    let mut m = HashMap::with_capacity(2);
    m.insert(TYPE.to_owned(), s(&r.type_name));
    match typed_value(&r.type_name, &r.value) {
        Some(v) => m.insert(VALUE.to_owned(), v),
        None => m.insert(JSON.to_owned(), s(r.value.get())),
    };
    Av::M(m)
}

fn typed_value(type_name: &str, raw: &RawValue) -> Option<Av> {
    let text = raw.get().trim();
    if text == "null" {
        return Some(Av::Null(true));
    }
    let value = GoValue::decode(type_name, raw).ok()?;
    let av = go_value_to_av(&value)?;
    // Keep the typed form only when it reads back as exactly these bytes.
    let back = typed_to_json(type_name, &av).ok()?;
    (back.get() == text).then_some(av)
}

fn float_n(text: String, f: f64) -> Option<Av> {
    // N holds 38 digits between 1e-130 and 1e126; a negative zero would come back as 0.
    let a = f.abs();
    if !f.is_finite()
        || (f == 0.0 && f.is_sign_negative())
        || (a != 0.0 && !(1e-130..1e126).contains(&a))
    {
        return None;
    }
    Some(Av::N(text))
}

fn go_value_to_av(v: &GoValue) -> Option<Av> {
    fn list<T>(items: &[T], f: impl Fn(&T) -> Option<Av>) -> Option<Av> {
        items.iter().map(f).collect::<Option<Vec<_>>>().map(Av::L)
    }
    Some(match v {
        GoValue::Bool(b) => Av::Bool(*b),
        GoValue::Int(i) | GoValue::Int64(i) => n(i),
        GoValue::Int8(i) => n(i),
        GoValue::Int16(i) => n(i),
        GoValue::Int32(i) => n(i),
        GoValue::Uint(u) | GoValue::Uint64(u) => n(u),
        GoValue::Uint8(u) => n(u),
        GoValue::Uint16(u) => n(u),
        GoValue::Uint32(u) => n(u),
        GoValue::Float32(f) => float_n(json::format_f32(*f), f64::from(*f))?,
        GoValue::Float64(f) => float_n(json::format_f64(*f), *f)?,
        GoValue::String(t) => s(t),
        GoValue::Bytes(b) => Av::B(Blob::new(b.clone())),
        GoValue::BoolSlice(v) => list(v, |b| Some(Av::Bool(*b)))?,
        GoValue::IntSlice(v) | GoValue::Int64Slice(v) => list(v, |i| Some(n(i)))?,
        GoValue::Int8Slice(v) => list(v, |i| Some(n(i)))?,
        GoValue::Int16Slice(v) => list(v, |i| Some(n(i)))?,
        GoValue::Int32Slice(v) => list(v, |i| Some(n(i)))?,
        GoValue::UintSlice(v) | GoValue::Uint64Slice(v) => list(v, |u| Some(n(u)))?,
        GoValue::Uint16Slice(v) => list(v, |u| Some(n(u)))?,
        GoValue::Uint32Slice(v) => list(v, |u| Some(n(u)))?,
        GoValue::Float32Slice(v) => list(v, |f| float_n(json::format_f32(*f), f64::from(*f)))?,
        GoValue::Float64Slice(v) => list(v, |f| float_n(json::format_f64(*f), *f))?,
        GoValue::StringSlice(v) => list(v, |t| Some(s(t)))?,
    })
}

/// Read one result map back: ours (typed `Value` or `JSON`) or Go's (`Value` as `%v` text).
pub(crate) fn av_to_result(av: &Av) -> Result<TaskResult> {
    let Av::M(m) = av else {
        return Err(Error::decode(
            "task state",
            format!("a result is not a map: {av:?}"),
        ));
    };
    let type_name = match m.get(TYPE) {
        Some(Av::S(t)) => t.clone(),
        _ => String::new(),
    };
    let value = if let Some(Av::S(text)) = m.get(JSON) {
        RawValue::from_string(text.clone())
            .map_err(|e| Error::decode("task state", format!("result JSON {text:?}: {e}")))?
    } else {
        match m.get(VALUE) {
            None | Some(Av::Null(_)) => json::raw_null(),
            Some(Av::S(text)) if type_name != "string" => go_text(&type_name, text),
            Some(v) => typed_to_json(&type_name, v)?,
        }
    };
    Ok(TaskResult { type_name, value })
}

/// A typed value as JSON in Go's form: the generic mapping, then canonical by the Go type.
fn typed_to_json(type_name: &str, av: &Av) -> Result<Box<RawValue>> {
    let text = av_json(av)?;
    let raw = RawValue::from_string(text)
        .map_err(|e| Error::decode("task state", format!("result value: {e}")))?;
    Ok(canonical(type_name, raw))
}

/// Go's JSON for a known type (shortest floats, base64 bytes); unknown types unchanged.
fn canonical(type_name: &str, raw: Box<RawValue>) -> Box<RawValue> {
    if raw.get() == "null" {
        return raw;
    }
    match GoValue::decode(type_name, &raw) {
        Ok(v) => v.to_raw(),
        Err(_) => raw,
    }
}

fn av_json(av: &Av) -> Result<String> {
    let bad = |what: &str| Error::decode("task state", format!("result value: {what}"));
    Ok(match av {
        Av::S(t) => json::to_string(t).map_err(|e| bad(&e.to_string()))?,
        Av::N(t) => number_json(t).ok_or_else(|| bad(&format!("N {t:?} is not a number")))?,
        Av::Bool(b) => b.to_string(),
        Av::Null(_) => "null".to_owned(),
        Av::B(b) => format!(
            "\"{}\"",
            base64::engine::general_purpose::STANDARD.encode(b.as_ref())
        ),
        Av::L(items) => {
            let parts = items.iter().map(av_json).collect::<Result<Vec<_>>>()?;
            format!("[{}]", parts.join(","))
        }
        Av::M(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let mut parts = Vec::with_capacity(keys.len());
            for k in keys {
                let key = json::to_string(k).map_err(|e| bad(&e.to_string()))?;
                parts.push(format!("{key}:{}", av_json(&m[k])?));
            }
            format!("{{{}}}", parts.join(","))
        }
        Av::Ss(v) => json::to_string(v).map_err(|e| bad(&e.to_string()))?,
        Av::Ns(v) => {
            let parts = v
                .iter()
                .map(|t| number_json(t).ok_or_else(|| bad(&format!("N {t:?} is not a number"))))
                .collect::<Result<Vec<_>>>()?;
            format!("[{}]", parts.join(","))
        }
        Av::Bs(v) => {
            let parts: Vec<String> = v
                .iter()
                .map(|b| {
                    format!(
                        "\"{}\"",
                        base64::engine::general_purpose::STANDARD.encode(b.as_ref())
                    )
                })
                .collect();
            format!("[{}]", parts.join(","))
        }
        other => return Err(bad(&format!("unknown attribute type {other:?}"))),
    })
}

/// DynamoDB's number text as a JSON number.
fn number_json(t: &str) -> Option<String> {
    let t = t.trim();
    if serde_json::from_str::<serde_json::Number>(t).is_ok() {
        return Some(t.to_owned());
    }
    let f: f64 = t.parse().ok()?;
    f.is_finite().then(|| json::format_f64(f))
}

// ---------------------------------------------------------------------------------------------
// Go's `%v` text form (what Go's DynamoDB backend writes for every result)

/// A result value Go wrote as `fmt.Sprintf("%v", v)`, back as JSON of its type where the
/// text says enough: numbers, bools, `[a b]` slices (elements split on spaces),
/// `[104 105]` bytes, `map[a:1 b:2]` maps. Text that does not fit the type stays a JSON
/// string, so reading never fails and `TaskResult::get` names the mismatch.
pub(crate) fn go_text(type_name: &str, text: &str) -> Box<RawValue> {
    go_text_json(type_name, text)
        .and_then(|j| RawValue::from_string(j).ok())
        .map(|raw| canonical(type_name, raw))
        .filter(|raw| GoValue::decode(type_name, raw).is_ok() || type_name.starts_with("map["))
        .unwrap_or_else(|| json::to_raw(text))
}

fn go_text_json(type_name: &str, text: &str) -> Option<String> {
    if let Some(elem) = type_name.strip_prefix("[]") {
        let inner = text.strip_prefix('[')?.strip_suffix(']')?;
        let items: Vec<&str> = inner.split(' ').filter(|t| !t.is_empty()).collect();
        if elem == "uint8" || elem == "byte" {
            let bytes = items
                .iter()
                .map(|t| t.parse::<u8>().ok())
                .collect::<Option<Vec<u8>>>()?;
            return Some(format!(
                "\"{}\"",
                base64::engine::general_purpose::STANDARD.encode(bytes)
            ));
        }
        let parts = items
            .iter()
            .map(|t| scalar_text_json(elem, t))
            .collect::<Option<Vec<_>>>()?;
        return Some(format!("[{}]", parts.join(",")));
    }
    if let Some(rest) = type_name.strip_prefix("map[") {
        let (key_type, value_type) = rest.split_once(']')?;
        let inner = text.strip_prefix("map[")?.strip_suffix(']')?;
        let mut entries = Vec::new();
        for pair in inner.split(' ').filter(|t| !t.is_empty()) {
            let (k, v) = pair.split_once(':')?;
            if key_type != "string" {
                scalar_text_json(key_type, k)?;
            }
            entries.push((k.to_owned(), scalar_text_json(value_type, v)?));
        }
        entries.sort();
        let parts = entries
            .iter()
            .map(|(k, v)| Some(format!("{}:{v}", json::to_string(k).ok()?)))
            .collect::<Option<Vec<_>>>()?;
        return Some(format!("{{{}}}", parts.join(",")));
    }
    scalar_text_json(type_name, text)
}

fn scalar_text_json(type_name: &str, text: &str) -> Option<String> {
    match type_name {
        "string" => json::to_string(text).ok(),
        "bool" => matches!(text, "true" | "false").then(|| text.to_owned()),
        "int" | "int8" | "int16" | "int32" | "int64" => {
            text.parse::<i64>().ok().map(|i| i.to_string())
        }
        "uint" | "uint8" | "uint16" | "uint32" | "uint64" => {
            text.parse::<u64>().ok().map(|u| u.to_string())
        }
        "float32" => text
            .parse::<f32>()
            .ok()
            .filter(|f| f.is_finite())
            .map(json::format_f32),
        "float64" => text
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(json::format_f64),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// CreatedAt

/// Go writes RFC 3339 on PENDING (`time.Time`'s text form) and `time.Time.String()`
/// (`2006-01-02 15:04:05.999999999 -0700 MST`, maybe followed by ` m=+0.000000001`) when
/// an update carries a creation time. Both read; anything else is Go's zero time.
pub(crate) fn parse_created_at(text: &str) -> Option<Timestamp> {
    let text = text.trim();
    if let Ok(t) = time::parse(text) {
        return Some(t);
    }
    let text = match text.find(" m=") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut parts = text.split(' ');
    let (date, clock, offset) = (parts.next()?, parts.next()?, parts.next()?);
    DateTime::parse_from_str(
        &format!("{date} {clock} {offset}"),
        "%Y-%m-%d %H:%M:%S%.f %z",
    )
    .ok()
}

// ---------------------------------------------------------------------------------------------
// Task states

/// The whole item Go's PENDING `PutItem` writes (and ours): every attribute, `Results`
/// NULL unless given, `TTL` as given (Go: 0).
pub(crate) fn state_item(state: &TaskState, ttl: i64) -> Item {
    let mut item = Item::with_capacity(7);
    item.insert(TASK_UUID.to_owned(), s(&state.task_uuid));
    item.insert(TASK_NAME.to_owned(), s(&state.task_name));
    item.insert(STATE.to_owned(), s(state.state.as_str()));
    item.insert(RESULTS.to_owned(), results_av(state.results.as_deref()));
    item.insert(ERROR.to_owned(), s(&state.error));
    item.insert(CREATED_AT.to_owned(), s(time::format(&state.created_at)));
    item.insert(TTL.to_owned(), n(ttl));
    item
}

pub(crate) fn results_av(results: Option<&[TaskResult]>) -> Av {
    match results {
        None => Av::Null(true),
        Some(rs) => Av::L(rs.iter().map(result_to_av).collect()),
    }
}

pub(crate) fn ttl_of(item: &Item) -> i64 {
    match item.get(TTL) {
        Some(Av::N(t)) => t
            .parse::<i64>()
            .ok()
            .or_else(|| t.parse::<f64>().ok().map(|f| f as i64))
            .unwrap_or(0),
        _ => 0,
    }
}

/// Whether the item's `TTL` (Unix seconds, 0 = none) has passed at `now_ms`.
pub(crate) fn expired(item: &Item, now_ms: i64) -> bool {
    let ttl = ttl_of(item);
    ttl > 0 && now_ms >= ttl.saturating_mul(1000)
}

fn get_s<'a>(item: &'a Item, key: &str) -> &'a str {
    match item.get(key) {
        Some(Av::S(v)) => v,
        _ => "",
    }
}

/// A task state from an item written by Go or by us. Missing attributes read as Go's zero
/// values; an unknown `State` is an error.
pub(crate) fn item_to_state(item: &Item) -> Result<TaskState> {
    let state_text = get_s(item, STATE);
    let state = State::parse(state_text).ok_or_else(|| {
        Error::decode(
            "task state",
            format!(
                "unknown State {state_text:?} in the item of {}",
                get_s(item, TASK_UUID)
            ),
        )
    })?;
    let results = match item.get(RESULTS) {
        None | Some(Av::Null(_)) => None,
        Some(Av::L(items)) => Some(items.iter().map(av_to_result).collect::<Result<Vec<_>>>()?),
        Some(other) => {
            return Err(Error::decode(
                "task state",
                format!("Results is neither a list nor NULL: {other:?}"),
            ));
        }
    };
    let created_at = match item.get(CREATED_AT) {
        Some(Av::S(t)) => parse_created_at(t).unwrap_or_else(|| {
            tracing::warn!(created_at = %t, task = get_s(item, TASK_UUID), "unreadable CreatedAt; using the zero time");
            time::zero()
        }),
        _ => time::zero(),
    };
    Ok(TaskState {
        task_uuid: get_s(item, TASK_UUID).to_owned(),
        task_name: get_s(item, TASK_NAME).to_owned(),
        state,
        results,
        error: get_s(item, ERROR).to_owned(),
        created_at,
        ttl: ttl_of(item),
    })
}

// ---------------------------------------------------------------------------------------------
// Group metas

/// Go's InitGroup item.
pub(crate) fn group_item(meta: &GroupMeta) -> Item {
    let mut item = Item::with_capacity(6);
    item.insert(GROUP_UUID.to_owned(), s(&meta.group_uuid));
    item.insert(
        TASK_UUIDS.to_owned(),
        Av::L(meta.task_uuids.iter().map(s).collect()),
    );
    item.insert(CHORD_TRIGGERED.to_owned(), Av::Bool(meta.chord_triggered));
    item.insert(LOCK.to_owned(), Av::Bool(meta.lock));
    item.insert(CREATED_AT.to_owned(), s(time::format(&meta.created_at)));
    item.insert(TTL.to_owned(), n(meta.ttl));
    item
}

/// A group meta from an item written by Go or by us.
pub(crate) fn item_to_group(item: &Item) -> GroupMeta {
    let task_uuids = match item.get(TASK_UUIDS) {
        Some(Av::L(v)) => v
            .iter()
            .filter_map(|a| match a {
                Av::S(t) => Some(t.clone()),
                _ => None,
            })
            .collect(),
        Some(Av::Ss(v)) => v.clone(),
        _ => Vec::new(),
    };
    let flag = |k: &str| matches!(item.get(k), Some(Av::Bool(true)));
    GroupMeta {
        group_uuid: get_s(item, GROUP_UUID).to_owned(),
        task_uuids,
        chord_triggered: flag(CHORD_TRIGGERED),
        lock: flag(LOCK),
        created_at: match item.get(CREATED_AT) {
            Some(Av::S(t)) => parse_created_at(t).unwrap_or_else(time::zero),
            _ => time::zero(),
        },
        ttl: ttl_of(item),
    }
}

// ---------------------------------------------------------------------------------------------
// Sizes

/// DynamoDB's size of an attribute value (numbers counted by their text, a slight
/// over-estimate).
pub(crate) fn av_size(av: &Av) -> usize {
    match av {
        Av::S(t) | Av::N(t) => t.len(),
        Av::B(b) => b.as_ref().len(),
        Av::Bool(_) | Av::Null(_) => 1,
        Av::L(v) => 3 + v.iter().map(|a| 1 + av_size(a)).sum::<usize>(),
        Av::M(m) => {
            3 + m
                .iter()
                .map(|(k, a)| 1 + k.len() + av_size(a))
                .sum::<usize>()
        }
        Av::Ss(v) | Av::Ns(v) => v.iter().map(String::len).sum(),
        Av::Bs(v) => v.iter().map(|b| b.as_ref().len()).sum(),
        _ => 0,
    }
}

/// DynamoDB's size of an item: attribute names plus values.
pub(crate) fn item_size(item: &Item) -> usize {
    item.iter().map(|(k, v)| k.len() + av_size(v)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(t: &str) -> Box<RawValue> {
        RawValue::from_string(t.to_owned()).unwrap()
    }

    fn roundtrip(type_name: &str, value: &str) -> (Av, String) {
        let r = TaskResult {
            type_name: type_name.to_owned(),
            value: raw(value),
        };
        let av = result_to_av(&r);
        let back = av_to_result(&av).unwrap();
        assert_eq!(back.type_name, type_name);
        (av, back.value.get().to_owned())
    }

    fn value_of(av: &Av) -> &Av {
        match av {
            Av::M(m) => m.get(VALUE).or_else(|| m.get(JSON)).unwrap(),
            _ => panic!("not a map"),
        }
    }

    #[test]
    fn every_type_reads_back_exactly() {
        let cases = [
            ("bool", "true"),
            ("int", "-5"),
            ("int8", "-128"),
            ("int16", "32767"),
            ("int32", "-7"),
            ("int64", "-9223372036854775808"),
            ("uint", "18446744073709551615"),
            ("uint8", "255"),
            ("uint16", "65535"),
            ("uint32", "4294967295"),
            ("uint64", "18446744073709551615"),
            ("float32", "1.5"),
            ("float64", "3.14"),
            ("float64", "1e+21"),
            ("float64", "1e+300"),
            ("float64", "5e-324"),
            ("float64", "-0"),
            ("float64", "100"),
            ("string", r#""a\u003cb\u003e \u0026 \"q\" é \\ \n""#),
            ("string", r#""""#),
            ("[]string", r#"["x","","z"]"#),
            ("[]uint8", r#""AQID""#),
            ("[]uint8", r#""""#),
            ("[]byte", r#""aGkA/w==""#),
            ("[]int64", "[]"),
            ("[]int64", "[1,-2,3]"),
            ("[]float64", "[1.5,2.7,1e+21]"),
            ("[]float32", "[0.1]"),
            ("[]bool", "[true,false]"),
            ("[]uint64", "[18446744073709551615]"),
            ("[]string", "null"),
            ("map[string]int64", r#"{"a":1,"b":2}"#),
            ("[][]int64", "[[1,2],[3]]"),
            ("float64", "1.0"),
            ("[]uint8", "[1,2,3]"),
            ("error", "null"),
        ];
        for (t, v) in cases {
            let (_, back) = roundtrip(t, v);
            assert_eq!(back, v, "{t} {v}");
        }
    }

    #[test]
    fn dynamodb_types_per_go_type() {
        assert!(matches!(value_of(&roundtrip("int64", "2").0), Av::N(t) if t == "2"));
        assert!(matches!(value_of(&roundtrip("float64", "3.25").0), Av::N(t) if t == "3.25"));
        assert!(matches!(
            value_of(&roundtrip("bool", "false").0),
            Av::Bool(false)
        ));
        assert!(matches!(value_of(&roundtrip("string", "\"x\"").0), Av::S(t) if t == "x"));
        assert!(
            matches!(value_of(&roundtrip("[]uint8", "\"aGk=\"").0), Av::B(b) if b.as_ref() == b"hi")
        );
        assert!(matches!(value_of(&roundtrip("[]string", "[\"a\"]").0), Av::L(v) if v.len() == 1));
        assert!(matches!(
            value_of(&roundtrip("[]int64", "null").0),
            Av::Null(true)
        ));
        // No faithful DynamoDB form: the JSON text.
        assert!(matches!(value_of(&roundtrip("float64", "1e+300").0), Av::S(t) if t == "1e+300"));
        assert!(matches!(
            value_of(&roundtrip("map[string]int64", "{\"a\":1}").0),
            Av::S(_)
        ));
    }

    #[test]
    fn server_normalised_numbers_read_in_go_form() {
        let mut m = HashMap::new();
        m.insert(TYPE.to_owned(), s("float64"));
        m.insert(VALUE.to_owned(), Av::N("1000000000000000000000".to_owned()));
        assert_eq!(av_to_result(&Av::M(m)).unwrap().value.get(), "1e+21");
    }

    #[test]
    fn go_text_form_reads_with_types() {
        let cases = [
            ("int64", "42", "42"),
            ("float64", "3.25", "3.25"),
            ("float64", "3", "3"),
            ("float32", "1.5", "1.5"),
            ("float64", "1e-07", "1e-7"),
            ("bool", "true", "true"),
            ("string", "hello", "\"hello\""),
            ("[]string", "[a b]", r#"["a","b"]"#),
            ("[]uint8", "[104 105 0 255]", r#""aGkA/w==""#),
            ("[]int64", "[]", "[]"),
            ("[]int64", "[1 2]", "[1,2]"),
            ("[]float64", "[1.5 2.7]", "[1.5,2.7]"),
            ("uint64", "18446744073709551615", "18446744073709551615"),
            ("map[string]int64", "map[a:1 b:2]", r#"{"a":1,"b":2}"#),
            ("int64", "not a number", "\"not a number\""),
            ("uint8", "300", "\"300\""),
        ];
        for (t, text, want) in cases {
            assert_eq!(go_text(t, text).get(), want, "{t} {text}");
        }
    }

    #[test]
    fn both_created_at_forms() {
        let a = parse_created_at("2026-11-30T03:10:33.592161119Z").unwrap();
        let b = parse_created_at("2026-11-30 03:10:33.592161119 +0000 UTC").unwrap();
        let c = parse_created_at("2026-11-30 03:10:33.592161119 +0000 UTC m=+0.012345678").unwrap();
        let d = parse_created_at("2026-11-30 04:10:33.592161119 +0100 CET").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a, d);
        assert!(parse_created_at("yesterday").is_none());
    }

    #[test]
    fn sizes() {
        let mut item = Item::new();
        item.insert("ab".to_owned(), s("xyz"));
        item.insert("L".to_owned(), Av::L(vec![s("a"), Av::Bool(true)]));
        assert_eq!(item_size(&item), 2 + 3 + 1 + (3 + 2 + 2));
    }
}
