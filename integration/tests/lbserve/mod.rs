//! `waypost serve` options for tests: a 10 ms debounce and probes that
//! retry within half a second, so changes show up quickly. Shared by the
//! grpclb and xDS tests.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use waypost_lbserver::balance::BalanceOptions;
use waypost_lbserver::probe::ProbeOptions;
use waypost_lbserver::server::ServeOptions;
use waypost_resolver::backoff::BackoffConfig;

/// The defaults, with fast lists and probes.
pub fn fast_serve_options() -> ServeOptions {
    ServeOptions {
        balance: BalanceOptions {
            debounce: Duration::from_millis(10),
            ..BalanceOptions::default()
        },
        probe: ProbeOptions {
            backoff: BackoffConfig {
                base: Duration::from_millis(100),
                multiplier: 1.6,
                jitter: 0.2,
                max: Duration::from_millis(500),
            },
            ..ProbeOptions::default()
        },
        ..ServeOptions::default()
    }
}
