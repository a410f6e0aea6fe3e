//! The ring (gRFC A42, as Envoy builds it): each endpoint placed at the
//! XXH64 hashes of `"<key>_<n>"`, as many times as its share of the weight
//! asks, sorted by hash.

use xxhash_rust::xxh64::xxh64;

/// One ring entry: a hash and the endpoint (an index) it leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Where on the ring.
    pub hash: u64,
    /// The endpoint, by index.
    pub endpoint: usize,
}

/// XXH64 with seed 0, as gRPC hashes keys and request headers.
pub fn hash(bytes: &[u8]) -> u64 {
    xxh64(bytes, 0)
}

/// Builds the ring for endpoints given as (hash key, weight ≥ 1): the
/// smallest size above `min_size` that gives the lightest endpoint a whole
/// number of entries, clamped to `max_size`.
pub fn build(endpoints: &[(String, u32)], min_size: u64, max_size: u64) -> Vec<Entry> {
    if endpoints.is_empty() {
        return Vec::new();
    }
    let total: f64 = endpoints.iter().map(|(_, w)| f64::from((*w).max(1))).sum();
    let normalized: Vec<f64> = endpoints
        .iter()
        .map(|(_, w)| f64::from((*w).max(1)) / total)
        .collect();
    let min_normalized = normalized.iter().copied().fold(1.0, f64::min);
    let scale = ((min_normalized * min_size as f64).ceil() / min_normalized).min(max_size as f64);
    let mut ring = Vec::with_capacity(scale.ceil() as usize);
    let (mut current, mut target) = (0.0, 0.0);
    for (index, ((key, _), share)) in endpoints.iter().zip(&normalized).enumerate() {
        target += scale * share;
        let mut n = 0u64;
        while current < target {
            ring.push(Entry {
                hash: hash(format!("{key}_{n}").as_bytes()),
                endpoint: index,
            });
            n += 1;
            current += 1.0;
        }
    }
    ring.sort_by_key(|e| e.hash);
    ring
}

/// The index of the first entry at or after `hash`, wrapping to 0.
pub fn find(ring: &[Entry], hash: u64) -> usize {
    let index = ring.partition_point(|e| e.hash < hash);
    if index == ring.len() { 0 } else { index }
}

/// A built ring with an index by the hash's top bits, so a lookup
/// searches only the entries that share them (about one) instead of
/// binary-searching the whole ring.
#[derive(Debug, Default)]
pub struct Ring {
    entries: Box<[Entry]>,
    /// `buckets[b]`: the first entry whose hash's top `bits` are ≥ `b`.
    buckets: Box<[u32]>,
    bits: u32,
}

impl Ring {
    /// Indexes `entries` (sorted by hash, as [`build`] returns them).
    pub fn new(entries: Vec<Entry>) -> Ring {
        // About one bucket per entry, at most 2^16 buckets.
        let bits = entries
            .len()
            .next_power_of_two()
            .trailing_zeros()
            .clamp(1, 16);
        let shift = 64 - bits;
        let buckets = (0..1u64 << bits)
            .map(|b| entries.partition_point(|e| e.hash >> shift < b) as u32)
            .collect();
        Ring {
            entries: entries.into(),
            buckets,
            bits,
        }
    }

    /// The entries, in ring order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The index of the first entry at or after `hash`, wrapping to 0 (as
    /// [`find`]); the ring must not be empty.
    #[inline]
    pub fn find(&self, hash: u64) -> usize {
        let bucket = (hash >> (64 - self.bits)) as usize;
        let low = self.buckets[bucket] as usize;
        let high = self
            .buckets
            .get(bucket + 1)
            .map_or(self.entries.len(), |h| *h as usize);
        let index = low + self.entries[low..high].partition_point(|e| e.hash < hash);
        if index == self.entries.len() {
            0
        } else {
            index
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<(String, u32)> {
        (0..n).map(|i| (format!("10.0.0.{i}:443"), 1)).collect()
    }

    #[test]
    fn xxh64_is_the_reference_function() {
        // XXH64("", 0) from the xxHash reference.
        assert_eq!(hash(b""), 0xEF46_DB37_51D8_E999);
    }

    #[test]
    fn sizes_and_shares_follow_the_weights() {
        let ring = build(&keys(3), 1024, 4096);
        assert!((1024..=1026).contains(&ring.len()), "{}", ring.len());
        assert!(ring.windows(2).all(|w| w[0].hash <= w[1].hash));
        let weighted = build(&[("a:1".into(), 1), ("b:1".into(), 3)], 1024, 4096);
        let a = weighted.iter().filter(|e| e.endpoint == 0).count();
        let b = weighted.len() - a;
        assert_eq!((a, b), (256, 768));
        // Clamped to the maximum.
        let many = build(&[("a:1".into(), 1), ("b:1".into(), 10_000)], 1024, 4096);
        assert!(many.len() <= 4096);
    }

    #[test]
    fn the_indexed_ring_finds_what_the_binary_search_finds() {
        for n in [1, 2, 3, 50, 1000] {
            let entries = build(&keys(n), 1024, 4096);
            let ring = Ring::new(entries.clone());
            let mut probe = 0x9E37_79B9_7F4A_7C15u64;
            for _ in 0..5000 {
                probe = probe
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                assert_eq!(
                    ring.find(probe),
                    find(&entries, probe),
                    "n {n}, hash {probe:#x}"
                );
            }
            for edge in [
                0,
                u64::MAX,
                entries[0].hash,
                entries[entries.len() - 1].hash,
            ] {
                assert_eq!(ring.find(edge), find(&entries, edge));
            }
        }
    }

    #[test]
    fn find_wraps_around() {
        let ring = build(&keys(2), 16, 16);
        assert_eq!(find(&ring, 0), 0);
        assert_eq!(find(&ring, u64::MAX), 0);
        let middle = ring[5].hash;
        assert_eq!(find(&ring, middle), 5);
        assert_eq!(find(&ring, middle + 1), 6);
    }

    #[test]
    fn a_new_endpoint_takes_its_share_and_fewer_move_between_the_old() {
        let before = build(&keys(3), 1024, 4096);
        let after = build(&keys(4), 1024, 4096);
        let (mut moved, mut between_old) = (0, 0);
        let samples = 10_000u64;
        for i in 0..samples {
            let h = hash(format!("user-{i}").as_bytes());
            let (old, new) = (
                before[find(&before, h)].endpoint,
                after[find(&after, h)].endpoint,
            );
            if old != new {
                moved += 1;
                if new != 3 {
                    between_old += 1;
                }
            }
        }
        let moved = moved as f64 / samples as f64;
        let between_old = between_old as f64 / samples as f64;
        // Ideal: a quarter moves, all to the new endpoint. A42's ring gives
        // each endpoint about size/N entries, so entries of the old ones
        // go too and some keys move between them (the bounds).
        assert!((0.2..=0.6).contains(&moved), "{moved}");
        assert!(between_old <= 0.25, "{between_old}");
    }
}
