//! Assignment: the server list a service's clients receive, as a pure
//! function of its backends.
//!
//! Backends that are unhealthy or draining are left out. The rest appear in
//! a stable order (by address), so every replica of the balancer hands out
//! the same list. `weighted` repeats a backend in proportion to its
//! *spare* capacity: its weight (capacity) times one minus the load it
//! reports ([`effective_weight`]); with a configured capacity per weight
//! unit, the call rate clients report in ClientStats beyond the fleet's
//! spare capacity becomes drops ([`overload_drop_fraction`]).
//! `subset` gives each client its own `k` backends by deterministic
//! subsetting ([`subset`]).
//! A drop fraction `f` adds drop entries so that `f` of all entries are
//! drops, spread evenly through the list. Tokens are stable: derived from
//! the service and the address.

use std::net::{IpAddr, SocketAddr};

use waypost_proto::grpc::lb::v1::Server;

use crate::config::ListPolicy;

/// The token of drop entries (clients report drops under it).
pub const DROP_TOKEN: &str = "drop";

/// A backend as assignment sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendView {
    /// Its address.
    pub addr: SocketAddr,
    /// Whether it passes health checks.
    pub healthy: bool,
    /// Whether it is being drained (kept out of new lists).
    pub draining: bool,
    /// Its weight (capacity) for the `weighted` policy (at least 1).
    pub weight: u32,
    /// The load it reports, in `[0, 1]` (0 = idle).
    pub load: f64,
    /// Where it runs (xDS localities and priorities; grpclb ignores it).
    pub placement: Placement,
}

/// Where a backend runs, from its endpoint metadata `region`, `zone` and
/// `priority`: xDS clients get one locality per region and zone, and fail
/// over from priority 0 to 1 and on. Static and DNS sources give every
/// backend the default (no region, no zone, priority 0).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Placement {
    /// Its region (at most [`MAX_PLACEMENT_BYTES`]).
    pub region: String,
    /// Its zone (at most [`MAX_PLACEMENT_BYTES`]).
    pub zone: String,
    /// Its priority: 0 is used first (at most [`MAX_PRIORITY`]).
    pub priority: u32,
}

/// The longest region or zone kept from metadata (longer ones are ignored).
pub const MAX_PLACEMENT_BYTES: usize = 128;

/// The highest priority kept from metadata (higher ones become this).
pub const MAX_PRIORITY: u32 = 15;

/// A backend as its source announces it.
#[derive(Debug, Clone, PartialEq)]
pub struct Announced {
    /// Its address.
    pub addr: SocketAddr,
    /// Its weight (capacity), 1 to 100.
    pub weight: u32,
    /// The load it reports, in `[0, 1]`.
    pub load: f64,
    /// Where it runs.
    pub placement: Placement,
}

impl Announced {
    /// A backend with weight 1, no load and the default placement.
    pub fn plain(addr: SocketAddr) -> Announced {
        Announced {
            addr,
            weight: 1,
            load: 0.0,
            placement: Placement::default(),
        }
    }
}

