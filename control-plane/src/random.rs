//! Where randomness comes from (signing keys, token ids). Injected through the app
//! state so tests can make it deterministic.

use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
#[error("no randomness available: {0}")]
pub struct RandomError(String);

impl RandomError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

pub trait RandomSource: Send + Sync {
    fn fill(&self, dest: &mut [u8]) -> Result<(), RandomError>;
}

/// The operating system's CSPRNG (`getrandom`).
#[derive(Debug, Default, Clone, Copy)]
pub struct OsRandom;

impl RandomSource for OsRandom {
    fn fill(&self, dest: &mut [u8]) -> Result<(), RandomError> {
        OsRng.try_fill_bytes(dest).map_err(|e| RandomError(e.to_string()))
    }
}

/// Lends a [`RandomSource`] to libraries that want a `rand_core` RNG (RSA key
/// generation). `fill_bytes` cannot fail, so a failure is remembered and must be
/// checked with [`RngAdapter::finish`] afterwards.
pub struct RngAdapter<'a> {
    source: &'a dyn RandomSource,
    failure: Option<RandomError>,
}

impl<'a> RngAdapter<'a> {
    pub fn new(source: &'a dyn RandomSource) -> Self {
        Self { source, failure: None }
    }

    /// The first failure of the source, if any: the output must then be discarded.
    pub fn finish(self) -> Result<(), RandomError> {
        self.failure.map_or(Ok(()), Err)
    }
}

impl RngCore for RngAdapter<'_> {
    fn next_u32(&mut self) -> u32 {
        let mut bytes = [0u8; 4];
        self.fill_bytes(&mut bytes);
        u32::from_le_bytes(bytes)
    }

    fn next_u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        self.fill_bytes(&mut bytes);
        u64::from_le_bytes(bytes)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        if let Err(error) = self.source.fill(dest) {
            dest.fill(0);
            self.failure.get_or_insert(error);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for RngAdapter<'_> {}

/// Deterministic bytes from a seed (SHA-256 in counter mode). For tests only: anyone
/// who knows the seed knows every key it produces.
#[derive(Debug)]
pub struct SeededRandom {
    seed: [u8; 32],
    counter: std::sync::atomic::AtomicU64,
}

impl SeededRandom {
    pub fn new(seed: u64) -> Self {
        Self {
            seed: Sha256::digest(seed.to_be_bytes()).into(),
            counter: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl RandomSource for SeededRandom {
    fn fill(&self, dest: &mut [u8]) -> Result<(), RandomError> {
        for chunk in dest.chunks_mut(32) {
            let n = self.counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let block = Sha256::new().chain_update(self.seed).chain_update(n.to_be_bytes()).finalize();
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_random_repeats_per_seed_and_differs_across_seeds() {
        let (mut a, mut b, mut c) = ([0u8; 40], [0u8; 40], [0u8; 40]);
        SeededRandom::new(1).fill(&mut a).unwrap();
        SeededRandom::new(1).fill(&mut b).unwrap();
        SeededRandom::new(2).fill(&mut c).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a[..32], a[8..40]);
    }

    #[test]
    fn os_random_fills_the_buffer() {
        let mut a = [0u8; 32];
        OsRandom.fill(&mut a).unwrap();
        assert_ne!(a, [0u8; 32]);
    }
}
