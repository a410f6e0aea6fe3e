//! The `dns` resolver, on hickory-resolver.
//!
//! `dns:[//server[:port]/]host[:port]` resolves `host`'s A and AAAA records
//! (port 443 by default), looks up grpclb balancers in the SRV record
//! `_grpclb._tcp.<host>` and the service config in the TXT record
//! `_grpc_config.<host>`. It resolves again when the shortest TTL of the
//! answer expires (clamped to [`DnsOptions::min_ttl`] and
//! [`DnsOptions::max_ttl`]; hickory's own cache is off) and on
//! `resolve_now`, at most once per [`DnsOptions::min_resolve_now_interval`].
//! Failures back off exponentially with jitter; a failure or an empty
//! answer keeps the last good addresses, and a malformed TXT config keeps
//! the last good config. An IP literal host resolves to itself with no DNS.
//! A server named in the authority is asked instead of the system's.

mod service_config;

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};
use rand::RngExt;
use tokio::time::Instant;

pub use self::service_config::{CLIENT_LANGUAGE, choose_service_config};
use crate::backoff::{Backoff, BackoffConfig};
use crate::error::DnsErrorKind;
use crate::publish::Publisher;
use crate::registry::ResolverBuilder;
use crate::state::{BalancerAddress, Endpoint, ResolverState};
use crate::target::{Host, Target, TargetError, parse_host_port};
use crate::{DEFAULT_PORT, ResolveError};

/// How the `dns` resolver behaves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DnsOptions {
    /// Never re-resolve sooner than this after a good answer, whatever its
    /// TTL (default 1 s).
    pub min_ttl: Duration,
    /// Re-resolve at least this often, whatever the TTL (default 30 min).
    pub max_ttl: Duration,
    /// `resolve_now` hints are honoured at most this often (default 30 s).
    pub min_resolve_now_interval: Duration,
    /// Backoff after failed lookups (default 1 s × 1.6 ± 20 %, max 120 s).
    pub backoff: BackoffConfig,
    /// Look up grpclb balancers in SRV `_grpclb._tcp.<host>` (default on).
    pub srv_lookups: bool,
    /// Look up the service config in TXT `_grpc_config.<host>` (default on).
    pub txt_lookups: bool,
    /// How long one query may take (default 5 s).
    pub query_timeout: Duration,
    /// This client's host name, for `clientHostname` (or `clientHostName`)
    /// in TXT choices (default: this machine's, as gRPC C-core and grpc-go
    /// use — see [`system_host_name`]).
    pub client_host_name: Option<String>,
}

impl Default for DnsOptions {
    fn default() -> Self {
        DnsOptions {
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(30 * 60),
            min_resolve_now_interval: Duration::from_secs(30),
            backoff: BackoffConfig::default(),
            srv_lookups: true,
            txt_lookups: true,
            query_timeout: Duration::from_secs(5),
            client_host_name: system_host_name(),
        }
    }
}

/// This machine's host name (Linux: `/proc/sys/kernel/hostname`; else the
/// `HOSTNAME` environment variable), or `None` when it cannot be told.
pub fn system_host_name() -> Option<String> {
    let from_kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    from_kernel
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
}

impl DnsOptions {
    /// Sets the TTL floor and cap.
    pub fn ttl_bounds(mut self, min: Duration, max: Duration) -> Self {
        self.min_ttl = min;
        self.max_ttl = max.max(min);
        self
    }

    /// Sets the minimum interval between `resolve_now`-driven lookups.
    pub fn min_resolve_now_interval(mut self, interval: Duration) -> Self {
        self.min_resolve_now_interval = interval;
        self
    }

    /// Sets the failure backoff.
    pub fn backoff(mut self, backoff: BackoffConfig) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets the per-query timeout.
    pub fn query_timeout(mut self, timeout: Duration) -> Self {
        self.query_timeout = timeout;
        self
    }

    /// Turns SRV (grpclb) and TXT (service config) lookups on or off.
    pub fn lookups(mut self, srv: bool, txt: bool) -> Self {
        self.srv_lookups = srv;
        self.txt_lookups = txt;
        self
    }
}

/// Builds `dns` resolvers.
#[derive(Debug, Clone, Default)]
pub struct DnsResolverBuilder {
    options: DnsOptions,
}

