//! The election gate: PreVote for openraft 0.9, which has none.
//!
//! Without PreVote, a node that could not hear its leader for a while (it was paused with
//! SIGSTOP, or cut off by a partition) starts elections with ever higher terms that it cannot win.
//! When it comes back, the leaders see that higher term in its replies and step down, and the
//! shard has no leader for a whole election timeout although nothing was wrong with it. The
//! chaos harness measured ~2 s of `no_leader` after every long pause (jepsen-tests/RESULTS.md).
//!
//! Every group is built with elections disabled (`enable_elect: false`); this task, one per node,
//! opens a group's gate (`runtime_config().elect(true)`) only while both hold:
//!
//! 1. **This node has not heard from a leader for `campaign_after` of running time.** Heard means
//!    an append-entries that openraft accepted (counted by the transport's
//!    [`ShardRegistry`]). Running time advances on each tick by the time since the previous tick,
//!    capped at two ticks, so the seconds a process spends stopped (or starved by the scheduler)
//!    do not count: a resumed node finds its leader's heartbeats waiting and stays a follower.
//! 2. **A majority would vote for it** (in every half of a joint configuration): this node
//!    counts itself, and each peer answers a pre-vote request, granting it when the peer has not
//!    heard from a leader for `grant_after` and does not lead the shard itself. A node cut off by
//!    a partition gets no answers, so it never raises its term, and healing deposes nobody.
//!
//! Once open, openraft's own randomized election timeout and leader lease still decide when the
//! node campaigns, so split votes stay as rare as before. The gate only ever delays elections; it
//! cannot make two leaders of one term (openraft's vote handling does not change), so safety
//! does not depend on it, only availability.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use openraft::ServerState;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::GroupTiming;
use crate::network::{LeaderContact, RaftTransport, ShardRegistry};
use crate::types::{LedgerNode, LedgerRaft, NodeId, ShardId};

/// When the gate opens and when this node grants pre-votes.
#[derive(Clone, Copy, Debug)]
pub struct GateSettings {
    /// How often silence is measured and pre-votes are asked (each ask is bounded by it too).
    pub tick: Duration,
    /// Running time without a leader after which this node asks to campaign.
    pub campaign_after: Duration,
    /// Running time without a leader after which this node grants a peer's pre-vote. Shorter
    /// than `campaign_after`, so peers whose last heartbeat came a little later than ours do not
    /// hold a needed election back by a tick.
    pub grant_after: Duration,
}

impl GateSettings {
    /// The settings for groups with `timing`: ask after the shortest election timeout, grant
    /// after half of it, tick with the heartbeat.
    pub fn from_timing(timing: &GroupTiming) -> Self {
        GateSettings {
            tick: Duration::from_millis(timing.heartbeat_interval_ms),
            campaign_after: Duration::from_millis(timing.election_timeout_min_ms),
            grant_after: Duration::from_millis(timing.election_timeout_min_ms / 2),
        }
    }
}

/// What the gate of one node has decided so far, for metrics and tests.
#[derive(Debug, Default)]
pub struct GateStats {
    /// Pre-vote rounds that found a majority (the gate was opened or kept open).
    pub rounds_won: AtomicU64,
    /// Pre-vote rounds that did not (the gate stayed or was put closed).
    pub rounds_lost: AtomicU64,
}

impl GateStats {
    pub fn rounds_won(&self) -> u64 {
        self.rounds_won.load(Ordering::Relaxed)
    }

    pub fn rounds_lost(&self) -> u64 {
        self.rounds_lost.load(Ordering::Relaxed)
    }
}

/// The per-shard state the gate keeps between ticks.
#[derive(Debug)]
struct ShardSilence {
    appends_seen: u64,
    silent_for: Duration,
    open: bool,
}

