//! The ejection algorithm of gRFC A50, pure: one interval's call counts
//! and each endpoint's ejection state in; who is ejected and who returns
//! out. Time and randomness are given.

use std::time::Duration;

use tokio::time::Instant;

use super::config::OutlierConfig;

/// One endpoint's interval and history.
#[derive(Debug, Clone, Default)]
pub struct Endpoint {
    /// Calls that succeeded in the interval just ended.
    pub successes: u64,
    /// Calls that failed in it.
    pub failures: u64,
    /// When it was ejected, while it is.
    pub ejected_at: Option<Instant>,
    /// Grows with each ejection, shrinks with each interval not ejected.
    pub multiplier: u32,
}

impl Endpoint {
    fn volume(&self) -> u64 {
        self.successes + self.failures
    }
}

/// What one interval decided, by index.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Newly ejected.
    pub ejected: Vec<usize>,
    /// Back in service.
    pub returned: Vec<usize>,
}

/// Runs one interval over `endpoints` at `now`; `percent()` draws a number
/// in 0..100 for the enforcement chance.
pub fn run(
    config: &OutlierConfig,
    endpoints: &mut [Endpoint],
    now: Instant,
    percent: &mut dyn FnMut() -> u32,
) -> Decision {
    let mut decision = Decision::default();
    let total = endpoints.len();
    let may_eject = |endpoints: &[Endpoint]| {
        let ejected = endpoints.iter().filter(|e| e.ejected_at.is_some()).count();
        total > 0 && (ejected * 100) < (config.max_ejection_percent as usize * total)
    };
    if let Some(rate) = &config.success_rate {
        let candidates: Vec<usize> = (0..total)
            .filter(|&i| endpoints[i].volume() >= u64::from(rate.request_volume))
            .collect();
        if candidates.len() >= rate.minimum_hosts as usize && !candidates.is_empty() {
            let rates: Vec<f64> = candidates
                .iter()
                .map(|&i| endpoints[i].successes as f64 / endpoints[i].volume() as f64)
                .collect();
            let mean = rates.iter().sum::<f64>() / rates.len() as f64;
            let variance =
                rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / rates.len() as f64;
            let floor = mean - variance.sqrt() * (f64::from(rate.stdev_factor) / 1000.0);
            for (&i, &r) in candidates.iter().zip(&rates) {
                if !may_eject(endpoints) {
                    break;
                }
                if r < floor
                    && endpoints[i].ejected_at.is_none()
                    && percent() < rate.enforcement_percentage
                {
                    eject(&mut endpoints[i], now);
                    decision.ejected.push(i);
                }
            }
        }
    }
    if let Some(failure) = &config.failure_percentage {
        let candidates: Vec<usize> = (0..total)
            .filter(|&i| endpoints[i].volume() >= u64::from(failure.request_volume))
            .collect();
        if candidates.len() >= failure.minimum_hosts as usize {
            for i in candidates {
                if !may_eject(endpoints) {
                    break;
                }
                let e = &endpoints[i];
                let failed_percent = e.failures as f64 * 100.0 / e.volume() as f64;
                if failed_percent > f64::from(failure.threshold)
                    && e.ejected_at.is_none()
                    && percent() < failure.enforcement_percentage
                {
                    eject(&mut endpoints[i], now);
                    decision.ejected.push(i);
                }
            }
        }
    }
    for (i, e) in endpoints.iter_mut().enumerate() {
        match e.ejected_at {
            None => e.multiplier = e.multiplier.saturating_sub(1),
            Some(at) => {
                if now >= at + ejection_time(config, e) && !decision.ejected.contains(&i) {
                    e.ejected_at = None;
                    decision.returned.push(i);
                }
            }
        }
        e.successes = 0;
        e.failures = 0;
    }
    decision
}

fn eject(endpoint: &mut Endpoint, now: Instant) {
    endpoint.ejected_at = Some(now);
    endpoint.multiplier = endpoint.multiplier.saturating_add(1);
}