impl DnsResolverBuilder {
    /// A builder with these options (register it in a registry to use them).
    pub fn new(options: DnsOptions) -> Self {
        DnsResolverBuilder { options }
    }
}

impl ResolverBuilder for DnsResolverBuilder {
    fn scheme(&self) -> &str {
        "dns"
    }

    fn build(&self, target: &Target, publisher: Publisher) -> Result<(), ResolveError> {
        let server = match target.authority() {
            None => None,
            Some(authority) => match parse_host_port(authority, 53)? {
                (Host::Ip(ip), port) => Some(SocketAddr::new(ip, port)),
                (Host::Name(_), _) => {
                    return Err(ResolveError::Unsupported {
                        scheme: "dns".into(),
                        reason: format!(
                            "the DNS server in the authority must be an IP address, got {authority:?}"
                        ),
                    });
                }
            },
        };
        let (host, port) = parse_host_port(target.endpoint(), DEFAULT_PORT)?;
        let name = match host {
            Host::Ip(ip) => {
                publisher.update(ResolverState::from_endpoints([Endpoint::new(
                    SocketAddr::new(ip, port),
                )]));
                return Ok(());
            }
            Host::Name(name) => name,
        };
        if name.is_empty() {
            return Err(TargetError::MissingHost(target.endpoint().to_owned()).into());
        }
        let resolver = hickory(server, &self.options)?;
        let lookup = Lookup {
            resolver,
            name,
            port,
            options: self.options.clone(),
            rng: crate::backoff::seeded_rng(),
        };
        tokio::spawn(run(lookup, publisher));
        Ok(())
    }
}

fn hickory(
    server: Option<SocketAddr>,
    options: &DnsOptions,
) -> Result<TokioResolver, ResolveError> {
    let fail = |e: NetError| ResolveError::Dns {
        host: server
            .map(|s| s.to_string())
            .unwrap_or_else(|| "system resolver".into()),
        kind: DnsErrorKind::Other,
        message: e.to_string(),
    };
    let mut builder = match server {
        Some(server) => {
            let mut ns = NameServerConfig::udp_and_tcp(server.ip());
            for connection in &mut ns.connections {
                connection.port = server.port();
            }
            let mut builder = Resolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![ns]),
                TokioRuntimeProvider::default(),
            );
            builder.options_mut().use_hosts_file = ResolveHosts::Never;
            builder
        }
        None => Resolver::builder_tokio().map_err(fail)?,
    };
    let opts = builder.options_mut();
    opts.cache_size = 0;
    opts.timeout = options.query_timeout;
    opts.attempts = 1;
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    builder.build().map_err(fail)
}

/// One target's lookups.
struct Lookup {
    resolver: TokioResolver,
    name: String,
    port: u16,
    options: DnsOptions,
    rng: rand::rngs::SmallRng,
}

/// A good answer: the state, when to look again, and problems that did not
/// stop it (a bad TXT config, a failed SRV lookup).
struct Answer {
    state: ResolverState,
    ttl: Duration,
    warnings: Vec<ResolveError>,
}

async fn run(mut lookup: Lookup, publisher: Publisher) {
    let mut backoff = Backoff::new(lookup.options.backoff, crate::backoff::seeded_rng());
    loop {
        let started = Instant::now();
        let previous = publisher.last_state();
        let outcome = tokio::select! {
            _ = publisher.closed() => return,
            outcome = lookup.resolve(previous.as_deref()) => outcome,
        };
        let mut next = match outcome {
            Ok(answer) => {
                backoff.reset();
                for warning in &answer.warnings {
                    tracing::warn!(host = %lookup.name, error = %warning, "dns");
                }
                // The state and its first warning in one update, so every
                // consumer sees both (never one, then the other).
                publisher.publish(answer.state, answer.warnings.into_iter().next());
                started + refresh_after(answer.ttl, &lookup.options)
            }
            Err(error) => {
                tracing::warn!(host = %lookup.name, %error, "dns lookup failed; keeping the last good state");
                publisher.report_error(error);
                started + backoff.next_delay()
            }
        };
        let earliest_hint = started + lookup.options.min_resolve_now_interval;
        loop {
            tokio::select! {
                biased;
                _ = publisher.closed() => return,
                _ = tokio::time::sleep_until(next) => break,
                _ = publisher.resolve_now_requested() => {
                    next = next.min(earliest_hint.max(Instant::now()));
                }
            }
        }
    }
}

