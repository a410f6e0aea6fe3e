//! Named child policies under one parent — what `xds_cluster_manager`
//! (a child per cluster) and `weighted_target` (a child per locality)
//! share: children built from the registry by name, each given the
//! endpoints whose metadata names it, its subchannels' updates routed back
//! to it, and its latest state and picker kept for the parent's picker.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::ConnectivityState;
use crate::picker::{Picker, QueuePicker};
use crate::policy::{Helper, Policy, PolicyEvents, PolicyRegistry};
use crate::{SubchannelHandle, SubchannelId, SubchannelState};
use serde_json::{Value, json};
use waypost_resolver::{Address, ResolveError, ResolverState};

/// A child policy's name and config.
pub(crate) type ChildConfig = (String, Value);

/// One child.
pub(crate) struct Child {
    policy: Box<dyn Policy>,
    /// Its state, as it last published.
    pub(crate) state: ConnectivityState,
    /// Its picker, as it last published.
    pub(crate) picker: Arc<dyn Picker>,
}

/// The children, by name.
#[derive(Default)]
pub(crate) struct Children {
    pub(crate) children: BTreeMap<String, Child>,
    owners: HashMap<SubchannelId, String>,
}

/// The helper a child gets: its subchannels are noted as its own, its
/// pickers are kept.
struct ChildHelper<'a> {
    parent: &'a mut dyn Helper,
    name: &'a str,
    owners: &'a mut HashMap<SubchannelId, String>,
    published: &'a mut Option<(ConnectivityState, Arc<dyn Picker>)>,
}

impl Helper for ChildHelper<'_> {
    fn new_subchannel(&mut self, addresses: &[Address]) -> SubchannelHandle {
        let handle = self.parent.new_subchannel(addresses);
        self.owners.insert(handle.id(), self.name.to_owned());
        handle
    }

    fn remove_subchannel(&mut self, id: SubchannelId) {
        self.owners.remove(&id);
        self.parent.remove_subchannel(id);
    }

    fn update_picker(&mut self, state: ConnectivityState, picker: Arc<dyn Picker>) {
        *self.published = Some((state, picker));
    }

    fn resolve_now(&mut self) {
        self.parent.resolve_now();
    }

    fn set_timer(&mut self, after: Duration, token: u64) {
        self.parent.set_timer(after, token);
    }

    fn events(&mut self) -> PolicyEvents {
        self.parent.events()
    }

    fn authority(&self) -> String {
        self.parent.authority()
    }

    fn tls(&self) -> Option<crate::ClientTlsConfig> {
        self.parent.tls()
    }
    fn metrics(&self) -> Option<crate::metrics::PolicyMetrics> {
        self.parent.metrics()
    }
}

/// The first registered policy of a `childPolicy` list (round_robin when
/// none is).
pub(crate) fn child_policy(list: Option<&Value>) -> ChildConfig {
    list.and_then(Value::as_array)
        .and_then(|list| {
            list.iter().find_map(|entry| {
                let (name, config) = entry.as_object()?.iter().next()?;
                PolicyRegistry::global()
                    .get(name)
                    .is_some()
                    .then(|| (name.clone(), config.clone()))
            })
        })
        .unwrap_or_else(|| ("round_robin".into(), json!({})))
}

impl Children {
    /// Runs `f` on child `name`, keeping what it publishes; true if it did.
    fn with_child(
        &mut self,
        name: &str,
        helper: &mut dyn Helper,
        f: impl FnOnce(&mut dyn Policy, &mut dyn Helper),
    ) -> bool {
        let Some(child) = self.children.get_mut(name) else {
            return false;
        };
        let mut published = None;
        let mut child_helper = ChildHelper {
            parent: helper,
            name,
            owners: &mut self.owners,
            published: &mut published,
        };
        f(child.policy.as_mut(), &mut child_helper);
        if let Some((state, picker)) = published {
            child.state = state;
            child.picker = picker;
            return true;
        }
        false
    }

    /// Makes the children exactly `wanted` (name → (policy, config)),
    /// giving each the endpoints of `state` whose metadata `key` is its
    /// name. Children no longer wanted go with their subchannels.
    pub(crate) fn update(
        &mut self,
        wanted: &BTreeMap<String, ChildConfig>,
        state: &ResolverState,
        key: &str,
        helper: &mut dyn Helper,
    ) {
        let gone: Vec<String> = self
            .children
            .keys()
            .filter(|name| !wanted.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            self.children.remove(&name);
            let ids: Vec<SubchannelId> = self
                .owners
                .iter()
                .filter(|(_, owner)| **owner == name)
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                self.owners.remove(&id);
                helper.remove_subchannel(id);
            }
        }
        for (name, (policy, config)) in wanted {
            if !self.children.contains_key(name)
                && let Some(builder) = PolicyRegistry::global().get(policy)
            {
                self.children.insert(
                    name.clone(),
                    Child {
                        policy: builder.build(),
                        state: ConnectivityState::Connecting,
                        picker: Arc::new(QueuePicker),
                    },
                );
            }
            let child_state = ResolverState {
                endpoints: state
                    .endpoints
                    .iter()
                    .filter(|e| {
                        e.metadata
                            .as_ref()
                            .and_then(|m| m.get(key))
                            .and_then(Value::as_str)
                            == Some(name.as_str())
                    })
                    .cloned()
                    .collect(),
                ..Default::default()
            };
            self.with_child(name, helper, |child, h| {
                child.resolver_update(&child_state, config, h)
            });
        }
    }

    /// Tells every child the resolver failed.
    pub(crate) fn resolver_error(&mut self, error: &ResolveError, helper: &mut dyn Helper) {
        let names: Vec<String> = self.children.keys().cloned().collect();
        for name in names {
            self.with_child(&name, helper, |child, h| child.resolver_error(error, h));
        }
    }

    /// Routes a subchannel's update to its child; true if that child
    /// published.
    pub(crate) fn subchannel_update(
        &mut self,
        id: SubchannelId,
        state: &SubchannelState,
        helper: &mut dyn Helper,
    ) -> bool {
        let Some(name) = self.owners.get(&id).cloned() else {
            return false;
        };
        self.with_child(&name, helper, |child, h| {
            child.subchannel_update(id, state, h)
        })
    }

    /// Gives a timer to every child (tokens are theirs); true if one
    /// published.
    pub(crate) fn timer(&mut self, token: u64, helper: &mut dyn Helper) -> bool {
        let names: Vec<String> = self.children.keys().cloned().collect();
        let mut published = false;
        for name in names {
            published |= self.with_child(&name, helper, |child, h| child.timer(token, h));
        }
        published
    }

    /// READY if a child is, else CONNECTING if one is, else IDLE if one
    /// is, else TRANSIENT_FAILURE.
    pub(crate) fn aggregate(&self) -> ConnectivityState {
        let any = |s: ConnectivityState| self.children.values().any(|c| c.state == s);
        if any(ConnectivityState::Ready) {
            ConnectivityState::Ready
        } else if any(ConnectivityState::Connecting) {
            ConnectivityState::Connecting
        } else if any(ConnectivityState::Idle) {
            ConnectivityState::Idle
        } else {
            ConnectivityState::TransientFailure
        }
    }
}
