//! The grpclb picker: walks the balancer's whole list in order. A drop
//! entry fails the call and counts a drop for its token; a backend entry is
//! used if its subchannel is READY, else skipped. With the `pick_first`
//! child policy, every call goes to the first READY backend in the list.

use std::sync::Arc;

use crate::picker::{Pick, PickInfo, Picker, Routed};
use crate::sequence::Sequence;
use crate::subchannel::Connection;

use super::stats::GrpclbStats;

/// The status message of a dropped call, as grpc-go words it.
pub const DROP_MESSAGE: &str = "drop directed by grpclb balancer";

/// One list entry.
#[derive(Debug, Clone)]
pub(crate) enum Entry {
    /// Drop the call; count it under this token.
    Drop(Arc<str>),
    /// A backend: its connection if READY, and its `lb-token` header.
    Backend {
        connection: Option<Connection>,
        token: Option<http::HeaderValue>,
    },
}

pub(crate) struct GrpclbPicker {
    pub(crate) entries: Arc<[Entry]>,
    pub(crate) stats: Arc<GrpclbStats>,
    pub(crate) pick_first: bool,
    pub(crate) drop_message: Arc<str>,
    /// Where the walk is (a random start per picker).
    pub(crate) sequence: Sequence,
}

impl GrpclbPicker {
    fn route(&self, connection: &Connection, token: &Option<http::HeaderValue>) -> Pick {
        Pick::Ready(Routed {
            connection: connection.clone(),
            header: token
                .clone()
                .map(|t| (http::HeaderName::from_static("lb-token"), t)),
            tracker: Some(self.stats.clone()),
        })
    }
}

impl Picker for GrpclbPicker {
    fn pick(&self, _call: &PickInfo<'_>) -> Pick {
        if self.pick_first {
            return self
                .entries
                .iter()
                .find_map(|e| match e {
                    Entry::Backend {
                        connection: Some(c),
                        token,
                    } => Some(self.route(c, token)),
                    _ => None,
                })
                .unwrap_or(Pick::Queue);
        }
        let n = self.entries.len();
        for _ in 0..n {
            match &self.entries[self.sequence.next() % n] {
                Entry::Drop(token) => {
                    self.stats.dropped(token);
                    return Pick::Drop(self.drop_message.clone());
                }
                Entry::Backend {
                    connection: Some(c),
                    token,
                } => return self.route(c, token),
                Entry::Backend {
                    connection: None, ..
                } => {}
            }
        }
        Pick::Queue
    }
}
