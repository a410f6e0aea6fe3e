//! The client: a waypost [`Channel`] for control calls (its subchannels
//! dial through the handshake with the `control` label) and pooled data
//! connections to the backend that channel's policy picks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;
use waypost_balancer::picker::{CallOutcome, Pick, Routed};
use waypost_balancer::{Channel, ChannelBuilder, ChannelError, DialFuture, Dialer};
use waypost_resolver::Address;

use crate::body::{self, Body, Source};
use crate::conn::{Conn, ConnSettings};
use crate::error::Error;
use crate::frame::{ErrorAssembler, FLAG_BODY, Frame, FrameType, RequestHead};
use crate::handshake::{self, Agreed, HandshakeConfig};
use crate::{CHECKSUM_EXTENSION, LABEL_CONTROL, LABEL_DATA};
use waypost_balancer::tls::{ClientTlsConfig, TlsDialer};

/// The path data calls are picked for (policies may route on it).
pub const DATA_PICK_PATH: &str = "/waypost.rpc.Data/Call";

/// Opens handshaken connections.
#[derive(Debug)]
struct Connector {
    handshake: HandshakeConfig,
    conn: ConnSettings,
    tls: Option<TlsDialer>,
}

impl Connector {
    async fn open(
        &self,
        address: &Address,
        label: &str,
    ) -> Result<(waypost_balancer::BoxedIo, Agreed), Error> {
        let run = async {
            let io = waypost_balancer::dial(address).await?;
            let mut io: waypost_balancer::BoxedIo = match &self.tls {
                Some(tls) => Box::pin(tls.connect(io).await?),
                None => io,
            };
            let agreed = handshake::client(&mut io, &self.handshake, label).await?;
            Ok::<_, Error>((io, agreed))
        };
        tokio::time::timeout(self.handshake.timeout, run)
            .await
            .map_err(|_| Error::Handshake(format!("{address}: timed out")))?
    }

    async fn open_data(&self, address: &Address) -> Result<Conn, Error> {
        let (io, agreed) = self.open(address, LABEL_DATA).await?;
        let checksums = agreed.has(CHECKSUM_EXTENSION);
        Ok(Conn::start(
            io,
            agreed.max_frame,
            checksums,
            self.conn.clone(),
        ))
    }
}

