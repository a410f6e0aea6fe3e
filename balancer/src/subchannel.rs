//! Subchannels: one HTTP/2 connection to one endpoint, owned by waypost so
//! its real connectivity state is known.
//!
//! A subchannel starts IDLE and connects when asked ([`SubchannelHandle::connect`]).
//! It tries the endpoint's addresses in order (TCP, unix socket, or a
//! `host:port` for the system resolver), does the HTTP/2 handshake (the
//! `h2` crate, driven by waypost's own transport), and is READY while that
//! connection lives. A connection that was READY (the server's SETTINGS
//! arrived) and then ends by the server's GOAWAY (NO_ERROR) or a clean
//! close sends the subchannel back to IDLE at once, its backoff reset, so
//! servers that recycle connections (`max_connection_age`, rolling
//! restarts) cost no call. A failed attempt (including one closed before
//! SETTINGS, and a connection that broke with an error within the backoff
//! base) goes to TRANSIENT_FAILURE, waits out the gRPC connection backoff
//! (1 s × 1.6 ± 20 %, at most 120 s), then goes to IDLE. The policy
//! decides when to connect again. Keepalive PINGs follow gRPC's
//! client keepalive; a GOAWAY `ENHANCE_YOUR_CALM` ("too_many_pings") doubles the
//! ping interval for this subchannel, as gRPC clients do.
//!
//! Dropping a subchannel (the channel does, when its policy removes it)
//! aborts its task and closes its connection.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use waypost_resolver::Address;
use waypost_resolver::backoff::{Backoff, BackoffConfig, seeded_rng};

use crate::connectivity::ConnectivityState;
use crate::health::{self, Health};
use crate::transport::{self, Exchange, SendError, Sender, TransportError};
use crate::transport::{GoAway, Preface};

/// Identifies a subchannel within its channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubchannelId(pub u64);

/// HTTP/2 keepalive settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepaliveConfig {
    /// Send a PING after this long without frames received (`None`: never).
    pub time: Option<Duration>,
    /// Close the connection if a PING is not acknowledged within this.
    pub timeout: Duration,
    /// Also ping while no call is in flight.
    pub permit_without_stream: bool,
}

impl Default for KeepaliveConfig {
    /// gRPC's defaults: keepalive off, 20 s timeout.
    fn default() -> Self {
        KeepaliveConfig {
            time: None,
            timeout: Duration::from_secs(20),
            permit_without_stream: false,
        }
    }
}

/// How subchannels connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Backoff between failed attempts.
    pub backoff: BackoffConfig,
    /// The least time one attempt may take (gRPC: 20 s).
    pub min_connect_timeout: Duration,
    /// Keepalive PINGs.
    pub keepalive: KeepaliveConfig,
    /// Opens the byte stream HTTP/2 runs on (default: plain TCP or unix).
    pub dialer: Option<Arc<dyn Dialer>>,
}

/// A byte stream a subchannel can run HTTP/2 on.
pub trait DialedIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> DialedIo for T {}

/// A boxed [`DialedIo`].
pub type BoxedIo = Pin<Box<dyn DialedIo>>;

/// The future a [`Dialer`] returns.
pub type DialFuture = Pin<Box<dyn Future<Output = io::Result<BoxedIo>> + Send>>;

/// Opens the byte stream for a subchannel: the seam for transports that do
/// more than connect a socket (TLS, or waypost-rpc's handshake and mux
/// label). The channel bounds each call with its connect timeout.
///
/// ```
/// use std::sync::Arc;
/// use waypost_balancer::{BoxedIo, DialFuture, Dialer};
/// use waypost_resolver::Address;
///
/// #[derive(Debug)]
/// struct TcpOnly;
///
/// impl Dialer for TcpOnly {
///     fn dial(&self, address: &Address) -> DialFuture {
///         let address = address.clone();
///         Box::pin(async move {
///             match address {
///                 Address::Tcp(addr) => {
///                     let io: BoxedIo = Box::pin(tokio::net::TcpStream::connect(addr).await?);
///                     Ok(io)
///                 }
///                 other => Err(std::io::Error::other(format!("not TCP: {other}"))),
///             }
///         })
///     }
/// }
/// let _dialer: Arc<dyn Dialer> = Arc::new(TcpOnly);
/// ```
pub trait Dialer: std::fmt::Debug + Send + Sync + 'static {
    /// Opens a byte stream to `address`.
    fn dial(&self, address: &Address) -> DialFuture;
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            backoff: BackoffConfig::default(),
            min_connect_timeout: Duration::from_secs(20),
            keepalive: KeepaliveConfig::default(),
            dialer: None,
        }
    }
}

