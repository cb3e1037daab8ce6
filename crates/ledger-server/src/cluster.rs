//! The node's part in the cluster map: forming a new cluster or joining an existing one,
//! following the map (opening the replicas it places here, dropping the ones it moved away),
//! and, on the metadata group's leader, the controller that moves replicas one at a time toward
//! the node set the operator declared.
//!
//! A move of shard `s` from node `Y` to node `X` goes: `BeginMove` in the map (X opens an empty
//! replica when it sees it) → `add_learner(X)` on the shard's leader → wait until X caught up →
//! `change_membership` (openraft's joint consensus) to the new voters → `SettleMove` with the
//! voters the group really has → Y drops its replica when it sees the settled map and the group's
//! leader confirms it no longer counts Y (`NodeContext::retire_replica`). Every step is
//! idempotent and re-derived from the map and the group's membership, so a controller that dies
//! midway is replaced by the next metadata leader, which finishes the same move.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ledger_core::cluster::{
    next_step, ClusterChange, ClusterMap, NodeAddress, ReplicaMove, Step, META_SHARD,
};
use ledger_core::{Accepted, Command};
use ledger_raft::placement::replicas_of_shard;
use ledger_raft::{LedgerNode, NodeId, ShardId};
use ledger_storage::NodeStorage;
use openraft::ChangeMembers;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::NodeConfig;
use crate::node::{NodeContext, NodeError, Retirement, ShardReplica};

/// How often a node refreshes the map, follows it, and (on the metadata leader) plans.
const ROUND_INTERVAL: Duration = Duration::from_millis(250);
/// A new replica is caught up when it misses at most this many of the leader's entries.
const CATCH_UP_LAG_MAX: u64 = 64;
/// Longest wait for one proposal to the metadata group.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// A node with a metadata replica also asks a peer for the map every this many rounds.
const PEER_REFRESH_EVERY: usize = 4;
/// Most controller steps taken in one round while each makes progress at once.
const CONTROL_STEPS_PER_ROUND: usize = 8;
/// Longest wait for one membership step on a shard's leader.
const MEMBERSHIP_STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a group's leader to say whether it counts a replica this node would drop.
const MEMBERS_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest wait for a peer's answer about the cluster.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// What a node keeps about its membership, next to its replicas (`NodeStorage::node_record`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NodeRecord {
    /// The node formed the cluster with `nodes` (its first start); `formed` once every group it
    /// initializes was initialized.
    Formation { nodes: Vec<NodeId>, formed: bool },
    /// The node joined an existing cluster: it holds what the map places on it.
    Joined,
}

impl NodeRecord {
    pub(crate) fn load(storage: &NodeStorage) -> Result<Option<NodeRecord>, NodeError> {
        let Some(bytes) = storage
            .node_record()
            .map_err(|error| NodeError::Storage(error.to_string()))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|error| NodeError::Storage(format!("the node record is not valid: {error}")))
    }

    async fn save(&self, context: &NodeContext) -> Result<(), NodeError> {
        let bytes = serde_json::to_vec(self)
            .map_err(|error| NodeError::Storage(format!("encoding the node record: {error}")))?;
        let storage = context
            .storage
            .lock()
            .clone()
            .ok_or_else(|| NodeError::Storage("the node is stopping".to_owned()))?;
        tokio::task::spawn_blocking(move || storage.put_node_record(&bytes))
            .await
            .map_err(|error| NodeError::Storage(error.to_string()))?
            .map_err(|error| NodeError::Storage(error.to_string()))?;
        context.cluster.set_record(self.clone());
        Ok(())
    }
}

/// What one node answers about itself (`GET /internal/cluster`): used to decide between forming
/// a cluster and joining one, and to spread the map to nodes that hold no metadata replica.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterIdentity {
    pub node_id: NodeId,
    /// The node ids its config lists: nodes only form a cluster together when they agree on it.
    pub config_nodes: Vec<NodeId>,
    pub record: Option<NodeRecord>,
    pub map: ClusterMap,
}

/// The progress of the move under way, as the controller last saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MoveProgress {
    pub step: ReplicaMove,
    pub caught_up_to: Option<u64>,
    pub leader_last_index: Option<u64>,
}

