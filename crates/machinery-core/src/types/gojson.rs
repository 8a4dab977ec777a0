//! Go's JSON: values written as Go's `json.Marshal` writes them, and JSON read as Go's decoder
//! reads it with `UseNumber` (numbers keep their literal text).

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::value::RawValue;

use super::{ArgError, GoValue, shorten};
use crate::json;

impl GoValue {
    /// The JSON value as Go's `json.Marshal` writes it.
    pub fn to_raw(&self) -> Box<RawValue> {
        RawValue::from_string(self.to_json_text()).expect("a go value encodes to valid json")
    }

    pub(super) fn to_json_text(&self) -> String {
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

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Json {
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
    pub(super) fn parse(text: &str) -> Result<Json, ArgError> {
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
    pub(super) fn go_format(&self, out: &mut String) {
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