/// A READY subchannel's connection, as pickers hand it to calls. Cheap to
/// clone.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<ConnectionInner>,
}

struct ConnectionInner {
    id: SubchannelId,
    address: Address,
    /// `None` for a test connection (the `testing` kit), which sends
    /// nothing.
    send: Option<Sender>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.inner.id)
            .field("address", &self.inner.address)
            .finish()
    }
}

impl Connection {
    /// The subchannel it belongs to.
    pub fn id(&self) -> SubchannelId {
        self.inner.id
    }

    /// The address it is connected to.
    pub fn address(&self) -> &Address {
        &self.inner.address
    }

    /// Whether both are the same connection (not just the same subchannel).
    pub(crate) fn same_as(&self, other: &Connection) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Sends one request on this connection, without waiting. If the
    /// connection was already closing, the request is handed back
    /// ([`SendError::Unsent`]) and may be sent elsewhere.
    pub(crate) fn send(
        &self,
        request: http::Request<tonic::body::Body>,
    ) -> Result<Exchange, SendError> {
        match &self.inner.send {
            Some(send) => send.send(request),
            None => Err(SendError::Failed(tonic::Status::unavailable(
                "a test connection sends nothing",
            ))),
        }
    }

    /// A connection that sends nothing, for policy tests.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn fake(id: SubchannelId, address: Address) -> Connection {
        Connection {
            inner: Arc::new(ConnectionInner {
                id,
                address,
                send: None,
            }),
        }
    }
}

/// A subchannel's current state.
#[derive(Debug, Clone)]
pub struct SubchannelState {
    /// Its connectivity.
    pub connectivity: ConnectivityState,
    /// The connection, while READY.
    pub connection: Option<Connection>,
    /// Why the last attempt or connection failed, if it did.
    pub last_error: Option<Arc<str>>,
}

impl SubchannelState {
    fn idle() -> Self {
        SubchannelState {
            connectivity: ConnectivityState::Idle,
            connection: None,
            last_error: None,
        }
    }
}

/// A state change, sent to the channel's controller.
#[derive(Debug, Clone)]
pub(crate) struct SubchannelEvent {
    pub(crate) id: SubchannelId,
    pub(crate) state: SubchannelState,
    /// The transport of a READY connection closed (the controller asks the
    /// resolver to re-resolve).
    pub(crate) transport_closed: bool,
}

/// What a policy holds: the subchannel's id, its state, and the connect
/// request. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SubchannelHandle {
    id: SubchannelId,
    addresses: Arc<[Address]>,
    connect: Arc<Notify>,
    state: watch::Receiver<SubchannelState>,
}

impl SubchannelHandle {
    /// Its id.
    pub fn id(&self) -> SubchannelId {
        self.id
    }

    /// The addresses it tries, in order.
    pub fn addresses(&self) -> &[Address] {
        &self.addresses
    }

    /// Asks an IDLE subchannel to connect (no-op otherwise).
    pub fn connect(&self) {
        self.connect.notify_one();
    }

    /// Its current state.
    pub fn state(&self) -> SubchannelState {
        self.state.borrow().clone()
    }

    /// A handle with no subchannel behind it, for policy tests: the
    /// sender sets its state, the notify hears its connect requests.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn fake(
        id: SubchannelId,
        addresses: &[Address],
    ) -> (
        SubchannelHandle,
        watch::Sender<SubchannelState>,
        Arc<Notify>,
    ) {
        let (state_tx, state_rx) = watch::channel(SubchannelState::idle());
        let connect = Arc::new(Notify::new());
        let handle = SubchannelHandle {
            id,
            addresses: addresses.into(),
            connect: connect.clone(),
            state: state_rx,
        };
        (handle, state_tx, connect)
    }
}

