//! Go's server choice: gomemcache's `ServerList.PickServer` — CRC-32 (IEEE) of the key,
//! modulo the number of servers, in URL order.

use memcache::exp::Router;

/// The CRC-32 (IEEE 802.3, reflected polynomial `0xEDB88320`) lookup table.
const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32 (IEEE) of `bytes`, as Go's `crc32.ChecksumIEEE`.
pub fn crc32_ieee(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc = TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

/// The index (in URL order) of the server Go's client uses for `key` among `servers`
/// servers: `crc32_ieee(key) % servers`. With one server it is always that one. Go hashes at
/// most the first 256 bytes of a key (and rejects keys over 250 bytes anyway).
pub fn pick_server(key: &[u8], servers: usize) -> usize {
    if servers <= 1 {
        return 0;
    }
    let key = &key[..key.len().min(256)];
    // u32 -> usize never truncates on the 32- and 64-bit targets we build for.
    (crc32_ieee(key) % u32::try_from(servers).unwrap_or(u32::MAX)) as usize
}

/// The [`Router`] that makes the `memcache` client route every key as gomemcache does.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct GoRouter;

impl Router for GoRouter {
    fn route(&self, key: &[u8], servers: &[String]) -> usize {
        pick_server(key, servers.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_known_values() {
        // The check value of CRC-32/ISO-HDLC, and Go's crc32.ChecksumIEEE("").
        assert_eq!(crc32_ieee(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32_ieee(b""), 0);
        assert_eq!(
            crc32_ieee(b"The quick brown fox jumps over the lazy dog"),
            0x414F_A339
        );
    }

    #[test]
    fn one_server_takes_every_key() {
        assert_eq!(pick_server(b"anything", 1), 0);
        assert_eq!(pick_server(b"", 0), 0);
    }
}
