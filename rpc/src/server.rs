//! The server: one listener, a per-connection handshake under a
//! concurrency cap, then `control` connections to tonic and `data`
//! connections to a [`DataHandler`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use waypost_balancer::BoxedIo;
use waypost_resolver::Address;

use crate::body::{self, Body, Inbound, Source};
use crate::conn::{Conn, ConnSettings};
use crate::error::Error;
use crate::frame::{FLAG_BODY, Frame, FrameType, RequestHead};
use crate::handshake::{self, HandshakeConfig};
use crate::transport::{Listener, PeerInfo, ServerIo};
use crate::{CHECKSUM_EXTENSION, LABEL_CONTROL, LABEL_DATA};
use waypost_balancer::tls::{ServerTlsConfig, TlsAcceptor};

/// One bulk-data request as its handler sees it.
#[derive(Debug)]
pub struct DataRequest {
    /// The endpoint the client named.
    pub endpoint: String,
    /// The metadata the client sent (e.g. grpclb's `lb-token`), in order.
    pub metadata: Vec<(String, String)>,
    /// The request message (usually protobuf; decode it with prost).
    pub message: Bytes,
    /// The client's body (empty if it sent none).
    pub body: Body,
    /// Who sent it.
    pub peer: PeerInfo,
    cancelled: CancellationToken,
}

impl DataRequest {
    /// The first metadata value named `name`.
    pub fn metadata(&self, name: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Completes when the client cancelled (stopped receiving the
    /// response) or the connection failed: stop working then.
    pub async fn cancelled(&self) {
        self.cancelled.cancelled().await;
    }

    /// Whether that happened already.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.is_cancelled()
    }

    /// A token that fires at the same time, to hand to other tasks.
    pub fn cancellation(&self) -> CancellationToken {
        self.cancelled.clone()
    }
}

/// A handler's answer: a message and an optional body.
pub struct DataResponse {
    /// The response message.
    pub message: Bytes,
    /// The body to stream back (read to EOF).
    pub body: Option<Source>,
}

impl std::fmt::Debug for DataResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataResponse")
            .field("message", &self.message)
            .field("body", &self.body.is_some())
            .finish()
    }
}

impl DataResponse {
    /// A response without body.
    pub fn new(message: impl Into<Bytes>) -> DataResponse {
        DataResponse {
            message: message.into(),
            body: None,
        }
    }

    /// Adds a body streamed from `source`.
    pub fn with_body(mut self, source: impl tokio::io::AsyncRead + Send + Unpin + 'static) -> Self {
        self.body = Some(Box::new(source));
        self
    }
}

/// The future a [`DataHandler`] returns.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<DataResponse, tonic::Status>> + Send>>;

/// Serves bulk-data requests. Any `Fn(DataRequest) -> impl Future` works.
pub trait DataHandler: Send + Sync + 'static {
    /// Handles one request.
    fn call(&self, request: DataRequest) -> HandlerFuture;
}

impl<F, Fut> DataHandler for F
where
    F: Fn(DataRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<DataResponse, tonic::Status>> + Send + 'static,
{
    fn call(&self, request: DataRequest) -> HandlerFuture {
        Box::pin(self(request))
    }
}

/// Builds a [`Server`].
pub struct ServerBuilder {
    routes: Option<tonic::service::Routes>,
    data: Option<Arc<dyn DataHandler>>,
    handshake: HandshakeConfig,
    conn: ConnSettings,
    max_handshakes: usize,
    tls: Option<ServerTlsConfig>,
    checksums: bool,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("control", &self.routes.is_some())
            .field("data", &self.data.is_some())
            .field("handshake", &self.handshake)
            .finish_non_exhaustive()
    }
}

/// A waypost-rpc server.
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// use waypost_rpc::{DataRequest, DataResponse, Listener, Server};
///
/// let listener = Listener::tcp("127.0.0.1:0").await?;
/// let running = Server::builder()
///     .data(|request: DataRequest| async move {
///         // Echo the client's body back.
///         Ok(DataResponse::new("").with_body(request.body))
///     })
///     .serve(listener)?;
/// println!("serving on {}", running.address());
/// running.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Server;

