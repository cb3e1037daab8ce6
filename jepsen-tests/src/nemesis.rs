//! The nemesis: faults on a seeded schedule. A quiet period, then a fault window with one fault
//! (sometimes two of different kinds), then heal; repeat until the time limit, and heal
//! everything at the end. Every start and heal is written to the timeline (`nemesis.jsonl`).
//!
//! Faults: `kill` (SIGKILL, restart at heal), `pause` (SIGSTOP, SIGCONT at heal), `partition`
//! (majority/minority, isolate the leader of most shards, bridge; through the Raft proxy, or
//! firewall rules between network namespaces with `--net netns`),
//! `clock` (a skew or a jump of one node's wall clock through libfaketime), `membership` (what an
//! operator does to a running cluster: hand a shard's leadership to another replica, move a
//! replica to another node, or drain a node by declaring the node set without it and declare it
//! again at heal; the last two need more nodes than replicas, so with 3 nodes it only moves
//! leaders). Targets are a random node or the node leading the most shards. A node that exits by
//! itself is recorded as a `crash` (an anomaly: the harness never causes it) and restarted, unless
//! the cluster removed it (a drain that completed before its heal): then it is recorded as
//! `removed` and left out.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::cluster::Cluster;
use crate::error::HarnessError;
use crate::history::wall_clock_ms;
use crate::proxy::{cut_between, BlockedLinks};
use crate::NodeId;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    Kill,
    Pause,
    Partition,
    Clock,
    Membership,
}

impl FaultKind {
    pub const ALL: [FaultKind; 5] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::Clock,
        FaultKind::Membership,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::Clock => "clock",
            FaultKind::Membership => "membership",
        }
    }

    /// Faults that stop a node from serving; two of them at once could stop a majority.
    fn stops_a_node(self) -> bool {
        matches!(self, FaultKind::Kill | FaultKind::Pause)
    }
}

/// Parses `kill,pause,partition,clock,membership`, `all` or `none`.
pub fn parse_fault_kinds(text: &str) -> Result<BTreeSet<FaultKind>, HarnessError> {
    let mut kinds = BTreeSet::new();
    for part in text
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        match part {
            "none" => {}
            "all" => kinds.extend(FaultKind::ALL),
            other => {
                let kind = FaultKind::ALL
                    .into_iter()
                    .find(|kind| kind.name() == other)
                    .ok_or_else(|| HarnessError::Options {
                        message: format!(
                            "unknown nemesis {other:?} (expected kill, pause, partition, clock, membership, all or none)"
                        ),
                    })?;
                kinds.insert(kind);
            }
        }
    }
    Ok(kinds)
}

/// Durations of the schedule.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub quiet_ms: (u64, u64),
    pub fault_ms: (u64, u64),
    /// Chance that a window holds a second fault of another kind.
    pub combine_probability: f64,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            quiet_ms: (2_000, 4_000),
            fault_ms: (3_000, 6_000),
            combine_probability: 0.3,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Start,
    Heal,
    /// A node exited by itself.
    Crash,
    /// The cluster removed a node (it was drained and retired); it is left out from then on.
    Removed,
}

/// One line of `nemesis.jsonl`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NemesisEvent {
    /// Microseconds since the start of the run (same clock as the history).
    pub time_us: u64,
    pub wall_ms: u64,
    pub phase: Phase,
    /// The fault kind, or `crash`.
    pub fault: String,
    pub nodes: Vec<NodeId>,
    pub description: String,
}

/// A shaded interval of the run: from a fault's start to its heal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultWindow {
    pub start_us: u64,
    pub end_us: u64,
    pub label: String,
}

/// Pairs starts with heals (in order, per fault kind); an unhealed start ends at `end_us`.
pub fn fault_windows(events: &[NemesisEvent], end_us: u64) -> Vec<FaultWindow> {
    let mut open: Vec<&NemesisEvent> = Vec::new();
    let mut windows = Vec::new();
    for event in events {
        match event.phase {
            Phase::Start => open.push(event),
            Phase::Heal => {
                if let Some(position) = open.iter().position(|start| start.fault == event.fault) {
                    let start = open.remove(position);
                    windows.push(FaultWindow {
                        start_us: start.time_us,
                        end_us: event.time_us,
                        label: start.description.clone(),
                    });
                }
            }
            Phase::Crash | Phase::Removed => {}
        }
    }
    for start in open {
        windows.push(FaultWindow {
            start_us: start.time_us,
            end_us,
            label: start.description.clone(),
        });
    }
    windows.sort_by_key(|window| window.start_us);
    windows
}

