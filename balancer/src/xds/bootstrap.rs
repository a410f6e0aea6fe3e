//! The xDS bootstrap (gRFC A27, A30, A29, A65): which management server to
//! ask, how to reach it, and who this client is.
//!
//! gRPC finds it through `GRPC_XDS_BOOTSTRAP` (a file's path) or, failing
//! that, `GRPC_XDS_BOOTSTRAP_CONFIG` (the JSON itself); the same variables
//! work here, or a bootstrap is given in code. Fields gRPC ignores are
//! ignored; a missing or wrong field is a [`BootstrapError`] naming it, as
//! C-core's `field:xds_servers[0].channel_creds error:field not present`.
//!
//! ```
//! use waypost_balancer::xds::bootstrap::{Bootstrap, ChannelCreds};
//!
//! let bootstrap = Bootstrap::from_json(r#"{
//!     "xds_servers": [{"server_uri": "127.0.0.1:18000",
//!                      "channel_creds": [{"type": "insecure"}],
//!                      "server_features": ["xds_v3"]}],
//!     "node": {"id": "orders-client-1", "locality": {"zone": "eu-west-1a"}}
//! }"#)?;
//! assert_eq!(bootstrap.xds_servers[0].server_uri, "127.0.0.1:18000");
//! assert_eq!(bootstrap.xds_servers[0].channel_creds, ChannelCreds::Insecure);
//! assert_eq!(bootstrap.node.locality.zone, "eu-west-1a");
//! # Ok::<(), waypost_balancer::xds::bootstrap::BootstrapError>(())
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

/// The variable naming the bootstrap file.
pub const BOOTSTRAP_FILE_ENV: &str = "GRPC_XDS_BOOTSTRAP";
/// The variable holding the bootstrap JSON itself.
pub const BOOTSTRAP_CONFIG_ENV: &str = "GRPC_XDS_BOOTSTRAP_CONFIG";

/// The largest bootstrap file read (a bootstrap is a few hundred bytes).
const MAX_FILE: u64 = 1 << 20;

/// Why there is no usable bootstrap.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// Neither variable is set.
    #[error(
        "no xDS bootstrap: set {BOOTSTRAP_FILE_ENV} to a bootstrap file's path or {BOOTSTRAP_CONFIG_ENV} to its JSON"
    )]
    NotConfigured,
    /// The file could not be read.
    #[error("xDS bootstrap file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The text is not JSON.
    #[error("xDS bootstrap is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A field is missing or wrong.
    #[error("xDS bootstrap: field:{field} error:{message}")]
    Field {
        /// Where, as gRPC writes it (`xds_servers[0].channel_creds`).
        field: String,
        /// What is wrong.
        message: String,
    },
}

fn field(field: impl Into<String>, message: impl Into<String>) -> BootstrapError {
    BootstrapError::Field {
        field: field.into(),
        message: message.into(),
    }
}

/// How the client reaches a management server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelCreds {
    /// Plaintext.
    Insecure,
    /// TLS (gRFC A65): the CA (system roots when absent) and optionally a
    /// client certificate, from files re-read every `refresh_interval`.
    Tls {
        /// CA certificates (PEM).
        ca_certificate_file: Option<PathBuf>,
        /// The client's certificate chain (PEM), for mTLS.
        certificate_file: Option<PathBuf>,
        /// Its private key (PEM).
        private_key_file: Option<PathBuf>,
        /// How often the files are re-read.
        refresh_interval: Duration,
    },
}

impl ChannelCreds {
    /// The TLS configuration for the channel to the server (`None`:
    /// plaintext).
    pub fn client_tls(&self) -> Option<crate::ClientTlsConfig> {
        match self {
            ChannelCreds::Insecure => None,
            ChannelCreds::Tls {
                ca_certificate_file,
                certificate_file,
                private_key_file,
                refresh_interval,
            } => {
                let identity = certificate_file.clone().zip(private_key_file.clone());
                Some(match ca_certificate_file {
                    Some(ca) => crate::ClientTlsConfig::from_files(ca, identity)
                        .refresh_interval(*refresh_interval),
                    // (A client certificate needs a CA file: checked when
                    // parsed.)
                    None => crate::ClientTlsConfig::new().with_native_roots(),
                })
            }
        }
    }
}

/// One management server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsServer {
    /// `host:port` (or any target a waypost channel takes).
    pub server_uri: String,
    /// The first credentials type this client supports.
    pub channel_creds: ChannelCreds,
    /// Features the server supports (`xds_v3`, `ignore_resource_deletion`).
    pub server_features: Vec<String>,
}

