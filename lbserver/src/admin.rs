//! The admin HTTP endpoint: `GET /healthz`, `GET /status` (JSON),
//! `GET /metrics` (Prometheus text), `POST /drain?service=S&backend=ADDR`
//! (with `&undo=true` to undo). Every GET route answers HEAD too; query
//! parameters are percent-decoded.
//!
//! Who may use it ([`Access`]):
//! - a request with an `Origin` header other than the admin's own
//!   (`http://<Host>`) is refused with 403, whatever else it carries — a
//!   web page elsewhere cannot drive the balancer through a browser;
//! - with `admin_token_file` set, mutations (`POST /drain`) need
//!   `Authorization: Bearer <token>` (401 otherwise, nothing changed), and
//!   so do reads when `admin_auth_reads = true`; `/healthz` stays open for
//!   load balancers' probes;
//! - with `[tls]` and `client_ca_file`, a client certificate from that CA
//!   (verified in the TLS handshake) stands in for the token; a client
//!   may still connect without one (to read, or to use the token).

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::sync::mpsc;

use crate::assign::token;
use crate::config::quote;
use crate::listener::{Connection, ConnectionInfo};
use crate::registry::Registry;
use crate::xds::ResourceType;
use crate::xds::clients::{ClientRecord, TypeCounters};
use crate::xds::encode::version_text;

/// Who may use the admin endpoint.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// The bearer token mutations need (`None`: none needed).
    pub token: Option<String>,
    /// Whether reads need the token too.
    pub auth_reads: bool,
    /// Whether client certificates are verified (`[tls]` with
    /// `client_ca_file`): one stands in for the token, and without a token
    /// mutations need one.
    pub client_certificates: bool,
    /// The listeners' TLS reloads, for `/metrics` (`None`: no TLS).
    pub tls: Option<Arc<waypost_balancer::tls::TlsStats>>,
}

/// The longest token a token file may hold.
const MAX_TOKEN_BYTES: u64 = 4096;

/// Reads an admin token file: its content without surrounding white
/// space; it must be 1 to 4096 bytes of visible ASCII.
pub fn read_token(path: &std::path::Path) -> Result<String, String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut raw = Vec::new();
    file.take(MAX_TOKEN_BYTES + 1)
        .read_to_end(&mut raw)
        .map_err(|e| format!("cannot read: {e}"))?;
    if raw.len() as u64 > MAX_TOKEN_BYTES {
        return Err(format!("longer than {MAX_TOKEN_BYTES} bytes"));
    }
    let text = String::from_utf8(raw).map_err(|_| "not UTF-8".to_owned())?;
    parse_token(&text)
}

/// An admin token from text (a file's, an environment variable's): the
/// text without surrounding white space, 1 or more bytes of visible ASCII.
pub fn parse_token(text: &str) -> Result<String, String> {
    let token = text.trim();
    if token.is_empty() {
        return Err("empty".into());
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be visible ASCII (no spaces or control characters)".into());
    }
    Ok(token.to_owned())
}

/// Compares in time independent of where the inputs first differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Access {
    /// Whether `request`'s connection has a verified client certificate,
    /// or the request carries the token, or neither is configured.
    fn authorized<B>(&self, request: &http::Request<B>, client: &ConnectionInfo) -> bool {
        if client.identity.is_some() {
            return true;
        }
        let Some(token) = &self.token else {
            return !self.client_certificates;
        };
        // The scheme is case-insensitive (RFC 9110); the token is not.
        request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
            .is_some_and(|v| same_secret(&v[7..], token.as_bytes()))
    }
}

/// Whether the request comes from another origin than the admin's own: a
/// browser sends `Origin` on cross-origin requests (and on same-origin
/// POSTs, where it matches `http://<Host>`).
fn foreign_origin<B>(request: &http::Request<B>) -> bool {
    let Some(origin) = request.headers().get(http::header::ORIGIN) else {
        return false;
    };
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok());
    match (origin.to_str().ok(), host) {
        (Some(origin), Some(host)) => {
            !(origin.strip_prefix("http://") == Some(host)
                || origin.strip_prefix("https://") == Some(host))
        }
        _ => true,
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, value);
    }
    response
}

