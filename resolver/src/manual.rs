//! The `manual` resolver: states pushed from code, for tests and for
//! discovery systems that are not worth a resolver of their own.
//!
//! ```
//! use waypost_resolver::{Endpoint, ManualResolver, ResolverRegistry, ResolverState};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let manual = ManualResolver::new("manual");
//! let registry = ResolverRegistry::new();
//! registry.register(manual.clone());
//!
//! let mut resolution = registry.resolve("manual:///orders").unwrap();
//! let addr: std::net::SocketAddr = "127.0.0.1:50051".parse().unwrap();
//! manual.update(ResolverState::from_endpoints([Endpoint::new(addr)]));
//! let update = resolution.changed().await.unwrap();
//! assert_eq!(update.state.unwrap().endpoints.len(), 1);
//! # }
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::ResolveError;
use crate::publish::Publisher;
use crate::registry::ResolverBuilder;
use crate::state::ResolverState;
use crate::target::Target;

/// A resolver whose states come from [`ManualResolver::update`]. Clones
/// share everything; every resolution built from it sees every update, and
/// one built later starts with the latest state.
#[derive(Clone, Debug)]
pub struct ManualResolver {
    scheme: String,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    publishers: Mutex<Vec<Arc<Publisher>>>,
    last: Mutex<Option<ResolverState>>,
    resolve_now: AtomicU64,
}

impl ManualResolver {
    /// A manual resolver for `scheme` (register it in a registry).
    pub fn new(scheme: impl Into<String>) -> Self {
        ManualResolver {
            scheme: scheme.into().to_ascii_lowercase(),
            shared: Arc::default(),
        }
    }

    /// Publishes `state` to every live resolution, and remembers it for
    /// resolutions built later.
    pub fn update(&self, state: ResolverState) {
        let mut publishers = self.shared.publishers.lock();
        publishers.retain(|p| !p.is_closed());
        for publisher in publishers.iter() {
            publisher.update(state.clone());
        }
        *self.shared.last.lock() = Some(state);
    }

    /// Reports an error to every live resolution (their last state stays).
    pub fn report_error(&self, error: ResolveError) {
        let mut publishers = self.shared.publishers.lock();
        publishers.retain(|p| !p.is_closed());
        for publisher in publishers.iter() {
            publisher.report_error(error.clone());
        }
    }

    /// How many `resolve_now` hints consumers have sent.
    pub fn resolve_now_count(&self) -> u64 {
        self.shared.resolve_now.load(Ordering::SeqCst)
    }

    /// How many resolutions built from it are still live.
    pub fn live_resolutions(&self) -> usize {
        let mut publishers = self.shared.publishers.lock();
        publishers.retain(|p| !p.is_closed());
        publishers.len()
    }
}

impl ResolverBuilder for ManualResolver {
    fn scheme(&self) -> &str {
        &self.scheme
    }

    fn build(&self, _target: &Target, publisher: Publisher) -> Result<(), ResolveError> {
        if let Some(state) = self.shared.last.lock().clone() {
            publisher.update(state);
        }
        let publisher = Arc::new(publisher);
        self.shared.publishers.lock().push(publisher.clone());
        // Count resolve_now hints until the consumer goes away.
        let shared = self.shared.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = publisher.closed() => break,
                    _ = publisher.resolve_now_requested() => {
                        shared.resolve_now.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        });
        Ok(())
    }
}
