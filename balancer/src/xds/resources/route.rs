//! RDS: the `RouteConfiguration` resource (gRFC A28, A31, A42), checked and
//! reduced to what the client routes by — virtual hosts by domain, routes
//! by path and headers — with the matching itself: pure functions a
//! per-call config selector runs.
//!
//! Supported: path `prefix`, `path`, `safe_regex` (RE2 syntax, compiled
//! once, size-limited), `case_sensitive`; header matchers exact, prefix,
//! suffix, contains, present, range and safe_regex, each invertible;
//! `runtime_fraction` (its default value); actions `cluster` and
//! `weighted_clusters`, `max_stream_duration` (`grpc_timeout_header_max`
//! first), and `hash_policy` (header, and filter_state
//! `io.grpc.channel_id`). Routes with another action stay, and calls they
//! match fail, as gRPC does; `retry_policy` (A44) of the route, else of
//! its virtual host. Not yet: query parameters,
//! `cluster_specifier_plugin`.

use std::sync::Arc;
use std::time::Duration;

use crate::service_config::RetryPolicy;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::PolicySpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher as PbHeaderMatcher, RouteConfiguration,
};
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use crate::xds::client::ads::{ResourceError, ResourceType, Value};

/// The type URL of RDS resources.
pub const TYPE_URL: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// RDS for the XdsClient.
pub static RDS: ResourceType = ResourceType {
    type_url: TYPE_URL,
    full_state: false,
    decode: decode_value,
};

/// The compiled size a route's regular expression may take.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// How a route matches the path.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// Starts with this.
    Prefix(String),
    /// Is exactly this.
    Path(String),
    /// Matches this regular expression in full.
    Regex(regex::Regex),
}

/// How a header matcher compares.
#[derive(Debug, Clone)]
pub enum HeaderMatch {
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Ends with.
    Suffix(String),
    /// Contains.
    Contains(String),
    /// Present (true) or absent (false).
    Present(bool),
    /// A whole number in [start, end).
    Range(i64, i64),
    /// Matches in full.
    Regex(regex::Regex),
}

/// One header matcher.
#[derive(Debug, Clone)]
pub struct HeaderMatcher {
    /// The header (lower case).
    pub name: String,
    /// The comparison.
    pub matcher: HeaderMatch,
    /// Whether the result is inverted.
    pub invert: bool,
    /// Whether exact/prefix/suffix/contains compare ignoring ASCII case
    /// (their operand is then stored in lower case).
    pub ignore_case: bool,
}

/// Where a route sends calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAction {
    /// One cluster.
    Cluster(String),
    /// Clusters by weight (each ≥ 0, total > 0).
    Weighted(Vec<(String, u32)>),
    /// A route that does not forward: calls it matches fail.
    NonForwarding,
    /// An action gRPC does not support: calls it matches fail.
    Unsupported,
}

/// How a call's ring hash is made (A42).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashPolicy {
    /// From a request header's value.
    Header {
        /// The header.
        name: String,
        /// Stop at this policy if it produced a hash.
        terminal: bool,
    },
    /// From the channel's id (the same for every call of a channel).
    ChannelId {
        /// Stop here if it produced a hash.
        terminal: bool,
    },
}

/// One route.
#[derive(Debug, Clone)]
pub struct Route {
    /// The path matcher.
    pub path: PathMatch,
    /// Whether the path compares case-sensitively (default true).
    pub case_sensitive: bool,
    /// Every one must match.
    pub headers: Vec<HeaderMatcher>,
    /// The share of matching calls taken, per million (`None`: all).
    pub fraction_per_million: Option<u32>,
    /// Where calls go.
    pub action: RouteAction,
    /// The longest a call may take (`None`: the listener's, if any).
    pub max_stream_duration: Option<Duration>,
    /// How ring_hash hashes calls of this route.
    pub hash_policies: Vec<HashPolicy>,
    /// Its retry policy (A44): the route action's, else the virtual
    /// host's; `None` when neither has one with a status gRPC retries on.
    pub retry_policy: Option<RetryPolicy>,
}

/// A virtual host.
#[derive(Debug, Clone)]
pub struct VirtualHost {
    /// The domains it serves (`*`, `*.suffix`, `prefix.*`, or exact).
    pub domains: Vec<String>,
    /// Its routes, in order (the first match wins).
    pub routes: Vec<Route>,
}