impl XdsServer {
    /// Whether a resource the server stops sending is kept rather than
    /// deleted (`ignore_resource_deletion`, gRFC A53).
    pub fn ignores_resource_deletion(&self) -> bool {
        self.server_features
            .iter()
            .any(|f| f == "ignore_resource_deletion")
    }
}

/// Where the client runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Locality {
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
    /// Sub-zone.
    pub sub_zone: String,
}

/// Who the client is, as sent in every discovery request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Node {
    /// Its id (empty when not given).
    pub id: String,
    /// Its cluster.
    pub cluster: String,
    /// Its locality.
    pub locality: Locality,
    /// Opaque metadata (a JSON object).
    pub metadata: Map<String, Value>,
}

/// A certificate provider instance (gRFC A29): only `file_watcher` exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateProvider {
    /// The plugin, `file_watcher`.
    pub plugin_name: String,
    /// The certificate chain file.
    pub certificate_file: Option<PathBuf>,
    /// The private key file.
    pub private_key_file: Option<PathBuf>,
    /// The CA certificates file.
    pub ca_certificate_file: Option<PathBuf>,
    /// How often the files are re-read (default 10 minutes).
    pub refresh_interval: Duration,
}

/// A checked bootstrap. See the [module docs](self).
#[derive(Debug, Clone, PartialEq)]
pub struct Bootstrap {
    /// The management servers, in order; the first is used.
    pub xds_servers: Vec<XdsServer>,
    /// This client.
    pub node: Node,
    /// Certificate provider instances by name.
    pub certificate_providers: BTreeMap<String, CertificateProvider>,
}

/// gRFC A29's and A65's default refresh interval.
const DEFAULT_REFRESH: Duration = Duration::from_secs(600);

impl Bootstrap {
    /// The bootstrap the environment names, as gRPC finds it:
    /// `GRPC_XDS_BOOTSTRAP` first, then `GRPC_XDS_BOOTSTRAP_CONFIG`.
    pub fn from_env() -> Result<Bootstrap, BootstrapError> {
        Self::from_env_with(|name| std::env::var(name).ok())
    }

    /// [`Bootstrap::from_env`] with the variables read through `var`.
    pub fn from_env_with(
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Bootstrap, BootstrapError> {
        if let Some(path) = var(BOOTSTRAP_FILE_ENV).filter(|p| !p.is_empty()) {
            return Self::from_file(path);
        }
        match var(BOOTSTRAP_CONFIG_ENV).filter(|c| !c.is_empty()) {
            Some(json) => Self::from_json(&json),
            None => Err(BootstrapError::NotConfigured),
        }
    }

    /// The bootstrap in the file at `path`.
    pub fn from_file(path: impl Into<PathBuf>) -> Result<Bootstrap, BootstrapError> {
        use std::io::Read;
        let path = path.into();
        let read = |path: &PathBuf| -> std::io::Result<String> {
            let mut text = String::new();
            std::fs::File::open(path)?
                .take(MAX_FILE + 1)
                .read_to_string(&mut text)?;
            if text.len() as u64 > MAX_FILE {
                return Err(std::io::Error::other("larger than 1 MiB"));
            }
            Ok(text)
        };
        let text = read(&path).map_err(|source| BootstrapError::Read {
            path: path.clone(),
            source,
        })?;
        Self::from_json(&text)
    }

    /// The bootstrap in `json`.
    pub fn from_json(json: &str) -> Result<Bootstrap, BootstrapError> {
        Self::from_value(&serde_json::from_str(json)?)
    }

    /// The bootstrap in an already parsed JSON value.
    pub fn from_value(value: &Value) -> Result<Bootstrap, BootstrapError> {
        if !value.is_object() {
            return Err(field("", "the bootstrap must be a JSON object"));
        }
        let top: raw::Bootstrap = typed(value, "")?;
        let servers = top
            .xds_servers
            .ok_or_else(|| field("xds_servers", "field not present"))?;
        if servers.is_empty() {
            return Err(field("xds_servers", "must name at least one server"));
        }
        let xds_servers = servers
            .into_iter()
            .enumerate()
            .map(|(i, s)| server(s, &format!("xds_servers[{i}]")))
            .collect::<Result<_, _>>()?;
        let node = top.node.map(node).unwrap_or_default();
        let certificate_providers = top
            .certificate_providers
            .unwrap_or_default()
            .into_iter()
            .map(|(name, p)| {
                provider(p, &format!("certificate_providers[\"{name}\"]")).map(|p| (name, p))
            })
            .collect::<Result<_, _>>()?;
        Ok(Bootstrap {
            xds_servers,
            node,
            certificate_providers,
        })
    }

    /// The management server this client uses: the first.
    pub fn server(&self) -> &XdsServer {
        &self.xds_servers[0]
    }
}

/// `value` read as `T`; a field of the wrong type is named by its path
/// below `at`.
fn typed<T: serde::de::DeserializeOwned>(value: &Value, at: &str) -> Result<T, BootstrapError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = match (at.is_empty(), path.as_str()) {
            (true, _) => path,
            (false, ".") => at.to_owned(),
            (false, _) => format!("{at}.{path}"),
        };
        field(path, e.inner().to_string())
    })
}

