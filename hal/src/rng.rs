//! The workspace's one small deterministic generator: Marsaglia's xorshift64 (13, 7, 17).
//!
//! Synthetic scenes, reconnect jitter and the tests need numbers that are cheap, spread
//! well enough, and repeat exactly for a seed, so a failing case can be replayed. This is
//! that generator, written once; the tests use it too (through `aegis_tests::XorShift`
//! where they can). It must never be used where unpredictability matters (keys, nonces,
//! tokens): those come from the OS (`getrandom`).

/// xorshift64 state. A zero state stays zero forever: seed with a non-zero value (callers
/// write `seed.max(1)` or `seed | 1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XorShift(pub u64);

impl XorShift {
    /// The next state, which is also the output.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `[0, 1)`, from the top 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A byte (bits 32..40 of the next output).
    pub fn byte(&mut self) -> u8 {
        (self.next_u64() >> 32) as u8
    }

    /// In `0..n` (`n > 0`; the modulo bias is irrelevant for tests and jitter).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::XorShift;

    #[test]
    fn the_sequence_is_marsaglias_xorshift64() {
        // First outputs for seed 1, from the recurrence by hand: x ^= x<<13 → 0x2001;
        // x ^= x>>7 → 0x2041; x ^= x<<17 → 0x4082_2041.
        let mut r = XorShift(1);
        assert_eq!(r.next_u64(), 0x4082_2041);
        assert_eq!(r.0, 0x4082_2041);
        let mut a = XorShift(42);
        let mut b = XorShift(42);
        for _ in 0..1000 {
            let f = a.next_f64();
            assert!((0.0..1.0).contains(&f));
            assert_eq!(b.next_u64() >> 11, (f * (1u64 << 53) as f64) as u64);
        }
        assert!((0..1000).all(|_| a.below(7) < 7));
    }
}
