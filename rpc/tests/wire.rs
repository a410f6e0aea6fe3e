//! Hostile and broken peers, on raw sockets: oversized and truncated
//! frames, garbage, wrong versions, unknown labels, silent clients.

mod support;

use std::time::Duration;

use bytes::BytesMut;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use waypost_rpc::frame::{Decoder, FrameType, encode_header};
use waypost_rpc::handshake::{self, HandshakeConfig, HandshakeError};
use waypost_rpc::{ConnSettings, DataRequest, DataResponse, Listener, Server};

async fn echo(request: DataRequest) -> Result<DataResponse, tonic::Status> {
    Ok(DataResponse::new("").with_body(request.body))
}

/// A raw data connection, handshaken.
async fn raw_data(server: &waypost_rpc::Running) -> TcpStream {
    let mut io = TcpStream::connect(socket_addr(server)).await.unwrap();
    let agreed = handshake::client(&mut io, &HandshakeConfig::default(), "data")
        .await
        .unwrap();
    assert_eq!(agreed.version, 1);
    io
}

/// Reads frames until the server closes; returns the RESET reason.
async fn reset_reason(io: &mut TcpStream) -> String {
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), io.read_to_end(&mut all))
        .await
        .expect("the server closed the connection")
        .unwrap();
    let mut buf = BytesMut::from(&all[..]);
    let mut decoder = Decoder::new(1 << 20);
    while let Some(frame) = decoder.decode(&mut buf).unwrap() {
        if frame.kind == FrameType::Reset {
            return String::from_utf8_lossy(&frame.payload).into_owned();
        }
    }
    panic!("no RESET among {} bytes", all.len());
}

#[tokio::test]
async fn a_frame_above_the_limit_is_rejected_without_allocating() {
    let server = data_server(echo, ConnSettings::default()).await;
    let mut io = raw_data(&server).await;
    let before = peak_rss_mib();
    io.write_all(&encode_header(FrameType::Request, 0, u32::MAX))
        .await
        .unwrap();
    let reason = reset_reason(&mut io).await;
    assert!(reason.contains("exceeds the agreed maximum"), "{reason}");
    assert!(peak_rss_mib() < before + 64, "no 4 GiB buffer");
    assert!(server.stats().last_error.unwrap().contains("exceeds"));
    // The server still serves others.
    let client = client_of(&server, ConnSettings::default());
    let body = client
        .call("echo", "", Some(Box::new(&b"ok"[..])))
        .await
        .unwrap()
        .body;
    assert_eq!(&body.collect(16).await.unwrap()[..], b"ok");
}

#[tokio::test]
async fn a_truncated_frame_is_an_error_not_a_hang() {
    let server = data_server(echo, ConnSettings::default()).await;
    let mut io = raw_data(&server).await;
    io.write_all(&encode_header(FrameType::Request, 0, 100))
        .await
        .unwrap();
    io.write_all(&[0, 4, b'e', b'c']).await.unwrap();
    io.shutdown().await.unwrap(); // FIN inside the frame
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), io.read_to_end(&mut rest))
        .await
        .expect("the server closed")
        .unwrap();
    let stats = tokio::time::timeout(
        Duration::from_secs(2),
        server.wait_for_stats(|s| s.data_failures > 0),
    )
    .await
    .expect("the server counted the failure");
    assert_eq!(stats.data_failures, 1);
    assert!(stats.last_error.unwrap().contains("inside a frame"));
}

#[tokio::test]
async fn garbage_after_the_handshake_is_rejected_with_a_reason() {
    let server = data_server(echo, ConnSettings::default()).await;
    let mut io = raw_data(&server).await;
    io.write_all(b"\xde\xad\xbe\xef garbage garbage")
        .await
        .unwrap();
    let reason = reset_reason(&mut io).await;
    assert!(reason.contains("unknown frame type 0xde"), "{reason}");
}

#[tokio::test]
async fn garbage_instead_of_a_handshake_gets_a_readable_answer() {
    let server = data_server(echo, ConnSettings::default()).await;
    let mut io = TcpStream::connect(socket_addr(&server)).await.unwrap();
    io.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), io.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with(b"WPRS\x01"));
    let text = String::from_utf8_lossy(&answer);
    assert!(text.contains("not a waypost-rpc hello"), "{text}");
}

#[tokio::test]
async fn a_wrong_version_is_told_why() {
    let server = data_server(echo, ConnSettings::default()).await;
    let mut io = TcpStream::connect(socket_addr(&server)).await.unwrap();
    let config = HandshakeConfig {
        min_version: 7,
        max_version: 9,
        ..HandshakeConfig::default()
    };
    match handshake::client(&mut io, &config, "data").await {
        Err(HandshakeError::Rejected(reason)) => {
            assert!(reason.contains("no common protocol version"), "{reason}");
            assert!(reason.contains("7..=9"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(server.stats().handshake_failures, 1);
}

#[tokio::test]
async fn an_unknown_label_is_rejected_explicitly() {
    let server = data_server(echo, ConnSettings::default()).await;
    let mut io = TcpStream::connect(socket_addr(&server)).await.unwrap();
    match handshake::client(&mut io, &HandshakeConfig::default(), "bulk").await {
        Err(HandshakeError::Rejected(reason)) => {
            assert!(reason.contains("unknown mux label \"bulk\""), "{reason}");
            assert!(reason.contains("control, data"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_silent_client_does_not_block_others() {
    let server = data_server(echo, ConnSettings::default()).await;
    // Connected, never says a word.
    let _silent = TcpStream::connect(socket_addr(&server)).await.unwrap();
    let _silent2 = TcpStream::connect(socket_addr(&server)).await.unwrap();
    let client = client_of(&server, ConnSettings::default());
    let response = tokio::time::timeout(
        Duration::from_secs(2),
        client.call("echo", "", Some(Box::new(&b"hi"[..]))),
    )
    .await
    .expect("not blocked by the silent clients")
    .unwrap();
    assert_eq!(&response.body.collect(16).await.unwrap()[..], b"hi");
}

#[tokio::test]
async fn with_one_handshake_slot_a_silent_client_only_delays_others_until_its_timeout() {
    let server = Server::builder()
        .data(echo)
        .max_concurrent_handshakes(1)
        .handshake(HandshakeConfig {
            timeout: Duration::from_millis(500),
            ..HandshakeConfig::default()
        })
        .serve(Listener::tcp("127.0.0.1:0").await.unwrap())
        .unwrap();
    let _silent = TcpStream::connect(socket_addr(&server)).await.unwrap();
    // The silent connection is accepted (and holds the one slot) first.
    server.wait_for_stats(|s| s.accepted == 1).await;
    let client = client_of(&server, ConnSettings::default());
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        client.call("echo", "", Some(Box::new(&b"hi"[..]))),
    )
    .await
    .expect("served after the silent client's timeout")
    .unwrap();
    assert_eq!(&response.body.collect(16).await.unwrap()[..], b"hi");
    let stats = server.stats();
    assert!(stats.handshake_failures >= 1, "{stats:?}");
    let last = stats.last_error.unwrap();
    assert!(last.contains("timed out"), "{last}");
}

#[tokio::test]
async fn a_silent_server_times_the_client_handshake_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut io = TcpStream::connect(addr).await.unwrap();
    let config = HandshakeConfig {
        timeout: Duration::from_millis(300),
        ..HandshakeConfig::default()
    };
    let started = std::time::Instant::now();
    let result = handshake::client(&mut io, &config, "data").await;
    assert!(
        matches!(result, Err(HandshakeError::Timeout(_))),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}
