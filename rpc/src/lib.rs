//! waypost-rpc: gRPC control calls and framed bulk-data connections on one
//! endpoint, modeled on zrepl's rpc package and sturdier than it.
//!
//! Every connection starts with a version handshake and a mux label. A
//! `control` connection is HTTP/2 served by tonic (unary and streaming
//! calls, metadata, deadlines, interceptors); a `data` connection carries
//! length-prefixed frames that move a byte stream from an
//! [`AsyncRead`](tokio::io::AsyncRead) in one process to a [`Body`] in the
//! other at close to raw TCP speed, with heartbeats, an idle timeout,
//! cancellation both ways and error trailers. The wire format is specified
//! in `PROTOCOL.md` beside this crate.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use waypost_rpc::{Client, DataRequest, DataResponse, Listener, Server};
//!
//! // A server whose data handler counts what it receives.
//! let running = Server::builder()
//!     .data(|request: DataRequest| async move {
//!         let n = request.body.collect(1 << 20).await?.len();
//!         Ok(DataResponse::new(n.to_string()))
//!     })
//!     .serve(Listener::tcp("127.0.0.1:0").await?)?;
//! let target = format!("{}", running.address()); // "127.0.0.1:port"
//!
//! let client = Client::builder(format!("ipv4:{target}")).build()?;
//! let response = client.call("count", "", Some(Box::new(&b"hello"[..]))).await?;
//! assert_eq!(&response.message[..], b"5");
//! # Ok(()) }
//! ```

mod body;
mod client;
mod conn;
mod error;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod handshake;
mod pool;
mod server;
mod transport;

pub use body::{Body, Source};
pub use client::{Client, ClientBuilder, DATA_PICK_PATH, Response};
pub use conn::ConnSettings;
pub use error::Error;
pub use handshake::HandshakeConfig;
pub use server::{
    DataHandler, DataRequest, DataResponse, HandlerFuture, Running, Server, ServerBuilder,
    ServerStats,
};
pub use transport::{ALPN, Listener, PeerIdentity, PeerInfo};
pub use waypost_balancer::tls::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The label of gRPC control connections.
pub const LABEL_CONTROL: &str = "control";
/// The label of bulk-data connections.
pub const LABEL_DATA: &str = "data";
/// The handshake extension that turns on CRC-32 checksums of bodies.
pub const CHECKSUM_EXTENSION: &str = "crc32";
