//! The admin HTTP endpoint: `GET /healthz`, `GET /status` (JSON),
//! `GET /metrics` (Prometheus text), `POST /drain?service=S&backend=ADDR`
//! (with `&undo=true` to undo).

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use crate::assign::token;
use crate::registry::Registry;

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
            json!({
                "name": s.config.name, "source": s.config.source, "backends": backends,
                "listed": list.backends, "list_version": list.version,
                "clients": s.streams.load(Ordering::Relaxed),
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
    family(
        "waypost_lb_client_drops_total",
        "counter",
        "Calls clients reported dropped, by token.",
        drops,
    );
    out
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn query(uri: &http::Uri) -> Vec<(String, String)> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.replace("%3A", ":").replace("%3a", ":")))
        })
        .collect()
}

async fn handle(
    registry: Registry,
    request: http::Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = "text/plain; charset=utf-8";
    Ok(match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => reply(StatusCode::OK, text, "ok\n".into()),
        (&Method::GET, "/status") => reply(
            StatusCode::OK,
            "application/json",
            format!("{}\n", status(&registry)),
        ),
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics(&registry),
        ),
        (&Method::POST, "/drain") => {
            let params = query(request.uri());
            let get = |k: &str| {
                params
                    .iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.clone())
            };
            let undo = get("undo").is_some_and(|v| v == "true" || v == "1");
            match (
                get("service"),
                get("backend").and_then(|b| b.parse::<SocketAddr>().ok()),
            ) {
                (Some(name), Some(backend)) => match registry.find(&name) {
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
                        format!("service {name:?} has no backend {backend}\n"),
                    ),
                    None => reply(
                        StatusCode::NOT_FOUND,
                        text,
                        format!("no service {name:?}\n"),
                    ),
                },
                _ => reply(
                    StatusCode::BAD_REQUEST,
                    text,
                    "need service=NAME and backend=IP:PORT\n".into(),
                ),
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            text,
            "not found; try /status, /metrics, /healthz or POST /drain\n".into(),
        ),
    })
}

/// Serves the admin endpoint on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, registry: Registry) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let registry = registry.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request| handle(registry.clone(), request));
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}
