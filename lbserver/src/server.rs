//! Running the balancer: binds the balancer port (grpclb's BalanceLoad and
//! xDS's ADS, one HTTP/2 server: [`crate::port`]) and the admin listener, follows every
//! service's source, and shuts down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use waypost_resolver::ResolverRegistry;

use crate::balance::BalanceOptions;
use crate::config::{Config, quote};
use crate::listener::incoming;
use crate::probe::ProbeOptions;
use crate::registry::Registry;
use crate::xds::service::{AdsOptions, AdsService};

/// The largest request message a client may send (ClientStats are small).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// How long shutdown waits for streams to end after GOAWAY.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Tuning beyond the config file.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// BalanceLoad behaviour.
    pub balance: BalanceOptions,
    /// Health probing.
    pub probe: ProbeOptions,
    /// ADS (xDS) behaviour.
    pub ads: AdsOptions,
    /// The balancer port's server keepalive.
    pub keepalive: crate::port::Keepalive,
}

/// Why the balancer could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// etcd could not be reached for `etcd:///` sources.
    #[error("cannot connect to etcd: {0}")]
    Etcd(String),
    /// A service's source can never resolve (a configuration error).
    #[error("service {service}: source {source_text}: {error}")]
    Source {
        /// The service (quoted, cut short).
        service: String,
        /// Its source (quoted, cut short).
        source_text: String,
        /// Why.
        error: waypost_resolver::ResolveError,
    },
    /// A service's `backend_tls` material cannot be used.
    #[error("service {service}: backend TLS: {error}")]
    BackendTls {
        /// The service (quoted, cut short).
        service: String,
        /// Why.
        error: waypost_balancer::TlsError,
    },
    /// The `[tls]` material cannot be used.
    #[error("tls: {0}")]
    Tls(waypost_balancer::TlsError),
    /// The admin token file could not be read, or holds no usable token.
    #[error("admin_token_file {path}: {message}")]
    AdminToken {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
}

impl ServeError {
    /// Whether the configuration is at fault (the command exits 64), rather
    /// than the environment.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            ServeError::Source { .. }
                | ServeError::AdminToken { .. }
                | ServeError::BackendTls { .. }
                | ServeError::Tls(_)
        )
    }
}

