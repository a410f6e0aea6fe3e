//! The ADS protocol (State of the World) as a pure state machine: what is
//! subscribed, what the server sent and what was accepted, the ACKs and
//! NACKs to send, and the does-not-exist timers — told the time, doing no
//! I/O. The XdsClient's stream task drives it.
//!
//! The rules, from gRFC A27 and A46 and as C-core behaves (XDS.md):
//! - One request per resource type names every subscribed resource of it;
//!   the first request of a stream carries the node.
//! - ACK: the response's `version_info` and nonce. NACK: the last accepted
//!   version, the rejected response's nonce, and an INVALID_ARGUMENT
//!   `error_detail` naming each invalid resource. The valid resources of a
//!   NACKed response are still taken; an invalid one keeps its previous
//!   value.
//! - LDS and CDS responses hold every subscribed resource that exists: one
//!   left out does not exist (unless the server has
//!   `ignore_resource_deletion`). RDS and EDS leave out what did not change.
//! - A subscribed resource not received within 15 s of the request does
//!   not exist. The timer runs only while a stream is up.
//! - A new stream re-requests everything with the last accepted versions
//!   and no nonce; the cache is kept.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tokio::time::Instant;

/// How long a requested resource may take to arrive before it is taken
/// not to exist.
pub const DOES_NOT_EXIST_TIMEOUT: Duration = Duration::from_secs(15);

/// gRPC's status code INVALID_ARGUMENT, for NACKs.
const INVALID_ARGUMENT: i32 = 3;

/// A decoded, validated resource, shared with every watcher.
pub type Value = Arc<dyn std::any::Any + Send + Sync>;

/// Why a resource in a response was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceError {
    /// Its name, when it could be read.
    pub name: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// How one resource type is decoded and validated.
pub struct ResourceType {
    /// Its type URL.
    pub type_url: &'static str,
    /// Whether a response holds every resource of the type that exists
    /// (LDS, CDS).
    pub full_state: bool,
    /// Decodes and validates one resource: its name and value.
    pub decode: fn(&Any) -> Result<(String, Value), ResourceError>,
}

impl std::fmt::Debug for ResourceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceType")
            .field("type_url", &self.type_url)
            .field("full_state", &self.full_state)
            .finish_non_exhaustive()
    }
}

/// Where one subscribed resource stands (what CSDS reports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceStatus {
    /// Asked for; nothing received yet.
    Requested,
    /// Received and accepted in this version.
    Acked {
        /// The response's version.
        version: String,
    },
    /// The last one received was refused (an earlier value, if any, is
    /// still in use).
    Nacked {
        /// The refused response's version.
        version: String,
        /// Why.
        error: String,
    },
    /// The server says (or its silence does) that it does not exist.
    DoesNotExist,
}

/// A change watchers must hear about.
#[derive(Clone)]
pub enum Event {
    /// A new value.
    Changed {
        /// The type URL.
        type_url: String,
        /// The resource.
        name: String,
        /// Its value.
        value: Value,
    },
    /// The resource does not exist (its value, if any, is dropped).
    DoesNotExist {
        /// The type URL.
        type_url: String,
        /// The resource.
        name: String,
    },
    /// An update to it was refused; a previous value stays in use.
    Refused {
        /// The type URL.
        type_url: String,
        /// The resource.
        name: String,
        /// Why.
        error: String,
    },
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Changed { type_url, name, .. } => {
                write!(f, "Changed({type_url}, {name})")
            }
            Event::DoesNotExist { type_url, name } => {
                write!(f, "DoesNotExist({type_url}, {name})")
            }
            Event::Refused {
                type_url,
                name,
                error,
            } => write!(f, "Refused({type_url}, {name}: {error})"),
        }
    }
}

#[derive(Default)]
struct Entry {
    refs: usize,
    status: Option<ResourceStatus>,
    /// The accepted value and its encoding (to see whether an update
    /// changes anything).
    value: Option<(Value, Vec<u8>)>,
    /// When its does-not-exist timer fires (`None`: not running).
    deadline: Option<Instant>,
}

#[derive(Default)]
struct TypeState {
    /// The last accepted version.
    version: String,
    /// The last response's nonce.
    nonce: String,
    resources: BTreeMap<String, Entry>,
}

/// The protocol state of one ADS stream's client side. See the
/// [module docs](self).
pub struct AdsState {
    node: Node,
    types: BTreeMap<&'static str, (&'static ResourceType, TypeState)>,
    ignore_resource_deletion: bool,
    /// Whether a stream is up (timers run only then).
    connected: bool,
    /// Whether this stream's first request (with the node) went out.
    node_sent: bool,
}

