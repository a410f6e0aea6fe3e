//! The balancer's configuration: a TOML file, the flag form, or the
//! embedded default registry.
//!
//! ```toml
//! listen = "127.0.0.1:50050"          # grpc.lb.v1 BalanceLoad
//! admin = "127.0.0.1:50051"           # /metrics, /status, /healthz, /drain
//! etcd = ["127.0.0.1:2379"]           # for etcd:/// sources (optional)
//! admin_token_file = "/etc/waypost/admin-token"  # mutations need `Authorization: Bearer <token>`
//! admin_auth_reads = false            # true: reads need the token too
//! connection_limit = 10000            # open connections per listener, at most
//! handshake_timeout = "10s"           # a connection must send its first bytes within this
//!
//! [tls]                               # both listeners speak TLS (optional)
//! cert_file = "/etc/waypost/tls/cert.pem"
//! key_file = "/etc/waypost/tls/key.pem"
//! client_ca_file = "/etc/waypost/tls/clients-ca.pem"  # mTLS: BalanceLoad clients need a certificate from this CA;
//!                                     # on the admin port one stands in for the admin token
//! reload_interval = "10m"             # files are re-read this often; changes apply to new connections
//!
//! [[service]]
//! name = "movies"                     # matched with or without ":port"
//! source = "127.0.0.1:50061,127.0.0.1:50062"   # or "dns:///…", "etcd:///…"
//! policy = "round_robin"              # or "weighted", "subset", "ring_hash" (see `assign`, `xds`)
//! capacity_per_weight = 100.0          # "weighted": calls/s per weight unit; excess reported load → drops
//! subset_size = 10                    # backends per client with "subset"
//! hash_header = "x-user"              # with policy = "ring_hash" (xDS clients): the header each call hashes
//! xds_rds = false                     # xDS clients: routes by RDS instead of inline in the listener
//! drop_fraction = 0.0                 # share of picks clients drop (overload shedding)
//! health_service = "movies.v1.MoviesService"  # grpc.health.v1 name; "" = whole server; omit = no probe
//! client_stats_interval = "10s"
//! fallback = false                    # no healthy backend: tell clients to fall back
//! backend_tls = false                 # probes speak TLS to the backends
//! backend_ca_file = "/etc/waypost/backend-ca.pem"  # with backend_tls (default: system roots)
//! backend_server_name = "movies.internal"          # with backend_tls (default: each backend's IP)
//! ```
//!
//! Every error names the file, the line of the value at fault (from the
//! spans toml reports) and the field, and quotes long values cut short.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::Value;

/// The embedded default registry: three demo backends on loopback.
pub const DEFAULT_REGISTRY: &str = include_str!("../default-registry.toml");

/// The default BalanceLoad address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50050";

/// The longest service name, exclusive (the grpclb initial request's limit).
pub const MAX_NAME_BYTES: usize = 256;

/// The longest duration a config accepts (one day).
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListPolicy {
    /// Every healthy backend once, in a stable order.
    RoundRobin,
    /// Backends repeated in proportion to their `weight` metadata.
    Weighted,
    /// Each client gets its own `subset_size` backends (deterministic
    /// subsetting), so connection counts stay bounded as fleets grow.
    /// (xDS clients get every backend: xDS has no subsetting.)
    Subset,
    /// Consistent hashing on the request header `hash_header`: xDS clients
    /// get a RING_HASH cluster, so each header value sticks to one backend.
    /// (grpclb clients get the round-robin list: grpclb cannot hash.)
    RingHash,
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
    /// The request header [`ListPolicy::RingHash`] hashes (lower case).
    pub hash_header: Option<String>,
    /// xDS clients get the routes by RDS instead of inline in the listener.
    pub xds_rds: bool,
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
    /// Whether health probes speak TLS to the backends, and how they
    /// verify them.
    pub backend_tls: Option<BackendTls>,
}

