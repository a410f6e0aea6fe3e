//! The admin port: an [axum] router served over hyper's HTTP/1.1 on the
//! listener's connections (connection limits, TLS and handshake timeout
//! are the listener's).
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the status page (HTML, no external assets; polls `/status`) |
//! | `GET /healthz` | `ok` while the process serves |
//! | `GET /readyz` | 200 once every service's source has answered, else 503 |
//! | `GET /status` | the registry as JSON ([`status::status`]) |
//! | `GET /metrics` | OpenMetrics text ([`crate::metrics`]) |
//! | `POST /drain?service=S&backend=ADDR` | drain a backend (`&undo=true` undoes) |
//! | `POST /undrain?service=S&backend=ADDR` | undo a drain |
//!
//! Every `GET` answers `HEAD`; queries are percent-decoded by serde; other
//! methods get 405 with `Allow`. Who may do what is [`access`]'s
//! middleware; every request must finish within [`REQUEST_TIMEOUT`] (408)
//! and carry at most [`MAX_BODY_BYTES`] of body (413).
//!
//! ```
//! # async fn demo() {
//! use tower::ServiceExt;
//! use waypost_lbserver::admin::{AdminState, Access, router};
//! use waypost_lbserver::registry::Registry;
//!
//! let app = router(AdminState::new(Registry::new(&[]), Access::default(), None));
//! let request = http::Request::get("/readyz").body(axum::body::Body::empty()).unwrap();
//! let response = app.oneshot(request).await.unwrap();
//! assert_eq!(response.status(), 200); // no services: nothing to wait for
//! # }
//! ```

pub mod access;
pub mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use http::StatusCode;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::sync::mpsc;
use tower::ServiceExt as _;

pub use access::{Access, parse_token, read_token};
pub use status::{MAX_XDS_CLIENTS_SHOWN, status};

use crate::config::quote;
use crate::listener::Connection;
use crate::metrics::ServerMetrics;
use crate::registry::Registry;

/// How long a request may take, body included, before it is answered 408.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest request body the admin port accepts (no route reads one).
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The status page: one HTML file, its script and style inline.
const PAGE: &str = include_str!("page.html");

/// What the admin routes share.
#[derive(Debug, Clone)]
pub struct AdminState {
    registry: Registry,
    access: Arc<Access>,
    metrics: Arc<ServerMetrics>,
}

impl AdminState {
    /// The admin port's view of `registry`, guarded by `access`, with its
    /// metrics (`None`: a registry of the balancer's own metrics).
    pub fn new(registry: Registry, access: Access, metrics: Option<ServerMetrics>) -> AdminState {
        let metrics =
            metrics.unwrap_or_else(|| ServerMetrics::new(registry.clone(), access.tls.clone()));
        AdminState {
            registry,
            access: Arc::new(access),
            metrics: Arc::new(metrics),
        }
    }
}

/// The admin routes with their middleware.
pub fn router(state: AdminState) -> Router {
    let open = Router::new()
        .route("/", get(page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz));
    let reads = Router::new()
        .route("/status", get(status_json))
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::read_guard,
        ));
    let writes = Router::new()
        .route("/drain", post(drain))
        .route("/undrain", post(undrain))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::write_guard,
        ));
    open.merge(reads)
        .merge(writes)
        .fallback(not_found)
        .layer(axum::middleware::from_fn(access::origin_guard))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            MAX_BODY_BYTES,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .with_state(state)
}

async fn page() -> Response {
    (
        [
            // The page's own script and style only; it may talk to this
            // origin only; no other site may frame it (its buttons drain).
            (
                http::header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            ),
            (http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (http::header::CACHE_CONTROL, "no-store"),
        ],
        Html(PAGE),
    )
        .into_response()
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let waiting: Vec<String> = state
        .registry
        .services()
        .iter()
        .filter(|s| !s.answered())
        .map(|s| quote(&s.config.name))
        .collect();
    if waiting.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "waiting for the sources of {} service(s): {}\n",
                waiting.len(),
                waiting.join(", ")
            ),
        )
            .into_response()
    }
}

async fn status_json(State(state): State<AdminState>) -> Response {
    axum::Json(status(&state.registry)).into_response()
}

async fn metrics(State(state): State<AdminState>) -> Response {
    (
        [(http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        "not found; try / (the status page), /status, /metrics, /healthz, /readyz, POST /drain or POST /undrain\n",
    )
        .into_response()
}

/// The query of `POST /drain` and `POST /undrain`.
#[derive(Debug, serde::Deserialize)]
struct DrainQuery {
    service: String,
    backend: SocketAddr,
    #[serde(default)]
    undo: bool,
}

async fn drain(
    State(state): State<AdminState>,
    query: Result<Query<DrainQuery>, QueryRejection>,
) -> Response {
    set_draining(&state.registry, query, true)
}

async fn undrain(
    State(state): State<AdminState>,
    query: Result<Query<DrainQuery>, QueryRejection>,
) -> Response {
    set_draining(&state.registry, query, false)
}

fn set_draining(
    registry: &Registry,
    query: Result<Query<DrainQuery>, QueryRejection>,
    drain: bool,
) -> Response {
    let query = match query {
        Ok(Query(query)) => query,
        Err(rejection) => {
            return (
                StatusCode::BAD_REQUEST,
                format!(
                    "need service=NAME and backend=IP:PORT ({})\n",
                    rejection.body_text()
                ),
            )
                .into_response();
        }
    };
    let draining = drain && !query.undo;
    match registry.find(&query.service) {
        Some(service) if service.set_draining(query.backend, draining) => axum::Json(json!({
            "service": query.service, "backend": query.backend.to_string(), "draining": draining,
        }))
        .into_response(),
        Some(_) => (
            StatusCode::NOT_FOUND,
            format!(
                "service {} has no backend {}\n",
                quote(&query.service),
                query.backend
            ),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            format!("no service {}\n", quote(&query.service)),
        )
            .into_response(),
    }
}

/// Serves the admin port on the accepted `connections` until the task is
/// dropped: HTTP/1.1, one request per connection, whose headers must
/// arrive within `header_timeout`. Each request carries its connection's
/// [`ConnectionInfo`](crate::listener::ConnectionInfo) (TLS identity) as
/// an extension, for [`access`].
pub async fn serve(
    mut connections: mpsc::Receiver<Connection>,
    state: AdminState,
    header_timeout: Duration,
) {
    let app = router(state);
    let mut open = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = connections.recv() => {
                let Some(stream) = accepted else { return };
                let app = app.clone();
                let client = Arc::new(stream.info().clone());
                open.spawn(async move {
                    let service = hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
                        request.extensions_mut().insert(client.clone());
                        app.clone().oneshot(request.map(axum::body::Body::new))
                    });
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
