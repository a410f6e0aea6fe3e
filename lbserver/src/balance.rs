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

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use std::task::{Context, Poll};

use tokio_stream::Stream;
use tokio_stream::wrappers::WatchStream;
use tonic::{Request, Response, Status, Streaming};
use waypost_proto::grpc::lb::v1::load_balance_request::LoadBalanceRequestType;
use waypost_proto::grpc::lb::v1::load_balance_response::LoadBalanceResponseType;
use waypost_proto::grpc::lb::v1::load_balancer_server::LoadBalancer;
use waypost_proto::grpc::lb::v1::{
    InitialLoadBalanceResponse, LoadBalanceRequest, LoadBalanceResponse, ServerList,
};

use crate::config::ListPolicy;
use crate::registry::{ListSnapshot, Registry, Service};

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
            })?
            .map_err(oversized_is_resource_exhausted)?
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

        Ok(Response::new(Box::pin(BalanceStream::new(
            service,
            inbound,
            self.stopping.clone(),
        ))))
    }
}

/// Counts a stream as open while alive; when it ends, its client's
/// reported call rate leaves the service's estimate.
struct OpenStream {
    service: Arc<Service>,
    client: u64,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.service.streams.fetch_sub(1, Ordering::Relaxed);
        self.service.client_left(self.client);
    }
}

/// One client's response stream. It is also what reads the client's
/// ClientStats: every poll first drains the inbound side (throttled), then
/// looks for a new list. No task or channel of its own — the HTTP/2
/// stream's own task polls it when either side has news — so a list change
/// costs one wake-up per stream.
struct BalanceStream {
    service: Arc<Service>,
    _open: OpenStream,
    initial: Option<LoadBalanceResponse>,
    inbound: Streaming<LoadBalanceRequest>,
    lists: WatchStream<Arc<ListSnapshot>>,
    stopping: WatchStream<bool>,
    /// While set, the next ClientStats report is not read yet.
    throttle: Option<Pin<Box<tokio::time::Sleep>>>,
    sent_version: Option<u64>,
    client: u64,
    ended: bool,
}

impl BalanceStream {
    fn new(
        service: Arc<Service>,
        inbound: Streaming<LoadBalanceRequest>,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> BalanceStream {
        service.streams.fetch_add(1, Ordering::Relaxed);
        let client = service.next_client.fetch_add(1, Ordering::Relaxed);
        let initial = LoadBalanceResponse {
            load_balance_response_type: Some(LoadBalanceResponseType::InitialResponse(
                InitialLoadBalanceResponse {
                    client_stats_report_interval: Some(to_duration(
                        service.config.client_stats_interval,
                    )),
                },
            )),
        };
        BalanceStream {
            _open: OpenStream {
                service: service.clone(),
                client,
            },
            initial: Some(initial),
            inbound,
            lists: WatchStream::new(service.subscribe()),
            stopping: WatchStream::new(stopping),
            throttle: None,
            sent_version: None,
            client,
            service,
            ended: false,
        }
    }

    fn end(&mut self, last: Option<Status>) -> Poll<Option<Result<LoadBalanceResponse, Status>>> {
        self.ended = true;
        Poll::Ready(last.map(Err))
    }
}

impl Stream for BalanceStream {
    type Item = Result<LoadBalanceResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        if let Some(initial) = this.initial.take() {
            return Poll::Ready(Some(Ok(initial)));
        }
        while let Poll::Ready(next) = Pin::new(&mut this.stopping).poll_next(cx) {
            match next {
                Some(false) => {}
                Some(true) => {
                    return this.end(Some(Status::unavailable("the balancer is shutting down")));
                }
                None => return this.end(None),
            }
        }
        // ClientStats, at most one per half interval (HTTP/2 flow control
        // holds the rest back at the client).
        loop {
            if let Some(sleep) = &mut this.throttle {
                if sleep.as_mut().poll(cx).is_pending() {
                    break;
                }
                this.throttle = None;
            }
            match Pin::new(&mut this.inbound).poll_next(cx) {
                Poll::Ready(Some(Ok(LoadBalanceRequest {
                    load_balance_request_type: Some(LoadBalanceRequestType::ClientStats(stats)),
                }))) => {
                    this.service.record_report(this.client, &stats);
                    let half = this.service.config.client_stats_interval / 2;
                    this.throttle = Some(Box::pin(tokio::time::sleep(half)));
                }
                Poll::Ready(Some(Ok(_))) => {
                    return this.end(Some(Status::invalid_argument(
                        "only client_stats may follow the initial request",
                    )));
                }
                Poll::Ready(Some(Err(status))) if status.code() == tonic::Code::OutOfRange => {
                    return this.end(Some(oversized_is_resource_exhausted(status)));
                }
                Poll::Ready(Some(Err(_)) | None) => return this.end(None),
                Poll::Pending => break,
            }
        }
        loop {
            match Pin::new(&mut this.lists).poll_next(cx) {
                Poll::Ready(Some(current)) => {
                    if this.sent_version == Some(current.version) {
                        continue;
                    }
                    this.sent_version = Some(current.version);
                    this.service.lists_sent.fetch_add(1, Ordering::Relaxed);
                    let response = for_client(&this.service, &current.response, this.client);
                    return Poll::Ready(Some(Ok(response)));
                }
                Poll::Ready(None) => return this.end(None),
                Poll::Pending => return Poll::Pending,
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

/// tonic reports a request message over the size limit as OUT_OF_RANGE;
/// gRPC's convention (and grpc-go's and C-core's) is RESOURCE_EXHAUSTED.
fn oversized_is_resource_exhausted(status: Status) -> Status {
    if status.code() == tonic::Code::OutOfRange {
        Status::resource_exhausted(status.message().to_owned())
    } else {
        status
    }
}
