//! Credentials in URLs: splitting `user:password@host`, percent-decoding them, and keeping
//! secrets out of logs and `Debug` output. Shared by every driver whose URL can carry
//! credentials (Redis, DynamoDB, AMQP, MongoDB...), so they all read and hide them alike.

use std::fmt;

use crate::{Error, Result};

/// The `user[:password]` part of a URL, percent-decoded. `Debug` never shows the password.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// The user name (empty when the URL names none).
    pub user: String,
    /// The password: what follows the first `:`; `None` without a `:`.
    pub password: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &redact_secret(self.password.as_ref()))
            .finish()
    }
}

impl Credentials {
    /// The printable userinfo with its `@`: `user:***@`, `user@`, `***@` (a password
    /// alone), or empty. An empty password counts as none.
    pub fn redacted(&self) -> String {
        let has_password = self.password.as_deref().is_some_and(|p| !p.is_empty());
        match (self.user.is_empty(), has_password) {
            (false, true) => format!("{}:***@", self.user),
            (false, false) => format!("{}@", self.user),
            (true, true) => "***@".to_owned(),
            (true, false) => String::new(),
        }
    }
}

/// Split a URL authority `[userinfo@]host` at its **last** `@` (an unencoded `@` in a
/// password belongs to the password): `(userinfo, host)`.
pub fn split_userinfo(authority: &str) -> (Option<&str>, &str) {
    match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    }
}

/// Parse a URL's userinfo `user[:password]`, both parts percent-decoded.
///
/// # Errors
/// [`Error::Config`] for key `url` when the percent-encoding is bad or not UTF-8.
pub fn parse_userinfo(raw: &str) -> Result<Credentials> {
    Ok(match raw.split_once(':') {
        Some((u, p)) => Credentials {
            user: percent_decode(u)?,
            password: Some(percent_decode(p)?),
        },
        None => Credentials {
            user: percent_decode(raw)?,
            password: None,
        },
    })
}

/// Decode `%XX` escapes (URL credentials, which may hold `@`, `:` or `/` that way, and
/// query values).
///
/// # Errors
/// [`Error::Config`] for key `url` when an escape is not two hex digits or the result is
/// not UTF-8.
pub fn percent_decode(raw: &str) -> Result<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| Error::config("url", "bad percent-encoding (%XX) in the URL"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| Error::config("url", "a percent-encoded part of the URL is not UTF-8"))
}

/// What a `Debug` implementation shows for a secret field: `Some("***")` when it is set.
pub fn redact_secret<T>(secret: Option<&T>) -> Option<&'static str> {
    secret.map(|_| "***")
}

/// Replace passwords in every URL found in `s` with `***` (for logs and `Debug`).
///
/// `amqp://user:secret@host/` becomes `amqp://user:***@host/`; a password-only userinfo
/// (`redis://secret@host`) becomes `redis://***@host`.
pub fn redact_url(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        // The authority ends at the first '/', '?', '#', ',' or whitespace.
        let end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#' | ',') || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match split_userinfo(authority) {
            (Some(userinfo), host) => {
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon]);
                        out.push_str(":***");
                    }
                    None => out.push_str("***"),
                }
                out.push('@');
                out.push_str(host);
            }
            (None, host) => out.push_str(host),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_split_at_the_last_at() {
        assert_eq!(split_userinfo("u:p@ss@h:1"), (Some("u:p@ss"), "h:1"));
        assert_eq!(split_userinfo("h:1"), (None, "h:1"));
    }

    #[test]
    fn userinfo_is_decoded() {
        let c = parse_userinfo("al%69ce:s%40cret").unwrap();
        assert_eq!(c.user, "alice");
        assert_eq!(c.password.as_deref(), Some("s@cret"));
        let c = parse_userinfo("word").unwrap();
        assert_eq!((c.user.as_str(), c.password), ("word", None));
        for bad in ["%zz", "u:%4", "u:%ff"] {
            assert!(
                matches!(parse_userinfo(bad), Err(Error::Config { key, .. }) if key == "url"),
                "{bad}"
            );
        }
    }

    #[test]
    fn secrets_never_show() {
        let c = parse_userinfo("u:topsecret").unwrap();
        assert!(!format!("{c:?}").contains("topsecret"));
        assert_eq!(c.redacted(), "u:***@");
        let pw_only = Credentials {
            user: String::new(),
            password: Some("x".into()),
        };
        assert_eq!(pw_only.redacted(), "***@");
        assert_eq!(parse_userinfo("u").unwrap().redacted(), "u@");
        assert_eq!(parse_userinfo("u:").unwrap().redacted(), "u@");
        assert_eq!(Credentials::default().redacted(), "");
        assert_eq!(redact_secret(Some(&"k")), Some("***"));
        assert_eq!(redact_secret::<String>(None), None);
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("amqp://u:secret@h:5672/, redis://pw@h2/0"),
            "amqp://u:***@h:5672/, redis://***@h2/0"
        );
        assert_eq!(
            redact_url("dynamodb+http://k:s@h:1?x"),
            "dynamodb+http://k:***@h:1?x"
        );
        assert_eq!(redact_url("memory://"), "memory://");
    }
}
