//! An endpoint's weight from its load reports (gRFC A58): qps over
//! utilization, used only after a blackout period of steady reports and
//! dropped once reports stop for the expiration period.
//!
//! [`WeightState`] is the pure rule, told the time; [`EndpointWeight`]
//! shares it between the picker's calls, the out-of-band stream and the
//! policy's weight updates.

use std::time::Duration;

use base64::Engine as _;
use parking_lot::Mutex;
use tokio::time::Instant;
use waypost_proto::orca::TRAILER;
use waypost_proto::xds::data::orca::v3::OrcaLoadReport;

use crate::picker::{CallOutcome, CallTracker};

/// What an endpoint's reports have said, and when.
#[derive(Debug, Clone, Default)]
pub(crate) struct WeightState {
    weight: f64,
    /// When the current run of usable reports began (`None`: no run).
    non_empty_since: Option<Instant>,
    /// When the last usable report came (`None`: never).
    last_updated: Option<Instant>,
}

impl WeightState {
    /// Takes in one report. Reports without both a utilization and a qps
    /// say nothing and are ignored.
    pub(crate) fn update(&mut self, report: &OrcaLoadReport, penalty: f64, now: Instant) {
        let utilization = if report.application_utilization > 0.0 {
            report.application_utilization
        } else {
            report.cpu_utilization
        };
        let qps = report.rps_fractional;
        let usable = |x: f64| x.is_finite() && x > 0.0;
        if !usable(utilization) || !usable(qps) {
            return;
        }
        let eps = if report.eps.is_finite() && report.eps > 0.0 {
            report.eps
        } else {
            0.0
        };
        let weight = qps / (utilization + eps / qps * penalty);
        if !usable(weight) {
            return;
        }
        self.weight = weight;
        self.last_updated = Some(now);
        self.non_empty_since.get_or_insert(now);
    }

    /// The weight to use now: 0 (meaning "unknown": the scheduler gives
    /// it the mean) when it never reported, has not reported for
    /// `expiration`, or has not reported steadily for `blackout`.
    #[cfg(test)]
    pub(crate) fn weight(&mut self, now: Instant, expiration: Duration, blackout: Duration) -> f64 {
        self.weighed(now, expiration, blackout).0
    }

    /// [`WeightState::weight`], and why it is 0 when it is (A78 counts
    /// both reasons).
    pub(crate) fn weighed(
        &mut self,
        now: Instant,
        expiration: Duration,
        blackout: Duration,
    ) -> (f64, Usable) {
        let Some(last_updated) = self.last_updated else {
            return (0.0, Usable::NotYet);
        };
        if now.saturating_duration_since(last_updated) >= expiration {
            // Stale: when reports come again, the blackout applies again.
            self.non_empty_since = None;
            return (0.0, Usable::Stale);
        }
        if !blackout.is_zero() {
            match self.non_empty_since {
                Some(since) if now.saturating_duration_since(since) >= blackout => {}
                _ => return (0.0, Usable::NotYet),
            }
        }
        (self.weight, Usable::Yes)
    }
}

/// Whether an endpoint's weight counts (gRFC A78's reasons it does not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Usable {
    /// It does.
    Yes,
    /// No report yet, or still in the blackout period.
    NotYet,
    /// The last report is older than the expiration period.
    Stale,
}

/// One endpoint's weight, shared; also the tracker of the calls routed to
/// it when reports come per call.
#[derive(Debug)]
pub(crate) struct EndpointWeight {
    state: Mutex<WeightState>,
    penalty: f64,
}

impl EndpointWeight {
    pub(crate) fn new(penalty: f64) -> EndpointWeight {
        EndpointWeight {
            state: Mutex::default(),
            penalty,
        }
    }

    /// Takes in a report received now.
    pub(crate) fn report(&self, report: &OrcaLoadReport) {
        self.state
            .lock()
            .update(report, self.penalty, Instant::now());
    }

    /// The weight to use at `now`, and whether it is usable.
    pub(crate) fn weighed(
        &self,
        now: Instant,
        expiration: Duration,
        blackout: Duration,
    ) -> (f64, Usable) {
        self.state.lock().weighed(now, expiration, blackout)
    }
}

/// The report in a call's trailers, if there is a readable one. gRPC's
/// binary headers are base64, padded or not.
pub(crate) fn report_in(trailers: &http::HeaderMap) -> Option<OrcaLoadReport> {
    const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let value = trailers.get(TRAILER)?;
    let bytes = BASE64.decode(value.as_bytes()).ok()?;
    prost::Message::decode(bytes.as_slice()).ok()
}