/// How long an ejection of `endpoint` lasts under `config`.
pub fn ejection_time(config: &OutlierConfig, endpoint: &Endpoint) -> Duration {
    (config.base_ejection_time * endpoint.multiplier)
        .min(config.max_ejection_time.max(config.base_ejection_time))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::config::parse;
    use super::*;

    fn config(extra: serde_json::Value) -> OutlierConfig {
        let mut base = json!({"childPolicy": [{"round_robin": {}}], "maxEjectionPercent": 50,
                              "baseEjectionTime": "30s", "maxEjectionTime": "300s"});
        base.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        parse(&base, &|n| n == "round_robin").unwrap()
    }

    fn counts(pairs: &[(u64, u64)]) -> Vec<Endpoint> {
        pairs
            .iter()
            .map(|&(successes, failures)| Endpoint {
                successes,
                failures,
                ..Endpoint::default()
            })
            .collect()
    }

    #[test]
    fn failure_percentage_ejects_the_failing_one_and_it_returns_after_the_base_time() {
        let c = config(
            json!({"failurePercentageEjection": {"threshold": 50, "minimumHosts": 4, "requestVolume": 10}}),
        );
        let start = Instant::now();
        let mut endpoints = counts(&[(100, 0), (100, 0), (100, 0), (20, 80)]);
        let d = run(&c, &mut endpoints, start, &mut || 0);
        assert_eq!(d.ejected, [3]);
        assert_eq!(endpoints[3].multiplier, 1);
        // Counts reset each interval; still ejected 10 s later…
        let d = run(
            &c,
            &mut endpoints,
            start + Duration::from_secs(10),
            &mut || 0,
        );
        assert_eq!(d, Decision::default());
        // …back after the 30 s base.
        let d = run(
            &c,
            &mut endpoints,
            start + Duration::from_secs(30),
            &mut || 0,
        );
        assert_eq!(d.returned, [3]);
        assert_eq!(ejection_time(&c, &endpoints[3]), Duration::from_secs(30));
    }

    #[test]
    fn success_rate_ejects_outliers_below_the_mean_by_the_stdev_factor() {
        let c = config(
            json!({"successRateEjection": {"stdevFactor": 1000, "minimumHosts": 5, "requestVolume": 10}}),
        );
        let mut endpoints = counts(&[(100, 0), (99, 1), (100, 0), (98, 2), (40, 60)]);
        let d = run(&c, &mut endpoints, Instant::now(), &mut || 0);
        assert_eq!(d.ejected, [4]);
    }

    #[test]
    fn guards_hold_volume_hosts_enforcement_and_the_ejection_cap() {
        // Too few calls: nothing.
        let c = config(
            json!({"failurePercentageEjection": {"threshold": 50, "minimumHosts": 2, "requestVolume": 100}}),
        );
        let mut few = counts(&[(10, 0), (0, 10)]);
        assert_eq!(
            run(&c, &mut few, Instant::now(), &mut || 0),
            Decision::default()
        );
        // Enforcement 0 %: nothing.
        let c = config(
            json!({"failurePercentageEjection": {"threshold": 50, "minimumHosts": 2, "requestVolume": 10, "enforcementPercentage": 0}}),
        );
        let mut two = counts(&[(100, 0), (0, 100)]);
        assert_eq!(
            run(&c, &mut two, Instant::now(), &mut || 0),
            Decision::default()
        );
        // Cap 50 % of 4: at most 2 of 3 failing ones.
        let c = config(
            json!({"failurePercentageEjection": {"threshold": 50, "minimumHosts": 2, "requestVolume": 10}}),
        );
        let mut four = counts(&[(100, 0), (0, 100), (0, 100), (0, 100)]);
        assert_eq!(
            run(&c, &mut four, Instant::now(), &mut || 0).ejected.len(),
            2
        );
    }

    #[test]
    fn repeated_ejections_last_longer_up_to_the_maximum() {
        let c = config(
            json!({"failurePercentageEjection": {"threshold": 50, "minimumHosts": 1, "requestVolume": 1}}),
        );
        let e = Endpoint {
            multiplier: 20,
            ..Endpoint::default()
        };
        assert_eq!(ejection_time(&c, &e), Duration::from_secs(300));
    }
}
