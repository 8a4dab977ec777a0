//! Lenient, Go-like decoding of JSON objects: keys matched case-insensitively, unknown keys
//! ignored, `null` and missing keys leave the zero value.

/// Implements `Deserialize` for a `Default` struct whose fields map to Go key names.
///
/// Each field is decoded as `Option<FieldType>` so that `null` keeps the default.
macro_rules! go_deserialize {
    ($ty:ident, $expecting:literal, { $($field:ident => $key:literal),* $(,)? }) => {
        impl<'de> ::serde::Deserialize<'de> for $ty {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> ::serde::de::Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_unit<E: ::serde::de::Error>(self) -> Result<$ty, E> {
                        Ok($ty::default())
                    }
                    fn visit_map<A: ::serde::de::MapAccess<'de>>(self, mut map: A) -> Result<$ty, A::Error> {
                        let mut out = $ty::default();
                        while let Some(key) = map.next_key::<$crate::gostruct::Key<'de>>()? {
                            let key = key.as_str();
                            $(
                                if key.eq_ignore_ascii_case($key) {
                                    if let Some(v) = map.next_value::<Option<_>>()? {
                                        out.$field = v;
                                    }
                                    continue;
                                }
                            )*
                            map.next_value::<::serde::de::IgnoredAny>()?;
                        }
                        Ok(out)
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}
pub(crate) use go_deserialize;

/// A map key that borrows from the input when it can.
pub(crate) enum Key<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl Key<'_> {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Key::Borrowed(s) => s,
            Key::Owned(s) => s,
        }
    }
}

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key::Borrowed(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key::Owned(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key::Owned(v))
            }
        }
        d.deserialize_str(V)
    }
}