/// A running balancer.
#[derive(Debug)]
pub struct Running {
    /// Where BalanceLoad listens.
    pub listen: SocketAddr,
    /// Where the admin endpoint listens.
    pub admin: Option<SocketAddr>,
    /// The registry it serves.
    pub registry: Registry,
    /// How the listeners' `[tls]` files reloaded (`None`: no TLS).
    pub tls: Option<std::sync::Arc<waypost_balancer::tls::TlsStats>>,
    shutdown: Option<oneshot::Sender<()>>,
    stop_streams: tokio::sync::watch::Sender<bool>,
    server: JoinHandle<()>,
    helpers: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, sends GOAWAY to connected clients, ends every
    /// BalanceLoad stream with UNAVAILABLE, and waits (at most
    /// [`SHUTDOWN_GRACE`]) for the connections to close.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.stop_streams.send_replace(true);
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut self.server)
            .await
            .is_err()
        {
            self.server.abort();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.server.abort();
        for helper in &self.helpers {
            helper.abort();
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// What the configuration's files hold, loaded and checked.
struct Material {
    admin_token: Option<String>,
    balance_tls: Option<waypost_balancer::tls::TlsAcceptor>,
    admin_tls: Option<waypost_balancer::tls::TlsAcceptor>,
}

/// Loads every file `config` names — probes' and listeners' TLS material
/// (re-read later, but it must load now), the admin token.
fn load_material(config: &Config) -> Result<Material, ServeError> {
    for service in &config.services {
        if let Some(tls) = &service.backend_tls {
            let client = crate::probe::client_tls(tls);
            waypost_balancer::tls::TlsDialer::new(&client, "localhost").map_err(|error| {
                ServeError::BackendTls {
                    service: quote(&service.name),
                    error,
                }
            })?;
        }
    }
    let admin_token = match &config.admin_auth.token_file {
        Some(path) => {
            Some(
                crate::admin::read_token(path).map_err(|message| ServeError::AdminToken {
                    path: path.display().to_string(),
                    message,
                })?,
            )
        }
        None => None,
    };
    let (balance_tls, admin_tls) = match &config.tls {
        Some(tls) => {
            let balance = waypost_balancer::tls::TlsAcceptor::new(&tls.balance_load())
                .map_err(ServeError::Tls)?;
            let admin =
                waypost_balancer::tls::TlsAcceptor::new(&tls.admin()).map_err(ServeError::Tls)?;
            (Some(balance), Some(admin))
        }
        None => (None, None),
    };
    Ok(Material {
        admin_token,
        balance_tls,
        admin_tls,
    })
}

/// Checks `config` as [`start`] would, without binding, connecting or
/// resolving anything: every file it names loads (TLS material, the
/// admin token). Its syntax, values and targets were checked when it was
/// parsed. For `waypost serve --check-config`.
pub fn check(config: &Config) -> Result<(), ServeError> {
    load_material(config).map(drop)
}

/// Starts the balancer described by `config`.
pub async fn start(config: Config, options: ServeOptions) -> Result<Running, ServeError> {
    let registry = Registry::new(&config.services);
    let resolvers = ResolverRegistry::new();
    if !config.etcd.is_empty() {
        let client = waypost_resolver::etcd::connect(&config.etcd)
            .await
            .map_err(|e| ServeError::Etcd(e.to_string()))?;
        resolvers.register(waypost_resolver::etcd::EtcdResolverBuilder::new(client));
    }
    // Every source is opened before anything runs: one that can never
    // resolve is a configuration error, not a service with no backends.
    let mut sources = Vec::with_capacity(registry.services().len());
    for service in registry.services() {
        let source = crate::source::open(&service.config.source, &resolvers).map_err(|error| {
            ServeError::Source {
                service: quote(&service.config.name),
                source_text: quote(&service.config.source),
                error,
            }
        })?;
        sources.push(source);
    }
    let Material {
        admin_token,
        balance_tls,
        admin_tls,
    } = load_material(&config)?;
    let tls_stats = balance_tls.as_ref().map(|a| a.stats());
    let listener = bind(config.listen).await?;
    let listen = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: config.listen,
        source,
    })?;
    let admin_listener = match config.admin {
        Some(addr) => Some((addr, bind(addr).await?)),
        None => None,
    };

    let mut helpers = Vec::new();
    for service in registry.services() {
        helpers.push(tokio::spawn(
            service.clone().debounce(options.balance.debounce),
        ));
        helpers.push(tokio::spawn(
            service.clone().expire_draining(options.ads.draining_grace),
        ));
        if service.config.capacity_per_weight.is_some() {
            let every = service
                .config
                .client_stats_interval
                .max(std::time::Duration::from_millis(100));
            helpers.push(tokio::spawn(service.clone().track_load(every)));
        }
    }
    for (service, source) in registry.services().iter().zip(sources) {
        helpers.push(crate::source::follow(
            service.clone(),
            source,
            options.probe.clone(),
        ));
    }
    let admin = match admin_listener {
        Some((addr, admin_listener)) => {
            let bound = admin_listener
                .local_addr()
                .map_err(|source| ServeError::Bind { addr, source })?;
            let access = crate::admin::Access {
                token: admin_token,
                auth_reads: config.admin_auth.auth_reads,
                client_certificates: config
                    .tls
                    .as_ref()
                    .is_some_and(|t| t.client_ca_file.is_some()),
                tls: tls_stats.clone(),
            };
            helpers.push(tokio::spawn(crate::admin::serve(
                incoming(admin_listener, config.limits, admin_tls),
                crate::admin::AdminState::new(registry.clone(), access, None),
                config.limits.handshake_timeout,
            )));
            Some(bound)
        }
        None => None,
    };

    let (stop_streams, stopping) = tokio::sync::watch::channel(false);
    let ads = AdsService::new(registry.clone(), options.ads, stopping.clone());
    let port = crate::port::Port {
        balance: Arc::new(crate::balance::Shared {
            registry: registry.clone(),
            options: options.balance,
            max_request_bytes: MAX_REQUEST_BYTES,
        }),
        routes: tonic::service::Routes::new(ads.clone()),
        ads,
        stopping,
        handshake_timeout: config.limits.handshake_timeout,
        keepalive: options.keepalive,
    };
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let connections = incoming(listener, config.limits, balance_tls);
    let server = tokio::spawn(crate::port::serve(connections, port, shutdown_rx));
    Ok(Running {
        listen,
        admin,
        registry,
        tls: tls_stats,
        shutdown: Some(shutdown_tx),
        stop_streams,
        server,
        helpers,
    })
}
