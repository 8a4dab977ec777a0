//! Golden test: `GoValue::decode` against every row of `args-reflect.json`, the table of what
//! Go Machinery's `tasks.ReflectValue` does with each `(Type, Value)` pair.
//!
//! * Rows without a `note`: we accept exactly what Go accepts, produce the same value, and
//!   reject with Go's exact error text.
//! * Rows with a `note` mark Go defects; each one has a documented decision in [`NOTED`].

mod common;

use std::collections::HashSet;

use machinery_core::GoValue;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

#[derive(Debug, Deserialize)]
struct Row {
    #[serde(rename = "type")]
    type_name: String,
    json_value: String,
    ok: bool,
    #[serde(default)]
    value: Option<Value>,
    #[serde(default)]
    go_type: Option<String>,
    #[serde(default)]
    go_value: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    panic: bool,
}

impl Row {
    fn decode(&self) -> Result<GoValue, machinery_core::ArgError> {
        let raw = RawValue::from_string(self.json_value.clone())
            .unwrap_or_else(|e| panic!("row {self:?}: json_value is not json: {e}"));
        GoValue::decode(&self.type_name, &raw)
    }

    fn label(&self) -> String {
        format!("{} {}", self.type_name, self.json_value)
    }
}

fn rows() -> Vec<Row> {
    let path = common::interop_dir().join("args-reflect.json");
    let rows: Vec<Row> = serde_json::from_slice(&common::read(&path))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        rows.len() >= 170,
        "args-reflect.json has only {} rows",
        rows.len()
    );
    rows
}

