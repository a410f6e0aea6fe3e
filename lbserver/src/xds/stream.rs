//! One ADS stream's protocol state (State of the World), with no I/O: what
//! each request means (a subscription, an ACK, a NACK, a stale request to
//! ignore) and what, given the resources now, is due to be sent.
//!
//! Per type: the names subscribed (or every resource, for a legacy
//! wildcard LDS/CDS request), the nonce and version last sent, the version
//! last ACKed and the last NACK. At most one response per type is
//! unanswered at a time: later changes wait for the ACK or NACK and go out
//! as one response then, so a client that never ACKs costs nothing more.
//! LDS and CDS responses carry every subscribed resource (a name left out
//! means it does not exist); RDS and EDS responses carry only what changed
//! since this stream last got it.
//!
//! ```
//! use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
//! use waypost_lbserver::xds::stream::{AdsStream, StreamLimits};
//! use waypost_lbserver::xds::ResourceType;
//!
//! let mut stream = AdsStream::new(StreamLimits::default());
//! let request = DiscoveryRequest {
//!     type_url: ResourceType::Cluster.type_url().into(),
//!     resource_names: vec!["movies".into()],
//!     ..Default::default()
//! };
//! stream.on_request(&request).unwrap();
//! // Nothing named "movies" exists: LDS and CDS still answer (an empty
//! // response tells the client at once that it does not exist).
//! let response = stream.next_response(ResourceType::Cluster, &[]).unwrap();
//! assert_eq!(response.resource_count(), 0);
//! ```

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;

use super::ResourceType;
use super::encode::{
    EncodedResource, Outgoing, Version, VersionInfo, response, version_of, version_text,
};

/// Bounds on what one stream may ask for.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// Resource names subscribed across all types, at most.
    pub max_names: usize,
    /// The longest resource name, exclusive.
    pub max_name_bytes: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_names: 1024,
            max_name_bytes: 256,
        }
    }
}

/// A request the stream cannot accept (it is closed with this).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// ADS requests must name their type.
    #[error("an ADS request must have a type_url")]
    MissingTypeUrl,
    /// Not one of LDS, RDS, CDS, EDS.
    #[error(
        "type_url {0} is not served (only Listener, RouteConfiguration, Cluster and ClusterLoadAssignment)"
    )]
    UnknownType(String),
    /// A resource name of [`StreamLimits::max_name_bytes`] or more.
    #[error("a resource name is {0} bytes long (the limit is {1})")]
    NameTooLong(usize, usize),
    /// More than [`StreamLimits::max_names`] names subscribed.
    #[error("{0} resource names subscribed on one stream (the limit is {1})")]
    TooManyNames(usize, usize),
    /// The stream's first request names no resource (and is no LDS/CDS
    /// wildcard): there is nothing to serve it.
    #[error("the first request subscribes to nothing (no resource names)")]
    SubscribesToNothing,
}

/// A NACK: the client rejected a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    /// The version it keeps (its last accepted one, empty if none).
    pub version: String,
    /// The nonce of the response it rejected.
    pub nonce: String,
    /// Its error message (cut short).
    pub message: String,
}

/// The longest NACK message kept.
pub const MAX_NACK_MESSAGE: usize = 1024;

/// What a request meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// The first request of its type, or a changed subscription, with no
    /// response outstanding.
    Subscription,
    /// It ACKed the response of this version (and may have changed its
    /// subscription).
    Ack(VersionInfo),
    /// It NACKed a response.
    Nack(Nack),
    /// It answered a response that has been superseded: ignored.
    Stale,
}

/// One type's state. Kept small: a server holds one per type per client.
#[derive(Debug, Default)]
struct TypeState {
    requested: bool,
    wildcard: bool,
    /// A response is owed even if nothing changed (first request, or a
    /// changed subscription).
    due: bool,
    /// A response is not yet ACKed or NACKed.
    awaiting: bool,
    /// Sorted, without duplicates.
    names: Vec<String>,
    /// The nonce last sent (nonces start at 1; 0: none yet).
    last_nonce: u64,
    /// The version last sent (`None`: nothing sent yet).
    last_version: Option<VersionInfo>,
    /// RDS/EDS: the version of each resource this stream was last sent,
    /// sorted by name.
    sent: Vec<(String, Version)>,
    acked: Option<VersionInfo>,
    nack: Option<Box<Nack>>,
}

/// One ADS stream's state.
#[derive(Debug)]
pub struct AdsStream {
    limits: StreamLimits,
    types: [TypeState; 4],
    /// Counts subscription changes (of any type).
    generation: u64,
    next_nonce: u64,
    node_id: Option<String>,
    user_agent: Option<String>,
}

