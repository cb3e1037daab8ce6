//! The cluster map: which nodes form the cluster, which of them hold a replica of each shard, and
//! the one replica move under way. The metadata group ([`META_SHARD`]) sequences every change of
//! it through its Raft log; every node caches it and routes by it.
//!
//! Changes come from two places: the operator declares the node set it wants
//! ([`ClusterChange::Declare`], from `ledgerctl cluster apply`), and the controller on the
//! metadata leader moves replicas one at a time toward that set ([`next_step`] plans the next
//! move; `BeginMove` and `SettleMove` record it). The controller's changes carry the map version
//! they were planned against, so a deposed controller's late change is refused
//! (`cluster_version_conflict`) instead of undoing a newer one.
//!
//! The map records placement for routing and planning; the membership of each shard's own Raft
//! group is the authority on who votes. A move is recorded as begun before the shard's
//! membership changes and settled (with the membership the group really has) after the change
//! committed, so a node that the map no longer lists for a shard with no move under way may drop
//! its replica: the group no longer counts it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::types::Rejection;

/// A node of the cluster, as named in the cluster config.
pub type NodeId = u64;

/// The id of the metadata group. It is a Raft group like a shard's (its replicas are placed and
/// moved like any shard's) whose state holds only the cluster map.
pub const META_SHARD: u32 = u32::MAX - 1;

/// Where a node is reached.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeAddress {
    /// Client and admin HTTP address, `host:port`.
    pub http_addr: String,
    /// Node-to-node (Raft) address, `host:port`.
    pub raft_addr: String,
}

/// One step of rebalancing: give `shard` a replica on `add`, take the one on `remove` away
/// (either may be absent, not both).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReplicaMove {
    pub shard: u32,
    pub add: Option<NodeId>,
    pub remove: Option<NodeId>,
}

impl ReplicaMove {
    /// The voters once the move is done, from the voters before it (sorted).
    pub fn voters_after(&self, replicas: &[NodeId]) -> Vec<NodeId> {
        let mut voters: BTreeSet<NodeId> = replicas.iter().copied().collect();
        if let Some(remove) = self.remove {
            voters.remove(&remove);
        }
        if let Some(add) = self.add {
            voters.insert(add);
        }
        voters.into_iter().collect()
    }
}

/// The replicas of one shard (or of the metadata group).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ShardPlacement {
    /// The voters as of the last settled move, sorted.
    pub replicas: Vec<NodeId>,
    /// The move under way, if any.
    pub moving: Option<ReplicaMove>,
}

impl ShardPlacement {
    /// Whether `node` holds (or is receiving) a replica of this shard.
    pub fn involves(&self, node: NodeId) -> bool {
        self.replicas.contains(&node) || self.moving.is_some_and(|step| step.add == Some(node))
    }
}

/// The cluster map. Version 0 is "not created yet".
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClusterMap {
    /// Bumped by every change.
    pub version: u64,
    pub shard_count: u32,
    /// Replicas per shard wanted (the config's `replication`); fewer while the cluster has fewer
    /// nodes.
    pub replication: u32,
    /// Every node of the cluster, with its addresses: the desired ones and those being drained.
    pub nodes: BTreeMap<NodeId, NodeAddress>,
    /// The node set the operator declared last; the others are drained, then retired.
    pub desired: BTreeSet<NodeId>,
    /// Nodes that were drained and removed: refused for good.
    pub removed: BTreeSet<NodeId>,
    /// Placement of every shard `0..shard_count` and of [`META_SHARD`].
    pub shards: BTreeMap<u32, ShardPlacement>,
}

/// A change of the cluster map, sequenced by the metadata group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterChange {
    /// The map at cluster formation. Every forming node proposes the same one; the first
    /// creates it and the others are replays.
    Create(ClusterMap),
    /// The node set the operator wants, with addresses (`ledgerctl cluster apply`).
    Declare {
        nodes: BTreeMap<NodeId, NodeAddress>,
    },
    /// The controller starts a move planned at map `version`.
    BeginMove { version: u64, step: ReplicaMove },
    /// The controller finished (or gave up) the move of `shard`: its group's voters are now
    /// `replicas`.
    SettleMove {
        version: u64,
        shard: u32,
        replicas: Vec<NodeId>,
    },
    /// The controller removes a drained node (no replica left, not desired) for good.
    Retire { version: u64, node: NodeId },
}

/// What the controller should do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Move(ReplicaMove),
    Retire(NodeId),
}