/// Balancer addresses from SRV, their shortest TTL, and the SRV targets
/// that were skipped because they did not resolve.
type Balancers = (Vec<BalancerAddress>, Duration, Vec<ResolveError>);

/// When to resolve again after a good answer whose shortest TTL is `ttl`.
pub fn refresh_after(ttl: Duration, options: &DnsOptions) -> Duration {
    ttl.clamp(options.min_ttl, options.max_ttl.max(options.min_ttl))
}

fn dns_error(host: &str, error: &NetError) -> ResolveError {
    let kind = if error.is_nx_domain() {
        DnsErrorKind::NxDomain
    } else if error.is_no_records_found() {
        DnsErrorKind::NoRecords
    } else if matches!(error, NetError::Timeout) {
        DnsErrorKind::Timeout
    } else {
        DnsErrorKind::Other
    };
    // hickory's own text for these names its query with Rust's Debug
    // formatting (`Query { name: Name("…"), … }`): say it plainly instead.
    let message = match kind {
        DnsErrorKind::NxDomain => "no such name (NXDOMAIN)".to_owned(),
        DnsErrorKind::NoRecords => "no records of the type asked for".to_owned(),
        DnsErrorKind::Timeout => "the DNS server did not answer in time".to_owned(),
        _ => crate::Quoted(&error.to_string()).to_string(),
    };
    ResolveError::Dns {
        host: host.to_owned(),
        kind,
        message,
    }
}

fn remaining(valid_until: std::time::Instant) -> Duration {
    valid_until.saturating_duration_since(std::time::Instant::now())
}