/// A backend's entries in a `weighted` list: its capacity scaled by what
/// is left of it (`weight × (1 − load)`, rounded), at least 1 — a busy
/// backend gets less new work, never none (health decides that).
pub fn effective_weight(weight: u32, load: f64) -> u32 {
    let load = if load.is_finite() {
        load.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let spare = f64::from(weight.clamp(1, 100)) * (1.0 - load);
    (spare.round() as u32).clamp(1, 100)
}

/// The share of calls to drop so the fleet is not overloaded: with
/// `capacity_per_weight` calls/s per weight unit, the listed backends can
/// take `Σ weight × capacity_per_weight × (1 − load)` more calls/s; when
/// clients report starting `observed_rate` calls/s beyond that, the excess
/// share is dropped (at most 90 %).
pub fn overload_drop_fraction(
    backends: &[BackendView],
    capacity_per_weight: f64,
    observed_rate: f64,
) -> f64 {
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if !positive(capacity_per_weight) || !positive(observed_rate) {
        return 0.0;
    }
    let spare: f64 = backends
        .iter()
        .filter(|b| b.healthy && !b.draining)
        .map(|b| {
            let load = if b.load.is_finite() {
                b.load.clamp(0.0, 1.0)
            } else {
                0.0
            };
            f64::from(b.weight.clamp(1, 100)) * capacity_per_weight * (1.0 - load)
        })
        .sum();
    if observed_rate <= spare {
        return 0.0;
    }
    (1.0 - spare / observed_rate).clamp(0.0, 0.9)
}

/// A stable load-balance token for `addr` in `service` (16 hex digits).
pub fn token(service: &str, addr: SocketAddr) -> String {
    let hash = stable_hash(service.bytes().chain([0]).chain(addr.to_string().bytes()));
    format!("{hash:016x}")
}

/// FNV-1a of `bytes`: the same in every process and version (unlike
/// `DefaultHasher`), so replicas of the balancer derive the same tokens and
/// xDS versions from the same content.
pub fn stable_hash(bytes: impl IntoIterator<Item = u8>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn server(service: &str, addr: SocketAddr) -> Server {
    let ip_address = match addr.ip() {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    Server {
        ip_address,
        port: i32::from(addr.port()),
        load_balance_token: token(service, addr),
        drop: false,
    }
}

/// The server list for `service`.
pub fn assign(
    service: &str,
    backends: &[BackendView],
    policy: ListPolicy,
    drop_fraction: f64,
) -> Vec<Server> {
    let mut usable: Vec<&BackendView> = backends
        .iter()
        .filter(|b| b.healthy && !b.draining)
        .collect();
    usable.sort_by_key(|b| b.addr);
    let mut list: Vec<Server> = Vec::new();
    match policy {
        ListPolicy::RoundRobin | ListPolicy::Subset | ListPolicy::RingHash => {
            list.extend(usable.iter().map(|b| server(service, b.addr)))
        }
        ListPolicy::Weighted => {
            // Interleave by rounds so heavy backends are spread, not clumped.
            let max = usable
                .iter()
                .map(|b| effective_weight(b.weight, b.load))
                .max()
                .unwrap_or(0);
            for round in 0..max {
                for b in &usable {
                    if effective_weight(b.weight, b.load) > round {
                        list.push(server(service, b.addr));
                    }
                }
            }
        }
    }
    with_drops(list, drop_fraction)
}

/// Adds drop entries so that `drop_fraction` of all entries are drops,
/// spread evenly. An empty list stays empty.
pub fn with_drops(mut list: Vec<Server>, drop_fraction: f64) -> Vec<Server> {
    let fraction = drop_fraction.clamp(0.0, 0.99);
    // No backends is an empty list ("no backends": clients wait or fail
    // with UNAVAILABLE), not a drop-only one ("shed everything").
    if fraction > 0.0 && !list.is_empty() {
        let backends = list.len();
        let drops = ((fraction * backends as f64) / (1.0 - fraction))
            .round()
            .max(1.0) as usize;
        let total = backends + drops;
        let mut spread = Vec::with_capacity(total);
        let mut from_list = list.into_iter();
        // Entry i is a drop when the running drop count crosses a whole number.
        for i in 0..total {
            let due = ((i + 1) * drops) / total > (i * drops) / total;
            match (due, from_list.next()) {
                (true, next) => {
                    spread.push(Server {
                        drop: true,
                        load_balance_token: DROP_TOKEN.into(),
                        ..Default::default()
                    });
                    if let Some(s) = next {
                        spread.push(s);
                    }
                }
                (false, Some(s)) => spread.push(s),
                (false, None) => {}
            }
        }
        spread.extend(from_list);
        list = spread;
    }
    list
}

/// SplitMix64: a tiny seeded generator, stable across versions and
/// processes, so every replica computes the same subsets.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Deterministic subsetting: the `k` backends of client number `client`
/// (numbered from 0 per service). Clients come in rounds of `n / k`; each
/// round shuffles the backends with its own seed and hands out disjoint
/// slices, so within a round every backend serves exactly one client, and
/// over many clients load stays even. With `k >= n` every client gets all.
pub fn subset(backends: &[Server], k: usize, client: u64) -> Vec<Server> {
    let n = backends.len();
    if k == 0 || k >= n {
        return backends.to_vec();
    }
    let per_round = (n / k) as u64;
    let round = client / per_round;
    let slot = (client % per_round) as usize;
    let mut order: Vec<usize> = (0..n).collect();
    let mut state = round;
    for i in (1..n).rev() {
        let j = (splitmix(&mut state) % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order[slot * k..slot * k + k]
        .iter()
        .map(|&i| backends[i].clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(port: u16, healthy: bool, draining: bool, weight: u32) -> BackendView {
        BackendView {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            healthy,
            draining,
            weight,
            load: 0.0,
            placement: Placement::default(),
        }
    }

    #[test]
    fn only_healthy_undrained_backends_in_address_order() {
        let list = assign(
            "s",
            &[
                b(3, true, false, 1),
                b(1, true, false, 1),
                b(2, false, false, 1),
                b(4, true, true, 1),
            ],
            ListPolicy::RoundRobin,
            0.0,
        );
        let ports: Vec<i32> = list.iter().map(|s| s.port).collect();
        assert_eq!(ports, vec![1, 3]);
        assert!(
            list.iter()
                .all(|s| s.ip_address == vec![127, 0, 0, 1] && !s.drop)
        );
        assert_eq!(
            list[0].load_balance_token,
            token("s", SocketAddr::from(([127, 0, 0, 1], 1)))
        );
    }

    #[test]
    fn ipv6_addresses_are_sixteen_bytes() {
        let v6 = BackendView {
            addr: "[::1]:5".parse().unwrap(),
            healthy: true,
            draining: false,
            weight: 1,
            load: 0.0,
            placement: Placement::default(),
        };
        let list = assign("s", &[v6], ListPolicy::RoundRobin, 0.0);
        assert_eq!(list[0].ip_address.len(), 16);
        assert_eq!(list[0].port, 5);
    }

    #[test]
    fn tokens_are_stable_unique_and_short() {
        let a = token("s", "127.0.0.1:1".parse().unwrap());
        assert_eq!(a, token("s", "127.0.0.1:1".parse().unwrap()));
        assert_ne!(a, token("s", "127.0.0.1:2".parse().unwrap()));
        assert_ne!(a, token("t", "127.0.0.1:1".parse().unwrap()));
        assert!(a.len() < 50);
    }

    #[test]
    fn drops_make_up_the_fraction_and_are_spread() {
        let backends: Vec<_> = (1..=6).map(|p| b(p, true, false, 1)).collect();
        let list = assign("s", &backends, ListPolicy::RoundRobin, 0.25);
        let drops = list.iter().filter(|s| s.drop).count();
        assert_eq!((list.len(), drops), (8, 2));
        // Not adjacent: spread through the list.
        let positions: Vec<usize> = list
            .iter()
            .enumerate()
            .filter(|(_, s)| s.drop)
            .map(|(i, _)| i)
            .collect();
        assert!(positions[1] - positions[0] >= 3, "{positions:?}");
        assert!(
            list.iter()
                .filter(|s| s.drop)
                .all(|s| s.load_balance_token == DROP_TOKEN)
        );
    }

    #[test]
    fn subsets_are_disjoint_within_a_round_and_even_over_many_clients() {
        let backends: Vec<_> = (1..=6).map(|p| b(p, true, false, 1)).collect();
        let list = assign("s", &backends, ListPolicy::Subset, 0.0);
        let ports = |v: &[Server]| -> Vec<i32> { v.iter().map(|s| s.port).collect() };
        // One round (clients 0, 1, 2): every backend exactly once.
        let mut seen: Vec<i32> = (0..3).flat_map(|c| ports(&subset(&list, 2, c))).collect();
        seen.sort();
        assert_eq!(seen, vec![1, 2, 3, 4, 5, 6]);
        // Many clients: each backend serves the same number.
        let mut counts = std::collections::BTreeMap::new();
        for c in 0..300 {
            for p in ports(&subset(&list, 2, c)) {
                *counts.entry(p).or_insert(0) += 1;
            }
        }
        assert!(counts.values().all(|n| *n == 100), "{counts:?}");
        // Deterministic, and k >= n means everything.
        assert_eq!(subset(&list, 2, 7), subset(&list, 2, 7));
        assert_eq!(subset(&list, 6, 3).len(), 6);
    }

    #[test]
    fn weighted_repeats_in_proportion() {
        let list = assign(
            "s",
            &[b(1, true, false, 3), b(2, true, false, 1)],
            ListPolicy::Weighted,
            0.0,
        );
        let ports: Vec<i32> = list.iter().map(|s| s.port).collect();
        assert_eq!(ports, vec![1, 2, 1, 1]);
    }

    #[test]
    fn reported_load_scales_weights_down_but_not_to_zero() {
        assert_eq!(effective_weight(4, 0.0), 4);
        assert_eq!(effective_weight(4, 0.5), 2);
        assert_eq!(effective_weight(4, 0.9), 1);
        assert_eq!(effective_weight(4, 1.0), 1);
        assert_eq!(effective_weight(4, -3.0), 4);
        assert_eq!(effective_weight(4, f64::NAN), 4);
        let mut busy = b(1, true, false, 4);
        busy.load = 0.75;
        let idle = b(2, true, false, 4);
        let list = assign("s", &[busy, idle], ListPolicy::Weighted, 0.0);
        let count = |port: i32| list.iter().filter(|s| s.port == port).count();
        assert_eq!((count(1), count(2)), (1, 4));
    }

    #[test]
    fn reported_call_rate_beyond_spare_capacity_becomes_drops() {
        let mut half = b(1, true, false, 2);
        half.load = 0.5;
        let views = [half, b(2, true, false, 1), b(3, false, false, 10)];
        // Spare: 2×10×0.5 + 1×10 = 20 calls/s (the unhealthy one counts not).
        assert_eq!(overload_drop_fraction(&views, 10.0, 15.0), 0.0);
        assert_eq!(overload_drop_fraction(&views, 10.0, 20.0), 0.0);
        assert!((overload_drop_fraction(&views, 10.0, 40.0) - 0.5).abs() < 1e-9);
        assert_eq!(overload_drop_fraction(&views, 10.0, 1e9), 0.9);
        assert_eq!(overload_drop_fraction(&views, 0.0, 40.0), 0.0);
        assert_eq!(overload_drop_fraction(&views, 10.0, f64::NAN), 0.0);
    }

    #[test]
    fn no_backends_is_an_empty_list_even_with_drops() {
        assert!(with_drops(Vec::new(), 0.25).is_empty());
        assert!(assign("s", &[b(1, false, false, 1)], ListPolicy::RoundRobin, 0.5).is_empty());
    }
}