/// A checked route configuration.
#[derive(Debug, Clone)]
pub struct RouteConfigUpdate {
    /// Its name.
    pub name: String,
    /// Its virtual hosts.
    pub virtual_hosts: Vec<VirtualHost>,
}

/// An xDS `RetryPolicy` as gRPC takes it (gRFC A44): `retry_on` names the
/// status codes (`cancelled`, `deadline-exceeded`, `internal`,
/// `resource-exhausted`, `unavailable`; other conditions are ignored),
/// `num_retries` (default 1, at least 1) plus the first attempt make
/// `maxAttempts`, `retry_back_off` (default 25 ms, at most 10× that;
/// `base_interval` required and positive when it is given, `max_interval`
/// not below it) with multiplier 2. `per_try_timeout` and the rest are
/// ignored. `Ok(None)`: no status gRPC retries on, so no retries.
fn retry_policy(
    policy: &envoy_types::pb::envoy::config::route::v3::RetryPolicy,
    at: &str,
    name: &str,
) -> Result<Option<RetryPolicy>, ResourceError> {
    let codes: Vec<tonic::Code> = policy
        .retry_on
        .split(',')
        .filter_map(|condition| match condition.trim() {
            "cancelled" => Some(tonic::Code::Cancelled),
            "deadline-exceeded" => Some(tonic::Code::DeadlineExceeded),
            "internal" => Some(tonic::Code::Internal),
            "resource-exhausted" => Some(tonic::Code::ResourceExhausted),
            "unavailable" => Some(tonic::Code::Unavailable),
            _ => None,
        })
        .collect();
    let retries = policy.num_retries.as_ref().map_or(1, |n| n.value);
    if retries == 0 {
        return Err(refuse(
            name,
            format!("{at}.retry_policy.num_retries error:must be at least 1"),
        ));
    }
    let (base, max) = match &policy.retry_back_off {
        None => (Duration::from_millis(25), Duration::from_millis(250)),
        Some(back_off) => {
            let base = back_off
                .base_interval
                .as_ref()
                .and_then(duration)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    refuse(
                        name,
                        format!(
                            "{at}.retry_policy.retry_back_off.base_interval error:must be present and positive"
                        ),
                    )
                })?;
            let max = match back_off.max_interval.as_ref() {
                None => base * 10,
                Some(max) => duration(max).filter(|m| *m >= base).ok_or_else(|| {
                    refuse(
                        name,
                        format!(
                            "{at}.retry_policy.retry_back_off.max_interval error:must not be below base_interval"
                        ),
                    )
                })?,
            };
            (base, max)
        }
    };
    if codes.is_empty() {
        return Ok(None);
    }
    Ok(Some(RetryPolicy {
        max_attempts: retries.saturating_add(1),
        initial_backoff: base,
        max_backoff: max,
        backoff_multiplier: 2.0,
        retryable_status_codes: codes,
    }))
}

fn refuse(name: &str, message: impl Into<String>) -> ResourceError {
    ResourceError {
        name: Some(name.to_owned()),
        message: message.into(),
    }
}

fn compile(pattern: &str, at: &str, name: &str) -> Result<regex::Regex, ResourceError> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| refuse(name, format!("{at} error:invalid regex: {e}")))
}

fn duration(d: &envoy_types::pb::google::protobuf::Duration) -> Option<Duration> {
    let seconds = u64::try_from(d.seconds).ok()?;
    let nanos = u32::try_from(d.nanos).ok()?;
    Some(Duration::new(seconds, nanos))
}

