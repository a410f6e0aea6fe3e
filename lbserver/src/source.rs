//! Where a service's backends come from: a static `ip:port,…` list, or any
//! waypost resolver target (`dns:///…`, `etcd:///…`, …), followed as it
//! changes. Endpoint metadata `{"weight": N}` sets a backend's weight
//! (capacity) and `{"load": X}` (0 to 1) the load it reports; backends
//! refresh the latter by updating their registration. `region`, `zone`
//! (strings) and `priority` (0 first) place it for xDS clients.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;
use waypost_resolver::{Address, Resolution, ResolveError, ResolverRegistry, ResolverState};

use crate::assign::{Announced, MAX_PLACEMENT_BYTES, MAX_PRIORITY, Placement};
use crate::probe::ProbeOptions;
use crate::registry::Service;

/// Parses a static list, or `None` if `source` is not one.
pub fn static_list(source: &str) -> Option<Vec<SocketAddr>> {
    source.split(',').map(|s| s.trim().parse().ok()).collect()
}

fn backends(state: &ResolverState) -> Vec<Announced> {
    let mut out = Vec::new();
    for endpoint in &state.endpoints {
        let metadata = endpoint.metadata.as_ref();
        let weight = metadata
            .and_then(|m| m.get("weight"))
            .and_then(|w| w.as_u64())
            .map(|w| w.clamp(1, 100) as u32)
            .unwrap_or(1);
        let load = metadata
            .and_then(|m| m.get("load"))
            .and_then(|l| l.as_f64())
            .filter(|l| l.is_finite())
            .map(|l| l.clamp(0.0, 1.0))
            .unwrap_or(0.0);
        let text = |key: &str| {
            metadata
                .and_then(|m| m.get(key))
                .and_then(|v| v.as_str())
                .filter(|v| v.len() <= MAX_PLACEMENT_BYTES)
                .unwrap_or_default()
                .to_owned()
        };
        let placement = Placement {
            region: text("region"),
            zone: text("zone"),
            priority: metadata
                .and_then(|m| m.get("priority"))
                .and_then(|p| p.as_u64())
                .map(|p| p.min(u64::from(MAX_PRIORITY)) as u32)
                .unwrap_or(0),
        };
        for address in &endpoint.addresses {
            match address {
                Address::Tcp(addr) => out.push(Announced {
                    addr: *addr,
                    weight,
                    load,
                    placement: placement.clone(),
                }),
                other => tracing::warn!(%other, "grpclb lists need IP addresses; skipping"),
            }
        }
    }
    out
}

/// A service's source, opened: a static list, or a resolver already built
/// (so a target that cannot resolve is an error before the server starts).
#[derive(Debug)]
pub enum Source {
    /// Fixed backends.
    Static(Vec<SocketAddr>),
    /// Followed as it changes.
    Resolved(Resolution),
}

/// Opens `source` with `resolvers`.
pub fn open(source: &str, resolvers: &ResolverRegistry) -> Result<Source, ResolveError> {
    match static_list(source) {
        Some(list) => Ok(Source::Static(list)),
        None => resolvers.resolve(source).map(Source::Resolved),
    }
}

/// Starts following `service`'s opened source; the task ends when
/// dropped/aborted.
pub fn follow(service: Arc<Service>, source: Source, probe: ProbeOptions) -> JoinHandle<()> {
    let probe_fn = move |service: Arc<Service>, addr: SocketAddr| {
        crate::probe::spawn(service, addr, probe.clone())
    };
    let mut resolution = match source {
        Source::Static(list) => {
            service.set_backends(list.into_iter().map(Announced::plain).collect(), &probe_fn);
            service.mark_answered();
            // Nothing to follow; keep a task so every service has one.
            return tokio::spawn(std::future::pending());
        }
        Source::Resolved(resolution) => resolution,
    };
    tokio::spawn(async move {
        loop {
            let update = resolution.first().await;
            if let Some(error) = &update.error {
                tracing::warn!(service = %service.config.name, %error, "source error; keeping the last backends");
            }
            if let Some(state) = &update.state {
                service.set_backends(backends(state), &probe_fn);
                service.mark_answered();
            }
            if resolution.changed().await.is_err() {
                return;
            }
            // `first` returns the update `changed` just marked seen.
        }
    })
}