/// The cluster map as this node knows it (the newest version seen), and what the node decided
/// about its own membership.
pub struct ClusterState {
    map: RwLock<Arc<ClusterMap>>,
    record: RwLock<Option<NodeRecord>>,
    removed: watch::Sender<bool>,
    progress: Mutex<Option<MoveProgress>>,
    /// Rotates the peers asked for the map.
    next_peer: AtomicUsize,
    /// Rounds of the cluster loop so far.
    pub(crate) rounds: AtomicUsize,
}

impl ClusterState {
    pub(crate) fn new(config: &NodeConfig, record: Option<NodeRecord>) -> ClusterState {
        // Until the metadata group answers, a forming node routes by the formation placement.
        let guess = match &record {
            Some(NodeRecord::Formation { nodes, .. }) => {
                let mut map = formation_map(config, nodes);
                map.version = 0;
                map
            }
            _ => ClusterMap::default(),
        };
        ClusterState {
            map: RwLock::new(Arc::new(guess)),
            record: RwLock::new(record),
            removed: watch::channel(false).0,
            progress: Mutex::new(None),
            next_peer: AtomicUsize::new(0),
            rounds: AtomicUsize::new(0),
        }
    }

    /// The newest map this node saw (version 0: not known yet).
    pub fn map(&self) -> Arc<ClusterMap> {
        Arc::clone(&self.map.read())
    }

    pub fn record(&self) -> Option<NodeRecord> {
        self.record.read().clone()
    }

    fn set_record(&self, record: NodeRecord) {
        *self.record.write() = Some(record);
    }

    pub fn address_of(&self, node: NodeId) -> Option<NodeAddress> {
        self.map.read().nodes.get(&node).cloned()
    }

    /// The nodes holding a replica of `shard` per the map (voters, then a node being added).
    pub fn replicas_of(&self, shard: ShardId) -> Vec<NodeId> {
        let map = self.map.read();
        let Some(placement) = map.shard(shard) else {
            return Vec::new();
        };
        let mut nodes = placement.replicas.clone();
        if let Some(add) = placement.moving.and_then(|step| step.add) {
            nodes.push(add);
        }
        nodes
    }

    /// Keeps `map` if it is newer than the one known. Returns whether it was.
    fn install(&self, map: ClusterMap) -> bool {
        let mut known = self.map.write();
        if map.version > known.version {
            *known = Arc::new(map);
            true
        } else {
            false
        }
    }

    pub fn is_removed(&self) -> bool {
        *self.removed.borrow()
    }