impl ClusterMap {
    /// The map of a new cluster: `nodes` (sorted by id) all desired, and `placement` of every
    /// shard and of the metadata group.
    pub fn formation(
        shard_count: u32,
        replication: u32,
        nodes: BTreeMap<NodeId, NodeAddress>,
        placement: impl Fn(u32) -> Vec<NodeId>,
    ) -> ClusterMap {
        let shards = (0..shard_count)
            .chain(std::iter::once(META_SHARD))
            .map(|shard| {
                let mut replicas = placement(shard);
                replicas.sort_unstable();
                (
                    shard,
                    ShardPlacement {
                        replicas,
                        moving: None,
                    },
                )
            })
            .collect();
        ClusterMap {
            version: 1,
            shard_count,
            replication,
            desired: nodes.keys().copied().collect(),
            nodes,
            removed: BTreeSet::new(),
            shards,
        }
    }

    /// Whether the map was created.
    pub fn exists(&self) -> bool {
        self.version > 0
    }

    /// The placement of `shard`.
    pub fn shard(&self, shard: u32) -> Option<&ShardPlacement> {
        self.shards.get(&shard)
    }

    /// The shards (and metadata group) for which `node` holds or receives a replica.
    pub fn shards_of(&self, node: NodeId) -> impl Iterator<Item = u32> + '_ {
        self.shards
            .iter()
            .filter(move |(_, placement)| placement.involves(node))
            .map(|(shard, _)| *shard)
    }

    /// Replicas per shard wanted with the current desired node set.
    pub fn effective_replication(&self) -> usize {
        (self.replication as usize).clamp(1, self.desired.len().max(1))
    }

    /// Replicas held per node (desired or not), counting a replica being added.
    pub fn load(&self) -> BTreeMap<NodeId, usize> {
        let mut load: BTreeMap<NodeId, usize> = self.nodes.keys().map(|node| (*node, 0)).collect();
        for placement in self.shards.values() {
            for node in &placement.replicas {
                *load.entry(*node).or_default() += 1;
            }
            if let Some(add) = placement.moving.and_then(|step| step.add) {
                *load.entry(add).or_default() += 1;
            }
        }
        load
    }

    /// The move under way, if any (the controller runs one at a time).
    pub fn move_under_way(&self) -> Option<ReplicaMove> {
        self.shards.values().find_map(|placement| placement.moving)
    }

    /// Applies `change`. `Ok(true)`: the map changed (its version went up); `Ok(false)`: a replay
    /// that changed nothing. A rejection changes nothing.
    pub fn apply(&mut self, change: &ClusterChange) -> Result<bool, Rejection> {
        match change {
            ClusterChange::Create(map) => {
                if self.exists() {
                    return Ok(false);
                }
                validate_created(map)?;
                *self = map.clone();
                Ok(true)
            }
            ClusterChange::Declare { nodes } => self.declare(nodes),
            ClusterChange::BeginMove { version, step } => {
                self.check_version(*version)?;
                self.begin_move(*step)?;
                self.version += 1;
                Ok(true)
            }
            ClusterChange::SettleMove {
                version,
                shard,
                replicas,
            } => {
                self.check_version(*version)?;
                let mut voters = replicas.clone();
                voters.sort_unstable();
                voters.dedup();
                if voters.is_empty() || voters.iter().any(|node| !self.nodes.contains_key(node)) {
                    return Err(Rejection::InvalidClusterChange);
                }
                let placement = self
                    .shards
                    .get_mut(shard)
                    .ok_or(Rejection::InvalidClusterChange)?;
                placement.replicas = voters;
                placement.moving = None;
                self.version += 1;
                Ok(true)
            }
            ClusterChange::Retire { version, node } => {
                self.check_version(*version)?;
                if !self.nodes.contains_key(node)
                    || self.desired.contains(node)
                    || self
                        .shards
                        .values()
                        .any(|placement| placement.involves(*node))
                {
                    return Err(Rejection::InvalidClusterChange);
                }
                self.nodes.remove(node);
                self.removed.insert(*node);
                self.version += 1;
                Ok(true)
            }
        }
    }

    fn check_version(&self, version: u64) -> Result<(), Rejection> {
        if !self.exists() {
            return Err(Rejection::InvalidClusterChange);
        }
        if version != self.version {
            return Err(Rejection::ClusterVersionConflict);
        }
        Ok(())
    }

    fn declare(&mut self, nodes: &BTreeMap<NodeId, NodeAddress>) -> Result<bool, Rejection> {
        if !self.exists() || nodes.is_empty() {
            return Err(Rejection::InvalidClusterChange);
        }
        if nodes.keys().any(|node| self.removed.contains(node)) {
            return Err(Rejection::NodeRemoved);
        }
        let mut addresses = BTreeSet::new();
        for (node, address) in nodes {
            if *node == 0 || address.http_addr.is_empty() || address.raft_addr.is_empty() {
                return Err(Rejection::InvalidClusterChange);
            }
            // A node keeps its addresses; two nodes never share one.
            if self.nodes.get(node).is_some_and(|known| known != address)
                || !addresses.insert(address.http_addr.as_str())
                || !addresses.insert(address.raft_addr.as_str())
            {
                return Err(Rejection::InvalidClusterChange);
            }
        }
        let clashes_with_other = self.nodes.iter().any(|(node, known)| {
            !nodes.contains_key(node)
                && (addresses.contains(known.http_addr.as_str())
                    || addresses.contains(known.raft_addr.as_str()))
        });
        if clashes_with_other {
            return Err(Rejection::InvalidClusterChange);
        }
        // Never fewer nodes than the replicas each shard must keep.
        let floor = (self.replication as usize).min(self.desired.len());
        if nodes.len() < floor {
            return Err(Rejection::InvalidClusterChange);
        }
        let desired: BTreeSet<NodeId> = nodes.keys().copied().collect();
        if desired == self.desired && nodes.keys().all(|node| self.nodes.contains_key(node)) {
            return Ok(false);
        }
        for (node, address) in nodes {
            self.nodes.insert(*node, address.clone());
        }
        self.desired = desired;
        self.version += 1;
        Ok(true)
    }

    fn begin_move(&mut self, step: ReplicaMove) -> Result<(), Rejection> {
        if self.move_under_way().is_some() || (step.add.is_none() && step.remove.is_none()) {
            return Err(Rejection::InvalidClusterChange);
        }
        let desired = &self.desired;
        let placement = self
            .shards
            .get_mut(&step.shard)
            .ok_or(Rejection::InvalidClusterChange)?;
        if let Some(add) = step.add {
            if !desired.contains(&add) || placement.replicas.contains(&add) {
                return Err(Rejection::InvalidClusterChange);
            }
        }
        if let Some(remove) = step.remove {
            if !placement.replicas.contains(&remove) {
                return Err(Rejection::InvalidClusterChange);
            }
        }
        if step.voters_after(&placement.replicas).is_empty() {
            return Err(Rejection::InvalidClusterChange);
        }
        placement.moving = Some(step);
        Ok(())
    }
}