/// The host a target names (`dns:///db.internal:7000` → `db.internal`),
/// which TLS verifies the server as.
fn target_host(target: &str) -> String {
    waypost_resolver::Target::parse(target)
        .ok()
        .and_then(|t| http::uri::Authority::try_from(t.endpoint()).ok())
        .map(|a| {
            a.host()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned()
        })
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The [`Dialer`] that makes a waypost channel's subchannels speak
/// waypost-rpc's `control` label.
#[derive(Debug, Clone)]
struct ControlDialer(Arc<Connector>);

impl Dialer for ControlDialer {
    fn dial(&self, address: &Address) -> DialFuture {
        let connector = self.0.clone();
        let address = address.clone();
        Box::pin(async move {
            connector
                .open(&address, LABEL_CONTROL)
                .await
                .map(|(io, _)| io)
                .map_err(std::io::Error::from)
        })
    }
}

/// Idle data connections per address.
#[derive(Debug)]
struct Pool {
    idle: Mutex<HashMap<Address, Vec<(Instant, Conn)>>>,
    max_per_address: usize,
    idle_timeout: Duration,
}

impl Pool {
    fn take(&self, address: &Address) -> Option<Conn> {
        let mut idle = self.idle.lock();
        let list = idle.get_mut(address)?;
        while let Some((since, conn)) = list.pop() {
            if since.elapsed() < self.idle_timeout && conn.shared.failure().is_none() {
                return Some(conn);
            }
        }
        None
    }

    fn put(&self, address: Address, conn: Conn) {
        let mut idle = self.idle.lock();
        let list = idle.entry(address).or_default();
        list.retain(|(since, conn)| {
            since.elapsed() < self.idle_timeout && conn.shared.failure().is_none()
        });
        if list.len() < self.max_per_address {
            list.push((Instant::now(), conn));
        }
    }

    fn idle_count(&self) -> usize {
        self.idle.lock().values().map(Vec::len).sum()
    }
}

/// Builds a [`Client`].
pub struct ClientBuilder {
    target: String,
    handshake: HandshakeConfig,
    conn: ConnSettings,
    tls: Option<ClientTlsConfig>,
    checksums: bool,
    pick_timeout: Duration,
    pool_per_address: usize,
    pool_idle_timeout: Duration,
    channel: Box<dyn FnOnce(ChannelBuilder) -> ChannelBuilder + Send>,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("target", &self.target)
            .field("handshake", &self.handshake)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
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

    /// TLS on every connection, from the configuration channels use (the
    /// server is verified as the target's host unless the configuration
    /// names another; ALPN is [`crate::ALPN`]; files rotate as they do for
    /// channels).
    pub fn tls(mut self, tls: ClientTlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Offers CRC-32 checksums of bodies.
    pub fn checksums(mut self, on: bool) -> Self {
        self.checksums = on;
        self
    }

    /// How long a data call waits for a READY backend (default 20 s).
    pub fn pick_timeout(mut self, timeout: Duration) -> Self {
        self.pick_timeout = timeout;
        self
    }

    /// Idle data connections kept per backend (default 4) and for how long
    /// (default 60 s).
    pub fn pool(mut self, per_address: usize, idle_timeout: Duration) -> Self {
        self.pool_per_address = per_address;
        self.pool_idle_timeout = idle_timeout;
        self
    }

    /// Adjusts the control [`Channel`] (service config, resolvers, …).
    pub fn channel(
        mut self,
        configure: impl FnOnce(ChannelBuilder) -> ChannelBuilder + Send + 'static,
    ) -> Self {
        self.channel = Box::new(configure);
        self
    }

    /// Starts resolving and connecting. Must be called inside a tokio
    /// runtime.
    pub fn build(mut self) -> Result<Client, ChannelError> {
        if self.checksums {
            self.handshake.offer(CHECKSUM_EXTENSION);
        }
        let tls = match &self.tls {
            Some(config) => Some(TlsDialer::new(
                &config.clone().alpn_protocols(&[crate::ALPN]),
                &target_host(&self.target),
            )?),
            None => None,
        };
        let connector = Arc::new(Connector {
            handshake: self.handshake,
            conn: self.conn,
            tls,
        });
        let builder =
            Channel::builder(self.target).dialer(Arc::new(ControlDialer(connector.clone())));
        let channel = (self.channel)(builder).build()?;
        Ok(Client {
            channel,
            connector,
            pool: Arc::new(Pool {
                idle: Mutex::new(HashMap::new()),
                max_per_address: self.pool_per_address,
                idle_timeout: self.pool_idle_timeout,
            }),
            pick_timeout: self.pick_timeout,
        })
    }
}

/// A waypost-rpc client for one target.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use waypost_rpc::Client;
///
/// let client = Client::builder("dns:///files.internal:7000").build()?;
/// // Control calls: any tonic client over `client.channel().clone()`.
/// // Bulk data: upload a file, stream the answer back.
/// let file = tokio::fs::File::open("/etc/hostname").await?;
/// let response = client.call("echo", "", Some(Box::new(file))).await?;
/// let bytes = response.body.collect(1 << 20).await?;
/// # let _ = bytes; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    channel: Channel,
    connector: Arc<Connector>,
    pool: Arc<Pool>,
    pick_timeout: Duration,
}

/// The answer to a data call.
#[derive(Debug)]
pub struct Response {
    /// The handler's response message.
    pub message: Bytes,
    /// Its body (empty if it sent none).
    pub body: Body,
    upload: watch::Receiver<Option<Result<u64, Error>>>,
}

impl Response {
    /// How the request body's upload ended: bytes sent, or why it stopped
    /// (`CancelledByPeer` if the handler stopped reading it).
    pub async fn upload_result(&mut self) -> Result<u64, Error> {
        match self.upload.wait_for(Option::is_some).await {
            Ok(result) => result.clone().expect("waited for Some"),
            Err(_) => Err(Error::Closed),
        }
    }
}

impl Client {
    /// A builder for `target` (any resolver target: `dns:///`, `etcd:///`,
    /// `ipv4:`, `unix:` …).
    pub fn builder(target: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            target: target.into(),
            handshake: HandshakeConfig::default(),
            conn: ConnSettings::default(),
            tls: None,
            checksums: false,
            pick_timeout: Duration::from_secs(20),
            pool_per_address: 4,
            pool_idle_timeout: Duration::from_secs(60),
            channel: Box::new(|b| b),
        }
    }

    /// The control channel: hand it to any generated tonic client.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Idle data connections in the pool.
    pub fn idle_connections(&self) -> usize {
        self.pool.idle_count()
    }

    /// Picks a backend with the channel's policy, waiting up to the pick
    /// timeout for one to be READY: the connection's address, the metadata
    /// a call to it must carry (grpclb's `lb-token`) and the tracker to tell
    /// when it starts and ends ([`Client::call`] does all of that). A
    /// balancer's drop fails with UNAVAILABLE at once.
    pub async fn pick(&self) -> Result<Routed, Error> {
        let deadline = Instant::now() + self.pick_timeout;
        loop {
            let generation = self.channel.picker_generation();
            match self.channel.pick(DATA_PICK_PATH) {
                Pick::Ready(routed) => return Ok(routed),
                Pick::Drop(reason) => return Err(Error::Unavailable(reason.to_string())),
                Pick::Queue | Pick::Unavailable(_) => {}
            }
            let waited =
                tokio::time::timeout_at(deadline, self.channel.wait_for_picker_change(generation));
            if waited.await.is_err() {
                return Err(Error::Unavailable(format!(
                    "no READY backend within {:?} (channel is {:?})",
                    self.pick_timeout,
                    self.channel.state()
                )));
            }
        }
    }

    /// One bulk-data exchange with the picked backend: sends `endpoint`,
    /// `message` and the optional request body (streamed from the source
    /// while the response arrives), and returns once the handler answered.
    /// The call carries the metadata its pick asks for (grpclb's
    /// `lb-token`) and is reported to the pick's tracker (grpclb's
    /// ClientStats).
    pub async fn call(
        &self,
        endpoint: &str,
        message: impl Into<Bytes>,
        body: Option<Source>,
    ) -> Result<Response, Error> {
        let routed = self.pick().await?;
        let metadata = routed
            .header
            .iter()
            .filter_map(|(name, value)| {
                Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
            })
            .collect();
        let head = RequestHead {
            endpoint: endpoint.to_owned(),
            metadata,
            message: message.into(),
        };
        // Over once the handler answered (or the call failed or was dropped).
        let mut end = routed.begin();
        let outcome = self.exchange(routed.connection.address(), head, body).await;
        end.record(outcome.is_ok());
        if let Some(tracker) = &routed.tracker {
            tracker.finished(match &outcome {
                Ok(_) => CallOutcome::KnownReceived,
                Err(Failure::Unsent(_)) => CallOutcome::FailedToSend,
                Err(Failure::Sent(_)) => CallOutcome::Failed,
            });
        }
        outcome.map_err(Failure::into_error)
    }

    /// [`Client::call`] to a given backend address (no metadata, no
    /// tracker).
    pub async fn call_at(
        &self,
        address: &Address,
        endpoint: &str,
        message: Bytes,
        body: Option<Source>,
    ) -> Result<Response, Error> {
        let head = RequestHead {
            endpoint: endpoint.to_owned(),
            metadata: Vec::new(),
            message,
        };
        self.exchange(address, head, body)
            .await
            .map_err(Failure::into_error)
    }

    async fn exchange(
        &self,
        address: &Address,
        head: RequestHead,
        body: Option<Source>,
    ) -> Result<Response, Failure> {
        head.check()
            .map_err(|e| Failure::Unsent(Error::Protocol(e.into())))?;
        let conn = match self.pool.take(address) {
            Some(conn) => conn,
            None => self
                .connector
                .open_data(address)
                .await
                .map_err(Failure::Unsent)?,
        };
        self.exchange_on(conn, address, head, body)
            .await
            .map_err(Failure::Sent)
    }

    async fn exchange_on(
        &self,
        mut conn: Conn,
        address: &Address,
        head: RequestHead,
        body: Option<Source>,
    ) -> Result<Response, Error> {
        let shared = conn.shared.clone();
        let flags = head.flags() | if body.is_some() { FLAG_BODY } else { 0 };
        body::push(
            &conn.tx,
            &shared,
            Frame {
                kind: FrameType::Request,
                flags,
                payload: head.encode(),
            },
        )
        .await?;
        let (upload_tx, upload_rx) = watch::channel(None);
        match body {
            Some(source) => {
                let tx = conn.tx.clone();
                let shared = shared.clone();
                tokio::spawn(async move {
                    let result = body::send(&tx, &shared, Some(source)).await;
                    let _ = upload_tx.send(Some(result));
                });
            }
            None => {
                let _ = upload_tx.send(Some(Ok(0)));
            }
        }
        let mut inbound = conn
            .inbound
            .take()
            .ok_or_else(|| Error::Protocol("connection without its inbound half".into()))?;
        let frame = inbound.next().await?;
        match frame.kind {
            FrameType::Response => {
                let pool = self.pool.clone();
                let address = address.clone();
                let done = upload_rx.clone();
                // Back to the pool once both bodies ended cleanly. An upload
                // still running keeps the connection open until it ends (the
                // handler may have cancelled it: the CANCEL must be read).
                let give_back = move |mut inbound: body::Inbound, clean: bool, mut conn: Conn| {
                    if !clean {
                        // We cancelled the response body: let the server's
                        // trailer arrive before closing, off the caller's path.
                        // (A body dropped outside any runtime just closes.)
                        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                            runtime.spawn(async move {
                                body::drain(&mut inbound).await;
                                drop(conn);
                            });
                        }
                        return;
                    }
                    conn.inbound = Some(inbound);
                    let finish = move |uploaded: bool, conn: Conn| {
                        if uploaded && conn.shared.reusable() {
                            pool.put(address, conn);
                        }
                    };
                    let state = done.borrow().clone();
                    match state {
                        Some(result) => finish(result.is_ok(), conn),
                        None => {
                            let mut done = done;
                            let bound = conn.shared.settings.idle_timeout;
                            tokio::spawn(async move {
                                let uploaded =
                                    tokio::time::timeout(bound, done.wait_for(Option::is_some))
                                        .await
                                        .ok()
                                        .and_then(|r| r.ok().map(|v| matches!(*v, Some(Ok(_)))))
                                        .unwrap_or(false);
                                finish(uploaded, conn);
                            });
                        }
                    }
                };
                let body = if frame.flags & FLAG_BODY != 0 {
                    Body::new(
                        inbound,
                        Box::new(move |inbound, clean| give_back(inbound, clean, conn)),
                    )
                } else {
                    give_back(inbound, true, conn);
                    Body::empty()
                };
                Ok(Response {
                    message: frame.payload,
                    body,
                    upload: upload_rx,
                })
            }
            FrameType::Error => {
                let mut assembler = ErrorAssembler::default();
                let mut frame = frame;
                loop {
                    if frame.kind != FrameType::Error {
                        return Err(Error::Protocol(format!(
                            "{:?} inside an error trailer",
                            frame.kind
                        )));
                    }
                    if let Some((code, message)) = assembler.push(frame.flags, &frame.payload)? {
                        return Err(Error::Status {
                            code: tonic::Code::from_i32(code),
                            message,
                        });
                    }
                    frame = inbound.next().await?;
                }
            }
            other => {
                let error = Error::Protocol(format!("expected RESPONSE, got {other:?}"));
                shared.fail(error.clone());
                Err(error)
            }
        }
    }
}

/// How a call failed: before anything was sent (no connection), or after.
enum Failure {
    Unsent(Error),
    Sent(Error),
}

impl Failure {
    fn into_error(self) -> Error {
        match self {
            Failure::Unsent(e) | Failure::Sent(e) => e,
        }
    }
}
