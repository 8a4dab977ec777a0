use serde_json::value::RawValue;

use super::*;
use crate::state::TaskResult;

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
        Err("cannot use []int64 value [1,300] as Vec<i8>: element 1 (300) is out of range".into())
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
