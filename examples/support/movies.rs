//! The examples' `movies.v1` server: everything the gRPC talk walks through
//! — rich errors, deadlines passed downstream, cancellation, metadata both
//! ways — plus the tower layers of the interceptor example (bearer-token
//! auth that skips health and reflection, a rate limiter) and health and
//! reflection services, so standard gRPC tools can list and call it.
//!
//! Shared by `examples/movies_tour.rs` and `examples/interceptors.rs`
//! through `#[path]`; not an example of its own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prost::Message;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status};
use waypost::Channel;
use waypost::proto::movies::v1::movies_service_client::MoviesServiceClient;
use waypost::proto::movies::v1::movies_service_server::{MoviesService, MoviesServiceServer};
use waypost::proto::movies::v1::{Movie, MovieError, MovieErrorCode, MovieId, MovieQuery};

/// The `type_url` of a `MovieError` inside a `google.rpc.Status`.
pub const MOVIE_ERROR_TYPE: &str = "type.googleapis.com/movies.v1.MovieError";

/// The signing key of the example's bearer tokens (HS256).
pub const TOKEN_SECRET: &[u8] = b"waypost example secret: rotate me in production";

/// The catalog every example server holds (the test harness's).
pub fn catalog() -> Vec<Movie> {
    waypost_integration::backend::catalog()
}

/// The movie id that makes `GetMovie` work slowly (two seconds), to show
/// deadlines expiring.
pub const SLOW_MOVIE: i32 = 99;

/// What a server saw, for the examples' reports and tests.
#[derive(Debug, Default)]
pub struct Seen {
    /// `QueryMovies` streams whose client went away mid-stream.
    pub cancelled_streams: AtomicU64,
    /// Calls whose deadline expired while the server worked.
    pub deadlines_expired: AtomicU64,
    /// The time left on the last call's deadline, in ms, as the server saw it.
    pub last_time_left_ms: AtomicU64,
    /// Attempts per `x-request-id`.
    pub attempts: Mutex<HashMap<String, u32>>,
    /// Calls that got through the auth layer, by path.
    pub authorized: Mutex<Vec<String>>,
    /// Woken when a counter above changes.
    changed: tokio::sync::Notify,
}

