//! Per-call credentials: added to every attempt (retries too, with fresh
//! values), refused over plaintext when they require TLS, and sent over a
//! TLS channel to a real TLS server.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use support::*;
use waypost_balancer::credentials::{
    BearerToken, CallCredentials, CallInfo, CredentialsFuture, PerCallCredentials, TokenFile,
};
use waypost_balancer::tls::{Certificate, ClientTlsConfig};
use waypost_integration::backend::Backend;
use waypost_integration::pki::TestPki;
use waypost_integration::tls_backend::TlsBackend;

/// A new token for every attempt: `Bearer attempt-1`, `Bearer attempt-2`…
/// (plaintext allowed, for the retry test's plaintext backend).
#[derive(Debug, Default)]
struct Counting(AtomicU64);

impl CallCredentials for Counting {
    fn metadata(&self, call: &CallInfo<'_>) -> CredentialsFuture {
        assert_eq!(call.method, "GetMovie");
        assert!(
            call.service_url.ends_with("/movies.v1.MoviesService"),
            "{}",
            call.service_url
        );
        let n = self.0.fetch_add(1, Ordering::Relaxed) + 1;
        let value = format!("Bearer attempt-{n}").parse().unwrap();
        Box::pin(std::future::ready(Ok(vec![(
            http::header::AUTHORIZATION,
            value,
        )])))
    }

    fn requires_transport_security(&self) -> bool {
        false
    }
}

#[tokio::test]
async fn every_attempt_carries_fresh_credentials_retries_included() {
    let backend = Backend::start("b0").await.unwrap();
    let config = json!({
        "methodConfig": [{
            "name": [{"service": "movies.v1.MoviesService"}],
            "retryPolicy": {
                "maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.01s",
                "backoffMultiplier": 1, "retryableStatusCodes": ["UNAVAILABLE"]
            }
        }]
    });
    let channel = builder(&ipv4_target(&[&backend]))
        .default_service_config(config)
        .call_credentials(Arc::new(Counting::default()))
        .build()
        .unwrap();
    let mut client = Client::new(channel);
    // The backend fails every attempt with UNAVAILABLE (code 14): three
    // attempts, each with its own token.
    let mut request = tonic::Request::new(waypost_proto::movies::v1::MovieId { mid: 1 });
    request
        .metadata_mut()
        .insert("x-fail-code", "14".parse().unwrap());
    request
        .extensions_mut()
        .insert(waypost_balancer::WaitForReady(true));
    let status = client.get_movie(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(
        backend.authorizations(),
        ["Bearer attempt-1", "Bearer attempt-2", "Bearer attempt-3"]
    );
}

#[tokio::test]
async fn credentials_that_need_tls_are_not_sent_over_plaintext() {
    let backend = Backend::start("b0").await.unwrap();
    let channel = builder(&ipv4_target(&[&backend]))
        .call_credentials(Arc::new(BearerToken::new("s3cret").unwrap()))
        .build()
        .unwrap();
    let mut client = Client::new(channel);
    let status = call(&mut client, true, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status.message().contains("transport security"),
        "{status:?}"
    );
    assert_eq!(backend.calls(), 0, "nothing was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_and_a_per_call_token_reach_a_tls_backend() {
    let pki = TestPki::new("test CA");
    let backend = TlsBackend::start("t0", &pki.server(&["movies.test"]), None)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "from-file-1\n").unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.ca_pem()))
        .domain_name("movies.test");
    let channel = builder(&format!("ipv4:{}", backend.addr()))
        .tls(tls)
        .call_credentials(Arc::new(TokenFile::new(&token)))
        .build()
        .unwrap();
    let mut client = Client::new(channel);
    call(&mut client, true, Duration::from_secs(5))
        .await
        .unwrap();
    // The file is rotated: the next call carries the new token.
    std::fs::write(&token, "from-file-2-rotated\n").unwrap();
    call(&mut client, true, Duration::from_secs(5))
        .await
        .unwrap();
    // A per-call token is applied after the channel's, replacing it.
    let mut request = tonic::Request::new(waypost_proto::movies::v1::MovieId { mid: 1 });
    request.extensions_mut().insert(PerCallCredentials(Arc::new(
        BearerToken::new("per-call").unwrap(),
    )));
    client.get_movie(request).await.unwrap();
    assert_eq!(
        backend.authorizations(),
        [
            "Bearer from-file-1",
            "Bearer from-file-2-rotated",
            "Bearer per-call"
        ]
    );
}