impl std::fmt::Debug for AdsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdsState")
            .field("types", &self.types.keys().collect::<Vec<_>>())
            .field("connected", &self.connected)
            .finish_non_exhaustive()
    }
}

impl AdsState {
    /// A state for `node` knowing `types`.
    pub fn new(
        node: Node,
        types: &[&'static ResourceType],
        ignore_resource_deletion: bool,
    ) -> AdsState {
        AdsState {
            node,
            types: types
                .iter()
                .map(|t| (t.type_url, (*t, TypeState::default())))
                .collect(),
            ignore_resource_deletion,
            connected: false,
            node_sent: false,
        }
    }

    /// The request for `type_url` naming every subscribed resource.
    fn request(&mut self, type_url: &'static str) -> DiscoveryRequest {
        let (_, state) = &self.types[type_url];
        let node = (!self.node_sent).then(|| self.node.clone());
        self.node_sent = true;
        DiscoveryRequest {
            version_info: state.version.clone(),
            node,
            resource_names: state.resources.keys().cloned().collect(),
            type_url: type_url.to_owned(),
            response_nonce: state.nonce.clone(),
            ..Default::default()
        }
    }

    /// The known type URL equal to `type_url`, if this client knows it.
    fn type_url(&self, type_url: &str) -> Option<&'static str> {
        self.types.get_key_value(type_url).map(|(k, _)| *k)
    }

    /// A watcher wants `name`: its cached status and value, and the
    /// request to send if it was not subscribed yet (and a stream is up).
    /// A type this client does not know gets no status at all.
    pub fn subscribe(
        &mut self,
        type_url: &str,
        name: &str,
        now: Instant,
    ) -> (
        Option<ResourceStatus>,
        Option<Value>,
        Option<DiscoveryRequest>,
    ) {
        let Some(type_url) = self.type_url(type_url) else {
            return (None, None, None);
        };
        let connected = self.connected;
        let (_, state) = self.types.get_mut(type_url).expect("known type");
        let entry = state.resources.entry(name.to_owned()).or_default();
        entry.refs += 1;
        if entry.refs > 1 {
            let value = entry.value.as_ref().map(|(v, _)| v.clone());
            return (entry.status.clone(), value, None);
        }
        entry.status = Some(ResourceStatus::Requested);
        if !connected {
            return (entry.status.clone(), None, None);
        }
        entry.deadline = Some(now + DOES_NOT_EXIST_TIMEOUT);
        let status = entry.status.clone();
        (status, None, Some(self.request(type_url)))
    }

    /// A watcher no longer wants `name`; the last one gone unsubscribes
    /// (the request to send, if a stream is up).
    pub fn unsubscribe(&mut self, type_url: &str, name: &str) -> Option<DiscoveryRequest> {
        let type_url = self.type_url(type_url)?;
        let (_, state) = self.types.get_mut(type_url).expect("known type");
        let entry = state.resources.get_mut(name)?;
        entry.refs = entry.refs.saturating_sub(1);
        if entry.refs > 0 {
            return None;
        }
        state.resources.remove(name);
        self.connected.then(|| self.request(type_url))
    }

    /// A new stream is up: every type with subscriptions is requested again
    /// (last accepted versions, no nonce), and timers restart for what has
    /// not arrived.
    pub fn stream_started(&mut self, now: Instant) -> Vec<DiscoveryRequest> {
        self.connected = true;
        self.node_sent = false;
        let mut wanted = Vec::new();
        for (type_url, (_, state)) in &mut self.types {
            state.nonce.clear();
            if state.resources.is_empty() {
                continue;
            }
            for entry in state.resources.values_mut() {
                if entry.value.is_none() && entry.status != Some(ResourceStatus::DoesNotExist) {
                    entry.deadline = Some(now + DOES_NOT_EXIST_TIMEOUT);
                }
            }
            wanted.push(*type_url);
        }
        wanted.into_iter().map(|t| self.request(t)).collect()
    }

    /// The stream ended: timers stop (the cache stays).
    pub fn stream_ended(&mut self) {
        self.connected = false;
        for (_, state) in self.types.values_mut() {
            for entry in state.resources.values_mut() {
                entry.deadline = None;
            }
        }
    }

