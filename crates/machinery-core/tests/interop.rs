//! Golden wire tests against the bytes real Go Machinery wrote (`signatures/`, `states/`,
//! `results-cases.json`), plus a round trip of every `GoValue` variant through its JSON form.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use machinery_core::{
    Arg, ArgError, FromResults, GoValue, GroupMeta, Signature, TaskResult, TaskState,
};
use serde::Deserialize;
use serde_json::value::RawValue;

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("fixture is utf-8")
}

/// Byte identity, or a clear report of the first difference.
fn assert_bytes(name: &str, got: &[u8], want: &[u8]) {
    if got != want {
        let at = got.iter().zip(want).take_while(|(a, b)| a == b).count();
        let from = at.saturating_sub(40);
        panic!(
            "{name}: re-encoding differs from Go's bytes at byte {at}\n  go:   ...{}\n  ours: ...{}",
            String::from_utf8_lossy(&want[from..want.len().min(at + 60)]),
            String::from_utf8_lossy(&got[from..got.len().min(at + 60)]),
        );
    }
}

/// Every signature in the tree: itself, then OnSuccess, OnError and ChordCallback (pre-order).
fn walk<'a>(sig: &'a Signature, out: &mut Vec<&'a Signature>) {
    out.push(sig);
    for s in sig.on_success.iter().chain(&sig.on_error) {
        walk(s, out);
    }
    if let Some(cb) = &sig.chord_callback {
        walk(cb, out);
    }
}

fn all_args(sig: &Signature) -> Vec<&Arg> {
    let mut sigs = Vec::new();
    walk(sig, &mut sigs);
    sigs.iter().flat_map(|s| &s.args).collect()
}

fn signature_fixtures() -> Vec<(String, Vec<u8>, Signature)> {
    common::json_files("signatures")
        .into_iter()
        .filter(|p| common::stem(p) != "index")
        .map(|p| {
            let bytes = common::read(&p);
            let sig = Signature::from_json(&bytes)
                .unwrap_or_else(|e| panic!("{}: does not decode: {e}", p.display()));
            (common::stem(&p), bytes, sig)
        })
        .collect()
}

#[test]
fn signature_index_lists_every_fixture() {
    #[derive(Deserialize)]
    struct Entry {
        file: String,
    }
    let dir = common::interop_dir().join("signatures");
    let index: Vec<Entry> =
        serde_json::from_slice(&common::read(&dir.join("index.json"))).expect("index.json");
    let listed: BTreeSet<String> = index.into_iter().map(|e| e.file).collect();
    let present: BTreeSet<String> = signature_fixtures()
        .into_iter()
        .map(|(name, _, _)| format!("{name}.json"))
        .collect();
    assert_eq!(listed, present);
}

#[test]
fn signatures_reencode_to_gos_exact_bytes() {
    let fixtures = signature_fixtures();
    assert!(
        fixtures.len() >= 50,
        "only {} signature fixtures",
        fixtures.len()
    );
    for (name, bytes, sig) in &fixtures {
        // `Signature.args`, `on_success` and `on_error` are Vecs written as `null` when empty, so
        // a Go producer's `"Args":[]` (possible for a hand-built non-nil empty slice) could not
        // come back byte-identical. No Go-written fixture has one: Go's own senders write `null`.
        for key in ["\"Args\":[]", "\"OnSuccess\":[]", "\"OnError\":[]"] {
            assert!(
                !text(bytes).contains(key),
                "{name}: contains {key}; compare JSON values for it instead of bytes"
            );
        }
        let again = sig.to_json().expect("encode");
        assert_bytes(name, &again, bytes);
    }
}

