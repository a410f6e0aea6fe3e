//! A picker's rotation counter that threads advance without writing
//! shared memory.
//!
//! round_robin, grpclb and weighted_round_robin walk their endpoints with a
//! counter. One shared atomic bounces its cache line between cores on
//! every pick (and costs an atomic read-modify-write even alone); one
//! cursor per thread shared by every picker couples unrelated channels (a
//! thread alternating calls on two channels would send every call of each
//! to the same backend). So each thread keeps a few cursors, one per
//! picker it uses, in a small direct-mapped table keyed by the picker's
//! unique id: per picker, per thread, the sequence is consecutive.
//!
//! When two pickers in use on one thread share a table slot, each takes
//! it over in turn and starts from a pseudo-random place: picks stay
//! evenly spread (at random rather than in turn) — never stuck.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Cursors per thread.
const SLOTS: usize = 16;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// (picker id, next value) per slot; id 0 is no picker.
    static CURSORS: [Cell<(u64, usize)>; SLOTS] =
        const { [const { Cell::new((0, 0)) }; SLOTS] };
}

/// A rotation counter. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Sequence {
    id: u64,
    start: usize,
    /// How many times a thread's table took this sequence in (rare: once
    /// per thread, and after an eviction).
    entries: AtomicU64,
}

impl Sequence {
    /// A sequence whose first value on a thread is `start` (a policy draws
    /// it at random, so clients do not all begin with the same backend;
    /// seeded in tests, so picks are reproducible).
    pub(crate) fn new(start: usize) -> Sequence {
        Sequence {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            start,
            entries: AtomicU64::new(0),
        }
    }

    /// The next value of this thread's cursor for this sequence.
    #[inline]
    pub(crate) fn next(&self) -> usize {
        self.walk(|cursor| {
            let value = *cursor;
            *cursor = value.wrapping_add(1);
            value
        })
    }

    /// Lends `f` this thread's cursor for this sequence, to take as many
    /// values as it needs (each one by advancing it).
    #[inline]
    pub(crate) fn walk<R>(&self, f: impl FnOnce(&mut usize) -> R) -> R {
        CURSORS.with(|cursors| {
            let slot = &cursors[self.id as usize % SLOTS];
            let (owner, cursor) = slot.get();
            let mut cursor = if owner == self.id {
                cursor
            } else {
                self.enter()
            };
            let result = f(&mut cursor);
            slot.set((self.id, cursor));
            result
        })
    }

    /// Where a thread's cursor for this sequence starts: `start` the first
    /// time any thread takes it in, then `start` plus a pseudo-random
    /// offset (so threads do not move in step, and pickers that evict each
    /// other do not restart at the same place).
    #[cold]
    fn enter(&self) -> usize {
        let entries = self.entries.fetch_add(1, Ordering::Relaxed);
        let offset = entries.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        self.start.wrapping_add(offset as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_on_one_thread_and_independent_between_sequences() {
        std::thread::spawn(|| {
            let a = Sequence::new(10);
            let b = Sequence::new(0);
            assert_eq!(a.next(), 10, "a fresh thread starts where it is told");
            // Interleaving another sequence does not skip values of this one.
            for expected in 11..15 {
                b.next();
                assert_eq!(a.next(), expected);
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn sequences_sharing_a_slot_still_spread_evenly() {
        std::thread::spawn(|| {
            // Ids SLOTS apart share a slot.
            let sequences: Vec<Sequence> = (0..=SLOTS).map(|_| Sequence::new(0)).collect();
            let (a, b) = (&sequences[0], &sequences[SLOTS]);
            assert_eq!(a.id as usize % SLOTS, b.id as usize % SLOTS);
            let mut counts = [0usize; 2];
            for _ in 0..1000 {
                counts[a.next() % 2] += 1;
                b.next();
            }
            assert!(counts.iter().all(|c| (400..=600).contains(c)), "{counts:?}");
        })
        .join()
        .unwrap();
    }
}
