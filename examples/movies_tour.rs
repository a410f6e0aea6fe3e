//! The gRPC feature tour from the talk, through a waypost channel: a
//! `movies.v1` server found by `dns:///`, a client with unary and
//! server-streaming calls, a NOT_FOUND carrying a typed `MovieError`
//! detail, a deadline that reaches the server and is passed on shorter to
//! a downstream call, an expired deadline seen on both sides, a cancelled
//! stream the server notices, metadata both ways (with a `-bin` value and
//! a trailer), and the health and reflection services standard tools use.
//!
//! ```text
//! cargo run --example movies_tour
//! ```
//!
//! Everything runs in this process on loopback: a DNS server answering for
//! `movies.demo`, the front server, and a downstream server it calls.

#[allow(dead_code, unreachable_pub)]
#[path = "support/movies.rs"]
mod movies;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::{Code, Request};
use waypost::Channel;
use waypost::proto::grpc::health::v1::HealthCheckRequest;
use waypost::proto::grpc::health::v1::health_check_response::ServingStatus;
use waypost::proto::grpc::health::v1::health_client::HealthClient;
use waypost::proto::movies::v1::movies_service_client::MoviesServiceClient;
use waypost::proto::movies::v1::{MovieErrorCode, MovieId, MovieQuery};
use waypost_integration::dns::DnsServer;

/// What the tour observed, step by step (the test checks it).
#[derive(Debug, Default)]
pub struct Tour {
    /// Unary: the movie's name and who served it.
    pub unary: (String, String),
    /// The request id and binary trace the server echoed in headers.
    pub echoed: (String, Vec<u8>),
    /// Server streaming: how many movies arrived.
    pub streamed: usize,
    /// NOT_FOUND: the code, the typed detail's reason, the binary trailer.
    pub not_found: (Option<Code>, Option<MovieErrorCode>, Vec<u8>),
    /// The deadline the server saw (ms) and the shorter one its downstream saw.
    pub deadline_ms: (u64, u64),
    /// An expired deadline: the client's code and whether the server gave up too.
    pub expired: (Option<Code>, bool),
    /// Whether the server noticed the cancelled stream.
    pub cancel_observed: bool,
    /// Health of the movies service, by `grpc.health.v1.Health/Check`.
    pub health: Option<ServingStatus>,
    /// Services listed by server reflection.
    pub reflected: Vec<String>,
}

/// Lists services through `grpc.reflection.v1`, as grpcurl does.
async fn reflect(channel: Channel) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await?
        .into_inner();
    let mut names = Vec::new();
    if let Some(response) = responses.message().await?
        && let Some(MessageResponse::ListServicesResponse(list)) = response.message_response
    {
        names = list.service.into_iter().map(|s| s.name).collect();
    }
    names.sort();
    Ok(names)
}