impl Lookup {
    async fn resolve(&mut self, previous: Option<&ResolverState>) -> Result<Answer, ResolveError> {
        let chance = self.rng.random_range(1..=100);
        let (ips, balancers, config) = tokio::join!(
            self.lookup_ips(),
            self.lookup_balancers(),
            self.lookup_config(chance)
        );
        let mut warnings = Vec::new();
        let mut ttl = self.options.max_ttl;

        let balancer_addresses = match balancers {
            Ok(Some((balancers, balancers_ttl, skipped))) => {
                ttl = ttl.min(balancers_ttl);
                warnings.extend(skipped);
                balancers
            }
            Ok(None) => Vec::new(),
            Err(e) => {
                warnings.push(e);
                previous
                    .map(|p| p.balancer_addresses.clone())
                    .unwrap_or_default()
            }
        };
        let endpoints = match ips {
            Ok((addrs, ips_ttl)) => {
                ttl = ttl.min(ips_ttl);
                addrs.into_iter().map(Endpoint::new).collect()
            }
            // grpclb can work with balancers alone.
            Err(e) if !balancer_addresses.is_empty() => {
                warnings.push(e);
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        let service_config = match config {
            Ok(Some((config, config_ttl))) => {
                ttl = ttl.min(config_ttl);
                config
            }
            Ok(None) => None,
            Err(e) => {
                warnings.push(e);
                previous.and_then(|p| p.service_config.clone())
            }
        };
        Ok(Answer {
            state: ResolverState {
                endpoints,
                service_config,
                balancer_addresses,
                ..Default::default()
            },
            ttl,
            warnings,
        })
    }

    /// A and AAAA: the addresses and their shortest TTL. No records at all
    /// is an error (the caller keeps the last good state).
    async fn lookup_ips(&self) -> Result<(Vec<SocketAddr>, Duration), ResolveError> {
        let lookup = self
            .resolver
            .lookup_ip(self.name.as_str())
            .await
            .map_err(|e| dns_error(&self.name, &e))?;
        let mut addrs: Vec<SocketAddr> = lookup
            .iter()
            .map(|ip| SocketAddr::new(ip, self.port))
            .collect();
        addrs.dedup();
        if addrs.is_empty() {
            return Err(ResolveError::Dns {
                host: self.name.clone(),
                kind: DnsErrorKind::NoRecords,
                message: "no A or AAAA records".into(),
            });
        }
        Ok((addrs, remaining(lookup.valid_until())))
    }

    /// SRV `_grpclb._tcp.<host>` and each target's addresses, with the
    /// targets that did not resolve (skipped, as grpc-go does: one bad
    /// target does not cost the others). `Ok(None)` when there is no such
    /// record; an error when no target resolved.
    async fn lookup_balancers(&self) -> Result<Option<Balancers>, ResolveError> {
        if !self.options.srv_lookups {
            return Ok(None);
        }
        let name = format!("_grpclb._tcp.{}", self.name);
        let lookup = match self.resolver.lookup(name.as_str(), RecordType::SRV).await {
            Ok(lookup) => lookup,
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => return Ok(None),
            Err(e) => return Err(dns_error(&name, &e)),
        };
        let mut ttl = remaining(lookup.valid_until());
        let mut balancers = Vec::new();
        let mut skipped = Vec::new();
        let mut targets = 0;
        for record in lookup.answers() {
            let RData::SRV(srv) = &record.data else {
                continue;
            };
            targets += 1;
            let target = srv.target.to_ascii();
            let server_name = target.trim_end_matches('.').to_owned();
            let ips = match self.resolver.lookup_ip(target.as_str()).await {
                Ok(ips) => ips,
                Err(e) => {
                    skipped.push(dns_error(&target, &e));
                    continue;
                }
            };
            ttl = ttl.min(remaining(ips.valid_until()));
            for ip in ips.iter() {
                balancers.push(BalancerAddress {
                    addr: SocketAddr::new(ip, srv.port),
                    server_name: server_name.clone(),
                });
            }
        }
        if targets > 0 && skipped.len() == targets {
            return Err(skipped.swap_remove(0));
        }
        balancers.sort();
        balancers.dedup();
        Ok(Some((balancers, ttl, skipped)))
    }

    /// TXT `_grpc_config.<host>` and the config chosen from it. `Ok(None)`
    /// when there is no record; `Ok(Some((None, _)))` when none applies.
    async fn lookup_config(
        &self,
        chance: u32,
    ) -> Result<Option<(Option<serde_json::Value>, Duration)>, ResolveError> {
        if !self.options.txt_lookups {
            return Ok(None);
        }
        let name = format!("_grpc_config.{}", self.name);
        let lookup = match self.resolver.lookup(name.as_str(), RecordType::TXT).await {
            Ok(lookup) => lookup,
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => return Ok(None),
            Err(e) => return Err(dns_error(&name, &e)),
        };
        let ttl = remaining(lookup.valid_until());
        for record in lookup.answers() {
            let RData::TXT(txt) = &record.data else {
                continue;
            };
            let bytes: Vec<u8> = txt
                .txt_data
                .iter()
                .flat_map(|s| s.iter().copied())
                .collect();
            let text = String::from_utf8_lossy(&bytes);
            if !text.starts_with("grpc_config=") {
                continue;
            }
            let config =
                choose_service_config(&text, self.options.client_host_name.as_deref(), chance)
                    .map_err(|reason| ResolveError::ServiceConfig { reason })?;
            return Ok(Some((config, ttl)));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_is_the_ttl_clamped_to_the_bounds() {
        let o = DnsOptions::default().ttl_bounds(Duration::from_secs(2), Duration::from_secs(60));
        assert_eq!(
            refresh_after(Duration::from_secs(0), &o),
            Duration::from_secs(2)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(30), &o),
            Duration::from_secs(30)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(3600), &o),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn a_name_server_authority_must_be_an_ip() {
        let target = Target::parse("dns://ns.example/orders:1").unwrap();
        let (publisher, _resolution) = crate::Resolution::channel();
        let err = DnsResolverBuilder::default()
            .build(&target, publisher)
            .unwrap_err();
        assert!(err.to_string().contains("must be an IP address"), "{err}");
    }

    #[tokio::test]
    async fn ip_literals_resolve_without_dns() {
        let registry = crate::ResolverRegistry::new();
        for (target, expected) in [
            ("dns:///127.0.0.1:50051", "127.0.0.1:50051"),
            ("dns:///[::1]:7", "[::1]:7"),
            ("127.0.0.1", "127.0.0.1:443"),
        ] {
            let mut resolution = registry.resolve(target).unwrap();
            let state = resolution.first().await.state.unwrap();
            assert_eq!(
                state
                    .addresses()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
                vec![expected]
            );
        }
        let err = registry.resolve("dns:///orders:").unwrap_err();
        assert!(err.to_string().contains("missing port"), "{err}");
    }
}
