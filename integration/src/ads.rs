//! A scripted xDS management server: `envoy.service.discovery.v3.
//! AggregatedDiscoveryService/StreamAggregatedResources` (State of the
//! World) on `127.0.0.1`, built on tonic and the `envoy-types` types.
//!
//! A test [`set`](AdsServer::set)s the current response of a resource type;
//! it goes to every open stream at once, to every new stream when that
//! stream first asks for the type — as a real server always sends its
//! current state on a new stream — and to a stream whose request changes
//! the names it asks for. Every request is recorded, ACKs and NACKs
//! included, and a test waits for one with [`AdsServer::wait_for_request`].
//! The server can be stopped (every stream cut, port closed) and restarted
//! on the same port.
//!
//! ```no_run
//! # async fn demo() -> Result<(), waypost_integration::HarnessError> {
//! use waypost_integration::ads::AdsServer;
//!
//! let server = AdsServer::start().await?;
//! let first = server
//!     .wait_for_request(|r| r.type_url.ends_with("Cluster"))
//!     .await;
//! println!("the client asked for {:?}", first.resource_names);
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::HarnessError;

type Outbox = mpsc::UnboundedSender<Result<DiscoveryResponse, Status>>;

#[derive(Default)]
struct State {
    /// The current response per type URL.
    current: BTreeMap<String, DiscoveryResponse>,
    /// Every request received, in order.
    requests: Vec<DiscoveryRequest>,
    /// Open streams by number: their outbox, and the names they last asked
    /// for per type.
    streams: BTreeMap<usize, (Outbox, BTreeMap<String, Vec<String>>)>,
    streams_opened: usize,
}

struct Inner {
    state: Mutex<State>,
    arrived: Notify,
    nonce: AtomicU64,
}

impl Inner {
    fn nonce(&self) -> String {
        format!("nonce-{}", self.nonce.fetch_add(1, Ordering::Relaxed))
    }
}

/// The scripted server. See the [module docs](self).
pub struct AdsServer {
    addr: SocketAddr,
    inner: Arc<Inner>,
    running: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for AdsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl AdsServer {
    /// Starts on a free port of `127.0.0.1`.
    pub async fn start() -> Result<AdsServer, HarnessError> {
        let listener = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let addr = listener.local_addr()?;
        let server = AdsServer {
            addr,
            inner: Arc::new(Inner {
                state: Mutex::default(),
                arrived: Notify::new(),
                nonce: AtomicU64::new(1),
            }),
            running: Mutex::new(None),
        };
        *server.running.lock() = Some(server.serve(listener));
        Ok(server)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A bootstrap JSON pointing at this server (plaintext), for `node_id`.
    pub fn bootstrap_json(&self, node_id: &str) -> String {
        format!(
            r#"{{"xds_servers": [{{"server_uri": "{}", "channel_creds": [{{"type": "insecure"}}], "server_features": ["xds_v3"]}}], "node": {{"id": "{node_id}"}}}}"#,
            self.addr
        )
    }

    /// Makes `response` the current state of its type (its nonce is set
    /// here) and sends it to every stream that asked for the type.
    pub fn set(&self, mut response: DiscoveryResponse) {
        let mut state = self.inner.state.lock();
        state.streams.retain(|_, (outbox, _)| !outbox.is_closed());
        for (outbox, types) in state.streams.values() {
            if types.contains_key(&response.type_url) {
                response.nonce = self.inner.nonce();
                let _ = outbox.send(Ok(response.clone()));
            }
        }
        state.current.insert(response.type_url.clone(), response);
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<DiscoveryRequest> {
        self.inner.state.lock().requests.clone()
    }

    /// How many streams were opened in all.
    pub fn streams_opened(&self) -> usize {
        self.inner.state.lock().streams_opened
    }

    /// Waits (at most 10 s) for a request, received from now on or
    /// before, that satisfies `condition`; panics if none comes.
    pub async fn wait_for_request(
        &self,
        mut condition: impl FnMut(&DiscoveryRequest) -> bool,
    ) -> DiscoveryRequest {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let arrived = self.inner.arrived.notified();
            if let Some(found) = self.requests().into_iter().find(|r| condition(r)) {
                return found;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!(
                    "no matching xDS request within 10 s; got {:#?}",
                    self.requests()
                );
            }
        }
    }

    /// Stops as if the process died: the port closes, every stream is cut.
    pub async fn stop(&self) {
        let task = self.running.lock().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        self.inner.state.lock().streams.clear();
    }

    /// Starts again on the same port (keeping the current state).
    pub async fn restart(&self) -> Result<(), HarnessError> {
        let listener = bind(self.addr)?;
        *self.running.lock() = Some(self.serve(listener));
        Ok(())
    }

    /// The accept loop: it owns every connection task, so aborting it cuts
    /// them all (tonic's own server would leave them running).
    fn serve(&self, listener: tokio::net::TcpListener) -> JoinHandle<()> {
        let routes = tonic::service::Routes::new(AggregatedDiscoveryServiceServer::new(Ads {
            inner: self.inner.clone(),
        }))
        .prepare();
        tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let service = hyper_util::service::TowerToHyperService::new(routes.clone());
                        connections.spawn(async move {
                            let _ = hyper::server::conn::http2::Builder::new(
                                hyper_util::rt::TokioExecutor::new(),
                            )
                            .serve_connection(io, service)
                            .await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        })
    }
}

impl Drop for AdsServer {
    fn drop(&mut self) {
        if let Some(task) = self.running.get_mut().take() {
            task.abort();
        }
    }
}

fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, HarnessError> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket.listen(128)?)
}

struct Ads {
    inner: Arc<Inner>,
}

type Responses = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaResponses = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = Responses;
    type DeltaAggregatedResourcesStream = DeltaResponses;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Responses>, Status> {
        let mut incoming = request.into_inner();
        let (outbox, responses) = mpsc::unbounded_channel();
        let index = {
            let mut state = self.inner.state.lock();
            state.streams_opened += 1;
            let index = state.streams_opened;
            state
                .streams
                .insert(index, (outbox.clone(), Default::default()));
            index
        };
        let inner = self.inner.clone();
        tokio::spawn(async move {
            // Ends when the client's side ends (its connection cut, too).
            while let Ok(Some(request)) = incoming.message().await {
                let mut state = inner.state.lock();
                let type_url = request.type_url.clone();
                // A stream's first request of a type, and one that changes
                // the names asked for, get the current state (ACKs and
                // NACKs do not).
                let names = request.resource_names.clone();
                let changed = state
                    .streams
                    .get_mut(&index)
                    .map(|(_, types)| types.insert(type_url.clone(), names.clone()) != Some(names))
                    .unwrap_or(false);
                if changed && let Some(current) = state.current.get(&type_url) {
                    let mut response = current.clone();
                    response.nonce = inner.nonce();
                    let _ = outbox.send(Ok(response));
                }
                state.requests.push(request);
                drop(state);
                inner.arrived.notify_waiters();
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(responses),
        )))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaResponses>, Status> {
        Err(Status::unimplemented(
            "this test server speaks State of the World only",
        ))
    }
}
