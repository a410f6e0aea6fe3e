//! Target URIs, parsed by the gRPC naming rules.
//!
//! A target is `scheme://authority/endpoint` or `scheme:endpoint`. A string
//! without a scheme is a DNS target (`orders:50051` and `[::1]:443` both
//! mean `dns:///…`); [`crate::ResolverRegistry::resolve`] also falls back to
//! DNS when the scheme is not registered, as grpc-go does.
//!
//! ```
//! use waypost_resolver::Target;
//!
//! let t = Target::parse("dns://8.8.8.8:53/orders.internal:50051").unwrap();
//! assert_eq!(t.scheme(), "dns");
//! assert_eq!(t.authority(), Some("8.8.8.8:53"));
//! assert_eq!(t.endpoint(), "orders.internal:50051");
//!
//! let t = Target::parse("[::1]:50051").unwrap();
//! assert_eq!((t.scheme(), t.endpoint()), ("dns", "[::1]:50051"));
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why a target string, or a host and port inside it, is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// The target is the empty string.
    #[error("empty target")]
    Empty,
    /// The target contains a control character or white space.
    #[error("invalid character {character:?} at byte {position} of the target")]
    InvalidCharacter {
        /// The offending character.
        character: char,
        /// Its byte offset.
        position: usize,
    },
    /// The endpoint has no host (e.g. `dns:///:50051`).
    #[error("missing host in {}", Quoted(.0))]
    MissingHost(String),
    /// A `:` is followed by nothing (e.g. `orders:`).
    #[error("missing port after ':' in {}", Quoted(.0))]
    MissingPort(String),
    /// The port is not a number from 0 to 65535.
    #[error("invalid port {} in {}", Quoted(port), Quoted(input))]
    InvalidPort {
        /// The port text.
        port: String,
        /// The whole host:port.
        input: String,
    },
    /// A `[` has no matching `]`, or text follows the `]` other than `:port`.
    #[error("malformed bracketed IPv6 address in {}", Quoted(.0))]
    BadBrackets(String),
    /// The text in brackets is not an IPv6 address.
    #[error("{} is not an IPv6 address", Quoted(.0))]
    NotIpv6(String),
    /// An `ipv4:` entry is not an IPv4 address.
    #[error("{} is not an IPv4 address", Quoted(.0))]
    NotIpv4(String),
    /// The host name is not a valid DNS name.
    #[error("invalid host name {}", Quoted(.0))]
    InvalidHostName(String),
    /// The scheme does not allow an authority (e.g. `unix://host/path`).
    #[error(
        "scheme {} does not take an authority, got {}",
        Quoted(scheme),
        Quoted(authority)
    )]
    AuthorityNotAllowed {
        /// The scheme.
        scheme: String,
        /// The authority given.
        authority: String,
    },
    /// The endpoint is empty where one is required.
    #[error("missing endpoint in target {}", Quoted(.0))]
    MissingEndpoint(String),
}

/// A string for an error message or a log line: quoted, and cut after 80
/// characters so a huge input is not echoed whole.
///
/// ```
/// use waypost_resolver::Quoted;
/// assert_eq!(Quoted("orders").to_string(), "\"orders\"");
/// let long = "x".repeat(100_000);
/// assert!(Quoted(&long).to_string().ends_with("… (100000 bytes)"));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Quoted<'a>(pub &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(80) {
            None => write!(f, "{:?}", self.0),
            Some((at, _)) => write!(f, "{:?}… ({} bytes)", &self.0[..at], self.0.len()),
        }
    }
}

/// A parsed target URI.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Target {
    original: String,
    scheme: String,
    authority: Option<String>,
    /// The URL path with its leading `/`, or the opaque part.
    path: String,
    /// Whether the target had the `scheme://authority` form.
    hierarchical: bool,
}

impl Target {
    /// Parses `input`. Only the generic shape is checked here; each resolver
    /// validates its own endpoint when it is built.
    pub fn parse(input: &str) -> Result<Target, TargetError> {
        if input.is_empty() {
            return Err(TargetError::Empty);
        }
        if let Some((position, character)) = input
            .char_indices()
            .find(|(_, c)| c.is_control() || c.is_whitespace())
        {
            return Err(TargetError::InvalidCharacter {
                character,
                position,
            });
        }
        let Some((scheme, rest)) = split_scheme(input) else {
            return Ok(Target::dns_fallback(input));
        };
        let scheme = scheme.to_ascii_lowercase();
        if let Some(after) = rest.strip_prefix("//") {
            let (authority, path) = match after.find('/') {
                Some(i) => (&after[..i], &after[i..]),
                None => (after, ""),
            };
            Ok(Target {
                original: input.to_owned(),
                scheme,
                authority: (!authority.is_empty()).then(|| authority.to_owned()),
                path: path.to_owned(),
                hierarchical: true,
            })
        } else {
            Ok(Target {
                original: input.to_owned(),
                scheme,
                authority: None,
                path: rest.to_owned(),
                hierarchical: false,
            })
        }
    }

