//! The material in force, and the task that re-reads files into it (gRFC
//! A29's file-watcher certificate provider), for client and server
//! configurations alike.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;

use super::config::TlsError;

/// How a TLS configuration's material is doing.
#[derive(Debug, Default)]
pub struct TlsStats {
    /// Times changed files were loaded and put in force.
    pub reloads: AtomicU64,
    /// Times changed files could not be used (the last good material was
    /// kept).
    pub reload_failures: AtomicU64,
}

/// A TLS configuration that can be (re)loaded into a rustls one.
pub(crate) trait Source: Clone + Send + Sync + 'static {
    /// The rustls configuration it loads into.
    type Loaded: Send + Sync + 'static;
    /// Reads the material as it is now.
    fn load(&self) -> Result<Arc<Self::Loaded>, TlsError>;
    /// The files to watch and how often, when the material is files.
    fn watched(&self) -> Option<(Vec<PathBuf>, Duration)>;
}

/// The rustls configuration new connections use.
#[derive(Debug)]
pub(crate) struct Current<C> {
    pub(crate) config: ArcSwap<C>,
    pub(crate) stats: Arc<TlsStats>,
}

/// The reload task, aborted when its owner goes.
pub(crate) type Reloader = tokio_util::task::AbortOnDropHandle<()>;

/// Material in force and, for files, the task keeping it fresh (shared by
/// clones of its owner; the task ends with the last of them).
#[derive(Debug, Clone)]
pub(crate) struct Watched<C> {
    pub(crate) current: Arc<Current<C>>,
    pub(crate) reloader: Option<Arc<Reloader>>,
}

/// Loads `source` now (an error if it cannot be used) and, for files,
/// starts re-reading them. Must be called inside a tokio runtime when the
/// material is files.
pub(crate) fn start<S: Source>(source: &S) -> Result<Watched<S::Loaded>, TlsError> {
    let current = Arc::new(Current {
        config: ArcSwap::new(source.load()?),
        stats: Arc::default(),
    });
    let reloader = source.watched().map(|(files, every)| {
        let seen = fingerprint(&files);
        Arc::new(Reloader::new(tokio::spawn(reload(
            source.clone(),
            files,
            every,
            Arc::downgrade(&current),
            seen,
        ))))
    });
    Ok(Watched { current, reloader })
}

/// The files' contents (empty where unreadable): what is compared to tell
/// a change.
fn fingerprint(files: &[PathBuf]) -> Vec<Vec<u8>> {
    files
        .iter()
        .map(|path| std::fs::read(path).unwrap_or_default())
        .collect()
}

async fn reload<S: Source>(
    source: S,
    files: Vec<PathBuf>,
    every: Duration,
    current: Weak<Current<S::Loaded>>,
    mut last: Vec<Vec<u8>>,
) {
    loop {
        tokio::time::sleep(every).await;
        let Some(current) = current.upgrade() else {
            return;
        };
        let seen = fingerprint(&files);
        if seen == last {
            continue;
        }
        match source.load() {
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
