//! The static-stride scheduler gRPC's weighted_round_robin uses (C-core's
//! and grpc-go's; gRFC A58 describes its EDF ancestor): weights scaled to
//! 16 bits, and a shared sequence number that says, for each pick, which
//! endpoint's turn it is and whether that endpoint takes it. Nothing is
//! written but the sequence, so picks take no lock.

/// The largest scaled weight.
const MAX_WEIGHT: u32 = u16::MAX as u32;
/// Weights are held within [mean × 0.1, mean × 10], as C-core does, so one
/// outlying report cannot starve or flood an endpoint.
const MIN_RATIO: f64 = 0.1;
const MAX_RATIO: f64 = 10.0;

/// Chooses endpoints in proportion to their weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scheduler {
    /// Fewer than two weights known, or all equal: plain rotation.
    Rotate(usize),
    /// Each endpoint's weight, scaled so the largest is [`MAX_WEIGHT`].
    Stride(Box<[u16]>),
}

impl Scheduler {
    /// A scheduler for `weights` (0: not known; such endpoints get the mean
    /// of the known ones). `weights` must not be empty.
    pub(crate) fn new(weights: &[f64]) -> Scheduler {
        let n = weights.len();
        let known: Vec<f64> = weights.iter().copied().filter(|w| *w > 0.0).collect();
        if known.len() < 2 {
            return Scheduler::Rotate(n);
        }
        let mean = known.iter().sum::<f64>() / known.len() as f64;
        let clamped: Vec<f64> = weights
            .iter()
            .map(|w| {
                if *w > 0.0 {
                    w.clamp(mean * MIN_RATIO, mean * MAX_RATIO)
                } else {
                    mean
                }
            })
            .collect();
        let max = clamped.iter().copied().fold(0.0, f64::max);
        let scale = f64::from(MAX_WEIGHT) / max;
        let scaled: Box<[u16]> = clamped
            .iter()
            .map(|w| ((w * scale).round() as u16).max(1))
            .collect();
        if scaled.iter().all(|w| *w == scaled[0]) {
            return Scheduler::Rotate(n);
        }
        Scheduler::Stride(scaled)
    }

    /// The endpoint to use, taking sequence numbers from `cursor` (one, or
    /// a few when an endpoint skips its turn).
    #[inline]
    pub(crate) fn pick(&self, cursor: &mut usize) -> usize {
        match self {
            Scheduler::Rotate(n) => {
                let value = *cursor;
                *cursor = value.wrapping_add(1);
                value % n
            }
            Scheduler::Stride(weights) => {
                // Spreads neighbours' skipped turns apart.
                const OFFSET: u64 = MAX_WEIGHT as u64 / 2;
                let n = weights.len() as u64;
                // Sequence numbers cycle through the endpoints; each full
                // cycle is a "generation". Endpoint i takes its turn in
                // weight_i of every MAX_WEIGHT generations, spread evenly
                // by the multiplication. (One division per pick: the walk
                // below steps index and generation itself.)
                let start = *cursor as u64;
                let mut index = start % n;
                let mut generation = start / n;
                let mut taken: u64 = 0;
                loop {
                    taken += 1;
                    let weight = u64::from(weights[index as usize]);
                    let phase =
                        (weight.wrapping_mul(generation) + index * OFFSET) % u64::from(MAX_WEIGHT);
                    if phase >= u64::from(MAX_WEIGHT) - weight {
                        *cursor = cursor.wrapping_add(taken as usize);
                        return index as usize;
                    }
                    index += 1;
                    if index == n {
                        index = 0;
                        generation += 1;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(scheduler: &Scheduler, n: usize, picks: usize) -> Vec<usize> {
        let mut cursor = 0;
        let mut counts = vec![0; n];
        for _ in 0..picks {
            counts[scheduler.pick(&mut cursor)] += 1;
        }
        counts
    }

    #[test]
    fn picks_in_proportion_to_weight() {
        let scheduler = Scheduler::new(&[4.0, 2.0, 1.0]);
        let counts = shares(&scheduler, 3, 70_000);
        for (count, expected) in counts.iter().zip([40_000.0, 20_000.0, 10_000.0]) {
            let error = (*count as f64 - expected).abs() / expected;
            assert!(error < 0.01, "{counts:?}");
        }
    }

    #[test]
    fn unknown_weights_get_the_mean_and_few_known_rotate() {
        assert_eq!(Scheduler::new(&[0.0, 5.0, 0.0]), Scheduler::Rotate(3));
        assert_eq!(Scheduler::new(&[3.0, 3.0, 3.0]), Scheduler::Rotate(3));
        assert_eq!(Scheduler::new(&[7.0]), Scheduler::Rotate(1));
        // Known 1 and 3 (mean 2); the unknown one counts as 2.
        let counts = shares(&Scheduler::new(&[1.0, 3.0, 0.0]), 3, 60_000);
        for (count, expected) in counts.iter().zip([10_000.0, 30_000.0, 20_000.0]) {
            assert!(
                (*count as f64 - expected).abs() / expected < 0.01,
                "{counts:?}"
            );
        }
    }

    #[test]
    fn outlying_weights_are_held_within_ten_times_the_mean() {
        let Scheduler::Stride(scaled) = Scheduler::new(&[1e9, 1.0, 1.0, 1.0]) else {
            panic!("weights differ");
        };
        // Mean 2.5e8: 1e9 stays; the small ones are raised to 2.5e7.
        assert_eq!(scaled[0], u16::MAX);
        assert_eq!(
            u32::from(scaled[1]),
            (f64::from(MAX_WEIGHT) * 0.025).round() as u32
        );
    }

    #[test]
    fn a_rotation_visits_every_endpoint() {
        let counts = shares(&Scheduler::new(&[0.0, 0.0]), 2, 10);
        assert_eq!(counts, [5, 5]);
    }
}