impl Seen {
    /// Adds one to `counter` (one of the fields above) and wakes waiters.
    fn count(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Waits (at most `limit`) until `pred` holds; returns whether it did.
    pub async fn wait_until(&self, pred: impl Fn(&Seen) -> bool, limit: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if pred(self) {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }
}

/// Counts a call whose deadline expired, however the work ended (its own
/// timer, or the call dropped when the client cancelled at the deadline).
struct GiveUp(Arc<Seen>);

impl Drop for GiveUp {
    fn drop(&mut self) {
        self.0.count(&self.0.deadlines_expired);
    }
}

/// The service implementation.
#[derive(Clone)]
pub struct Movies {
    name: String,
    downstream: Option<MoviesServiceClient<Channel>>,
    seen: Arc<Seen>,
}

impl Movies {
    /// A server named `name`; `downstream` is where `x-downstream` calls go.
    pub fn new(name: &str, downstream: Option<Channel>, seen: Arc<Seen>) -> Movies {
        Movies {
            name: name.to_owned(),
            downstream: downstream.map(MoviesServiceClient::new),
            seen,
        }
    }
}

/// The time left before the caller's deadline, from `grpc-timeout`.
pub fn time_left(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    waypost::balancer::parse_grpc_timeout(value)
}

/// A NOT_FOUND status carrying a `MovieError` detail (gRPC's rich error
/// model: a `google.rpc.Status` in `grpc-status-details-bin`), plus a
/// binary trailer.
fn not_found(mid: i32) -> Status {
    let message = format!("no movie with id {mid}");
    let detail = MovieError {
        reason: MovieErrorCode::MovieNotFound as i32,
        message: format!("the catalog has ids 1 to {}", catalog().len()),
    };
    let rich = tonic_types::pb::Status {
        code: Code::NotFound as i32,
        message: message.clone(),
        details: vec![prost_types::Any {
            type_url: MOVIE_ERROR_TYPE.to_owned(),
            value: detail.encode_to_vec(),
        }],
    };
    let mut trailers = MetadataMap::new();
    trailers.insert_bin(
        "lookup-trace-bin",
        MetadataValue::from_bytes(&[0xde, 0xad, 0xbe, 0xef]),
    );
    Status::with_details_and_metadata(
        Code::NotFound,
        message,
        rich.encode_to_vec().into(),
        trailers,
    )
}

/// Decodes the `MovieError` detail of a status, if it has one.
pub fn movie_error(status: &Status) -> Option<MovieError> {
    let rich = tonic_types::pb::Status::decode(status.details()).ok()?;
    rich.details
        .iter()
        .find(|any| any.type_url == MOVIE_ERROR_TYPE)
        .and_then(|any| MovieError::decode(&any.value[..]).ok())
}

#[tonic::async_trait]
impl MoviesService for Movies {
    async fn get_movie(&self, request: Request<MovieId>) -> Result<Response<Movie>, Status> {
        let started = Instant::now();
        let left = time_left(request.metadata());
        if let Some(left) = left {
            self.seen
                .last_time_left_ms
                .store(left.as_millis() as u64, Ordering::SeqCst);
        }
        // Metadata in: a request id and a binary trace id, echoed back.
        let request_id = request
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let trace = request.metadata().get_bin("trace-bin").cloned();
        // Flaky on purpose: `x-fail-first: N` fails the first N attempts of
        // a request id with UNAVAILABLE (the retry example).
        let attempt = {
            let mut attempts = self.seen.attempts.lock();
            let n = attempts.entry(request_id.clone()).or_default();
            *n += 1;
            *n
        };
        let fail_first: u32 = request
            .metadata()
            .get("x-fail-first")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if attempt <= fail_first {
            return Err(Status::unavailable(format!(
                "attempt {attempt} of {request_id} fails on purpose"
            )));
        }
        let wants_downstream = request.metadata().contains_key("x-downstream");
        let mid = request.get_ref().mid;

        let mut headers = MetadataMap::new();
        headers.insert("x-served-by", self.name.parse().expect("ascii name"));
        if let Ok(v) = request_id.parse() {
            headers.insert("x-request-id", v);
        }
        if let Some(trace) = trace {
            headers.insert_bin("trace-bin", trace);
        }

        if mid == SLOW_MOVIE {
            // Two seconds of work, cut short by the caller's deadline.
            let work = tokio::time::sleep(Duration::from_secs(2));
            match left {
                Some(left) if left < Duration::from_secs(2) => {
                    // Give up when the deadline passes: by our own timer
                    // (a little early, for the answer's trip back), or when
                    // the client's cancel at its deadline drops this call.
                    let gave_up = GiveUp(self.seen.clone());
                    tokio::time::sleep(left.saturating_sub(Duration::from_millis(20))).await;
                    drop(gave_up);
                    return Err(Status::deadline_exceeded(
                        "the server gave up: the caller's deadline passed",
                    ));
                }
                _ => work.await,
            }
        }

        if wants_downstream && let (Some(downstream), Some(left)) = (&self.downstream, left) {
            // Pass on a shorter deadline: what is left, minus our own
            // share of the work (100 ms).
            let budget = left
                .saturating_sub(started.elapsed())
                .saturating_sub(Duration::from_millis(100));
            let mut call = Request::new(MovieId { mid });
            call.set_timeout(budget);
            let answer = downstream.clone().get_movie(call).await?;
            if let Some(v) = answer.metadata().get("x-time-left-ms") {
                headers.insert("x-downstream-time-left-ms", v.clone());
            }
        }
        if let Some(left) = left {
            headers.insert(
                "x-time-left-ms",
                left.as_millis().to_string().parse().expect("digits"),
            );
        }

        let movie = catalog()
            .into_iter()
            .find(|m| m.mid == mid)
            .ok_or_else(|| not_found(mid))?;
        let mut response = Response::new(Movie {
            served_by: self.name.clone(),
            ..movie
        });
        *response.metadata_mut() = headers;
        Ok(response)
    }

    type QueryMoviesStream = tokio_stream::wrappers::ReceiverStream<Result<Movie, Status>>;

    async fn query_movies(
        &self,
        request: Request<MovieQuery>,
    ) -> Result<Response<Self::QueryMoviesStream>, Status> {
        let query = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let seen = self.seen.clone();
        let name = self.name.clone();
        // Streams the matching movies round and round, one every 20 ms, up
        // to `limit` (0 = until the client goes away).
        tokio::spawn(async move {
            let matching: Vec<Movie> = catalog()
                .into_iter()
                .filter(|m| m.movie_description.contains(&query.query))
                .collect();
            if matching.is_empty() {
                return;
            }
            for (sent, movie) in matching.iter().cycle().enumerate() {
                if query.limit != 0 && sent >= query.limit as usize {
                    return;
                }
                let movie = Movie {
                    served_by: name.clone(),
                    ..movie.clone()
                };
                tokio::select! {
                    result = tx.send(Ok(movie)) => if result.is_err() {
                        seen.count(&seen.cancelled_streams);
                        return;
                    },
                    // The client dropped the call: tonic drops the stream.
                    _ = tx.closed() => {
                        seen.count(&seen.cancelled_streams);
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }
}

/// Bearer-token claims.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    /// Who.
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
}

/// A signed HS256 token for `subject`, valid for an hour.
pub fn token_for(subject: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &Claims {
            sub: subject.to_owned(),
            exp,
        },
        &jsonwebtoken::EncodingKey::from_secret(TOKEN_SECRET),
    )
    .expect("HS256 signing works")
}

/// Paths the auth layer lets through without a token — the talk's
/// "interceptor pitfall": health checkers and reflection clients carry no
/// credentials.
pub fn skips_auth(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.")
}

/// A check a [`GuardLayer`] runs on each call's path and headers.
type Check = Arc<dyn Fn(&str, &http::HeaderMap) -> Result<(), Status> + Send + Sync>;

/// A server layer that checks each call before it reaches the services:
/// `check(path, headers)` answers `Err(status)` to refuse it. The auth and
/// rate-limit layers below are two checks.
#[derive(Clone)]
pub struct GuardLayer {
    check: Check,
}

impl GuardLayer {
    /// A layer running `check` on every call.
    pub fn new(
        check: impl Fn(&str, &http::HeaderMap) -> Result<(), Status> + Send + Sync + 'static,
    ) -> GuardLayer {
        GuardLayer {
            check: Arc::new(check),
        }
    }
}

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            check: self.check.clone(),
        }
    }
}

/// The service [`GuardLayer`] makes.
#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    check: Check,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Guard<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if let Err(status) = (self.check)(request.uri().path(), request.headers()) {
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let mut inner = self.inner.clone();
        // The clone may not be ready: swap so the ready one serves.
        std::mem::swap(&mut inner, &mut self.inner);
        Box::pin(async move { inner.call(request).await })
    }
}