#[test]
fn states_and_group_metas_reencode_to_gos_exact_bytes() {
    let files = common::json_files("states");
    assert!(files.len() >= 40, "only {} state fixtures", files.len());
    for path in files {
        let name = common::stem(&path);
        let bytes = common::read(&path);
        let again = if name.starts_with("group_meta_") {
            let meta = GroupMeta::from_json(&bytes)
                .unwrap_or_else(|e| panic!("{name}: not a GroupMeta: {e}"));
            assert!(!meta.task_uuids.is_empty(), "{name}: TaskUUIDs");
            meta.to_json().expect("encode")
        } else {
            let state = TaskState::from_json(&bytes)
                .unwrap_or_else(|e| panic!("{name}: not a TaskState: {e}"));
            state.to_json().expect("encode")
        };
        assert_bytes(&name, &again, &bytes);
    }
}

/// The values Go was asked to send (index.json `go_call`), in pre-order over the signature tree.
fn expected_args(name: &str) -> Option<Vec<GoValue>> {
    use GoValue as G;
    let i64s = |v: &[i64]| v.iter().map(|&n| G::Int64(n)).collect::<Vec<_>>();
    Some(match name {
        "add_int64" | "marshal_direct_add_int64" => i64s(&[2, 3]),
        "all_options" => i64s(&[1, 2, 2]),
        "chain_head" => i64s(&[1, 1, 2, 2, 5, 6, 4]),
        "chord_member_1" => i64s(&[1, 1, 10]),
        "chord_member_2" => i64s(&[2, 2, 10]),
        "eta_offset" | "eta_past" | "eta_utc" | "headers" | "immutable" | "priority"
        | "retry_opts" | "routing_key" | "sqs_fields" => i64s(&[1, 2]),
        "group_member_1" => i64s(&[1, 1]),
        "group_member_2" => i64s(&[2, 2]),
        "no_args" => vec![],
        "on_error" => vec![G::Int64(7), G::String("ops".into())],
        "arg_named" => vec![G::Int64(1), G::String("x".into())],
        "arg_bool" => vec![G::Bool(true), G::Bool(false)],
        "arg_int" => vec![G::Int(0), G::Int(i64::MAX), G::Int(i64::MIN)],
        "arg_int8" => vec![G::Int8(-128), G::Int8(127), G::Int8(0)],
        "arg_int16" => vec![G::Int16(i16::MIN), G::Int16(i16::MAX)],
        "arg_int32" => vec![G::Int32(i32::MIN), G::Int32(i32::MAX)],
        "arg_int64" => i64s(&[i64::MIN, i64::MAX, 0]),
        "arg_uint" => vec![G::Uint(0), G::Uint(u64::MAX)],
        "arg_uint8" => vec![G::Uint8(0), G::Uint8(255)],
        "arg_uint16" => vec![G::Uint16(0), G::Uint16(u16::MAX)],
        "arg_uint32" => vec![G::Uint32(0), G::Uint32(u32::MAX)],
        "arg_uint64" => vec![G::Uint64(0), G::Uint64(u64::MAX)],
        "arg_float32" => [1.5, 0.1, -0.0, f32::MAX, 100.0].map(G::Float32).to_vec(),
        "arg_float64" => [100.0, 100.5, 1e21, 1e-7, -0.0, 0.1, f64::MAX, 5e-324]
            .map(G::Float64)
            .to_vec(),
        "arg_string" => [
            "",
            "héllo 世界 🚀",
            "<a href=\"x\">&amp;</a>",
            "line\nbreak\ttab\u{1}\\slash/",
            "\u{2028}\u{2029}",
        ]
        .map(|s| G::String(s.to_owned()))
        .to_vec(),
        "arg_slice_bool" => vec![G::BoolSlice(vec![true, false])],
        "arg_slice_int" => vec![G::IntSlice(vec![1, -1, i64::MAX])],
        "arg_slice_int8" => vec![G::Int8Slice(vec![-128, 127])],
        "arg_slice_int16" => vec![G::Int16Slice(vec![i16::MIN, i16::MAX])],
        "arg_slice_int32" => vec![G::Int32Slice(vec![i32::MIN, i32::MAX])],
        "arg_slice_int64" => vec![G::Int64Slice(vec![i64::MIN, 0, i64::MAX])],
        "arg_slice_uint" => vec![G::UintSlice(vec![0, u64::MAX])],
        "arg_slice_uint8" => vec![G::Bytes(vec![0, 1, 255])],
        "arg_slice_uint16" => vec![G::Uint16Slice(vec![0, u16::MAX])],
        "arg_slice_uint32" => vec![G::Uint32Slice(vec![0, u32::MAX])],
        "arg_slice_uint64" => vec![G::Uint64Slice(vec![0, u64::MAX])],
        "arg_slice_float32" => vec![G::Float32Slice(vec![1.5, 0.1, 100.0])],
        "arg_slice_float64" => vec![G::Float64Slice(vec![100.0, 100.5, 1e21])],
        "arg_slice_string" => vec![G::StringSlice(vec!["a".into(), "".into(), "é".into()])],
        "arg_bytes" => vec![G::Bytes(b"hello".to_vec()), G::Bytes(vec![])],
        "arg_slice_empty" | "arg_slice_null" => {
            vec![G::Int64Slice(vec![]), G::StringSlice(vec![])]
        }
        _ => return None,
    })
}