/// How health probes verify TLS backends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendTls {
    /// CA certificates (PEM, re-read when it changes); `None`: the system's
    /// roots.
    pub ca_file: Option<PathBuf>,
    /// The name to verify backends as; `None`: each backend's IP address.
    pub server_name: Option<String>,
}

impl ServiceConfig {
    /// A round-robin service over `source` with the defaults, probing each
    /// backend's whole-server health (what the flag form `--service` gives).
    pub fn new(name: impl Into<String>, source: impl Into<String>) -> ServiceConfig {
        ServiceConfig {
            name: name.into(),
            source: source.into(),
            policy: ListPolicy::RoundRobin,
            subset_size: 10,
            hash_header: None,
            xds_rds: false,
            drop_fraction: 0.0,
            capacity_per_weight: None,
            health_service: Some(String::new()),
            client_stats_interval: Duration::from_secs(10),
            fallback: false,
            backend_tls: None,
        }
    }
}

/// Who may use the admin endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminAuth {
    /// A file holding the bearer token mutations need (`None`: no token).
    pub token_file: Option<PathBuf>,
    /// Whether reads (`/status`, `/metrics`) need the token too.
    pub auth_reads: bool,
}

/// Bounds on what connecting clients may hold, per listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once; further ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// A connection that sends nothing within this is closed.
    pub handshake_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// TLS on the balancer's listeners: its certificate and key, and
/// optionally the CA client certificates must chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// The certificate chain (PEM).
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    /// CA certificates (PEM) client certificates must chain to: BalanceLoad
    /// clients without one are refused, and on the admin port one stands in
    /// for the admin token.
    pub client_ca_file: Option<PathBuf>,
    /// How often the files are re-read (changes apply to new connections).
    pub reload_interval: Duration,
}

impl ListenerTls {
    /// From the three files, re-read every [`waypost_balancer::tls::DEFAULT_REFRESH`].
    pub fn new(
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
        client_ca_file: Option<PathBuf>,
    ) -> ListenerTls {
        ListenerTls {
            cert_file: cert_file.into(),
            key_file: key_file.into(),
            client_ca_file,
            reload_interval: waypost_balancer::tls::DEFAULT_REFRESH,
        }
    }

    /// The BalanceLoad listener's configuration: ALPN `h2`, client
    /// certificates required with a client CA.
    pub fn balance_load(&self) -> waypost_balancer::ServerTlsConfig {
        waypost_balancer::ServerTlsConfig::from_files(
            &self.cert_file,
            &self.key_file,
            self.client_ca_file.clone(),
        )
        .refresh_interval(self.reload_interval)
    }

    /// The admin listener's configuration: ALPN `http/1.1`; a client
    /// certificate is optional, but one that is sent must verify.
    pub fn admin(&self) -> waypost_balancer::ServerTlsConfig {
        self.balance_load()
            .alpn_protocols(&["http/1.1"])
            .client_auth_optional(true)
    }
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
    /// Who may use the admin endpoint.
    pub admin_auth: AdminAuth,
    /// Connection bounds of both listeners.
    pub limits: ConnectionLimits,
    /// TLS on both listeners, if any.
    pub tls: Option<ListenerTls>,
}

type Field = Option<Spanned<Value>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Field,
    admin: Field,
    etcd: Field,
    admin_token_file: Field,
    admin_auth_reads: Field,
    connection_limit: Field,
    handshake_timeout: Field,
    tls: Option<Spanned<RawTls>>,
    service: Option<Spanned<Vec<Spanned<RawService>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: Field,
    key_file: Field,
    client_ca_file: Field,
    reload_interval: Field,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Field,
    source: Field,
    policy: Field,
    subset_size: Field,
    hash_header: Field,
    xds_rds: Field,
    drop_fraction: Field,
    capacity_per_weight: Field,
    health_service: Field,
    client_stats_interval: Field,
    fallback: Field,
    backend_tls: Field,
    backend_ca_file: Field,
    backend_server_name: Field,
}

/// Where errors point: the file's name and text.
struct Doc<'a> {
    file: &'a str,
    text: &'a str,
}

