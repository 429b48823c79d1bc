//! A small deterministic generator (xorshift64*), so a failing flood or guess replays, and
//! forged tokens need no random-number crate.

/// xorshift64* with a fixed seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Any seed; zero is replaced (xorshift never leaves zero).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn next_u128(&mut self) -> u128 {
        (u128::from(self.next_u64()) << 64) | u128::from(self.next_u64())
    }

    /// A random hyphenated UUID: token-shaped, never issued.
    pub fn uuid(&mut self) -> String {
        uuid::Uuid::from_u128(self.next_u128())
            .hyphenated()
            .to_string()
    }

    /// 1..=`max` random bytes.
    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = 1 + (self.next_u64() as usize % max.max(1));
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_sequences_replay_and_uuids_are_token_shaped() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        assert_eq!(a.next_u64(), b.next_u64());
        let u = a.uuid();
        assert_eq!(u.len(), 36);
        assert!(uuid::Uuid::parse_str(&u).is_ok());
        assert!((1..=5).contains(&a.bytes(5).len()));
        assert_ne!(Rng::new(0).next_u64(), 0);
    }
}