/// Equal including the sign of zero.
fn assert_same(what: &str, got: &GoValue, want: &GoValue) {
    assert_eq!(got, want, "{what}");
    assert_eq!(got.to_raw().get(), want.to_raw().get(), "{what}: json form");
}

/// Our encoding of a value decoded from Go's JSON is Go's JSON again. The one exception is a
/// nil slice: Go writes `null`, we decode it as an empty slice and write `[]` (`""` for bytes).
fn assert_reencodes(what: &str, value: &GoValue, go_raw: &RawValue) {
    let ours = value.to_raw();
    if go_raw.get() == "null" {
        let empty = if matches!(value, GoValue::Bytes(_)) {
            "\"\""
        } else {
            "[]"
        };
        assert_eq!(ours.get(), empty, "{what}: nil slice");
    } else {
        assert_eq!(ours.get(), go_raw.get(), "{what}: re-encoded value");
    }
}

#[test]
fn signature_args_decode_to_the_values_go_sent() {
    for (name, _, sig) in signature_fixtures() {
        let want = expected_args(&name)
            .unwrap_or_else(|| panic!("{name}: add its expected args to expected_args()"));
        let args = all_args(&sig);
        assert_eq!(args.len(), want.len(), "{name}: number of args");
        for (i, (arg, want)) in args.iter().zip(&want).enumerate() {
            let what = format!("{name} arg {i} ({} {})", arg.type_name, arg.value.get());
            let got = arg.decode().unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_same(&what, &got, want);
            assert_reencodes(&what, &got, &arg.value);
            // `[]byte` is spelt `[]uint8` by reflect; both decode to bytes.
            let go_name = if arg.type_name == "[]byte" {
                "[]uint8"
            } else {
                &arg.type_name
            };
            assert_eq!(got.type_name(), go_name, "{what}: type name");
        }
    }
    let named = signature_fixtures()
        .into_iter()
        .find(|(n, _, _)| n == "arg_named")
        .expect("arg_named fixture");
    let names: Vec<&str> = named.2.args.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(named.2.args[0].get::<i64>().unwrap(), 1);
    assert_eq!(named.2.args[1].get::<String>().unwrap(), "x");
}

#[derive(Debug, Deserialize)]
struct Case {
    file: String,
    args: Vec<(String, Box<RawValue>)>,
    state: String,
    results: Option<Vec<(String, Box<RawValue>)>>,
    error: String,
}

fn cases() -> Vec<Case> {
    let path = common::interop_dir().join("results-cases.json");
    serde_json::from_slice(&common::read(&path)).expect("results-cases.json")
}

fn load_state(dir: &Path, case: &Case) -> TaskState {
    let bytes = common::read(&dir.join(&case.file));
    TaskState::from_json(&bytes).unwrap_or_else(|e| panic!("{}: {e}", case.file))
}

const UNSUPPORTED_MAP: &str = "map[string]int64 is not one of supported types";

