//! Balancing policies: the public plugin trait, its registry, and the
//! built-in `pick_first` and `round_robin`.
//!
//! A policy is plain synchronous decision logic driven by the channel's
//! controller task: it hears resolver updates and subchannel state changes,
//! creates and removes subchannels through the [`Helper`], and publishes
//! pickers. It does no I/O itself, which keeps it testable.

pub mod grpclb;
pub mod least_request;
pub mod outlier_detection;
mod pick_first;
pub mod ring_hash;
mod round_robin;
pub mod weighted_round_robin;

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use dashmap::DashMap;
use waypost_resolver::{Address, ResolveError, ResolverState};

pub use self::pick_first::{HAPPY_EYEBALLS_DELAY, PickFirst};
pub use self::round_robin::RoundRobin;
use crate::connectivity::ConnectivityState;
use crate::picker::Picker;
use crate::subchannel::{SubchannelHandle, SubchannelId, SubchannelState};

/// Draws a whole number below its argument: the randomness a policy and
/// its pickers use, injected so tests can seed it ([`seeded_random`]).
pub type RandomIndex = Arc<dyn Fn(usize) -> usize + Send + Sync>;

thread_local! {
    /// A fast generator per thread for picks (least_request's choices,
    /// ring_hash's random hashes): balancing needs spread, not secrecy,
    /// and rand's cryptographic thread generator costs several times
    /// more per draw. Seeded from the system's randomness.
    static PICK_RNG: std::cell::RefCell<rand::rngs::SmallRng> =
        std::cell::RefCell::new(rand::make_rng());
}

/// The randomness policies use by default: a fast per-thread generator
/// seeded from the system.
pub fn thread_random() -> RandomIndex {
    use rand::RngExt;
    Arc::new(|n| PICK_RNG.with(|rng| rng.borrow_mut().random_range(0..n.max(1))))
}

/// A random 64-bit number from the same fast per-thread generator.
pub(crate) fn thread_random_u64() -> u64 {
    use rand::Rng;
    PICK_RNG.with(|rng| rng.borrow_mut().next_u64())
}

/// A reproducible source seeded with `seed`, for tests.
pub fn seeded_random(seed: u64) -> RandomIndex {
    use rand::{RngExt, SeedableRng};
    let rng = parking_lot::Mutex::new(rand::rngs::SmallRng::seed_from_u64(seed));
    Arc::new(move |n| rng.lock().random_range(0..n.max(1)))
}

/// What a policy may ask of its channel.
pub trait Helper {
    /// Creates an IDLE subchannel for `addresses` (tried in order).
    fn new_subchannel(&mut self, addresses: &[Address]) -> SubchannelHandle;
    /// Shuts a subchannel down.
    fn remove_subchannel(&mut self, id: SubchannelId);
    /// Publishes the channel's state and the picker for new calls.
    fn update_picker(&mut self, state: ConnectivityState, picker: Arc<dyn Picker>);
    /// Asks the resolver to resolve again.
    fn resolve_now(&mut self);
    /// Calls [`Policy::timer`] with `token` after `after`.
    fn set_timer(&mut self, after: Duration, token: u64);
    /// A sender whose messages reach [`Policy::event`], for policies that
    /// run tasks of their own (grpclb's balancer stream).
    fn events(&mut self) -> PolicyEvents;
    /// The channel's `:authority` (by default the target's endpoint).
    fn authority(&self) -> String;
    /// The channel's TLS settings (`None`: plaintext), for policies that
    /// open channels of their own, as grpclb does to its balancers.
    fn tls(&self) -> Option<crate::tls::ClientTlsConfig> {
        None
    }
    /// Where the policy records its metrics (gRFC A78), when the channel
    /// records any ([`ChannelBuilder::metrics`](crate::ChannelBuilder::metrics)).
    fn metrics(&self) -> Option<crate::metrics::PolicyMetrics> {
        None
    }
}

/// Sends events to the channel's policy (see [`Helper::events`]). Events
/// sent after the policy was replaced are dropped.
#[derive(Debug, Clone)]
pub struct PolicyEvents {
    pub(crate) tx: tokio::sync::mpsc::UnboundedSender<(u64, Box<dyn std::any::Any + Send>)>,
    pub(crate) generation: u64,
}

impl PolicyEvents {
    /// Delivers `event` to the policy; false if the channel is gone.
    pub fn send(&self, event: impl std::any::Any + Send) -> bool {
        self.tx.send((self.generation, Box::new(event))).is_ok()
    }
}

