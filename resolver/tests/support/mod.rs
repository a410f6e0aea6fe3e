//! Helpers shared by the resolver's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use waypost_resolver::{Resolution, ResolverUpdate};

/// Waits (at most 20 s) for an update that satisfies `pred`, starting with
/// the current one.
pub async fn wait_for(
    resolution: &mut Resolution,
    pred: impl Fn(&ResolverUpdate) -> bool,
) -> ResolverUpdate {
    let current = resolution.current();
    if pred(&current) {
        return current;
    }
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let update = resolution
                .changed()
                .await
                .expect("the resolver keeps running");
            if pred(&update) {
                return update;
            }
        }
    })
    .await
    .expect("the expected update arrived within 20 s")
}

/// The update's addresses, sorted.
pub fn addrs(update: &ResolverUpdate) -> Vec<String> {
    let mut v: Vec<String> = update
        .state
        .as_ref()
        .map(|s| s.addresses().map(ToString::to_string).collect())
        .unwrap_or_default();
    v.sort();
    v
}