#[test]
fn state_results_decode_as_go_stored_them() {
    let dir = common::interop_dir();
    let mut checked = 0;
    for case in cases().iter().filter(|c| !c.file.contains("group_meta_")) {
        let state = load_state(&dir, case);
        assert_eq!(state.state.as_str(), case.state, "{}", case.file);
        assert_eq!(state.error, case.error, "{}", case.file);
        let (Some(got), Some(want)) = (&state.results, &case.results) else {
            assert!(
                state.results.is_none() && case.results.is_none(),
                "{}",
                case.file
            );
            continue;
        };
        assert_eq!(got.len(), want.len(), "{}: result count", case.file);
        for (i, (result, (want_type, want_raw))) in got.iter().zip(want).enumerate() {
            let what = format!("{} result {i} ({})", case.file, result.type_name);
            assert_eq!(&result.type_name, want_type, "{what}");
            match result.decode() {
                Ok(value) => {
                    let want = GoValue::decode(want_type, want_raw).expect("same type decodes");
                    assert_same(&what, &value, &want);
                    assert_reencodes(&what, &value, &result.value);
                    checked += 1;
                }
                Err(e) => {
                    // Only Go maps are outside the supported set; they stay readable as JSON.
                    assert_eq!(e.message, UNSUPPORTED_MAP, "{what}");
                    let want: serde_json::Value = serde_json::from_str(want_raw.get()).unwrap();
                    assert_eq!(result.json(), want, "{what}: json()");
                }
            }
        }
    }
    assert!(checked >= 20, "only {checked} results checked");
}

#[test]
fn task_args_of_state_cases_decode_or_fail_like_go() {
    const PREFIX: &str = "Reflect task args error: ";
    for case in cases() {
        let decoded: Vec<Result<GoValue, ArgError>> = case
            .args
            .iter()
            .map(|(t, v)| GoValue::decode(t, v))
            .collect();
        let first_error = decoded.iter().find_map(|r| r.as_ref().err());
        if let Some(go_error) = case.error.strip_prefix(PREFIX) {
            // The Go worker failed the task with ReflectValue's error: we give the same text.
            let ours = first_error.unwrap_or_else(|| panic!("{}: we accept the args", case.file));
            assert_eq!(ours.message, go_error, "{}", case.file);
        } else if case.file.ends_with("received_without_pending.json") {
            // `[]int64` given `true`: Go's ReflectValue panicked and crashed the worker; we
            // return an error instead.
            let ours = first_error.expect("received_without_pending: must be rejected");
            assert_eq!(ours.message, "expected a JSON array for []int64, got true");
        } else {
            assert!(first_error.is_none(), "{}: {first_error:?}", case.file);
        }
    }
}

fn results_of(name: &str) -> Vec<TaskResult> {
    let path = common::interop_dir()
        .join("states")
        .join(format!("{name}.json"));
    TaskState::from_json(&common::read(&path))
        .expect("state")
        .results
        .unwrap_or_default()
}