impl Doc<'_> {
    fn line_of(&self, offset: usize) -> usize {
        let offset = offset.min(self.text.len());
        self.text.as_bytes()[..offset]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    fn error(&self, offset: Option<usize>, field: &str, message: String) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            line: offset.map_or(0, |o| self.line_of(o)),
            field: field.to_owned(),
            message,
        }
    }

    fn at(&self, value: &Spanned<Value>, field: &str, message: String) -> ConfigError {
        self.error(Some(value.span().start), field, message)
    }

    fn string<'v>(&self, value: &'v Spanned<Value>, field: &str) -> Result<&'v str, ConfigError> {
        match value.get_ref() {
            Value::String(s) => Ok(s),
            other => Err(self.at(value, field, wrong_type(other, "a string"))),
        }
    }

    fn bool(&self, value: &Spanned<Value>, field: &str) -> Result<bool, ConfigError> {
        match value.get_ref() {
            Value::Boolean(b) => Ok(*b),
            other => Err(self.at(value, field, wrong_type(other, "true or false"))),
        }
    }

    fn float(&self, value: &Spanned<Value>, field: &str) -> Result<f64, ConfigError> {
        match value.get_ref() {
            Value::Float(f) => Ok(*f),
            Value::Integer(i) => Ok(*i as f64),
            other => Err(self.at(value, field, wrong_type(other, "a number"))),
        }
    }

    fn integer(
        &self,
        value: &Spanned<Value>,
        field: &str,
        range: std::ops::RangeInclusive<i64>,
    ) -> Result<i64, ConfigError> {
        match value.get_ref() {
            Value::Integer(i) if range.contains(i) => Ok(*i),
            Value::Integer(i) => Err(self.at(
                value,
                field,
                format!("{i} is not in {}..={}", range.start(), range.end()),
            )),
            other => Err(self.at(value, field, wrong_type(other, "a whole number"))),
        }
    }

    fn duration(&self, value: &Spanned<Value>, field: &str) -> Result<Duration, ConfigError> {
        let text = self.string(value, field)?;
        parse_duration(text).map_err(|why| self.at(value, field, format!("{}: {why}", quote(text))))
    }

    fn address(&self, value: &Spanned<Value>, field: &str) -> Result<SocketAddr, ConfigError> {
        let text = self.string(value, field)?;
        text.parse()
            .map_err(|e| self.at(value, field, format!("{} is not ip:port: {e}", quote(text))))
    }
}

/// `"expected a string, got integer 50050"`.
fn wrong_type(value: &Value, expected: &str) -> String {
    let shown = match value {
        Value::String(text) => quote(text),
        other => {
            let text = other.to_string();
            // As written when short (`50050`, `true`); quoted and cut when long.
            if text.chars().nth(80).is_none() {
                text
            } else {
                quote(&text)
            }
        }
    };
    format!("expected {expected}, got {} {shown}", value.type_str())
}