/// Owns a subchannel's task; dropping it shuts the subchannel down.
pub(crate) struct Subchannel {
    handle: SubchannelHandle,
    task: JoinHandle<()>,
}

impl Subchannel {
    pub(crate) fn spawn(
        id: SubchannelId,
        addresses: Vec<Address>,
        options: ConnectOptions,
        events: tokio::sync::mpsc::UnboundedSender<SubchannelEvent>,
        counters: Arc<SubchannelCounters>,
        health: HealthSettings,
    ) -> Subchannel {
        let (state_tx, state_rx) = watch::channel(SubchannelState::idle());
        let connect = Arc::new(Notify::new());
        let addresses: Arc<[Address]> = addresses.into();
        let driver = Driver {
            id,
            addresses: addresses.clone(),
            options,
            connect: connect.clone(),
            state: state_tx,
            events,
            counters,
            health,
        };
        driver.counters.states[state_index(ConnectivityState::Idle)]
            .fetch_add(1, Ordering::Relaxed);
        let task = tokio::spawn(driver.run());
        Subchannel {
            handle: SubchannelHandle {
                id,
                addresses,
                connect,
                state: state_rx,
            },
            task,
        }
    }

    pub(crate) fn handle(&self) -> &SubchannelHandle {
        &self.handle
    }
}

impl Drop for Subchannel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connection counters shared by a channel's subchannels.
#[derive(Debug, Default)]
pub struct SubchannelCounters {
    /// Connection attempts started.
    pub connects: AtomicU64,
    /// Attempts that failed.
    pub connect_failures: AtomicU64,
    /// Connections that reached READY and later closed.
    pub disconnects: AtomicU64,
    /// GOAWAY ENHANCE_YOUR_CALM ("too_many_pings") received.
    pub too_many_pings: AtomicU64,
    /// The longest keepalive interval any subchannel now uses after
    /// doubling for too_many_pings, in milliseconds (0: never doubled).
    pub keepalive_interval_ms: AtomicU64,
    /// Live subchannels per state (indexed by [`state_index`]).
    pub states: [std::sync::atomic::AtomicI64; 5],
    /// The keepalive interval after GOAWAY too_many_pings doublings; shared
    /// by the channel's subchannels, as in grpc-go, so a new subchannel for
    /// the same target keeps it.
    pub(crate) keepalive_time: Mutex<Option<Duration>>,
}

/// The index of `state` in [`SubchannelCounters::states`].
pub fn state_index(state: ConnectivityState) -> usize {
    match state {
        ConnectivityState::Idle => 0,
        ConnectivityState::Connecting => 1,
        ConnectivityState::Ready => 2,
        ConnectivityState::TransientFailure => 3,
        ConnectivityState::Shutdown => 4,
    }
}

struct Driver {
    id: SubchannelId,
    addresses: Arc<[Address]>,
    options: ConnectOptions,
    connect: Arc<Notify>,
    state: watch::Sender<SubchannelState>,
    events: tokio::sync::mpsc::UnboundedSender<SubchannelEvent>,
    counters: Arc<SubchannelCounters>,
    health: HealthSettings,
}

/// Client-side health checking settings shared by a channel's subchannels.
#[derive(Debug, Clone)]
pub(crate) struct HealthSettings {
    /// The service to watch (`healthCheckConfig.serviceName`), or `None`
    /// when health checking is off; follows service config changes.
    pub(crate) service: watch::Receiver<Option<String>>,
    /// The `:authority` of health calls.
    pub(crate) authority: http::uri::Authority,
}

