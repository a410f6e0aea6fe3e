//! `waypost-bench`: waypost's benchmarks. Each subcommand prints progress on
//! stderr and its result as a final JSON line on stdout; BENCHMARKS.md
//! records the results with the commands that made them.
//!
//! ```text
//! cargo run --release -p waypost-bench -- etcd --changes 1000
//! ```

mod etcd;
mod stats;

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
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match Cli::parse().command {
        Command::Etcd(args) => etcd::run(args).await,
    }
}
