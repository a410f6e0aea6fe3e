//! The channel's controller: one task that feeds resolver updates and
//! subchannel state changes to the policy, owns the subchannels, runs the
//! policy's timers, and applies service configs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use waypost_resolver::{Address, Resolution, ResolverState, ResolverUpdate};

use super::Shared;
use crate::connectivity::ConnectivityState;
use crate::picker::Picker;
use crate::policy::{Helper, Policy, PolicyRegistry};
use crate::service_config::ServiceConfig;
use crate::subchannel::{
    ConnectOptions, HealthSettings, Subchannel, SubchannelEvent, SubchannelHandle, SubchannelId,
};

/// The controller's event sources.
pub(crate) struct Receivers {
    subchannels: mpsc::UnboundedReceiver<SubchannelEvent>,
    policy: mpsc::UnboundedReceiver<(u64, Box<dyn std::any::Any + Send>)>,
}

pub(crate) struct Controller {
    shared: Arc<Shared>,
    resolution: Resolution,
    policies: PolicyRegistry,
    default_config: Option<serde_json::Value>,
    /// The service config JSON in force (to skip re-parsing the same one).
    config_json: Option<serde_json::Value>,
    policy: Option<(String, Box<dyn Policy>)>,
    last_state: Option<Arc<ResolverState>>,
    world: World,
}

/// What the helper needs, apart from the policy it is lent to.
struct World {
    shared: Arc<Shared>,
    subchannels: HashMap<SubchannelId, Subchannel>,
    next_id: u64,
    options: ConnectOptions,
    // Unbounded but bounded in practice: a subchannel sends at most three
    // events per connection attempt, and attempts are paced by backoff.
    events_tx: mpsc::UnboundedSender<SubchannelEvent>,
    timers: Vec<(Instant, u64)>,
    resolve_now: bool,
    health: HealthSettings,
    health_tx: watch::Sender<Option<String>>,
    policy_events: mpsc::UnboundedSender<(u64, Box<dyn std::any::Any + Send>)>,
    /// Bumped when the policy is replaced, so its stale events are dropped.
    policy_generation: u64,
}

impl Helper for World {
    fn events(&mut self) -> crate::policy::PolicyEvents {
        crate::policy::PolicyEvents {
            tx: self.policy_events.clone(),
            generation: self.policy_generation,
        }
    }

    fn authority(&self) -> String {
        self.shared.authority.to_string()
    }

    fn new_subchannel(&mut self, addresses: &[Address]) -> SubchannelHandle {
        self.next_id += 1;
        let id = SubchannelId(self.next_id);
        let subchannel = Subchannel::spawn(
            id,
            addresses.to_vec(),
            self.options.clone(),
            self.events_tx.clone(),
            self.shared.subchannel_counters.clone(),
            self.health.clone(),
        );
        let handle = subchannel.handle().clone();
        self.subchannels.insert(id, subchannel);
        handle
    }

    fn remove_subchannel(&mut self, id: SubchannelId) {
        self.subchannels.remove(&id);
    }

    fn update_picker(&mut self, state: ConnectivityState, picker: Arc<dyn Picker>) {
        self.shared.publish(state, picker);
    }

    fn resolve_now(&mut self) {
        self.resolve_now = true;
    }

    fn set_timer(&mut self, after: Duration, token: u64) {
        self.timers.push((Instant::now() + after, token));
    }
}

impl Controller {
    pub(crate) fn new(
        shared: Arc<Shared>,
        resolution: Resolution,
        policies: PolicyRegistry,
        default_config: Option<serde_json::Value>,
        options: ConnectOptions,
    ) -> (Self, Receivers) {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (policy_events, policy_rx) = mpsc::unbounded_channel();
        let (health_tx, health_rx) = watch::channel(None);
        let health = HealthSettings {
            service: health_rx,
            authority: shared.authority.clone(),
        };
        let world = World {
            shared: shared.clone(),
            subchannels: HashMap::new(),
            next_id: 0,
            options,
            events_tx,
            timers: Vec::new(),
            resolve_now: false,
            health,
            health_tx,
            policy_events,
            policy_generation: 0,
        };
        (
            Controller {
                shared,
                resolution,
                policies,
                default_config,
                config_json: None,
                policy: None,
                last_state: None,
                world,
            },
            Receivers {
                subchannels: events_rx,
                policy: policy_rx,
            },
        )
    }

