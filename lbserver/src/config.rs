//! The balancer's configuration: a TOML file, the flag form, or the
//! embedded default registry.
//!
//! ```toml
//! listen = "127.0.0.1:50050"          # grpc.lb.v1 BalanceLoad
//! admin = "127.0.0.1:50051"           # /metrics, /status, /healthz, /drain
//! etcd = ["127.0.0.1:2379"]           # for etcd:/// sources (optional)
//!
//! [[service]]
//! name = "movies"                     # matched with or without ":port"
//! source = "127.0.0.1:50061,127.0.0.1:50062"   # or "dns:///…", "etcd:///…"
//! policy = "round_robin"              # or "weighted", or "subset" (see `assign`)
//! capacity_per_weight = 100.0          # "weighted": calls/s per weight unit; excess reported load → drops
//! subset_size = 10                    # backends per client with "subset"
//! drop_fraction = 0.0                 # share of picks clients drop (overload shedding)
//! health_service = "movies.v1.MoviesService"  # grpc.health.v1 name; "" = whole server; omit = no probe
//! client_stats_interval = "10s"
//! fallback = false                    # no healthy backend: tell clients to fall back
//! ```

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// The embedded default registry: three demo backends on loopback.
pub const DEFAULT_REGISTRY: &str = include_str!("../default-registry.toml");

/// Why a configuration was rejected. Its message names the file, the line
/// and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {field}: {message}")]
pub struct ConfigError {
    /// The file (or `<flags>`, `<embedded default>`).
    pub file: String,
    /// The 1-based line, or 0 when not known.
    pub line: usize,
    /// The field at fault (dotted path).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// How a service's server list is ordered and filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListPolicy {
    /// Every healthy backend once, in a stable order.
    RoundRobin,
    /// Backends repeated in proportion to their `weight` metadata.
    Weighted,
    /// Each client gets its own `subset_size` backends (deterministic
    /// subsetting), so connection counts stay bounded as fleets grow.
    Subset,
}

/// One balanced service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// Its name, as clients send it in the initial request.
    pub name: String,
    /// Where its backends come from: `ip:port,…` or a resolver target.
    pub source: String,
    /// List policy.
    pub policy: ListPolicy,
    /// Backends per client with [`ListPolicy::Subset`].
    pub subset_size: usize,
    /// The fraction of list entries that are drops, in `[0, 1)`.
    pub drop_fraction: f64,
    /// With [`ListPolicy::Weighted`]: calls/s one unit of weight can take.
    /// When set, the call rate clients report in ClientStats beyond the
    /// backends' spare capacity is shed as drops.
    pub capacity_per_weight: Option<f64>,
    /// The grpc.health.v1 service name to probe, or `None` for no probing.
    pub health_service: Option<String>,
    /// How often clients report ClientStats.
    pub client_stats_interval: Duration,
    /// Whether clients are told to fall back when no backend is healthy.
    pub fallback: bool,
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The BalanceLoad listener.
    pub listen: SocketAddr,
    /// The admin HTTP listener, if any.
    pub admin: Option<SocketAddr>,
    /// etcd endpoints for `etcd:///` sources.
    pub etcd: Vec<String>,
    /// The services.
    pub services: Vec<ServiceConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    admin: Option<String>,
    #[serde(default)]
    etcd: Vec<String>,
    #[serde(default, rename = "service")]
    services: Vec<RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    source: String,
    policy: Option<ListPolicy>,
    subset_size: Option<usize>,
    drop_fraction: Option<f64>,
    capacity_per_weight: Option<f64>,
    health_service: Option<String>,
    client_stats_interval: Option<String>,
    fallback: Option<bool>,
}

/// The default BalanceLoad address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50050";

