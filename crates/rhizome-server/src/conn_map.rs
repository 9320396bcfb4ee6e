//! Maps keyed by connection id. Connection ids are the server's own sequential numbers, never a
//! peer's input, so they need no flooding-resistant hash: a multiplication spreads them over a
//! table's buckets at a fraction of SipHash's cost, which matters on the routing path (several
//! lookups per recipient of every committed action).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// A hasher for `u64` connection ids (Fibonacci hashing).
#[derive(Debug, Default, Clone, Copy)]
pub struct ConnIdHasher(u64);

impl Hasher for ConnIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, id: u64) {
        // An odd multiplier: the low bits stay a permutation of the id's low bits (sequential
        // ids fill buckets evenly) and the high bits, which the table's control bytes use, mix
        // every bit of the id.
        self.0 = (self.0 ^ id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed with this hasher; other input still hashes correctly.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }
}

/// The `BuildHasher` of connection-id maps.
pub type ConnIdBuild = BuildHasherDefault<ConnIdHasher>;

/// A map keyed by connection id.
pub type ConnMap<V> = HashMap<u64, V, ConnIdBuild>;

/// A set of connection ids.
pub type ConnSet = HashSet<u64, ConnIdBuild>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn sequential_ids_spread_over_buckets_and_high_bits() {
        let build = ConnIdBuild::default();
        let hashes: Vec<u64> = (1000..1000 + 4096u64).map(|id| build.hash_one(id)).collect();
        // The low 12 bits (a 4,096-bucket table's index) of 4,096 consecutive ids are distinct.
        let mut low: Vec<u64> = hashes.iter().map(|h| h & 0xfff).collect();
        low.sort_unstable();
        low.dedup();
        assert_eq!(low.len(), 4096);
        // The top 7 bits (control bytes) take every value.
        let mut top: Vec<u64> = hashes.iter().map(|h| h >> 57).collect();
        top.sort_unstable();
        top.dedup();
        assert_eq!(top.len(), 128);
    }

    #[test]
    fn maps_work_as_maps() {
        let mut m: ConnMap<&str> = ConnMap::default();
        for id in 0..10_000u64 {
            m.insert(id, "x");
        }
        assert_eq!(m.len(), 10_000);
        assert!((0..10_000u64).all(|id| m.contains_key(&id)));
        assert!(!m.contains_key(&10_000));
    }
}