impl Drop for Driver {
    /// The subchannel is gone (its task ended or was aborted): it no longer
    /// counts in any state.
    fn drop(&mut self) {
        let current = self.state.borrow().connectivity;
        self.counters.states[state_index(current)].fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's task. Dropping this (the subchannel closed or lost its
/// connection) drains it: no new calls, and the socket closes once the
/// calls still on it have finished, as grpc-go's graceful close does.
struct ConnectionTask {
    task: JoinHandle<Result<(), TransportError>>,
    /// The server's first GOAWAY, seen as it arrives (`None` once the
    /// connection ended without one).
    go_away: Option<tokio::sync::oneshot::Receiver<GoAway>>,
    _drain: tokio::sync::oneshot::Sender<()>,
}

impl Driver {
    fn set(&self, state: SubchannelState, transport_closed: bool) {
        let old = self.state.send_replace(state.clone());
        self.counters.states[state_index(old.connectivity)].fetch_sub(1, Ordering::Relaxed);
        self.counters.states[state_index(state.connectivity)].fetch_add(1, Ordering::Relaxed);
        let _ = self.events.send(SubchannelEvent {
            id: self.id,
            state,
            transport_closed,
        });
    }

    async fn run(self) {
        let mut backoff = Backoff::new(self.options.backoff, seeded_rng());
        loop {
            self.connect.notified().await;
            self.set(
                SubchannelState {
                    connectivity: ConnectivityState::Connecting,
                    connection: None,
                    last_error: None,
                },
                false,
            );
            self.counters.connects.fetch_add(1, Ordering::Relaxed);
            let timeout = self.options.min_connect_timeout;
            let attempt = tokio::time::timeout(timeout, self.connect_any()).await;
            match attempt {
                Ok(Ok((address, send, connection))) => {
                    let connected_at = tokio::time::Instant::now();
                    let conn = Connection {
                        inner: Arc::new(ConnectionInner {
                            id: self.id,
                            address,
                            send: Some(send),
                        }),
                    };
                    let closed = self.while_connected(conn, connection).await;
                    self.counters.disconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(id = self.id.0, reason = %closed.reason, "subchannel connection closed");
                    let lived = connected_at.elapsed();
                    if closed.graceful || lived >= self.options.backoff.base {
                        // The attempt succeeded (the server's SETTINGS came):
                        // a server that recycles connections (GOAWAY, clean
                        // close — `max_connection_age`, rolling restarts) is
                        // reconnected at once, as in grpc-go. Backoff paces
                        // failed attempts only.
                        backoff.reset();
                    } else {
                        // A connection that broke at once with an error
                        // counts as a failure, so a flapping backend is not
                        // redialled in a tight loop.
                        self.set(
                            SubchannelState {
                                connectivity: ConnectivityState::TransientFailure,
                                connection: None,
                                last_error: Some(closed.reason.clone().into()),
                            },
                            true,
                        );
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                    self.set(
                        SubchannelState {
                            connectivity: ConnectivityState::Idle,
                            connection: None,
                            last_error: Some(closed.reason.into()),
                        },
                        true,
                    );
                }
                failed => {
                    let error = match failed {
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => format!("connect timed out after {timeout:?}"),
                        Ok(Ok(_)) => unreachable!("handled above"),
                    };
                    self.counters
                        .connect_failures
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(id = self.id.0, %error, "subchannel connect failed");
                    self.set(
                        SubchannelState {
                            connectivity: ConnectivityState::TransientFailure,
                            connection: None,
                            last_error: Some(error.into()),
                        },
                        false,
                    );
                    tokio::time::sleep(backoff.next_delay()).await;
                    // A connect request made during the backoff is for the
                    // next attempt: keep it. Report IDLE so the policy can
                    // decide.
                    self.set(SubchannelState::idle(), false);
                }
            }
        }
    }

    /// Serves a live connection until it ends: READY, or — with health
    /// checking on — READY only while the backend reports SERVING. Returns
    /// how the connection ended.
    async fn while_connected(&self, conn: Connection, mut connection: ConnectionTask) -> Closed {
        let mut health_service = self.health.service.clone();
        let ready = || SubchannelState {
            connectivity: ConnectivityState::Ready,
            connection: Some(conn.clone()),
            last_error: None,
        };
        loop {
            let service = health_service.borrow_and_update().clone();
            match service {
                None => {
                    self.set_if_changed(ready());
                    tokio::select! {
                        reason = self.wait_closed(&mut connection) => return reason,
                        changed = health_service.changed() => if changed.is_err() { return self.wait_closed(&mut connection).await },
                    }
                }
                Some(service) => {
                    self.set_if_changed(SubchannelState {
                        connectivity: ConnectivityState::Connecting,
                        connection: None,
                        last_error: None,
                    });
                    let report = |health: Health| {
                        self.set_if_changed(match health {
                            Health::Serving => ready(),
                            Health::NotServing(status) => SubchannelState {
                                connectivity: ConnectivityState::TransientFailure,
                                connection: None,
                                last_error: Some(format!("health check: {status}").into()),
                            },
                        })
                    };
                    let watch = health::watch(
                        conn.clone(),
                        self.health.authority.clone(),
                        service,
                        self.options.backoff,
                        report,
                    );
                    tokio::select! {
                        reason = self.wait_closed(&mut connection) => return reason,
                        changed = health_service.changed() => if changed.is_err() { return self.wait_closed(&mut connection).await },
                        () = watch => {
                            // No health service on the backend: healthy, and
                            // not asked again on this connection.
                            self.set_if_changed(ready());
                            return self.wait_closed(&mut connection).await;
                        }
                    }
                }
            }
        }
    }

    /// Publishes `state` unless it is what the subchannel already reports.
    fn set_if_changed(&self, state: SubchannelState) {
        let current = self.state.borrow().clone();
        let same = current.connectivity == state.connectivity
            && current.connection.as_ref().map(Connection::id)
                == state.connection.as_ref().map(Connection::id)
            && current.last_error == state.last_error;
        if !same {
            self.set(state, false);
        }
    }

    /// Waits for the connection to end, or for the server's GOAWAY — from
    /// then on the connection takes no new calls, so the subchannel stops
    /// offering it at once rather than when its last stream ends (the
    /// connection drains in its own task). Returns how it ended.
    async fn wait_closed(&self, connection: &mut ConnectionTask) -> Closed {
        let ConnectionTask { task, go_away, .. } = connection;
        let go_away = async {
            if let Some(seen) = go_away.as_mut() {
                match seen.await {
                    Ok(go_away) => return go_away,
                    // Ended without one: not to be polled again.
                    Err(_) => *go_away = None,
                }
            }
            std::future::pending().await
        };
        let ended = tokio::select! {
            ended = task => ended,
            go_away = go_away => {
                if go_away.code == u32::from(h2::Reason::ENHANCE_YOUR_CALM) {
                    self.too_many_pings();
                }
                return Closed {
                    reason: format!(
                        "the server sent GOAWAY ({:?}, last stream {})",
                        h2::Reason::from(go_away.code),
                        go_away.last_stream_id
                    ),
                    // NO_ERROR: the server retires the connection on
                    // purpose. An error code (ENHANCE_YOUR_CALM, …) soon
                    // after connecting is a failure, paced by backoff.
                    graceful: go_away.code == u32::from(h2::Reason::NO_ERROR),
                };
            }
        };
        match ended {
            Ok(Ok(())) => Closed {
                reason: "connection closed".into(),
                graceful: true,
            },
            Ok(Err(e)) => {
                if is_too_many_pings(&e) {
                    self.too_many_pings();
                }
                Closed {
                    reason: format!("connection error: {e}"),
                    graceful: false,
                }
            }
            Err(e) => Closed {
                reason: format!("connection task ended: {e}"),
                graceful: false,
            },
        }
    }

    /// GOAWAY ENHANCE_YOUR_CALM ("too_many_pings"): double the keepalive
    /// interval, channel-wide.
    fn too_many_pings(&self) {
        let mut time = self.counters.keepalive_time.lock();
        *time = doubled_keepalive(time.or(self.options.keepalive.time));
        self.counters.too_many_pings.fetch_add(1, Ordering::Relaxed);
        if let Some(interval) = *time {
            let ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
            self.counters
                .keepalive_interval_ms
                .fetch_max(ms, Ordering::Relaxed);
        }
        tracing::warn!(id = self.id.0, new_interval = ?*time, "GOAWAY too_many_pings: doubling the keepalive interval");
    }

    /// Tries each address in order; returns the first that completes the
    /// HTTP/2 handshake.
    async fn connect_any(&self) -> Result<(Address, Sender, ConnectionTask), io::Error> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no addresses");
        for address in self.addresses.iter() {
            match self.connect_one(address).await {
                Ok((send, connection)) => return Ok((address.clone(), send, connection)),
                Err(e) => last = io::Error::new(e.kind(), format!("{address}: {e}")),
            }
        }
        Err(last)
    }

    async fn connect_one(&self, address: &Address) -> Result<(Sender, ConnectionTask), io::Error> {
        let io = match &self.options.dialer {
            Some(dialer) => dialer.dial(address).await?,
            None => dial(address).await?,
        };
        let keepalive = self.options.keepalive;
        let time = (*self.counters.keepalive_time.lock()).or(keepalive.time);
        let keepalive = time.map(|time| transport::Keepalive {
            time,
            timeout: keepalive.timeout,
            permit_without_stream: keepalive.permit_without_stream,
        });
        let (drain, drained) = tokio::sync::oneshot::channel();
        let (send, driver, sightings) = transport::handshake(io, keepalive, drained).await?;
        let connection = ConnectionTask {
            task: tokio::spawn(driver),
            go_away: Some(sightings.go_away),
            _drain: drain,
        };
        // READY only once the server's SETTINGS arrived (the HTTP/2
        // handshake does not wait for them). The caller bounds this with the connect
        // timeout.
        match sightings.preface.await {
            Ok(Preface::Settings) => {}
            Ok(Preface::Tls) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the server speaks TLS, but this channel is plaintext (ChannelBuilder::tls)",
                ));
            }
            Ok(Preface::NotHttp2) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the server did not answer with HTTP/2 SETTINGS",
                ));
            }
            Err(_) => {
                // The connection ended first: say why if its task knows (a
                // TLS 1.3 server refuses a client certificate only now,
                // after the handshake, with an alert the TLS dialer words).
                let ended = tokio::time::timeout(Duration::from_secs(1), connection.task).await;
                let why = match ended {
                    Ok(Ok(Err(error))) => {
                        format!("the connection failed before the server's SETTINGS: {error}")
                    }
                    _ => "the connection closed before the server's SETTINGS".to_owned(),
                };
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, why));
            }
        }
        Ok((send, connection))
    }
}