/// Starts the gate of this node's groups (all groups registered in `registry`, now or later).
/// The groups must have been built with elections disabled, as
/// [`group_config`](crate::config::group_config) does. Ends when `shutdown` completes.
pub fn spawn_election_gate(
    registry: Arc<ShardRegistry>,
    transport: Arc<RaftTransport>,
    settings: GateSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> (JoinHandle<()>, Arc<GateStats>) {
    let stats = Arc::new(GateStats::default());
    let gate = ElectionGate {
        registry,
        transport,
        settings,
        stats: Arc::clone(&stats),
        shards: HashMap::new(),
    };
    (tokio::spawn(gate.run(shutdown)), stats)
}

struct ElectionGate {
    registry: Arc<ShardRegistry>,
    transport: Arc<RaftTransport>,
    settings: GateSettings,
    stats: Arc<GateStats>,
    shards: HashMap<ShardId, ShardSilence>,
}

/// A shard whose gate wants to open, with what its pre-vote round needs.
struct Candidacy {
    shard: ShardId,
    raft: LedgerRaft,
    /// The voter sets that each need a majority (two during a joint configuration).
    voter_sets: Vec<BTreeSet<NodeId>>,
    peers: Vec<(NodeId, LedgerNode)>,
}

impl ElectionGate {
    async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut ticks = tokio::time::interval(self.settings.tick);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_tick = Instant::now();
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = ticks.tick() => {}
            }
            let now = Instant::now();
            // A stopped process or a starved scheduler must not count as silence.
            let elapsed = (now - last_tick).min(self.settings.tick * 2);
            last_tick = now;
            self.tick(elapsed).await;
        }
    }

    async fn tick(&mut self, elapsed: Duration) {
        let groups = self.registry.contacts();
        self.shards
            .retain(|shard, _| groups.iter().any(|(registered, _, _)| registered == shard));
        let mut candidacies = Vec::new();
        for (shard, raft, contact) in groups {
            if let Some(candidacy) = self.observe(shard, raft, &contact, elapsed) {
                candidacies.push(candidacy);
            }
        }
        let rounds = candidacies
            .into_iter()
            .map(|candidacy| self.pre_vote(candidacy));
        for (shard, raft, won) in join_all(rounds).await {
            let counter = if won {
                &self.stats.rounds_won
            } else {
                &self.stats.rounds_lost
            };
            counter.fetch_add(1, Ordering::Relaxed);
            if let Some(silence) = self.shards.get_mut(&shard) {
                set_gate(shard, &raft, silence, won);
            }
        }
    }

    /// Updates one shard's silence and pre-vote answer; returns its candidacy when it wants to
    /// campaign (and closes its gate when it does not).
    fn observe(
        &mut self,
        shard: ShardId,
        raft: LedgerRaft,
        contact: &LeaderContact,
        elapsed: Duration,
    ) -> Option<Candidacy> {
        let local = self.transport.local_node_id();
        let appends = contact.appends_accepted();
        let silence = self.shards.entry(shard).or_insert_with(|| ShardSilence {
            appends_seen: appends,
            // A node that just started (or a group just created) knows no leader.
            silent_for: self.settings.campaign_after,
            open: false,
        });
        let metrics = raft.metrics();
        let metrics = metrics.borrow();
        let leads = metrics.state == ServerState::Leader;
        if leads || appends != silence.appends_seen {
            silence.silent_for = Duration::ZERO;
        } else {
            silence.silent_for = silence.silent_for.saturating_add(elapsed);
        }
        silence.appends_seen = appends;
        contact.set_grants_pre_vote(!leads && silence.silent_for >= self.settings.grant_after);

        let membership = metrics.membership_config.membership();
        let is_voter = membership.voter_ids().any(|id| id == local);
        if leads || !is_voter || silence.silent_for < self.settings.campaign_after {
            set_gate(shard, &raft, silence, false);
            return None;
        }
        let voter_sets = membership.get_joint_config().clone();
        let peers = membership
            .voter_ids()
            .filter(|&id| id != local)
            .filter_map(|id| membership.get_node(&id).map(|node| (id, node.clone())))
            .collect();
        Some(Candidacy {
            shard,
            raft,
            voter_sets,
            peers,
        })
    }

    /// Asks every peer voter at once; true when this node and the peers that granted form a
    /// majority of every voter set.
    fn pre_vote(
        &self,
        candidacy: Candidacy,
    ) -> impl Future<Output = (ShardId, LedgerRaft, bool)> + 'static {
        let transport = Arc::clone(&self.transport);
        let ttl = self.settings.tick;
        async move {
            let Candidacy {
                shard,
                raft,
                voter_sets,
                peers,
            } = candidacy;
            let asks = peers.iter().map(|(id, node)| {
                let transport = &transport;
                async move { (*id, transport.pre_vote(shard, *id, node, ttl).await) }
            });
            let mut granted: BTreeSet<NodeId> = join_all(asks)
                .await
                .into_iter()
                .filter_map(|(id, granted)| granted.then_some(id))
                .collect();
            granted.insert(transport.local_node_id());
            let won = has_majority_of_each(&voter_sets, &granted);
            (shard, raft, won)
        }
    }
}

/// Whether `granted` holds more than half of every set in `voter_sets`.
fn has_majority_of_each(voter_sets: &[BTreeSet<NodeId>], granted: &BTreeSet<NodeId>) -> bool {
    voter_sets
        .iter()
        .all(|voters| voters.intersection(granted).count() * 2 > voters.len())
}

fn set_gate(shard: ShardId, raft: &LedgerRaft, silence: &mut ShardSilence, open: bool) {
    if silence.open == open {
        return;
    }
    silence.open = open;
    raft.runtime_config().elect(open);
    if open {
        tracing::info!(
            shard,
            silent_ms = silence.silent_for.as_millis() as u64,
            "no leader heard from and a majority agrees: elections allowed"
        );
    } else {
        tracing::debug!(shard, "elections held back");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_majority_is_needed_in_every_half_of_a_joint_configuration() {
        type Case<'a> = (&'a [&'a [NodeId]], &'a [NodeId], bool);
        let cases: &[Case] = &[
            (&[&[1]], &[1], true),
            (&[&[1, 2, 3]], &[1], false),
            (&[&[1, 2, 3]], &[1, 2], true),
            (&[&[1, 2, 3, 4]], &[1, 2], false),
            (&[&[1, 2, 3, 4]], &[1, 2, 3], true),
            (&[&[1, 2, 3], &[3, 4, 5]], &[1, 2, 3], false),
            (&[&[1, 2, 3], &[3, 4, 5]], &[2, 3, 4], true),
            // Grants from nodes outside every voter set do not count.
            (&[&[1, 2, 3]], &[1, 7, 8], false),
        ];
        for (voter_sets, granted, expected) in cases {
            let voter_sets: Vec<_> = voter_sets.iter().map(|ids| set(ids)).collect();
            assert_eq!(
                has_majority_of_each(&voter_sets, &set(granted)),
                *expected,
                "voters {voter_sets:?}, granted {granted:?}"
            );
        }
    }

    #[test]
    fn settings_follow_the_group_timing() {
        let settings = GateSettings::from_timing(&GroupTiming {
            heartbeat_interval_ms: 200,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 1500,
        });
        assert_eq!(settings.tick, Duration::from_millis(200));
        assert_eq!(settings.campaign_after, Duration::from_millis(1000));
        assert_eq!(settings.grant_after, Duration::from_millis(500));
        assert!(settings.grant_after < settings.campaign_after);
    }
}