impl Server {
    /// A builder with defaults: no services, 64 concurrent handshakes.
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            routes: None,
            data: None,
            handshake: HandshakeConfig::default(),
            conn: ConnSettings::default(),
            max_handshakes: 64,
            tls: None,
            checksums: false,
        }
    }
}

impl ServerBuilder {
    /// gRPC services for `control` connections.
    pub fn control(mut self, routes: tonic::service::Routes) -> Self {
        self.routes = Some(routes);
        self
    }

    /// The handler of `data` connections.
    pub fn data(mut self, handler: impl DataHandler) -> Self {
        self.data = Some(Arc::new(handler));
        self
    }

    /// Versions, frame limit and handshake timeout.
    pub fn handshake(mut self, config: HandshakeConfig) -> Self {
        self.handshake = config;
        self
    }

    /// Heartbeat, idle timeout and queue sizes of data connections.
    pub fn conn_settings(mut self, settings: ConnSettings) -> Self {
        self.conn = settings;
        self
    }

    /// How many handshakes run at once; more connections wait (within the
    /// handshake timeout) without blocking `accept`.
    pub fn max_concurrent_handshakes(mut self, n: usize) -> Self {
        self.max_handshakes = n.max(1);
        self
    }

    /// TLS on every connection, from the configuration `waypost serve`
    /// uses (ALPN [`crate::ALPN`]; with client CAs, clients need a
    /// certificate, and handlers see it in [`PeerInfo::identity`]; files
    /// rotate). A configuration that cannot be loaded makes
    /// [`ServerBuilder::serve`] fail.
    pub fn tls(mut self, tls: ServerTlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Offers CRC-32 checksums of bodies (used when the client offers them
    /// too).
    pub fn checksums(mut self, on: bool) -> Self {
        self.checksums = on;
        self
    }

    /// Starts serving on `listener` in the background.
    pub fn serve(mut self, listener: Listener) -> std::io::Result<Running> {
        let address = listener.address()?;
        let tls = self
            .tls
            .as_ref()
            .map(crate::transport::acceptor)
            .transpose()?;
        if self.checksums {
            self.handshake.offer(CHECKSUM_EXTENSION);
        }
        let shutdown = CancellationToken::new();
        // Without services, control calls answer UNIMPLEMENTED: every
        // server speaks both labels, so clients can always pick it.
        let routes = self.routes.take().unwrap_or_default();
        let (control_tx, rx) = mpsc::channel::<Result<ServerIo, std::io::Error>>(16);
        let signal = shutdown.clone();
        let control_task = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
            let result = tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, signal.cancelled_owned())
                .await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "control server ended");
            }
        });
        let ctx = Arc::new(Ctx {
            data: self.data.take(),
            control: control_tx,
            handshake: self.handshake,
            conn: self.conn,
            tls,
            handshakes: Arc::new(Semaphore::new(self.max_handshakes)),
            shutdown: shutdown.clone(),
            stats: Arc::default(),
        });
        let stats = ctx.stats.clone();
        let accept = tokio::spawn(accept_loop(listener, ctx));
        Ok(Running {
            address,
            shutdown,
            accept: Some(accept),
            control: Some(control_task),
            stats,
        })
    }
}

/// What a server has seen, for tests, metrics and logs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Handshakes that failed, were refused or timed out.
    pub handshake_failures: u64,
    /// Connections handed to tonic.
    pub control_connections: u64,
    /// Data connections opened.
    pub data_connections: u64,
    /// Data requests handled.
    pub data_requests: u64,
    /// Data connections that ended with an error other than a clean close.
    pub data_failures: u64,
    /// The last handshake or data-connection error.
    pub last_error: Option<String>,
}

#[derive(Debug, Default)]
struct Stats(tokio::sync::watch::Sender<ServerStats>);

