//! The static resolvers: `passthrough`, `unix`, `unix-abstract`, `ipv4` and
//! `ipv6`. Each validates its target, publishes one state and ends.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use crate::ResolveError;
use crate::publish::Publisher;
use crate::registry::{ResolverBuilder, ResolverRegistry};
use crate::state::{Address, Endpoint, ResolverState};
use crate::target::{Host, Target, TargetError, parse_host_port};

/// The default port of gRPC targets without one.
pub const DEFAULT_PORT: u16 = 443;

pub(crate) fn register_builtins(registry: &ResolverRegistry) {
    registry.register(PassthroughResolverBuilder);
    registry.register(UnixResolverBuilder {
        abstract_namespace: false,
    });
    registry.register(UnixResolverBuilder {
        abstract_namespace: true,
    });
    registry.register(IpResolverBuilder { v6: false });
    registry.register(IpResolverBuilder { v6: true });
    #[cfg(feature = "dns")]
    registry.register(crate::dns::DnsResolverBuilder::default());
    #[cfg(feature = "etcd")]
    registry.register(crate::etcd::EtcdResolverBuilder::from_authority());
}

fn no_authority(target: &Target) -> Result<(), ResolveError> {
    match target.authority() {
        Some(authority) => Err(TargetError::AuthorityNotAllowed {
            scheme: target.scheme().to_owned(),
            authority: authority.to_owned(),
        }
        .into()),
        None => Ok(()),
    }
}

fn publish_once(publisher: Publisher, addresses: Vec<Address>) {
    publisher.update(ResolverState::from_endpoints(
        addresses.into_iter().map(Endpoint::new),
    ));
}

/// `passthrough:///host:port`: hands the endpoint, unresolved, to the
/// connector.
#[derive(Debug, Clone, Copy, Default)]
pub struct PassthroughResolverBuilder;

impl ResolverBuilder for PassthroughResolverBuilder {
    fn scheme(&self) -> &str {
        "passthrough"
    }

    fn build(&self, target: &Target, publisher: Publisher) -> Result<(), ResolveError> {
        let endpoint = target.endpoint();
        if endpoint.is_empty() {
            return Err(TargetError::MissingEndpoint(target.as_str().to_owned()).into());
        }
        let address = match endpoint.parse::<SocketAddr>() {
            Ok(addr) => Address::Tcp(addr),
            Err(_) => Address::Unresolved(endpoint.to_owned()),
        };
        publish_once(publisher, vec![address]);
        Ok(())
    }
}

/// `unix:path`, `unix:///abs/path` and `unix-abstract:name`.
#[derive(Debug, Clone, Copy)]
pub struct UnixResolverBuilder {
    abstract_namespace: bool,
}

impl ResolverBuilder for UnixResolverBuilder {
    fn scheme(&self) -> &str {
        if self.abstract_namespace {
            "unix-abstract"
        } else {
            "unix"
        }
    }

    fn build(&self, target: &Target, publisher: Publisher) -> Result<(), ResolveError> {
        no_authority(target)?;
        let path = target.path();
        if path.is_empty() {
            return Err(TargetError::MissingEndpoint(target.as_str().to_owned()).into());
        }
        let address = if self.abstract_namespace {
            Address::UnixAbstract(target.endpoint().to_owned())
        } else {
            Address::Unix(PathBuf::from(path))
        };
        publish_once(publisher, vec![address]);
        Ok(())
    }
}

/// `ipv4:a.b.c.d[:port][,…]` and `ipv6:[addr]:port[,…]` (or a bare `addr`),
/// port 443 by default.
#[derive(Debug, Clone, Copy)]
pub struct IpResolverBuilder {
    v6: bool,
}

impl ResolverBuilder for IpResolverBuilder {
    fn scheme(&self) -> &str {
        if self.v6 { "ipv6" } else { "ipv4" }
    }

    fn build(&self, target: &Target, publisher: Publisher) -> Result<(), ResolveError> {
        no_authority(target)?;
        let list = target.endpoint();
        if list.is_empty() {
            return Err(TargetError::MissingEndpoint(target.as_str().to_owned()).into());
        }
        let mut addresses = Vec::new();
        for item in list.split(',') {
            let (host, port) = parse_host_port(item, DEFAULT_PORT)?;
            let ip = match (host, self.v6) {
                (Host::Ip(ip @ IpAddr::V4(_)), false) | (Host::Ip(ip @ IpAddr::V6(_)), true) => ip,
                (_, false) => return Err(TargetError::NotIpv4(item.to_owned()).into()),
                (_, true) => return Err(TargetError::NotIpv6(item.to_owned()).into()),
            };
            addresses.push(Address::Tcp(SocketAddr::new(ip, port)));
        }
        publish_once(publisher, addresses);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(target: &str) -> Result<Vec<String>, ResolveError> {
        let mut resolution = ResolverRegistry::new().resolve(target)?;
        let update = futures_now(resolution.first());
        Ok(update
            .state
            .expect("a state")
            .addresses()
            .map(|a| a.to_string())
            .collect())
    }

    /// Static resolvers publish before `build` returns, so `first()` is ready at once.
    fn futures_now<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn an_unregistered_xds_target_says_how_to_register_it_instead_of_asking_dns() {
        let error = ResolverRegistry::new()
            .resolve("xds:///orders")
            .expect_err("xds is not registered here");
        assert!(
            matches!(&error, ResolveError::NotRegistered { scheme, .. } if scheme == "xds"),
            "{error:?}"
        );
        assert!(error.to_string().contains("`xds` feature"), "{error}");
    }

    #[test]
    fn static_targets_resolve_to_their_addresses() {
        let cases: &[(&str, &[&str])] = &[
            ("passthrough:///orders:50051", &["orders:50051"]),
            ("passthrough:///127.0.0.1:9", &["127.0.0.1:9"]),
            ("unix:relative.sock", &["unix:relative.sock"]),
            ("unix:/run/x.sock", &["unix:/run/x.sock"]),
            ("unix:///run/x.sock", &["unix:/run/x.sock"]),
            ("unix-abstract:grpc", &["unix-abstract:grpc"]),
            (
                "ipv4:127.0.0.1:1,127.0.0.2",
                &["127.0.0.1:1", "127.0.0.2:443"],
            ),
            ("ipv6:[::1]:80,::2", &["[::1]:80", "[::2]:443"]),
        ];
        for (target, expected) in cases {
            assert_eq!(resolve(target).unwrap(), *expected, "{target}");
        }
    }

    #[test]
    fn bad_static_targets_are_typed_errors() {
        let err = |t: &str| resolve(t).unwrap_err().to_string();
        assert!(
            err("unix://host/x.sock").contains("does not take an authority"),
            "{}",
            err("unix://host/x.sock")
        );
        assert!(err("unix:").contains("missing endpoint"));
        assert!(err("passthrough:///").contains("missing endpoint"));
        assert!(err("ipv4:").contains("missing endpoint"));
        assert!(err("ipv4:[::1]:80").contains("not an IPv4 address"));
        assert!(err("ipv4:orders:80").contains("not an IPv4 address"));
        assert!(err("ipv6:127.0.0.1").contains("not an IPv6 address"));
        assert!(err("ipv4:127.0.0.1:99999").contains("invalid port"));
        assert!(err("ipv4:127.0.0.1,").contains("missing host"));
    }
}