/// What we do for a row Go gets wrong.
enum Decision {
    /// Rejected with exactly this message.
    Reject(&'static str),
    /// Go's result is harmless and kept: accepted with the row's value.
    KeepGo,
}

use Decision::{KeepGo, Reject};

/// Every noted row: `(type, json_value, decision, why)`.
const NOTED: &[(&str, &str, Decision, &str)] = &[
    // Go's SetInt / SetUint truncate silently. We never truncate.
    (
        "int8",
        "128",
        Reject("128 is out of range for int8"),
        "no silent truncation",
    ),
    (
        "int8",
        "300",
        Reject("300 is out of range for int8"),
        "no silent truncation",
    ),
    (
        "int8",
        "-129",
        Reject("-129 is out of range for int8"),
        "no silent truncation",
    ),
    (
        "int16",
        "32768",
        Reject("32768 is out of range for int16"),
        "no silent truncation",
    ),
    (
        "int32",
        "2147483648",
        Reject("2147483648 is out of range for int32"),
        "no silent truncation",
    ),
    (
        "uint8",
        "256",
        Reject("256 is out of range for uint8"),
        "no silent truncation",
    ),
    (
        "uint16",
        "65536",
        Reject("65536 is out of range for uint16"),
        "no silent truncation",
    ),
    (
        "uint32",
        "4294967296",
        Reject("4294967296 is out of range for uint32"),
        "no silent truncation",
    ),
    (
        "[]int8",
        "[200]",
        Reject("200 is out of range for int8"),
        "no silent truncation, element-wise",
    ),
    (
        "[]uint8",
        "[256]",
        Reject("256 is out of range for uint8"),
        "no silent truncation, element-wise",
    ),
    // Go turns a finite float64 beyond float32's range into +Inf.
    (
        "float32",
        "1e39",
        Reject("1e39 is out of range for float32"),
        "no silent overflow to +Inf",
    ),
    // Go iterates a JSON string or number as bytes for slice types ("97 is not bool").
    // A user sending a scalar for a slice made a mistake: say so plainly.
    (
        "[]bool",
        "\"ab\"",
        Reject("expected a JSON array for []bool, got \"ab\""),
        "scalar for a slice",
    ),
    (
        "[]int64",
        "5",
        Reject("expected a JSON array for []int64, got 5"),
        "scalar for a slice",
    ),
    (
        "[]int64",
        "\"abc\"",
        Reject("expected a JSON array for []int64, got \"abc\""),
        "scalar for a slice",
    ),
    (
        "[]string",
        "\"ab\"",
        Reject("expected a JSON array for []string, got \"ab\""),
        "scalar for a slice",
    ),
    // Go's []byte takes a number's digits as bytes (5 -> [53]); only base64 strings make sense.
    (
        "[]byte",
        "5",
        Reject("expected a JSON array or a base64 string for []byte, got 5"),
        "a number is not bytes",
    ),
    // Go panics (and the whole Go worker crashes) on a bool or object for a slice type.
    (
        "[]int64",
        "{\"a\":1}",
        Reject("expected a JSON array for []int64, got {\"a\":1}"),
        "Go panics; we return an error",
    ),
    (
        "[]int64",
        "true",
        Reject("expected a JSON array for []int64, got true"),
        "Go panics; we return an error",
    ),
    // Go accepts base64 for every []uint* type. Kept: it is lenient input only (we never write
    // it), and the un-noted []uint16 / []uint32 / []uint64 rows of the same table require it.
    (
        "[]uint",
        "\"AQID\"",
        KeepGo,
        "base64 accepted for all unsigned slices, as in Go",
    ),
];

/// The value Go produced for an accepted row, built independently of the decoder from the
/// row's `value` (and `go_value` for floats, which keeps `-0` and float32 rounding).
fn expected(row: &Row) -> GoValue {
    let v = row
        .value
        .as_ref()
        .unwrap_or_else(|| panic!("{}: no value", row.label()));
    let go_value = || row.go_value.as_deref().expect("go_value");
    let i = |v: &Value| {
        v.as_i64()
            .unwrap_or_else(|| panic!("{}: {v} not i64", row.label()))
    };
    let u = |v: &Value| {
        v.as_u64()
            .unwrap_or_else(|| panic!("{}: {v} not u64", row.label()))
    };
    let f = |v: &Value| {
        v.as_f64()
            .unwrap_or_else(|| panic!("{}: {v} not f64", row.label()))
    };
    let arr = || {
        v.as_array()
            .unwrap_or_else(|| panic!("{}: value not an array", row.label()))
    };
    let ints = || arr().iter().map(i).collect::<Vec<_>>();
    let uints = || arr().iter().map(u).collect::<Vec<_>>();
    match row.type_name.as_str() {
        "bool" => GoValue::Bool(v.as_bool().expect("bool")),
        "int" => GoValue::Int(i(v)),
        "int8" => GoValue::Int8(i(v).try_into().expect("int8")),
        "int16" => GoValue::Int16(i(v).try_into().expect("int16")),
        "int32" => GoValue::Int32(i(v).try_into().expect("int32")),
        "int64" => GoValue::Int64(i(v)),
        "uint" => GoValue::Uint(u(v)),
        "uint8" => GoValue::Uint8(u(v).try_into().expect("uint8")),
        "uint16" => GoValue::Uint16(u(v).try_into().expect("uint16")),
        "uint32" => GoValue::Uint32(u(v).try_into().expect("uint32")),
        "uint64" => GoValue::Uint64(u(v)),
        "float32" => GoValue::Float32(go_value().parse().expect("float32 go_value")),
        "float64" => GoValue::Float64(go_value().parse().expect("float64 go_value")),
        "string" => GoValue::String(v.as_str().expect("string").to_owned()),
        "[]bool" => GoValue::BoolSlice(arr().iter().map(|b| b.as_bool().expect("bool")).collect()),
        "[]int" => GoValue::IntSlice(ints()),
        "[]int8" => GoValue::Int8Slice(ints().into_iter().map(|n| n.try_into().unwrap()).collect()),
        "[]int16" => {
            GoValue::Int16Slice(ints().into_iter().map(|n| n.try_into().unwrap()).collect())
        }
        "[]int32" => {
            GoValue::Int32Slice(ints().into_iter().map(|n| n.try_into().unwrap()).collect())
        }
        "[]int64" => GoValue::Int64Slice(ints()),
        "[]uint" => GoValue::UintSlice(uints()),
        "[]uint8" | "[]byte" => {
            GoValue::Bytes(uints().into_iter().map(|n| n.try_into().unwrap()).collect())
        }
        "[]uint16" => {
            GoValue::Uint16Slice(uints().into_iter().map(|n| n.try_into().unwrap()).collect())
        }
        "[]uint32" => {
            GoValue::Uint32Slice(uints().into_iter().map(|n| n.try_into().unwrap()).collect())
        }
        "[]uint64" => GoValue::Uint64Slice(uints()),
        // Go rounds the float64 to float32, as does `as`.
        "[]float32" => GoValue::Float32Slice(arr().iter().map(|x| f(x) as f32).collect()),
        "[]float64" => GoValue::Float64Slice(arr().iter().map(f).collect()),
        "[]string" => GoValue::StringSlice(
            arr()
                .iter()
                .map(|s| s.as_str().expect("string").to_owned())
                .collect(),
        ),
        other => panic!("accepted row with unexpected type {other}"),
    }
}

/// Equal, including the sign of zero (`PartialEq` says `-0 == 0`; the JSON forms differ).
fn assert_same(row: &Row, got: &GoValue, want: &GoValue) {
    assert_eq!(got, want, "{}", row.label());
    assert_eq!(got.to_raw().get(), want.to_raw().get(), "{}", row.label());
}

#[test]
fn every_unnoted_row_matches_go() {
    let mut accepted = 0;
    let mut rejected = 0;
    for row in rows().iter().filter(|r| r.note.is_none()) {
        assert!(!row.panic, "{}: un-noted panic row", row.label());
        let got = row.decode();
        if row.ok {
            let got = got.unwrap_or_else(|e| panic!("{}: Go accepts it, we say {e}", row.label()));
            assert_same(row, &got, &expected(row));
            assert_eq!(
                Some(got.type_name()),
                row.go_type.as_deref(),
                "{}: Go type name",
                row.label()
            );
            accepted += 1;
        } else {
            let want = row.error.as_deref().expect("rejected row has an error");
            match got {
                Ok(v) => panic!("{}: Go rejects it ({want}), we accept {v:?}", row.label()),
                Err(e) => assert_eq!(e.message, want, "{}: error text", row.label()),
            }
            rejected += 1;
        }
    }
    assert!(
        accepted > 80 && rejected > 50,
        "{accepted} accepted, {rejected} rejected"
    );
}

#[test]
fn every_noted_row_follows_its_documented_decision() {
    let mut used = HashSet::new();
    for row in rows().iter().filter(|r| r.note.is_some()) {
        let (idx, (_, _, decision, why)) = NOTED
            .iter()
            .enumerate()
            .find(|(_, (t, j, _, _))| *t == row.type_name && *j == row.json_value)
            .unwrap_or_else(|| {
                panic!(
                    "noted row {} ({:?}) has no documented decision in NOTED",
                    row.label(),
                    row.note
                )
            });
        used.insert(idx);
        let got = row.decode();
        match decision {
            Reject(message) => match got {
                Ok(v) => panic!("{} ({why}): must be rejected, got {v:?}", row.label()),
                Err(e) => assert_eq!(e.message, *message, "{} ({why})", row.label()),
            },
            KeepGo => {
                assert!(row.ok, "{}: KeepGo on a row Go rejects", row.label());
                let got = got.unwrap_or_else(|e| panic!("{} ({why}): {e}", row.label()));
                assert_same(row, &got, &expected(row));
            }
        }
    }
    let stale: Vec<_> = NOTED
        .iter()
        .enumerate()
        .filter(|(i, _)| !used.contains(i))
        .map(|(_, (t, j, _, _))| format!("{t} {j}"))
        .collect();
    assert!(
        stale.is_empty(),
        "NOTED entries without a noted row: {stale:?}"
    );
}

#[test]
fn noted_rows_are_go_defects_we_do_not_copy() {
    // Sanity on the fixture: each noted row is a truncation, overflow, byte iteration, base64
    // leniency or panic, i.e. the categories NOTED decides on.
    for row in rows().iter().filter(|r| r.note.is_some()) {
        let note = row.note.as_deref().unwrap_or_default();
        assert!(
            [
                "truncates",
                "overflows",
                "iterated",
                "base64",
                "panics",
                "NOT base64"
            ]
            .iter()
            .any(|k| note.contains(k)),
            "{}: unexpected note category {note:?}",
            row.label()
        );
    }
}

#[test]
fn every_supported_type_is_covered_by_the_table() {
    let rows = rows();
    let types: HashSet<&str> = rows.iter().map(|r| r.type_name.as_str()).collect();
    for t in [
        "bool",
        "int",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float32",
        "float64",
        "string",
        "[]bool",
        "[]int",
        "[]int8",
        "[]int16",
        "[]int32",
        "[]int64",
        "[]uint",
        "[]uint8",
        "[]uint16",
        "[]uint32",
        "[]uint64",
        "[]float32",
        "[]float64",
        "[]string",
        "[]byte",
    ] {
        assert!(types.contains(t), "args-reflect.json has no row for {t}");
    }
}
