//! The channel's controller: one task that feeds resolver updates and
//! subchannel state changes to the policy, owns the subchannels, runs the
//! policy's timers, and applies service configs.
//!
//! A change of policy is graceful, as grpc-go's `gracefulswitch` is: the new
//! policy is built *pending* beside the current one and gets the resolver's
//! updates; the current one keeps its subchannels and keeps serving calls
//! until the pending one reports anything but CONNECTING (usually READY),
//! or the current one leaves READY. Then the pending one's picker is
//! published and the old policy and its subchannels go.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use waypost_resolver::{Address, Resolution, ResolverState, ResolverUpdate};

use super::Shared;
use crate::connectivity::ConnectivityState;
use crate::picker::{Picker, QueuePicker};
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
    /// The policy whose picker is in force.
    current: Option<Slot>,
    /// A policy being switched to, while it is not yet READY.
    pending: Option<Slot>,
    last_state: Option<Arc<ResolverState>>,
    world: World,
}

/// One policy instance, numbered so its subchannels, timers and events are
/// told apart from another's during a switch.
struct Slot {
    generation: u64,
    name: String,
    policy: Box<dyn Policy>,
}

/// What the helpers need, apart from the policies they are lent to.
struct World {
    shared: Arc<Shared>,
    subchannels: HashMap<SubchannelId, Subchannel>,
    /// The generation of the policy that created each subchannel.
    owners: HashMap<SubchannelId, u64>,
    next_id: u64,
    options: ConnectOptions,
    // Unbounded but bounded in practice: a subchannel sends at most three
    // events per connection attempt, and attempts are paced by backoff.
    events_tx: mpsc::UnboundedSender<SubchannelEvent>,
    /// (when, policy generation, token).
    timers: Vec<(Instant, u64, u64)>,
    resolve_now: bool,
    health: HealthSettings,
    health_tx: watch::Sender<Option<String>>,
    policy_events: mpsc::UnboundedSender<(u64, Box<dyn std::any::Any + Send>)>,
    next_generation: u64,
    /// The switch in progress: which generation is current, which pending,
    /// what they last reported.
    switch: Switch,
}

/// The graceful switch's bookkeeping (see the module docs).
#[derive(Default)]
struct Switch {
    current: u64,
    pending: Option<u64>,
    /// The current policy's last reported state.
    current_state: Option<ConnectivityState>,
    /// The pending policy's last picker, published when it takes over.
    pending_picker: Option<(ConnectivityState, Arc<dyn Picker>)>,
    /// Set by a report that makes the pending policy take over; the
    /// controller swaps once the policy call returns.
    take_over: bool,
}

/// The helper lent to one policy: everything it does is tagged with its
/// generation.
struct SlotHelper<'a> {
    world: &'a mut World,
    generation: u64,
}

impl Helper for SlotHelper<'_> {
    fn events(&mut self) -> crate::policy::PolicyEvents {
        crate::policy::PolicyEvents {
            tx: self.world.policy_events.clone(),
            generation: self.generation,
        }
    }

    fn authority(&self) -> String {
        self.world.shared.authority.to_string()
    }

    fn tls(&self) -> Option<crate::tls::ClientTlsConfig> {
        self.world.shared.tls.clone()
    }

    fn metrics(&self) -> Option<crate::metrics::PolicyMetrics> {
        self.world
            .shared
            .metrics
            .as_ref()
            .map(|m| crate::metrics::PolicyMetrics::new(m.clone()))
    }

    fn new_subchannel(&mut self, addresses: &[Address]) -> SubchannelHandle {
        let world = &mut *self.world;
        world.next_id += 1;
        let id = SubchannelId(world.next_id);
        let subchannel = Subchannel::spawn(
            id,
            addresses.to_vec(),
            world.options.clone(),
            world.events_tx.clone(),
            world.shared.subchannel_counters.clone(),
            world.health.clone(),
        );
        let handle = subchannel.handle().clone();
        world.subchannels.insert(id, subchannel);
        world.owners.insert(id, self.generation);
        handle
    }

    fn remove_subchannel(&mut self, id: SubchannelId) {
        if self.world.owners.get(&id) == Some(&self.generation) {
            self.world.subchannels.remove(&id);
            self.world.owners.remove(&id);
        }
    }

    fn update_picker(&mut self, state: ConnectivityState, picker: Arc<dyn Picker>) {
        let switch = &mut self.world.switch;
        if switch.pending == Some(self.generation) {
            // Held until it takes over: when it has something other than
            // CONNECTING to say, or the current policy is not READY.
            let current_ready = switch.current_state == Some(ConnectivityState::Ready);
            switch.pending_picker = Some((state, picker));
            if state != ConnectivityState::Connecting || !current_ready {
                switch.take_over = true;
            }
        } else if switch.current == self.generation {
            switch.current_state = Some(state);
            if switch.pending.is_some() && state != ConnectivityState::Ready {
                // The old policy lost READY: the new one takes over now.
                switch.take_over = true;
            } else {
                self.world.shared.publish(state, picker);
            }
        }
        // Any other generation is a policy already gone: ignored.
    }

    fn resolve_now(&mut self) {
        self.world.resolve_now = true;
    }

    fn set_timer(&mut self, after: Duration, token: u64) {
        self.world
            .timers
            .push((Instant::now() + after, self.generation, token));
    }
}