/// Why a bearer token is refused.
pub fn check_token(headers: &http::HeaderMap) -> Result<Claims, Status> {
    let value = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Status::unauthenticated("missing authorization: Bearer <token>"))?;
    let token = value
        .strip_prefix("Bearer ")
        .ok_or_else(|| Status::unauthenticated("authorization is not a Bearer token"))?;
    let data = jsonwebtoken::decode::<Claims>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(TOKEN_SECRET),
        &jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256),
    )
    .map_err(|e| Status::unauthenticated(format!("bad token: {e}")))?;
    Ok(data.claims)
}

/// Verifies `authorization: Bearer <token>` (HS256, with expiry) on every
/// call except health and reflection; answers UNAUTHENTICATED otherwise.
/// Records what it let through in `seen`.
pub fn auth_layer(seen: Arc<Seen>) -> GuardLayer {
    GuardLayer::new(move |path, headers| {
        if !skips_auth(path) {
            check_token(headers)?;
        }
        seen.authorized.lock().push(path.to_owned());
        Ok(())
    })
}

/// A token bucket: `rate` tokens per second, at most `burst` saved. Pure:
/// the caller passes the time.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(rate: f64, burst: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// Takes a token at `now`, if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Answers RESOURCE_EXHAUSTED past `rate` calls per second (with a
/// burst of `burst`); health and reflection are not counted.
pub fn rate_limit_layer(rate: f64, burst: u32) -> GuardLayer {
    let bucket = Mutex::new(TokenBucket::new(rate, burst, Instant::now()));
    GuardLayer::new(move |path, _| {
        if skips_auth(path) || bucket.lock().try_take(Instant::now()) {
            Ok(())
        } else {
            Err(Status::resource_exhausted("rate limit: try again later"))
        }
    })
}

/// Which layers a server runs.
#[derive(Debug, Clone, Default)]
pub struct Layers {
    /// Require bearer tokens (except health and reflection).
    pub auth: bool,
    /// Calls per second and burst, if rate limited.
    pub rate_limit: Option<(f64, u32)>,
}

/// A running example server.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it saw.
    pub seen: Arc<Seen>,
    /// Its health (flip it to see health checking at work).
    pub health: waypost::proto::health::HealthReporter,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a server on `addr` (port 0 for a free one) with the movies
/// service, `grpc.health.v1`, reflection and the chosen layers.
pub async fn serve(
    name: &str,
    addr: SocketAddr,
    downstream: Option<Channel>,
    layers: Layers,
) -> std::io::Result<Running> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let seen = Arc::new(Seen::default());
    let (health, health_service) = waypost::proto::health::HealthReporter::new();
    health.set(
        "movies.v1.MoviesService",
        waypost::proto::grpc::health::v1::health_check_response::ServingStatus::Serving,
    );
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(waypost::proto::movies::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(waypost::proto::grpc::health::v1::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(std::io::Error::other)?;
    let movies = MoviesServiceServer::new(Movies::new(name, downstream, seen.clone()));
    let auth = layers.auth.then(|| auth_layer(seen.clone()));
    let limit = layers
        .rate_limit
        .map(|(rate, burst)| rate_limit_layer(rate, burst));
    let router = tonic::transport::Server::builder()
        .layer(tower::util::option_layer(auth))
        .layer(tower::util::option_layer(limit))
        .add_service(movies)
        .add_service(health_service)
        .add_service(reflection);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let task = tokio::spawn(async move {
        let _ = router.serve_with_incoming(incoming).await;
    });
    Ok(Running {
        addr,
        seen,
        health,
        task,
    })
}