/// How many xDS clients `/status` lists per service (it counts them all).
pub const MAX_XDS_CLIENTS_SHOWN: usize = 100;

/// One xDS client in `/status`: its node, the versions it ACKed per type
/// and its last NACK.
fn xds_client_json(record: &ClientRecord) -> serde_json::Value {
    let acked: std::collections::BTreeMap<&str, String> = ResourceType::ALL
        .iter()
        .filter_map(|t| Some((t.short(), version_text(record.acked(*t)?))))
        .collect();
    let last_nack = record.last_nack.as_deref().map(|(t, nack)| {
        json!({"type": t.short(), "kept_version": nack.version, "nonce": nack.nonce, "error": nack.message})
    });
    json!({
        "node_id": record.node_id, "user_agent": record.user_agent,
        "acked": acked, "last_nack": last_nack,
    })
}

/// The `/status` document.
pub fn status(registry: &Registry) -> serde_json::Value {
    let services: Vec<_> = registry
        .services()
        .iter()
        .map(|s| {
            let list = s.current();
            let backends: Vec<_> = s
                .views()
                .iter()
                .map(|b| {
                    json!({
                        "addr": b.addr.to_string(), "healthy": b.healthy, "draining": b.draining,
                        "weight": b.weight, "load": b.load,
                        "effective_weight": crate::assign::effective_weight(b.weight, b.load),
                        "token": token(&s.config.name, b.addr),
                    })
                })
                .collect();
            let (xds_clients, xds_total) = registry
                .xds_clients()
                .of_service(&s.config.name, MAX_XDS_CLIENTS_SHOWN);
            let xds_clients: Vec<_> = xds_clients.iter().map(xds_client_json).collect();
            json!({
                "name": s.config.name, "source": s.config.source, "backends": backends,
                "listed": list.backends, "list_version": list.version,
                "clients": s.streams.load(Ordering::Relaxed),
                "xds_clients": xds_clients, "xds_clients_total": xds_total,
                "xds_versions": ResourceType::ALL.map(|t| (t.short(), s.xds().get(t).version.to_string()))
                    .into_iter().collect::<std::collections::BTreeMap<_, _>>(),
                "observed_call_rate": s.observed_rate(), "drop_fraction": s.drop_fraction(),
            })
        })
        .collect();
    json!({ "services": services })
}

