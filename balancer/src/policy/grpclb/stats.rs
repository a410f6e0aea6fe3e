//! grpclb client stats: counted per call, reported and reset at the
//! balancer's interval.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};

use parking_lot::Mutex;
use waypost_proto::grpc::lb::v1::{ClientStats, ClientStatsPerToken};

use crate::picker::{CallOutcome, CallTracker};

/// Call counters since the last report.
#[derive(Debug, Default)]
pub struct GrpclbStats {
    started: AtomicI64,
    finished: AtomicI64,
    failed_to_send: AtomicI64,
    known_received: AtomicI64,
    drops: Mutex<HashMap<String, i64>>,
}

impl GrpclbStats {
    /// A call dropped by a drop entry with `token` (it counts as started
    /// and finished too, as in grpc-go).
    pub fn dropped(&self, token: &str) {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.finished.fetch_add(1, Ordering::Relaxed);
        *self.drops.lock().entry(token.to_owned()).or_default() += 1;
    }

    /// The counts since the last call, reset to zero.
    pub fn take(&self) -> ClientStats {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut drops: Vec<ClientStatsPerToken> = std::mem::take(&mut *self.drops.lock())
            .into_iter()
            .map(|(load_balance_token, num_calls)| ClientStatsPerToken {
                load_balance_token,
                num_calls,
            })
            .collect();
        drops.sort_by(|a, b| a.load_balance_token.cmp(&b.load_balance_token));
        ClientStats {
            timestamp: Some(prost_types::Timestamp {
                seconds: now.as_secs() as i64,
                nanos: now.subsec_nanos() as i32,
            }),
            num_calls_started: self.started.swap(0, Ordering::Relaxed),
            num_calls_finished: self.finished.swap(0, Ordering::Relaxed),
            num_calls_finished_with_client_failed_to_send: self
                .failed_to_send
                .swap(0, Ordering::Relaxed),
            num_calls_finished_known_received: self.known_received.swap(0, Ordering::Relaxed),
            calls_finished_with_drop: drops,
        }
    }
}

/// Whether a report counts nothing (an all-zero report after an all-zero
/// report is not sent).
pub(crate) fn is_zero(stats: &ClientStats) -> bool {
    stats.num_calls_started == 0
        && stats.num_calls_finished == 0
        && stats.num_calls_finished_with_client_failed_to_send == 0
        && stats.num_calls_finished_known_received == 0
        && stats
            .calls_finished_with_drop
            .iter()
            .all(|d| d.num_calls == 0)
}

impl CallTracker for GrpclbStats {
    fn started(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    fn finished(&self, outcome: CallOutcome) {
        self.finished.fetch_add(1, Ordering::Relaxed);
        match outcome {
            CallOutcome::FailedToSend => self.failed_to_send.fetch_add(1, Ordering::Relaxed),
            CallOutcome::KnownReceived => self.known_received.fetch_add(1, Ordering::Relaxed),
            CallOutcome::Failed => 0,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_count_and_reset() {
        let s = GrpclbStats::default();
        s.started();
        s.finished(CallOutcome::KnownReceived);
        s.started();
        s.finished(CallOutcome::FailedToSend);
        s.dropped("d");
        let r = s.take();
        assert_eq!((r.num_calls_started, r.num_calls_finished), (3, 3));
        assert_eq!(
            (
                r.num_calls_finished_known_received,
                r.num_calls_finished_with_client_failed_to_send
            ),
            (1, 1)
        );
        assert_eq!(
            r.calls_finished_with_drop,
            vec![ClientStatsPerToken {
                load_balance_token: "d".into(),
                num_calls: 1
            }]
        );
        assert!(!is_zero(&r));
        assert!(is_zero(&s.take()), "counters reset after a report");
    }
}