/// Opens a plain byte stream to `address` (TCP with `TCP_NODELAY`, unix or
/// abstract unix): what a subchannel does without a [`Dialer`], and what a
/// custom dialer can build on.
pub async fn dial(address: &Address) -> io::Result<BoxedIo> {
    match address {
        Address::Tcp(addr) => {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(Box::pin(stream))
        }
        Address::Unresolved(host_port) => {
            let stream = tokio::net::TcpStream::connect(host_port.as_str()).await?;
            stream.set_nodelay(true)?;
            Ok(Box::pin(stream))
        }
        #[cfg(unix)]
        Address::Unix(path) => Ok(Box::pin(tokio::net::UnixStream::connect(path).await?)),
        #[cfg(target_os = "linux")]
        Address::UnixAbstract(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            let stream = std::os::unix::net::UnixStream::connect_addr(&addr)?;
            stream.set_nonblocking(true)?;
            Ok(Box::pin(tokio::net::UnixStream::from_std(stream)?))
        }
        other => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("cannot dial {other} here"),
        )),
    }
}

/// The most a keepalive interval grows to after GOAWAY too_many_pings.
const MAX_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// The keepalive interval after a GOAWAY too_many_pings: twice `current`,
/// capped at a day (`None` stays off).
fn doubled_keepalive(current: Option<Duration>) -> Option<Duration> {
    current.map(|t| t.saturating_mul(2).min(MAX_KEEPALIVE_INTERVAL))
}

/// How a READY connection ended.
struct Closed {
    /// Why, for the subchannel's `last_error` and logs.
    reason: String,
    /// The server ended it on purpose (GOAWAY NO_ERROR, or a clean close),
    /// rather than it breaking.
    graceful: bool,
}

/// Whether the connection ended with GOAWAY ENHANCE_YOUR_CALM.
fn is_too_many_pings(error: &TransportError) -> bool {
    matches!(error, TransportError::H2(e)
        if e.is_go_away() && e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_many_pings_doubles_up_to_a_day() {
        assert_eq!(
            doubled_keepalive(Some(Duration::from_secs(10))),
            Some(Duration::from_secs(20))
        );
        assert_eq!(doubled_keepalive(None), None);
        assert_eq!(
            doubled_keepalive(Some(Duration::from_secs(20 * 3600))),
            Some(MAX_KEEPALIVE_INTERVAL)
        );
    }
}
