//! The `/status` document: per service its source, backends (health,
//! drain, weight, load, token, locality), grpclb streams, xDS clients with
//! their ACKed versions, call rate and drop fraction.

use std::sync::atomic::Ordering;

use serde_json::json;

use crate::assign::token;
use crate::registry::Registry;
use crate::xds::ResourceType;
use crate::xds::clients::ClientRecord;
use crate::xds::encode::version_text;

/// How many xDS clients `/status` lists per service (it counts them all).
pub const MAX_XDS_CLIENTS_SHOWN: usize = 100;

/// One xDS client in `/status`: its node, the versions it ACKed per type
/// and its last NACK.
fn xds_client_json(record: &ClientRecord) -> serde_json::Value {
    let acked: std::collections::BTreeMap<&str, String> = ResourceType::ALL
        .iter()
        .filter_map(|t| Some((t.short(), version_text(record.acked(*t)?))))
        .collect();
    let last_nack = record.last_nack.as_deref().map(|(t, nack)| {
        json!({"type": t.short(), "kept_version": nack.version, "nonce": nack.nonce, "error": nack.message})
    });
    json!({
        "node_id": record.node_id, "user_agent": record.user_agent,
        "acked": acked, "last_nack": last_nack,
    })
}

/// The `/status` document.
pub fn status(registry: &Registry) -> serde_json::Value {
    let services: Vec<_> = registry
        .services()
        .iter()
        .map(|s| {
            let list = s.current();
            let backends: Vec<_> = s
                .views()
                .iter()
                .map(|b| {
                    json!({
                        "addr": b.addr.to_string(), "healthy": b.healthy, "draining": b.draining,
                        "weight": b.weight, "load": b.load,
                        "effective_weight": crate::assign::effective_weight(b.weight, b.load),
                        "token": token(&s.config.name, b.addr),
                        "region": b.placement.region, "zone": b.placement.zone,
                        "priority": b.placement.priority,
                    })
                })
                .collect();
            let (xds_clients, xds_total) = registry
                .xds_clients()
                .of_service(&s.config.name, MAX_XDS_CLIENTS_SHOWN);
            let xds_clients: Vec<_> = xds_clients.iter().map(xds_client_json).collect();
            json!({
                "name": s.config.name, "source": s.config.source, "answered": s.answered(), "backends": backends,
                "listed": list.backends, "list_version": list.version,
                "clients": s.streams.load(Ordering::Relaxed),
                "xds_clients": xds_clients, "xds_clients_total": xds_total,
                "xds_versions": ResourceType::ALL.map(|t| (t.short(), s.xds().get(t).version.to_string()))
                    .into_iter().collect::<std::collections::BTreeMap<_, _>>(),
                "observed_call_rate": s.observed_rate(), "drop_fraction": s.drop_fraction(),
            })
        })
        .collect();
    json!({ "ready": registry.ready(), "services": services })
}