impl Stats {
    fn update(&self, f: impl FnOnce(&mut ServerStats)) {
        self.0.send_modify(f);
    }

    fn error(&self, handshake: bool, error: String) {
        self.update(|s| {
            if handshake {
                s.handshake_failures += 1;
            } else {
                s.data_failures += 1;
            }
            s.last_error = Some(error);
        });
    }
}

/// A running server; [`Running::shutdown`] stops it.
#[derive(Debug)]
pub struct Running {
    address: Address,
    shutdown: CancellationToken,
    accept: Option<tokio::task::JoinHandle<()>>,
    control: Option<tokio::task::JoinHandle<()>>,
    stats: Arc<Stats>,
}

impl Running {
    /// The address it listens on.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// What it has seen so far.
    pub fn stats(&self) -> ServerStats {
        self.stats.0.borrow().clone()
    }

    /// Waits until its stats satisfy `pred` (for instance, a connection
    /// failure was counted) and returns them.
    pub async fn wait_for_stats(&self, pred: impl FnMut(&ServerStats) -> bool) -> ServerStats {
        let mut stats = self.stats.0.subscribe();
        let seen = stats
            .wait_for(pred)
            .await
            .expect("the sender lives in self");
        seen.clone()
    }

    /// Stops accepting, resets data connections and lets control
    /// connections finish their calls (bounded by 10 s).
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(accept) = self.accept.take() {
            let _ = accept.await;
        }
        if let Some(control) = self.control.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), control).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

struct Ctx {
    data: Option<Arc<dyn DataHandler>>,
    control: mpsc::Sender<Result<ServerIo, std::io::Error>>,
    handshake: HandshakeConfig,
    conn: ConnSettings,
    tls: Option<TlsAcceptor>,
    handshakes: Arc<Semaphore>,
    shutdown: CancellationToken,
    stats: Arc<Stats>,
}