    pub(crate) async fn run(self, receivers: Receivers) {
        let Receivers {
            subchannels: mut events,
            policy: mut policy_events,
        } = receivers;
        let mut this = self;
        let mut resolver_live = true;
        loop {
            let next_timer = this.world.timers.iter().map(|(at, _)| *at).min();
            tokio::select! {
                biased;
                Some(event) = events.recv() => this.on_subchannel(event),
                Some((generation, event)) = policy_events.recv() => {
                    if generation == this.world.policy_generation {
                        if let Some((_, policy)) = &mut this.policy {
                            policy.event(event, &mut this.world);
                        }
                    }
                }
                changed = this.resolution.changed(), if resolver_live => match changed {
                    Ok(update) => this.on_resolver(update),
                    // A static resolver has said all it will; keep serving.
                    Err(_) => resolver_live = false,
                },
                _ = tokio::time::sleep_until(next_timer.unwrap_or_else(Instant::now)), if next_timer.is_some() => {
                    this.fire_timers();
                }
            }
            if std::mem::take(&mut this.world.resolve_now) {
                this.resolution.resolve_now();
            }
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) =
            self.world.timers.drain(..).partition(|(at, _)| *at <= now);
        self.world.timers = later;
        if let Some((_, policy)) = &mut self.policy {
            for (_, token) in due {
                policy.timer(token, &mut self.world);
            }
        }
    }

    fn on_subchannel(&mut self, event: SubchannelEvent) {
        if !self.world.subchannels.contains_key(&event.id) {
            return; // A late event from a removed subchannel.
        }
        if event.transport_closed {
            self.world.resolve_now = true;
        }
        if let Some((_, policy)) = &mut self.policy {
            policy.subchannel_update(event.id, &event.state, &mut self.world);
        }
    }

    fn on_resolver(&mut self, update: ResolverUpdate) {
        if let Some(state) = &update.state {
            let is_new = !self
                .last_state
                .as_ref()
                .is_some_and(|last| Arc::ptr_eq(last, state));
            if is_new {
                self.last_state = Some(state.clone());
                self.apply_service_config(state.service_config.as_ref());
                let config = self.shared.config.load_full();
                self.ensure_policy(config.policy_name());
                let policy_config = config.policy_config();
                if let Some((_, policy)) = &mut self.policy {
                    policy.resolver_update(state, &policy_config, &mut self.world);
                }
            }
        }
        if let Some(error) = &update.error {
            tracing::warn!(%error, "resolver error");
            if self.policy.is_none() {
                let config = self.shared.config.load_full();
                self.ensure_policy(config.policy_name());
            }
            if let Some((_, policy)) = &mut self.policy {
                policy.resolver_error(error, &mut self.world);
            }
        }
    }

    /// Applies the resolver's config, else the default; an invalid one is
    /// reported and the previous one kept.
    fn apply_service_config(&mut self, from_resolver: Option<&serde_json::Value>) {
        let json = from_resolver.or(self.default_config.as_ref()).cloned();
        if json == self.config_json && self.policy.is_some() {
            return;
        }
        let parsed = match &json {
            Some(json) => ServiceConfig::parse(json, &self.policies),
            None => Ok(ServiceConfig::default()),
        };
        match parsed {
            Ok(config) => {
                let health = config.health_check_service.clone();
                self.world.health_tx.send_if_modified(|current| {
                    std::mem::replace(current, health.clone()) != health
                });
                self.shared.config.store(Arc::new(config));
                self.config_json = json;
            }
            Err(error) => tracing::warn!(%error, "keeping the previous service config"),
        }
    }

    /// Switches to `name` if another policy (or none) is running.
    fn ensure_policy(&mut self, name: &str) {
        if self
            .policy
            .as_ref()
            .is_some_and(|(current, _)| current == name)
        {
            return;
        }
        let Some(builder) = self.policies.get(name) else {
            tracing::warn!(policy = name, "unknown policy");
            return;
        };
        // The old policy's subchannels go with it.
        self.policy = None;
        self.world.subchannels.clear();
        self.world.timers.clear();
        self.world.policy_generation += 1;
        self.policy = Some((name.to_owned(), builder.build()));
    }
}
