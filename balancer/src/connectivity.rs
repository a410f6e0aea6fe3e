//! Connectivity states of subchannels and channels, and how a channel's
//! state is aggregated from its subchannels'.

use std::fmt;

/// The gRPC connectivity states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectivityState {
    /// Not connected and not trying to be.
    Idle,
    /// A connection attempt is in progress.
    Connecting,
    /// Connected: calls can be sent.
    Ready,
    /// The last attempt failed; waiting out the backoff.
    TransientFailure,
    /// Shut down for good.
    Shutdown,
}

impl fmt::Display for ConnectivityState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConnectivityState::Idle => "IDLE",
            ConnectivityState::Connecting => "CONNECTING",
            ConnectivityState::Ready => "READY",
            ConnectivityState::TransientFailure => "TRANSIENT_FAILURE",
            ConnectivityState::Shutdown => "SHUTDOWN",
        })
    }
}

/// Aggregates subchannel states the way gRPC does: any READY → READY; else
/// any CONNECTING → CONNECTING; else any IDLE → IDLE; else
/// TRANSIENT_FAILURE (also for no subchannels at all). SHUTDOWN subchannels
/// are ignored.
///
/// ```
/// use waypost_balancer::{ConnectivityState::*, aggregate};
///
/// assert_eq!(aggregate([TransientFailure, Connecting, Ready]), Ready);
/// assert_eq!(aggregate([TransientFailure, Idle]), Idle);
/// assert_eq!(aggregate([]), TransientFailure);
/// ```
pub fn aggregate(states: impl IntoIterator<Item = ConnectivityState>) -> ConnectivityState {
    let (mut connecting, mut idle) = (false, false);
    for state in states {
        match state {
            ConnectivityState::Ready => return ConnectivityState::Ready,
            ConnectivityState::Connecting => connecting = true,
            ConnectivityState::Idle => idle = true,
            ConnectivityState::TransientFailure | ConnectivityState::Shutdown => {}
        }
    }
    if connecting {
        ConnectivityState::Connecting
    } else if idle {
        ConnectivityState::Idle
    } else {
        ConnectivityState::TransientFailure
    }
}

#[cfg(test)]
mod tests {
    use super::ConnectivityState::*;
    use super::*;

    #[test]
    fn aggregation_follows_the_grpc_precedence() {
        assert_eq!(aggregate([Idle, Connecting, TransientFailure]), Connecting);
        assert_eq!(aggregate([Shutdown, Idle]), Idle);
        assert_eq!(aggregate([Shutdown]), TransientFailure);
        assert_eq!(
            aggregate([TransientFailure, TransientFailure]),
            TransientFailure
        );
        assert_eq!(aggregate([Ready, Shutdown]), Ready);
    }
}
