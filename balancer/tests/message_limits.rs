//! The service config's `maxRequestMessageBytes` and
//! `maxResponseMessageBytes`, enforced by the channel against a real tonic
//! backend.

mod support;

use std::time::Duration;

use prost::Message;
use serde_json::json;
use support::*;
use waypost_integration::backend::Backend;
use waypost_proto::movies::v1::{Movie, MovieId, MovieQuery};

/// A round_robin channel to `backend` whose movies methods have `limits`
/// (a JSON object of `maxRequestMessageBytes` / `maxResponseMessageBytes`).
fn limited(backend: &Backend, method: &str, limits: serde_json::Value) -> Client {
    let mut config = json!({
        "name": [{"service": "movies.v1.MoviesService", "method": method}],
        "waitForReady": true
    });
    config
        .as_object_mut()
        .unwrap()
        .extend(limits.as_object().unwrap().clone());
    let channel = builder(&ipv4_target(&[backend]))
        .default_service_config(json!({
            "loadBalancingConfig": [{"round_robin": {}}],
            "methodConfig": [config]
        }))
        .build()
        .unwrap();
    Client::new(channel)
}

async fn query(client: &mut Client, query: &str) -> Result<Vec<Movie>, tonic::Status> {
    let request = MovieQuery {
        query: query.into(),
        limit: 0,
    };
    let mut stream = tokio::time::timeout(Duration::from_secs(10), client.query_movies(request))
        .await
        .expect("answered within 10 s")?
        .into_inner();
    let mut movies = Vec::new();
    while let Some(movie) = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("streamed within 10 s")?
    {
        movies.push(movie);
    }
    Ok(movies)
}

#[tokio::test]
async fn a_request_over_the_limit_fails_before_reaching_the_backend() {
    let backend = Backend::start("b0").await.unwrap();
    // MovieQuery{query: "…"}: 2 bytes of tag and length, then the text.
    let mut client = limited(
        &backend,
        "QueryMovies",
        json!({"maxRequestMessageBytes": 12}),
    );

    let status = query(&mut client, &"x".repeat(11)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .contains("maxRequestMessageBytes (13 > 12)"),
        "{status:?}"
    );
    assert_eq!(backend.calls(), 0, "the message never reached the backend");

    // At the limit, and for methods without one, calls go through on the
    // same channel.
    let at_limit = query(&mut client, &"x".repeat(10)).await.unwrap();
    assert!(at_limit.is_empty(), "no description holds xxxxxxxxxx");
    let movie = client
        .get_movie(MovieId { mid: 1 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(movie.served_by, "b0");
    assert_eq!(backend.calls(), 2);
}

#[tokio::test]
async fn a_request_over_the_limit_is_not_retried_or_truncated() {
    let backend = Backend::start("b0").await.unwrap();
    // A retry policy reads a unary body ahead to record it; the limit's
    // failure must survive that, not turn into an empty request.
    let mut client = limited(
        &backend,
        "QueryMovies",
        json!({
            "maxRequestMessageBytes": 12,
            "retryPolicy": {
                "maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]
            }
        }),
    );
    let status = query(&mut client, &"x".repeat(11)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert_eq!(backend.calls(), 0, "nothing reached the backend");
    let at_limit = query(&mut client, &"x".repeat(10)).await.unwrap();
    assert!(at_limit.is_empty());
    assert_eq!(backend.calls(), 1);
}

#[tokio::test]
async fn a_response_over_the_limit_fails_the_call() {
    let backend = Backend::start("b0").await.unwrap();
    let mut plain = Client::new(
        builder(&ipv4_target(&[&backend]))
            .default_service_config(round_robin())
            .build()
            .unwrap(),
    );
    let movie = plain
        .get_movie(MovieId { mid: 1 })
        .await
        .unwrap()
        .into_inner();
    let size = movie.encoded_len() as u64;

    let mut tight = limited(
        &backend,
        "GetMovie",
        json!({"maxResponseMessageBytes": size - 1}),
    );
    let status = tight.get_movie(MovieId { mid: 1 }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .contains(&format!("maxResponseMessageBytes ({size} > {})", size - 1)),
        "{status:?}"
    );

    let mut exact = limited(
        &backend,
        "GetMovie",
        json!({"maxResponseMessageBytes": size}),
    );
    assert_eq!(
        exact
            .get_movie(MovieId { mid: 1 })
            .await
            .unwrap()
            .into_inner(),
        movie
    );
}

#[tokio::test]
async fn a_streamed_response_ends_at_the_first_message_over_the_limit() {
    let backend = Backend::start("b0").await.unwrap();
    let mut plain = Client::new(
        builder(&ipv4_target(&[&backend]))
            .default_service_config(round_robin())
            .build()
            .unwrap(),
    );
    let all = query(&mut plain, "").await.unwrap();
    let sizes: Vec<u64> = all.iter().map(|m| m.encoded_len() as u64).collect();
    // A limit the largest movie breaks: the stream delivers every movie
    // before the first one over it, then fails.
    let limit = sizes.iter().max().unwrap() - 1;
    let first_over = sizes.iter().position(|&s| s > limit).unwrap();

    let mut client = limited(
        &backend,
        "QueryMovies",
        json!({"maxResponseMessageBytes": limit}),
    );
    let request = MovieQuery {
        query: String::new(),
        limit: 0,
    };
    let mut stream = client.query_movies(request).await.unwrap().into_inner();
    for expected in &all[..first_over] {
        assert_eq!(stream.message().await.unwrap().as_ref(), Some(expected));
    }
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains(&format!(
            "maxResponseMessageBytes ({} > {limit})",
            sizes[first_over]
        )),
        "{status:?}"
    );
}
