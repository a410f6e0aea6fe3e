//! The BalanceLoad stream to the look-aside balancer.
//!
//! Connects through a waypost channel (pick_first over the balancer
//! addresses), sends `initial_request{name}`, forwards server lists and
//! fallback responses to the policy, and reports ClientStats at the
//! interval the balancer asked for (skipping an all-zero report after an
//! all-zero report). A broken stream is reopened with connection backoff —
//! at once if it had completed its initial exchange.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use waypost_proto::grpc::lb::v1::load_balance_request::LoadBalanceRequestType;
use waypost_proto::grpc::lb::v1::load_balance_response::LoadBalanceResponseType;
use waypost_proto::grpc::lb::v1::load_balancer_client::LoadBalancerClient;
use waypost_proto::grpc::lb::v1::{InitialLoadBalanceRequest, LoadBalanceRequest, Server};
use waypost_resolver::backoff::{Backoff, BackoffConfig, seeded_rng};
use waypost_resolver::{
    BalancerAddress, Endpoint, ManualResolver, ResolverRegistry, ResolverState,
};

use super::stats::{GrpclbStats, is_zero};
use crate::policy::PolicyEvents;

/// What the stream tells the policy.
#[derive(Debug, Clone)]
pub(crate) enum StreamEvent {
    /// A new server list.
    List(Vec<Server>),
    /// The balancer asked clients to use their fallback backends.
    Fallback,
    /// The stream broke (or could not be opened); whether it had
    /// completed its initial exchange.
    Lost {
        /// It had received the initial response.
        established: bool,
    },
}

fn to_duration(d: &prost_types::Duration) -> Option<Duration> {
    let secs = u64::try_from(d.seconds).ok()?;
    let nanos = u32::try_from(d.nanos).ok()?;
    let d = Duration::new(secs, nanos);
    (!d.is_zero()).then_some(d)
}

/// Dials each balancer over TLS verified for its own name (the SRV
/// record's target, as gRPC does), or the service name for balancers given
/// without one; a `domain_name` meant for the backends does not apply.
#[derive(Debug)]
struct BalancerDialer {
    by_address: std::collections::HashMap<std::net::SocketAddr, Arc<crate::tls::TlsDialer>>,
    default: Arc<crate::tls::TlsDialer>,
}

impl BalancerDialer {
    fn new(
        balancers: &[BalancerAddress],
        tls: &crate::tls::ClientTlsConfig,
        service: &str,
    ) -> Result<BalancerDialer, crate::tls::TlsError> {
        let mut tls = tls.clone();
        tls.domain_name = None;
        let host = |name: &str| -> String {
            http::uri::Authority::try_from(name)
                .map(|a| a.host().to_owned())
                .unwrap_or_else(|_| name.to_owned())
        };
        let default = Arc::new(crate::tls::TlsDialer::new(&tls, &host(service))?);
        let mut by_name: std::collections::HashMap<String, Arc<crate::tls::TlsDialer>> =
            std::collections::HashMap::new();
        let mut by_address = std::collections::HashMap::new();
        for balancer in balancers {
            let name = host(balancer.server_name.trim_end_matches('.'));
            if name.is_empty() {
                continue;
            }
            let dialer = match by_name.get(&name) {
                Some(dialer) => dialer.clone(),
                None => {
                    let dialer = Arc::new(crate::tls::TlsDialer::new(&tls, &name)?);
                    by_name.insert(name, dialer.clone());
                    dialer
                }
            };
            by_address.insert(balancer.addr, dialer);
        }
        Ok(BalancerDialer {
            by_address,
            default,
        })
    }
}

impl crate::Dialer for BalancerDialer {
    fn dial(&self, address: &waypost_resolver::Address) -> crate::DialFuture {
        let dialer = match address {
            waypost_resolver::Address::Tcp(addr) => self.by_address.get(addr),
            _ => None,
        };
        dialer.unwrap_or(&self.default).dial(address)
    }
}

/// Runs until aborted.
pub(crate) async fn run(
    balancers: Vec<BalancerAddress>,
    tls: Option<crate::tls::ClientTlsConfig>,
    name: String,
    events: PolicyEvents,
    stats: Arc<GrpclbStats>,
    backoff: BackoffConfig,
) {
    let resolver = ManualResolver::new("grpclb-balancers");
    resolver.update(ResolverState::from_endpoints(
        balancers.iter().map(|b| Endpoint::new(b.addr)),
    ));
    let registry = ResolverRegistry::new();
    registry.register(resolver);
    let server_name = balancers
        .first()
        .map(|b| b.server_name.clone())
        .filter(|n| !n.is_empty());
    let mut builder = crate::Channel::builder("grpclb-balancers:///balancers")
        .resolvers(registry)
        .authority(server_name.unwrap_or_else(|| name.clone()))
        .connect_backoff(backoff);
    if let Some(tls) = tls {
        match BalancerDialer::new(&balancers, &tls, &name) {
            Ok(dialer) => builder = builder.dialer(Arc::new(dialer)),
            Err(error) => {
                tracing::error!(%error, "grpclb: the balancers' TLS settings cannot be used");
                return;
            }
        }
    }
    let channel = match builder.build() {
        Ok(channel) => channel,
        Err(error) => {
            tracing::error!(%error, "grpclb: cannot build the balancer channel");
            return;
        }
    };
    let mut client = LoadBalancerClient::new(channel);
    let mut backoff = Backoff::new(backoff, seeded_rng());
    loop {
        let (tx, rx) = mpsc::channel(4);
        let initial = LoadBalanceRequest {
            load_balance_request_type: Some(LoadBalanceRequestType::InitialRequest(
                InitialLoadBalanceRequest { name: name.clone() },
            )),
        };
        let _ = tx.send(initial).await;
        let mut completed_initial = false;
        match client.balance_load(ReceiverStream::new(rx)).await {
            Ok(response) => {
                let mut inbound = response.into_inner();
                let mut report: Option<tokio::time::Interval> = None;
                let mut last_zero = false;
                loop {
                    let tick = async {
                        match report.as_mut() {
                            Some(interval) => {
                                interval.tick().await;
                            }
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        message = inbound.message() => match message {
                            Ok(Some(message)) => match message.load_balance_response_type {
                                Some(LoadBalanceResponseType::InitialResponse(initial)) => {
                                    completed_initial = true;
                                    if let Some(every) = initial.client_stats_report_interval.as_ref().and_then(to_duration) {
                                        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                                        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                                        report = Some(interval);
                                    }
                                }
                                Some(LoadBalanceResponseType::ServerList(list)) => {
                                    events.send(StreamEvent::List(list.servers));
                                }
                                Some(LoadBalanceResponseType::FallbackResponse(_)) => {
                                    events.send(StreamEvent::Fallback);
                                }
                                None => {}
                            },
                            Ok(None) | Err(_) => break,
                        },
                        () = tick => {
                            let counts = stats.take();
                            let zero = is_zero(&counts);
                            if !(zero && last_zero) {
                                let message = LoadBalanceRequest {
                                    load_balance_request_type: Some(LoadBalanceRequestType::ClientStats(counts)),
                                };
                                if tx.send(message).await.is_err() {
                                    break;
                                }
                            }
                            last_zero = zero;
                        }
                    }
                }
            }
            Err(status) => tracing::debug!(%status, "grpclb: BalanceLoad failed"),
        }
        if !events.send(StreamEvent::Lost {
            established: completed_initial,
        }) {
            return;
        }
        if completed_initial {
            backoff.reset();
            continue;
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}
