//! Leadership transfer for openraft 0.9, which has none.
//!
//! openraft 0.9 cannot hand leadership over: a voter that campaigns while the leader is alive is
//! refused by every follower whose *leader lease* has not expired (`Engine::handle_vote_req`:
//! a committed vote refreshed less than `election_timeout_max` ago), and the lease is refreshed by
//! every append-entries, heartbeats included. A failed campaign is worse than none: the
//! candidate's higher term later deposes the leader anyway, and the shard waits a whole election.
//!
//! So the leader makes the leases expire on purpose, then asks the chosen voter to campaign:
//!
//! 1. **Hold the proposer** ([`ProposerHandle::hold`]): the entries in flight are applied, new
//!    commands wait in the proposer's queue (they are not refused).
//! 2. **Stop heartbeats** (`runtime_config().heartbeat(false)`).
//! 3. **Wait until the target has every entry**, so it can win: a voter grants only to a
//!    candidate whose log is at least as long as its own.
//! 4. **Wait out the lease** (`election_timeout_max` plus one heartbeat interval) from that moment:
//!    no follower has heard from the leader since, so every lease has expired.
//! 5. **Ask the target to campaign** (`trigger().elect()` there, through the caller's `campaign`
//!    call) and wait until this node sees the target lead.
//!
//! Heartbeats and the proposer are given back whatever happens (also when the caller's future is
//! dropped). The queued commands are then proposed to this node's group, which answers
//! `NotLeader` with the new leader, as after any election; clients retry with the same key.
//!
//! A shard stops deciding for about `election_timeout_max` + one heartbeat (1.7 s with the
//! production timings) instead of the 2.5–3 s of an election after a leader leaves. Safety
//! does not depend on any of this: elections stay openraft's, only their timing is chosen.

use std::future::Future;
use std::time::Duration;

use openraft::ServerState;

use crate::config::GroupTiming;
use crate::proposer::ProposerHandle;
use crate::types::{LedgerRaft, NodeId};

/// How long each phase of a transfer may take.
#[derive(Clone, Copy, Debug)]
pub struct TransferSettings {
    /// The followers' leader lease after the last append-entries they accepted, with margin.
    pub lease: Duration,
    /// Most time for the in-flight entries to apply and the target to receive every entry.
    pub catch_up_timeout: Duration,
    /// Most time between asking the target to campaign and seeing it lead.
    pub takeover_timeout: Duration,
}

impl TransferSettings {
    /// The settings for groups with `timing`.
    pub fn from_timing(timing: &GroupTiming) -> Self {
        TransferSettings {
            lease: Duration::from_millis(
                timing.election_timeout_max_ms + timing.heartbeat_interval_ms,
            ),
            catch_up_timeout: Duration::from_millis(timing.election_timeout_max_ms),
            takeover_timeout: Duration::from_millis(2 * timing.election_timeout_max_ms),
        }
    }
}

/// Why leadership did not move. Leadership stays where it was in every case but the last two
/// (the target may still win the election it started).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    #[error("this node does not lead the shard (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("node {node} is not a voter of the shard")]
    NotAVoter { node: NodeId },
    #[error("the shard is changing its membership")]
    MembershipChanging,
    #[error("node {node} did not receive every entry in time (has {matched:?} of {last:?})")]
    NotCaughtUp {
        node: NodeId,
        matched: Option<u64>,
        last: Option<u64>,
    },
    #[error("node {node} could not be asked to campaign: {message}")]
    Campaign { node: NodeId, message: String },
    #[error("node {node} did not take over in time (leader now: {leader:?})")]
    NoTakeover {
        node: NodeId,
        leader: Option<NodeId>,
    },
}

