//! Randomness from the operating system, and the few encodings we need for it (hex, the
//! CAPTCHA alphabet, URL-safe base64). Nothing here is seeded or reproducible: ids, answers
//! and tokens must never be guessable.

use crate::error::{Error, Result};

/// Fills a fresh array with OS randomness.
pub fn bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| Error::Random(e.to_string()))?;
    Ok(b)
}

/// A small random number for jitter; falls back to the clock, since jitter needs no secrecy.
pub fn small_u16() -> u16 {
    match bytes::<2>() {
        Ok(b) => u16::from_le_bytes(b),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u16),
    }
}

/// Lower-case hex of `b`.
pub fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(DIGITS[usize::from(x >> 4)] as char);
        s.push(DIGITS[usize::from(x & 15)] as char);
    }
    s
}

/// `n` characters drawn uniformly from `alphabet` (rejection sampling, so no character is
/// favoured).
pub fn from_alphabet(alphabet: &[u8], n: usize) -> Result<String> {
    let limit = 256 - (256 % alphabet.len());
    let mut out = String::with_capacity(n);
    while out.len() < n {
        for b in bytes::<32>()? {
            if usize::from(b) < limit && out.len() < n {
                out.push(alphabet[usize::from(b) % alphabet.len()] as char);
            }
        }
    }
    Ok(out)
}

/// Standard base64 with padding (for `data:` URLs).
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_match_known_values() {
        assert_eq!(hex(&[0, 15, 255]), "000fff");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn alphabet_draws_stay_in_the_alphabet() {
        let s = from_alphabet(b"XYZ", 200).expect("random");
        assert_eq!(s.len(), 200);
        assert!(s.bytes().all(|c| b"XYZ".contains(&c)));
    }
}
