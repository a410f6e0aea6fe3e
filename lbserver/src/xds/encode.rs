//! Encode once, send many: each resource is encoded once per version, as
//! the bytes of a `DiscoveryResponse.resources` field, and every stream's
//! response is those shared bytes plus a few bytes of its own (version,
//! type URL, nonce). Protobuf lets a message's fields come in any order
//! and in separate pieces, so the pieces are simply written one after the
//! other; nothing is re-encoded per stream.
//!
//! ```
//! use prost::Message;
//! use waypost_lbserver::xds::encode::{EncodedResource, response};
//! use waypost_lbserver::xds::ResourceType;
//! use envoy_types::pb::envoy::config::cluster::v3::Cluster;
//! use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
//!
//! let cluster = Cluster { name: "movies".into(), ..Default::default() };
//! let encoded = EncodedResource::new(ResourceType::Cluster, "movies", &cluster);
//! let bytes = response(ResourceType::Cluster, "v1", "7", &[&encoded]).to_bytes();
//! let decoded = DiscoveryResponse::decode(bytes).unwrap();
//! assert_eq!((decoded.version_info.as_str(), decoded.nonce.as_str()), ("v1", "7"));
//! assert_eq!(decoded.resources.len(), 1);
//! ```

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use super::ResourceType;
use crate::assign::stable_hash;

/// One resource, encoded once for every stream that needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedResource {
    /// Its name.
    pub name: String,
    /// Its version: a hash of its encoding, so replicas serving the same
    /// content give the same version.
    pub version: Version,
    /// The encoded `resources` field (tag 2, an `Any`).
    pub field: Bytes,
}

/// `DiscoveryResponse` field numbers.
const VERSION_INFO: u32 = 1;
const RESOURCES: u32 = 2;
const TYPE_URL: u32 = 4;
const NONCE: u32 = 5;

impl EncodedResource {
    /// Encodes `message` as a resource of type `ty` named `name`.
    pub fn new<M: Message>(ty: ResourceType, name: &str, message: &M) -> EncodedResource {
        let any = Any {
            type_url: ty.type_url().into(),
            value: message.encode_to_vec(),
        };
        let version = Version(stable_hash(any.value.iter().copied()));
        let mut field = BytesMut::new();
        prost::encoding::message::encode(RESOURCES, &any, &mut field);
        EncodedResource {
            name: name.to_owned(),
            version,
            field: field.freeze(),
        }
    }
}

/// A version: a content hash, written as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version(pub u64);

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A response's `version_info`: the version of what it carries, `None`
/// (written as the empty string) for nothing.
pub type VersionInfo = Option<Version>;

/// `version_info` as written on the wire.
pub fn version_text(version: VersionInfo) -> String {
    version.map(|v| v.to_string()).unwrap_or_default()
}

/// The version of a set of resources (sorted by name): a hash of their
/// names and versions, `None` for none.
pub fn version_of(resources: &[&EncodedResource]) -> VersionInfo {
    if resources.is_empty() {
        return None;
    }
    let bytes = resources
        .iter()
        .flat_map(|r| r.name.bytes().chain([0]).chain(r.version.0.to_le_bytes()));
    Some(Version(stable_hash(bytes)))
}

/// A `DiscoveryResponse` in pieces: this stream's header and the shared
/// resource fields. Its [`Message`] encoding writes the pieces in turn
/// (it is only ever encoded, never decoded).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outgoing {
    header: Bytes,
    resources: Vec<Bytes>,
    /// Its version.
    pub version_info: String,
    /// Its nonce.
    pub nonce: String,
}

impl Outgoing {
    /// The whole encoding in one buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        self.encode_raw(&mut out);
        out.freeze()
    }

    /// How many resources it carries.
    pub fn resource_count(&self) -> usize {
        self.resources.len()
    }
}

/// A response of type `ty` at `version_info` with `nonce`, carrying
/// `resources`.
pub fn response(
    ty: ResourceType,
    version_info: &str,
    nonce: &str,
    resources: &[&EncodedResource],
) -> Outgoing {
    let mut header = BytesMut::new();
    prost::encoding::string::encode(VERSION_INFO, &version_info.to_owned(), &mut header);
    prost::encoding::string::encode(TYPE_URL, &ty.type_url().to_owned(), &mut header);
    prost::encoding::string::encode(NONCE, &nonce.to_owned(), &mut header);
    Outgoing {
        header: header.freeze(),
        resources: resources.iter().map(|r| r.field.clone()).collect(),
        version_info: version_info.to_owned(),
        nonce: nonce.to_owned(),
    }
}

impl Message for Outgoing {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.header);
        for field in &self.resources {
            buf.put_slice(field);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.header.len() + self.resources.iter().map(Bytes::len).sum::<usize>()
    }

    fn clear(&mut self) {
        *self = Outgoing::default();
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;

    use super::*;

    #[test]
    fn pieces_decode_as_the_response_prost_would_build() {
        let a = ClusterLoadAssignment {
            cluster_name: "a".into(),
            ..Default::default()
        };
        let b = ClusterLoadAssignment {
            cluster_name: "b".into(),
            ..Default::default()
        };
        let ra = EncodedResource::new(ResourceType::Endpoints, "a", &a);
        let rb = EncodedResource::new(ResourceType::Endpoints, "b", &b);
        let out = response(ResourceType::Endpoints, "v", "n", &[&ra, &rb]);
        let decoded = DiscoveryResponse::decode(out.to_bytes()).unwrap();
        let expected = DiscoveryResponse {
            version_info: "v".into(),
            type_url: ResourceType::Endpoints.type_url().into(),
            nonce: "n".into(),
            resources: [&a, &b]
                .iter()
                .map(|m| Any {
                    type_url: ResourceType::Endpoints.type_url().into(),
                    value: m.encode_to_vec(),
                })
                .collect(),
            ..Default::default()
        };
        assert_eq!(decoded, expected);
        assert_eq!(out.encoded_len(), out.to_bytes().len());
    }

    #[test]
    fn versions_follow_content_only() {
        let a = |name: &str| {
            EncodedResource::new(
                ResourceType::Endpoints,
                "a",
                &ClusterLoadAssignment {
                    cluster_name: name.into(),
                    ..Default::default()
                },
            )
        };
        assert_eq!(a("x").version, a("x").version);
        assert_ne!(a("x").version, a("y").version);
        assert_eq!(version_of(&[&a("x")]), version_of(&[&a("x")]));
        assert_ne!(version_of(&[&a("x")]), version_of(&[&a("y")]));
        assert_eq!(version_of(&[]), None);
        assert_eq!(version_text(Some(Version(255))), "00000000000000ff");
    }
}