async fn accept_loop(listener: Listener, ctx: Arc<Ctx>) {
    loop {
        let accepted = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            // Everything after accept runs in the connection's own task.
            Ok((io, remote)) => {
                ctx.stats.update(|s| s.accepted += 1);
                tokio::spawn(connection(io, remote, ctx.clone()));
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One accepted connection: TLS, handshake and label (all within the
/// handshake timeout, under the concurrency cap), then its service.
async fn connection(io: BoxedIo, remote: String, ctx: Arc<Ctx>) {
    let deadline = Instant::now() + ctx.handshake.timeout;
    let Ok(Ok(permit)) =
        tokio::time::timeout_at(deadline, ctx.handshakes.clone().acquire_owned()).await
    else {
        tracing::debug!(%remote, "no handshake slot within the timeout; closing");
        ctx.stats
            .error(true, "no handshake slot within the timeout".into());
        return;
    };
    let setup = async {
        let (mut io, identity) = match &ctx.tls {
            Some(tls) => crate::transport::accept(tls, io)
                .await
                .map_err(Error::from)?,
            None => (io, None),
        };
        let config = HandshakeConfig {
            timeout: deadline.saturating_duration_since(Instant::now()),
            ..ctx.handshake.clone()
        };
        let agreed = handshake::server(&mut io, &config, |label| match label {
            LABEL_CONTROL => None,
            LABEL_DATA if ctx.data.is_some() => None,
            other => Some(format!(
                "unknown mux label {other:?}; this server accepts: {}",
                [Some(LABEL_CONTROL), ctx.data.as_ref().map(|_| LABEL_DATA)]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        })
        .await?;
        Ok::<_, Error>((io, identity, agreed))
    };
    let (io, identity, agreed) = match tokio::time::timeout_at(deadline, setup).await {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "handshake failed");
            ctx.stats.error(true, e.to_string());
            return;
        }
        Err(_) => {
            tracing::debug!(%remote, "handshake timed out");
            ctx.stats.error(true, "handshake timed out".into());
            return;
        }
    };
    drop(permit);
    let peer = PeerInfo { remote, identity };
    if agreed.label == LABEL_CONTROL {
        ctx.stats.update(|s| s.control_connections += 1);
        let _ = ctx.control.send(Ok(ServerIo { io, peer })).await;
        return;
    }
    let Some(handler) = ctx.data.clone() else {
        return;
    };
    let checksums = agreed.has(CHECKSUM_EXTENSION);
    let conn = Conn::start(io, agreed.max_frame, checksums, ctx.conn.clone());
    ctx.stats.update(|s| s.data_connections += 1);
    let shared = conn.shared.clone();
    tokio::select! {
        _ = serve_data(conn, peer, handler, &ctx.stats) => {}
        _ = ctx.shutdown.cancelled() => {}
    }
    match shared.failure() {
        None | Some(Error::Closed | Error::Reset(_)) => {}
        Some(e) => ctx.stats.error(false, e.to_string()),
    }
}

/// Serves exchanges on one data connection until it fails, is cancelled
/// or the client closes it.
async fn serve_data(mut conn: Conn, peer: PeerInfo, handler: Arc<dyn DataHandler>, stats: &Stats) {
    while let Some(inbound) = conn.inbound.take() {
        conn.inbound = exchange(inbound, &conn.tx, &peer, &handler, stats).await;
    }
}

/// Serves one exchange; returns the inbound half if the connection can
/// carry another.
async fn exchange(
    mut inbound: Inbound,
    tx: &mpsc::Sender<Frame>,
    peer: &PeerInfo,
    handler: &Arc<dyn DataHandler>,
    stats: &Stats,
) -> Option<Inbound> {
    let shared = inbound.shared.clone();
    let frame = match inbound.next().await {
        Ok(frame) => frame,
        Err(Error::Closed | Error::Reset(_)) => return None,
        Err(e) => {
            tracing::debug!(error = %e, "data connection ended");
            return None;
        }
    };
    if frame.kind != FrameType::Request {
        shared.fail(Error::Protocol(format!(
            "expected REQUEST, got {:?}",
            frame.kind
        )));
        return None;
    }
    let has_body = frame.flags & FLAG_BODY != 0;
    let head = match RequestHead::decode(frame.flags, frame.payload) {
        Ok(head) => head,
        Err(e) => {
            shared.fail(e.into());
            return None;
        }
    };
    let (give_back, returned) = oneshot::channel();
    let (body, mut kept) = if has_body {
        let body = Body::new(
            inbound,
            Box::new(move |inbound, clean| {
                let _ = give_back.send((inbound, clean));
            }),
        );
        (body, None)
    } else {
        (Body::empty(), Some(inbound))
    };
    stats.update(|s| s.data_requests += 1);
    let request = DataRequest {
        endpoint: head.endpoint,
        metadata: head.metadata,
        message: head.message,
        body,
        peer: peer.clone(),
        cancelled: shared.peer_cancelled.clone(),
    };
    match handler.call(request).await {
        Ok(response) => {
            let flags = if response.body.is_some() {
                FLAG_BODY
            } else {
                0
            };
            let head = Frame {
                kind: FrameType::Response,
                flags,
                payload: response.message,
            };
            if body::push(tx, &shared, head).await.is_err() {
                return None;
            }
            if let Some(source) = response.body
                && let Err(e) = body::send(tx, &shared, Some(source)).await
            {
                tracing::debug!(error = %e, "response body not completed");
                return None;
            }
        }
        Err(status) => {
            if body::send_error(tx, &shared, status.code(), status.message())
                .await
                .is_err()
            {
                return None;
            }
        }
    }
    if kept.is_none() {
        // The request body hands the inbound half back at its end; if the
        // handler dropped it early, drain to the client's CANCELLED trailer
        // so the close is orderly (the client reads our CANCEL, not a RST).
        match tokio::time::timeout(shared.settings.idle_timeout, returned).await {
            Ok(Ok((inbound, true))) => kept = Some(inbound),
            Ok(Ok((mut inbound, false))) => {
                body::drain(&mut inbound).await;
            }
            _ => {}
        }
    }
    kept.filter(|_| shared.reusable())
}