impl CallTracker for EndpointWeight {
    fn started(&self) {}

    fn finished(&self, _outcome: CallOutcome) {}

    fn trailers(&self, trailers: &http::HeaderMap) {
        if let Some(report) = report_in(trailers) {
            self.report(&report);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(cpu: f64, qps: f64, eps: f64) -> OrcaLoadReport {
        OrcaLoadReport {
            cpu_utilization: cpu,
            rps_fractional: qps,
            eps,
            ..Default::default()
        }
    }

    const EXPIRE: Duration = Duration::from_secs(180);
    const BLACKOUT: Duration = Duration::from_secs(10);

    #[test]
    fn qps_over_utilization_with_errors_as_load() {
        let t0 = Instant::now();
        let mut state = WeightState::default();
        state.update(&load(0.5, 100.0, 0.0), 1.0, t0);
        assert_eq!(state.weight(t0, EXPIRE, Duration::ZERO), 200.0);
        // 10 errors per 100 queries add 0.1 × penalty 2 to the utilization.
        state.update(&load(0.5, 100.0, 10.0), 2.0, t0);
        assert!((state.weight(t0, EXPIRE, Duration::ZERO) - 100.0 / 0.7).abs() < 1e-9);
        // application_utilization wins over CPU when set.
        let mut report = load(0.5, 100.0, 0.0);
        report.application_utilization = 0.25;
        state.update(&report, 1.0, t0);
        assert_eq!(state.weight(t0, EXPIRE, Duration::ZERO), 400.0);
    }

    #[test]
    fn empty_reports_change_nothing() {
        let t0 = Instant::now();
        let mut state = WeightState::default();
        state.update(&load(0.0, 100.0, 0.0), 1.0, t0);
        state.update(&load(0.5, 0.0, 0.0), 1.0, t0);
        state.update(&load(f64::NAN, 100.0, 0.0), 1.0, t0);
        assert_eq!(state.weight(t0, EXPIRE, Duration::ZERO), 0.0);
    }

    #[test]
    fn blackout_then_use_then_expiry_restarts_the_blackout() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut state = WeightState::default();
        state.update(&load(0.5, 100.0, 0.0), 1.0, t0);
        assert_eq!(
            state.weight(at(9), EXPIRE, BLACKOUT),
            0.0,
            "in the blackout"
        );
        assert_eq!(state.weight(at(10), EXPIRE, BLACKOUT), 200.0);
        assert_eq!(state.weighed(at(10), EXPIRE, BLACKOUT).1, Usable::Yes);
        assert_eq!(
            WeightState::default().weighed(at(10), EXPIRE, BLACKOUT).1,
            Usable::NotYet,
            "never reported"
        );
        {
            let mut blackout = WeightState::default();
            blackout.update(&load(0.5, 100.0, 0.0), 1.0, t0);
            assert_eq!(blackout.weighed(at(9), EXPIRE, BLACKOUT).1, Usable::NotYet);
            assert_eq!(blackout.weighed(at(180), EXPIRE, BLACKOUT).1, Usable::Stale);
        }
        // Reports stop: the weight expires…
        assert_eq!(state.weight(at(180), EXPIRE, BLACKOUT), 0.0);
        // …and when they resume, the blackout starts over.
        state.update(&load(0.5, 100.0, 0.0), 1.0, at(200));
        assert_eq!(state.weight(at(205), EXPIRE, BLACKOUT), 0.0);
        assert_eq!(state.weight(at(210), EXPIRE, BLACKOUT), 200.0);
    }

    #[test]
    fn trailer_reports_are_read_padded_or_not() {
        let report = load(0.4, 50.0, 0.0);
        let bytes = prost::Message::encode_to_vec(&report);
        for engine in [
            base64::engine::general_purpose::STANDARD,
            base64::engine::general_purpose::STANDARD_NO_PAD,
        ] {
            let mut trailers = http::HeaderMap::new();
            trailers.insert(TRAILER, engine.encode(&bytes).parse().unwrap());
            assert_eq!(report_in(&trailers), Some(report.clone()));
        }
        let mut garbage = http::HeaderMap::new();
        garbage.insert(TRAILER, "not*base64".parse().unwrap());
        assert_eq!(report_in(&garbage), None);
        garbage.insert(TRAILER, "AAAA".parse().unwrap());
        assert_eq!(report_in(&garbage), None, "base64 but not a report");
    }
}