fn validate_created(map: &ClusterMap) -> Result<(), Rejection> {
    let placed_on_known_nodes = map.shards.values().all(|placement| {
        !placement.replicas.is_empty()
            && placement.moving.is_none()
            && placement
                .replicas
                .iter()
                .all(|node| map.nodes.contains_key(node))
    });
    let every_shard_placed = (0..map.shard_count)
        .chain(std::iter::once(META_SHARD))
        .all(|shard| map.shards.contains_key(&shard))
        && map.shards.len() == map.shard_count as usize + 1;
    if map.version == 0
        || map.shard_count == 0
        || map.nodes.is_empty()
        || !placed_on_known_nodes
        || !every_shard_placed
    {
        return Err(Rejection::InvalidClusterChange);
    }
    Ok(())
}

/// The next step toward the declared node set, or `None` when the map is there. Pure and
/// deterministic: the same map gives the same step on any node. One move at a time: while a
/// move is under way, `None`.
///
/// In order: move replicas off nodes that are no longer desired (the metadata group first);
/// add replicas to shards with fewer than they should have; then move one replica from the
/// most to the least loaded desired node while they differ by two or more; finally retire a
/// drained node. Each move adds before it removes, so no shard ever has fewer voters than
/// before the move, and each balancing move lowers the sum of squared loads, so the plan ends.
pub fn next_step(map: &ClusterMap) -> Option<Step> {
    if !map.exists() || map.move_under_way().is_some() {
        return None;
    }
    let load = map.load();
    let least_loaded_without = |replicas: &[NodeId]| {
        map.desired
            .iter()
            .filter(|node| !replicas.contains(node))
            .min_by_key(|node| (load.get(node).copied().unwrap_or(0), **node))
            .copied()
    };
    let wanted = map.effective_replication();
    // The metadata group first: the controller's own state should leave a drained node early.
    let shards_in_order = map
        .shards
        .get_key_value(&META_SHARD)
        .into_iter()
        .chain(map.shards.range(..META_SHARD));

    for (shard, placement) in shards_in_order.clone() {
        let undesired = placement
            .replicas
            .iter()
            .find(|node| !map.desired.contains(node));
        if let Some(&remove) = undesired {
            match least_loaded_without(&placement.replicas) {
                Some(add) => {
                    return Some(Step::Move(ReplicaMove {
                        shard: *shard,
                        add: Some(add),
                        remove: Some(remove),
                    }))
                }
                None if placement.replicas.len() > 1 => {
                    return Some(Step::Move(ReplicaMove {
                        shard: *shard,
                        add: None,
                        remove: Some(remove),
                    }))
                }
                None => {}
            }
        }
    }
    for (shard, placement) in shards_in_order.clone() {
        if placement.replicas.len() < wanted {
            if let Some(add) = least_loaded_without(&placement.replicas) {
                return Some(Step::Move(ReplicaMove {
                    shard: *shard,
                    add: Some(add),
                    remove: None,
                }));
            }
        }
    }
    let desired_load = |node: &NodeId| load.get(node).copied().unwrap_or(0);
    let most = map
        .desired
        .iter()
        .max_by_key(|node| (desired_load(node), **node));
    let least = map
        .desired
        .iter()
        .min_by_key(|node| (desired_load(node), std::cmp::Reverse(**node)));
    if let (Some(&most), Some(&least)) = (most, least) {
        if desired_load(&most) >= desired_load(&least) + 2 {
            let movable = shards_in_order.clone().find(|(_, placement)| {
                placement.replicas.contains(&most) && !placement.replicas.contains(&least)
            });
            if let Some((shard, _)) = movable {
                return Some(Step::Move(ReplicaMove {
                    shard: *shard,
                    add: Some(least),
                    remove: Some(most),
                }));
            }
        }
    }
    map.nodes
        .keys()
        .find(|node| !map.desired.contains(node) && load.get(node).copied().unwrap_or(0) == 0)
        .map(|node| Step::Retire(*node))
}