/// On the shard's leader: hands leadership of `raft`'s group to the voter `to`. `proposer` is
/// the group's proposer, held while the leases expire; `campaign` asks node `to` to start an
/// election (see [`campaign`] for its side). Returns once this node has seen `to` lead.
pub async fn transfer_leadership<F, Fut>(
    raft: &LedgerRaft,
    proposer: Option<&ProposerHandle>,
    to: NodeId,
    settings: TransferSettings,
    campaign: F,
) -> Result<(), TransferError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let own_id = raft.metrics().borrow().id;
    check_transfer(raft, own_id, to)?;
    let _hold = match proposer {
        Some(proposer) => Some(proposer.hold().await),
        None => None,
    };
    let _silence = Silence::start(raft);
    // With the proposer held and nothing else writing, the leader's last entry is final.
    let caught_up = raft
        .wait(Some(settings.catch_up_timeout))
        .metrics(
            |metrics| {
                metrics.current_leader != Some(own_id)
                    || matched_index(metrics, to) >= metrics.last_log_index
            },
            "the target has every entry",
        )
        .await;
    let metrics = match caught_up {
        Ok(metrics) => metrics,
        Err(_) => {
            let metrics = raft.metrics().borrow().clone();
            return Err(TransferError::NotCaughtUp {
                node: to,
                matched: matched_index(&metrics, to),
                last: metrics.last_log_index,
            });
        }
    };
    if metrics.current_leader != Some(own_id) {
        return Err(TransferError::NotLeader {
            leader: metrics.current_leader,
        });
    }
    tokio::time::sleep(settings.lease).await;
    campaign()
        .await
        .map_err(|message| TransferError::Campaign { node: to, message })?;
    match raft
        .wait(Some(settings.takeover_timeout))
        .metrics(
            |metrics| metrics.current_leader == Some(to),
            "the target leads",
        )
        .await
    {
        Ok(_) => {
            tracing::info!(to, "leadership transferred");
            Ok(())
        }
        Err(_) => Err(TransferError::NoTakeover {
            node: to,
            leader: raft.metrics().borrow().current_leader,
        }),
    }
}

/// On the target of a transfer: starts an election, as asked by `leader` (the node handing its
/// leadership over). Refuses when this node is not a voter, already leads, or follows another
/// leader than `leader` (the request is stale).
pub async fn campaign(raft: &LedgerRaft, leader: NodeId) -> Result<(), TransferError> {
    let metrics = raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    if !membership.voter_ids().any(|voter| voter == metrics.id) {
        return Err(TransferError::NotAVoter { node: metrics.id });
    }
    if metrics.state == ServerState::Leader {
        return Ok(());
    }
    if metrics.current_leader.is_some_and(|known| known != leader) {
        return Err(TransferError::NotLeader {
            leader: metrics.current_leader,
        });
    }
    raft.trigger()
        .elect()
        .await
        .map_err(|error| TransferError::Campaign {
            node: metrics.id,
            message: error.to_string(),
        })
}

fn check_transfer(raft: &LedgerRaft, own_id: NodeId, to: NodeId) -> Result<(), TransferError> {
    let metrics = raft.metrics().borrow().clone();
    if metrics.current_leader != Some(own_id) {
        return Err(TransferError::NotLeader {
            leader: metrics.current_leader,
        });
    }
    let membership = metrics.membership_config.membership();
    if membership.get_joint_config().len() > 1 {
        return Err(TransferError::MembershipChanging);
    }
    if to == own_id || !membership.voter_ids().any(|voter| voter == to) {
        return Err(TransferError::NotAVoter { node: to });
    }
    Ok(())
}

fn matched_index(
    metrics: &openraft::RaftMetrics<NodeId, crate::types::LedgerNode>,
    node: NodeId,
) -> Option<u64> {
    metrics
        .replication
        .as_ref()
        .and_then(|replication| replication.get(&node).cloned().flatten())
        .map(|log_id| log_id.index)
}

/// Heartbeats off for as long as it lives.
struct Silence<'a> {
    raft: &'a LedgerRaft,
}

impl<'a> Silence<'a> {
    fn start(raft: &'a LedgerRaft) -> Self {
        raft.runtime_config().heartbeat(false);
        Silence { raft }
    }
}

impl Drop for Silence<'_> {
    fn drop(&mut self) {
        self.raft.runtime_config().heartbeat(true);
    }
}
