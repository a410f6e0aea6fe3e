//! GOAWAY ENHANCE_YOUR_CALM ("too_many_pings") doubles the keepalive
//! interval, against a real HTTP/2 server that sends it on every
//! connection, as grpc-go's server does to clients that ping too often.

mod support;

use std::time::Duration;

use support::*;
use waypost_balancer::KeepaliveConfig;

#[tokio::test]
async fn each_too_many_pings_goaway_doubles_the_interval() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(socket).await else {
                    return;
                };
                connection.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                let _ = std::future::poll_fn(|cx| connection.poll_closed(cx)).await;
            });
        }
    });

    let keepalive = KeepaliveConfig {
        time: Some(Duration::from_secs(10)),
        timeout: Duration::from_secs(5),
        permit_without_stream: true,
    };
    let channel = builder(&format!("ipv4:{addr}"))
        .keepalive(keepalive)
        .build()
        .unwrap();
    // pick_first connects on the first resolver update.
    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_secs(10);
    while channel.stats().too_many_pings < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            channel.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = channel.stats();
    let expected = 10_000u64 << stats.too_many_pings;
    assert!(
        stats.keepalive_interval_ms == expected || stats.keepalive_interval_ms == expected / 2,
        "10 s doubled per GOAWAY: {stats:?}"
    );
    assert!(
        stats.keepalive_interval_ms >= 80_000,
        "three GOAWAYs: at least 80 s: {stats:?}"
    );
    // A connection that drops at once counts as a failure: the next dial
    // waits out the backoff (100 ms, then 160 ms ± 20 %), not a tight loop.
    assert!(
        started.elapsed() >= Duration::from_millis(220),
        "redialled too fast: {:?}",
        started.elapsed()
    );
    assert!(stats.connects <= stats.too_many_pings + 1, "{stats:?}");
    server.abort();
}