/// `text` in quotes, cut to 80 characters, so a huge value is not echoed
/// whole into an error or a log line.
pub fn quote(text: &str) -> String {
    waypost_resolver::Quoted(text).to_string()
}

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
        let doc = Doc { file, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            // toml's own message may quote a key of any length: cut it.
            let message = cut_message(e.message());
            let field = field_from_message(&message).unwrap_or_else(|| "-".into());
            doc.error(e.span().map(|s| s.start), &field, message)
        })?;
        let listen = match &raw.listen {
            Some(v) => doc.address(v, "listen")?,
            None => DEFAULT_LISTEN.parse().expect("a valid default"),
        };
        let admin = raw
            .admin
            .as_ref()
            .map(|v| doc.address(v, "admin"))
            .transpose()?;
        let etcd = match &raw.etcd {
            None => Vec::new(),
            Some(v) => match v.get_ref() {
                Value::Array(items) => items
                    .iter()
                    .map(|item| match item {
                        Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
                        other => Err(doc.at(v, "etcd", wrong_type(other, "an endpoint string"))),
                    })
                    .collect::<Result<_, _>>()?,
                other => return Err(doc.at(v, "etcd", wrong_type(other, "a list of endpoints"))),
            },
        };
        let admin_auth = AdminAuth {
            token_file: raw
                .admin_token_file
                .as_ref()
                .map(|v| doc.string(v, "admin_token_file").map(PathBuf::from))
                .transpose()?,
            auth_reads: raw
                .admin_auth_reads
                .as_ref()
                .map(|v| doc.bool(v, "admin_auth_reads"))
                .transpose()?
                .unwrap_or(false),
        };
        let mut limits = ConnectionLimits::default();
        if let Some(v) = &raw.connection_limit {
            limits.max_connections = doc.integer(v, "connection_limit", 1..=1_000_000)? as usize;
        }
        if let Some(v) = &raw.handshake_timeout {
            limits.handshake_timeout = doc.duration(v, "handshake_timeout")?;
            if limits.handshake_timeout.is_zero() {
                return Err(doc.at(v, "handshake_timeout", "must be more than 0".into()));
            }
        }
        let tls = raw.tls.as_ref().map(|t| parse_tls(&doc, t)).transpose()?;

        let raw_services = raw.service.map(Spanned::into_inner).unwrap_or_default();
        let mut services = Vec::with_capacity(raw_services.len());
        let mut names = HashSet::with_capacity(raw_services.len());
        for (i, s) in raw_services.iter().enumerate() {
            let service = parse_service(&doc, i, s, !etcd.is_empty())?;
            if !names.insert(service.name.clone()) {
                let name = s.get_ref().name.as_ref().expect("parsed");
                return Err(doc.at(
                    name,
                    &format!("service[{i}].name"),
                    format!("service {} is defined twice", quote(&service.name)),
                ));
            }
            services.push(service);
        }
        Ok(Config {
            listen,
            admin,
            etcd,
            services,
            admin_auth,
            limits,
            tls,
        })
    }

    /// The flag form: `--service NAME=SOURCE` (repeatable), checked as a
    /// file's services are; errors name `<flags>` and the flag.
    pub fn from_service_flags(specs: &[String], has_etcd: bool) -> Result<Config, ConfigError> {
        let flag_error = |field: String, message: String| ConfigError {
            file: "<flags>".into(),
            line: 0,
            field,
            message,
        };
        let mut services = Vec::with_capacity(specs.len());
        let mut names = HashSet::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let field = format!("--service[{i}]");
            let (name, source) = spec.split_once('=').ok_or_else(|| {
                flag_error(field.clone(), format!("{} is not NAME=SOURCE", quote(spec)))
            })?;
            check_name(name).map_err(|m| flag_error(field.clone(), m))?;
            check_source(source, has_etcd).map_err(|m| flag_error(field.clone(), m))?;
            if !names.insert(name) {
                return Err(flag_error(
                    field,
                    format!("service {} is given twice", quote(name)),
                ));
            }
            services.push(ServiceConfig::new(name, source));
        }
        Ok(Config {
            listen: DEFAULT_LISTEN.parse().expect("a valid default"),
            admin: None,
            etcd: Vec::new(),
            services,
            admin_auth: AdminAuth::default(),
            limits: ConnectionLimits::default(),
            tls: None,
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

fn parse_service(
    doc: &Doc<'_>,
    i: usize,
    raw: &Spanned<RawService>,
    has_etcd: bool,
) -> Result<ServiceConfig, ConfigError> {
    let field = |name: &str| format!("service[{i}].{name}");
    let table = raw.span().start;
    let s = raw.get_ref();
    fn required<'v>(
        doc: &Doc<'_>,
        value: &'v Field,
        table: usize,
        field: String,
    ) -> Result<&'v Spanned<Value>, ConfigError> {
        value
            .as_ref()
            .ok_or_else(|| doc.error(Some(table), &field, "missing".into()))
    }
    let name_value = required(doc, &s.name, table, field("name"))?;
    let name = doc.string(name_value, &field("name"))?;
    check_name(name).map_err(|m| doc.at(name_value, &field("name"), m))?;
    let source_value = required(doc, &s.source, table, field("source"))?;
    let source = doc.string(source_value, &field("source"))?;
    check_source(source, has_etcd).map_err(|m| doc.at(source_value, &field("source"), m))?;

    let mut service = ServiceConfig::new(name, source);
    service.health_service = None;
    if let Some(v) = &s.policy {
        service.policy = match doc.string(v, &field("policy"))? {
            "round_robin" => ListPolicy::RoundRobin,
            "weighted" => ListPolicy::Weighted,
            "subset" => ListPolicy::Subset,
            "ring_hash" => ListPolicy::RingHash,
            other => {
                return Err(doc.at(
                    v,
                    &field("policy"),
                    format!(
                        "{} is not \"round_robin\", \"weighted\", \"subset\" or \"ring_hash\"",
                        quote(other)
                    ),
                ));
            }
        };
    }
    match &s.hash_header {
        Some(v) => {
            let header = doc.string(v, &field("hash_header"))?;
            let valid = !header.is_empty()
                && header.len() < MAX_NAME_BYTES
                && !header.starts_with(':')
                && header
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
            if !valid {
                return Err(doc.at(
                    v,
                    &field("hash_header"),
                    format!("{} is not a lower-case HTTP header name", quote(header)),
                ));
            }
            if service.policy != ListPolicy::RingHash {
                return Err(doc.at(
                    v,
                    &field("hash_header"),
                    "only applies with policy = \"ring_hash\"".into(),
                ));
            }
            service.hash_header = Some(header.to_owned());
        }
        None if service.policy == ListPolicy::RingHash => {
            return Err(doc.error(
                Some(table),
                &field("hash_header"),
                "policy = \"ring_hash\" needs the request header to hash".into(),
            ));
        }
        None => {}
    }
    if let Some(v) = &s.xds_rds {
        service.xds_rds = doc.bool(v, &field("xds_rds"))?;
    }
    if let Some(v) = &s.subset_size {
        service.subset_size = doc.integer(v, &field("subset_size"), 1..=100_000)? as usize;
    }
    if let Some(v) = &s.drop_fraction {
        let fraction = doc.float(v, &field("drop_fraction"))?;
        if !(0.0..1.0).contains(&fraction) {
            return Err(doc.at(
                v,
                &field("drop_fraction"),
                format!("{fraction} is not in [0, 1)"),
            ));
        }
        service.drop_fraction = fraction;
    }
    if let Some(v) = &s.capacity_per_weight {
        let capacity = doc.float(v, &field("capacity_per_weight"))?;
        if !(capacity > 0.0 && capacity.is_finite()) {
            return Err(doc.at(
                v,
                &field("capacity_per_weight"),
                format!("{capacity} is not a positive number of calls per second"),
            ));
        }
        if service.policy != ListPolicy::Weighted {
            return Err(doc.at(
                v,
                &field("capacity_per_weight"),
                "only applies with policy = \"weighted\"".into(),
            ));
        }
        service.capacity_per_weight = Some(capacity);
    }
    if let Some(v) = &s.health_service {
        service.health_service = Some(doc.string(v, &field("health_service"))?.to_owned());
    }
    if let Some(v) = &s.client_stats_interval {
        let interval = doc.duration(v, &field("client_stats_interval"))?;
        if interval.is_zero() {
            return Err(doc.at(
                v,
                &field("client_stats_interval"),
                "must be more than 0".into(),
            ));
        }
        service.client_stats_interval = interval;
    }
    if let Some(v) = &s.fallback {
        service.fallback = doc.bool(v, &field("fallback"))?;
    }
    let tls_on = match &s.backend_tls {
        Some(v) => doc.bool(v, &field("backend_tls"))?,
        None => false,
    };
    if tls_on {
        service.backend_tls = Some(BackendTls {
            ca_file: s
                .backend_ca_file
                .as_ref()
                .map(|v| doc.string(v, &field("backend_ca_file")).map(PathBuf::from))
                .transpose()?,
            server_name: s
                .backend_server_name
                .as_ref()
                .map(|v| {
                    doc.string(v, &field("backend_server_name"))
                        .map(str::to_owned)
                })
                .transpose()?,
        });
    } else {
        for (value, name) in [
            (&s.backend_ca_file, "backend_ca_file"),
            (&s.backend_server_name, "backend_server_name"),
        ] {
            if let Some(v) = value {
                return Err(doc.at(
                    v,
                    &field(name),
                    "only applies with backend_tls = true".into(),
                ));
            }
        }
    }
    Ok(service)
}

