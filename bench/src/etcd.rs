//! `waypost-bench etcd`: how long an endpoint change in etcd takes to reach
//! a waypost `etcd:///` resolver.
//!
//! Starts a real etcd on loopback (the test harness's), resolves
//! `etcd:///bench`, then makes `--changes` changes one at a time,
//! alternating a Go-format registration put and its delete, and measures
//! from the moment the put or delete is sent to the moment the resolver's
//! consumer sees the new endpoint list. Prints
//! `{"changes":N,"p50_ms":..,"p99_ms":..,"max_ms":..}` last.

use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;
use waypost_integration::etcd::EtcdServer;
use waypost_resolver::etcd::{EtcdResolverBuilder, encode_value};
use waypost_resolver::{ResolverRegistry, ResolverUpdate};

use crate::stats::{ms, percentile};

/// Arguments of `waypost-bench etcd`.
#[derive(Debug, clap::Args)]
pub(crate) struct EtcdArgs {
    /// How many changes to measure (at least 1,000 for the recorded figure).
    #[arg(long, default_value_t = 1000)]
    changes: usize,
    /// Unmeasured changes first.
    #[arg(long, default_value_t = 50)]
    warmup: usize,
}

fn endpoint_count(update: &ResolverUpdate) -> usize {
    update
        .state
        .as_ref()
        .map(|s| s.endpoints.len())
        .unwrap_or(0)
}

pub(crate) async fn run(args: EtcdArgs) -> Result<(), Box<dyn std::error::Error>> {
    let etcd = EtcdServer::start().await?;
    let client = waypost_resolver::etcd::connect(&[etcd.addr()]).await?;
    let registry = ResolverRegistry::new();
    registry.register(EtcdResolverBuilder::new(client.clone()));
    let mut resolution = registry.resolve("etcd:///bench")?;
    resolution.first().await;

    let mut writer = client.clone();
    let key = "bench/127.0.0.1:9000";
    let value = encode_value("127.0.0.1:9000", None);
    let mut samples = Vec::with_capacity(args.changes);
    let per_change_limit = Duration::from_secs(10);
    for i in 0..args.warmup + args.changes {
        let adding = i % 2 == 0;
        let started = Instant::now();
        if adding {
            writer.put(key, value.as_str(), None).await?;
        } else {
            writer.delete(key, None).await?;
        }
        let want = usize::from(adding);
        tokio::time::timeout(per_change_limit, async {
            while endpoint_count(&resolution.current()) != want {
                resolution
                    .changed()
                    .await
                    .map_err(|_| "the resolver ended")?;
            }
            Ok::<_, &str>(())
        })
        .await
        .map_err(|_| format!("change {i} did not arrive within {per_change_limit:?}"))??;
        if i >= args.warmup {
            samples.push(started.elapsed());
        }
    }

    let p50 = percentile(&mut samples, 50.0);
    let p99 = percentile(&mut samples, 99.0);
    let max = percentile(&mut samples, 100.0);
    eprintln!(
        "etcd change -> resolver update over {} changes: p50 {p50:?}, p99 {p99:?}, max {max:?}",
        samples.len()
    );
    println!(
        "{}",
        json!({ "changes": samples.len(), "p50_ms": ms(p50), "p99_ms": ms(p99), "max_ms": ms(max), "machine": crate::stats::machine() })
    );
    Ok(())
}
