//! Real openraft groups talking over the transport: three nodes in one process, each with its
//! own `RaftTransport`, `ShardRegistry` and `serve` listener (behind a counting proxy), several
//! shard groups per node, and a minimal in-memory log store and state machine (the real stores
//! live in `ledger-storage`, above this crate).
//!
//! What this adds to `transport.rs`: the `ShardRegistry` dispatch into `Raft`, openraft's own
//! use of the network (elections, replication, the chunked snapshot transfer), and the
//! one-connection-per-peer promise with many groups at once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::Arc;
use std::time::Duration;

mod support;

use ledger_raft::config::GroupTiming;
use ledger_raft::election_gate::{spawn_election_gate, GateSettings, GateStats};
use ledger_raft::network::{serve, RaftTransport, ShardRegistry};
use ledger_raft::proposer::{spawn_proposer, ProposeError, ProposerConfig};
use ledger_raft::transfer::{campaign, transfer_leadership, TransferError, TransferSettings};
use ledger_raft::{
    BatchOutcome, Entry, LedgerBatch, LedgerLogId, LedgerMembership, LedgerNode, LedgerRaft,
    NodeId, ShardId, TypeConfig,
};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    Config, EntryPayload, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    SnapshotPolicy, StorageError, StoredMembership, Vote,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use support::CountingProxy;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A bound on waits that end far sooner unless the code under test is broken.
const GENEROUS: Duration = Duration::from_secs(60);

/// Election timing of the gated groups: a follower campaigns (when its gate lets it) 1.0–1.2 s
/// after it last heard from its leader (leader lease = 600 ms + timeout in [400, 600] ms).
const GATED_TIMING: GroupTiming = GroupTiming {
    heartbeat_interval_ms: 50,
    election_timeout_min_ms: 400,
    election_timeout_max_ms: 600,
};

// ---------------------------------------------------------------------------------------------
// A minimal in-memory log store and state machine.

#[derive(Default)]
struct LogContents {
    vote: Option<Vote<NodeId>>,
    entries: BTreeMap<u64, Entry>,
    last_purged: Option<LedgerLogId>,
}

#[derive(Clone, Default)]
struct MemoryLog {
    contents: Arc<Mutex<LogContents>>,
}