/// How a type's subscription reads.
#[derive(Debug, Clone, Copy)]
pub enum Subscription<'a> {
    /// Every resource of the type.
    Wildcard,
    /// These names (sorted).
    Names(&'a [String]),
}

impl AdsStream {
    /// A stream that has received nothing yet.
    pub fn new(limits: StreamLimits) -> AdsStream {
        AdsStream {
            limits,
            types: Default::default(),
            generation: 0,
            next_nonce: 0,
            node_id: None,
            user_agent: None,
        }
    }

    /// Takes in one request.
    pub fn on_request(
        &mut self,
        request: &DiscoveryRequest,
    ) -> Result<(ResourceType, Received), ProtocolError> {
        if request.type_url.is_empty() {
            return Err(ProtocolError::MissingTypeUrl);
        }
        let ty = ResourceType::from_type_url(&request.type_url)
            .ok_or_else(|| ProtocolError::UnknownType(cut(&request.type_url, 128)))?;
        if let Some(node) = &request.node
            && self.node_id.is_none()
        {
            self.node_id = Some(cut(&node.id, 128));
            self.user_agent = Some(cut(&node.user_agent_name, 128));
        }
        if let Some(long) = request
            .resource_names
            .iter()
            .find(|n| n.len() >= self.limits.max_name_bytes)
        {
            return Err(ProtocolError::NameTooLong(
                long.len(),
                self.limits.max_name_bytes,
            ));
        }
        let state = &self.types[ty.index()];
        let nonce = request.response_nonce.as_str();
        let current_nonce = state.last_nonce != 0 && nonce.parse() == Ok(state.last_nonce);
        if !nonce.is_empty() && !current_nonce {
            return Ok((ty, Received::Stale));
        }
        let answered = current_nonce && state.awaiting;
        // The subscription: a legacy wildcard (an empty first LDS/CDS
        // request, or "*"), or the names given.
        let mut names: Vec<String> = request
            .resource_names
            .iter()
            .filter(|n| n.as_str() != "*")
            .cloned()
            .collect();
        names.sort_unstable();
        names.dedup();
        let star = request.resource_names.iter().any(|n| n == "*");
        let wildcard =
            star || (ty.full_state() && names.is_empty() && (!state.requested || state.wildcard));
        let others: usize = self
            .types
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != ty.index())
            .map(|(_, t)| t.names.len())
            .sum();
        if others + names.len() > self.limits.max_names {
            return Err(ProtocolError::TooManyNames(
                others + names.len(),
                self.limits.max_names,
            ));
        }
        let first_request = self.types.iter().all(|t| !t.requested);
        if first_request && names.is_empty() && !wildcard {
            return Err(ProtocolError::SubscribesToNothing);
        }
        let state = &mut self.types[ty.index()];
        if !state.requested || names != state.names || wildcard != state.wildcard {
            state.due = true;
            self.generation += 1;
        }
        state.requested = true;
        state
            .sent
            .retain(|(name, _)| wildcard || names.binary_search(name).is_ok());
        names.shrink_to_fit();
        state.names = names;
        state.wildcard = wildcard;
        if !answered {
            return Ok((ty, Received::Subscription));
        }
        state.awaiting = false;
        match &request.error_detail {
            Some(error) => {
                let nack = Nack {
                    version: cut(&request.version_info, 128),
                    nonce: nonce.to_owned(),
                    message: cut(&error.message, MAX_NACK_MESSAGE),
                };
                state.nack = Some(Box::new(nack.clone()));
                Ok((ty, Received::Nack(nack)))
            }
            None => {
                let version = state.last_version.flatten();
                state.acked = Some(version);
                Ok((ty, Received::Ack(version)))
            }
        }
    }

    /// A number that changes whenever any type's subscription does.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// What the stream subscribed to of type `ty` (`None`: nothing asked).
    pub fn subscription(&self, ty: ResourceType) -> Option<Subscription<'_>> {
        let state = &self.types[ty.index()];
        if !state.requested {
            None
        } else if state.wildcard {
            Some(Subscription::Wildcard)
        } else {
            Some(Subscription::Names(&state.names))
        }
    }

    /// Whether a response of `ty` may be due (one was asked for and none is
    /// unanswered).
    pub fn may_send(&self, ty: ResourceType) -> bool {
        let state = &self.types[ty.index()];
        state.requested && !state.awaiting
    }

    /// The response of type `ty` due now, given `current`: the subscribed
    /// resources that exist, sorted by name. `None` while one is
    /// unanswered, or when nothing changed and nothing is owed.
    pub fn next_response(
        &mut self,
        ty: ResourceType,
        current: &[&EncodedResource],
    ) -> Option<Outgoing> {
        if !self.may_send(ty) {
            return None;
        }
        let state = &mut self.types[ty.index()];
        let version = version_of(current);
        let carried: Vec<&EncodedResource> = if ty.full_state() {
            if state.last_version == Some(version) && !state.due {
                return None;
            }
            current.to_vec()
        } else {
            let sent_version = |name: &str| {
                state
                    .sent
                    .binary_search_by(|(n, _)| n.as_str().cmp(name))
                    .ok()
                    .map(|i| state.sent[i].1)
            };
            let changed: Vec<&EncodedResource> = current
                .iter()
                .copied()
                .filter(|r| sent_version(&r.name) != Some(r.version))
                .collect();
            if changed.is_empty() {
                // Nothing of theirs exists or changed: RDS and EDS are not
                // answered with nothing.
                state.due = false;
                return None;
            }
            changed
        };
        state.due = false;
        self.next_nonce += 1;
        state.awaiting = true;
        state.last_nonce = self.next_nonce;
        state.last_version = Some(version);
        if !ty.full_state() {
            for r in &carried {
                match state
                    .sent
                    .binary_search_by(|(n, _)| n.as_str().cmp(&r.name))
                {
                    Ok(i) => state.sent[i].1 = r.version,
                    Err(i) => state.sent.insert(i, (r.name.clone(), r.version)),
                }
            }
        }
        Some(response(
            ty,
            &version_text(version),
            &self.next_nonce.to_string(),
            &carried,
        ))
    }

    /// The client's node id (from its first request that had a node).
    pub fn node_id(&self) -> Option<&str> {
        self.node_id.as_deref()
    }

    /// The client's user agent name.
    pub fn user_agent(&self) -> Option<&str> {
        self.user_agent.as_deref()
    }

    /// The version of `ty` the client last ACKed (`None`: no ACK yet).
    pub fn acked(&self, ty: ResourceType) -> Option<VersionInfo> {
        self.types[ty.index()].acked
    }

    /// The client's last NACK of `ty`.
    pub fn last_nack(&self, ty: ResourceType) -> Option<&Nack> {
        self.types[ty.index()].nack.as_deref()
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn cut(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::google::rpc::Status;

    use super::*;

    fn request(ty: ResourceType, names: &[&str], nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: ty.type_url().into(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn eds(name: &str, content: &str) -> EncodedResource {
        EncodedResource::new(
            ResourceType::Endpoints,
            name,
            &ClusterLoadAssignment {
                cluster_name: content.into(),
                ..Default::default()
            },
        )
    }

    #[test]
    fn one_response_outstanding_per_type_then_only_what_changed() {
        let mut stream = AdsStream::new(StreamLimits::default());
        let ty = ResourceType::Endpoints;
        let (a1, b1, a2) = (eds("a", "1"), eds("b", "1"), eds("a", "2"));
        assert_eq!(
            stream.on_request(&request(ty, &["a", "b"], "")).unwrap(),
            (ty, Received::Subscription)
        );
        let first = stream.next_response(ty, &[&a1, &b1]).unwrap();
        assert_eq!(first.resource_count(), 2);
        // Unanswered: a change waits.
        assert!(stream.next_response(ty, &[&a2, &b1]).is_none());
        let ack = stream
            .on_request(&request(ty, &["a", "b"], &first.nonce))
            .unwrap();
        let (_, Received::Ack(acked)) = ack else {
            panic!("not an ACK: {ack:?}");
        };
        assert_eq!(version_text(acked), first.version_info);
        // Then only `a` goes out, at a version covering both.
        let second = stream.next_response(ty, &[&a2, &b1]).unwrap();
        assert_eq!(second.resource_count(), 1);
        assert_ne!(second.version_info, first.version_info);
        assert_ne!(second.nonce, first.nonce);
        stream
            .on_request(&request(ty, &["a", "b"], &second.nonce))
            .unwrap();
        assert!(
            stream.next_response(ty, &[&a2, &b1]).is_none(),
            "nothing new"
        );
    }

    #[test]
    fn lds_and_cds_answer_every_time_with_every_resource_even_none() {
        let mut stream = AdsStream::new(StreamLimits::default());
        let ty = ResourceType::Cluster;
        stream.on_request(&request(ty, &["missing"], "")).unwrap();
        let empty = stream.next_response(ty, &[]).unwrap();
        assert_eq!(empty.resource_count(), 0);
        stream
            .on_request(&request(ty, &["missing", "x"], &empty.nonce))
            .unwrap();
        let x = EncodedResource::new(
            ty,
            "x",
            &envoy_types::pb::envoy::config::cluster::v3::Cluster::default(),
        );
        assert_eq!(stream.next_response(ty, &[&x]).unwrap().resource_count(), 1);
    }

    #[test]
    fn a_nack_is_recorded_and_a_stale_nonce_ignored() {
        let mut stream = AdsStream::new(StreamLimits::default());
        let ty = ResourceType::Endpoints;
        stream.on_request(&request(ty, &["a"], "")).unwrap();
        let first = stream.next_response(ty, &[&eds("a", "1")]).unwrap();
        stream
            .on_request(&request(ty, &["a"], &first.nonce))
            .unwrap();
        let second = stream.next_response(ty, &[&eds("a", "2")]).unwrap();
        // An answer to the first response arriving late: ignored, even its
        // names.
        assert_eq!(
            stream
                .on_request(&request(ty, &["a", "z"], &first.nonce))
                .unwrap(),
            (ty, Received::Stale)
        );
        let mut nack = request(ty, &["a"], &second.nonce);
        nack.version_info = first.version_info.clone();
        nack.error_detail = Some(Status {
            code: 3,
            message: "bad".into(),
            details: Vec::new(),
        });
        let (_, received) = stream.on_request(&nack).unwrap();
        let expected = Nack {
            version: first.version_info.clone(),
            nonce: second.nonce.clone(),
            message: "bad".into(),
        };
        assert_eq!(received, Received::Nack(expected.clone()));
        assert_eq!(stream.last_nack(ty), Some(&expected));
        assert_eq!(
            stream.acked(ty).map(version_text),
            Some(first.version_info.clone())
        );
    }

    #[test]
    fn a_resubscribed_name_is_sent_again() {
        let mut stream = AdsStream::new(StreamLimits::default());
        let ty = ResourceType::Endpoints;
        let a = eds("a", "1");
        stream.on_request(&request(ty, &["a"], "")).unwrap();
        let first = stream.next_response(ty, &[&a]).unwrap();
        stream.on_request(&request(ty, &[], &first.nonce)).unwrap();
        assert!(stream.next_response(ty, &[]).is_none());
        stream
            .on_request(&request(ty, &["a"], &first.nonce))
            .unwrap();
        assert_eq!(stream.next_response(ty, &[&a]).unwrap().resource_count(), 1);
    }

    #[test]
    fn a_first_request_for_nothing_is_refused() {
        let mut stream = AdsStream::new(StreamLimits::default());
        assert_eq!(
            stream.on_request(&request(ResourceType::Endpoints, &[], "")),
            Err(ProtocolError::SubscribesToNothing)
        );
        // Unsubscribing from everything later is fine.
        let mut stream = AdsStream::new(StreamLimits::default());
        stream
            .on_request(&request(ResourceType::Endpoints, &["a"], ""))
            .unwrap();
        stream
            .on_request(&request(ResourceType::Endpoints, &[], ""))
            .unwrap();
    }

    #[test]
    fn wildcards_and_limits() {
        let mut stream = AdsStream::new(StreamLimits {
            max_names: 3,
            max_name_bytes: 8,
        });
        stream
            .on_request(&request(ResourceType::Listener, &[], ""))
            .unwrap();
        assert!(matches!(
            stream.subscription(ResourceType::Listener),
            Some(Subscription::Wildcard)
        ));
        // An empty EDS request is no wildcard.
        stream
            .on_request(&request(ResourceType::Endpoints, &[], ""))
            .unwrap();
        assert!(matches!(
            stream.subscription(ResourceType::Endpoints),
            Some(Subscription::Names(n)) if n.is_empty()
        ));
        assert_eq!(
            stream.on_request(&request(ResourceType::Cluster, &["a", "b", "c", "d"], "")),
            Err(ProtocolError::TooManyNames(4, 3))
        );
        assert_eq!(
            stream.on_request(&request(ResourceType::Cluster, &["123456789"], "")),
            Err(ProtocolError::NameTooLong(9, 8))
        );
        assert_eq!(
            stream.on_request(&DiscoveryRequest::default()),
            Err(ProtocolError::MissingTypeUrl)
        );
        assert!(matches!(
            stream.on_request(&DiscoveryRequest {
                type_url: "type.googleapis.com/x.Y".into(),
                ..Default::default()
            }),
            Err(ProtocolError::UnknownType(_))
        ));
    }
}
