//! The `grpc.lb.v1.LoadBalancer/BalanceLoad` service.
//!
//! A client sends `initial_request{name}`; the balancer answers
//! `initial_response{client_stats_report_interval}`, then the service's
//! current server list, then a new one whenever it changes (a change is
//! sent at once; the ones that follow within [`BalanceOptions::debounce`]
//! are sent as one list when that window ends). ClientStats reports are
//! added to the service's totals. A client that reports faster than half
//! its interval is throttled, not dropped: the next report is read only
//! once half an interval has passed, so HTTP/2 flow control pushes back on
//! it; nothing is lost and nothing accumulates. Rejected: a first message that is not
//! an initial request, none within [`BalanceOptions::initial_request_timeout`],
//! a name of 256 bytes or more (INVALID_ARGUMENT / DEADLINE_EXCEEDED), an
//! unknown service (NOT_FOUND).
//!
//! The service is served straight on `h2` by the balancer port's
//! connection task ([`crate::port`]), not through tonic: every stream of a
//! connection lives in that one task (`balance/streams.rs`), a list
//! change wakes each connection once (not each stream), and every stream
//! of a service is sent the same encoded list ([`ListSnapshot::frame`]),
//! unless the `subset` policy gives each client its own.
//!
//! [`ListSnapshot::frame`]: crate::registry::ListSnapshot::frame

pub mod frames;
mod inbound;
pub(crate) mod streams;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use waypost_proto::grpc::lb::v1::load_balance_response::LoadBalanceResponseType;
use waypost_proto::grpc::lb::v1::{InitialLoadBalanceResponse, LoadBalanceResponse, ServerList};

use crate::config::ListPolicy;
use crate::registry::{ListSnapshot, Registry, Service};

/// The method's path.
pub const PATH: &str = "/grpc.lb.v1.LoadBalancer/BalanceLoad";

/// The longest name an initial request may carry, exclusive.
pub const MAX_NAME_BYTES: usize = 256;

/// BalanceLoad behaviour.
#[derive(Debug, Clone)]
pub struct BalanceOptions {
    /// How long a new stream may take to send its initial request.
    pub initial_request_timeout: Duration,
    /// After a list is sent, further changes within this window are held
    /// and sent as one list when it ends (a change after a quiet spell is
    /// sent at once).
    pub debounce: Duration,
}

impl Default for BalanceOptions {
    fn default() -> Self {
        BalanceOptions {
            initial_request_timeout: Duration::from_secs(10),
            debounce: Duration::from_millis(50),
        }
    }
}

/// What every BalanceLoad stream of the port shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) registry: Registry,
    pub(crate) options: BalanceOptions,
    /// The longest request message taken.
    pub(crate) max_request_bytes: usize,
}

/// Counts a stream as open while alive; when it ends, its client's
/// reported call rate leaves the service's estimate.
struct OpenStream {
    service: Arc<Service>,
    client: u64,
}

impl OpenStream {
    fn new(service: Arc<Service>, client: u64) -> OpenStream {
        service.streams.fetch_add(1, Ordering::Relaxed);
        OpenStream { service, client }
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.service.streams.fetch_sub(1, Ordering::Relaxed);
        self.service.client_left(self.client);
    }
}

/// The first response: how often the client is to report.
fn initial_frame(service: &Service) -> Bytes {
    let interval = service.config.client_stats_interval;
    frames::encode(&LoadBalanceResponse {
        load_balance_response_type: Some(LoadBalanceResponseType::InitialResponse(
            InitialLoadBalanceResponse {
                client_stats_report_interval: Some(prost_types::Duration {
                    seconds: i64::try_from(interval.as_secs()).unwrap_or(i64::MAX),
                    nanos: interval.subsec_nanos() as i32,
                }),
            },
        )),
    })
}

/// The list for one client, encoded: the service's shared encoding, or
/// under the `subset` policy the client's own subset (with drops added).
fn frame_for(service: &Service, snapshot: &ListSnapshot, client: u64) -> Bytes {
    if service.config.policy != ListPolicy::Subset {
        return snapshot.frame.clone();
    }
    match &snapshot.response.load_balance_response_type {
        Some(LoadBalanceResponseType::ServerList(list)) => {
            let mine = crate::assign::subset(&list.servers, service.config.subset_size, client);
            let servers = crate::assign::with_drops(mine, service.config.drop_fraction);
            frames::encode(&LoadBalanceResponse {
                load_balance_response_type: Some(LoadBalanceResponseType::ServerList(ServerList {
                    servers,
                })),
            })
        }
        _ => snapshot.frame.clone(),
    }
}