/// One leadership hand-over: `shard`'s leader on `from` passes leadership to its replica on `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaderTransfer {
    pub shard: u32,
    pub from: NodeId,
    pub to: NodeId,
}

/// The next leadership hand-over that evens out how many shards each node leads, given the
/// leader of every shard (`leaders`; the metadata group is not counted). Pure and
/// deterministic, like [`next_step`].
///
/// `None` while replicas still have to move (placement comes first), while a shard has a move
/// under way or no known leader, or when no node leads two or more shards more than a node
/// holding a replica of one of them. Otherwise: from the node leading the most shards (ties: the
/// lowest id), its lowest shard that has a replica on a node leading at least two fewer, to the
/// least leading such node. Each hand-over lowers the sum of squared leader counts, so repeated
/// hand-overs end.
pub fn next_leader_transfer(
    map: &ClusterMap,
    leaders: &BTreeMap<u32, NodeId>,
) -> Option<LeaderTransfer> {
    if !map.exists() || next_step(map).is_some() {
        return None;
    }
    let mut led: BTreeMap<NodeId, usize> = map.desired.iter().map(|node| (*node, 0)).collect();
    for (shard, placement) in map.shards.range(..META_SHARD) {
        let leader = leaders.get(shard)?;
        if placement.moving.is_some() || !placement.replicas.contains(leader) {
            return None;
        }
        *led.entry(*leader).or_default() += 1;
    }
    let count = |node: &NodeId| led.get(node).copied().unwrap_or(0);
    let mut by_most_led: Vec<NodeId> = led.keys().copied().collect();
    by_most_led.sort_by_key(|node| (std::cmp::Reverse(count(node)), *node));
    for from in by_most_led {
        for (shard, placement) in map.shards.range(..META_SHARD) {
            if leaders.get(shard) != Some(&from) {
                continue;
            }
            let to = placement
                .replicas
                .iter()
                .filter(|node| **node != from && map.desired.contains(node))
                .filter(|node| count(node) + 2 <= count(&from))
                .min_by_key(|node| (count(node), **node));
            if let Some(&to) = to {
                return Some(LeaderTransfer {
                    shard: *shard,
                    from,
                    to,
                });
            }
        }
    }
    None
}

/// The moves still needed to reach the declared node set, the one under way included: the
/// planner run on a copy of `map`, each move settled as planned (no failures). For progress
/// reports; 0 when the map is where the operator wants it.
pub fn moves_remaining(map: &ClusterMap) -> u64 {
    let mut planned = map.clone();
    let mut moves = 0u64;
    let mut step = planned.move_under_way().map(Step::Move);
    // Bounded: the planner converges in far fewer steps (each move lowers the imbalance).
    for _ in 0..100_000 {
        let Some(next) = step.or_else(|| next_step(&planned)) else {
            break;
        };
        let version = planned.version;
        let applied = match next {
            Step::Move(movement) => {
                moves += 1;
                let begun = planned.move_under_way().is_some()
                    || planned
                        .apply(&ClusterChange::BeginMove {
                            version,
                            step: movement,
                        })
                        .is_ok();
                let replicas = movement.voters_after(&planned.shards[&movement.shard].replicas);
                begun
                    && planned
                        .apply(&ClusterChange::SettleMove {
                            version: planned.version,
                            shard: movement.shard,
                            replicas,
                        })
                        .is_ok()
            }
            Step::Retire(node) => planned
                .apply(&ClusterChange::Retire { version, node })
                .is_ok(),
        };
        if !applied {
            break;
        }
        step = None;
    }
    moves
}

#[cfg(test)]
mod tests;
