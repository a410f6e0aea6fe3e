//! `waypost serve` over TLS (its certificate names only `lb.test`, the SRV
//! target clients are given) balancing TLS grpcio backends (certificates
//! for the service's name), probing them over TLS: shared by the grpclb and
//! interop tests.
#![allow(dead_code, unreachable_pub)]

use waypost_integration::grpcio::GrpcioBackends;
use waypost_integration::pki::{PemFiles, TestPki};
use waypost_lbserver::config::Config;
use waypost_lbserver::server::{Running, ServeOptions, start};

/// The balancer, its backends and the material they were given.
pub struct TlsBalanced {
    pub pki: TestPki,
    pub backends: GrpcioBackends,
    pub lb: Running,
    /// The CA and the balancer's identity, as files.
    pub files: PemFiles,
}

/// Starts grpcio TLS backends named `names` and a balancer serving them as
/// `service`, with `service_extra` (more lines of the service's table).
pub async fn tls_balanced(
    service: &str,
    names: &[&str],
    service_extra: &str,
    options: ServeOptions,
) -> TlsBalanced {
    let pki = TestPki::new("waypost TLS CA");
    let backends = GrpcioBackends::start_tls(names, &pki.server(&[service]), None)
        .await
        .unwrap();
    let files = pki.files(&pki.server(&["lb.test"])).unwrap();
    let source: Vec<String> = backends.addrs().iter().map(|a| a.to_string()).collect();
    let text = format!(
        "listen = \"127.0.0.1:0\"\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n[[service]]\nname = \"{service}\"\nsource = \"{}\"\nhealth_service = \"\"\nbackend_tls = true\nbackend_ca_file = \"{}\"\nbackend_server_name = \"{service}\"\n{service_extra}",
        files.cert.display(),
        files.key.display(),
        source.join(","),
        files.ca.display(),
    );
    let lb = start(Config::parse(&text, "tls.toml").unwrap(), options)
        .await
        .unwrap();
    TlsBalanced {
        pki,
        backends,
        lb,
        files,
    }
}