/// The `/metrics` text.
pub fn metrics(registry: &Registry) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, values: Vec<(String, u64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in values {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    };
    let per = |f: &dyn Fn(&crate::registry::Service) -> u64| -> Vec<(String, u64)> {
        registry
            .services()
            .iter()
            .map(|s| (format!("service=\"{}\"", escape(&s.config.name)), f(s)))
            .collect()
    };
    family(
        "waypost_lb_streams",
        "gauge",
        "Open BalanceLoad streams.",
        per(&|s| s.streams.load(Ordering::Relaxed)),
    );
    family(
        "waypost_lb_healthy_backends",
        "gauge",
        "Backends passing health checks.",
        per(&|s| s.views().iter().filter(|b| b.healthy).count() as u64),
    );
    family(
        "waypost_lb_listed_backends",
        "gauge",
        "Backends in the current server list.",
        per(&|s| s.current().backends as u64),
    );
    family(
        "waypost_lb_lists_sent_total",
        "counter",
        "Server lists sent to clients.",
        per(&|s| s.lists_sent.load(Ordering::Relaxed)),
    );
    family(
        "waypost_lb_client_calls_started_total",
        "counter",
        "Calls clients reported started.",
        per(&|s| s.stats.started.load(Ordering::Relaxed)),
    );
    family(
        "waypost_lb_client_calls_finished_total",
        "counter",
        "Calls clients reported finished.",
        per(&|s| s.stats.finished.load(Ordering::Relaxed)),
    );
    family(
        "waypost_lb_client_reports_total",
        "counter",
        "ClientStats reports received.",
        per(&|s| s.stats.reports.load(Ordering::Relaxed)),
    );
    family(
        "waypost_lb_observed_call_rate_milli",
        "gauge",
        "Calls per second clients report starting, times 1000.",
        per(&|s| (s.observed_rate() * 1000.0) as u64),
    );
    family(
        "waypost_lb_drop_fraction_percent",
        "gauge",
        "Share of list entries that are drops (configured or for overload), in percent.",
        per(&|s| (s.drop_fraction() * 100.0).round() as u64),
    );
    let drops: Vec<(String, u64)> = registry
        .services()
        .iter()
        .flat_map(|s| {
            let name = escape(&s.config.name);
            s.stats
                .drops
                .lock()
                .iter()
                .map(|(t, n)| (format!("service=\"{name}\",token=\"{}\"", escape(t)), *n))
                .collect::<Vec<_>>()
        })
        .collect();
    let clients = registry.xds_clients();
    family(
        "waypost_lb_ads_streams",
        "gauge",
        "Open ADS (xDS) streams.",
        vec![(String::new(), clients.streams() as u64)],
    );
    let per_type = |f: &dyn Fn(&TypeCounters) -> u64| -> Vec<(String, u64)> {
        ResourceType::ALL
            .iter()
            .map(|t| (format!("type=\"{}\"", t.short()), f(clients.counters(*t))))
            .collect()
    };
    family(
        "waypost_lb_ads_responses_total",
        "counter",
        "ADS responses sent, by resource type.",
        per_type(&|c| c.responses.load(Ordering::Relaxed)),
    );
    family(
        "waypost_lb_ads_acks_total",
        "counter",
        "ADS responses clients ACKed, by resource type.",
        per_type(&|c| c.acks.load(Ordering::Relaxed)),
    );
    family(
        "waypost_lb_ads_nacks_total",
        "counter",
        "ADS responses clients rejected (NACKed), by resource type.",
        per_type(&|c| c.nacks.load(Ordering::Relaxed)),
    );
    family(
        "waypost_lb_ads_rejected_streams_total",
        "counter",
        "ADS streams closed for a protocol error.",
        vec![(String::new(), clients.rejected.load(Ordering::Relaxed))],
    );
    family(
        "waypost_lb_client_drops_total",
        "counter",
        "Calls clients reported dropped, by token.",
        drops,
    );
    out
}