/// Runs the tour and reports what it saw.
pub async fn run() -> Result<Tour, Box<dyn std::error::Error>> {
    let mut tour = Tour::default();
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));

    // A downstream server, and the front server that calls it.
    let downstream = movies::serve("ratings", any, None, movies::Layers::default()).await?;
    let to_downstream = Channel::builder(format!("ipv4:{}", downstream.addr)).build()?;
    let front = movies::serve("front", any, Some(to_downstream), movies::Layers::default()).await?;

    // DNS: movies.demo → 127.0.0.1; the client only knows the name.
    let dns = DnsServer::start("demo.").await?;
    dns.set_a("movies.demo.", &[Ipv4Addr::LOCALHOST], 30)
        .await?;
    let target = format!("dns://{}/movies.demo:{}", dns.addr(), front.addr.port());
    let channel = Channel::builder(target).build()?;
    let mut client = MoviesServiceClient::new(channel.clone());
    println!(
        "client channel: dns://{}/movies.demo:{}",
        dns.addr(),
        front.addr.port()
    );

    // 1. Unary with metadata both ways, including a binary value.
    let mut request = Request::new(MovieId { mid: 1 });
    request.set_timeout(Duration::from_secs(5));
    request
        .metadata_mut()
        .insert("x-request-id", "tour-1".parse()?);
    request
        .metadata_mut()
        .insert_bin("trace-bin", MetadataValue::from_bytes(&[1, 2, 3, 250]));
    request.extensions_mut().insert(waypost::WaitForReady(true));
    let response = client.get_movie(request).await?;
    let echoed_id = response
        .metadata()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let echoed_trace = response
        .metadata()
        .get_bin("trace-bin")
        .and_then(|v| v.to_bytes().ok())
        .map(|b| b.to_vec())
        .unwrap_or_default();
    let movie = response.into_inner();
    println!(
        "1. GetMovie(1) → {:?} from {}; headers echoed x-request-id={echoed_id:?} trace-bin={echoed_trace:?}",
        movie.movie_name, movie.served_by
    );
    tour.unary = (movie.movie_name, movie.served_by);
    tour.echoed = (echoed_id, echoed_trace);

    // 2. Server streaming.
    let mut stream = client
        .query_movies(MovieQuery {
            query: "space".into(),
            limit: 6,
        })
        .await?
        .into_inner();
    while let Some(movie) = stream.message().await? {
        tour.streamed += 1;
        println!("2. QueryMovies(\"space\") → {}", movie.movie_name);
    }

    // 3. A rich error: NOT_FOUND with a typed detail and a binary trailer.
    let status = client
        .get_movie(MovieId { mid: 42 })
        .await
        .expect_err("there is no movie 42");
    let detail = movies::movie_error(&status);
    let trailer = status
        .metadata()
        .get_bin("lookup-trace-bin")
        .and_then(|v| v.to_bytes().ok())
        .map(|b| b.to_vec())
        .unwrap_or_default();
    println!(
        "3. GetMovie(42) → {:?} {:?}; detail {:?}; trailer lookup-trace-bin={trailer:02x?}",
        status.code(),
        status.message(),
        detail
    );
    tour.not_found = (
        Some(status.code()),
        detail.and_then(|d| MovieErrorCode::try_from(d.reason).ok()),
        trailer,
    );

    // 4. A deadline that travels: 1.5 s from the client; the front server
    //    passes on what is left minus its own 100 ms share.
    let mut request = Request::new(MovieId { mid: 2 });
    request.set_timeout(Duration::from_millis(1500));
    request
        .metadata_mut()
        .insert("x-downstream", "yes".parse()?);
    let response = client.get_movie(request).await?;
    let ms = |name: &str| {
        response
            .metadata()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    tour.deadline_ms = (ms("x-time-left-ms"), ms("x-downstream-time-left-ms"));
    println!(
        "4. deadline 1500 ms: the server saw {} ms left, its downstream {} ms",
        tour.deadline_ms.0, tour.deadline_ms.1
    );

    // 5. An expired deadline: 200 ms for two seconds of work.
    let mut request = Request::new(MovieId {
        mid: movies::SLOW_MOVIE,
    });
    request.set_timeout(Duration::from_millis(200));
    let code = client.get_movie(request).await.err().map(|s| s.code());
    let seen = front.seen.clone();
    let server_gave_up = seen
        .wait_until(
            |s| s.deadlines_expired.load(Ordering::SeqCst) == 1,
            Duration::from_secs(5),
        )
        .await;
    println!(
        "5. deadline 200 ms on slow work → client {code:?}; server gave up too: {server_gave_up}"
    );
    tour.expired = (code, server_gave_up);

    // 6. Cancellation: read three movies of an endless stream, then drop it.
    let mut stream = client
        .query_movies(MovieQuery {
            query: String::new(),
            limit: 0,
        })
        .await?
        .into_inner();
    for _ in 0..3 {
        stream.message().await?;
    }
    drop(stream);
    tour.cancel_observed = seen
        .wait_until(
            |s| s.cancelled_streams.load(Ordering::SeqCst) == 1,
            Duration::from_secs(5),
        )
        .await;
    println!(
        "6. dropped an endless stream after 3 movies; the server stopped: {}",
        tour.cancel_observed
    );

    // 7. Health and reflection, as grpc_health_probe and grpcurl use them.
    let mut health = HealthClient::new(channel.clone());
    let status = health
        .check(HealthCheckRequest {
            service: "movies.v1.MoviesService".into(),
        })
        .await?
        .into_inner()
        .status;
    tour.health = ServingStatus::try_from(status).ok();
    tour.reflected = reflect(channel).await?;
    println!(
        "7. health: {:?}; reflection lists {:?}",
        tour.health, tour.reflected
    );
    Ok(tour)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    run().await?;
    Ok(())
}
