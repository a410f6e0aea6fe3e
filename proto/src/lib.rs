//! Protocol buffers for waypost, with checked-in generated code.
//!
//! - [`grpc::lb::v1`]: the grpclb look-aside balancing protocol
//!   (`grpc.lb.v1.LoadBalancer/BalanceLoad`), wire-compatible with grpc-go,
//!   grpc C-core and grpc-java.
//! - [`grpc::health::v1`]: the standard health checking protocol, plus
//!   [`health::HealthReporter`], a ready-made server for it.
//! - [`xds::data::orca::v3`] and [`xds::service::orca::v3`]: ORCA backend
//!   load reports (gRFC A51), plus [`orca`], a ready-made server side for
//!   them.
//! - [`movies::v1`]: the example service used by waypost's examples, tests and
//!   benchmarks.
//!
//! The code under `src/generated/` is produced by `cargo run -p
//! waypost-codegen` (protox, no system `protoc`); the test command fails when
//! regenerating would change it.
//!
//! ```
//! use waypost_proto::movies::v1::{Movie, MovieId};
//!
//! let movie = Movie { mid: 7, movie_name: "Alien".into(), ..Default::default() };
//! assert_eq!(MovieId { mid: movie.mid }.mid, 7);
//! ```

pub mod codec;
pub mod health;
pub mod orca;

/// The `grpc.*` packages.
pub mod grpc {
    /// The `grpc.lb.*` packages.
    pub mod lb {
        /// `grpc.lb.v1`: the look-aside load balancing protocol.
        #[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
        pub mod v1 {
            include!("generated/grpc.lb.v1.rs");
            /// Encoded descriptors of this package, for server reflection.
            pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("generated/grpc.lb.v1.bin");
        }
    }
    /// The `grpc.health.*` packages.
    pub mod health {
        /// `grpc.health.v1`: the health checking protocol.
        #[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
        pub mod v1 {
            include!("generated/grpc.health.v1.rs");
            /// Encoded descriptors of this package, for server reflection.
            pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("generated/grpc.health.v1.bin");
        }
    }
}

/// The `bulk.*` packages.
pub mod bulk {
    /// `bulk.v1`: bytes over gRPC streaming (benchmark baseline) and the
    /// file-transfer example's control service.
    #[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
    pub mod v1 {
        include!("generated/bulk.v1.rs");
        /// Encoded descriptors of this package, for server reflection.
        pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("generated/bulk.v1.bin");
    }
}

/// The `movies.*` packages.
pub mod movies {
    /// `movies.v1`: the example service from the gRPC talk.
    #[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
    pub mod v1 {
        include!("generated/movies.v1.rs");
        /// Encoded descriptors of this package, for server reflection.
        pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("generated/movies.v1.bin");
    }
}

/// The `xds.*` packages (CNCF xDS API) that gRPC uses outside xDS itself.
pub mod xds {
    /// `xds.data.*`.
    pub mod data {
        /// `xds.data.orca.*`.
        pub mod orca {
            /// `xds.data.orca.v3`: the ORCA load report.
            #[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
            pub mod v3 {
                include!("generated/xds.data.orca.v3.rs");
                /// Encoded descriptors of this package, for server reflection.
                pub const FILE_DESCRIPTOR_SET: &[u8] =
                    include_bytes!("generated/xds.data.orca.v3.bin");
            }
        }
    }
    /// `xds.service.*`.
    pub mod service {
        /// `xds.service.orca.*`.
        pub mod orca {
            /// `xds.service.orca.v3`: ORCA's out-of-band reporting service.
            #[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
            pub mod v3 {
                include!("generated/xds.service.orca.v3.rs");
                /// Encoded descriptors of this package, for server reflection.
                pub const FILE_DESCRIPTOR_SET: &[u8] =
                    include_bytes!("generated/xds.service.orca.v3.bin");
            }
        }
    }
}