    /// Takes in a response: the ACK or NACK to send, and the changes.
    pub fn response(&mut self, response: DiscoveryResponse) -> (DiscoveryRequest, Vec<Event>) {
        let Some(type_url) = self
            .types
            .get_key_value(response.type_url.as_str())
            .map(|(k, _)| *k)
        else {
            // Not a type this client asked for: refuse it whole.
            let nack = DiscoveryRequest {
                type_url: response.type_url.clone(),
                response_nonce: response.nonce.clone(),
                node: (!self.node_sent).then(|| self.node.clone()),
                error_detail: Some(RpcStatus {
                    code: INVALID_ARGUMENT,
                    message: format!("unknown resource type {}", response.type_url),
                    details: Vec::new(),
                }),
                ..Default::default()
            };
            self.node_sent = true;
            return (nack, Vec::new());
        };
        let ignore_deletion = self.ignore_resource_deletion;
        let (kind, state) = self.types.get_mut(type_url).expect("known type");
        state.nonce = response.nonce.clone();
        let mut events = Vec::new();
        let mut errors: Vec<String> = Vec::new();
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut refused: BTreeSet<String> = BTreeSet::new();
        for (index, any) in response.resources.iter().enumerate() {
            if any.type_url != type_url {
                errors.push(format!(
                    "resource index {index}: type {} in a {type_url} response",
                    any.type_url
                ));
                continue;
            }
            let (name, value) = match (kind.decode)(any) {
                Ok(decoded) => decoded,
                Err(error) => {
                    let label = error.name.clone().unwrap_or_default();
                    errors.push(format!(
                        "resource index {index}: {label}: INVALID_ARGUMENT: {}",
                        error.message
                    ));
                    if let Some(name) = error.name
                        && let Some(entry) = state.resources.get_mut(&name)
                    {
                        entry.deadline = None;
                        entry.status = Some(ResourceStatus::Nacked {
                            version: response.version_info.clone(),
                            error: error.message.clone(),
                        });
                        events.push(Event::Refused {
                            type_url: type_url.to_owned(),
                            name: name.clone(),
                            error: error.message,
                        });
                        refused.insert(name);
                    }
                    continue;
                }
            };
            if !seen.insert(name.clone()) {
                errors.push(format!(
                    "resource index {index}: {name}: duplicate resource name"
                ));
                continue;
            }
            let Some(entry) = state.resources.get_mut(&name) else {
                continue; // Not subscribed: ignored.
            };
            entry.deadline = None;
            entry.status = Some(ResourceStatus::Acked {
                version: response.version_info.clone(),
            });
            let unchanged = entry
                .value
                .as_ref()
                .is_some_and(|(_, bytes)| *bytes == any.value);
            if !unchanged {
                entry.value = Some((value.clone(), any.value.clone()));
                events.push(Event::Changed {
                    type_url: type_url.to_owned(),
                    name,
                    value,
                });
            }
        }
        if kind.full_state && !ignore_deletion {
            for (name, entry) in &mut state.resources {
                let absent = !seen.contains(name) && !refused.contains(name);
                if absent && entry.status != Some(ResourceStatus::DoesNotExist) {
                    entry.deadline = None;
                    entry.value = None;
                    entry.status = Some(ResourceStatus::DoesNotExist);
                    events.push(Event::DoesNotExist {
                        type_url: type_url.to_owned(),
                        name: name.clone(),
                    });
                }
            }
        }
        let error_detail = if errors.is_empty() {
            state.version = response.version_info.clone();
            None
        } else {
            Some(RpcStatus {
                code: INVALID_ARGUMENT,
                message: format!("xDS response validation errors: [{}]", errors.join("; ")),
                details: Vec::new(),
            })
        };
        let mut reply = self.request(type_url);
        reply.error_detail = error_detail;
        (reply, events)
    }

    /// Resources whose does-not-exist timer has run out by `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<Event> {
        let mut events = Vec::new();
        for (type_url, (_, state)) in &mut self.types {
            for (name, entry) in &mut state.resources {
                if entry.deadline.is_some_and(|d| d <= now) {
                    entry.deadline = None;
                    entry.status = Some(ResourceStatus::DoesNotExist);
                    events.push(Event::DoesNotExist {
                        type_url: (*type_url).to_owned(),
                        name: name.clone(),
                    });
                }
            }
        }
        events
    }

    /// When the next does-not-exist timer runs out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.types
            .values()
            .flat_map(|(_, state)| state.resources.values())
            .filter_map(|entry| entry.deadline)
            .min()
    }

    /// Every subscribed resource and where it stands, by type URL and name.
    pub fn statuses(&self) -> Vec<(String, String, ResourceStatus)> {
        self.types
            .iter()
            .flat_map(|(type_url, (_, state))| {
                state.resources.iter().map(|(name, entry)| {
                    (
                        (*type_url).to_owned(),
                        name.clone(),
                        entry.status.clone().unwrap_or(ResourceStatus::Requested),
                    )
                })
            })
            .collect()
    }
}

#[cfg(test)]
#[path = "ads_tests.rs"]
mod tests;
