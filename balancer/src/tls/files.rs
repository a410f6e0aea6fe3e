//! The material in force, and the task that re-reads files into it (gRFC
//! A29's file-watcher certificate provider).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_rustls::rustls;

use super::config::{ClientTlsConfig, Material, TlsError};

/// How a channel's TLS material is doing.
#[derive(Debug, Default)]
pub struct TlsStats {
    /// Times changed files were loaded and put in force.
    pub reloads: AtomicU64,
    /// Times changed files could not be used (the last good material was
    /// kept).
    pub reload_failures: AtomicU64,
}

/// The rustls configuration new connections use.
#[derive(Debug)]
pub(crate) struct Current {
    pub(crate) config: ArcSwap<rustls::ClientConfig>,
    pub(crate) stats: Arc<TlsStats>,
}

/// Aborts the reload task when the dialer goes.
#[derive(Debug)]
pub(crate) struct Reloader(tokio::task::JoinHandle<()>);

impl Drop for Reloader {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Loads `config` now (an error if it cannot be used) and, for files,
/// starts re-reading them. Must be called inside a tokio runtime when the
/// material is files.
pub(crate) fn start(
    config: &ClientTlsConfig,
) -> Result<(Arc<Current>, Option<Reloader>), TlsError> {
    let current = Arc::new(Current {
        config: ArcSwap::new(config.load()?),
        stats: Arc::default(),
    });
    let reloader = match &config.material {
        Material::Static { .. } => None,
        Material::Files { refresh, .. } => Some(Reloader(tokio::spawn(reload(
            config.clone(),
            *refresh,
            Arc::downgrade(&current),
            fingerprint(config),
        )))),
    };
    Ok((current, reloader))
}

/// The files' contents (empty where unreadable): what is compared to tell
/// a change.
fn fingerprint(config: &ClientTlsConfig) -> Vec<Vec<u8>> {
    let Material::Files { ca, identity, .. } = &config.material else {
        return Vec::new();
    };
    std::iter::once(ca)
        .chain(identity.iter().flat_map(|(cert, key)| [cert, key]))
        .map(|path| std::fs::read(path).unwrap_or_default())
        .collect()
}

async fn reload(
    config: ClientTlsConfig,
    every: Duration,
    current: Weak<Current>,
    mut last: Vec<Vec<u8>>,
) {
    loop {
        tokio::time::sleep(every).await;
        let Some(current) = current.upgrade() else {
            return;
        };
        let seen = fingerprint(&config);
        if seen == last {
            continue;
        }
        match config.load() {
            Ok(loaded) => {
                current.config.store(loaded);
                current.stats.reloads.fetch_add(1, Ordering::Relaxed);
                last = seen;
                tracing::info!("TLS material reloaded");
            }
            Err(error) => {
                // Half-written or invalid: keep the last good material and
                // try again next time (the fingerprint is not recorded).
                current
                    .stats
                    .reload_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "TLS material changed but cannot be used; keeping the last good");
            }
        }
    }
}
