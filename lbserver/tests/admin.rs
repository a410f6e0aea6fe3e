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

#[tokio::test]
async fn readyz_waits_until_every_source_has_answered() {
    use std::net::Ipv4Addr;
    use waypost_integration::dns::DnsServer;
    let dns = DnsServer::start("test.").await.unwrap();
    dns.set_a("movies.test.", &[Ipv4Addr::LOCALHOST], 1)
        .await
        .unwrap();
    dns.set_silent(true);
    let lb = serve(&format!(
        "admin = \"127.0.0.1:0\"\n{SERVICE}[[service]]\nname = \"dns movies\"\nsource = \"dns://{}/movies.test:50051\"\n",
        dns.addr()
    ))
    .await;
    let admin = lb.admin.unwrap();
    // The static service answered at once; the DNS one waits for a server
    // that does not answer (its query times out after 5 s).
    let waiting = request(admin, "GET", "/readyz", "").await;
    assert_eq!(code(&waiting), 503, "{waiting}");
    assert!(waiting.contains("\"dns movies\""), "{waiting}");
    assert!(!waiting.contains("my movies"), "{waiting}");
    let status = request(admin, "GET", "/status", "").await;
    assert!(status.contains("\"ready\":false"), "{status}");
    assert_eq!(code(&request(admin, "HEAD", "/readyz", "").await), 503);

    dns.set_silent(false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let ready = loop {
        let answer = request(admin, "GET", "/readyz", "").await;
        if code(&answer) == 200 || tokio::time::Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(code(&ready), 200, "ready once DNS answers: {ready}");
    assert!(ready.ends_with("ready\n"), "{ready}");
    assert!(lb.registry.ready());
    dns.shutdown().await;
}

#[tokio::test]
async fn undrain_undoes_a_drain_and_bad_parameters_say_what_is_needed() {
    let (lb, _dir) = with_token(false).await;
    let admin = lb.admin.unwrap();
    assert_eq!(code(&request(admin, "POST", DRAIN, BEARER).await), 200);
    assert!(draining(&lb));
    let undrain = DRAIN.replace("/drain", "/undrain");
    assert_eq!(code(&request(admin, "POST", &undrain, "").await), 401);
    assert!(draining(&lb), "nothing changed without the token");
    let undone = request(admin, "POST", &undrain, BEARER).await;
    assert_eq!(code(&undone), 200, "{undone}");
    assert!(undone.contains("\"draining\":false"), "{undone}");
    assert!(!draining(&lb));

    let missing = request(admin, "POST", "/drain?service=my+movies", BEARER).await;
    assert_eq!(code(&missing), 400, "{missing}");
    assert!(
        missing.contains("need service=NAME and backend=IP:PORT"),
        "{missing}"
    );
    let unknown = request(
        admin,
        "POST",
        "/drain?service=nobody&backend=127.0.0.1:9",
        BEARER,
    )
    .await;
    assert_eq!(code(&unknown), 404, "{unknown}");
    let stranger = request(
        admin,
        "POST",
        "/drain?service=my+movies&backend=127.0.0.1:11",
        BEARER,
    )
    .await;
    assert_eq!(code(&stranger), 404, "{stranger}");
    // A body over the limit is refused before any handler runs.
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    let head = format!(
        "POST {DRAIN} HTTP/1.1\r\nHost: {admin}\r\n{BEARER}Content-Length: 100000\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut refused = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut refused))
        .await
        .expect("an answer within 10 s, without the body")
        .unwrap();
    assert_eq!(code(&refused), 413, "{refused}");
    assert!(!draining(&lb));
}

#[tokio::test]
async fn the_page_holds_no_data_and_forbids_framing_and_other_sites_scripts() {
    let (lb, _dir) = with_token(true).await;
    let admin = lb.admin.unwrap();
    // Open even when reads need the token: it holds no data, and asks
    // for the token when /status refuses it.
    let page = request(admin, "GET", "/", "").await;
    assert_eq!(code(&page), 200, "{page}");
    let lower = page.to_ascii_lowercase();
    assert!(lower.contains("content-type: text/html"), "{page}");
    assert!(lower.contains("frame-ancestors 'none'"), "{page}");
    assert!(lower.contains("connect-src 'self'"), "{page}");
    assert!(!page.contains("my movies"), "no data in the page itself");
    assert!(!lower.contains("src=\"http"), "no external assets");
    assert!(!lower.contains("href=\"http"), "no external assets");
    assert_eq!(code(&request(admin, "GET", "/status", "").await), 401);
}

#[tokio::test]
async fn metrics_parse_as_openmetrics_and_a_hostile_service_name_round_trips() {
    let python = waypost_integration::grpcio::python_with_grpcio().unwrap();
    // A name with a quote, a backslash and a line break.
    let lb = serve(
        "admin = \"127.0.0.1:0\"\n[[service]]\nname = \"we\\\"ird\\\\name\\nx\"\nsource = \"127.0.0.1:9\"\n",
    )
    .await;
    let admin = lb.admin.unwrap();
    let response = request(admin, "GET", "/metrics", "").await;
    assert_eq!(code(&response), 200);
    assert!(
        response
            .to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{response}"
    );
    let (_, text) = response.split_once("\r\n\r\n").unwrap();
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
families = []
for f in text_string_to_metric_families(sys.stdin.read()):
    families.append({"name": f.name, "type": f.type, "help": f.documentation,
                     "samples": [[s.name, s.labels, s.value] for s in f.samples]})
print(json.dumps(families))
"#;
    let mut child = std::process::Command::new(&python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "prometheus_client could not parse /metrics: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let families: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert!(families.len() >= 15, "{families:?}");
    for family in &families {
        let name = family["name"].as_str().unwrap();
        assert!(name.starts_with("waypost_lb_"), "{name}");
        assert!(
            !family["help"].as_str().unwrap().is_empty(),
            "{name} has HELP"
        );
        let kind = family["type"].as_str().unwrap();
        assert!(kind == "counter" || kind == "gauge", "{name}: {kind}");
        for sample in family["samples"].as_array().unwrap() {
            let sample_name = sample[0].as_str().unwrap();
            if kind == "counter" {
                assert_eq!(sample_name, format!("{name}_total"));
            }
        }
    }
    let streams = families
        .iter()
        .find(|f| f["name"] == "waypost_lb_backends")
        .expect("waypost_lb_backends");
    let healthy = streams["samples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s[1]["state"] == "healthy")
        .expect("a healthy sample");
    assert_eq!(
        healthy[1]["service"], "we\"ird\\name\nx",
        "the name came back unchanged: {healthy:?}"
    );
    assert_eq!(healthy[2], 1.0);
}
