//! Seeded, reproducible pseudo-randomness for the renderers (the CAPTCHA picture and its
//! recording): the same seed gives the same bytes, so tests can pin an output. It must
//! never make ids, answers or tokens; those come from `random`, straight from the OS.

/// xoshiro256** seeded through SplitMix64: small, fast, and fully determined by the seed.
/// It needs no cryptographic strength because the seed itself is fresh OS randomness and
/// the picture is shown to the client anyway; it only has to spread the seed's bits over
/// every choice so that pictures of the same answer look unrelated.
pub struct Rng {
    state: [u64; 4],
}

impl Rng {
    /// The generator for `seed`.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let mut state = [0u64; 4];
        for (word, chunk) in state.iter_mut().zip(seed.chunks_exact(8)) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(chunk);
            // SplitMix64's finaliser is a bijection, so distinct seeds give distinct
            // states, and related seeds (say, differing in one bit) do not give related
            // streams.
            *word = splitmix64(u64::from_le_bytes(bytes));
        }
        // The all-zero state would make xoshiro emit zeros forever; only one seed maps to
        // it, but it must still draw a normal picture.
        if state == [0; 4] {
            state[0] = 0x9E37_79B9_7F4A_7C15;
        }
        Self { state }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A uniform number in `[lo, hi)`.
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        // The top 24 bits fill an f32 mantissa exactly, so the result is below 1.
        let unit = (self.next_u64() >> 40) as f32 / (1u32 << 24) as f32;
        lo + (hi - lo) * unit
    }

    /// A uniform index below `n` (0 when `n` is 0 or 1).
    pub fn index(&mut self, n: usize) -> usize {
        (self.range(0.0, n as f32) as usize).min(n.saturating_sub(1))
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
