//! Fault injection for chaos tests: the partition layer that needs no root.
//!
//! Real partitions (iptables, `tc`) need root and outlive a crashed test. Instead, each node's
//! [`RaftTransport`](super::RaftTransport) carries a [`LinkFaults`] handle: while a peer is
//! blocked, every request this node sends to it fails at once as `Unreachable` without touching
//! the socket, and a response that arrives from it after the block is dropped, as a cut cable
//! would. Blocking is one-directional: to partition node A from node B, block B on A **and** A on
//! B; blocking only one side gives an asymmetric partition, which is a useful fault too.

use std::collections::BTreeSet;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::types::NodeId;

/// A shared, cheaply cloned handle on the set of peers this node cannot reach.
#[derive(Clone, Debug, Default)]
pub struct LinkFaults {
    blocked: Arc<RwLock<BTreeSet<NodeId>>>,
}

impl LinkFaults {
    /// Cuts the link to `node_id`: requests to it fail as `Unreachable` until it is unblocked.
    pub fn block_peer(&self, node_id: NodeId) {
        if self.blocked.write().insert(node_id) {
            tracing::warn!(peer = node_id, "fault injection: link to peer blocked");
        }
    }

    /// Restores the link to `node_id`.
    pub fn unblock_peer(&self, node_id: NodeId) {
        if self.blocked.write().remove(&node_id) {
            tracing::warn!(peer = node_id, "fault injection: link to peer unblocked");
        }
    }

    /// Restores every link.
    pub fn unblock_all(&self) {
        let mut blocked = self.blocked.write();
        if !blocked.is_empty() {
            tracing::warn!(peers = ?*blocked, "fault injection: all links unblocked");
            blocked.clear();
        }
    }

    /// Whether requests to `node_id` are currently cut off.
    pub fn is_blocked(&self, node_id: NodeId) -> bool {
        self.blocked.read().contains(&node_id)
    }

    /// The peers currently cut off, in order.
    pub fn blocked_peers(&self) -> Vec<NodeId> {
        self.blocked.read().iter().copied().collect()
    }
}