impl World {
    fn helper(&mut self, generation: u64) -> SlotHelper<'_> {
        SlotHelper {
            world: self,
            generation,
        }
    }

    /// Shuts down every subchannel, timer and event of `generation`.
    fn forget(&mut self, generation: u64) {
        let owners = &mut self.owners;
        self.subchannels
            .retain(|id, _| owners.get(id) != Some(&generation));
        owners.retain(|_, owner| *owner != generation);
        self.timers.retain(|(_, owner, _)| *owner != generation);
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
            owners: HashMap::new(),
            next_id: 0,
            options,
            events_tx,
            timers: Vec::new(),
            resolve_now: false,
            health,
            health_tx,
            policy_events,
            next_generation: 0,
            switch: Switch::default(),
        };
        (
            Controller {
                shared,
                resolution,
                policies,
                default_config,
                config_json: None,
                current: None,
                pending: None,
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
            let next_timer = this.world.timers.iter().map(|(at, _, _)| *at).min();
            tokio::select! {
                biased;
                Some(event) = events.recv() => this.on_subchannel(event),
                Some((generation, event)) = policy_events.recv() => {
                    this.with_policy(generation, |policy, helper| policy.event(event, helper));
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
        let (due, later): (Vec<_>, Vec<_>) = self
            .world
            .timers
            .drain(..)
            .partition(|(at, _, _)| *at <= now);
        self.world.timers = later;
        for (_, generation, token) in due {
            self.with_policy(generation, |policy, helper| policy.timer(token, helper));
        }
    }

    fn on_subchannel(&mut self, event: SubchannelEvent) {
        let Some(&owner) = self.world.owners.get(&event.id) else {
            return; // A late event from a removed subchannel.
        };
        if event.transport_closed {
            self.world.resolve_now = true;
        }
        self.with_policy(owner, |policy, helper| {
            policy.subchannel_update(event.id, &event.state, helper)
        });
    }

    /// Calls the policy of `generation` (current or pending; none if it is
    /// gone) with its helper, then completes a switch it caused.
    fn with_policy(
        &mut self,
        generation: u64,
        call: impl FnOnce(&mut dyn Policy, &mut dyn Helper),
    ) {
        let slot = [self.current.as_mut(), self.pending.as_mut()]
            .into_iter()
            .flatten()
            .find(|slot| slot.generation == generation);
        if let Some(slot) = slot {
            call(slot.policy.as_mut(), &mut self.world.helper(generation));
        }
        self.finish_switch();
    }

    /// The newest policy: the one resolver updates go to.
    fn newest(&mut self) -> Option<&mut Slot> {
        self.pending.as_mut().or(self.current.as_mut())
    }

    /// The pending policy takes over if a report asked for it: its held
    /// picker is published, the old policy and its subchannels go.
    fn finish_switch(&mut self) {
        if !std::mem::take(&mut self.world.switch.take_over) {
            return;
        }
        let Some(pending) = self.pending.take() else {
            return;
        };
        if let Some(old) = self.current.replace(pending) {
            self.world.forget(old.generation);
        }
        let switch = &mut self.world.switch;
        switch.current = switch.pending.take().expect("a pending generation");
        let (state, picker) = switch
            .pending_picker
            .take()
            .unwrap_or_else(|| (ConnectivityState::Connecting, Arc::new(QueuePicker)));
        switch.current_state = Some(state);
        self.shared.publish(state, picker);
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
                if let Some(generation) = self.newest().map(|slot| slot.generation) {
                    self.with_policy(generation, |policy, helper| {
                        policy.resolver_update(state, &policy_config, helper)
                    });
                }
            }
        }
        if let Some(error) = &update.error {
            tracing::warn!(%error, "resolver error");
            if self.current.is_none() {
                let config = self.shared.config.load_full();
                self.ensure_policy(config.policy_name());
            }
            if let Some(generation) = self.newest().map(|slot| slot.generation) {
                self.with_policy(generation, |policy, helper| {
                    policy.resolver_error(error, helper)
                });
            }
        }
    }

    /// Applies the resolver's config, else the default; an invalid one is
    /// reported and the previous one kept.
    fn apply_service_config(&mut self, from_resolver: Option<&serde_json::Value>) {
        let json = from_resolver.or(self.default_config.as_ref()).cloned();
        if json == self.config_json && self.current.is_some() {
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

    /// Makes `name` the newest policy: nothing to do if it already is; the
    /// first policy becomes current at once; any later one is built pending
    /// beside the current one (replacing an earlier pending one) and takes
    /// over gracefully (see the module docs).
    fn ensure_policy(&mut self, name: &str) {
        if self.newest().is_some_and(|slot| slot.name == name) {
            return;
        }
        if self.current.as_ref().is_some_and(|slot| slot.name == name) {
            // Switching back before the pending policy took over.
            if let Some(pending) = self.pending.take() {
                self.world.forget(pending.generation);
            }
            self.world.switch.pending = None;
            self.world.switch.pending_picker = None;
            return;
        }
        let Some(builder) = self.policies.get(name) else {
            tracing::warn!(policy = name, "unknown policy");
            return;
        };
        self.world.next_generation += 1;
        let slot = Slot {
            generation: self.world.next_generation,
            name: name.to_owned(),
            policy: builder.build(),
        };
        if self.current.is_none() {
            self.world.switch = Switch {
                current: slot.generation,
                ..Switch::default()
            };
            self.current = Some(slot);
            return;
        }
        if let Some(pending) = self.pending.replace(slot) {
            self.world.forget(pending.generation);
        }
        self.world.switch.pending = Some(self.world.next_generation);
        self.world.switch.pending_picker = None;
    }
}
