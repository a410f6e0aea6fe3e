//! A picker's rotation counter that concurrent threads advance without
//! sharing a cache line.
//!
//! round_robin, grpclb and weighted_round_robin walk their endpoints with a
//! counter. One shared atomic bounces its cache line between cores on
//! every pick; one counter per thread shared by every picker couples
//! unrelated channels (a thread alternating calls on two channels would
//! send every call of each to the same backend). So each picker has a few
//! padded counters ("stripes") and each thread advances its own stripe:
//! per picker, per thread, the sequence is consecutive.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// One counter on its own cache line (two, against adjacent-line
/// prefetching).
#[repr(align(128))]
#[derive(Debug)]
struct Stripe(AtomicUsize);

/// How many stripes a sequence has: one per core, at most 16.
static STRIPES: LazyLock<usize> = LazyLock::new(|| {
    std::thread::available_parallelism()
        .map_or(4, usize::from)
        .clamp(1, 16)
});

static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's stripe number (threads are dealt stripes in turn).
    static THREAD: usize = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
}

/// A rotation counter. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Sequence {
    stripes: Box<[Stripe]>,
}

impl Sequence {
    /// A sequence whose first value, on every thread, is `start` (a
    /// policy draws it at random, so clients do not all begin with the
    /// same backend; seeded in tests, so picks are reproducible).
    pub(crate) fn new(start: usize) -> Sequence {
        Sequence {
            stripes: (0..*STRIPES)
                .map(|_| Stripe(AtomicUsize::new(start)))
                .collect(),
        }
    }

    /// The next value of this thread's stripe.
    #[inline]
    pub(crate) fn next(&self) -> usize {
        let stripe = THREAD.with(|t| *t) % self.stripes.len();
        self.stripes[stripe].0.fetch_add(1, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_on_one_thread_and_independent_between_sequences() {
        let a = Sequence::new(10);
        let b = Sequence::new(0);
        assert_eq!(a.next(), 10);
        // Interleaving another sequence does not skip values of this one.
        for expected in 11..15 {
            b.next();
            assert_eq!(a.next(), expected);
        }
    }
}