fn server(server: raw::Server, at: &str) -> Result<XdsServer, BootstrapError> {
    let server_uri = server
        .server_uri
        .filter(|uri| !uri.is_empty())
        .ok_or_else(|| field(format!("{at}.server_uri"), "field not present"))?;
    let creds_at = format!("{at}.channel_creds");
    let creds = server
        .channel_creds
        .ok_or_else(|| field(&creds_at, "field not present"))?;
    // The first type this client supports wins (A27).
    let mut channel_creds = None;
    let mut seen = Vec::new();
    for (i, entry) in creds.into_iter().enumerate() {
        let entry_at = format!("{creds_at}[{i}]");
        let kind = entry
            .kind
            .ok_or_else(|| field(format!("{entry_at}.type"), "field not present"))?;
        match kind.as_str() {
            "insecure" => {
                channel_creds = Some(ChannelCreds::Insecure);
                break;
            }
            "tls" => {
                channel_creds = Some(tls(entry.config.as_ref(), &format!("{entry_at}.config"))?);
                break;
            }
            other => seen.push(other.to_owned()),
        }
    }
    let channel_creds = channel_creds.ok_or_else(|| {
        field(
            &creds_at,
            format!(
                "no supported credentials type (waypost supports insecure and tls; found {seen:?})"
            ),
        )
    })?;
    Ok(XdsServer {
        server_uri,
        channel_creds,
        server_features: server.server_features.unwrap_or_default(),
    })
}

fn tls(config: Option<&Value>, at: &str) -> Result<ChannelCreds, BootstrapError> {
    let config: raw::Files = match config {
        None => raw::Files::default(),
        Some(value) => typed(value, at)?,
    };
    if config.certificate_file.is_some() != config.private_key_file.is_some() {
        return Err(field(
            at,
            "certificate_file and private_key_file go together",
        ));
    }
    if config.certificate_file.is_some() && config.ca_certificate_file.is_none() {
        return Err(field(
            at,
            "waypost needs ca_certificate_file with a client certificate (system roots serve only server-authenticated TLS)",
        ));
    }
    Ok(ChannelCreds::Tls {
        ca_certificate_file: config.ca_certificate_file,
        certificate_file: config.certificate_file,
        private_key_file: config.private_key_file,
        refresh_interval: config.refresh_interval.map_or(DEFAULT_REFRESH, |d| d.0),
    })
}

fn node(node: raw::Node) -> Node {
    let locality = node.locality.unwrap_or_default();
    Node {
        id: node.id.unwrap_or_default(),
        cluster: node.cluster.unwrap_or_default(),
        locality: Locality {
            region: locality.region.unwrap_or_default(),
            zone: locality.zone.unwrap_or_default(),
            sub_zone: locality.sub_zone.unwrap_or_default(),
        },
        metadata: node.metadata.unwrap_or_default(),
    }
}

fn provider(provider: raw::Provider, at: &str) -> Result<CertificateProvider, BootstrapError> {
    let plugin_name = provider
        .plugin_name
        .ok_or_else(|| field(format!("{at}.plugin_name"), "field not present"))?;
    if plugin_name != "file_watcher" {
        return Err(field(
            format!("{at}.plugin_name"),
            format!("unknown plugin {plugin_name:?} (gRPC defines file_watcher)"),
        ));
    }
    let config_at = format!("{at}.config");
    let config: raw::Files = match &provider.config {
        None => raw::Files::default(),
        Some(value) => typed(value, &config_at)?,
    };
    if config.certificate_file.is_some() != config.private_key_file.is_some() {
        return Err(field(
            config_at,
            "certificate_file and private_key_file go together",
        ));
    }
    if config.certificate_file.is_none() && config.ca_certificate_file.is_none() {
        return Err(field(
            config_at,
            "needs certificate_file and private_key_file, or ca_certificate_file",
        ));
    }
    Ok(CertificateProvider {
        plugin_name,
        certificate_file: config.certificate_file,
        private_key_file: config.private_key_file,
        ca_certificate_file: config.ca_certificate_file,
        refresh_interval: config.refresh_interval.map_or(DEFAULT_REFRESH, |d| d.0),
    })
}

