//! Health probes: one waypost channel per backend, with client-side health
//! checking (grpc.health.v1 Watch) and keepalive PINGs, over TLS for a
//! service with `backend_tls`. The channel is READY
//! exactly when the backend is connected and SERVING, so the probe is the
//! balancer crate's subchannel and health code, reused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use waypost_balancer::{Channel, ClientTlsConfig, ConnectivityState, KeepaliveConfig};
use waypost_resolver::backoff::BackoffConfig;

use crate::registry::Service;

/// How backends are probed.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// Reconnect backoff (capped low so a returning backend is seen soon).
    pub backoff: BackoffConfig,
    /// Keepalive, so a hung backend is noticed.
    pub keepalive: KeepaliveConfig,
    /// The longest one connection attempt may take.
    pub connect_timeout: Duration,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            backoff: BackoffConfig {
                base: Duration::from_secs(1),
                multiplier: 1.6,
                jitter: 0.2,
                max: Duration::from_secs(10),
            },
            keepalive: KeepaliveConfig {
                time: Some(Duration::from_secs(10)),
                timeout: Duration::from_secs(5),
                permit_without_stream: true,
            },
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Starts probing `addr` for `service`, or returns `None` (healthy without
/// probing) when the service has no `health_service`.
pub fn spawn(
    service: Arc<Service>,
    addr: SocketAddr,
    options: ProbeOptions,
) -> Option<JoinHandle<()>> {
    let health_service = service.config.health_service.clone()?;
    let target = match addr {
        SocketAddr::V4(_) => format!("ipv4:{addr}"),
        SocketAddr::V6(_) => format!("ipv6:{addr}"),
    };
    Some(tokio::spawn(async move {
        let config = serde_json::json!({"healthCheckConfig": {"serviceName": health_service}});
        let mut builder = Channel::builder(target)
            .default_service_config(config)
            .connect_backoff(options.backoff)
            .keepalive(options.keepalive)
            .min_connect_timeout(options.connect_timeout);
        if let Some(tls) = &service.config.backend_tls {
            builder = builder.tls(client_tls(tls));
        }
        let channel = match builder.build() {
            Ok(channel) => channel,
            Err(error) => {
                tracing::error!(%addr, %error, "cannot probe");
                return;
            }
        };
        let mut state = channel.state();
        loop {
            service.set_health(addr, state == ConnectivityState::Ready);
            state = channel.wait_for_state_change(state).await;
            if state == ConnectivityState::Shutdown {
                return;
            }
        }
    }))
}

/// The probes' TLS settings for a service's backends.
pub(crate) fn client_tls(tls: &crate::config::BackendTls) -> ClientTlsConfig {
    let config = match &tls.ca_file {
        Some(ca) => ClientTlsConfig::from_files(ca, None),
        None => ClientTlsConfig::new().with_native_roots(),
    };
    match &tls.server_name {
        Some(name) => config.domain_name(name),
        None => config,
    }
}