/// The listeners' TLS reload counters (nothing without TLS).
fn tls_metrics(stats: Option<&waypost_balancer::tls::TlsStats>) -> String {
    let Some(stats) = stats else {
        return String::new();
    };
    format!(
        "# HELP waypost_lb_tls_reloads_total Times changed [tls] files were put in force.\n\
         # TYPE waypost_lb_tls_reloads_total counter\n\
         waypost_lb_tls_reloads_total {}\n\
         # HELP waypost_lb_tls_reload_failures_total Times changed [tls] files could not be used (the last good material was kept).\n\
         # TYPE waypost_lb_tls_reload_failures_total counter\n\
         waypost_lb_tls_reload_failures_total {}\n",
        stats.reloads.load(Ordering::Relaxed),
        stats.reload_failures.load(Ordering::Relaxed),
    )
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The query's parameters, percent-decoded (`+` is a space).
fn query(uri: &http::Uri) -> Vec<(String, String)> {
    form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

async fn handle(
    registry: Registry,
    access: Arc<Access>,
    client: Arc<ConnectionInfo>,
    request: http::Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let head = request.method() == Method::HEAD;
    let mut response = route(&registry, &access, &client, &request);
    if head {
        *response.body_mut() = Full::new(Bytes::new());
    }
    Ok(response)
}

fn route<B>(
    registry: &Registry,
    access: &Access,
    client: &ConnectionInfo,
    request: &http::Request<B>,
) -> Response<Full<Bytes>> {
    let text = "text/plain; charset=utf-8";
    if foreign_origin(request) {
        return reply(
            StatusCode::FORBIDDEN,
            text,
            "requests from other origins are refused\n".into(),
        );
    }
    let method = match request.method() {
        &Method::HEAD => &Method::GET,
        other => other,
    };
    let path = request.uri().path();
    let unauthorized = || {
        let needs = match (&access.token, access.client_certificates) {
            (Some(_), true) => {
                "this needs Authorization: Bearer <admin token>, or a client certificate\n"
            }
            (None, true) => "this needs a client certificate\n",
            _ => "this needs Authorization: Bearer <admin token>\n",
        };
        let mut response = reply(StatusCode::UNAUTHORIZED, text, needs.into());
        response.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
        response
    };
    match (method, path) {
        (&Method::GET, "/healthz") => reply(StatusCode::OK, text, "ok\n".into()),
        (&Method::GET, "/status" | "/metrics")
            if access.auth_reads && !access.authorized(request, client) =>
        {
            unauthorized()
        }
        (&Method::GET, "/status") => reply(
            StatusCode::OK,
            "application/json",
            format!("{}\n", status(registry)),
        ),
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics(registry) + &tls_metrics(access.tls.as_deref()),
        ),
        (&Method::POST, "/drain") if !access.authorized(request, client) => unauthorized(),
        (&Method::POST, "/drain") => {
            if let Some(identity) = &client.identity {
                tracing::info!(client = ?identity.common_name, uri = %request.uri(), "drain by client certificate");
            }
            drain(registry, request.uri())
        }
        (_, "/healthz" | "/status" | "/metrics" | "/drain") => {
            let mut response = reply(
                StatusCode::METHOD_NOT_ALLOWED,
                text,
                "method not allowed\n".into(),
            );
            let allow = if path == "/drain" {
                "POST"
            } else {
                "GET, HEAD"
            };
            response
                .headers_mut()
                .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
            response
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            text,
            "not found; try /status, /metrics, /healthz or POST /drain\n".into(),
        ),
    }
}

/// `POST /drain?service=S&backend=ADDR[&undo=true]`.
fn drain(registry: &Registry, uri: &http::Uri) -> Response<Full<Bytes>> {
    let text = "text/plain; charset=utf-8";
    let params = query(uri);
    let get = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let undo = get("undo").is_some_and(|v| v == "true" || v == "1");
    match (
        get("service"),
        get("backend").and_then(|b| b.parse::<SocketAddr>().ok()),
    ) {
        (Some(name), Some(backend)) => match registry.find(name) {
            Some(service) if service.set_draining(backend, !undo) => reply(
                StatusCode::OK,
                "application/json",
                format!(
                    "{}\n",
                    json!({"service": name, "backend": backend.to_string(), "draining": !undo})
                ),
            ),
            Some(_) => reply(
                StatusCode::NOT_FOUND,
                text,
                format!("service {} has no backend {backend}\n", quote(name)),
            ),
            None => reply(
                StatusCode::NOT_FOUND,
                text,
                format!("no service {}\n", quote(name)),
            ),
        },
        _ => reply(
            StatusCode::BAD_REQUEST,
            text,
            "need service=NAME and backend=IP:PORT\n".into(),
        ),
    }
}

/// Serves the admin endpoint on the accepted `connections` until the task
/// is dropped: HTTP/1.1, one request per connection, whose headers must
/// arrive within `header_timeout`.
pub async fn serve(
    mut connections: mpsc::Receiver<Connection>,
    registry: Registry,
    access: Access,
    header_timeout: std::time::Duration,
) {
    let access = Arc::new(access);
    let mut open = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = connections.recv() => {
                let Some(stream) = accepted else { return };
                let registry = registry.clone();
                let access = access.clone();
                let client = Arc::new(stream.info().clone());
                open.spawn(async move {
                    let service = hyper::service::service_fn(move |request| handle(registry.clone(), access.clone(), client.clone(), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(header_timeout)
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = open.join_next(), if !open.is_empty() => {}
        }
    }
}
