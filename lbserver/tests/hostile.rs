//! `waypost serve` under clients that lie or flood: each must cost the
//! server bounded work, and other clients must not notice.

mod support;

use std::time::Duration;

use support::*;
use waypost_proto::grpc::lb::v1::load_balance_request::LoadBalanceRequestType;
use waypost_proto::grpc::lb::v1::load_balance_response::LoadBalanceResponseType;
use waypost_proto::grpc::lb::v1::{ClientStats, ClientStatsPerToken, LoadBalanceRequest};

fn report(stats: ClientStats) -> LoadBalanceRequest {
    LoadBalanceRequest {
        load_balance_request_type: Some(LoadBalanceRequestType::ClientStats(stats)),
    }
}

/// A static source of `n` backends (never probed: all healthy).
fn many_backends(n: u16) -> String {
    (1..=n)
        .map(|port| format!("127.0.0.1:{port}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_drop_tokens_does_not_stall_the_server() {
    let lb = serve(&format!(
        "admin = \"127.0.0.1:0\"\n[[service]]\nname = \"movies\"\nsource = \"{}\"\nclient_stats_interval = \"100ms\"\n",
        many_backends(2000)
    ))
    .await;
    let admin = lb.admin.unwrap();
    let flood = ClientStats {
        num_calls_started: 1,
        calls_finished_with_drop: (0..2500)
            .map(|i| ClientStatsPerToken {
                load_balance_token: format!("not-a-token-{i:08}"),
                num_calls: 1,
            })
            .collect(),
        ..Default::default()
    };
    let mut flooders = Vec::new();
    for _ in 0..8 {
        let mut stream = open(lb.listen, initial("movies")).await.unwrap();
        next(&mut stream).await; // initial response
        let flood = flood.clone();
        flooders.push(tokio::spawn(async move {
            let until = tokio::time::Instant::now() + Duration::from_secs(4);
            while tokio::time::Instant::now() < until {
                if stream.tx.send(report(flood.clone())).await.is_err() {
                    return;
                }
            }
        }));
    }

    let service = lb.registry.find("movies").unwrap();
    let reports_before = service
        .stats
        .reports
        .load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..10 {
        let started = tokio::time::Instant::now();
        let answer = http(admin, "GET", "/healthz").await;
        let took = started.elapsed();
        assert!(answer.ends_with("ok\n"), "{answer}");
        assert!(took < Duration::from_millis(200), "/healthz took {took:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = tokio::time::Instant::now();
    let mut fresh = open(lb.listen, initial("movies")).await.unwrap();
    next(&mut fresh).await;
    let list = list_where(&mut fresh, |s| s.len() == 2000).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a new client waited {:?} for its list",
        started.elapsed()
    );
    assert!(list.iter().all(|s| !s.drop));

    // The reports were read (throttled), and no unknown token was kept.
    assert!(
        service
            .stats
            .reports
            .load(std::sync::atomic::Ordering::Relaxed)
            > reports_before
    );
    assert!(service.stats.drops.lock().is_empty());
    for flooder in flooders {
        flooder.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_saturate_instead_of_wrapping() {
    let lb = serve("[[service]]\nname = \"movies\"\nsource = \"127.0.0.1:1\"\nclient_stats_interval = \"100ms\"\n").await;
    let service = lb.registry.find("movies").unwrap();
    let token = waypost_lbserver::assign::token("movies", "127.0.0.1:1".parse().unwrap());
    let mut stream = open(lb.listen, initial("movies")).await.unwrap();
    next(&mut stream).await;
    for _ in 0..4 {
        stream
            .tx
            .send(report(ClientStats {
                num_calls_started: i64::MAX,
                num_calls_finished: i64::MAX,
                calls_finished_with_drop: vec![ClientStatsPerToken {
                    load_balance_token: token.clone(),
                    num_calls: i64::MAX,
                }],
                ..Default::default()
            }))
            .await
            .unwrap();
    }
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while load(&service.stats.reports) < 4 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(load(&service.stats.started), u64::MAX);
    assert_eq!(load(&service.stats.finished), u64::MAX);
    assert_eq!(service.stats.drops.lock().get(&token), Some(&u64::MAX));
}

/// Whether a server list has drop entries.
fn has_drops(response: &LoadBalanceResponseType) -> Option<bool> {
    match response {
        LoadBalanceResponseType::ServerList(list) => Some(list.servers.iter().any(|s| s.drop)),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_client_cannot_drive_the_others_into_drops_once_it_left() {
    // 2 backends × weight 1 × 100 calls/s: 200 calls/s of capacity.
    let lb = serve(
        "[[service]]\nname = \"movies\"\nsource = \"127.0.0.1:1,127.0.0.1:2\"\npolicy = \"weighted\"\ncapacity_per_weight = 100.0\nclient_stats_interval = \"200ms\"\n",
    )
    .await;
    let service = lb.registry.find("movies").unwrap();

    // An honest client: 20 calls per 200 ms (100 calls/s).
    let mut honest = open(lb.listen, initial("movies")).await.unwrap();
    next(&mut honest).await;
    let honest_tx = honest.tx.clone();
    let reporter = tokio::spawn(async move {
        for _ in 0..500 {
            let stats = ClientStats {
                num_calls_started: 20,
                num_calls_finished: 20,
                ..Default::default()
            };
            if honest_tx.send(report(stats)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });

    // A rogue client claims 10^9 calls per report, for 10 s: beside the
    // honest one it counts for at most four of it (400 calls/s), so the
    // estimate stays bounded.
    let mut rogue = open(lb.listen, initial("movies")).await.unwrap();
    next(&mut rogue).await;
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < until {
        let stats = ClientStats {
            num_calls_started: 1_000_000_000,
            ..Default::default()
        };
        rogue.tx.send(report(stats)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let rate = service.observed_rate();
        assert!(rate <= 5.0 * 100.0 * 1.5, "one liar dominates: {rate}");
    }
    drop(rogue);

    // Its contribution leaves within one stats interval of its stream's end.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while service.observed_rate() > 150.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "rate still {} after the liar left",
            service.observed_rate()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The list follows (after at most one debounce window), and a fresh
    // client's list carries no drops (100 calls/s < 200 of capacity).
    while has_drops(
        service
            .current()
            .response
            .load_balance_response_type
            .as_ref()
            .unwrap(),
    ) != Some(false)
    {
        assert!(tokio::time::Instant::now() < deadline, "drops stayed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut fresh = open(lb.listen, initial("movies")).await.unwrap();
    next(&mut fresh).await;
    let first = next(&mut fresh).await;
    assert_eq!(
        has_drops(&first),
        Some(false),
        "{first:?} rate {} drop {}",
        service.observed_rate(),
        service.drop_fraction()
    );
    assert_eq!(service.drop_fraction(), 0.0);
    reporter.abort();
}

#[tokio::test]
async fn an_oversized_request_gets_resource_exhausted() {
    let lb = serve("[[service]]\nname = \"movies\"\nsource = \"127.0.0.1:1\"\n").await;
    let huge = initial(&"m".repeat(100 * 1024));
    let status = match open(lb.listen, huge).await {
        Err(status) => status,
        Ok(mut stream) => stream.rx.message().await.unwrap_err(),
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");

    // Also after the initial request.
    let mut stream = open(lb.listen, initial("movies")).await.unwrap();
    next(&mut stream).await;
    let stats = ClientStats {
        calls_finished_with_drop: (0..5000)
            .map(|i| ClientStatsPerToken {
                load_balance_token: format!("token-{i:020}"),
                num_calls: 1,
            })
            .collect(),
        ..Default::default()
    };
    stream.tx.send(report(stats)).await.unwrap();
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.rx.message())
            .await
            .expect("an answer within 10 s")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
}

/// A raw HTTP/2 BalanceLoad stream whose client decides when the server
/// may send: its streams' window starts at `window` bytes and grows to
/// 64 KiB when `grow` fires.
async fn throttled_stream(
    lb: std::net::SocketAddr,
    window: u32,
    grow: tokio::sync::oneshot::Receiver<()>,
) -> (h2::RecvStream, h2::SendStream<bytes::Bytes>) {
    let tcp = tokio::net::TcpStream::connect(lb).await.unwrap();
    let (mut client, mut connection) = h2::client::Builder::new()
        .initial_window_size(window)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(async move {
        tokio::select! {
            _ = &mut connection => return,
            _ = grow => {}
        }
        connection.set_initial_window_size(64 * 1024).unwrap();
        let _ = connection.await;
    });
    let request = http::Request::post(format!("http://{lb}/grpc.lb.v1.LoadBalancer/BalanceLoad"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    send.send_data(
        waypost_lbserver::balance::frames::encode(&initial("movies")),
        false,
    )
    .unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    (response.into_body(), send)
}

/// The next gRPC message on `recv`, its window given back as it is read.
async fn next_response(
    recv: &mut h2::RecvStream,
    reader: &mut waypost_lbserver::balance::frames::MessageReader,
) -> LoadBalanceResponseType {
    loop {
        if let Some(message) = reader.next_message().unwrap() {
            let response: waypost_proto::grpc::lb::v1::LoadBalanceResponse =
                prost::Message::decode(message).unwrap();
            return response.load_balance_response_type.unwrap();
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), recv.data())
            .await
            .expect("data within 10 s")
            .expect("the stream is open")
            .unwrap();
        recv.flow_control().release_capacity(chunk.len()).unwrap();
        reader.feed(chunk).unwrap();
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_is_sent_the_newest_list_not_a_backlog() {
    let lb = serve(&format!(
        "[[service]]\nname = \"movies\"\nsource = \"{}\"\n",
        many_backends(10)
    ))
    .await;
    let service = lb.registry.find("movies").unwrap();
    let mut lists = service.subscribe();
    lists.wait_for(|list| list.backends == 10).await.unwrap();

    // Room for the initial response (a few bytes), not for any list of
    // five servers or more.
    let (grow, grown) = tokio::sync::oneshot::channel();
    let (mut recv, _send) = throttled_stream(lb.listen, 32, grown).await;
    let mut reader = waypost_lbserver::balance::frames::MessageReader::new(1 << 20);
    assert!(matches!(
        next_response(&mut recv, &mut reader).await,
        LoadBalanceResponseType::InitialResponse(_)
    ));

    // 9 lists are published while the client reads nothing (each of 5 to
    // 9 servers, none fits): drain five backends one by one, then bring
    // back all but the last.
    let addr = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let steps = (1..=5)
        .map(|p| (p, true))
        .chain((1..=4).map(|p| (p, false)));
    for (port, draining) in steps {
        let before = lists.borrow_and_update().version;
        assert!(service.set_draining(addr(port), draining));
        lists.wait_for(|list| list.version > before).await.unwrap();
    }
    assert_eq!(
        service
            .lists_sent
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "nothing fit the client's window"
    );

    grow.send(()).unwrap();
    let LoadBalanceResponseType::ServerList(list) = next_response(&mut recv, &mut reader).await
    else {
        panic!("a server list");
    };
    let ports: Vec<i32> = list.servers.iter().map(|s| s.port).collect();
    assert_eq!(ports.len(), 9, "{ports:?}");
    assert!(!ports.contains(&5), "the newest list: {ports:?}");
    assert_eq!(
        service
            .lists_sent
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "one list sent for 9 changes"
    );
}

/// A client speaking raw HTTP/2 frames: the preface and an empty SETTINGS,
/// then whatever the test does.
async fn raw_http2(lb: std::net::SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut tcp = tokio::net::TcpStream::connect(lb).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    tcp.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    tcp
}

/// The next frame's type, flags and payload; `None` at EOF.
async fn next_frame(tcp: &mut tokio::net::TcpStream) -> Option<(u8, u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 9];
    match tcp.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
        Err(e) => panic!("{e}"),
    }
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload).await.ok()?;
    Some((head[3], head[4], payload))
}

const PING: u8 = 6;
const ACK: u8 = 1;

async fn serve_with_keepalive() -> waypost_lbserver::server::Running {
    let mut options = options();
    options.keepalive = waypost_lbserver::port::Keepalive {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(300),
    };
    let config = waypost_lbserver::config::Config::parse(
        "listen = \"127.0.0.1:0\"\n[[service]]\nname = \"movies\"\nsource = \"127.0.0.1:1\"\n",
        "test.toml",
    )
    .unwrap();
    waypost_lbserver::server::start(config, options)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_client_that_never_answers_a_ping_is_disconnected() {
    let lb = serve_with_keepalive().await;
    let mut tcp = raw_http2(lb.listen).await;
    let mut pinged = false;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some((kind, flags, _)) = next_frame(&mut tcp).await {
            pinged |= kind == PING && flags & ACK == 0;
        }
    })
    .await;
    assert!(closed.is_ok(), "still connected after 10 s");
    assert!(pinged, "the server sent a PING first");
}

#[tokio::test]
async fn a_client_that_answers_its_pings_stays_connected() {
    use tokio::io::AsyncWriteExt;
    let lb = serve_with_keepalive().await;
    let mut tcp = raw_http2(lb.listen).await;
    let mut answered = 0;
    while answered < 5 {
        let (kind, flags, payload) =
            tokio::time::timeout(Duration::from_secs(10), next_frame(&mut tcp))
                .await
                .expect("a frame within 10 s")
                .expect("the server keeps the connection");
        if kind == PING && flags & ACK == 0 {
            let mut ack = vec![0, 0, 8, PING, ACK, 0, 0, 0, 0];
            ack.extend_from_slice(&payload);
            tcp.write_all(&ack).await.unwrap();
            answered += 1;
        }
    }
}