    /// `dns:///<input>`: how a target with no scheme, or an unregistered
    /// one, is read.
    pub fn dns_fallback(input: &str) -> Target {
        Target {
            original: input.to_owned(),
            scheme: "dns".into(),
            authority: None,
            path: format!("/{input}"),
            hierarchical: true,
        }
    }

    /// The scheme, lower-cased (`dns`, `etcd`, …).
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The authority (`dns://8.8.8.8/…` → `8.8.8.8`), if not empty.
    pub fn authority(&self) -> Option<&str> {
        self.authority.as_deref()
    }

    /// The endpoint: the URL path without its leading `/`, or the opaque
    /// part (`unix:relative/path` → `relative/path`).
    pub fn endpoint(&self) -> &str {
        if self.hierarchical {
            self.path.strip_prefix('/').unwrap_or(&self.path)
        } else {
            &self.path
        }
    }

    /// The URL path as written (`unix:///run/x.sock` → `/run/x.sock`), or
    /// the opaque part.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The target as the user wrote it.
    pub fn as_str(&self) -> &str {
        &self.original
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("scheme", &self.scheme)
            .field("authority", &self.authority)
            .field("endpoint", &self.endpoint())
            .finish()
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}

/// Splits `scheme:rest` when `input` starts with a valid URI scheme
/// (`ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`).
fn split_scheme(input: &str) -> Option<(&str, &str)> {
    let colon = input.find(':')?;
    let scheme = &input[..colon];
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then(|| (scheme, &input[colon + 1..]))
}

/// A host: an IP literal or a DNS name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// An IPv4 or IPv6 literal.
    Ip(IpAddr),
    /// A DNS name (validated, without a trailing dot unless given one).
    Name(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

/// Splits `host[:port]` (`[v6]:port`, bare `v6`, `name`, `name:port`),
/// using `default_port` when none is given.
pub fn parse_host_port(input: &str, default_port: u16) -> Result<(Host, u16), TargetError> {
    if input.is_empty() {
        return Err(TargetError::MissingHost(input.to_owned()));
    }
    if let Some(rest) = input.strip_prefix('[') {
        let Some(close) = rest.find(']') else {
            return Err(TargetError::BadBrackets(input.to_owned()));
        };
        let inside = &rest[..close];
        let ip: Ipv6Addr = inside
            .parse()
            .map_err(|_| TargetError::NotIpv6(inside.to_owned()))?;
        let port = match &rest[close + 1..] {
            "" => default_port,
            after => match after.strip_prefix(':') {
                Some(port) => parse_port(port, input)?,
                None => return Err(TargetError::BadBrackets(input.to_owned())),
            },
        };
        return Ok((Host::Ip(IpAddr::V6(ip)), port));
    }
    // A bare IPv6 literal has several colons and no port.
    if input.matches(':').count() > 1 {
        let ip: Ipv6Addr = input
            .parse()
            .map_err(|_| TargetError::NotIpv6(input.to_owned()))?;
        return Ok((Host::Ip(IpAddr::V6(ip)), default_port));
    }
    let (host, port) = match input.split_once(':') {
        Some((host, port)) => (host, parse_port(port, input)?),
        None => (input, default_port),
    };
    if host.is_empty() {
        return Err(TargetError::MissingHost(input.to_owned()));
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok((Host::Ip(IpAddr::V4(ip)), port));
    }
    validate_host_name(host)?;
    Ok((Host::Name(host.to_owned()), port))
}

fn parse_port(port: &str, input: &str) -> Result<u16, TargetError> {
    if port.is_empty() {
        return Err(TargetError::MissingPort(input.to_owned()));
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TargetError::InvalidPort {
            port: port.to_owned(),
            input: input.to_owned(),
        });
    }
    port.parse().map_err(|_| TargetError::InvalidPort {
        port: port.to_owned(),
        input: input.to_owned(),
    })
}

/// Checks RFC 1123 host name syntax (letters, digits, `-`, `_`; labels of
/// 1–63 bytes; at most 253 bytes; an optional trailing dot).
fn validate_host_name(host: &str) -> Result<(), TargetError> {
    let bad = || TargetError::InvalidHostName(host.to_owned());
    let trimmed = host.strip_suffix('.').unwrap_or(host);
    if trimmed.is_empty() || trimmed.len() > 253 {
        return Err(bad());
    }
    for label in trimmed.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(bad());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split_into_scheme_authority_and_endpoint() {
        // (input, scheme, authority, endpoint, path)
        let cases: &[(&str, &str, Option<&str>, &str, &str)] = &[
            (
                "dns:///orders:50051",
                "dns",
                None,
                "orders:50051",
                "/orders:50051",
            ),
            (
                "dns://8.8.8.8/orders",
                "dns",
                Some("8.8.8.8"),
                "orders",
                "/orders",
            ),
            (
                "dns://127.0.0.1:5353/h:1",
                "dns",
                Some("127.0.0.1:5353"),
                "h:1",
                "/h:1",
            ),
            (
                "dns:orders:50051",
                "dns",
                None,
                "orders:50051",
                "orders:50051",
            ),
            ("DNS:///x", "dns", None, "x", "/x"),
            ("orders", "dns", None, "orders", "/orders"),
            ("orders:50051", "orders", None, "50051", "50051"),
            (
                "127.0.0.1:50051",
                "dns",
                None,
                "127.0.0.1:50051",
                "/127.0.0.1:50051",
            ),
            ("[::1]:50051", "dns", None, "[::1]:50051", "/[::1]:50051"),
            (
                "unix:relative/sock",
                "unix",
                None,
                "relative/sock",
                "relative/sock",
            ),
            ("unix:/abs/sock", "unix", None, "/abs/sock", "/abs/sock"),
            ("unix:///abs/sock", "unix", None, "abs/sock", "/abs/sock"),
            ("unix-abstract:name", "unix-abstract", None, "name", "name"),
            (
                "ipv4:127.0.0.1:1,127.0.0.2",
                "ipv4",
                None,
                "127.0.0.1:1,127.0.0.2",
                "127.0.0.1:1,127.0.0.2",
            ),
            ("passthrough:///h:1", "passthrough", None, "h:1", "/h:1"),
            ("etcd:///orders", "etcd", None, "orders", "/orders"),
            (
                "etcd://127.0.0.1:2379/orders",
                "etcd",
                Some("127.0.0.1:2379"),
                "orders",
                "/orders",
            ),
            ("consul://agent/svc", "consul", Some("agent"), "svc", "/svc"),
        ];
        for &(input, scheme, authority, endpoint, path) in cases {
            let t = Target::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(t.scheme(), scheme, "{input}");
            assert_eq!(t.authority(), authority, "{input}");
            assert_eq!(t.endpoint(), endpoint, "{input}");
            assert_eq!(t.path(), path, "{input}");
            assert_eq!(t.as_str(), input);
        }
    }

    #[test]
    fn bad_targets_name_the_problem() {
        assert_eq!(Target::parse(""), Err(TargetError::Empty));
        assert_eq!(
            Target::parse("dns:///a b"),
            Err(TargetError::InvalidCharacter {
                character: ' ',
                position: 8
            })
        );
        assert!(matches!(
            Target::parse("x\n"),
            Err(TargetError::InvalidCharacter { .. })
        ));
    }

    #[test]
    fn host_ports_parse_with_defaults() {
        let v4 = |a, b, c, d| Host::Ip(IpAddr::V4(Ipv4Addr::new(a, b, c, d)));
        let cases: &[(&str, Host, u16)] = &[
            ("orders", Host::Name("orders".into()), 443),
            ("orders:50051", Host::Name("orders".into()), 50051),
            (
                "orders.internal.",
                Host::Name("orders.internal.".into()),
                443,
            ),
            ("_grpclb._tcp.x", Host::Name("_grpclb._tcp.x".into()), 443),
            ("127.0.0.1", v4(127, 0, 0, 1), 443),
            ("127.0.0.1:80", v4(127, 0, 0, 1), 80),
            ("[::1]:80", Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)), 80),
            ("[::1]", Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)), 443),
            ("::1", Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)), 443),
            ("x:0", Host::Name("x".into()), 0),
            ("x:65535", Host::Name("x".into()), 65535),
        ];
        for (input, host, port) in cases {
            assert_eq!(
                parse_host_port(input, 443).unwrap(),
                (host.clone(), *port),
                "{input}"
            );
        }
    }

    #[test]
    fn bad_host_ports_give_typed_errors() {
        let cases: &[(&str, TargetError)] = &[
            ("", TargetError::MissingHost("".into())),
            (":80", TargetError::MissingHost(":80".into())),
            ("orders:", TargetError::MissingPort("orders:".into())),
            (
                "orders:http",
                TargetError::InvalidPort {
                    port: "http".into(),
                    input: "orders:http".into(),
                },
            ),
            (
                "orders:65536",
                TargetError::InvalidPort {
                    port: "65536".into(),
                    input: "orders:65536".into(),
                },
            ),
            (
                "orders:-1",
                TargetError::InvalidPort {
                    port: "-1".into(),
                    input: "orders:-1".into(),
                },
            ),
            ("[::1", TargetError::BadBrackets("[::1".into())),
            ("[::1]x", TargetError::BadBrackets("[::1]x".into())),
            ("[::1]:", TargetError::MissingPort("[::1]:".into())),
            ("[orders]:80", TargetError::NotIpv6("orders".into())),
            ("a:b:c", TargetError::NotIpv6("a:b:c".into())),
            (
                "bad..name",
                TargetError::InvalidHostName("bad..name".into()),
            ),
            ("-bad", TargetError::InvalidHostName("-bad".into())),
            ("bad!", TargetError::InvalidHostName("bad!".into())),
        ];
        for (input, error) in cases {
            assert_eq!(parse_host_port(input, 443).as_ref(), Err(error), "{input}");
        }
        let long = format!("{}.x", "a".repeat(64));
        assert_eq!(
            parse_host_port(&long, 1),
            Err(TargetError::InvalidHostName(long.clone()))
        );
    }
}