// Control planes still send the deprecated matchers; gRPC takes both them
// and `string_match`.
#[allow(deprecated)]
fn header_matcher(
    m: &PbHeaderMatcher,
    at: &str,
    name: &str,
) -> Result<HeaderMatcher, ResourceError> {
    use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
    let header = m.name.to_ascii_lowercase();
    let mut ignore_case = false;
    let matcher = match &m.header_match_specifier {
        Some(HeaderMatchSpecifier::StringMatch(string)) => {
            ignore_case = string.ignore_case;
            let fold = |v: &String| {
                if ignore_case {
                    v.to_ascii_lowercase()
                } else {
                    v.clone()
                }
            };
            match &string.match_pattern {
                Some(MatchPattern::Exact(v)) => HeaderMatch::Exact(fold(v)),
                Some(MatchPattern::Prefix(v)) => HeaderMatch::Prefix(fold(v)),
                Some(MatchPattern::Suffix(v)) => HeaderMatch::Suffix(fold(v)),
                Some(MatchPattern::Contains(v)) => HeaderMatch::Contains(fold(v)),
                Some(MatchPattern::SafeRegex(regex)) => HeaderMatch::Regex(compile(
                    &regex.regex,
                    &format!("{at}.string_match.safe_regex"),
                    name,
                )?),
                _ => {
                    return Err(refuse(name, format!("{at}.string_match error:unsupported")));
                }
            }
        }
        Some(HeaderMatchSpecifier::ExactMatch(v)) => HeaderMatch::Exact(v.clone()),
        Some(HeaderMatchSpecifier::PrefixMatch(v)) => HeaderMatch::Prefix(v.clone()),
        Some(HeaderMatchSpecifier::SuffixMatch(v)) => HeaderMatch::Suffix(v.clone()),
        Some(HeaderMatchSpecifier::ContainsMatch(v)) => HeaderMatch::Contains(v.clone()),
        Some(HeaderMatchSpecifier::PresentMatch(present)) => HeaderMatch::Present(*present),
        Some(HeaderMatchSpecifier::RangeMatch(range)) => HeaderMatch::Range(range.start, range.end),
        Some(HeaderMatchSpecifier::SafeRegexMatch(regex)) => HeaderMatch::Regex(compile(
            &regex.regex,
            &format!("{at}.safe_regex_match"),
            name,
        )?),
        _ => {
            return Err(refuse(
                name,
                format!("{at} error:unsupported header matcher"),
            ));
        }
    };
    Ok(HeaderMatcher {
        name: header,
        matcher,
        invert: m.invert_match,
        ignore_case,
    })
}

/// Decodes and checks one `RouteConfiguration`.
pub fn decode(any: &Any) -> Result<RouteConfigUpdate, ResourceError> {
    let config = RouteConfiguration::decode(any.value.as_slice()).map_err(|e| ResourceError {
        name: None,
        message: format!("can't decode RouteConfiguration: {e}"),
    })?;
    from_proto(&config)
}

