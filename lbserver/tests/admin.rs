//! The admin endpoint under careless and hostile clients: a token for
//! mutations, a guard against other origins (a browser's cross-site
//! request), percent-decoded parameters, HEAD, and connections that send
//! nothing.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use waypost_lbserver::server::Running;

/// One request with extra header lines; returns the whole response.
async fn request(addr: std::net::SocketAddr, method: &str, path: &str, headers: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    out
}

fn code(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {response:?}"))
}

const SERVICE: &str = "[[service]]\nname = \"my movies\"\nsource = \"127.0.0.1:9,127.0.0.1:10\"\n";

async fn with_token(reads: bool) -> (Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let lb = serve(&format!(
        "admin = \"127.0.0.1:0\"\nadmin_token_file = \"{}\"\nadmin_auth_reads = {reads}\n{SERVICE}",
        token.display()
    ))
    .await;
    (lb, dir)
}

fn draining(lb: &Running) -> bool {
    lb.registry.find("my movies").unwrap().views()[0].draining
}

const DRAIN: &str = "/drain?service=my+movies&backend=127.0.0.1%3A9";
const BEARER: &str = "Authorization: Bearer s3cret-token\r\n";

#[tokio::test]
async fn mutations_need_the_token_and_reads_stay_open() {
    let (lb, _dir) = with_token(false).await;
    let admin = lb.admin.unwrap();

    let refused = request(admin, "POST", DRAIN, "").await;
    assert_eq!(code(&refused), 401, "{refused}");
    assert!(
        refused.contains("WWW-Authenticate: Bearer")
            || refused.contains("www-authenticate: Bearer")
    );
    assert!(!draining(&lb), "nothing changed");
    let wrong = request(
        admin,
        "POST",
        DRAIN,
        "Authorization: Bearer s3cret-tokeN\r\n",
    )
    .await;
    assert_eq!(code(&wrong), 401);
    assert!(!draining(&lb));

    // The scheme is case-insensitive.
    let lower = request(
        admin,
        "POST",
        DRAIN,
        "Authorization: bearer s3cret-token\r\n",
    )
    .await;
    assert_eq!(code(&lower), 200, "{lower}");
    let undo = request(admin, "POST", &format!("{DRAIN}&undo=true"), BEARER).await;
    assert_eq!(code(&undo), 200, "{undo}");
    assert!(!draining(&lb));

    let ok = request(admin, "POST", DRAIN, BEARER).await;
    assert_eq!(code(&ok), 200, "{ok}");
    assert!(
        draining(&lb),
        "the percent-decoded service and backend were found"
    );

    assert_eq!(code(&request(admin, "GET", "/status", "").await), 200);
    assert_eq!(code(&request(admin, "GET", "/metrics", "").await), 200);
    assert_eq!(code(&request(admin, "GET", "/healthz", "").await), 200);
}

#[tokio::test]
async fn with_admin_auth_reads_reads_need_the_token_too_but_healthz_does_not() {
    let (lb, _dir) = with_token(true).await;
    let admin = lb.admin.unwrap();
    assert_eq!(code(&request(admin, "GET", "/status", "").await), 401);
    assert_eq!(code(&request(admin, "GET", "/metrics", "").await), 401);
    assert_eq!(code(&request(admin, "GET", "/status", BEARER).await), 200);
    assert_eq!(code(&request(admin, "GET", "/healthz", "").await), 200);
}

#[tokio::test]
async fn a_cross_origin_request_is_refused_token_or_not() {
    let lb = serve(&format!("admin = \"127.0.0.1:0\"\n{SERVICE}")).await;
    let admin = lb.admin.unwrap();
    // What a page on another site makes a browser send: a "simple" request.
    let evil = "Origin: http://evil.example\r\nContent-Type: text/plain\r\n";
    let refused = request(admin, "POST", DRAIN, evil).await;
    assert_eq!(code(&refused), 403, "{refused}");
    assert!(!draining(&lb));
    assert_eq!(code(&request(admin, "GET", "/status", evil).await), 403);

    // The admin's own origin (a page it serves) is fine.
    let own = format!("Origin: http://{admin}\r\n");
    assert_eq!(code(&request(admin, "POST", DRAIN, &own).await), 200);
    assert!(draining(&lb));

    let (lb, _dir) = with_token(false).await;
    let admin = lb.admin.unwrap();
    let refused = request(admin, "POST", DRAIN, &format!("{evil}{BEARER}")).await;
    assert_eq!(code(&refused), 403);
    assert!(!draining(&lb));
}

#[tokio::test]
async fn head_answers_every_get_route_without_a_body() {
    let lb = serve(&format!("admin = \"127.0.0.1:0\"\n{SERVICE}")).await;
    let admin = lb.admin.unwrap();
    for path in ["/healthz", "/status", "/metrics"] {
        let response = request(admin, "HEAD", path, "").await;
        assert_eq!(code(&response), 200, "{path}: {response}");
        let (_, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(body.is_empty(), "{path}: {body:?}");
    }
    let wrong = request(admin, "GET", "/drain", "").await;
    assert_eq!(code(&wrong), 405);
}

/// Reads until the server closes the connection; how long that took.
async fn closed_after(addr: std::net::SocketAddr) -> Duration {
    let started = tokio::time::Instant::now();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => continue, // e.g. the server's HTTP/2 SETTINGS
            Err(_) => panic!("{addr}: a silent connection was still open after 30 s"),
        }
    }
}

#[tokio::test]
async fn silent_connections_are_closed_on_both_ports() {
    let lb = serve(&format!(
        "admin = \"127.0.0.1:0\"\nhandshake_timeout = \"1s\"\n{SERVICE}"
    ))
    .await;
    let (balance, admin) = tokio::join!(closed_after(lb.listen), closed_after(lb.admin.unwrap()));
    for took in [balance, admin] {
        assert!(took >= Duration::from_millis(900), "{took:?}");
        assert!(took < Duration::from_secs(10), "{took:?}");
    }
}
