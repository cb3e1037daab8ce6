//! The openraft type configuration of a ledger shard and the state shared between the state
//! machine store (which writes it at apply) and the readers (linearizable reads, digests).

use std::fmt;
use std::io::Cursor;
use std::sync::Arc;

use ledger_core::{Command, Ledger, Outcome};
use openraft::{LogId, StoredMembership};
use serde::{Deserialize, Serialize};

/// A node of the cluster, as named in the cluster config.
pub type NodeId = u64;

/// A shard: `ledger_core::shard_for_account(account_id, shard_count)`.
pub type ShardId = u32;

/// What a Raft group knows of a node: where to reach it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerNode {
    /// Node-to-node (Raft) address, `host:port`.
    pub raft_addr: String,
    /// Client and admin HTTP address, `host:port`; requests are forwarded here.
    pub http_addr: String,
}

impl fmt::Display for LedgerNode {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "raft={} http={}", self.raft_addr, self.http_addr)
    }
}

/// One Raft entry's payload: many ledger commands, stamped with the leader's time. One entry per
/// batch is what makes one fsync serve thousands of debits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerBatch {
    /// The proposing leader's wall-clock time, made monotonic per shard by the proposer; the state
    /// machine additionally never lets time go backwards across leaders.
    pub timestamp_ms: u64,
    /// Shared, so that the copies openraft makes of an entry (the log store's in-memory tail,
    /// replication to each follower, the state machine) do not copy its commands. Encoded as a
    /// plain sequence, the same bytes as a `Vec`.
    pub commands: Arc<[Command]>,
}

/// The outcomes of one entry's commands, in the same order. Empty for blank and membership entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchOutcome {
    pub outcomes: Vec<Outcome>,
}

openraft::declare_raft_types!(
    /// The openraft types of a ledger shard.
    pub TypeConfig:
        D = LedgerBatch,
        R = BatchOutcome,
        NodeId = NodeId,
        Node = LedgerNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type LedgerRaft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LedgerLogId = LogId<NodeId>;
pub type LedgerMembership = StoredMembership<NodeId, LedgerNode>;

/// The applied state of one shard on this node. Written only by the state machine store, under
/// the write lock, together with `last_applied`: a reader holding the read lock sees a ledger and
/// the exact log position it reflects.
#[derive(Clone, Debug, Default)]
pub struct ShardState {
    pub ledger: Ledger,
    pub last_applied: Option<LedgerLogId>,
    pub last_membership: LedgerMembership,
}

/// Shared handle on a shard's applied state.
pub type SharedShardState = Arc<parking_lot::RwLock<ShardState>>;
