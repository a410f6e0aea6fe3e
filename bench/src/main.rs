//! `waypost-bench`: waypost's benchmarks. Each subcommand prints progress on
//! stderr and its result as a final JSON line on stdout; BENCHMARKS.md
//! records the results with the commands that made them.
//!
//! ```text
//! cargo run --release -p waypost-bench -- etcd --changes 1000
//! cargo run --release -p waypost-bench -- rpc
//! cargo run --release -p waypost-bench -- rpc --tls
//! cargo run --release -p waypost-bench -- dataconn
//! cargo run --release -p waypost-bench -- zerocopy
//! cargo run --release -p waypost-bench -- skew
//! cargo run --release -p waypost-bench -- xds
//! cargo build --release -p waypost-lbserver --bin waypost && cargo run --release -p waypost-bench -- xds-server
//! cargo build --release -p waypost-lbserver --bin waypost && cargo run --release -p waypost-bench -- lbserver
//! ```

mod dataconn;
mod etcd;
mod lbserver;
mod rpc;
mod skew;
mod stats;
mod xds;
mod xds_server;
mod zerocopy;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "waypost-bench", about = "waypost's benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Latency from an etcd registration change to the resolver update.
    Etcd(etcd::EtcdArgs),
    /// Client CPU per call and throughput: waypost vs tonic vs bare hyper.
    Rpc(rpc::RpcArgs),
    /// One rpc variant making sequential calls (for counting instructions).
    RpcCalls(rpc::CallsArgs),
    /// Latency with one slow backend: round_robin vs least_request vs tonic.
    Skew(skew::SkewArgs),
    /// BalanceLoad streams one `waypost serve` holds, its RSS, and fan-out time.
    Lbserver(lbserver::LbArgs),
    /// One bulk stream: waypost-rpc data connection vs raw TCP vs tonic streaming.
    Dataconn(dataconn::DataconnArgs),
    /// (internal) One `dataconn` transfer in its own process.
    #[command(hide = true)]
    DataconnChild(dataconn::DataconnChildArgs),
    /// Linux's zero-copy calls (sendfile, splice) against a read/write copy.
    Zerocopy(zerocopy::ZerocopyArgs),
    /// (internal) One `zerocopy` transfer in its own process.
    #[command(hide = true)]
    ZerocopyChild(zerocopy::ZerocopyChildArgs),
    /// (internal) The plain tonic BalanceLoad server `lbserver` compares with.
    #[command(hide = true)]
    LbserverTonic,
    /// An `xds:///` channel following EDS pushes, and its pick cost.
    Xds(xds::XdsArgs),
    /// ADS streams one `waypost serve` holds, its RSS, and EDS fan-out time.
    XdsServer(xds_server::XdsServerArgs),
    /// (internal) The backends `rpc` runs in a child process.
    #[command(hide = true)]
    RpcBackends(rpc::BackendArgs),
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match Cli::parse().command {
        Command::Etcd(args) => etcd::run(args).await,
        Command::Rpc(args) => rpc::run(args).await,
        Command::RpcCalls(args) => rpc::calls(args).await,
        Command::Skew(args) => skew::run(args).await,
        Command::Lbserver(args) => lbserver::run(args).await,
        Command::LbserverTonic => lbserver::tonic_child().await,
        Command::RpcBackends(args) => rpc::backends(args).await,
        Command::Dataconn(args) => dataconn::run(args).await,
        Command::DataconnChild(args) => dataconn::child(args).await,
        Command::Zerocopy(args) => zerocopy::run(args).await,
        Command::ZerocopyChild(args) => zerocopy::child(args),
        Command::Xds(args) => xds::run(args).await,
        Command::XdsServer(args) => xds_server::run(args).await,
    }
}
