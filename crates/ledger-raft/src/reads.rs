//! Batched linearizable reads: one leadership confirmation serves every read waiting for it.
//!
//! A linearizable read on the leader needs a read index: the leader confirms with a quorum that
//! it still leads (heartbeats) and waits until its state machine applied everything committed
//! when the read began (`Raft::ensure_linearizable`). One round per read would cost a quorum
//! round trip each; instead, reads that arrive while a round is running wait for the *next*
//! round, and one round answers all of them.
//!
//! **Invariant:** a round only answers reads that arrived before it started, so its read index
//! is at least the commit index at each read's arrival: reads stay linearizable. (Joining a
//! round already under way would not be: a write acknowledged between that round's start and
//! the read's arrival could be missed.)

use std::sync::Arc;

use openraft::error::{CheckIsLeaderError, RaftError};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::types::{LedgerRaft, NodeId, ShardId};

/// Why a read could not be confirmed here.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// This node does not lead the shard (any more); the leader it knows of, if any.
    #[error("shard {shard}: not the leader (leader: {leader:?})")]
    NotLeader {
        shard: ShardId,
        leader: Option<NodeId>,
    },
    /// Leadership could not be confirmed now (no quorum, shutting down).
    #[error("shard {shard}: leadership not confirmed: {reason}")]
    Unavailable { shard: ShardId, reason: String },
}

type Waiter = oneshot::Sender<Result<(), ReadError>>;

#[derive(Default)]
struct Pending {
    round_running: bool,
    waiters: Vec<Waiter>,
}

/// The read batcher of one shard replica. Cheap to clone.
#[derive(Clone)]
pub struct ReadBatcher {
    shard: ShardId,
    raft: LedgerRaft,
    pending: Arc<Mutex<Pending>>,
}

impl ReadBatcher {
    pub fn new(shard: ShardId, raft: LedgerRaft) -> ReadBatcher {
        ReadBatcher {
            shard,
            raft,
            pending: Arc::new(Mutex::new(Pending::default())),
        }
    }

    /// Returns once this replica leads the shard and has applied every entry committed before
    /// the call: the shard's state may then be read linearizably.
    pub async fn confirm(&self) -> Result<(), ReadError> {
        let (sender, receiver) = oneshot::channel();
        let start_rounds = {
            let mut pending = self.pending.lock();
            pending.waiters.push(sender);
            !std::mem::replace(&mut pending.round_running, true)
        };
        if start_rounds {
            // A task of its own, so that a caller giving up does not stall the others.
            tokio::spawn(self.clone().run_rounds());
        }
        receiver.await.unwrap_or_else(|_| {
            Err(ReadError::Unavailable {
                shard: self.shard,
                reason: "the read round was dropped".to_owned(),
            })
        })
    }

    async fn run_rounds(self) {
        loop {
            let waiters = {
                let mut pending = self.pending.lock();
                if pending.waiters.is_empty() {
                    pending.round_running = false;
                    return;
                }
                std::mem::take(&mut pending.waiters)
            };
            metrics::histogram!("ledger_reads_per_confirmation").record(waiters.len() as f64);
            let result = match self.raft.ensure_linearizable().await {
                Ok(_) => Ok(()),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
                    Err(ReadError::NotLeader {
                        shard: self.shard,
                        leader: forward.leader_id,
                    })
                }
                Err(error) => Err(ReadError::Unavailable {
                    shard: self.shard,
                    reason: error.to_string(),
                }),
            };
            for waiter in waiters {
                // A reader that went away needs no answer.
                let _ = waiter.send(result.clone());
            }
        }
    }
}