    pub(crate) async fn wait_removed(&self) {
        let mut receiver = self.removed.subscribe();
        while !*receiver.borrow_and_update() {
            if receiver.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    pub fn progress(&self) -> Option<MoveProgress> {
        *self.progress.lock()
    }
}

/// The map a cluster formed by `nodes` starts with: every shard and the metadata group on the
/// consecutive-nodes placement of `ledger_raft::placement`.
pub fn formation_map(config: &NodeConfig, nodes: &[NodeId]) -> ClusterMap {
    let mut sorted = nodes.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let addresses = sorted
        .iter()
        .filter_map(|id| {
            config.node(*id).map(|node| {
                (
                    *id,
                    NodeAddress {
                        http_addr: node.http_addr.clone(),
                        raft_addr: node.raft_addr.clone(),
                    },
                )
            })
        })
        .collect();
    let replication = config.cluster.replication;
    ClusterMap::formation(
        config.cluster.shards,
        replication as u32,
        addresses,
        |shard| replicas_of_shard(shard, &sorted, replication),
    )
}

fn ledger_node(address: &NodeAddress) -> LedgerNode {
    LedgerNode {
        raft_addr: address.raft_addr.clone(),
        http_addr: address.http_addr.clone(),
    }
}

/// Forms a new cluster of `nodes` (this node among them): records it, opens the replicas the
/// formation placement puts here, and initializes the groups this node is the first replica of.
/// Safe to run again after a crash: initializing is skipped where it happened.
pub(crate) async fn form(context: &NodeContext, nodes: Vec<NodeId>) -> Result<(), NodeError> {
    let config = &context.config;
    let me = context.node_id();
    let map = formation_map(config, &nodes);
    if map.nodes.len() != nodes.len() {
        return Err(NodeError::Config(crate::config::ConfigError::Invalid {
            message: format!(
                "forming a cluster of nodes {nodes:?} needs all of their addresses in [cluster] nodes"
            ),
        }));
    }
    NodeRecord::Formation {
        nodes: nodes.clone(),
        formed: false,
    }
    .save(context)
    .await?;
    {
        // Route by the formation placement until the metadata group has the map.
        let mut known = context.cluster.map.write();
        if !known.exists() {
            let mut guess = map.clone();
            guess.version = 0;
            *known = Arc::new(guess);
        }
    }
    tracing::info!(?nodes, "forming the cluster");
    for (shard, placement) in &map.shards {
        if !placement.replicas.contains(&me) {
            continue;
        }
        let replica = context.open_replica(*shard).await?;
        let first = replicas_of_shard(*shard, &map.nodes.keys().copied().collect::<Vec<_>>(), {
            config.cluster.replication
        })
        .first()
        .copied();
        if first == Some(me) {
            let members = placement
                .replicas
                .iter()
                .filter_map(|id| map.nodes.get(id).map(|address| (*id, ledger_node(address))))
                .collect();
            context.initialize_group(&replica, members).await?;
        }
    }
    NodeRecord::Formation {
        nodes,
        formed: true,
    }
    .save(context)
    .await
}

/// The node's cluster loop: decide formation or joining (first start), refresh the map, follow
/// it, and run the controller when this node leads the metadata group. Ends at shutdown.
pub(crate) async fn run(context: Arc<NodeContext>, mut shutdown: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(ROUND_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        if let Err(error) = round(&context).await {
            tracing::warn!(%error, "cluster round");
        }
    }
}

async fn round(context: &NodeContext) -> Result<(), NodeError> {
    if context.cluster.is_removed() {
        return Ok(());
    }
    if context.cluster.record().is_none() && !decide_membership(context).await? {
        return Ok(());
    }
    refresh_map(context).await;
    let map = context.cluster.map();
    if map.exists() && map.removed.contains(&context.node_id()) {
        tracing::error!(
            node_id = context.node_id(),
            version = map.version,
            "this node was removed from the cluster: it drops its replicas and serves nothing; \
             to bring the machine back, give it a new node id and an empty data directory"
        );
        for shard in context.replicas.shards() {
            context.drop_replica(shard).await;
        }
        context.cluster.removed.send_replace(true);
        return Ok(());
    }
    if map.exists() && map.shard_count != context.shard_count() {
        tracing::error!(
            map_shards = map.shard_count,
            config_shards = context.shard_count(),
            "the cluster has another shard count than this node's config; not following the map"
        );
        return Ok(());
    }
    follow_map(context, &map).await;
    control(context).await;
    Ok(())
}

/// First start with peers: asks every configured peer about itself. Forms the cluster with the
/// configured nodes when every peer answers that it has formed or joined nothing and lists the
/// same nodes; joins when a peer belongs to a cluster this node did not form; waits otherwise (a
/// peer is not up yet, or its config lists other nodes: two different formations must never
/// both start, so a node whose config already names future nodes waits for the others to form
/// the cluster, then joins it). Returns whether the node now has a record.
async fn decide_membership(context: &NodeContext) -> Result<bool, NodeError> {
    let me = context.node_id();
    let peers = configured_peers(context);
    let answers = futures::future::join_all(
        peers
            .iter()
            .map(|(id, address)| ask_peer(context, *id, address)),
    )
    .await;
    let mut all_agree = true;
    let config_nodes = context.config.node_ids();
    for answer in &answers {
        let Some(identity) = answer else {
            all_agree = false;
            continue;
        };
        if identity.config_nodes != config_nodes {
            all_agree = false;
        }
        match &identity.record {
            Some(NodeRecord::Formation { nodes, .. }) if nodes.contains(&me) => {
                // A peer formed the cluster with this node: form with the same node set.
                form(context, nodes.clone()).await?;
                return Ok(true);
            }
            Some(_) => {
                tracing::info!(peer = identity.node_id, "joining the existing cluster");
                NodeRecord::Joined.save(context).await?;
                context.cluster.install(identity.map.clone());
                return Ok(true);
            }
            None => {}
        }
    }
    if all_agree {
        form(context, config_nodes).await?;
        return Ok(true);
    }
    tracing::info!(
        "waiting for every configured peer to answer with the same node list before forming \
         the cluster (or for a formed cluster to join)"
    );
    Ok(false)
}

/// The other nodes of this node's config, with their HTTP addresses.
fn configured_peers(context: &NodeContext) -> Vec<(NodeId, String)> {
    let me = context.node_id();
    context
        .config
        .cluster
        .nodes
        .iter()
        .filter(|node| node.id != me)
        .map(|node| (node.id, node.http_addr.clone()))
        .collect()
}

async fn ask_peer(context: &NodeContext, peer: NodeId, address: &str) -> Option<ClusterIdentity> {
    let answer = context
        .forwarder
        .get(format!("http://{address}/internal/cluster"))
        .timeout(PEER_TIMEOUT)
        .send()
        .await
        .ok()?;
    if !answer.status().is_success() {
        return None;
    }
    let identity: ClusterIdentity = answer.json().await.ok()?;
    (identity.node_id == peer).then_some(identity)
}

/// Takes the map this node's metadata replica applied, if it hosts one and it is newer than the
/// cached map. Returns whether the node hosts a metadata replica.
pub(crate) fn install_local_map(context: &NodeContext) -> bool {
    let Some(meta) = context.replicas.get(&META_SHARD) else {
        return false;
    };
    let applied = meta.state.read().ledger.meta().cluster.clone();
    context.cluster.install(applied);
    true
}

/// Learns the newest map: from this node's metadata replica when it has one, else from a node
/// that has one (the map's metadata replicas, or the configured peers before the map is known).
async fn refresh_map(context: &NodeContext) {
    let round = context.cluster.rounds.fetch_add(1, Ordering::Relaxed);
    if install_local_map(context) {
        // A metadata replica that is being moved away stops receiving entries once the group
        // no longer counts it, so its copy can stop short of the settled map that lets it go:
        // ask a peer now and then too.
        if context.cluster.map().exists() && !round.is_multiple_of(PEER_REFRESH_EVERY) {
            return;
        }
    }
    let me = context.node_id();
    let known = context.cluster.map();
    let mut candidates: Vec<(NodeId, String)> = known
        .shard(META_SHARD)
        .map(|placement| placement.replicas.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|node| *node != me)
        .filter_map(|node| context.http_addr_of(node).map(|address| (node, address)))
        .collect();
    if candidates.is_empty() {
        candidates = configured_peers(context);
    }
    if candidates.is_empty() {
        return;
    }
    let index = context.cluster.next_peer.fetch_add(1, Ordering::Relaxed) % candidates.len();
    let (peer, address) = &candidates[index];
    if let Some(identity) = ask_peer(context, *peer, address).await {
        context.cluster.install(identity.map);
    }
}

/// Opens the replicas the map places on this node and drops those it no longer places here
/// once their move is settled and their group's leader confirms it no longer counts this node
/// (`NodeContext::retire_replica` says why both are needed).
async fn follow_map(context: &NodeContext, map: &ClusterMap) {
    if !map.exists() {
        return;
    }
    let me = context.node_id();
    let wanted: BTreeSet<ShardId> = map.shards_of(me).collect();
    let hosted = context.replicas.shards();
    for shard in wanted.difference(&hosted) {
        match context.open_replica(*shard).await {
            Ok(_) => tracing::info!(
                shard,
                version = map.version,
                "replica placed here by the cluster map"
            ),
            Err(error) => tracing::warn!(shard, %error, "opening a replica placed here"),
        }
    }
    for shard in hosted.difference(&wanted) {
        let settled = map
            .shard(*shard)
            .is_none_or(|placement| placement.moving.is_none());
        if !settled {
            continue;
        }
        match retire_if_uncounted(context, *shard).await {
            Retirement::Dropped => tracing::info!(
                shard,
                version = map.version,
                "replica moved away by the cluster map"
            ),
            Retirement::Kept => tracing::info!(
                shard,
                version = map.version,
                "replica kept: the map moved it away, but its group counts this node again \
                 (a newer move adds it back)"
            ),
            Retirement::Undecided(reason) => tracing::info!(
                shard,
                %reason,
                "replica kept for now: no leader of its group could say whether it counts \
                 this node"
            ),
            Retirement::Absent => {}
        }
    }
}

/// Drops this node's replica of `shard` unless its group's leader, confirmed by a quorum, still
/// counts this node (as a voter of any of its configs, or as a learner); see
/// `NodeContext::retire_replica`.
pub async fn retire_if_uncounted(context: &NodeContext, shard: ShardId) -> Retirement {
    let me = context.node_id();
    // Bounded: the replica takes no Raft messages meanwhile, and the cluster loop waits.
    let counted = async {
        let members =
            tokio::time::timeout(MEMBERS_TIMEOUT, crate::http::shard_members(context, shard))
                .await
                .map_err(|_| format!("no answer within {MEMBERS_TIMEOUT:?}"))??;
        Ok(members.nodes.contains(&me))
    };
    context.retire_replica(shard, counted).await
}

/// Every node a shard's group counts: the voters of each config (two during a joint change)
/// and the learners. The answer of `GET /internal/shards/{shard}/members`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMembers {
    pub nodes: Vec<NodeId>,
}

impl GroupMembers {
    /// The members of the membership `replica` knows (its log's latest, committed or not).
    pub fn of(replica: &ShardReplica) -> GroupMembers {
        let metrics = replica.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let nodes: BTreeSet<NodeId> = membership
            .get_joint_config()
            .iter()
            .flatten()
            .copied()
            .chain(membership.learner_ids())
            .collect();
        GroupMembers {
            nodes: nodes.into_iter().collect(),
        }
    }
}

/// The controller: on the metadata group's leader, creates the map at formation, then drives
/// the move under way or starts the next one, or retires a drained node.
async fn control(context: &NodeContext) {
    for _ in 0..CONTROL_STEPS_PER_ROUND {
        if !control_step(context).await {
            return;
        }
    }
}

/// One step of the controller. Returns whether it changed the map (so the next step can be
/// taken at once).
async fn control_step(context: &NodeContext) -> bool {
    let Some(meta) = context.replicas.get(&META_SHARD) else {
        return false;
    };
    if meta.current_leader() != Some(context.node_id()) {
        return false;
    }
    let map = meta.state.read().ledger.meta().cluster.clone();
    if !map.exists() {
        if let Some(NodeRecord::Formation { nodes, .. }) = context.cluster.record() {
            let created = formation_map(&context.config, &nodes);
            return propose(&meta, ClusterChange::Create(created)).await;
        }
        return false;
    }
    if let Some(step) = map.move_under_way() {
        return drive(context, &meta, &map, step).await;
    }
    *context.cluster.progress.lock() = None;
    let version = map.version;
    match next_step(&map) {
        None => {
            // Placement is where the operator wants it: even out the leaders. A hand-over
            // ends the round, like a settled move.
            crate::leadership::balance(context, &map).await;
            false
        }
        Some(Step::Move(step)) => {
            tracing::info!(?step, version, "starting a replica move");
            propose(&meta, ClusterChange::BeginMove { version, step }).await
        }
        Some(Step::Retire(node)) => {
            tracing::info!(node, version, "retiring a drained node");
            propose(&meta, ClusterChange::Retire { version, node }).await
        }
    }
}

/// One round of the move under way: ask the shard's leader to take the next membership step,
/// and settle the move in the map once the group has its new voters. Returns false: the next
/// step waits for the next round.
async fn drive(
    context: &NodeContext,
    meta: &ShardReplica,
    map: &ClusterMap,
    step: ReplicaMove,
) -> bool {
    // A node that is no longer declared is not added: settle on the voters the group has.
    let abandon = step.add.is_some_and(|add| !map.desired.contains(&add));
    let request = MembershipRequest {
        add: if abandon { None } else { step.add },
        add_address: step.add.and_then(|add| map.nodes.get(&add).cloned()),
        remove: if abandon { None } else { step.remove },
    };
    match crate::http::shard_membership_step(context, step.shard, &request).await {
        Ok(answer) if answer.done => {
            *context.cluster.progress.lock() = None;
            tracing::info!(?step, voters = ?answer.voters, "replica move done");
            // Settling ends the round (returns false) so that the next round follows the
            // settled map first: a replica moved away is dropped before the next move is
            // driven (a removed leader's replica must not be asked to lead it).
            propose(
                meta,
                ClusterChange::SettleMove {
                    version: map.version,
                    shard: step.shard,
                    replicas: answer.voters,
                },
            )
            .await;
            false
        }
        Ok(answer) => {
            *context.cluster.progress.lock() = Some(MoveProgress {
                step,
                caught_up_to: answer.caught_up_to,
                leader_last_index: answer.leader_last_index,
            });
            false
        }
        Err(message) => {
            tracing::info!(?step, %message, "replica move step not taken yet");
            false
        }
    }
}

async fn propose(meta: &ShardReplica, change: ClusterChange) -> bool {
    let command = Command::UpdateCluster(change);
    match tokio::time::timeout(PROPOSE_TIMEOUT, meta.proposer.propose_and_wait(command)).await {
        Ok(Ok(outcome)) => match outcome.result {
            Ok(Accepted::ClusterUpdated { version }) => {
                tracing::debug!(version, "cluster map updated");
                true
            }
            Ok(other) => {
                tracing::warn!(?other, "unexpected outcome of a cluster map change");
                false
            }
            Err(rejection) => {
                tracing::info!(code = rejection.code(), "cluster map change refused");
                false
            }
        },
        Ok(Err(error)) => {
            tracing::debug!(%error, "cluster map change not decided");
            false
        }
        Err(_) => false,
    }
}

/// What the controller asks of a shard's leader: take the next step toward adding `add` and
/// removing `remove` (neither: drop stray learners and report the voters).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipRequest {
    pub add: Option<NodeId>,
    pub add_address: Option<NodeAddress>,
    pub remove: Option<NodeId>,
}

