//! `waypost serve` probing TLS backends (`backend_tls`): a backend whose
//! certificate the probe trusts is listed; one it cannot verify is not.

mod support;

use support::*;
use waypost_integration::pki::TestPki;
use waypost_integration::tls_backend::TlsBackend;
use waypost_lbserver::config::Config;
use waypost_lbserver::server::{ServeError, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_speak_tls_and_list_only_backends_they_can_verify() {
    let pki = TestPki::new("backend CA");
    let good = TlsBackend::start("good", &pki.server(&["movies.internal"]), None)
        .await
        .unwrap();
    let stranger = TestPki::new("someone else's CA");
    let bad = TlsBackend::start("bad", &stranger.server(&["movies.internal"]), None)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pki.ca_pem()).unwrap();
    // Whole-server health over TLS.
    let lb = serve(&format!(
        "[[service]]\nname = \"movies\"\nsource = \"{},{}\"\nhealth_service = \"\"\nbackend_tls = true\nbackend_ca_file = \"{}\"\nbackend_server_name = \"movies.internal\"\n",
        good.addr(),
        bad.addr(),
        ca.display()
    ))
    .await;
    let mut stream = open(lb.listen, initial("movies")).await.unwrap();
    next(&mut stream).await;
    let list = list_where(&mut stream, |s| !s.is_empty()).await;
    assert_eq!(ports(&list), [good.addr().port()]);
    let service = lb.registry.find("movies").unwrap();
    let bad_view = service
        .views()
        .into_iter()
        .find(|b| b.addr == bad.addr())
        .unwrap();
    assert!(
        !bad_view.healthy,
        "a backend the probe cannot verify is not healthy"
    );
}

#[tokio::test]
async fn unusable_backend_tls_material_is_a_config_error_at_start() {
    let text = "listen = \"127.0.0.1:0\"\n[[service]]\nname = \"movies\"\nsource = \"127.0.0.1:1\"\nhealth_service = \"\"\nbackend_tls = true\nbackend_ca_file = \"/nonexistent/ca.pem\"\n";
    let error = start(Config::parse(text, "t.toml").unwrap(), options())
        .await
        .unwrap_err();
    assert!(matches!(error, ServeError::BackendTls { .. }), "{error}");
    assert!(error.is_config());
    // And backend_ca_file without backend_tls is refused by the parser.
    let text =
        "[[service]]\nname = \"movies\"\nsource = \"127.0.0.1:1\"\nbackend_ca_file = \"/x\"\n";
    let error = Config::parse(text, "t.toml").unwrap_err();
    assert_eq!(error.field, "service[0].backend_ca_file");
}
