//! Real tonic backends on `127.0.0.1` serving `movies.v1` and
//! `grpc.health.v1`, controllable by the test.
//!
//! Every reply names the backend that served it (in `Movie.served_by` and in
//! the `x-served-by` response header). A backend can be stopped (its listener
//! and every connection close, as if the process died), restarted on the same
//! port, drained (a graceful shutdown: GOAWAY, calls in flight finish), made
//! to hang (TCP stays up, nothing is read or written), and have
//! its health status flipped. A request header `x-delay-ms` makes `GetMovie`
//! wait that long (at most 60 s) before answering, for deadline and load
//! tests; `x-fail-code: N` makes it answer with gRPC status code `N`. Each backend counts its calls and the `lb-token` values it sees.
//! Each also reports ORCA load (for `weighted_round_robin`) once figures
//! are set on [`Backend::orca`]: in every call's trailers (unless
//! [`Backend::set_orca_per_call`] turns that off) and on the out-of-band
//! `OpenRcaService`, which grants intervals down to 50 ms.
//!
//! ```no_run
//! # async fn demo() -> Result<(), waypost_integration::HarnessError> {
//! use waypost_integration::backend::Backend;
//!
//! let backend = Backend::start("b0").await?;
//! backend.set_serving(false); // health Watch now reports NOT_SERVING
//! backend.stop().await;       // connections drop, port closed
//! backend.restart().await?;   // same port again
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::{JoinHandle, JoinSet};
use tokio_stream::Stream;
use tonic::service::Routes;
use tonic::{Request, Response, Status};
use waypost_proto::grpc::health::v1::health_check_response::ServingStatus;
use waypost_proto::health::HealthReporter;
use waypost_proto::movies::v1::movies_service_server::{MoviesService, MoviesServiceServer};
use waypost_proto::movies::v1::{Movie, MovieId, MovieQuery};
use waypost_proto::orca::{OrcaFuture, OrcaReporter, WithOrca};

use crate::HarnessError;
use crate::gate::{Gate, GatedIo};

/// The longest `x-delay-ms` a backend honours.
const MAX_DELAY: Duration = Duration::from_secs(60);

/// The gRPC service name the backends report health for, besides `""`.
pub const MOVIES_SERVICE: &str = "movies.v1.MoviesService";

/// What every backend serves.
pub fn catalog() -> Vec<Movie> {
    let movie = |mid, name: &str, description: &str, style: &str| Movie {
        mid,
        movie_name: name.into(),
        movie_description: description.into(),
        movie_style: style.into(),
        served_by: String::new(),
    };
    vec![
        movie(1, "Alien", "a crew meets a creature in space", "horror"),
        movie(2, "Arrival", "linguists meet visitors from space", "drama"),
        movie(3, "Heat", "a detective chases a crew of thieves", "crime"),
        movie(
            4,
            "Amélie",
            "a shy waitress changes lives in Paris",
            "comedy",
        ),
        movie(
            5,
            "Solaris",
            "a psychologist meets an ocean in space",
            "drama",
        ),
    ]
}

#[derive(Debug, Default)]
struct Stats {
    calls: AtomicU64,
    tokens: Mutex<HashMap<String, u64>>,
    /// The `authorization` header of each call that had one, in order.
    authorizations: Mutex<Vec<String>>,
    open_connections: AtomicU64,
    accepted: AtomicU64,
    /// Added to every GetMovie, in milliseconds (a slow backend).
    delay_ms: AtomicU64,
    /// This many of every 100 GetMovie calls fail with UNAVAILABLE.
    failing_percent: AtomicU64,
    /// Whether calls carry ORCA reports in their trailers.
    orca_per_call: std::sync::atomic::AtomicBool,
    /// GetMovie calls being served now.
    in_flight: AtomicU64,
}

/// Counts a GetMovie call as in flight until dropped.
struct InFlight<'a>(&'a Stats);