/// Checks a `RouteConfiguration` (also one inline in a listener).
pub fn from_proto(config: &RouteConfiguration) -> Result<RouteConfigUpdate, ResourceError> {
    let name = config.name.clone();
    let mut virtual_hosts = Vec::with_capacity(config.virtual_hosts.len());
    for (i, host) in config.virtual_hosts.iter().enumerate() {
        let mut routes = Vec::with_capacity(host.routes.len());
        let host_retry = match &host.retry_policy {
            Some(policy) => retry_policy(policy, &format!("field:virtual_hosts[{i}]"), &name)?,
            None => None,
        };
        for (j, route) in host.routes.iter().enumerate() {
            let at = format!("field:virtual_hosts[{i}].routes[{j}]");
            let Some(matcher) = &route.r#match else {
                return Err(refuse(&name, format!("{at}.match error:field not present")));
            };
            let case_sensitive = matcher.case_sensitive.as_ref().is_none_or(|c| c.value);
            let path = match &matcher.path_specifier {
                Some(PathSpecifier::Prefix(p)) => PathMatch::Prefix(p.clone()),
                Some(PathSpecifier::Path(p)) => PathMatch::Path(p.clone()),
                Some(PathSpecifier::SafeRegex(r)) => {
                    let pattern = if case_sensitive {
                        r.regex.clone()
                    } else {
                        format!("(?i:{})", r.regex)
                    };
                    PathMatch::Regex(compile(&pattern, &format!("{at}.match.safe_regex"), &name)?)
                }
                _ => {
                    return Err(refuse(
                        &name,
                        format!("{at}.match error:unsupported path matcher"),
                    ));
                }
            };
            let headers = matcher
                .headers
                .iter()
                .enumerate()
                .map(|(k, h)| header_matcher(h, &format!("{at}.match.headers[{k}]"), &name))
                .collect::<Result<_, _>>()?;
            let fraction_per_million = match matcher
                .runtime_fraction
                .as_ref()
                .and_then(|f| f.default_value.as_ref())
            {
                None => None,
                Some(percent) => {
                    let scale = match DenominatorType::try_from(percent.denominator) {
                        Ok(DenominatorType::Hundred) => 10_000,
                        Ok(DenominatorType::TenThousand) => 100,
                        Ok(DenominatorType::Million) => 1,
                        Err(_) => {
                            return Err(refuse(
                                &name,
                                format!("{at}.match.runtime_fraction error:unknown denominator"),
                            ));
                        }
                    };
                    Some(percent.numerator.saturating_mul(scale).min(1_000_000))
                }
            };
            let mut route_retry = host_retry.clone();
            let (action, max_stream_duration, hash_policies) = match &route.action {
                Some(Action::Route(action)) => {
                    let target = match &action.cluster_specifier {
                        Some(ClusterSpecifier::Cluster(cluster)) if !cluster.is_empty() => {
                            RouteAction::Cluster(cluster.clone())
                        }
                        Some(ClusterSpecifier::WeightedClusters(weighted)) => {
                            let clusters: Vec<(String, u32)> = weighted
                                .clusters
                                .iter()
                                .map(|c| (c.name.clone(), c.weight.as_ref().map_or(0, |w| w.value)))
                                .collect();
                            let total: u64 = clusters.iter().map(|(_, w)| u64::from(*w)).sum();
                            if clusters.is_empty() || total == 0 || total > u64::from(u32::MAX) {
                                return Err(refuse(
                                    &name,
                                    format!(
                                        "{at}.route.weighted_clusters error:weights must sum to between 1 and 4294967295, got {total}"
                                    ),
                                ));
                            }
                            if clusters.iter().any(|(c, _)| c.is_empty()) {
                                return Err(refuse(
                                    &name,
                                    format!(
                                        "{at}.route.weighted_clusters error:a cluster without a name"
                                    ),
                                ));
                            }
                            RouteAction::Weighted(clusters)
                        }
                        _ => {
                            return Err(refuse(
                                &name,
                                format!("{at}.route error:no supported cluster specifier"),
                            ));
                        }
                    };
                    if let Some(policy) = &action.retry_policy {
                        route_retry = retry_policy(policy, &format!("{at}.route"), &name)?;
                    }
                    let max = action.max_stream_duration.as_ref().and_then(|m| {
                        m.grpc_timeout_header_max
                            .as_ref()
                            .or(m.max_stream_duration.as_ref())
                            .and_then(duration)
                    });
                    let hashes = action
                        .hash_policy
                        .iter()
                        .filter_map(|policy| match &policy.policy_specifier {
                            Some(PolicySpecifier::Header(header)) => Some(HashPolicy::Header {
                                name: header.header_name.to_ascii_lowercase(),
                                terminal: policy.terminal,
                            }),
                            Some(PolicySpecifier::FilterState(state))
                                if state.key == "io.grpc.channel_id" =>
                            {
                                Some(HashPolicy::ChannelId {
                                    terminal: policy.terminal,
                                })
                            }
                            // Others are ignored, as gRPC does.
                            _ => None,
                        })
                        .collect();
                    (target, max, hashes)
                }
                Some(Action::NonForwardingAction(_)) => {
                    (RouteAction::NonForwarding, None, Vec::new())
                }
                _ => (RouteAction::Unsupported, None, Vec::new()),
            };
            routes.push(Route {
                path,
                case_sensitive,
                headers,
                fraction_per_million,
                action,
                max_stream_duration,
                hash_policies,
                retry_policy: route_retry,
            });
        }
        virtual_hosts.push(VirtualHost {
            domains: host
                .domains
                .iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
            routes,
        });
    }
    Ok(RouteConfigUpdate {
        name,
        virtual_hosts,
    })
}

fn decode_value(any: &Any) -> Result<(String, Value), ResourceError> {
    let update = decode(any)?;
    if update.name.is_empty() {
        return Err(ResourceError {
            name: None,
            message: "field:name error:empty".into(),
        });
    }
    Ok((update.name.clone(), Arc::new(update)))
}