/// The `[tls]` table: `cert_file` and `key_file` are required.
fn parse_tls(doc: &Doc<'_>, raw: &Spanned<RawTls>) -> Result<ListenerTls, ConfigError> {
    let table = raw.get_ref();
    let path = |value: &Field, name: &str| -> Result<Option<PathBuf>, ConfigError> {
        let field = format!("tls.{name}");
        value
            .as_ref()
            .map(|v| match doc.string(v, &field)? {
                "" => Err(doc.at(v, &field, "must name a file".into())),
                text => Ok(PathBuf::from(text)),
            })
            .transpose()
    };
    let missing = |name: &str| {
        doc.error(
            Some(raw.span().start),
            &format!("tls.{name}"),
            "is required in [tls]".into(),
        )
    };
    let mut tls = ListenerTls::new(
        path(&table.cert_file, "cert_file")?.ok_or_else(|| missing("cert_file"))?,
        path(&table.key_file, "key_file")?.ok_or_else(|| missing("key_file"))?,
        path(&table.client_ca_file, "client_ca_file")?,
    );
    if let Some(v) = &table.reload_interval {
        tls.reload_interval = doc.duration(v, "tls.reload_interval")?;
        if tls.reload_interval.is_zero() {
            return Err(doc.at(v, "tls.reload_interval", "must be more than 0".into()));
        }
    }
    Ok(tls)
}