/// A fault in force, with what healing it takes.
#[derive(Clone, Debug)]
enum ActiveFault {
    Killed(NodeId),
    Paused(NodeId),
    Partitioned,
    ClockMoved(NodeId),
    /// An operator's change; a drained node is declared again at heal.
    Membership {
        drained: Option<NodeId>,
    },
}

impl ActiveFault {
    fn kind(&self) -> FaultKind {
        match self {
            ActiveFault::Killed(_) => FaultKind::Kill,
            ActiveFault::Paused(_) => FaultKind::Pause,
            ActiveFault::Partitioned => FaultKind::Partition,
            ActiveFault::ClockMoved(_) => FaultKind::Clock,
            ActiveFault::Membership { .. } => FaultKind::Membership,
        }
    }
}

/// The running nemesis: owns the cluster during the run.
pub struct Nemesis {
    cluster: Arc<Mutex<Cluster>>,
    kinds: Vec<FaultKind>,
    schedule: Schedule,
    rng: StdRng,
    start: Instant,
    events: Vec<NemesisEvent>,
    active: Vec<ActiveFault>,
}

impl Nemesis {
    pub fn new(
        cluster: Arc<Mutex<Cluster>>,
        kinds: &BTreeSet<FaultKind>,
        schedule: Schedule,
        seed: u64,
        start: Instant,
    ) -> Nemesis {
        Nemesis {
            cluster,
            kinds: kinds.iter().copied().collect(),
            schedule,
            // A stream of its own, so that the workload's choices do not shift the schedule.
            rng: StdRng::seed_from_u64(seed ^ 0x6e65_6d65_7369_7321),
            start,
            events: Vec::new(),
            active: Vec::new(),
        }
    }

    /// Runs the schedule until `deadline`, heals everything, and returns the timeline.
    pub async fn run(mut self, deadline: Instant) -> Result<Vec<NemesisEvent>, HarnessError> {
        let result = self.run_schedule(deadline).await;
        // Healing runs even after an error, so that the final checks see a whole cluster.
        let healed = self.heal_all().await;
        result.and(healed)?;
        Ok(self.events)
    }