impl Config {
    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: 0,
            field: "-".into(),
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, &file)
    }

    /// Parses TOML `text`; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(s.start)).unwrap_or(0);
            let message = e.message().to_owned();
            let field = field_from_message(&message).unwrap_or_else(|| "-".into());
            ConfigError {
                file: file.into(),
                line,
                field,
                message,
            }
        })?;
        // Field errors after parsing: find the line by searching for the key.
        let at = |field: &str, key: &str, message: String| ConfigError {
            file: file.into(),
            line: text
                .lines()
                .position(|l| l.trim_start().starts_with(key))
                .map(|i| i + 1)
                .unwrap_or(0),
            field: field.into(),
            message,
        };
        let listen = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = listen.parse().map_err(|e| {
            at(
                "listen",
                "listen",
                format!("{listen:?} is not ip:port: {e}"),
            )
        })?;
        let admin = match &raw.admin {
            Some(a) => Some(
                a.parse()
                    .map_err(|e| at("admin", "admin", format!("{a:?} is not ip:port: {e}")))?,
            ),
            None => None,
        };
        let mut services = Vec::new();
        for (i, s) in raw.services.into_iter().enumerate() {
            let field = |name: &str| format!("service[{i}].{name}");
            if s.name.is_empty() || s.name.len() >= 256 {
                return Err(at(&field("name"), "name", "must be 1 to 255 bytes".into()));
            }
            if services
                .iter()
                .any(|other: &ServiceConfig| other.name == s.name)
            {
                return Err(at(
                    &field("name"),
                    "name",
                    format!("service {:?} is defined twice", s.name),
                ));
            }
            if s.source.trim().is_empty() {
                return Err(at(
                    &field("source"),
                    "source",
                    "must name backends or a resolver target".into(),
                ));
            }
            let drop_fraction = s.drop_fraction.unwrap_or(0.0);
            if !(0.0..1.0).contains(&drop_fraction) {
                return Err(at(
                    &field("drop_fraction"),
                    "drop_fraction",
                    format!("{drop_fraction} is not in [0, 1)"),
                ));
            }
            let client_stats_interval = match &s.client_stats_interval {
                None => Duration::from_secs(10),
                Some(text) => parse_duration(text).ok_or_else(|| {
                    at(
                        &field("client_stats_interval"),
                        "client_stats_interval",
                        format!("{text:?} is not a duration like \"10s\" or \"500ms\""),
                    )
                })?,
            };
            let policy = s.policy.unwrap_or(ListPolicy::RoundRobin);
            if let Some(capacity) = s.capacity_per_weight {
                if !(capacity > 0.0 && capacity.is_finite()) {
                    return Err(at(
                        &field("capacity_per_weight"),
                        "capacity_per_weight",
                        format!("{capacity} is not a positive number of calls per second"),
                    ));
                }
                if policy != ListPolicy::Weighted {
                    return Err(at(
                        &field("capacity_per_weight"),
                        "capacity_per_weight",
                        "only applies with policy = \"weighted\"".into(),
                    ));
                }
            }
            services.push(ServiceConfig {
                name: s.name,
                source: s.source,
                policy,
                capacity_per_weight: s.capacity_per_weight,
                subset_size: match s.subset_size {
                    Some(0) => {
                        return Err(at(
                            &field("subset_size"),
                            "subset_size",
                            "must be at least 1".into(),
                        ));
                    }
                    Some(k) => k,
                    None => 10,
                },
                drop_fraction,
                health_service: s.health_service,
                client_stats_interval,
                fallback: s.fallback.unwrap_or(false),
            });
        }
        Ok(Config {
            listen,
            admin,
            etcd: raw.etcd,
            services,
        })
    }

    /// The embedded default registry.
    pub fn embedded_default() -> Config {
        Config::parse(DEFAULT_REGISTRY, "<embedded default>")
            .expect("the embedded default registry is valid")
    }

    /// The service a client's initial-request `name` refers to: an exact
    /// match, else the name without its `:port`.
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        find_service(&self.services, name)
    }
}

/// Matches `name` with or without a `:port` suffix.
pub fn find_service<'a>(services: &'a [ServiceConfig], name: &str) -> Option<&'a ServiceConfig> {
    services.iter().find(|s| s.name == name).or_else(|| {
        let bare = strip_port(name)?;
        services.iter().find(|s| s.name == bare)
    })
}

/// `host` of `host:port` (digits only after the last colon), or `None`.
pub fn strip_port(name: &str) -> Option<&str> {
    name.rsplit_once(':')
        .filter(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
        .map(|(host, _)| host)
}

/// `"10s"`, `"500ms"`, `"1m"`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| text.split_at(i))?;
    let n: u64 = number.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        _ => None,
    }
}

/// Pulls the field name out of a toml/serde message (`unknown field `x``,
/// `missing field `x``).
fn field_from_message(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let end = start + message[start..].find('`')?;
    Some(message[start..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_config_parses() {
        let text = r#"
listen = "127.0.0.1:7000"
admin = "127.0.0.1:7001"
etcd = ["127.0.0.1:2379"]

[[service]]
name = "movies"
source = "127.0.0.1:1,127.0.0.1:2"
drop_fraction = 0.25
health_service = ""
client_stats_interval = "500ms"
fallback = true

[[service]]
name = "orders"
source = "etcd:///orders"
policy = "weighted"
"#;
        let c = Config::parse(text, "x.toml").unwrap();
        assert_eq!(c.listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(c.services.len(), 2);
        assert_eq!(
            c.services[0].client_stats_interval,
            Duration::from_millis(500)
        );
        assert_eq!(c.services[0].health_service.as_deref(), Some(""));
        assert_eq!(c.services[1].policy, ListPolicy::Weighted);
        assert_eq!(c.service("movies:443").unwrap().name, "movies");
        assert!(c.service("nope").is_none());
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let cases = [
            ("listen = \"nowhere\"\n", 1, "listen"),
            (
                "\n\n[[service]]\nname = \"a\"\nsource = \"x\"\nbogus = 1\n",
                6,
                "bogus",
            ),
            ("[[service]]\nname = \"a\"\n", 1, "source"),
            (
                "[[service]]\nname = \"a\"\nsource = \"x\"\ndrop_fraction = 1.5\n",
                4,
                "service[0].drop_fraction",
            ),
            (
                "[[service]]\nname = \"a\"\nsource = \"x\"\nclient_stats_interval = \"soon\"\n",
                4,
                "service[0].client_stats_interval",
            ),
            (
                "[[service]]\nname = \"a\"\nsource = \"x\"\n[[service]]\nname = \"a\"\nsource = \"y\"\n",
                2,
                "service[1].name",
            ),
        ];
        for (text, line, field) in cases {
            let e = Config::parse(text, "bad.toml").unwrap_err();
            assert_eq!((e.line, e.field.as_str()), (line, field), "{text:?}: {e}");
            assert!(
                e.to_string()
                    .starts_with(&format!("bad.toml:{line}: {field}: ")),
                "{e}"
            );
        }
    }

    #[test]
    fn the_embedded_default_is_valid() {
        let c = Config::embedded_default();
        assert!(!c.services.is_empty());
    }
}