/// A balancing policy instance (one per channel).
pub trait Policy: Send + 'static {
    /// New addresses from the resolver, with this policy's config object
    /// from the service config (`{}` when none).
    fn resolver_update(
        &mut self,
        state: &ResolverState,
        config: &serde_json::Value,
        helper: &mut dyn Helper,
    );

    /// The resolver failed. The default keeps whatever the policy has, and
    /// fails calls if it has nothing yet.
    fn resolver_error(&mut self, error: &ResolveError, helper: &mut dyn Helper) {
        let _ = (error, helper);
    }

    /// A subchannel this policy created changed state.
    fn subchannel_update(
        &mut self,
        id: SubchannelId,
        state: &SubchannelState,
        helper: &mut dyn Helper,
    );

    /// A timer set with [`Helper::set_timer`] fired.
    fn timer(&mut self, token: u64, helper: &mut dyn Helper) {
        let _ = (token, helper);
    }

    /// An event sent through [`Helper::events`].
    fn event(&mut self, event: Box<dyn std::any::Any + Send>, helper: &mut dyn Helper) {
        let _ = (event, helper);
    }
}

/// Fails calls with the resolver's error: what a policy does when
/// resolution fails before it has any address to try.
pub fn fail_resolution(error: &ResolveError, helper: &mut dyn Helper) {
    helper.update_picker(
        ConnectivityState::TransientFailure,
        Arc::new(crate::picker::FailPicker(
            format!("name resolution failed: {error}").into(),
        )),
    );
}

/// Builds a policy by name, as selected by the service config's
/// `loadBalancingConfig`.
pub trait PolicyBuilder: Send + Sync + 'static {
    /// The name in `loadBalancingConfig` (e.g. `"round_robin"`).
    fn name(&self) -> &str;
    /// Checks this policy's config object; an error rejects the service config.
    fn validate(&self, config: &serde_json::Value) -> Result<(), String> {
        let _ = config;
        Ok(())
    }
    /// A new instance.
    fn build(&self) -> Box<dyn Policy>;
    /// For a top-level policy whose config chooses settings per call (the
    /// xDS cluster manager's routes), the selector for `config`; the
    /// channel builds it once per service config. Default: none.
    fn call_config(
        &self,
        config: &serde_json::Value,
    ) -> Option<Arc<dyn crate::service_config::CallConfigSelector>> {
        let _ = config;
        None
    }
}

/// Policy builders by name; local registries fall back to the global one.
#[derive(Clone, Default)]
pub struct PolicyRegistry {
    builders: Arc<DashMap<String, Arc<dyn PolicyBuilder>>>,
    is_global: bool,
}

impl std::fmt::Debug for PolicyRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<String> = self.builders.iter().map(|e| e.key().clone()).collect();
        names.sort();
        f.debug_struct("PolicyRegistry")
            .field("names", &names)
            .finish()
    }
}

static GLOBAL: LazyLock<PolicyRegistry> = LazyLock::new(|| {
    let registry = PolicyRegistry {
        builders: Arc::default(),
        is_global: true,
    };
    registry.register(pick_first::PickFirstBuilder);
    registry.register(round_robin::RoundRobinBuilder);
    registry.register(grpclb::GrpclbBuilder);
    registry.register(ring_hash::RingHashBuilder {
        name: "ring_hash_experimental",
    });
    registry.register(ring_hash::RingHashBuilder { name: "ring_hash" });
    #[cfg(feature = "xds")]
    crate::xds::policy::register_into(&registry);
    registry.register(least_request::LeastRequestBuilder {
        name: "least_request_experimental",
    });
    registry.register(least_request::LeastRequestBuilder {
        name: "least_request",
    });
    registry.register(outlier_detection::OutlierDetectionBuilder {
        name: "outlier_detection_experimental",
    });
    registry.register(outlier_detection::OutlierDetectionBuilder {
        name: "outlier_detection",
    });
    registry.register(weighted_round_robin::WrrBuilder);
    registry
});

impl PolicyRegistry {
    /// An empty local registry (falls back to the global one).
    pub fn new() -> Self {
        Self::default()
    }

    /// The process-wide registry with `pick_first` and `round_robin`.
    pub fn global() -> &'static PolicyRegistry {
        &GLOBAL
    }

    /// Adds or replaces a builder.
    pub fn register(&self, builder: impl PolicyBuilder) {
        self.builders
            .insert(builder.name().to_owned(), Arc::new(builder));
    }

    /// The builder named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn PolicyBuilder>> {
        if let Some(b) = self.builders.get(name) {
            return Some(b.value().clone());
        }
        if self.is_global {
            None
        } else {
            GLOBAL.get(name)
        }
    }
}