    async fn run_schedule(&mut self, deadline: Instant) -> Result<(), HarnessError> {
        loop {
            let quiet = self.random_duration(self.schedule.quiet_ms);
            if !self
                .watch_until((Instant::now() + quiet).min(deadline))
                .await?
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Ok(());
            }
            for kind in self.choose_kinds() {
                self.start_fault(kind).await?;
            }
            let window = self.random_duration(self.schedule.fault_ms);
            let keep_going = self
                .watch_until((Instant::now() + window).min(deadline))
                .await?;
            self.heal_all().await?;
            if !keep_going || Instant::now() >= deadline {
                return Ok(());
            }
        }
    }

    fn random_duration(&mut self, (low, high): (u64, u64)) -> Duration {
        Duration::from_millis(self.rng.gen_range(low..=high.max(low)))
    }

    fn choose_kinds(&mut self) -> Vec<FaultKind> {
        let Some(first) = self.kinds.choose(&mut self.rng).copied() else {
            return Vec::new();
        };
        let mut kinds = vec![first];
        if self.rng.gen_bool(self.schedule.combine_probability) {
            let others: Vec<FaultKind> = self
                .kinds
                .iter()
                .copied()
                .filter(|kind| *kind != first && !(kind.stops_a_node() && first.stops_a_node()))
                .collect();
            if let Some(second) = others.choose(&mut self.rng) {
                kinds.push(*second);
            }
        }
        kinds
    }

    /// Waits until `until`, restarting nodes that exit by themselves. Returns false if there is
    /// nothing to wait for (the deadline passed).
    async fn watch_until(&mut self, until: Instant) -> Result<bool, HarnessError> {
        loop {
            self.restart_crashed().await?;
            let now = Instant::now();
            if now >= until {
                return Ok(true);
            }
            tokio::time::sleep((until - now).min(Duration::from_millis(200))).await;
        }
    }

    async fn restart_crashed(&mut self) -> Result<(), HarnessError> {
        let mut cluster = self.cluster.lock().await;
        for (node, status) in cluster.reap_exited() {
            self.active
                .retain(|fault| !matches!(fault, ActiveFault::Paused(id) if *id == node));
            if cluster.take_if_removed(node).await {
                self.events.push(event(
                    self.start,
                    Phase::Removed,
                    "removed",
                    vec![node],
                    format!("node {node} was drained and removed by the cluster ({status})"),
                ));
                continue;
            }
            // A node the nemesis killed is not running, so it cannot be reaped here.
            self.events.push(event(
                self.start,
                Phase::Crash,
                "crash",
                vec![node],
                format!("node {node} exited by itself ({status}); restarted"),
            ));
            cluster.spawn(node)?;
        }
        Ok(())
    }

    /// A random serving node, or (half of the time) the node leading the most shards.
    async fn choose_target(
        &mut self,
        cluster: &Cluster,
        exclude: &[NodeId],
    ) -> Option<(NodeId, &'static str)> {
        let candidates: Vec<NodeId> = cluster
            .serving_node_ids()
            .into_iter()
            .filter(|id| !exclude.contains(id))
            .collect();
        if self.rng.gen_bool(0.5) {
            if let Some(leader) = cluster.leader_of_most_shards().await {
                if candidates.contains(&leader) {
                    return Some((leader, "the leader of most shards"));
                }
            }
        }
        candidates
            .choose(&mut self.rng)
            .map(|id| (*id, "a random node"))
    }

    fn touched_nodes(&self) -> Vec<NodeId> {
        self.active
            .iter()
            .filter_map(|fault| match fault {
                ActiveFault::Killed(id) | ActiveFault::Paused(id) | ActiveFault::ClockMoved(id) => {
                    Some(*id)
                }
                ActiveFault::Partitioned | ActiveFault::Membership { .. } => None,
            })
            .collect()
    }

    async fn start_fault(&mut self, kind: FaultKind) -> Result<(), HarnessError> {
        let cluster_handle = Arc::clone(&self.cluster);
        let mut cluster = cluster_handle.lock().await;
        let exclude = self.touched_nodes();
        let (fault, nodes, description) = match kind {
            FaultKind::Kill => {
                let Some((node, why)) = self.choose_target(&cluster, &exclude).await else {
                    return Ok(());
                };
                cluster.kill(node)?;
                (
                    ActiveFault::Killed(node),
                    vec![node],
                    format!("kill -9 node {node} ({why})"),
                )
            }
            FaultKind::Pause => {
                let Some((node, why)) = self.choose_target(&cluster, &exclude).await else {
                    return Ok(());
                };
                cluster.pause(node)?;
                (
                    ActiveFault::Paused(node),
                    vec![node],
                    format!("SIGSTOP node {node} ({why})"),
                )
            }
            FaultKind::Clock => {
                let Some((node, why)) = self.choose_target(&cluster, &exclude).await else {
                    return Ok(());
                };
                let offset_seconds: i64 = match self.rng.gen_range(0..3) {
                    0 => self.rng.gen_range(-10..=10),
                    1 => self.rng.gen_range(60..=600),
                    _ => -self.rng.gen_range(60..=600),
                };
                cluster.set_clock_offset(node, offset_seconds)?;
                (
                    ActiveFault::ClockMoved(node),
                    vec![node],
                    format!("clock of node {node} ({why}) set to {offset_seconds:+} s"),
                )
            }
            FaultKind::Membership => {
                let Some((fault, nodes, description)) =
                    self.start_membership_change(&cluster, &exclude).await
                else {
                    return Ok(());
                };
                (fault, nodes, description)
            }
            FaultKind::Partition => {
                let leader = cluster.leader_of_most_shards().await;
                let (blocked, nodes, description) =
                    self.choose_partition(&cluster.node_ids(), leader);
                cluster.set_partition(blocked)?;
                (ActiveFault::Partitioned, nodes, description)
            }
        };
        drop(cluster);
        self.events.push(event(
            self.start,
            Phase::Start,
            kind.name(),
            nodes,
            description,
        ));
        self.active.push(fault);
        Ok(())
    }

    /// One operator change, chosen at random among those the cluster has room for: drain a
    /// node or move a replica (more nodes than replicas), or hand a shard's leadership over.
    /// The calls that wait for the cluster run in the background; the nemesis records what it
    /// asked for.
    async fn start_membership_change(
        &mut self,
        cluster: &Cluster,
        exclude: &[NodeId],
    ) -> Option<(ActiveFault, Vec<NodeId>, String)> {
        let nodes = cluster.node_ids();
        let views = cluster.views().await;
        let spare_room = nodes.len() > cluster.replication();
        let shard_count = cluster.options().shard_count;
        let shard = self.rng.gen_range(0..shard_count.max(1));
        // A node hosting the shard reports its group's leader; the others only the map.
        let info = views
            .iter()
            .find_map(|(id, view)| {
                view.shards
                    .iter()
                    .find(|info| info.shard_id == shard && info.members.contains(id))
            })
            .cloned()?;
        let operator = cluster.operator();
        let url = cluster
            .node(*cluster.serving_node_ids().choose(&mut self.rng)?)?
            .url();
        match self.rng.gen_range(0..3) {
            0 if spare_room => {
                let candidates: Vec<NodeId> = cluster
                    .serving_node_ids()
                    .into_iter()
                    .filter(|id| !exclude.contains(id))
                    .collect();
                let node = *candidates.choose(&mut self.rng)?;
                let declared: Vec<NodeId> =
                    nodes.iter().copied().filter(|id| *id != node).collect();
                let result = declare(cluster, &declared).await;
                let outcome = match result {
                    Ok(()) => "declared".to_owned(),
                    Err(error) => format!("refused: {error}"),
                };
                Some((
                    ActiveFault::Membership {
                        drained: Some(node),
                    },
                    vec![node],
                    format!("membership: drain node {node}: declare {declared:?} ({outcome})"),
                ))
            }
            1 if spare_room => {
                let from = *info.members.choose(&mut self.rng)?;
                let outside: Vec<NodeId> = nodes
                    .iter()
                    .copied()
                    .filter(|id| !info.members.contains(id))
                    .collect();
                let to = *outside.choose(&mut self.rng)?;
                tokio::spawn(async move {
                    let _ = operator.move_shard(&url, shard, from, to).await;
                });
                Some((
                    ActiveFault::Membership { drained: None },
                    vec![from, to],
                    format!(
                        "membership: move shard {shard}'s replica from node {from} to node {to}"
                    ),
                ))
            }
            _ => {
                let others: Vec<NodeId> = info
                    .members
                    .iter()
                    .copied()
                    .filter(|id| Some(*id) != info.leader)
                    .collect();
                let to = *others.choose(&mut self.rng)?;
                tokio::spawn(async move {
                    let _ = operator.transfer_leader(&url, shard, to).await;
                });
                Some((
                    ActiveFault::Membership { drained: None },
                    vec![to],
                    format!(
                        "membership: hand shard {shard}'s leadership from {:?} to node {to}",
                        info.leader
                    ),
                ))
            }
        }
    }

    /// One of: majority/minority (random sides), isolate the leader of most shards, bridge.
    fn choose_partition(
        &mut self,
        nodes: &[NodeId],
        leader: Option<NodeId>,
    ) -> (BlockedLinks, Vec<NodeId>, String) {
        let mut shuffled = nodes.to_vec();
        shuffled.shuffle(&mut self.rng);
        let minority_size = (nodes.len().saturating_sub(1) / 2).max(1);
        match (self.rng.gen_range(0..3), leader) {
            (0, Some(leader)) => {
                let rest: Vec<NodeId> = nodes.iter().copied().filter(|id| *id != leader).collect();
                (
                    cut_between(&[leader], &rest),
                    vec![leader],
                    format!("partition: isolate node {leader} (the leader of most shards) from {rest:?}"),
                )
            }
            (1, _) if nodes.len() >= 3 => {
                // The bridge sees both sides; the sides do not see each other.
                let bridge = shuffled[0];
                let half = (shuffled.len() - 1) / 2;
                let side_a = shuffled[1..1 + half].to_vec();
                let side_b = shuffled[1 + half..].to_vec();
                (
                    cut_between(&side_a, &side_b),
                    shuffled.clone(),
                    format!(
                        "partition: bridge, {side_a:?} | {side_b:?} cut, node {bridge} sees both"
                    ),
                )
            }
            _ => {
                let minority = shuffled[..minority_size].to_vec();
                let majority = shuffled[minority_size..].to_vec();
                (
                    cut_between(&minority, &majority),
                    minority.clone(),
                    format!("partition: minority {minority:?} | majority {majority:?}"),
                )
            }
        }
    }

    async fn heal_all(&mut self) -> Result<(), HarnessError> {
        let cluster_handle = Arc::clone(&self.cluster);
        let mut cluster = cluster_handle.lock().await;
        let mut first_error = None;
        while let Some(fault) = self.active.pop() {
            let (nodes, description, result) = match &fault {
                ActiveFault::Killed(node) if cluster.removed().contains(node) => (
                    vec![*node],
                    format!("node {node} was removed by the cluster meanwhile; not restarted"),
                    Ok(()),
                ),
                ActiveFault::Killed(node) => (
                    vec![*node],
                    format!("restart node {node}"),
                    cluster.spawn(*node),
                ),
                ActiveFault::Paused(node) => (
                    vec![*node],
                    format!("SIGCONT node {node}"),
                    cluster.resume(*node),
                ),
                ActiveFault::Partitioned => (
                    Vec::new(),
                    "partition healed".to_owned(),
                    cluster.heal_partition(),
                ),
                ActiveFault::ClockMoved(node) => (
                    vec![*node],
                    format!("clock of node {node} reset to +0 s"),
                    cluster.set_clock_offset(*node, 0),
                ),
                ActiveFault::Membership { drained: None } => (
                    Vec::new(),
                    "membership change left to finish".to_owned(),
                    Ok(()),
                ),
                ActiveFault::Membership {
                    drained: Some(node),
                } => {
                    let nodes = cluster.node_ids();
                    let description = if cluster.removed().contains(node) {
                        format!("node {node} was removed; declare {nodes:?}")
                    } else {
                        format!("declare node {node} again: {nodes:?}")
                    };
                    (vec![*node], description, declare(&cluster, &nodes).await)
                }
            };
            if let Err(error) = result {
                first_error.get_or_insert(error);
            }
            self.events.push(event(
                self.start,
                Phase::Heal,
                fault.kind().name(),
                nodes,
                description,
            ));
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// Declares `nodes` as the cluster's node set (`POST /admin/cluster/apply`) through any serving
/// node, retrying for a while: the metadata group may be electing a leader under other faults.
async fn declare(cluster: &Cluster, nodes: &[NodeId]) -> Result<(), HarnessError> {
    let operator = cluster.operator();
    let infos: Vec<ledger_api::NodeInfo> = nodes
        .iter()
        .filter_map(|id| cluster.node(*id))
        .map(|node| ledger_api::NodeInfo {
            id: node.id,
            http_addr: node.http_addr.to_string(),
            raft_addr: node.raft_advertised_addr.to_string(),
        })
        .collect();
    let deadline = Instant::now() + DECLARE_TIMEOUT;
    loop {
        let mut last_error = String::from("no serving node");
        for id in cluster.serving_node_ids() {
            let Some(node) = cluster.node(id) else {
                continue;
            };
            match operator.apply_cluster(&node.url(), infos.clone()).await {
                Ok(_) => return Ok(()),
                Err(error) => last_error = error.to_string(),
            }
        }
        if Instant::now() >= deadline {
            return Err(HarnessError::Node {
                node: nodes.first().copied().unwrap_or_default(),
                message: format!("declaring nodes {nodes:?}: {last_error}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How long a declaration of the node set is retried.
const DECLARE_TIMEOUT: Duration = Duration::from_secs(30);

fn event(
    start: Instant,
    phase: Phase,
    fault: &str,
    nodes: Vec<NodeId>,
    description: String,
) -> NemesisEvent {
    NemesisEvent {
        time_us: u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX),
        wall_ms: wall_clock_ms(),
        phase,
        fault: fault.to_owned(),
        nodes,
        description,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fault_lists() {
        assert_eq!(parse_fault_kinds("all").expect("valid").len(), 5);
        assert!(parse_fault_kinds("none").expect("valid").is_empty());
        let kinds = parse_fault_kinds("kill, clock").expect("valid");
        assert_eq!(
            kinds.into_iter().collect::<Vec<_>>(),
            vec![FaultKind::Kill, FaultKind::Clock]
        );
        assert!(parse_fault_kinds("kill,flood").is_err());
    }

    fn nemesis_event(time_us: u64, phase: Phase, fault: &str) -> NemesisEvent {
        NemesisEvent {
            time_us,
            wall_ms: 0,
            phase,
            fault: fault.to_owned(),
            nodes: vec![1],
            description: format!("{fault} at {time_us}"),
        }
    }

    #[test]
    fn windows_pair_starts_with_heals_of_the_same_kind() {
        let events = vec![
            nemesis_event(10, Phase::Start, "kill"),
            nemesis_event(12, Phase::Start, "clock"),
            nemesis_event(20, Phase::Heal, "clock"),
            nemesis_event(25, Phase::Heal, "kill"),
            nemesis_event(30, Phase::Crash, "crash"),
            nemesis_event(40, Phase::Start, "pause"),
        ];
        let windows = fault_windows(&events, 50);
        let spans: Vec<(u64, u64)> = windows
            .iter()
            .map(|window| (window.start_us, window.end_us))
            .collect();
        assert_eq!(spans, vec![(10, 25), (12, 20), (40, 50)]);
    }
}