/// The virtual host for `authority` (A28): an exact domain first, then
/// the longest `*.suffix`, then the longest `prefix.*`, then `*`.
pub fn virtual_host<'a>(hosts: &'a [VirtualHost], authority: &str) -> Option<&'a VirtualHost> {
    let authority = authority.to_ascii_lowercase();
    // (kind: 0 exact, 1 suffix, 2 prefix, 3 any; then longer is better)
    let mut best: Option<((u8, std::cmp::Reverse<usize>), &VirtualHost)> = None;
    for host in hosts {
        for domain in &host.domains {
            let rank = if *domain == "*" {
                Some(3)
            } else if let Some(suffix) = domain.strip_prefix('*') {
                authority.ends_with(suffix).then_some(1)
            } else if let Some(prefix) = domain.strip_suffix('*') {
                authority.starts_with(prefix).then_some(2)
            } else {
                (*domain == authority).then_some(0)
            };
            if let Some(kind) = rank {
                let key = (kind, std::cmp::Reverse(domain.len()));
                if best.as_ref().is_none_or(|(b, _)| key < *b) {
                    best = Some((key, host));
                }
            }
        }
    }
    best.map(|(_, host)| host)
}

impl HeaderMatcher {
    /// Whether the call's headers match (values of a repeated header
    /// joined by `,`; `-bin` headers never match, as gRPC says).
    pub fn matches(&self, headers: &http::HeaderMap) -> bool {
        let value: Option<String> = if self.name.ends_with("-bin") {
            None
        } else {
            let mut values = headers
                .get_all(self.name.as_str())
                .iter()
                .filter_map(|v| v.to_str().ok());
            values.next().map(|first| {
                values.fold(first.to_owned(), |mut joined, v| {
                    joined.push(',');
                    joined.push_str(v);
                    joined
                })
            })
        };
        let value = match value {
            Some(v) if self.ignore_case => Some(v.to_ascii_lowercase()),
            other => other,
        };
        let matched = match (&self.matcher, value.as_deref()) {
            (HeaderMatch::Present(present), value) => value.is_some() == *present,
            (_, None) => false,
            (HeaderMatch::Exact(want), Some(v)) => v == want,
            (HeaderMatch::Prefix(want), Some(v)) => v.starts_with(want.as_str()),
            (HeaderMatch::Suffix(want), Some(v)) => v.ends_with(want.as_str()),
            (HeaderMatch::Contains(want), Some(v)) => v.contains(want.as_str()),
            (HeaderMatch::Range(start, end), Some(v)) => {
                v.parse::<i64>().is_ok_and(|n| *start <= n && n < *end)
            }
            (HeaderMatch::Regex(regex), Some(v)) => regex.is_match(v),
        };
        matched != self.invert
    }
}

