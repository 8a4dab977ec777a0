//! Go's `base64.StdEncoding.DecodeString`.

use super::ArgError;

/// `base64.StdEncoding.DecodeString` with Go's acceptance rules and error offsets: padding
/// required, `\r` and `\n` skipped, non-zero trailing bits tolerated.
pub(super) fn go_base64(s: &str) -> Result<Vec<u8>, ArgError> {
    fn corrupt(at: usize) -> ArgError {
        ArgError::new(format!("illegal base64 data at input byte {at}"))
    }
    fn sextet(c: u8) -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    }
    let src = s.as_bytes();
    let skip_newlines = |mut i: usize| {
        while i < src.len() && (src[i] == b'\n' || src[i] == b'\r') {
            i += 1;
        }
        i
    };
    let mut out = Vec::with_capacity(src.len() / 4 * 3);
    let mut si = 0;
    loop {
        let mut quantum = [0u32; 4];
        let mut len = 0;
        let mut padded = false;
        while len < 4 {
            if si == src.len() {
                if len == 0 {
                    return Ok(out);
                }
                return Err(corrupt(si - len));
            }
            let c = src[si];
            si += 1;
            if let Some(v) = sextet(c) {
                quantum[len] = v;
                len += 1;
                continue;
            }
            if c == b'\n' || c == b'\r' {
                continue;
            }
            if c != b'=' || len < 2 {
                return Err(corrupt(si - 1));
            }
            if len == 2 {
                // "==" expected; the first is consumed.
                si = skip_newlines(si);
                if si == src.len() {
                    return Err(corrupt(src.len()));
                }
                if src[si] != b'=' {
                    return Err(corrupt(si - 1));
                }
                si += 1;
            }
            si = skip_newlines(si);
            if si < src.len() {
                return Err(corrupt(si));
            }
            padded = true;
            break;
        }
        let bits = quantum[0] << 18 | quantum[1] << 12 | quantum[2] << 6 | quantum[3];
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..len]);
        if padded {
            return Ok(out);
        }
    }
}