/// The shard leader's answer: `done` with the voters the group now has, or how far the new
/// replica has caught up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipAnswer {
    pub done: bool,
    pub voters: Vec<NodeId>,
    pub caught_up_to: Option<u64>,
    pub leader_last_index: Option<u64>,
}

/// On the shard's leader: one idempotent step of a membership change. Adds `add` as a learner,
/// waits (across calls) until it caught up, then changes the voters with joint consensus.
pub(crate) async fn membership_step(
    context: &NodeContext,
    replica: &ShardReplica,
    request: &MembershipRequest,
) -> Result<MembershipAnswer, String> {
    // A membership change waits for commits; a replica that lost its quorum (e.g. a removed
    // leader that has not stepped down yet) would wait forever. The controller retries.
    tokio::time::timeout(
        MEMBERSHIP_STEP_TIMEOUT,
        membership_step_unbounded(context, replica, request),
    )
    .await
    .unwrap_or_else(|_| {
        Err(format!(
            "no answer within {MEMBERSHIP_STEP_TIMEOUT:?} (the leader may have lost its quorum)"
        ))
    })
}

async fn membership_step_unbounded(
    context: &NodeContext,
    replica: &ShardReplica,
    request: &MembershipRequest,
) -> Result<MembershipAnswer, String> {
    let metrics = replica.raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership().clone();
    let voters: BTreeSet<NodeId> = membership
        .get_joint_config()
        .last()
        .cloned()
        .unwrap_or_default();
    let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
    let joint = membership.get_joint_config().len() > 1;
    let mut target = voters.clone();
    if let Some(remove) = request.remove {
        target.remove(&remove);
    }
    if let Some(add) = request.add {
        target.insert(add);
    }
    if target.is_empty() {
        return Err("a group cannot lose its last voter".to_owned());
    }
    let caught_up_to = request.add.and_then(|add| {
        metrics
            .replication
            .as_ref()
            .and_then(|replication| replication.get(&add).cloned().flatten())
            .map(|log_id| log_id.index)
    });
    let leader_last_index = metrics.last_log_index;
    if !joint && voters == target {
        // The voters are right; learners that are not being added (an abandoned move's, or
        // the node this request removes) leave too: a learner left behind would keep its
        // node's replica counted, and so kept, forever.
        remove_learners(replica, &learners).await?;
        return Ok(MembershipAnswer {
            done: true,
            voters: voters.into_iter().collect(),
            caught_up_to,
            leader_last_index,
        });
    }
    if let Some(add) = request.add.filter(|add| !voters.contains(add)) {
        if !learners.contains(&add) {
            let Some(address) = &request.add_address else {
                return Err(format!("no address for node {add}"));
            };
            replica
                .raft
                .add_learner(add, ledger_node(address), false)
                .await
                .map_err(|error| format!("add learner {add}: {error}"))?;
            return Ok(in_progress(voters, None, leader_last_index));
        }
        let lag = leader_last_index
            .unwrap_or(0)
            .saturating_sub(caught_up_to.unwrap_or(0));
        if caught_up_to.is_none() || lag > CATCH_UP_LAG_MAX {
            return Ok(in_progress(voters, caught_up_to, leader_last_index));
        }
    }
    let me = metrics.id;
    if request.remove == Some(me) {
        // The leader's own replica leaves: hand leadership to a voter that stays first, so the
        // shard pauses for a hand-over instead of waiting out an election after the change.
        // The controller's next call reaches the new leader, which makes the change.
        let successor = voters
            .iter()
            .filter(|node| **node != me && target.contains(node))
            .max_by_key(|node| {
                metrics
                    .replication
                    .as_ref()
                    .and_then(|replication| replication.get(node).cloned().flatten())
                    .map(|log_id| log_id.index)
            });
        if let Some(&successor) = successor {
            match crate::leadership::transfer_here(context, replica, successor).await {
                Ok(()) => return Ok(in_progress(voters, caught_up_to, leader_last_index)),
                // Not worth blocking the move for: it goes on, and the shard elects a leader
                // once this one has left.
                Err(error) => tracing::info!(
                    shard = replica.shard,
                    successor,
                    %error,
                    "leadership not handed over before the leader's replica leaves"
                ),
            }
        }
    }
    replica
        .raft
        .change_membership(target.clone(), false)
        .await
        .map_err(|error| format!("change membership to {target:?}: {error}"))?;
    let stray: BTreeSet<NodeId> = learners.difference(&target).copied().collect();
    remove_learners(replica, &stray).await?;
    Ok(MembershipAnswer {
        done: true,
        voters: target.into_iter().collect(),
        caught_up_to,
        leader_last_index,
    })
}

