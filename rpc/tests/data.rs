//! Data connections end to end: round trips, errors, cancellation, timeouts
//! and pooling, between a real server and client on loopback.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use support::*;
use tokio::io::AsyncReadExt;
use waypost_integration::proxy::Proxy;
use waypost_rpc::{ConnSettings, DataRequest, DataResponse, Error, HandshakeConfig};

/// Echoes the request body back as the response body.
async fn echo(request: DataRequest) -> Result<DataResponse, tonic::Status> {
    Ok(DataResponse::new(request.message.clone()).with_body(request.body))
}

#[tokio::test]
async fn round_trips_at_frame_boundaries_reuse_one_connection() {
    let settings = ConnSettings {
        chunk_size: 64 * 1024,
        ..ConnSettings::default()
    };
    let server = data_server(echo, settings.clone()).await;
    let client = client_of(&server, settings);
    for len in [0, 1, 64 * 1024, 64 * 1024 + 1, 3 * 64 * 1024 + 17] {
        let data = pattern(len);
        let response = client
            .call(
                "echo",
                format!("len={len}"),
                Some(Box::new(std::io::Cursor::new(data.clone()))),
            )
            .await
            .unwrap();
        assert_eq!(response.message, Bytes::from(format!("len={len}")));
        let got = response.body.collect(1 << 20).await.unwrap();
        assert_eq!(got.len(), len);
        assert!(got[..] == data[..], "{len} bytes came back changed");
    }
    // Also an exchange with no request body and no response body.
    let response = client.call("ping", "", None).await.unwrap();
    let mut body = response.body;
    assert!(body.chunk().await.is_none());
    assert_eq!(client.idle_connections(), 1);
    let stats = server.stats();
    assert_eq!(
        stats.data_connections, 1,
        "one pooled connection: {stats:?}"
    );
    assert_eq!(stats.data_requests, 6);
}

#[tokio::test]
async fn checksums_are_agreed_and_verified() {
    let settings = ConnSettings::default();
    let server = waypost_rpc::Server::builder()
        .data(echo)
        .checksums(true)
        .serve(waypost_rpc::Listener::tcp("127.0.0.1:0").await.unwrap())
        .unwrap();
    let client = waypost_rpc::Client::builder(target(&server))
        .checksums(true)
        .conn_settings(settings)
        .build()
        .unwrap();
    let data = pattern(1_000_003);
    let response = client
        .call(
            "echo",
            "",
            Some(Box::new(std::io::Cursor::new(data.clone()))),
        )
        .await
        .unwrap();
    assert!(response.body.collect(2 << 20).await.unwrap()[..] == data[..]);
}

#[tokio::test]
async fn ten_gib_stream_with_bounded_memory() {
    const TOTAL: u64 = 10 << 30;
    let server = data_server(
        |mut request: DataRequest| async move {
            let mut n = 0u64;
            while let Some(chunk) = request.body.chunk().await {
                n += chunk?.len() as u64;
            }
            Ok(DataResponse::new(n.to_string()))
        },
        ConnSettings::default(),
    )
    .await;
    let client = client_of(&server, ConnSettings::default());
    let source = tokio::io::repeat(0xa5).take(TOTAL);
    let mut response = client
        .call("count", "", Some(Box::new(source)))
        .await
        .unwrap();
    assert_eq!(response.message, Bytes::from(TOTAL.to_string()));
    assert_eq!(response.upload_result().await.unwrap(), TOTAL);
    let peak = peak_rss_mib();
    assert!(peak < 128, "peak RSS {peak} MiB for a 10 GiB transfer");
}