/// The bootstrap's JSON as serde reads it: types checked here (a wrong
/// one is named by its path), presence and meaning above. Fields gRPC
/// ignores are ignored.
mod raw {
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};
    use serde_json::{Map, Value};

    #[derive(Debug, Deserialize)]
    pub(super) struct Bootstrap {
        pub(super) xds_servers: Option<Vec<Server>>,
        pub(super) node: Option<Node>,
        pub(super) certificate_providers: Option<BTreeMap<String, Provider>>,
    }

    #[derive(Debug, Deserialize)]
    pub(super) struct Server {
        pub(super) server_uri: Option<String>,
        pub(super) channel_creds: Option<Vec<Creds>>,
        pub(super) server_features: Option<Vec<String>>,
    }

    #[derive(Debug, Deserialize)]
    pub(super) struct Creds {
        #[serde(rename = "type")]
        pub(super) kind: Option<String>,
        /// Read only for the type chosen (another type's may be anything).
        pub(super) config: Option<Value>,
    }

    /// A TLS credentials' or a file_watcher provider's files.
    #[derive(Debug, Default, Deserialize)]
    pub(super) struct Files {
        pub(super) certificate_file: Option<PathBuf>,
        pub(super) private_key_file: Option<PathBuf>,
        pub(super) ca_certificate_file: Option<PathBuf>,
        pub(super) refresh_interval: Option<ProtoDuration>,
    }

    #[derive(Debug, Deserialize)]
    pub(super) struct Node {
        pub(super) id: Option<String>,
        pub(super) cluster: Option<String>,
        pub(super) locality: Option<Locality>,
        pub(super) metadata: Option<Map<String, Value>>,
    }

    #[derive(Debug, Default, Deserialize)]
    pub(super) struct Locality {
        pub(super) region: Option<String>,
        pub(super) zone: Option<String>,
        pub(super) sub_zone: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    pub(super) struct Provider {
        pub(super) plugin_name: Option<String>,
        pub(super) config: Option<Value>,
    }

    /// A protobuf JSON duration (`"600s"`).
    #[derive(Debug)]
    pub(super) struct ProtoDuration(pub(super) Duration);

    impl<'de> Deserialize<'de> for ProtoDuration {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            let text = String::deserialize(deserializer)?;
            crate::service_config::parse_duration(&text)
                .map(ProtoDuration)
                .ok_or_else(|| {
                    serde::de::Error::custom(format!("{text:?} is not a duration like \"600s\""))
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(json: &str) -> String {
        Bootstrap::from_json(json).unwrap_err().to_string()
    }

    #[test]
    fn missing_channel_creds_is_named_as_c_core_names_it() {
        assert_eq!(
            error_of(r#"{"xds_servers": [{"server_uri": "localhost:1"}]}"#),
            "xDS bootstrap: field:xds_servers[0].channel_creds error:field not present"
        );
    }

    #[test]
    fn every_wrong_field_is_named() {
        for (json, named) in [
            (r#"{}"#, "field:xds_servers error:field not present"),
            (
                r#"{"xds_servers": []}"#,
                "field:xds_servers error:must name",
            ),
            (
                r#"{"xds_servers": [{"channel_creds": [{"type": "insecure"}]}]}"#,
                "field:xds_servers[0].server_uri error:field not present",
            ),
            (
                r#"{"xds_servers": [{"server_uri": "a:1", "channel_creds": [{"type": "google_default"}]}]}"#,
                "field:xds_servers[0].channel_creds error:no supported credentials type",
            ),
            (
                r#"{"xds_servers": [{"server_uri": "a:1", "channel_creds": [{"type": "tls", "config": {"refresh_interval": "soon"}}]}]}"#,
                "field:xds_servers[0].channel_creds[0].config.refresh_interval",
            ),
            (
                r#"{"xds_servers": [{"server_uri": "a:1", "channel_creds": [{"type": "insecure"}]}], "node": {"locality": {"zone": 3}}}"#,
                "field:node.locality.zone error:invalid type: integer `3`, expected a string",
            ),
            (
                r#"{"xds_servers": [{"server_uri": "a:1", "channel_creds": [{"type": "insecure"}]}], "certificate_providers": {"p": {"plugin_name": "vault"}}}"#,
                "field:certificate_providers[\"p\"].plugin_name",
            ),
            (
                r#"{"xds_servers": [{"server_uri": "a:1", "channel_creds": [{"type": "tls", "config": {"ca_certificate_file": 7}}]}]}"#,
                "field:xds_servers[0].channel_creds[0].config.ca_certificate_file error:invalid type",
            ),
            (
                r#"{"xds_servers": [{"server_uri": "a:1", "channel_creds": [{"type": "insecure"}], "server_features": [1]}]}"#,
                "field:xds_servers[0].server_features[0] error:invalid type",
            ),
            (
                r#"{"xds_servers": {}}"#,
                "field:xds_servers error:invalid type",
            ),
            // Another type's config may be anything: it is not read.
            (
                r#"{"xds_servers": [{"server_uri": "a:1", "channel_creds": [{"type": "google_default", "config": 5}]}]}"#,
                "no supported credentials type",
            ),
        ] {
            let error = error_of(json);
            assert!(error.contains(named), "{json}: {error}");
        }
        assert!(matches!(
            Bootstrap::from_json("{not json"),
            Err(BootstrapError::Json(_))
        ));
    }

    #[test]
    fn the_first_supported_creds_win_and_features_are_kept() {
        let bootstrap = Bootstrap::from_json(
            r#"{"xds_servers": [{"server_uri": "xds.example:443",
                "channel_creds": [{"type": "google_default"},
                                  {"type": "tls", "config": {"ca_certificate_file": "/etc/ca.pem"}},
                                  {"type": "insecure"}],
                "server_features": ["xds_v3", "ignore_resource_deletion"]}],
               "node": {"id": "n1", "cluster": "c1", "metadata": {"team": "orders"}},
               "certificate_providers": {"default": {"plugin_name": "file_watcher",
                   "config": {"certificate_file": "/c.pem", "private_key_file": "/k.pem",
                              "ca_certificate_file": "/ca.pem", "refresh_interval": "60s"}}}}"#,
        )
        .unwrap();
        let server = bootstrap.server();
        assert_eq!(
            server.channel_creds,
            ChannelCreds::Tls {
                ca_certificate_file: Some("/etc/ca.pem".into()),
                certificate_file: None,
                private_key_file: None,
                refresh_interval: DEFAULT_REFRESH,
            }
        );
        assert!(server.ignores_resource_deletion());
        assert!(server.channel_creds.client_tls().is_some());
        assert_eq!(bootstrap.node.metadata["team"], "orders");
        let provider = &bootstrap.certificate_providers["default"];
        assert_eq!(provider.refresh_interval, Duration::from_secs(60));
    }

    #[test]
    fn the_file_variable_wins_over_the_config_variable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bootstrap.json");
        std::fs::write(
            &path,
            r#"{"xds_servers": [{"server_uri": "from-file:1", "channel_creds": [{"type": "insecure"}]}]}"#,
        )
        .unwrap();
        let inline = r#"{"xds_servers": [{"server_uri": "inline:1", "channel_creds": [{"type": "insecure"}]}]}"#;
        let env = |file: Option<&str>, config: Option<&str>| {
            let (file, config) = (file.map(str::to_owned), config.map(str::to_owned));
            move |name: &str| match name {
                BOOTSTRAP_FILE_ENV => file.clone(),
                BOOTSTRAP_CONFIG_ENV => config.clone(),
                _ => None,
            }
        };
        let path = path.to_str().unwrap();
        let both = Bootstrap::from_env_with(env(Some(path), Some(inline))).unwrap();
        assert_eq!(both.server().server_uri, "from-file:1");
        let inline_only = Bootstrap::from_env_with(env(None, Some(inline))).unwrap();
        assert_eq!(inline_only.server().server_uri, "inline:1");
        assert!(matches!(
            Bootstrap::from_env_with(env(None, None)),
            Err(BootstrapError::NotConfigured)
        ));
        assert!(matches!(
            Bootstrap::from_env_with(env(Some("/nonexistent/bootstrap.json"), None)),
            Err(BootstrapError::Read { .. })
        ));
    }
}
