//! Randomness from the operating system, and the encodings we need for it (hex, the
//! CAPTCHA alphabet), plus a constant-time comparison. Nothing here is seeded or
//! reproducible: ids, answers and tokens must never be guessable.

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

/// Compares two byte strings in time that depends only on their lengths (`subtle`, which
/// rustls already brings, keeps the compiler from turning it into an early exit).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_match_known_values() {
        assert_eq!(hex(&[0, 15, 255]), "000fff");
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