/// A service name: 1 to 255 bytes.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() >= MAX_NAME_BYTES {
        return Err(format!(
            "a service name must be 1 to {} bytes, got {}",
            MAX_NAME_BYTES - 1,
            name.len()
        ));
    }
    Ok(())
}

/// A source that can resolve: a static `ip:port,…` list, or a target
/// whose shape is valid (`etcd:///` only with `etcd` endpoints). The
/// resolver itself checks its endpoint when the server starts.
fn check_source(source: &str, has_etcd: bool) -> Result<(), String> {
    if crate::source::static_list(source).is_some() {
        return Ok(());
    }
    let target = waypost_resolver::Target::parse(source)
        .map_err(|e| format!("{} is neither ip:port,… nor a target: {e}", quote(source)))?;
    match target.scheme() {
        "etcd" if !has_etcd => Err(format!(
            "{} needs etcd endpoints (`etcd = [\"host:port\"]` or --etcd)",
            quote(source)
        )),
        "etcd" | "ipv4" | "ipv6" | "unix" | "unix-abstract" | "passthrough" => Ok(()),
        // `dns`, and any other scheme (read as a DNS name, as gRPC does):
        // the name must be host[:port].
        _ => {
            let dns = if target.scheme() == "dns" {
                target
            } else {
                waypost_resolver::Target::dns_fallback(source)
            };
            waypost_resolver::parse_host_port(dns.endpoint(), 443)
                .map(drop)
                .map_err(|e| format!("{} cannot resolve: {e}", quote(source)))
        }
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

/// `"10s"`, `"1.5s"`, `"500ms"`, `"2m"`, `"1h"` — protobuf JSON seconds or
/// a whole number of a unit (the one parser, [`waypost_resolver::duration`]),
/// at most [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    use waypost_resolver::duration::{DurationForms, parse_duration};
    let too_long = || "longer than a day".to_owned();
    match parse_duration(text, DurationForms::WithUnits) {
        Ok(duration) if duration <= MAX_DURATION => Ok(duration),
        Ok(_) | Err(waypost_resolver::duration::DurationError::TooLong) => Err(too_long()),
        Err(shape) => Err(shape.to_string()),
    }
}

/// A message of at most 200 characters (and how long it was, if cut).
fn cut_message(message: &str) -> String {
    match message.char_indices().nth(200) {
        None => message.to_owned(),
        Some((at, _)) => format!("{}… ({} bytes)", &message[..at], message.len()),
    }
}

/// Pulls the field name out of a toml/serde message (`unknown field `x``).
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
admin_token_file = "/run/token"
connection_limit = 50
handshake_timeout = "2s"

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
        assert_eq!(c.services[1].health_service, None);
        assert_eq!(c.service("movies:443").unwrap().name, "movies");
        assert!(c.service("nope").is_none());
        assert_eq!(c.admin_auth.token_file, Some(PathBuf::from("/run/token")));
        assert_eq!(c.limits.max_connections, 50);
        assert_eq!(c.limits.handshake_timeout, Duration::from_secs(2));
        assert_eq!(c.tls, None);
    }

    #[test]
    fn a_tls_table_parses_and_is_checked() {
        let c = Config::parse(
            "[tls]\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\nclient_ca_file = \"/ca.pem\"\nreload_interval = \"30s\"\n",
            "t.toml",
        )
        .unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.cert_file, PathBuf::from("/c.pem"));
        assert_eq!(tls.client_ca_file, Some(PathBuf::from("/ca.pem")));
        assert_eq!(tls.reload_interval, Duration::from_secs(30));
        assert!(tls.balance_load().requests_client_certificates());

        let plain = Config::parse(
            "[tls]\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\n",
            "t.toml",
        )
        .unwrap()
        .tls
        .unwrap();
        assert_eq!(plain.client_ca_file, None);
        assert_eq!(
            plain.reload_interval,
            waypost_balancer::tls::DEFAULT_REFRESH
        );

        for (text, line, field) in [
            (
                "listen = \"127.0.0.1:1\"\n[tls]\ncert_file = \"/c.pem\"\n",
                2,
                "tls.key_file",
            ),
            (
                "[tls]\ncert_file = \"\"\nkey_file = \"/k\"\n",
                2,
                "tls.cert_file",
            ),
            (
                "[tls]\ncert_file = \"/c\"\nkey_file = \"/k\"\nreload_interval = \"0s\"\n",
                4,
                "tls.reload_interval",
            ),
            (
                "[tls]\ncert_file = \"/c\"\nkey_file = \"/k\"\nciphers = 1\n",
                4,
                "ciphers",
            ),
        ] {
            let e = Config::parse(text, "t.toml").unwrap_err();
            assert_eq!((e.line, e.field.as_str()), (line, field), "{text}: {e}");
        }
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let two =
            "[[service]]\nname = \"a\"\nsource = \"127.0.0.1:1\"\n\n[[service]]\nname = \"b\"\n";
        let cases: Vec<(String, usize, &str)> = vec![
            ("listen = \"nowhere\"\n".into(), 1, "listen"),
            ("listen = 50050\n".into(), 1, "listen"),
            (
                "\n\n[[service]]\nname = \"a\"\nsource = \"127.0.0.1:1\"\nbogus = 1\n".into(),
                6,
                "bogus",
            ),
            ("[[service]]\nname = \"a\"\n".into(), 1, "service[0].source"),
            (
                "[[service]]\nname = \"a\"\nsource = \"127.0.0.1:1\"\ndrop_fraction = 1.5\n"
                    .into(),
                4,
                "service[0].drop_fraction",
            ),
            (
                "[[service]]\nname = \"a\"\nsource = \"127.0.0.1:1\"\nclient_stats_interval = \"soon\"\n"
                    .into(),
                4,
                "service[0].client_stats_interval",
            ),
            // The second service's error names the second service's line.
            (format!("{two}source = \"127.0.0.1:5006l\"\n"), 7, "service[1].source"),
            (format!("{two}source = \"127.0.0.1:2\"\ndrop_fraction = 2.0\n"), 8, "service[1].drop_fraction"),
            // A duplicate names the second definition.
            (
                "[[service]]\nname = \"a\"\nsource = \"127.0.0.1:1\"\n[[service]]\nname = \"a\"\nsource = \"127.0.0.1:2\"\n"
                    .into(),
                5,
                "service[1].name",
            ),
            (
                "[[service]]\nname = \"a\"\nsource = \"127.0.0.1:1\"\nsubset_size = \"ten\"\n".into(),
                4,
                "service[0].subset_size",
            ),
            (
                "[[service]]\nname = \"a\"\nsource = \"!!not a target!!\"\n".into(),
                3,
                "service[0].source",
            ),
            (
                "[[service]]\nname = \"a\"\nsource = \"etcd:///a\"\n".into(),
                3,
                "service[0].source",
            ),
            (
                "[[service]]\nname = \"\"\nsource = \"127.0.0.1:1\"\n".into(),
                2,
                "service[0].name",
            ),
            (
                "[[service]]\nname = \"a\"\nsource = \"127.0.0.1:1\"\nclient_stats_interval = \"18446744073709551615s\"\n"
                    .into(),
                4,
                "service[0].client_stats_interval",
            ),
            ("connection_limit = 0\n".into(), 1, "connection_limit"),
        ];
        for (text, line, field) in cases {
            let e = Config::parse(&text, "bad.toml").unwrap_err();
            assert_eq!((e.line, e.field.as_str()), (line, field), "{text:?}: {e}");
            assert!(
                e.to_string()
                    .starts_with(&format!("bad.toml:{line}: {field}: ")),
                "{e}"
            );
        }
    }

    #[test]
    fn a_type_error_names_the_field_and_the_value() {
        let e = Config::parse("listen = 50050\n", "t.toml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.toml:1: listen: expected a string, got integer 50050"
        );
    }

    #[test]
    fn huge_values_are_not_echoed_whole() {
        let big = "x".repeat(10 << 20);
        for text in [
            format!("[[service]]\nname = \"a\"\nsource = \"{big}:1\"\n"),
            format!("[[service]]\nname = \"a\"\nsource = \"127.0.0.1:1\"\npolicy = \"{big}\"\n"),
            format!("{big} = 1\n"),
            format!("listen = [\"{big}\"]\n"),
        ] {
            let e = Config::parse(&text, "t.toml").unwrap_err();
            assert!(e.to_string().len() < 600, "{} bytes", e.to_string().len());
        }
    }

    #[test]
    fn many_services_parse_in_linear_time() {
        let mut text = String::new();
        for i in 0..80_000 {
            text.push_str(&format!(
                "[[service]]\nname = \"s{i}\"\nsource = \"127.0.0.1:1\"\n"
            ));
        }
        let started = std::time::Instant::now();
        let c = Config::parse(&text, "t.toml").unwrap();
        assert_eq!(c.services.len(), 80_000);
        // Quadratic duplicate checks took 43 s; linear ones take well under.
        assert!(started.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn the_flag_form_is_checked_like_the_file() {
        let flags = |specs: &[&str]| {
            let specs: Vec<String> = specs.iter().map(|s| s.to_string()).collect();
            Config::from_service_flags(&specs, false)
        };
        assert!(flags(&["movies=127.0.0.1:1"]).is_ok());
        for bad in [
            &["=127.0.0.1:1"][..],
            &["a=127.0.0.1:1", "a=127.0.0.1:2"],
            &["a=etcd:///a"],
            &["a=!!not a target!!"],
            &["nothing"],
        ] {
            let e = flags(bad).unwrap_err();
            assert_eq!(e.file, "<flags>", "{bad:?}");
            assert!(e.field.starts_with("--service["), "{e}");
        }
    }

    #[test]
    fn durations_parse_and_reject_overflow() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("24h"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        for bad in ["", "s", "10", "10x", "25h", "18446744073709551615s", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_embedded_default_is_valid() {
        let c = Config::embedded_default();
        assert!(!c.services.is_empty());
    }
}
