//! A tonic server with tonic's own TLS (`ServerTlsConfig`), serving
//! `movies.v1.MoviesService/GetMovie` and `grpc.health.v1` (SERVING), that
//! records the common name of each caller's client certificate.
//!
//! ```no_run
//! # async fn demo() -> Result<(), waypost_integration::HarnessError> {
//! use waypost_integration::pki::TestPki;
//! use waypost_integration::tls_backend::TlsBackend;
//!
//! let pki = TestPki::new("test CA");
//! // mTLS: clients need a certificate from the same CA.
//! let backend = TlsBackend::start("t0", &pki.server(&["movies.test"]), Some(pki.ca_pem())).await?;
//! println!("{}", backend.addr());
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};
use waypost_proto::movies::v1::movies_service_server::{MoviesService, MoviesServiceServer};
use waypost_proto::movies::v1::{Movie, MovieId, MovieQuery};

use crate::HarnessError;
use crate::pki::{Pem, common_name};

/// A running TLS backend; stopped when dropped.
#[derive(Debug)]
pub struct TlsBackend {
    addr: SocketAddr,
    callers: Arc<Mutex<Vec<Option<String>>>>,
    authorizations: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl TlsBackend {
    /// Serves as `name` on a free port of 127.0.0.1 with `identity`; with
    /// `client_ca`, callers must present a certificate signed by it.
    pub async fn start(
        name: &str,
        identity: &Pem,
        client_ca: Option<&str>,
    ) -> Result<TlsBackend, HarnessError> {
        Self::start_recycling(name, identity, client_ca, None).await
    }

    /// [`TlsBackend::start`], also closing every connection gracefully
    /// after `max_connection_age` (tonic's), so clients keep reconnecting.
    pub async fn start_recycling(
        name: &str,
        identity: &Pem,
        client_ca: Option<&str>,
        max_connection_age: Option<std::time::Duration>,
    ) -> Result<TlsBackend, HarnessError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem));
        if let Some(ca) = client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(ca));
        }
        let builder = server_builder(max_connection_age)
            .tls_config(tls)
            .map_err(|e| HarnessError::Peer(format!("tonic TLS: {e}")))?;
        // Closed connections linger until the client closes too (see
        // `crate::linger`).
        let incoming = TcpListenerStream::new(listener).map(|accepted| {
            accepted.map(|stream| {
                // (without TCP_NODELAY, small responses wait for delayed ACKs)
                let _ = stream.set_nodelay(true);
                crate::linger::LingeringStream::new(stream)
            })
        });
        Ok(Self::spawn(name, addr, builder, incoming))
    }

    /// Serves as `name` on connections whose TLS the caller terminates
    /// (e.g. with waypost's own rotating `TlsAcceptor`; for callers'
    /// certificate names the connections must be `tokio_rustls` server
    /// streams), `addr` being where they arrive. `max_connection_age` as
    /// in [`TlsBackend::start_recycling`].
    pub fn serve<IO>(
        name: &str,
        addr: SocketAddr,
        incoming: impl tokio_stream::Stream<Item = std::io::Result<IO>> + Send + 'static,
        max_connection_age: Option<std::time::Duration>,
    ) -> TlsBackend
    where
        IO: ServerIo,
    {
        Self::spawn(name, addr, server_builder(max_connection_age), incoming)
    }

    fn spawn<IO>(
        name: &str,
        addr: SocketAddr,
        mut builder: Server,
        incoming: impl tokio_stream::Stream<Item = std::io::Result<IO>> + Send + 'static,
    ) -> TlsBackend
    where
        IO: ServerIo,
    {
        let callers = Arc::new(Mutex::new(Vec::new()));
        let authorizations = Arc::new(Mutex::new(Vec::new()));
        let service = MoviesServiceServer::new(Recorder {
            name: name.to_owned(),
            callers: callers.clone(),
            authorizations: authorizations.clone(),
        });
        let (health, health_service) = waypost_proto::health::HealthReporter::new();
        health.set(
            "movies.v1.MoviesService",
            waypost_proto::grpc::health::v1::health_check_response::ServingStatus::Serving,
        );
        let server = builder.add_service(service).add_service(health_service);
        let task = tokio::spawn(async move {
            let _ = server.serve_with_incoming(incoming).await;
        });
        TlsBackend {
            addr,
            callers,
            authorizations,
            task,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `authorization` header of each call that carried one, in order.
    pub fn authorizations(&self) -> Vec<String> {
        self.authorizations.lock().clone()
    }

    /// The client certificate common name of each call served (`None` for
    /// a caller without one), in order.
    pub fn callers(&self) -> Vec<Option<String>> {
        self.callers.lock().clone()
    }
}

/// A connection a tonic server can serve.
pub trait ServerIo:
    tonic::transport::server::Connected
    + tokio::io::AsyncRead
    + tokio::io::AsyncWrite
    + Send
    + Unpin
    + 'static
{
}

impl<T> ServerIo for T where
    T: tonic::transport::server::Connected
        + tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + Send
        + Unpin
        + 'static
{
}

/// A tonic server builder closing connections after `max_connection_age`.
fn server_builder(max_connection_age: Option<std::time::Duration>) -> Server {
    let builder = Server::builder();
    match max_connection_age {
        Some(age) => builder.max_connection_age(age),
        None => builder,
    }
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Recorder {
    name: String,
    callers: Arc<Mutex<Vec<Option<String>>>>,
    authorizations: Arc<Mutex<Vec<String>>>,
}

type MovieStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<Movie, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl MoviesService for Recorder {
    async fn get_movie(&self, request: Request<MovieId>) -> Result<Response<Movie>, Status> {
        let caller = request
            .peer_certs()
            .and_then(|certs| certs.first().and_then(|c| common_name(c)));
        self.callers.lock().push(caller);
        if let Some(value) = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
        {
            self.authorizations.lock().push(value.to_owned());
        }
        Ok(Response::new(Movie {
            mid: request.get_ref().mid,
            served_by: self.name.clone(),
            ..Movie::default()
        }))
    }

    type QueryMoviesStream = MovieStream;

    async fn query_movies(
        &self,
        _request: Request<MovieQuery>,
    ) -> Result<Response<Self::QueryMoviesStream>, Status> {
        Err(Status::unimplemented("GetMovie only"))
    }
}
