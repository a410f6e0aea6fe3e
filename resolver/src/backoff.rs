//! Exponential backoff with jitter, as gRPC specifies for connection
//! attempts and resolvers use for failed lookups.
//!
//! Pure: the random draw is passed in, so tests are exact.
//!
//! ```
//! use std::time::Duration;
//! use waypost_resolver::backoff::BackoffConfig;
//!
//! let grpc = BackoffConfig::default(); // 1 s × 1.6 ± 20 %, at most 120 s
//! assert_eq!(grpc.delay(0, 0.5), Duration::from_secs(1));
//! assert_eq!(grpc.delay(1, 0.5), Duration::from_millis(1600));
//! assert_eq!(grpc.delay(1, 0.0), Duration::from_millis(1280)); // -20 %
//! assert_eq!(grpc.delay(50, 0.5), Duration::from_secs(120));
//! ```

use std::time::Duration;

use rand::{Rng, RngExt};

/// The parameters of an exponential backoff.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffConfig {
    /// The first delay.
    pub base: Duration,
    /// Each further delay is the previous one times this.
    pub multiplier: f64,
    /// Each delay after the first is randomised by ± this fraction.
    pub jitter: f64,
    /// No delay exceeds this (before jitter).
    pub max: Duration,
}

impl Default for BackoffConfig {
    /// gRPC's connection backoff: 1 s, ×1.6, ±20 %, at most 120 s.
    fn default() -> Self {
        BackoffConfig {
            base: Duration::from_secs(1),
            multiplier: 1.6,
            jitter: 0.2,
            max: Duration::from_secs(120),
        }
    }
}

impl BackoffConfig {
    /// The delay before retry number `retries + 1` (`retries` failures so
    /// far, 0 for the first retry), with `unit_random` in `[0, 1)` choosing
    /// the jitter (0.5 means none).
    pub fn delay(&self, retries: u32, unit_random: f64) -> Duration {
        if retries == 0 {
            return self.base;
        }
        let max = self.max.as_secs_f64();
        let mut backoff = self.base.as_secs_f64();
        for _ in 0..retries {
            if backoff >= max {
                break;
            }
            backoff *= self.multiplier;
        }
        let backoff = backoff.min(max);
        let factor = 1.0 + self.jitter * (unit_random.clamp(0.0, 1.0) * 2.0 - 1.0);
        Duration::from_secs_f64((backoff * factor).max(0.0))
    }
}

/// A backoff in progress: counts failures and draws jitter from `R`.
#[derive(Debug, Clone)]
pub struct Backoff<R> {
    config: BackoffConfig,
    retries: u32,
    rng: R,
}

impl<R: Rng> Backoff<R> {
    /// A fresh backoff.
    pub fn new(config: BackoffConfig, rng: R) -> Self {
        Backoff {
            config,
            retries: 0,
            rng,
        }
    }

    /// The delay to wait after another failure.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.config.delay(self.retries, self.rng.random::<f64>());
        self.retries = self.retries.saturating_add(1);
        delay
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.retries = 0;
    }

    /// Failures since the last reset.
    pub fn retries(&self) -> u32 {
        self.retries
    }
}

/// A small fast RNG seeded from the thread RNG, for drivers' jitter.
pub fn seeded_rng() -> rand::rngs::SmallRng {
    rand::make_rng()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn delays_grow_by_the_multiplier_and_stop_at_max() {
        let c = BackoffConfig::default();
        let secs: Vec<f64> = (0..14).map(|r| c.delay(r, 0.5).as_secs_f64()).collect();
        for pair in secs.windows(2) {
            assert!(pair[1] >= pair[0]);
            assert!(pair[1] <= pair[0] * 1.6 + 1e-9);
        }
        assert!((secs[2] - 2.56).abs() < 1e-9);
        assert_eq!(*secs.last().unwrap(), 120.0);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let c = BackoffConfig::default();
        let mut b = Backoff::new(c, rand::rngs::SmallRng::seed_from_u64(7));
        assert_eq!(
            b.next_delay(),
            Duration::from_secs(1),
            "the first delay has no jitter"
        );
        for retries in 1..200u32 {
            let d = b.next_delay().as_secs_f64();
            let nominal = c.delay(retries, 0.5).as_secs_f64();
            assert!(
                d >= nominal * 0.8 - 1e-9 && d <= nominal * 1.2 + 1e-9,
                "{d} vs {nominal}"
            );
        }
        b.reset();
        assert_eq!(b.retries(), 0);
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }
}