impl RaftLogReader<TypeConfig> for MemoryLog {
    async fn try_get_log_entries<Range>(
        &mut self,
        range: Range,
    ) -> Result<Vec<Entry>, StorageError<NodeId>>
    where
        Range: RangeBounds<u64> + Clone + Debug + OptionalSend,
    {
        let contents = self.contents.lock();
        Ok(contents
            .entries
            .range(range)
            .map(|(_, entry)| entry.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for MemoryLog {
    type LogReader = MemoryLog;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let contents = self.contents.lock();
        let last_log_id = contents
            .entries
            .values()
            .next_back()
            .map(|entry| entry.log_id)
            .or(contents.last_purged);
        Ok(LogState {
            last_purged_log_id: contents.last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> MemoryLog {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.contents.lock().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.contents.lock().vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        {
            let mut contents = self.contents.lock();
            for entry in entries {
                contents.entries.insert(entry.log_id.index, entry);
            }
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LedgerLogId) -> Result<(), StorageError<NodeId>> {
        self.contents.lock().entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LedgerLogId) -> Result<(), StorageError<NodeId>> {
        let mut contents = self.contents.lock();
        contents.entries = contents.entries.split_off(&(log_id.index + 1));
        contents.last_purged = Some(log_id);
        Ok(())
    }
}

/// What the test state machine keeps: enough to check replication and snapshot installation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct MachineImage {
    last_applied: Option<LedgerLogId>,
    membership: LedgerMembership,
    /// The timestamps of the applied batches, in log order.
    applied_batches: Vec<u64>,
}

#[derive(Default)]
struct MachineContents {
    image: MachineImage,
    current_snapshot: Option<(SnapshotMeta<NodeId, LedgerNode>, Vec<u8>)>,
    snapshots_installed: usize,
}

#[derive(Clone, Default)]
struct MemoryMachine {
    contents: Arc<Mutex<MachineContents>>,
}

impl MemoryMachine {
    fn image(&self) -> MachineImage {
        self.contents.lock().image.clone()
    }

    fn snapshots_installed(&self) -> usize {
        self.contents.lock().snapshots_installed
    }
}

fn storage_error(error: &impl std::error::Error) -> StorageError<NodeId> {
    StorageError::from_io_error(
        openraft::ErrorSubject::StateMachine,
        openraft::ErrorVerb::Read,
        std::io::Error::other(error.to_string()),
    )
}

impl RaftSnapshotBuilder<TypeConfig> for MemoryMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let mut contents = self.contents.lock();
        let data = bincode::serde::encode_to_vec(&contents.image, bincode::config::standard())
            .map_err(|error| storage_error(&error))?;
        let last_log_id = contents.image.last_applied;
        let meta = SnapshotMeta {
            last_log_id,
            last_membership: contents.image.membership.clone(),
            snapshot_id: format!("{:?}", last_log_id.map(|log_id| log_id.index)),
        };
        contents.current_snapshot = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for MemoryMachine {
    type SnapshotBuilder = MemoryMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LedgerLogId>, LedgerMembership), StorageError<NodeId>> {
        let contents = self.contents.lock();
        Ok((
            contents.image.last_applied,
            contents.image.membership.clone(),
        ))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchOutcome>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut contents = self.contents.lock();
        let mut outcomes = Vec::new();
        for entry in entries {
            contents.image.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(batch) => {
                    contents.image.applied_batches.push(batch.timestamp_ms)
                }
                EntryPayload::Membership(membership) => {
                    contents.image.membership =
                        StoredMembership::new(Some(entry.log_id), membership);
                }
            }
            outcomes.push(BatchOutcome::default());
        }
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> MemoryMachine {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, LedgerNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let (image, _): (MachineImage, usize) =
            bincode::serde::decode_from_slice(&data, bincode::config::standard())
                .map_err(|error| storage_error(&error))?;
        let mut contents = self.contents.lock();
        contents.image = image;
        contents.current_snapshot = Some((meta.clone(), data));
        contents.snapshots_installed += 1;
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let contents = self.contents.lock();
        Ok(contents
            .current_snapshot
            .as_ref()
            .map(|(meta, data)| Snapshot {
                meta: meta.clone(),
                snapshot: Box::new(Cursor::new(data.clone())),
            }))
    }
}

// ---------------------------------------------------------------------------------------------
// A cluster of nodes in one process.

struct TestNode {
    id: NodeId,
    transport: Arc<RaftTransport>,
    registry: Arc<ShardRegistry>,
    /// Peers reach this node through the proxy, which counts their connections.
    proxy: CountingProxy,
    groups: BTreeMap<ShardId, (LedgerRaft, MemoryMachine)>,
    _stop: oneshot::Sender<()>,
}

impl TestNode {
    async fn start(id: NodeId) -> TestNode {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("local address").to_string();
        let registry = Arc::new(ShardRegistry::new());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve(listener, Arc::clone(&registry) as _, async move {
            let _ = stopped.await;
        }));
        TestNode {
            id,
            transport: RaftTransport::new(id),
            registry,
            proxy: CountingProxy::start(&address).await,
            groups: BTreeMap::new(),
            _stop: stop,
        }
    }

    fn ledger_node(&self) -> LedgerNode {
        LedgerNode {
            raft_addr: self.proxy.address.clone(),
            http_addr: String::new(),
        }
    }

    async fn add_group(&mut self, shard: ShardId) {
        let config = Config {
            cluster_name: format!("shard-{shard}"),
            heartbeat_interval: 100,
            election_timeout_min: 3_000,
            election_timeout_max: 6_000,
            // Snapshots are sent in many small chunks, and only when the test asks for one.
            snapshot_max_chunk_size: 16,
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: 0,
            purge_batch_size: 1,
            ..Config::default()
        };
        self.add_group_with(shard, config).await;
    }

    /// A group whose elections are left to this node's election gate, as in production, with
    /// short timeouts so that the gate's decisions come quickly.
    async fn add_gated_group(&mut self, shard: ShardId) {
        let config = Config {
            cluster_name: format!("gated-shard-{shard}"),
            heartbeat_interval: GATED_TIMING.heartbeat_interval_ms,
            election_timeout_min: GATED_TIMING.election_timeout_min_ms,
            election_timeout_max: GATED_TIMING.election_timeout_max_ms,
            enable_elect: false,
            ..Config::default()
        };
        self.add_group_with(shard, config).await;
    }

    /// Starts this node's election gate over all its groups.
    fn start_gate(&self) -> Arc<GateStats> {
        let (_task, stats) = spawn_election_gate(
            Arc::clone(&self.registry),
            Arc::clone(&self.transport),
            GateSettings::from_timing(&GATED_TIMING),
            std::future::pending(),
        );
        stats
    }

    /// Cuts every link between this node and `others`, both ways.
    fn isolate_from(&self, others: &[&TestNode]) {
        for other in others {
            self.transport.faults().block_peer(other.id);
            other.transport.faults().block_peer(self.id);
        }
    }

    fn heal(nodes: &[TestNode]) {
        for node in nodes {
            node.transport.faults().unblock_all();
        }
    }

    async fn add_group_with(&mut self, shard: ShardId, config: Config) {
        let config = Arc::new(config.validate().expect("valid config"));
        let machine = MemoryMachine::default();
        let raft = LedgerRaft::new(
            self.id,
            config,
            self.transport.network_factory(shard),
            MemoryLog::default(),
            machine.clone(),
        )
        .await
        .expect("raft starts");
        self.registry.register(shard, raft.clone());
        self.groups.insert(shard, (raft, machine));
    }

    fn raft(&self, shard: ShardId) -> &LedgerRaft {
        &self.groups[&shard].0
    }

    fn machine(&self, shard: ShardId) -> &MemoryMachine {
        &self.groups[&shard].1
    }
}

async fn start_nodes(ids: &[NodeId]) -> Vec<TestNode> {
    let mut nodes = Vec::new();
    for &id in ids {
        nodes.push(TestNode::start(id).await);
    }
    nodes
}

fn members(nodes: &[&TestNode]) -> BTreeMap<NodeId, LedgerNode> {
    nodes
        .iter()
        .map(|node| (node.id, node.ledger_node()))
        .collect()
}

/// Writes `count` batches through the shard's leader; returns the log index of the last one.
async fn write_batches(leader: &LedgerRaft, first_timestamp_ms: u64, count: u64) -> u64 {
    let mut last_index = 0;
    for offset in 0..count {
        let batch = LedgerBatch {
            timestamp_ms: first_timestamp_ms + offset,
            commands: Vec::new().into(),
        };
        let written = tokio::time::timeout(GENEROUS, leader.client_write(batch))
            .await
            .expect("the write commits in time")
            .expect("the leader accepts the write");
        last_index = written.log_id.index;
    }
    last_index
}

async fn leader_of(raft: &LedgerRaft) -> NodeId {
    let metrics = raft
        .wait(Some(GENEROUS))
        .metrics(
            |metrics| metrics.current_leader.is_some(),
            "a leader is known",
        )
        .await
        .expect("a leader is elected");
    metrics.current_leader.expect("checked by the wait")
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_with_three_shards_replicate_over_one_connection_per_peer() {
    let ids = [1, 2, 3];
    let shards: Vec<ShardId> = vec![0, 1, 2];
    let mut nodes = start_nodes(&ids).await;
    for node in &mut nodes {
        for &shard in &shards {
            node.add_group(shard).await;
        }
    }
    let all_members = members(&nodes.iter().collect::<Vec<_>>());

    // Shard s is initialized on node s + 1, so every node starts one election and thereby talks
    // to both of its peers.
    for &shard in &shards {
        nodes[shard as usize]
            .raft(shard)
            .initialize(all_members.clone())
            .await
            .expect("initialize");
    }

    let mut expected_batches = BTreeMap::new();
    for &shard in &shards {
        let leader_id = leader_of(nodes[0].raft(shard)).await;
        let leader = nodes
            .iter()
            .find(|node| node.id == leader_id)
            .expect("the leader is one of the nodes");
        let first_timestamp_ms = 1_000 * u64::from(shard + 1);
        let last_index = write_batches(leader.raft(shard), first_timestamp_ms, 5).await;
        expected_batches.insert(
            shard,
            (first_timestamp_ms..first_timestamp_ms + 5, last_index),
        );
    }

    for (&shard, (timestamps, last_index)) in &expected_batches {
        for node in &nodes {
            node.raft(shard)
                .wait(Some(GENEROUS))
                .applied_index_at_least(Some(*last_index), "replicated")
                .await
                .expect("every replica applies the writes");
            let applied = node.machine(shard).image().applied_batches;
            assert_eq!(
                applied,
                timestamps.clone().collect::<Vec<_>>(),
                "node {} shard {shard}",
                node.id
            );
        }
    }

    // Every node dialed each of its two peers exactly once, for all shards together.
    for node in &nodes {
        assert_eq!(
            node.proxy.connections_accepted(),
            ids.len() - 1,
            "connections accepted by node {}",
            node.id
        );
    }
    for node in &nodes {
        assert_eq!(node.registry.shards(), shards);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_catches_up_from_a_chunked_snapshot() {
    const SHARD: ShardId = 7;
    let mut nodes = start_nodes(&[1, 2, 3]).await;
    for node in &mut nodes {
        node.add_group(SHARD).await;
    }
    let voters = members(&[&nodes[0], &nodes[1]]);
    nodes[0]
        .raft(SHARD)
        .initialize(voters)
        .await
        .expect("initialize");
    let leader_id = leader_of(nodes[0].raft(SHARD)).await;
    let leader_position = nodes
        .iter()
        .position(|node| node.id == leader_id)
        .expect("the leader is one of the nodes");
    let leader = nodes[leader_position].raft(SHARD).clone();
    let last_index = write_batches(&leader, 500, 20).await;

    // Snapshot and purge the whole log, so the learner can only catch up from the snapshot.
    leader.trigger().snapshot().await.expect("trigger snapshot");
    let metrics = leader
        .wait(Some(GENEROUS))
        .metrics(
            |metrics| {
                metrics.snapshot.map(|log_id| log_id.index) >= Some(last_index)
                    && metrics.purged.map(|log_id| log_id.index) >= Some(last_index)
            },
            "snapshot built and log purged",
        )
        .await
        .expect("the leader snapshots and purges");
    assert!(metrics.purged.is_some());

    let learner = &nodes[2];
    tokio::time::timeout(
        GENEROUS,
        leader.add_learner(learner.id, learner.ledger_node(), true),
    )
    .await
    .expect("the learner catches up in time")
    .expect("add learner");
    learner
        .raft(SHARD)
        .wait(Some(GENEROUS))
        .applied_index_at_least(Some(last_index), "caught up")
        .await
        .expect("the learner applies up to the snapshot");

    assert_eq!(learner.machine(SHARD).snapshots_installed(), 1);
    let leader_batches = nodes[leader_position]
        .machine(SHARD)
        .image()
        .applied_batches;
    assert_eq!(
        learner.machine(SHARD).image().applied_batches,
        leader_batches
    );
    assert_eq!(leader_batches, (500..520).collect::<Vec<_>>());
    let learners: BTreeSet<NodeId> = leader
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .learner_ids()
        .collect();
    assert_eq!(learners, BTreeSet::from([learner.id]));
}

/// Polls `condition` until it holds; panics after [`GENEROUS`].
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + GENEROUS;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn term_of(raft: &LedgerRaft) -> u64 {
    raft.metrics().borrow().current_term
}

/// Three gated nodes with one group initialized on node 1; returns them, their gates' stats and
/// the position of the leader.
async fn gated_cluster(shard: ShardId) -> (Vec<TestNode>, Vec<Arc<GateStats>>, usize) {
    let mut nodes = start_nodes(&[1, 2, 3]).await;
    for node in &mut nodes {
        node.add_gated_group(shard).await;
    }
    let gates = nodes.iter().map(TestNode::start_gate).collect();
    let all_members = members(&nodes.iter().collect::<Vec<_>>());
    nodes[0]
        .raft(shard)
        .initialize(all_members)
        .await
        .expect("initialize");
    let leader_id = leader_of(nodes[0].raft(shard)).await;
    let leader = nodes
        .iter()
        .position(|node| node.id == leader_id)
        .expect("the leader is one of the nodes");
    (nodes, gates, leader)
}

/// Regression test for the availability gap the chaos harness found (jepsen-tests/RESULTS.md,
/// "Failover after a pause"): openraft 0.9 has no PreVote, so a follower cut off for longer than
/// its election timeout raised its term, and when it came back the leader saw that term in its
/// replies and stepped down: ~2 s without a leader for nothing. With the election gate, the cut
/// off follower cannot win a pre-vote, never raises its term, and the leader stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_past_its_election_timeout_does_not_depose_the_leader_on_return() {
    const SHARD: ShardId = 3;
    let (nodes, gates, leader) = gated_cluster(SHARD).await;
    let leader_raft = nodes[leader].raft(SHARD).clone();
    write_batches(&leader_raft, 100, 3).await;
    let term = term_of(&leader_raft);
    let follower = (leader + 1) % nodes.len();
    let others: Vec<&TestNode> = nodes
        .iter()
        .enumerate()
        .filter_map(|(position, node)| (position != follower).then_some(node))
        .collect();

    nodes[follower].isolate_from(&others);
    // 30 lost rounds, one per 50 ms tick from 400 ms of silence on: 1.9 s of silence, well past
    // the 1.2 s after which openraft campaigns once its gate is open.
    // Rounds before the cut may have been won (at start-up, before the first leader).
    let lost_before = gates[follower].rounds_lost();
    let won_before = gates[follower].rounds_won();
    eventually("the cut-off follower loses 30 pre-vote rounds", || {
        gates[follower].rounds_lost() >= lost_before + 30
    })
    .await;
    assert_eq!(
        term_of(nodes[follower].raft(SHARD)),
        term,
        "a cut-off follower must not raise its term"
    );
    assert_eq!(
        gates[follower].rounds_won(),
        won_before,
        "a cut-off follower must win no pre-vote round"
    );

    TestNode::heal(&nodes);
    let last_index = write_batches(&leader_raft, 200, 1).await;
    nodes[follower]
        .raft(SHARD)
        .wait(Some(GENEROUS))
        .applied_index_at_least(Some(last_index), "caught up after healing")
        .await
        .expect("the follower catches up");
    let metrics = leader_raft.metrics().borrow().clone();
    assert_eq!(metrics.state, openraft::ServerState::Leader);
    assert_eq!(metrics.current_term, term, "the leader kept its term");
    assert_eq!(term_of(nodes[follower].raft(SHARD)), term);
}

/// The gate still lets a majority replace a leader it cannot hear, and the old leader, back,
/// follows the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_majority_replaces_a_cut_off_leader_through_the_gate() {
    const SHARD: ShardId = 4;
    let (nodes, _gates, leader) = gated_cluster(SHARD).await;
    let old_leader = nodes[leader].raft(SHARD).clone();
    write_batches(&old_leader, 100, 2).await;
    let old_term = term_of(&old_leader);
    let others: Vec<&TestNode> = nodes
        .iter()
        .enumerate()
        .filter_map(|(position, node)| (position != leader).then_some(node))
        .collect();

    nodes[leader].isolate_from(&others);
    let survivor = others[0].raft(SHARD);
    let metrics = survivor
        .wait(Some(GENEROUS))
        .metrics(
            |metrics| {
                metrics.current_term > old_term
                    && metrics.current_leader.is_some()
                    && metrics.current_leader != Some(nodes[leader].id)
            },
            "a new leader among the majority",
        )
        .await
        .expect("the majority elects a new leader");
    let new_leader_id = metrics.current_leader.expect("checked by the wait");
    let new_leader = nodes
        .iter()
        .find(|node| node.id == new_leader_id)
        .expect("the new leader is one of the nodes")
        .raft(SHARD)
        .clone();
    let last_index = write_batches(&new_leader, 300, 2).await;

    TestNode::heal(&nodes);
    let rejoined = old_leader
        .wait(Some(GENEROUS))
        .applied_index_at_least(Some(last_index), "the old leader catches up")
        .await
        .expect("the old leader follows the new one");
    assert_eq!(rejoined.current_leader, Some(new_leader_id));
    assert_ne!(rejoined.state, openraft::ServerState::Leader);
    let applied = nodes[leader].machine(SHARD).image().applied_batches;
    assert_eq!(applied, vec![100, 101, 300, 301]);
}

/// Leadership moves to the chosen voter in one election (term + 1) and nothing written before
/// is lost; a command proposed while the hand-over holds the proposer waits, and is then
/// answered (`NotLeader` naming the new leader: it never reached the old group's log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_to_the_chosen_voter_in_one_election() {
    const SHARD: ShardId = 5;
    let (nodes, _gates, leader) = gated_cluster(SHARD).await;
    let old_leader = nodes[leader].raft(SHARD).clone();
    let last_before = write_batches(&old_leader, 100, 3).await;
    let term = term_of(&old_leader);
    let target = &nodes[(leader + 1) % nodes.len()];
    let target_raft = target.raft(SHARD).clone();
    let proposer = spawn_proposer(SHARD, old_leader.clone(), ProposerConfig::default());
    let old_leader_id = nodes[leader].id;

    let transfer = tokio::spawn({
        let old_leader = old_leader.clone();
        let proposer = proposer.clone();
        let target_raft = target_raft.clone();
        let target_id = target.id;
        async move {
            transfer_leadership(
                &old_leader,
                Some(&proposer),
                target_id,
                TransferSettings::from_timing(&GATED_TIMING),
                || async move {
                    campaign(&target_raft, old_leader_id)
                        .await
                        .map_err(|error| error.to_string())
                },
            )
            .await
        }
    });
    // Nothing else is proposed, so the proposer has no room only once the transfer holds it;
    // a command proposed then waits behind the hold.
    eventually("the transfer holds the proposer", || proposer.room() == 0).await;
    let queued = proposer
        .propose(ledger_core::Command::CreateAccount {
            account_id: "queued".to_owned(),
            overdraft_limit: 0,
        })
        .expect("the queue has room");

    transfer
        .await
        .expect("the transfer task ends")
        .expect("leadership moves");
    // The old leader saw the target lead; the target's own metrics may be published a moment
    // later.
    let metrics = target_raft
        .wait(Some(GENEROUS))
        .current_leader(target.id, "the target leads")
        .await
        .expect("the target reports its leadership");
    assert_eq!(metrics.current_term, term + 1, "one election, no more");
    assert_eq!(
        queued.await.expect("the queued command is answered"),
        Err(ProposeError::NotLeader {
            shard: SHARD,
            leader: Some(target.id)
        })
    );
    assert_eq!(proposer.room(), 1, "the hold is released");
    let last_after = write_batches(&target_raft, 200, 1).await;
    assert!(last_after > last_before);
    for node in &nodes {
        node.raft(SHARD)
            .wait(Some(GENEROUS))
            .applied_index_at_least(Some(last_after), "every replica applies the new entry")
            .await
            .expect("replicas follow the new leader");
        assert_eq!(
            node.machine(SHARD).image().applied_batches,
            vec![100, 101, 102, 200],
            "node {}",
            node.id
        );
    }
}

/// A transfer to a node that is not a voter, asked of a follower, or whose campaign request
/// fails changes nothing: the leader keeps its leadership and its term, and its heartbeats are
/// back (without them the followers would elect a new leader within 1.2 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_that_cannot_happen_changes_nothing() {
    const SHARD: ShardId = 6;
    let (nodes, _gates, leader) = gated_cluster(SHARD).await;
    let leader_raft = nodes[leader].raft(SHARD).clone();
    let follower = &nodes[(leader + 1) % nodes.len()];
    let term = term_of(&leader_raft);
    let settings = TransferSettings::from_timing(&GATED_TIMING);
    let never = || async { Err::<(), String>("must not be asked".to_owned()) };

    let to_stranger = transfer_leadership(&leader_raft, None, 9, settings, never).await;
    assert_eq!(to_stranger, Err(TransferError::NotAVoter { node: 9 }));
    let to_itself =
        transfer_leadership(&leader_raft, None, nodes[leader].id, settings, never).await;
    assert_eq!(
        to_itself,
        Err(TransferError::NotAVoter {
            node: nodes[leader].id
        })
    );
    assert_eq!(leader_of(follower.raft(SHARD)).await, nodes[leader].id);
    let from_follower = transfer_leadership(
        follower.raft(SHARD),
        None,
        nodes[leader].id,
        settings,
        never,
    )
    .await;
    assert_eq!(
        from_follower,
        Err(TransferError::NotLeader {
            leader: Some(nodes[leader].id)
        })
    );
    // A campaign request naming another leader than the one the target follows is stale.
    let stale = campaign(follower.raft(SHARD), 9).await;
    assert_eq!(
        stale,
        Err(TransferError::NotLeader {
            leader: Some(nodes[leader].id)
        })
    );
    let unreachable = transfer_leadership(&leader_raft, None, follower.id, settings, || async {
        Err::<(), String>("connection refused".to_owned())
    })
    .await;
    assert_eq!(
        unreachable,
        Err(TransferError::Campaign {
            node: follower.id,
            message: "connection refused".to_owned()
        })
    );
    // Twice the followers' lease plus election timeout: a silent leader would be replaced.
    let deposed = leader_raft
        .wait(Some(Duration::from_millis(2_400)))
        .metrics(|metrics| metrics.current_term > term, "a new term")
        .await;
    assert!(deposed.is_err(), "the leader kept its term: {deposed:?}");
    assert_eq!(leader_of(&leader_raft).await, nodes[leader].id);
    write_batches(&leader_raft, 100, 1).await;
}