impl Route {
    /// Whether a call to `path` with `headers` takes this route;
    /// `draw` is a random number below one million (for
    /// `runtime_fraction`).
    pub fn matches(&self, path: &str, headers: &http::HeaderMap, draw: u32) -> bool {
        let path_ok = match &self.path {
            PathMatch::Prefix(prefix) if self.case_sensitive => path.starts_with(prefix.as_str()),
            PathMatch::Prefix(prefix) => path
                .get(..prefix.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(prefix)),
            PathMatch::Path(want) if self.case_sensitive => path == want,
            PathMatch::Path(want) => path.eq_ignore_ascii_case(want),
            PathMatch::Regex(regex) => regex.is_match(path),
        };
        path_ok
            && self.headers.iter().all(|h| h.matches(headers))
            && self.fraction_per_million.is_none_or(|f| draw < f)
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::route::v3::retry_policy::RetryBackOff;
    use envoy_types::pb::envoy::config::route::v3::route_action::HashPolicy as PbHashPolicy;
    use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::Header;
    use envoy_types::pb::envoy::config::route::v3::weighted_cluster::ClusterWeight;
    use envoy_types::pb::envoy::config::route::v3::{
        RetryPolicy as PbRetryPolicy, Route as PbRoute, RouteAction as PbRouteAction, RouteMatch,
        VirtualHost as PbVirtualHost, WeightedCluster,
    };
    use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher;
    use envoy_types::pb::google::protobuf::UInt32Value;

    use super::*;

    fn route(
        path: PathSpecifier,
        headers: Vec<PbHeaderMatcher>,
        cluster: ClusterSpecifier,
    ) -> PbRoute {
        PbRoute {
            r#match: Some(RouteMatch {
                path_specifier: Some(path),
                headers,
                ..Default::default()
            }),
            action: Some(Action::Route(PbRouteAction {
                cluster_specifier: Some(cluster),
                hash_policy: vec![PbHashPolicy {
                    policy_specifier: Some(PolicySpecifier::Header(Header {
                        header_name: "X-User".into(),
                        regex_rewrite: None,
                    })),
                    terminal: false,
                }],
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn config(hosts: Vec<PbVirtualHost>) -> RouteConfiguration {
        RouteConfiguration {
            name: "routes".into(),
            virtual_hosts: hosts,
            ..Default::default()
        }
    }

    fn any(config: &RouteConfiguration) -> Any {
        Any {
            type_url: TYPE_URL.into(),
            value: config.encode_to_vec(),
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn the_most_specific_domain_wins() {
        let host = |domains: &[&str]| VirtualHost {
            domains: domains.iter().map(|d| d.to_string()).collect(),
            routes: Vec::new(),
        };
        let hosts = [
            host(&["*"]),
            host(&["orders.*"]),
            host(&["*.example.com"]),
            host(&["*.shop.example.com"]),
            host(&["orders.shop.example.com"]),
        ];
        let picked = |authority: &str| {
            let found = virtual_host(&hosts, authority).unwrap();
            hosts.iter().position(|h| std::ptr::eq(h, found)).unwrap()
        };
        assert_eq!(picked("orders.shop.example.com"), 4, "exact");
        assert_eq!(picked("cart.shop.example.com"), 3, "longest suffix");
        assert_eq!(picked("cart.example.com"), 2);
        assert_eq!(picked("orders.internal"), 1, "prefix");
        assert_eq!(picked("anything"), 0, "wildcard");
        assert!(virtual_host(&hosts[1..2], "payments").is_none());
    }

    // The deprecated matcher, as control planes still send it.
    #[allow(deprecated)]
    #[test]
    fn routes_match_by_path_and_headers_and_carry_their_action() {
        let regex_header = PbHeaderMatcher {
            name: "x-tier".into(),
            header_match_specifier: Some(HeaderMatchSpecifier::SafeRegexMatch(RegexMatcher {
                regex: "gold|platinum".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let not_canary = PbHeaderMatcher {
            name: "x-canary".into(),
            header_match_specifier: Some(HeaderMatchSpecifier::PresentMatch(true)),
            invert_match: true,
            ..Default::default()
        };
        let weighted = ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: vec![
                ClusterWeight {
                    name: "a".into(),
                    weight: Some(UInt32Value { value: 80 }),
                    ..Default::default()
                },
                ClusterWeight {
                    name: "b".into(),
                    weight: Some(UInt32Value { value: 20 }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        });
        let update = decode(&any(&config(vec![PbVirtualHost {
            domains: vec!["*".into()],
            routes: vec![
                route(
                    PathSpecifier::Prefix("/movies.v1.MoviesService/".into()),
                    vec![regex_header, not_canary],
                    ClusterSpecifier::Cluster("premium".into()),
                ),
                route(PathSpecifier::Prefix("".into()), vec![], weighted),
            ],
            ..Default::default()
        }])))
        .unwrap();
        let routes = &update.virtual_hosts[0].routes;
        let path = "/movies.v1.MoviesService/GetMovie";
        assert!(routes[0].matches(path, &headers(&[("x-tier", "gold")]), 0));
        assert!(
            !routes[0].matches(path, &headers(&[("x-tier", "golden")]), 0),
            "regex matches whole values"
        );
        assert!(!routes[0].matches(path, &headers(&[("x-tier", "gold"), ("x-canary", "1")]), 0));
        assert!(!routes[0].matches("/other.Service/Call", &headers(&[("x-tier", "gold")]), 0));
        assert!(routes[1].matches(path, &headers(&[]), 0));
        let folded = header_matcher(
            &PbHeaderMatcher {
                name: "X-Env".into(),
                header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(
                    envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher {
                        ignore_case: true,
                        match_pattern: Some(
                            envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern::Prefix(
                                "Prod".into(),
                            ),
                        ),
                    },
                )),
                ..Default::default()
            },
            "field:h",
            "routes",
        )
        .unwrap();
        assert!(folded.matches(&headers(&[("x-env", "PRODUCTION")])));
        assert!(!folded.matches(&headers(&[("x-env", "staging")])));
        assert_eq!(routes[0].action, RouteAction::Cluster("premium".into()));
        assert_eq!(
            routes[1].action,
            RouteAction::Weighted(vec![("a".into(), 80), ("b".into(), 20)])
        );
        assert_eq!(
            routes[0].hash_policies,
            [HashPolicy::Header {
                name: "x-user".into(),
                terminal: false
            }]
        );
    }

    #[test]
    fn bad_regexes_and_weights_are_refused() {
        let bad_regex = route(
            PathSpecifier::SafeRegex(RegexMatcher {
                regex: "(unclosed".into(),
                ..Default::default()
            }),
            vec![],
            ClusterSpecifier::Cluster("c".into()),
        );
        let zero_weights = route(
            PathSpecifier::Prefix("/".into()),
            vec![],
            ClusterSpecifier::WeightedClusters(WeightedCluster {
                clusters: vec![ClusterWeight {
                    name: "a".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        );
        for (route, expected) in [
            (bad_regex, "invalid regex"),
            (zero_weights, "weights must sum"),
        ] {
            let error = decode(&any(&config(vec![PbVirtualHost {
                domains: vec!["*".into()],
                routes: vec![route],
                ..Default::default()
            }])))
            .unwrap_err();
            assert_eq!(error.name.as_deref(), Some("routes"));
            assert!(error.message.contains(expected), "{}", error.message);
        }
    }

    fn with_retry(
        host_retry: Option<PbRetryPolicy>,
        route_retry: Option<PbRetryPolicy>,
    ) -> Result<RouteConfigUpdate, ResourceError> {
        let mut r = route(
            PathSpecifier::Prefix(String::new()),
            Vec::new(),
            ClusterSpecifier::Cluster("a".into()),
        );
        if let Some(Action::Route(action)) = &mut r.action {
            action.retry_policy = route_retry;
        }
        from_proto(&config(vec![PbVirtualHost {
            domains: vec!["*".into()],
            routes: vec![r],
            retry_policy: host_retry,
            ..Default::default()
        }]))
    }

    fn pb_retry(
        on: &str,
        retries: Option<u32>,
        back_off: Option<(u64, Option<u64>)>,
    ) -> PbRetryPolicy {
        let millis = |ms: u64| envoy_types::pb::google::protobuf::Duration {
            seconds: (ms / 1000) as i64,
            nanos: ((ms % 1000) * 1_000_000) as i32,
        };
        PbRetryPolicy {
            retry_on: on.into(),
            num_retries: retries.map(|value| UInt32Value { value }),
            retry_back_off: back_off.map(|(base, max)| RetryBackOff {
                base_interval: Some(millis(base)),
                max_interval: max.map(millis),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn retry_policies_follow_a44() {
        let retry_of =
            |update: RouteConfigUpdate| update.virtual_hosts[0].routes[0].retry_policy.clone();
        // Defaults: one retry, 25 ms to 250 ms; unknown conditions ignored.
        let policy = retry_of(
            with_retry(
                None,
                Some(pb_retry("unavailable,5xx,cancelled", None, None)),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(policy.max_attempts, 2);
        assert_eq!(policy.initial_backoff, Duration::from_millis(25));
        assert_eq!(policy.max_backoff, Duration::from_millis(250));
        assert_eq!(
            policy.retryable_status_codes,
            [tonic::Code::Unavailable, tonic::Code::Cancelled]
        );
        // The virtual host's applies unless the route has its own.
        let host = Some(pb_retry("internal", Some(3), Some((100, None))));
        let policy = retry_of(with_retry(host.clone(), None).unwrap()).unwrap();
        assert_eq!(
            (policy.max_attempts, policy.max_backoff),
            (4, Duration::from_secs(1))
        );
        let policy =
            retry_of(with_retry(host, Some(pb_retry("deadline-exceeded", Some(1), None))).unwrap())
                .unwrap();
        assert_eq!(
            policy.retryable_status_codes,
            [tonic::Code::DeadlineExceeded]
        );
        // No status gRPC retries on: no retries.
        assert!(
            retry_of(with_retry(None, Some(pb_retry("5xx,reset", None, None))).unwrap()).is_none()
        );
        // Refused: zero retries, a missing or zero base, a max below it.
        for (bad, field) in [
            (pb_retry("unavailable", Some(0), None), "num_retries"),
            (
                pb_retry("unavailable", None, Some((0, None))),
                "base_interval",
            ),
            (
                pb_retry("unavailable", None, Some((100, Some(50)))),
                "max_interval",
            ),
        ] {
            let error = with_retry(None, Some(bad)).unwrap_err();
            assert!(error.message.contains(field), "{error:?}");
        }
    }
}