#[test]
fn from_results_reads_go_results() {
    assert_eq!(i64::from_results(&results_of("success")).unwrap(), 5);
    assert_eq!(
        i64::from_results(&results_of("result_int")).unwrap(),
        i64::MAX
    );
    assert_eq!(
        u64::from_results(&results_of("result_uint64")).unwrap(),
        u64::MAX
    );
    assert_eq!(
        f64::from_results(&results_of("result_float64_big")).unwrap(),
        1e21
    );
    assert_eq!(
        f32::from_results(&results_of("result_float32_tenth")).unwrap(),
        0.1
    );
    // f64 widens a float32 result exactly.
    assert_eq!(
        f64::from_results(&results_of("result_float32")).unwrap(),
        1.5
    );
    assert!(bool::from_results(&results_of("result_bool")).unwrap());
    assert_eq!(
        String::from_results(&results_of("result_string")).unwrap(),
        "héllo <&> 世界 🚀"
    );
    assert_eq!(
        Vec::<String>::from_results(&results_of("result_strings")).unwrap(),
        ["a", "b", ""]
    );
    assert!(
        Vec::<String>::from_results(&results_of("result_strings_nil"))
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        Vec::<i64>::from_results(&results_of("result_int64s")).unwrap(),
        [1, -2, i64::MAX]
    );
    assert_eq!(
        Vec::<u8>::from_results(&results_of("result_bytes")).unwrap(),
        b"hello"
    );
    let (a, b) = <(String, String)>::from_results(&results_of("result_two")).unwrap();
    assert_eq!((a.as_str(), b.as_str()), ("first", "second"));
    <()>::from_results(&results_of("result_error_only")).unwrap();

    let small = results_of("result_small_ints");
    let (i8v, i16v, i32v, u8v, u16v, u32v) =
        <(i8, i16, i32, u8, u16, u32)>::from_results(&small[..6]).unwrap();
    assert_eq!((i8v, i16v, i32v), (i8::MIN, i16::MIN, i32::MIN));
    assert_eq!((u8v, u16v, u32v), (u8::MAX, u16::MAX, u32::MAX));
    let all = Vec::<GoValue>::from_results(&small).unwrap();
    assert_eq!(all.len(), 7);
    assert_eq!(all[6], GoValue::Uint(u64::MAX));

    // Count and type mismatches are named.
    let err = i64::from_results(&results_of("result_two")).unwrap_err();
    assert_eq!(err.message, "expected 1 result, got 2");
    let err = <(i64, i64, i64)>::from_results(&results_of("success")).unwrap_err();
    assert_eq!(err.message, "expected 3 results, got 1");
    let err = i64::from_results(&results_of("result_uint64")).unwrap_err();
    assert_eq!(
        err.message,
        "result 0: cannot use uint64 value 18446744073709551615 as i64: out of range"
    );
    let err = Vec::<GoValue>::from_results(&results_of("result_map")).unwrap_err();
    assert_eq!(err.message, format!("result 0: {UNSUPPORTED_MAP}"));
}

/// Interesting values of every variant (no NaN / infinities: Go cannot encode them).
fn interesting_values() -> Vec<GoValue> {
    use GoValue as G;
    let mut v = vec![G::Bool(true), G::Bool(false)];
    for n in [0, 1, -1, i64::MIN, i64::MAX, (1 << 53) + 1, -(1 << 53) - 1] {
        v.extend([G::Int(n), G::Int64(n)]);
    }
    v.extend([i8::MIN, -1, 0, i8::MAX].map(G::Int8));
    v.extend([i16::MIN, 0, i16::MAX].map(G::Int16));
    v.extend([i32::MIN, 0, i32::MAX].map(G::Int32));
    for n in [0, 1, 1 << 63, u64::MAX, (1 << 53) + 1] {
        v.extend([G::Uint(n), G::Uint64(n)]);
    }
    v.extend([0, 1, u8::MAX].map(G::Uint8));
    v.extend([0, u16::MAX].map(G::Uint16));
    v.extend([0, u32::MAX].map(G::Uint32));
    let f32s = [
        0.0,
        -0.0,
        1.5,
        0.1,
        100.0,
        16_777_216.0,
        f32::MAX,
        f32::MIN,
        f32::MIN_POSITIVE,
        1e-45,
        1e-6,
        9.9e-7,
        1e-7,
        1e20,
        1e21,
        -3.25e-10,
    ];
    let f64s = [
        0.0,
        -0.0,
        0.1,
        100.0,
        100.5,
        1e20,
        1e21,
        1e-6,
        9.99e-7,
        1e-7,
        f64::MAX,
        f64::MIN,
        f64::MIN_POSITIVE,
        5e-324,
        123_456_789.125,
        9_007_199_254_740_993.0,
        -1e300,
        1.0 / 3.0,
    ];
    v.extend(f32s.map(G::Float32));
    v.extend(f64s.map(G::Float64));
    let strings = [
        "",
        "x",
        "<a href=\"x\">&amp;</a>",
        "\u{2028}\u{2029}",
        "\u{0}\u{1}\u{1f}\u{7f}",
        "line\nbreak\ttab\r\\slash/",
        "héllo 世界 🚀",
        "\u{fffd}\u{feff}",
    ];
    v.extend(strings.map(|s| G::String(s.to_owned())));
    v.push(G::String("long ".repeat(200)));
    v.extend([
        G::BoolSlice(vec![]),
        G::BoolSlice(vec![true, false, true]),
        G::IntSlice(vec![]),
        G::IntSlice(vec![i64::MIN, 0, i64::MAX]),
        G::Int8Slice(vec![i8::MIN, i8::MAX]),
        G::Int16Slice(vec![i16::MIN, i16::MAX]),
        G::Int32Slice(vec![i32::MIN, i32::MAX]),
        G::Int64Slice(vec![]),
        G::Int64Slice(vec![i64::MIN, -1, i64::MAX]),
        G::UintSlice(vec![0, u64::MAX]),
        G::Uint16Slice(vec![]),
        G::Uint16Slice(vec![0, u16::MAX]),
        G::Uint32Slice(vec![0, u32::MAX]),
        G::Uint64Slice(vec![0, 1 << 63, u64::MAX]),
        G::Float32Slice(vec![]),
        G::Float32Slice(f32s.to_vec()),
        G::Float64Slice(f64s.to_vec()),
        G::StringSlice(vec![]),
        G::StringSlice(strings.map(str::to_owned).to_vec()),
    ]);
    // Every base64 padding shape, and every byte value.
    for len in 0..=7u8 {
        v.push(G::Bytes((0..len).map(|b| b.wrapping_mul(97)).collect()));
    }
    v.push(G::Bytes((0..=255).collect()));
    v
}