impl<'a> InFlight<'a> {
    fn new(stats: &'a Stats) -> Self {
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(stats)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The shortest out-of-band ORCA interval a backend grants.
pub const ORCA_MIN_INTERVAL: Duration = Duration::from_millis(50);

/// One backend server; stopped when dropped.
#[derive(Debug)]
pub struct Backend {
    name: String,
    addr: SocketAddr,
    health: HealthReporter,
    gate: Arc<Gate>,
    stats: Arc<Stats>,
    running: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    serve_health: bool,
    /// Set while the backend shuts down gracefully.
    draining: tokio::sync::watch::Sender<bool>,
    /// Each new connection is shut down gracefully after this long.
    max_connection_age: Arc<parking_lot::Mutex<Option<Duration>>>,
    /// The load it reports.
    orca: OrcaReporter,
    /// The task measuring its load, while it does.
    meter: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

impl Backend {
    /// Starts a backend named `name` on a free port of `127.0.0.1`.
    pub async fn start(name: &str) -> Result<Backend, HarnessError> {
        Self::start_at(name, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts a backend on `addr` (any `127.x.y.z`; port 0 picks one). Lets
    /// DNS tests put backends on several loopback addresses with one port.
    pub async fn start_at(name: &str, addr: SocketAddr) -> Result<Backend, HarnessError> {
        Self::start_with(name, addr, true).await
    }

    /// Starts a backend that serves no `grpc.health.v1` (its health calls
    /// answer UNIMPLEMENTED), like a server that never added one.
    pub async fn start_without_health(name: &str) -> Result<Backend, HarnessError> {
        Self::start_with(name, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), false).await
    }

    async fn start_with(
        name: &str,
        addr: SocketAddr,
        serve_health: bool,
    ) -> Result<Backend, HarnessError> {
        let listener = bind(addr)?;
        let addr = listener.local_addr()?;
        let (health, _) = HealthReporter::new();
        health.set(MOVIES_SERVICE, ServingStatus::Serving);
        let backend = Backend {
            name: name.to_owned(),
            addr,
            health,
            gate: Arc::new(Gate::default()),
            stats: Arc::new(Stats::default()),
            running: tokio::sync::Mutex::new(None),
            serve_health,
            draining: tokio::sync::watch::Sender::new(false),
            max_connection_age: Arc::default(),
            orca: OrcaReporter::new().with_min_interval(ORCA_MIN_INTERVAL),
            meter: parking_lot::Mutex::new(None),
        };
        backend.stats.orca_per_call.store(true, Ordering::Relaxed);
        *backend.running.lock().await = Some(backend.serve(listener));
        Ok(backend)
    }

    /// The backend's name, as it appears in replies.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The health reporter behind its `grpc.health.v1` service.
    pub fn health(&self) -> &HealthReporter {
        &self.health
    }

    /// Makes every `GetMovie` take `delay` longer (a slow backend; zero
    /// undoes it).
    pub fn set_delay(&self, delay: Duration) {
        self.stats
            .delay_ms
            .store(delay.min(MAX_DELAY).as_millis() as u64, Ordering::Relaxed);
    }

    /// Makes `percent` of every 100 `GetMovie` calls fail with UNAVAILABLE
    /// (deterministically, by call count; zero undoes it).
    pub fn set_failing(&self, percent: u64) {
        self.stats
            .failing_percent
            .store(percent.min(100), Ordering::Relaxed);
    }

    /// The ORCA load figures it reports (nothing until one is set).
    pub fn orca(&self) -> &OrcaReporter {
        &self.orca
    }

    /// Reports its measured load with ORCA from now on, updated every
    /// 100 ms: `application_utilization` = mean calls in flight /
    /// `capacity`, qps = calls per second. By Little's law its weight in
    /// `weighted_round_robin` (qps / utilization) is then `capacity` /
    /// latency: a slower backend weighs less.
    pub fn report_measured_load(&self, capacity: f64) {
        let stats = self.stats.clone();
        let orca = self.orca.clone();
        let task = tokio::spawn(async move {
            const WINDOW: Duration = Duration::from_millis(100);
            const SAMPLES: u32 = 20;
            let mut last_calls = stats.calls.load(Ordering::Relaxed);
            let mut ticks = tokio::time::interval(WINDOW / SAMPLES);
            loop {
                let started = tokio::time::Instant::now();
                let mut in_flight = 0;
                for _ in 0..SAMPLES {
                    ticks.tick().await;
                    in_flight += stats.in_flight.load(Ordering::Relaxed);
                }
                let calls = stats.calls.load(Ordering::Relaxed);
                let qps = (calls - last_calls) as f64 / started.elapsed().as_secs_f64();
                last_calls = calls;
                let utilization = in_flight as f64 / f64::from(SAMPLES) / capacity;
                // Idle windows report nothing new (an empty report would
                // be ignored anyway).
                if qps > 0.0 && utilization > 0.0 {
                    let _ = orca.set_application_utilization(utilization);
                    let _ = orca.set_qps(qps);
                }
            }
        });
        if let Some(old) = self.meter.lock().replace(task) {
            old.abort();
        }
    }

    /// Whether calls carry ORCA reports in their trailers (they do by
    /// default; the out-of-band service answers either way).
    pub fn set_orca_per_call(&self, on: bool) {
        self.stats.orca_per_call.store(on, Ordering::Relaxed);
    }

    /// Sets the health of the whole server and of `movies.v1.MoviesService`.
    pub fn set_serving(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.health.set("", status);
        self.health.set(MOVIES_SERVICE, status);
    }

    /// While hanging, the backend accepts TCP connections but reads and
    /// writes nothing on any connection, old or new (no HTTP/2 SETTINGS, no
    /// PING acks, no replies).
    pub fn set_hanging(&self, hanging: bool) {
        self.gate.set_frozen(hanging);
    }

    /// Stops the backend as if its process died: the listener closes and
    /// every connection is dropped. Returns once the port is closed.
    pub async fn stop(&self) {
        if let Some(task) = self.running.lock().await.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Shuts the backend down gracefully, as a server's graceful stop
    /// does: the listener closes, every connection gets a GOAWAY, calls in
    /// flight finish, and each connection closes once it has none. Returns
    /// at once; [`Backend::stop`] still cuts everything.
    pub fn drain(&self) {
        self.draining.send_replace(true);
    }

    /// Recycles connections as a server with a `max_connection_age` does:
    /// every connection accepted from now on gets a GOAWAY after `age`, its
    /// calls in flight finish, and it closes once it has none; the listener
    /// stays open. `None` turns it off for new connections.
    pub fn set_max_connection_age(&self, age: Option<Duration>) {
        *self.max_connection_age.lock() = age;
    }

    /// Starts a stopped (or drained) backend again on the same port (no-op
    /// if running).
    pub async fn restart(&self) -> Result<(), HarnessError> {
        let mut running = self.running.lock().await;
        if running.as_ref().is_none_or(JoinHandle::is_finished) {
            self.draining.send_replace(false);
            *running = Some(self.serve(bind(self.addr)?));
        }
        Ok(())
    }

    /// Whether it is serving (not stopped).
    pub async fn is_running(&self) -> bool {
        self.running.lock().await.is_some()
    }

    /// How many `movies.v1` calls it has served.
    pub fn calls(&self) -> u64 {
        self.stats.calls.load(Ordering::SeqCst)
    }

    /// How many connections are open to it now.
    pub fn open_connections(&self) -> u64 {
        self.stats.open_connections.load(Ordering::SeqCst)
    }

    /// How many connections it has accepted in all.
    pub fn accepted_connections(&self) -> u64 {
        self.stats.accepted.load(Ordering::SeqCst)
    }

    /// How many calls carried each `lb-token` value.
    pub fn tokens_seen(&self) -> HashMap<String, u64> {
        self.stats.tokens.lock().clone()
    }

    /// The `authorization` header of each call that carried one (every
    /// attempt counts), in order.
    pub fn authorizations(&self) -> Vec<String> {
        self.stats.authorizations.lock().clone()
    }

    /// The accept loop: it owns every connection task, so aborting it drops
    /// them all.
    fn serve(&self, listener: TcpListener) -> JoinHandle<()> {
        let movies = MoviesServiceServer::new(MoviesBackend {
            name: self.name.clone(),
            stats: self.stats.clone(),
        });
        let health = waypost_proto::grpc::health::v1::health_server::HealthServer::new(
            self.health_service(),
        );
        let routes = if self.serve_health {
            Routes::new(movies).add_service(health)
        } else {
            Routes::new(movies)
        };
        let routes = routes.add_service(self.orca.service()).prepare();
        let routes = PerCallOrca {
            layered: tower::Layer::layer(&self.orca.layer(), routes.clone()),
            plain: routes,
            stats: self.stats.clone(),
        };
        let gate = self.gate.clone();
        let stats = self.stats.clone();
        let draining = self.draining.subscribe();
        let max_connection_age = self.max_connection_age.clone();
        tokio::spawn(async move {
            let mut connections = JoinSet::new();
            let mut listener = Some(listener);
            let mut drain = draining.clone();
            loop {
                tokio::select! {
                    Ok((stream, _)) = async { listener.as_ref().expect("guarded").accept().await }, if listener.is_some() => {
                        let _ = stream.set_nodelay(true);
                        let stream = crate::linger::LingeringStream::new(stream);
                        let io = TokioIo::new(GatedIo::new(stream, gate.clone()));
                        let service = TowerToHyperService::new(routes.clone());
                        stats.accepted.fetch_add(1, Ordering::SeqCst);
                        let open = OpenConnection::new(stats.clone());
                        let mut drain = draining.clone();
                        let max_age = *max_connection_age.lock();
                        connections.spawn(async move {
                            let _open = open;
                            let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(io, service);
                            tokio::pin!(connection);
                            let aged = async {
                                match max_age {
                                    Some(age) => tokio::time::sleep(age).await,
                                    None => std::future::pending().await,
                                }
                            };
                            tokio::select! {
                                _ = connection.as_mut() => {}
                                () = async { let _ = drain.wait_for(|d| *d).await; } => {
                                    connection.as_mut().graceful_shutdown();
                                    let _ = connection.await;
                                }
                                () = aged => {
                                    connection.as_mut().graceful_shutdown();
                                    let _ = connection.await;
                                }
                            }
                        });
                    }
                    () = async { let _ = drain.wait_for(|d| *d).await; }, if listener.is_some() => {
                        listener = None;
                        if connections.is_empty() {
                            return;
                        }
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {
                        if listener.is_none() && connections.is_empty() {
                            return;
                        }
                    }
                }
            }
        })
    }

    fn health_service(&self) -> waypost_proto::health::HealthService {
        waypost_proto::health::HealthService::from_reporter(self.health.clone())
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(meter) = self.meter.get_mut().take() {
            meter.abort();
        }
        if let Some(task) = self.running.get_mut().take() {
            task.abort();
        }
    }
}

/// The backend's routes, with ORCA trailers while per-call reports are on.
#[derive(Clone)]
struct PerCallOrca {
    plain: Routes,
    layered: WithOrca<Routes>,
    stats: Arc<Stats>,
}

impl<B> tower::Service<http::Request<B>> for PerCallOrca
where
    Routes: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = <Routes as tower::Service<http::Request<B>>>::Error;
    type Future = futures_util::future::Either<
        OrcaFuture<<Routes as tower::Service<http::Request<B>>>::Future>,
        <Routes as tower::Service<http::Request<B>>>::Future,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        // Routes is always ready.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if self.stats.orca_per_call.load(Ordering::Relaxed) {
            futures_util::future::Either::Left(self.layered.call(request))
        } else {
            futures_util::future::Either::Right(self.plain.call(request))
        }
    }
}

/// Counts a connection as open until dropped (also when its task is aborted).
struct OpenConnection(Arc<Stats>);

impl OpenConnection {
    fn new(stats: Arc<Stats>) -> Self {
        stats.open_connections.fetch_add(1, Ordering::SeqCst);
        OpenConnection(stats)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A listener on `addr` with SO_REUSEADDR, so a restart can take the same
/// port back at once.
fn bind(addr: SocketAddr) -> Result<TcpListener, HarnessError> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket.listen(1024)?)
}

/// An `ipv4:` target listing the backends' addresses, in order.
pub fn ipv4_target(backends: &[Backend]) -> String {
    let list: Vec<String> = backends.iter().map(|b| b.addr().to_string()).collect();
    format!("ipv4:{}", list.join(","))
}

/// Asserts that `served` (calls per backend name) splits its total in the
/// proportions `shares` (name, share), each within `tolerance` (relative:
/// 0.25 is ± 25 %); `who` names the client in the message.
pub fn assert_shares(
    who: &str,
    served: &std::collections::BTreeMap<String, usize>,
    shares: &[(&str, f64)],
    tolerance: f64,
) {
    let total: usize = served.values().sum();
    let sum: f64 = shares.iter().map(|(_, share)| share).sum();
    for (name, share) in shares {
        let expected = total as f64 * share / sum;
        let got = served.get(*name).copied().unwrap_or(0) as f64;
        assert!(
            (got - expected).abs() <= expected * tolerance,
            "{who}: {name} served {got}, expected {expected:.0} ± {:.0} % ({shares:?}): {served:?}",
            tolerance * 100.0
        );
    }
}

/// Starts `n` backends named `b0`, `b1`, ….
pub async fn start_backends(n: usize) -> Result<Vec<Backend>, HarnessError> {
    let mut backends = Vec::with_capacity(n);
    for i in 0..n {
        backends.push(Backend::start(&format!("b{i}")).await?);
    }
    Ok(backends)
}

/// The `movies.v1.MoviesService` every backend serves.
#[derive(Debug, Clone)]
struct MoviesBackend {
    name: String,
    stats: Arc<Stats>,
}

impl MoviesBackend {
    fn record<T>(&self, request: &Request<T>) {
        self.stats.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(value) = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
        {
            self.stats.authorizations.lock().push(value.to_owned());
        }
        if let Some(token) = request
            .metadata()
            .get("lb-token")
            .and_then(|v| v.to_str().ok())
        {
            *self
                .stats
                .tokens
                .lock()
                .entry(token.to_owned())
                .or_default() += 1;
        }
    }

    fn reply<T>(&self, message: T) -> Response<T> {
        let mut response = Response::new(message);
        if let Ok(value) = self.name.parse() {
            response.metadata_mut().insert("x-served-by", value);
        }
        response
    }
}

type MovieStream = Pin<Box<dyn Stream<Item = Result<Movie, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl MoviesService for MoviesBackend {
    async fn get_movie(&self, request: Request<MovieId>) -> Result<Response<Movie>, Status> {
        let _in_flight = InFlight::new(&self.stats);
        self.record(&request);
        let failing = self.stats.failing_percent.load(Ordering::Relaxed);
        if failing > 0 && self.stats.calls.load(Ordering::SeqCst) % 100 < failing {
            return Err(Status::unavailable(format!(
                "{} fails on purpose",
                self.name
            )));
        }
        let delay = request
            .metadata()
            .get("x-delay-ms")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(|ms| Duration::from_millis(ms).min(MAX_DELAY));
        let slow = Duration::from_millis(self.stats.delay_ms.load(Ordering::Relaxed));
        if let Some(delay) = delay
            .map(|d| d + slow)
            .or((!slow.is_zero()).then_some(slow))
        {
            tokio::time::sleep(delay).await;
        }
        let injected = request
            .metadata()
            .get("x-fail-code")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok());
        if let Some(code) = injected {
            return Err(Status::new(
                tonic::Code::from_i32(code),
                format!("injected by {}", self.name),
            ));
        }
        let mid = request.get_ref().mid;
        let movie = catalog()
            .into_iter()
            .find(|m| m.mid == mid)
            .ok_or_else(|| Status::not_found(format!("no movie with id {mid}")))?;
        Ok(self.reply(Movie {
            served_by: self.name.clone(),
            ..movie
        }))
    }

    type QueryMoviesStream = MovieStream;

    async fn query_movies(
        &self,
        request: Request<MovieQuery>,
    ) -> Result<Response<Self::QueryMoviesStream>, Status> {
        self.record(&request);
        let MovieQuery { query, limit } = request.into_inner();
        let limit = if limit == 0 {
            usize::MAX
        } else {
            limit as usize
        };
        let name = self.name.clone();
        let movies: Vec<Result<Movie, Status>> = catalog()
            .into_iter()
            .filter(|m| m.movie_description.contains(&query))
            .take(limit)
            .map(|m| {
                Ok(Movie {
                    served_by: name.clone(),
                    ..m
                })
            })
            .collect();
        Ok(self.reply(Box::pin(tokio_stream::iter(movies)) as MovieStream))
    }
}