/// Takes `learners` out of the group (a change of voters keeps the learners it does not name).
async fn remove_learners(
    replica: &ShardReplica,
    learners: &BTreeSet<NodeId>,
) -> Result<(), String> {
    if learners.is_empty() {
        return Ok(());
    }
    replica
        .raft
        .change_membership(ChangeMembers::RemoveNodes(learners.clone()), false)
        .await
        .map_err(|error| format!("remove learners {learners:?}: {error}"))?;
    Ok(())
}

fn in_progress(
    voters: BTreeSet<NodeId>,
    caught_up_to: Option<u64>,
    leader_last_index: Option<u64>,
) -> MembershipAnswer {
    MembershipAnswer {
        done: false,
        voters: voters.into_iter().collect(),
        caught_up_to,
        leader_last_index,
    }
}

/// The addresses of a declared node set, keyed by node id.
pub fn declared_nodes(
    nodes: &[ledger_api::NodeInfo],
) -> Result<BTreeMap<NodeId, NodeAddress>, String> {
    let mut declared = BTreeMap::new();
    for node in nodes {
        let address = NodeAddress {
            http_addr: node.http_addr.clone(),
            raft_addr: node.raft_addr.clone(),
        };
        if declared.insert(node.id, address).is_some() {
            return Err(format!("node {} is listed twice", node.id));
        }
    }
    Ok(declared)
}