#[test]
fn go_values_roundtrip_through_their_json_form() {
    let values = interesting_values();
    let mut variants = BTreeSet::new();
    for value in &values {
        variants.insert(value.type_name());
        let what = format!("{value:?}");
        let raw = value.to_raw();
        let back = GoValue::decode(value.type_name(), &raw)
            .unwrap_or_else(|e| panic!("{what}: {} does not decode: {e}", raw.get()));
        assert_same(&what, &back, value);

        // The same through an Arg inside a Signature, and a TaskResult inside a TaskState.
        let sig = Signature::new("echo").arg(value.clone());
        let sig = Signature::from_json(&sig.to_json().unwrap()).unwrap();
        assert_same(&what, &sig.args[0].decode().unwrap(), value);
        let state = TaskState {
            results: Some(vec![TaskResult::new(value.clone())]),
            ..TaskState::default()
        };
        let state = TaskState::from_json(&state.to_json().unwrap()).unwrap();
        assert_same(&what, &state.results.unwrap()[0].decode().unwrap(), value);
    }
    assert_eq!(
        variants.len(),
        28,
        "every GoValue variant is exercised: {variants:?}"
    );
}

#[test]
fn arg_encodings_match_go_for_go_written_values() {
    // Spot checks of Go's exact forms (from the fixtures): floats, bytes, strings.
    let cases: &[(GoValue, &str)] = &[
        (GoValue::Float64(100.0), "100"),
        (GoValue::Float64(1e21), "1e+21"),
        (GoValue::Float64(1e-7), "1e-7"),
        (GoValue::Float64(-0.0), "-0"),
        (GoValue::Float32(0.1), "0.1"),
        (GoValue::Float32(f32::MAX), "3.4028235e+38"),
        (GoValue::Bytes(vec![0, 1, 255]), "\"AAH/\""),
        (GoValue::Bytes(vec![]), "\"\""),
        (GoValue::Int64Slice(vec![]), "[]"),
        (
            GoValue::String("<a href=\"x\">&amp;</a>".into()),
            r#""\u003ca href=\"x\"\u003e\u0026amp;\u003c/a\u003e""#,
        ),
        (
            GoValue::String("\u{2028}\u{2029}".into()),
            r#""\u2028\u2029""#,
        ),
        (
            GoValue::String("line\nbreak\ttab\u{1}\\slash/".into()),
            r#""line\nbreak\ttab\u0001\\slash/""#,
        ),
    ];
    for (value, want) in cases {
        assert_eq!(value.to_raw().get(), *want, "{value:?}");
    }
}
