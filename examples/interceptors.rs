//! Interceptors and middleware around waypost channels and tonic servers:
//!
//! - **bearer-token auth** — the client attaches `authorization: Bearer
//!   <token>` with a tonic interceptor; the server verifies the signed token
//!   (HS256, `jsonwebtoken`) in a tower layer and answers UNAUTHENTICATED
//!   otherwise;
//! - **per-method selection** — the talk's "interceptor pitfall": the auth
//!   layer skips `grpc.health.v1` and reflection, which carry no token;
//! - **rate limiting** — a server layer (token bucket) answers
//!   RESOURCE_EXHAUSTED past its rate;
//! - **retries** — the client channel's service config `retryPolicy` (the
//!   balancer's retry layer) retries UNAVAILABLE with backoff.
//!
//! ```text
//! cargo run --example interceptors
//! ```

#[allow(dead_code, unreachable_pub)]
#[path = "support/movies.rs"]
mod movies;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tonic::{Code, Request};
use waypost::Channel;
use waypost::proto::grpc::health::v1::HealthCheckRequest;
use waypost::proto::grpc::health::v1::health_client::HealthClient;
use waypost::proto::movies::v1::MovieId;
use waypost::proto::movies::v1::movies_service_client::MoviesServiceClient;

/// What the example observed (the test checks it).
#[derive(Debug, Default)]
pub struct Observed {
    /// A call without a token.
    pub without_token: Option<Code>,
    /// A call with a forged token.
    pub forged_token: Option<Code>,
    /// A call with a valid token: the movie's name.
    pub with_token: Option<String>,
    /// A health check without a token (skipped by auth).
    pub health_without_token: bool,
    /// Out of a burst of calls: (ok, resource exhausted).
    pub burst: (usize, usize),
    /// A flaky call with a retry policy: the result and the attempts the server saw.
    pub retried: (Option<String>, u32),
    /// The same flakiness without a retry policy.
    pub not_retried: Option<Code>,
}

fn get(mid: i32) -> Request<MovieId> {
    let mut request = Request::new(MovieId { mid });
    request.set_timeout(Duration::from_secs(5));
    request.extensions_mut().insert(waypost::WaitForReady(true));
    request
}

/// Runs every scenario and reports what happened.
pub async fn run() -> Result<Observed, Box<dyn std::error::Error>> {
    let mut seen = Observed::default();
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));

    // A server that requires tokens and allows 5 calls/s (burst of 5).
    let guarded = movies::serve(
        "guarded",
        any,
        None,
        movies::Layers {
            auth: true,
            rate_limit: Some((5.0, 5)),
        },
    )
    .await?;
    let channel = Channel::builder(format!("ipv4:{}", guarded.addr)).build()?;

    // No token.
    let mut anonymous = MoviesServiceClient::new(channel.clone());
    seen.without_token = anonymous.get_movie(get(1)).await.err().map(|s| s.code());
    println!("no token → {:?}", seen.without_token);

    // A token signed with another key.
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &movies::Claims {
            sub: "mallory".into(),
            exp: u64::MAX / 2,
        },
        &jsonwebtoken::EncodingKey::from_secret(b"not the server's key"),
    )?;
    let mut forger =
        MoviesServiceClient::with_interceptor(channel.clone(), move |mut r: Request<()>| {
            r.metadata_mut().insert(
                "authorization",
                format!("Bearer {forged}").parse().expect("ascii"),
            );
            Ok(r)
        });
    seen.forged_token = forger.get_movie(get(1)).await.err().map(|s| s.code());
    println!("forged token → {:?}", seen.forged_token);

    // A valid token, attached by a client interceptor.
    let token = movies::token_for("alice");
    let mut alice =
        MoviesServiceClient::with_interceptor(channel.clone(), move |mut r: Request<()>| {
            r.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("ascii"),
            );
            Ok(r)
        });
    seen.with_token = Some(alice.get_movie(get(3)).await?.into_inner().movie_name);
    println!("valid token → {:?}", seen.with_token);

    // Health needs no token: the auth layer skips it.
    let mut health = HealthClient::new(channel.clone());
    seen.health_without_token = health.check(HealthCheckRequest::default()).await.is_ok();
    println!(
        "health check without a token → ok: {}",
        seen.health_without_token
    );

    // A burst of 30 calls against 5/s with a burst of 5.
    for _ in 0..30 {
        match alice.get_movie(get(2)).await {
            Ok(_) => seen.burst.0 += 1,
            Err(s) if s.code() == Code::ResourceExhausted => seen.burst.1 += 1,
            Err(s) => return Err(s.into()),
        }
    }
    println!(
        "30 calls at once → {} ok, {} RESOURCE_EXHAUSTED",
        seen.burst.0, seen.burst.1
    );

    // Retries from the service config: the server fails the first two
    // attempts of a request id with UNAVAILABLE.
    let open = movies::serve("flaky", any, None, movies::Layers::default()).await?;
    let retrying = Channel::builder(format!("ipv4:{}", open.addr))
        .default_service_config(serde_json::json!({
            "methodConfig": [{
                "name": [{"service": "movies.v1.MoviesService"}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.01s",
                    "maxBackoff": "0.1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"]
                }
            }]
        }))
        .build()?;
    let mut client = MoviesServiceClient::new(retrying);
    let mut request = get(4);
    request
        .metadata_mut()
        .insert("x-request-id", "retry-me".parse()?);
    request.metadata_mut().insert("x-fail-first", "2".parse()?);
    let result = client.get_movie(request).await;
    let attempts = open
        .seen
        .attempts
        .lock()
        .get("retry-me")
        .copied()
        .unwrap_or(0);
    seen.retried = (result.ok().map(|r| r.into_inner().movie_name), attempts);
    println!(
        "flaky call with retryPolicy → {:?} after {attempts} attempts",
        seen.retried.0
    );

    let plain = Channel::builder(format!("ipv4:{}", open.addr)).build()?;
    let mut client = MoviesServiceClient::new(plain);
    let mut request = get(4);
    request
        .metadata_mut()
        .insert("x-request-id", "no-retry".parse()?);
    request.metadata_mut().insert("x-fail-first", "1".parse()?);
    seen.not_retried = client.get_movie(request).await.err().map(|s| s.code());
    println!("flaky call without retryPolicy → {:?}", seen.not_retried);
    Ok(seen)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    run().await?;
    Ok(())
}
