//! The two ends of a running resolver: the [`Publisher`] it writes into and
//! the [`Resolution`] its consumer (a channel, the CLI) reads from.
//!
//! The resolver's tasks end when every [`Resolution`] is dropped: they wait
//! on [`Publisher::closed`]. An error never erases the last good state: a
//! consumer sees both the state it had and the error.

use std::sync::Arc;

use tokio::sync::{Notify, watch};

use crate::ResolveError;
use crate::state::ResolverState;

/// The latest word from a resolver.
#[derive(Clone, Debug, Default)]
pub struct ResolverUpdate {
    /// The last good state, if one was ever published.
    pub state: Option<Arc<ResolverState>>,
    /// The error from the most recent attempt, if it failed (cleared by the
    /// next good state).
    pub error: Option<ResolveError>,
}

impl ResolverUpdate {
    /// Whether the resolver has said anything yet.
    pub fn is_empty(&self) -> bool {
        self.state.is_none() && self.error.is_none()
    }
}

/// The writing end a resolver publishes into.
#[derive(Debug)]
pub struct Publisher {
    tx: watch::Sender<ResolverUpdate>,
    hints: Arc<Notify>,
}

impl Publisher {
    /// Publishes a new good state (and clears the error).
    pub fn update(&self, state: ResolverState) {
        self.publish(state, None);
    }

    /// Publishes a new good state together with a problem found while
    /// making it (a skipped value, a failed side lookup), in one update:
    /// every consumer sees both, never one and then the other.
    pub fn publish(&self, state: ResolverState, warning: Option<ResolveError>) {
        self.tx.send_replace(ResolverUpdate {
            state: Some(Arc::new(state)),
            error: warning,
        });
    }

    /// Reports a failed attempt; the last good state stays.
    pub fn report_error(&self, error: ResolveError) {
        self.tx.send_modify(|u| u.error = Some(error));
    }

    /// Resolves when every consumer is gone: the resolver should stop.
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    /// Whether every consumer is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Resolves when a consumer asks to re-resolve ([`Resolution::resolve_now`]).
    /// Several hints before this is awaited count as one.
    pub async fn resolve_now_requested(&self) {
        self.hints.notified().await
    }

    /// The last good state published, if any.
    pub fn last_state(&self) -> Option<Arc<ResolverState>> {
        self.tx.borrow().state.clone()
    }
}

/// The reading end: the consumer of a running resolver.
#[derive(Debug)]
pub struct Resolution {
    rx: watch::Receiver<ResolverUpdate>,
    hints: Arc<Notify>,
}

/// The resolver ended and will publish nothing more (static resolvers end
/// after their one update; the last update stays readable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the resolver has ended")]
pub struct ResolverEnded;

impl Resolution {
    /// A connected publisher and resolution.
    pub fn channel() -> (Publisher, Resolution) {
        let (tx, rx) = watch::channel(ResolverUpdate::default());
        let hints = Arc::new(Notify::new());
        (
            Publisher {
                tx,
                hints: hints.clone(),
            },
            Resolution { rx, hints },
        )
    }

    /// The latest update (possibly empty).
    pub fn current(&self) -> ResolverUpdate {
        self.rx.borrow().clone()
    }

    /// Waits for the next update after the last one seen and returns it.
    pub async fn changed(&mut self) -> Result<ResolverUpdate, ResolverEnded> {
        self.rx.changed().await.map_err(|_| ResolverEnded)?;
        Ok(self.rx.borrow_and_update().clone())
    }

    /// Waits until the resolver has said something (a state or an error)
    /// and returns it; returns the latest update if the resolver ended.
    pub async fn first(&mut self) -> ResolverUpdate {
        let _ = self.rx.wait_for(|u| !u.is_empty()).await;
        self.rx.borrow_and_update().clone()
    }

    /// Asks the resolver to resolve again soon (a hint: resolvers may rate
    /// limit it).
    pub fn resolve_now(&self) {
        self.hints.notify_one();
    }
}