#[tokio::test]
async fn error_trailer_longer_than_one_frame() {
    let message = "ошибка ".repeat(6000); // 78,000 bytes, cut to 64 KiB
    let expected = message.clone();
    let server = data_server(
        move |_request: DataRequest| {
            let message = message.clone();
            async move { Err(tonic::Status::resource_exhausted(message)) }
        },
        ConnSettings::default(),
    )
    .await;
    // The smallest frame limit: the trailer spans at least four frames.
    let client = waypost_rpc::Client::builder(target(&server))
        .handshake(HandshakeConfig {
            max_frame: 16 * 1024,
            ..HandshakeConfig::default()
        })
        .build()
        .unwrap();
    match client.call("x", "", None).await.unwrap_err() {
        Error::Status { code, message } => {
            assert_eq!(code, tonic::Code::ResourceExhausted);
            assert!(message.len() <= 64 * 1024 && message.len() > 60 * 1024);
            assert!(expected.starts_with(&message));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn sender_error_mid_stream_reaches_the_receiver_as_a_trailer() {
    // Client → server: the upload's source fails.
    let server = data_server(
        |request: DataRequest| async move {
            match request.body.collect(64 << 20).await {
                Ok(_) => Ok(DataResponse::new("complete?!")),
                Err(e) => Err(tonic::Status::from(e)),
            }
        },
        ConnSettings::default(),
    )
    .await;
    let client = client_of(&server, ConnSettings::default());
    let err = client
        .call("up", "", Some(Box::new(FailingReader { ok: 1 << 20 })))
        .await
        .unwrap_err();
    match err {
        Error::Status { code, message } => {
            assert_eq!(code, tonic::Code::Unknown);
            assert!(message.contains("disk on fire"), "{message}");
        }
        other => panic!("{other:?}"),
    }

    // Server → client: the response body's source fails.
    let server = data_server(
        |_request: DataRequest| async move {
            Ok(DataResponse::new("").with_body(FailingReader { ok: 3 << 20 }))
        },
        ConnSettings::default(),
    )
    .await;
    let client = client_of(&server, ConnSettings::default());
    let mut body = client.call("down", "", None).await.unwrap().body;
    let mut got = 0;
    let err = loop {
        match body.chunk().await {
            Some(Ok(chunk)) => got += chunk.len(),
            Some(Err(e)) => break e,
            None => panic!("ended cleanly after {got} bytes"),
        }
    };
    assert_eq!(got, 3 << 20);
    assert!(
        matches!(&err, Error::Status { code: tonic::Code::Unknown, message } if message.contains("disk on fire")),
        "{err:?}"
    );
}

#[tokio::test]
async fn receiver_cancelling_reaches_the_sender_and_its_handler() {
    // The client stops reading an endless download: the handler sees the
    // cancellation and its source is dropped.
    let dropped = tokio_util::sync::CancellationToken::new();
    let observed = Arc::new(tokio::sync::Notify::new());
    let (d, o) = (dropped.clone(), observed.clone());
    let server = data_server(
        move |request: DataRequest| {
            let (d, o) = (d.clone(), o.clone());
            async move {
                let token = request.cancellation();
                tokio::spawn(async move {
                    token.cancelled().await;
                    o.notify_one();
                });
                Ok(DataResponse::new("").with_body(EndlessReader { dropped: d }))
            }
        },
        ConnSettings::default(),
    )
    .await;
    let client = client_of(&server, ConnSettings::default());
    let mut body = client.call("endless", "", None).await.unwrap().body;
    let mut got = 0;
    while got < 4 << 20 {
        got += body.chunk().await.unwrap().unwrap().len();
    }
    drop(body);
    tokio::time::timeout(Duration::from_secs(5), observed.notified())
        .await
        .expect("the handler saw the cancel");
    tokio::time::timeout(Duration::from_secs(2), dropped.cancelled())
        .await
        .expect("the sender stopped reading its source");
    assert_eq!(
        client.idle_connections(),
        0,
        "a cancelled connection is not reused"
    );

    // The handler stops reading an endless upload: the client's upload
    // ends with CancelledByPeer.
    let server = data_server(
        |mut request: DataRequest| async move {
            let mut n = 0;
            while n < 1 << 20 {
                n += request.body.chunk().await.unwrap()?.len();
            }
            drop(request.body);
            Ok(DataResponse::new("enough"))
        },
        ConnSettings::default(),
    )
    .await;
    let client = client_of(&server, ConnSettings::default());
    let mut response = client
        .call("sink", "", Some(Box::new(EndlessReader::default())))
        .await
        .unwrap();
    assert_eq!(response.message, Bytes::from("enough"));
    let upload = tokio::time::timeout(Duration::from_secs(5), response.upload_result())
        .await
        .expect("the upload stopped");
    assert_eq!(upload, Err(Error::CancelledByPeer));
}

#[tokio::test]
async fn a_silent_peer_fails_both_sides_within_the_idle_timeout() {
    let settings = fast_settings();
    let handler_error = Arc::new(parking_lot::Mutex::new(None::<Error>));
    let seen = handler_error.clone();
    let done = Arc::new(tokio::sync::Notify::new());
    let flowing = Arc::new(tokio::sync::Notify::new());
    let (done2, flowing2) = (done.clone(), flowing.clone());
    let server = data_server(
        move |mut request: DataRequest| {
            let (seen, done, flowing) = (seen.clone(), done2.clone(), flowing2.clone());
            async move {
                loop {
                    match request.body.chunk().await {
                        Some(Ok(_)) => flowing.notify_one(),
                        Some(Err(e)) => {
                            *seen.lock() = Some(e);
                            done.notify_one();
                            return Err(tonic::Status::unavailable("gone"));
                        }
                        None => return Ok(DataResponse::new("")),
                    }
                }
            }
        },
        settings.clone(),
    )
    .await;
    let proxy = Proxy::start(socket_addr(&server)).await.unwrap();
    let client = waypost_rpc::Client::builder(format!("ipv4:{}", proxy.addr()))
        .conn_settings(settings.clone())
        .build()
        .unwrap();
    let call = client.call("up", "", Some(Box::new(EndlessReader::default())));
    let started = tokio::time::Instant::now();
    let (result, _) = tokio::join!(
        async {
            // The call waits for a RESPONSE that never comes.
            tokio::time::timeout(Duration::from_secs(10), call).await
        },
        async {
            // Mid-stream: once the handler has bytes.
            flowing.notified().await;
            proxy.freeze();
        }
    );
    let err = result.expect("the client gave up in time").unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "client: {err:?}");
    let bound = settings.idle_timeout * 3;
    assert!(started.elapsed() < bound + Duration::from_millis(300));
    tokio::time::timeout(bound, done.notified())
        .await
        .expect("the handler saw the failure");
    let handler_saw = handler_error.lock().clone().unwrap();
    assert!(
        matches!(handler_saw, Error::Timeout(_)),
        "server: {handler_saw:?}"
    );
}

#[tokio::test]
async fn a_killed_peer_fails_both_sides() {
    let settings = fast_settings();
    let server = data_server(
        |_request: DataRequest| async move {
            Ok(DataResponse::new("").with_body(EndlessReader::default()))
        },
        settings.clone(),
    )
    .await;
    let proxy = Proxy::start(socket_addr(&server)).await.unwrap();
    let client = waypost_rpc::Client::builder(format!("ipv4:{}", proxy.addr()))
        .conn_settings(settings.clone())
        .build()
        .unwrap();
    let mut body = client.call("down", "", None).await.unwrap().body;
    body.chunk().await.unwrap().unwrap();
    proxy.cut();
    let err = tokio::time::timeout(settings.idle_timeout * 3, async {
        loop {
            match body.chunk().await {
                Some(Ok(_)) => {}
                Some(Err(e)) => return e,
                None => panic!("clean end of an endless body"),
            }
        }
    })
    .await
    .expect("the client noticed");
    assert!(
        matches!(err, Error::Closed | Error::Io { .. } | Error::Timeout(_)),
        "{err:?}"
    );
    // The server side saw its connection fail too.
    let stats = tokio::time::timeout(
        Duration::from_secs(2),
        server.wait_for_stats(|s| s.data_failures > 0),
    )
    .await
    .expect("the server noticed");
    assert_eq!(stats.data_failures, 1, "{stats:?}");
}

#[tokio::test]
async fn a_slow_receiver_is_not_taken_for_a_dead_one() {
    // Idle timeout 1 s, and the client sleeps 1.5 s between reads three
    // times: only heartbeats keep both sides from timing out.
    let settings = fast_settings();
    const TOTAL: usize = 48 << 20;
    let server = data_server(
        |_request: DataRequest| async move {
            Ok(DataResponse::new("").with_body(tokio::io::repeat(1).take(TOTAL as u64)))
        },
        settings.clone(),
    )
    .await;
    let client = client_of(&server, settings);
    let mut body = client.call("down", "", None).await.unwrap().body;
    let mut got = 0;
    let mut naps = 0;
    while let Some(chunk) = body.chunk().await {
        got += chunk.unwrap().len();
        if naps < 3 {
            naps += 1;
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
    }
    assert_eq!(got, TOTAL);
    assert_eq!(server.stats().data_failures, 0);
}

#[tokio::test]
async fn data_calls_follow_the_channel_policy_across_backends() {
    let counts: Vec<Arc<AtomicU64>> = (0..2).map(|_| Arc::default()).collect();
    let mut servers = Vec::new();
    for count in &counts {
        let count = count.clone();
        servers.push(
            data_server(
                move |_request: DataRequest| {
                    count.fetch_add(1, Ordering::SeqCst);
                    async move { Ok(DataResponse::new("")) }
                },
                ConnSettings::default(),
            )
            .await,
        );
    }
    let target = format!(
        "ipv4:{},{}",
        socket_addr(&servers[0]),
        socket_addr(&servers[1])
    );
    let client = waypost_rpc::Client::builder(target)
        .channel(|b| {
            b.default_service_config(serde_json::json!({
                "loadBalancingConfig": [{"round_robin": {}}]
            }))
        })
        .build()
        .unwrap();
    // Wait until both backends are READY so the spread is even.
    for _ in 0..200 {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..8 {
            if let Ok(routed) = client.pick().await {
                seen.insert(routed.connection.address().clone());
            }
        }
        if seen.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..40 {
        client.call("hit", "", None).await.unwrap();
    }
    let a = counts[0].load(Ordering::SeqCst);
    let b = counts[1].load(Ordering::SeqCst);
    assert_eq!(a + b, 40);
    assert!((15..=25).contains(&a), "spread {a}/{b}");
}

#[tokio::test]
async fn no_ready_backend_is_a_clear_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = waypost_rpc::Client::builder(format!("ipv4:{addr}"))
        .pick_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = client.call("x", "", None).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
}
