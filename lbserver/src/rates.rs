//! The call rate a service's clients report, robust to one client lying.
//!
//! Each BalanceLoad client's ClientStats reports say how many calls it
//! started since its previous report; [`ClientRates`] keeps one estimate per
//! client (an exponentially weighted average of its reported calls per
//! second) and sums them into the service's observed rate — the figure that
//! `capacity_per_weight` turns into drops.
//!
//! A lying or broken client cannot drive the others into drops:
//! - **trimmed sum**: each client's contribution is capped at
//!   [`TRIM_FACTOR`] × the lower median of all live clients' rates, so one
//!   client claiming 10⁹ calls/s beside honest ones counts as at most four
//!   typical clients (a lone client has nothing to be compared with and is
//!   taken at its word);
//! - **leaves with its stream**: a client's estimate is removed as soon as
//!   its stream ends, and one that stops reporting counts as idle after two
//!   report intervals (clients skip all-zero reports);
//! - **saturating**: counts are clamped to `[0, i64::MAX]` and rates stay
//!   finite.
//!
//! Pure: the caller passes the time.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use waypost_lbserver::rates::ClientRates;
//!
//! let interval = Duration::from_secs(1);
//! let mut rates = ClientRates::new(interval);
//! let t0 = Instant::now();
//! rates.report(1, 100, t0); // an honest client: 100 calls/s
//! rates.report(2, 120, t0);
//! rates.report(3, i64::MAX as u64, t0); // a liar
//! let total = rates.total(t0);
//! assert!(total <= 100.0 + 120.0 + 4.0 * 120.0, "{total}");
//! rates.remove(3);
//! assert_eq!(rates.total(t0), 220.0);
//! ```

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A client counts for at most this many times the lower median client.
pub const TRIM_FACTOR: f64 = 4.0;

/// Per-client reported call rates of one service.
#[derive(Debug, Clone)]
pub struct ClientRates {
    interval: Duration,
    clients: HashMap<u64, ClientRate>,
}

#[derive(Debug, Clone, Copy)]
struct ClientRate {
    /// Calls started per second, averaged.
    rate: f64,
    /// When its last report arrived.
    last: Instant,
}

impl ClientRates {
    /// No clients yet. `interval` is the report interval clients were told.
    pub fn new(interval: Duration) -> ClientRates {
        ClientRates {
            interval: interval.max(Duration::from_millis(1)),
            clients: HashMap::new(),
        }
    }

    /// Client `client` reports `started` calls since its previous report
    /// (or since its stream opened), at `now`.
    pub fn report(&mut self, client: u64, started: u64, now: Instant) {
        let started = started.min(i64::MAX as u64) as f64;
        let interval = self.interval;
        let entry = self.clients.entry(client).or_insert(ClientRate {
            rate: f64::NAN,
            last: now.checked_sub(interval).unwrap_or(now),
        });
        // A report sooner than half an interval is read as half an
        // interval's worth (the server throttles to that pace anyway), so a
        // burst of reports cannot divide by almost nothing.
        let elapsed = now
            .saturating_duration_since(entry.last)
            .max(interval / 2)
            .as_secs_f64();
        let instant = started / elapsed;
        entry.rate = if entry.rate.is_nan() {
            instant
        } else {
            0.5 * entry.rate + 0.5 * instant
        };
        entry.last = now;
    }

    /// The client's stream ended: it no longer counts. Returns whether it
    /// had an estimate.
    pub fn remove(&mut self, client: u64) -> bool {
        self.clients.remove(&client).is_some()
    }

    /// Clients with an estimate.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether no client has reported.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// The service's call rate at `now`: the sum of the clients' rates,
    /// each capped at [`TRIM_FACTOR`] × the lower median; clients silent
    /// for two intervals count as 0.
    pub fn total(&self, now: Instant) -> f64 {
        let stale = self.interval * 2;
        let mut live: Vec<f64> = self
            .clients
            .values()
            .filter(|c| now.saturating_duration_since(c.last) <= stale)
            .map(|c| c.rate)
            .filter(|r| r.is_finite() && *r > 0.0)
            .collect();
        if live.is_empty() {
            return 0.0;
        }
        live.sort_by(f64::total_cmp);
        let median = live[(live.len() - 1) / 2];
        let cap = median * TRIM_FACTOR;
        live.iter().map(|r| r.min(cap)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_steady_client_is_measured() {
        let mut rates = ClientRates::new(SECOND);
        let t0 = Instant::now();
        for i in 0..5 {
            rates.report(7, 50, t0 + SECOND * i);
        }
        assert!((rates.total(t0 + SECOND * 4) - 50.0).abs() < 1e-9);
    }

    #[test]
    fn a_liar_counts_for_at_most_four_typical_clients() {
        let mut rates = ClientRates::new(SECOND);
        let t0 = Instant::now();
        rates.report(1, 10, t0);
        rates.report(2, 20, t0);
        rates.report(3, 30, t0);
        rates.report(4, 1_000_000_000, t0);
        // Lower median of {10, 20, 30, 1e9} is 20: the liar counts 80.
        assert_eq!(rates.total(t0), 10.0 + 20.0 + 30.0 + 80.0);
    }

    #[test]
    fn a_liar_beside_one_honest_client_is_bounded_by_it() {
        let mut rates = ClientRates::new(SECOND);
        let t0 = Instant::now();
        rates.report(1, 100, t0);
        rates.report(2, i64::MAX as u64, t0);
        assert_eq!(rates.total(t0), 100.0 + 400.0);
    }

    #[test]
    fn a_client_leaves_with_its_stream_and_silence_decays() {
        let mut rates = ClientRates::new(SECOND);
        let t0 = Instant::now();
        rates.report(1, 100, t0);
        rates.report(2, 100, t0);
        rates.remove(2);
        assert_eq!(rates.total(t0), 100.0);
        assert_eq!(rates.total(t0 + SECOND * 2), 100.0);
        assert_eq!(rates.total(t0 + SECOND * 3), 0.0, "silent for 2 intervals");
    }

    #[test]
    fn huge_counts_and_bursts_stay_finite() {
        let mut rates = ClientRates::new(SECOND);
        let t0 = Instant::now();
        for _ in 0..1000 {
            rates.report(1, u64::MAX, t0);
        }
        let total = rates.total(t0);
        assert!(total.is_finite() && total > 0.0);
        assert!(total <= 2.0 * i64::MAX as f64);
    }
}
