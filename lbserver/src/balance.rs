//! The `grpc.lb.v1.LoadBalancer/BalanceLoad` service.
//!
//! A client sends `initial_request{name}`; the balancer answers
//! `initial_response{client_stats_report_interval}`, then the service's
//! current server list, then a new one whenever it changes (changes within
//! [`BalanceOptions::debounce`] are sent once). ClientStats reports are
//! added to the service's totals. A client that reports faster than half
//! its interval is throttled, not dropped: the next report is read only
//! once half an interval has passed, so HTTP/2 flow control pushes back on
//! it; nothing is lost and nothing accumulates. Rejected: a first message that is not
//! an initial request, none within [`BalanceOptions::initial_request_timeout`],
//! a name of 256 bytes or more (INVALID_ARGUMENT / DEADLINE_EXCEEDED), an
//! unknown service (NOT_FOUND).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use waypost_proto::grpc::lb::v1::load_balance_request::LoadBalanceRequestType;
use waypost_proto::grpc::lb::v1::load_balance_response::LoadBalanceResponseType;
use waypost_proto::grpc::lb::v1::load_balancer_server::LoadBalancer;
use waypost_proto::grpc::lb::v1::{
    ClientStats, InitialLoadBalanceResponse, LoadBalanceRequest, LoadBalanceResponse, ServerList,
};

use crate::config::ListPolicy;
use crate::registry::{Registry, Service};

/// The longest name an initial request may carry, exclusive.
pub const MAX_NAME_BYTES: usize = 256;

/// BalanceLoad behaviour.
#[derive(Debug, Clone)]
pub struct BalanceOptions {
    /// How long a new stream may take to send its initial request.
    pub initial_request_timeout: Duration,
    /// List changes within this window are sent as one.
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

/// The LoadBalancer service over a [`Registry`].
#[derive(Debug, Clone)]
pub struct Balancer {
    registry: Registry,
    options: BalanceOptions,
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl Balancer {
    /// A balancer answering from `registry`, and the switch that ends all
    /// its streams (with UNAVAILABLE, so clients go to another replica).
    pub fn new(
        registry: Registry,
        options: BalanceOptions,
    ) -> (Self, tokio::sync::watch::Sender<bool>) {
        let (stop, stopping) = tokio::sync::watch::channel(false);
        (
            Balancer {
                registry,
                options,
                stopping,
            },
            stop,
        )
    }
}

type ResponseStream =
    Pin<Box<dyn Stream<Item = Result<LoadBalanceResponse, Status>> + Send + 'static>>;

fn to_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

#[tonic::async_trait]
impl LoadBalancer for Balancer {
    type BalanceLoadStream = ResponseStream;

    async fn balance_load(
        &self,
        request: Request<Streaming<LoadBalanceRequest>>,
    ) -> Result<Response<Self::BalanceLoadStream>, Status> {
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(self.options.initial_request_timeout, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "no initial request within {:?}",
                    self.options.initial_request_timeout
                ))
            })??
            .ok_or_else(|| {
                Status::invalid_argument("the stream ended before an initial request")
            })?;
        let Some(LoadBalanceRequestType::InitialRequest(initial)) = first.load_balance_request_type
        else {
            return Err(Status::invalid_argument(
                "the first message must be an initial_request",
            ));
        };
        if initial.name.len() >= MAX_NAME_BYTES {
            return Err(Status::invalid_argument(format!(
                "the service name is {} bytes; it must be shorter than {MAX_NAME_BYTES}",
                initial.name.len()
            )));
        }
        let service = self.registry.find(&initial.name).ok_or_else(|| {
            Status::not_found(format!("no service {:?} is balanced here", initial.name))
        })?;

        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(serve_stream(service, inbound, tx, self.stopping.clone()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Counts a stream as open while alive.
struct OpenStream(Arc<Service>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve_stream(
    service: Arc<Service>,
    mut inbound: Streaming<LoadBalanceRequest>,
    tx: mpsc::Sender<Result<LoadBalanceResponse, Status>>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    service.streams.fetch_add(1, Ordering::Relaxed);
    let _open = OpenStream(service.clone());
    let interval = service.config.client_stats_interval;
    let initial = LoadBalanceResponse {
        load_balance_response_type: Some(LoadBalanceResponseType::InitialResponse(
            InitialLoadBalanceResponse {
                client_stats_report_interval: Some(to_duration(interval)),
            },
        )),
    };
    if tx.send(Ok(initial)).await.is_err() {
        return;
    }
    let mut lists = service.subscribe();
    let mut sent_version = None;
    let client = service.next_client.fetch_add(1, Ordering::Relaxed);
    let mut next_read = Instant::now();
    loop {
        let current = lists.borrow_and_update().clone();
        if sent_version != Some(current.version) {
            let response = for_client(&service, &current.response, client);
            if tx.send(Ok(response)).await.is_err() {
                return;
            }
            service.lists_sent.fetch_add(1, Ordering::Relaxed);
            sent_version = Some(current.version);
        }
        tokio::select! {
            changed = lists.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep_until(next_read), if Instant::now() < next_read => {}
            message = inbound.message(), if Instant::now() >= next_read => match message {
                Ok(Some(LoadBalanceRequest { load_balance_request_type: Some(LoadBalanceRequestType::ClientStats(stats)) })) => {
                    let now = Instant::now();
                    record(&service, &stats);
                    // Throttle: the next report waits half an interval.
                    next_read = now + interval / 2;
                }
                Ok(Some(_)) => {
                    let _ = tx.send(Err(Status::invalid_argument("only client_stats may follow the initial request"))).await;
                    return;
                }
                Ok(None) | Err(_) => return,
            },
            () = tx.closed() => return,
            () = async { let _ = stopping.wait_for(|stop| *stop).await; } => {
                let _ = tx.send(Err(Status::unavailable("the balancer is shutting down"))).await;
                return;
            }
        }
    }
}

/// The response for one client: the service's list, narrowed to the
/// client's subset (with drops added) under the `subset` policy.
fn for_client(
    service: &Service,
    response: &LoadBalanceResponse,
    client: u64,
) -> LoadBalanceResponse {
    if service.config.policy != ListPolicy::Subset {
        return response.clone();
    }
    match &response.load_balance_response_type {
        Some(LoadBalanceResponseType::ServerList(list)) => {
            let mine = crate::assign::subset(&list.servers, service.config.subset_size, client);
            let servers = crate::assign::with_drops(mine, service.config.drop_fraction);
            LoadBalanceResponse {
                load_balance_response_type: Some(LoadBalanceResponseType::ServerList(ServerList {
                    servers,
                })),
            }
        }
        _ => response.clone(),
    }
}

fn record(service: &Service, stats: &ClientStats) {
    let totals = &service.stats;
    let add = |counter: &std::sync::atomic::AtomicU64, value: i64| {
        counter.fetch_add(u64::try_from(value).unwrap_or(0), Ordering::Relaxed);
    };
    add(&totals.started, stats.num_calls_started);
    add(&totals.finished, stats.num_calls_finished);
    add(
        &totals.failed_to_send,
        stats.num_calls_finished_with_client_failed_to_send,
    );
    add(
        &totals.known_received,
        stats.num_calls_finished_known_received,
    );
    totals.reports.fetch_add(1, Ordering::Relaxed);
    let mut drops = totals.drops.lock();
    for per_token in &stats.calls_finished_with_drop {
        if service.knows_token(&per_token.load_balance_token) {
            *drops
                .entry(per_token.load_balance_token.clone())
                .or_default() += u64::try_from(per_token.num_calls).unwrap_or(0);
        }
    }
}
