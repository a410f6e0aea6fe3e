//! Load balancing for waypost: subchannels with real connectivity states,
//! balancing policies, lock-free pickers, and the [`Channel`] that tonic
//! clients call through.
//!
//! ```no_run
//! use waypost_balancer::Channel;
//! use waypost_proto::movies::v1::{MovieId, movies_service_client::MoviesServiceClient};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // Three backends, round-robin, found in DNS.
//! let channel = Channel::builder("dns:///movies.internal:50051")
//!     .default_service_config(serde_json::json!({"loadBalancingConfig": [{"round_robin": {}}]}))
//!     .build()?;
//! let mut client = MoviesServiceClient::new(channel.clone());
//! let movie = client.get_movie(MovieId { mid: 1 }).await?.into_inner();
//! println!("{} (channel is {})", movie.movie_name, channel.state());
//! # Ok(()) }
//! ```

pub mod channel;
mod connectivity;
pub mod credentials;
mod health;
pub mod metrics;
pub mod picker;
pub mod policy;
mod sequence;
pub mod service_config;
pub mod subchannel;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;
mod transport;
#[cfg(feature = "xds")]
pub mod xds;

pub use channel::{
    Channel, ChannelBody, ChannelBuilder, ChannelError, ChannelStats, ResponseFuture, WaitForReady,
    parse_grpc_timeout,
};
pub use connectivity::{ConnectivityState, aggregate};
pub use policy::{Helper, Policy, PolicyBuilder, PolicyRegistry};
pub use subchannel::{
    BoxedIo, ConnectOptions, Connection, DialFuture, DialedIo, Dialer, KeepaliveConfig,
    SubchannelHandle, SubchannelId, SubchannelState, dial,
};
pub use tls::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig, TlsError};
