//! A running ledger node: storage, shard groups, transport, actors and HTTP, wired together.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ledger_actors::{AccountActors, ActorLimits, ActorRuntime};
use ledger_core::cluster::META_SHARD;
use ledger_raft::config::{group_config, replica_config, GroupTiming, SnapshotSettings};
use ledger_raft::election_gate::{spawn_election_gate, GateSettings, GateStats};
use ledger_raft::network::{serve, RaftTransport, ShardRegistry};
use ledger_raft::proposer::{spawn_proposer, ProposerConfig, ProposerHandle};
use ledger_raft::reads::ReadBatcher;
use ledger_raft::{LedgerLogId, LedgerNode, LedgerRaft, NodeId, ShardId, SharedShardState};
use ledger_storage::NodeStorage;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::{ClusterState, NodeRecord};
use crate::config::NodeConfig;
use crate::http;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("invalid configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("storage: {0}")]
    Storage(String),
    #[error("shard {shard}: raft: {message}")]
    Raft { shard: ShardId, message: String },
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: String,
        source: std::io::Error,
    },
    #[error("actor system: {0}")]
    Actors(#[from] ledger_actors::ActorRuntimeError),
}

/// Tuning that tests may change; production uses the defaults.
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeTuning {
    pub timing: GroupTiming,
    pub snapshots: SnapshotSettings,
    pub proposer: ProposerConfig,
    pub actors: ActorLimits,
}

/// A state digest and the applied log id it was computed at.
type AppliedDigest = (Option<LedgerLogId>, u128);

/// One shard replica hosted by this node (shared as an `Arc` by the handlers that use it).
pub struct ShardReplica {
    pub shard: ShardId,
    pub raft: LedgerRaft,
    pub proposer: ProposerHandle,
    pub reads: ReadBatcher,
    pub state: SharedShardState,
    /// The last digest computed, with the applied log id it belongs to: the state changes only
    /// with `last_applied`, and a digest is O(state), so `GET /admin/cluster` (polled by tools)
    /// recomputes it only when the shard moved.
    digest: parking_lot::Mutex<Option<AppliedDigest>>,
}

impl ShardReplica {
    /// The leader this replica knows of.
    pub fn current_leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Whether `node` is a voter of this replica's group as this replica knows it (false for a
    /// learner or a replica that has not received its group's membership yet).
    pub fn is_voter(&self, node: NodeId) -> bool {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .any(|voter| voter == node)
    }

    /// The index of the last entry applied here.
    pub fn last_applied(&self) -> Option<u64> {
        self.state.read().last_applied.map(|log_id| log_id.index)
    }

    /// The applied index and the state digest at it.
    pub fn applied_digest(&self) -> (Option<u64>, u128) {
        let state = self.state.read();
        let mut cached = self.digest.lock();
        let digest = match *cached {
            Some((applied, digest)) if applied == state.last_applied => digest,
            _ => {
                let digest = state.ledger.digest();
                *cached = Some((state.last_applied, digest));
                digest
            }
        };
        (state.last_applied.map(|log_id| log_id.index), digest)
    }
}

/// The replicas this node hosts now. They come and go while the cluster map moves replicas, so
/// a handler takes a (cheap) clone of the one it needs.
#[derive(Default)]
pub struct ReplicaSet {
    replicas: parking_lot::RwLock<BTreeMap<ShardId, Arc<ShardReplica>>>,
}

impl ReplicaSet {
    /// The replica of `shard` (or of the metadata group), if this node hosts one.
    pub fn get(&self, shard: &ShardId) -> Option<Arc<ShardReplica>> {
        self.replicas.read().get(shard).cloned()
    }

    pub fn contains(&self, shard: ShardId) -> bool {
        self.replicas.read().contains_key(&shard)
    }

    /// The replicas of ledger shards (not the metadata group), in shard order.
    pub fn values(&self) -> Vec<Arc<ShardReplica>> {
        self.replicas
            .read()
            .values()
            .filter(|replica| replica.shard != META_SHARD)
            .cloned()
            .collect()
    }

    /// Every replica, the metadata group's included, in shard order.
    pub fn all(&self) -> Vec<Arc<ShardReplica>> {
        self.replicas.read().values().cloned().collect()
    }

    /// The hosted shards, the metadata group included.
    pub fn shards(&self) -> BTreeSet<ShardId> {
        self.replicas.read().keys().copied().collect()
    }

    /// Number of ledger shard replicas hosted.
    pub fn len(&self) -> usize {
        self.replicas
            .read()
            .keys()
            .filter(|shard| **shard != META_SHARD)
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&self, replica: Arc<ShardReplica>) {
        self.replicas.write().insert(replica.shard, replica);
    }

    fn remove(&self, shard: ShardId) -> Option<Arc<ShardReplica>> {
        self.replicas.write().remove(&shard)
    }
}

/// What became of a replica the cluster map no longer places on this node.
#[derive(Debug, PartialEq, Eq)]
pub enum Retirement {
    /// Stopped, and its data deleted.
    Dropped,
    /// The shard's group still counts this node: the replica goes on.
    Kept,
    /// Nobody could say whether the group counts this node (no leader reachable): the replica
    /// goes on, and the question is asked again later.
    Undecided(String),
    /// This node holds no replica of the shard.
    Absent,
}

/// Everything a request handler needs; shared by all handlers.
pub struct NodeContext {
    pub config: NodeConfig,
    pub replicas: ReplicaSet,
    pub actors: AccountActors,
    pub forwarder: reqwest::Client,
    pub transport: Arc<RaftTransport>,
    pub registry: Arc<ShardRegistry>,
    pub metrics: crate::metrics::Metrics,
    /// What the node's election gate decided so far (for `/metrics`).
    pub election_gate: Arc<GateStats>,
    /// The node's database, for opening replicas and for backups; taken out (and so closed) by
    /// shutdown.
    pub storage: parking_lot::Mutex<Option<NodeStorage>>,
    /// The cluster map as this node knows it, and what the node decided about its membership.
    pub cluster: ClusterState,
    raft_config: Arc<openraft::Config>,
    tuning: NodeTuning,
    /// Serializes opening and closing replicas.
    replica_changes: tokio::sync::Mutex<()>,
}

impl NodeContext {
    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    pub fn shard_count(&self) -> u32 {
        self.config.cluster.shards
    }

    /// The HTTP address of `node`: from the cluster map, else from the config.
    /// The election timing of this node's groups.
    pub fn timing(&self) -> GroupTiming {
        self.tuning.timing
    }

    pub fn http_addr_of(&self, node: NodeId) -> Option<String> {
        self.cluster
            .address_of(node)
            .map(|address| address.http_addr)
            .or_else(|| self.config.node(node).map(|entry| entry.http_addr.clone()))
    }

    /// The nodes that hold a replica of `shard` per the cluster map (used when this node holds
    /// no replica itself; any replica knows the leader).
    pub fn replica_nodes(&self, shard: ShardId) -> Vec<NodeId> {
        self.cluster.replicas_of(shard)
    }

    /// Opens this node's replica of `shard` (or of the metadata group) and starts its Raft
    /// group, unless it is open already. The group starts uninitialized when its storage is
    /// empty: the leader brings it up to date (log or snapshot) once it is a learner.
    pub async fn open_replica(&self, shard: ShardId) -> Result<Arc<ShardReplica>, NodeError> {
        let _serialized = self.replica_changes.lock().await;
        if let Some(replica) = self.replicas.get(&shard) {
            return Ok(replica);
        }
        let replica = self.start_replica(shard).await?;
        self.replicas.insert(Arc::clone(&replica));
        tracing::info!(shard, "replica opened");
        Ok(replica)
    }

    /// Opens the replicas of `shards` (a restart's stored replicas) side by side: each reads
    /// its snapshot and re-applies the committed log after it (CPU work, one task per shard), so
    /// a restart takes about the longest shard's time per core rather than the sum of them all.
    pub async fn open_replicas(
        self: &Arc<Self>,
        shards: impl IntoIterator<Item = ShardId>,
    ) -> Result<(), NodeError> {
        let _serialized = self.replica_changes.lock().await;
        let tasks: Vec<_> = shards
            .into_iter()
            .filter(|shard| !self.replicas.contains(*shard))
            .map(|shard| {
                let context = Arc::clone(self);
                tokio::spawn(async move { context.start_replica(shard).await })
            })
            .collect();
        // Every task is awaited, also after an error, so none is left opening a shard.
        let mut first_error = None;
        for task in tasks {
            match task.await {
                Ok(Ok(replica)) => {
                    tracing::info!(shard = replica.shard, "replica opened");
                    self.replicas.insert(replica);
                }
                Ok(Err(error)) => {
                    first_error.get_or_insert(error);
                }
                Err(error) => {
                    first_error
                        .get_or_insert(NodeError::Storage(format!("opening a replica: {error}")));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Opens the storage of `shard` and starts its Raft group and proposer; the caller holds
    /// `replica_changes` and makes the replica reachable.
    async fn start_replica(&self, shard: ShardId) -> Result<Arc<ShardReplica>, NodeError> {
        let storage = self
            .storage
            .lock()
            .clone()
            .ok_or_else(|| NodeError::Storage("the node is stopping".to_owned()))?;
        // Opening a shard reads its whole state from disk: keep it off the async workers.
        let (log_store, state_machine, state) =
            tokio::task::spawn_blocking(move || storage.open_shard(shard))
                .await
                .map_err(|error| NodeError::Storage(error.to_string()))?
                .map_err(|error| NodeError::Storage(error.to_string()))?;
        let raft = LedgerRaft::new(
            self.node_id(),
            replica_config(&self.raft_config, self.node_id(), shard),
            self.transport.network_factory(shard),
            log_store,
            state_machine,
        )
        .await
        .map_err(|error| NodeError::Raft {
            shard,
            message: error.to_string(),
        })?;
        self.registry.register(shard, raft.clone());
        let proposer = spawn_proposer(shard, raft.clone(), self.tuning.proposer);
        let replica = Arc::new(ShardReplica {
            digest: parking_lot::Mutex::default(),
            shard,
            reads: ReadBatcher::new(shard, raft.clone()),
            raft,
            proposer,
            state,
        });
        Ok(replica)
    }

    /// Stops this node's replica of `shard` and deletes its data, unconditionally: for a node
    /// the cluster removed (no group counts it any more).
    pub async fn drop_replica(&self, shard: ShardId) {
        let _serialized = self.replica_changes.lock().await;
        let Some(replica) = self.replicas.remove(shard) else {
            return;
        };
        self.registry.unregister(shard);
        self.stop_and_delete(replica).await;
    }

    /// Stops this node's replica of `shard` and deletes its data once `counted` (asked after
    /// the replica stopped taking Raft messages) answers that the shard's group no longer
    /// counts this node; otherwise the replica goes on as it was.
    ///
    /// **Why ask first:** a replica the map moved away may already be back in its group (the
    /// controller began a move that adds this node again before this node saw the map that
    /// moved it away). The group's leader then counts what this replica's log holds; deleting it
    /// would revert a log the leader has counted, which Raft forbids (the leader would wait
    /// forever for entries it believes are here, and a voter that forgets acknowledged entries
    /// can lose committed ones). The question is asked while the transport refuses the shard's
    /// messages, so no leader learns anything more from this replica: when the group's leader,
    /// confirmed by a quorum, does not count this node, every later add of it starts from
    /// nothing, and the data can go.
    pub async fn retire_replica(
        &self,
        shard: ShardId,
        counted: impl std::future::Future<Output = Result<bool, String>>,
    ) -> Retirement {
        let _serialized = self.replica_changes.lock().await;
        // Out of the routing table too: the question must go to another replica's view of
        // the leader, never to this replica (a leader that was moved away may not know yet).
        let Some(replica) = self.replicas.remove(shard) else {
            return Retirement::Absent;
        };
        self.registry.unregister(shard);
        match counted.await {
            Ok(false) => {
                self.stop_and_delete(replica).await;
                Retirement::Dropped
            }
            Ok(true) => {
                self.registry.register(shard, replica.raft.clone());
                self.replicas.insert(replica);
                Retirement::Kept
            }
            Err(reason) => {
                self.registry.register(shard, replica.raft.clone());
                self.replicas.insert(replica);
                Retirement::Undecided(reason)
            }
        }
    }

    async fn stop_and_delete(&self, replica: Arc<ShardReplica>) {
        let shard = replica.shard;
        if let Err(error) = replica.raft.shutdown().await {
            tracing::warn!(shard, %error, "raft shutdown of a dropped replica");
        }
        drop(replica);
        let Some(storage) = self.storage.lock().clone() else {
            return;
        };
        // The stores are released when the last task holding them (a snapshot build, a read)
        // ends; until then deleting is refused and tried again.
        for _ in 0..100 {
            let storage = storage.clone();
            match tokio::task::spawn_blocking(move || storage.delete_shard(shard)).await {
                Ok(Ok(())) => {
                    tracing::info!(shard, "replica dropped");
                    return;
                }
                Ok(Err(ledger_storage::StorageError::ShardAlreadyOpen { .. })) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(Err(error)) => {
                    tracing::error!(shard, %error, "deleting a dropped replica failed");
                    return;
                }
                Err(error) => {
                    tracing::error!(shard, %error, "deleting a dropped replica failed");
                    return;
                }
            }
        }
        tracing::warn!(
            shard,
            "a dropped replica is still referenced; its data stays until the next start"
        );
    }

    /// Initializes the group of `shard` with `members` as voters if it has no membership yet
    /// (cluster formation).
    pub(crate) async fn initialize_group(
        &self,
        replica: &ShardReplica,
        members: BTreeMap<NodeId, LedgerNode>,
    ) -> Result<(), NodeError> {
        let shard = replica.shard;
        let raft_error = |error: String| NodeError::Raft {
            shard,
            message: error,
        };
        if replica
            .raft
            .is_initialized()
            .await
            .map_err(|error| raft_error(error.to_string()))?
        {
            return Ok(());
        }
        tracing::info!(shard, members = ?members.keys().collect::<Vec<_>>(), "initializing group");
        if let Err(error) = replica.raft.initialize(members).await {
            // Another start may have initialized it meanwhile; anything else is fatal.
            if !replica.raft.is_initialized().await.unwrap_or(false) {
                return Err(raft_error(error.to_string()));
            }
            tracing::warn!(shard, %error, "initialize raced with an existing config");
        }
        Ok(())
    }
}

/// A started node. Dropping it without `shutdown` leaves tasks running until the runtime ends.
pub struct RunningNode {
    pub context: Arc<NodeContext>,
    pub http_addr: SocketAddr,
    shutdown_sender: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    actor_runtime: Option<ActorRuntime>,
}

impl RunningNode {
    /// Starts every part of the node and returns once it accepts HTTP requests. The shard groups
    /// elect leaders in the background (and, on the first start of a cluster, form it once the
    /// peers answer); requests meanwhile get 503 with `Retry-After`.
    pub async fn start(config: NodeConfig, tuning: NodeTuning) -> Result<RunningNode, NodeError> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|source| NodeError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let storage = NodeStorage::open(config.data_dir.join("rocksdb"))
            .map_err(|error| NodeError::Storage(error.to_string()))?;
        let record = {
            let storage = storage.clone();
            tokio::task::spawn_blocking(move || NodeRecord::load(&storage))
                .await
                .map_err(|error| NodeError::Storage(error.to_string()))??
        };
        let stored_shards = {
            let storage = storage.clone();
            tokio::task::spawn_blocking(move || storage.stored_shards())
                .await
                .map_err(|error| NodeError::Storage(error.to_string()))?
                .map_err(|error| NodeError::Storage(error.to_string()))?
        };
        let transport = RaftTransport::new(config.node_id);
        let registry = Arc::new(ShardRegistry::new());
        let raft_config = group_config(config.cluster.shards, tuning.timing, tuning.snapshots)
            .map_err(|error| NodeError::Raft {
                shard: 0,
                message: error.to_string(),
            })?;
        let (shutdown_sender, shutdown_receiver) = watch::channel(false);
        let mut tasks = Vec::new();

        // Node-to-node traffic. A single-node ledger has no peers and opens no Raft port.
        if config.cluster.nodes.len() > 1 {
            let listener = TcpListener::bind(&config.raft_addr)
                .await
                .map_err(|source| NodeError::Listen {
                    address: config.raft_addr.clone(),
                    source,
                })?;
            let handler: Arc<dyn ledger_raft::network::RpcHandler> = registry.clone();
            let shutdown = wait_for_shutdown(shutdown_receiver.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(error) = serve(listener, handler, shutdown).await {
                    tracing::error!(%error, "raft transport server stopped");
                }
            }));
        }

        // Elections are off in every group until this node's gate lets them (PreVote).
        let (gate, election_gate) = spawn_election_gate(
            Arc::clone(&registry),
            Arc::clone(&transport),
            GateSettings::from_timing(&tuning.timing),
            wait_for_shutdown(shutdown_receiver.clone()),
        );
        tasks.push(gate);

        let actor_runtime = ActorRuntime::start(2)?;
        let actors = AccountActors::new(&actor_runtime, tuning.actors);
        let forwarder = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|error| NodeError::Storage(format!("http client: {error}")))?;
        let context = Arc::new(NodeContext {
            cluster: ClusterState::new(&config, record.clone()),
            config: config.clone(),
            replicas: ReplicaSet::default(),
            actors,
            forwarder,
            transport,
            registry,
            metrics: crate::metrics::Metrics::install(),
            storage: parking_lot::Mutex::new(Some(storage)),
            election_gate,
            raft_config,
            tuning,
            replica_changes: tokio::sync::Mutex::new(()),
        });

        // A restart: the replicas this node held when it stopped. The cluster map (learned in
        // the background) then adds and drops replicas as moves require.
        context.open_replicas(stored_shards).await?;
        // The first start of a single-node ledger forms it at once; with peers, formation waits
        // for them in the background (`cluster::run`).
        if record.is_none() && config.cluster.nodes.len() == 1 {
            crate::cluster::form(&context, config.node_ids()).await?;
        } else if let Some(NodeRecord::Formation {
            nodes,
            formed: false,
        }) = &record
        {
            // Stopped in the middle of formation: finish it (nothing moved yet).
            crate::cluster::form(&context, nodes.clone()).await?;
        }

        let listener = TcpListener::bind(&config.http_addr)
            .await
            .map_err(|source| NodeError::Listen {
                address: config.http_addr.clone(),
                source,
            })?;
        let http_addr = listener.local_addr().map_err(|source| NodeError::Listen {
            address: config.http_addr.clone(),
            source,
        })?;
        tasks.extend(crate::background::spawn(
            Arc::clone(&context),
            shutdown_receiver.clone(),
        ));
        tasks.push(tokio::spawn(crate::cluster::run(
            Arc::clone(&context),
            shutdown_receiver.clone(),
        )));
        let router = http::router(context.clone());
        let shutdown = wait_for_shutdown(shutdown_receiver.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(%error, "http server stopped");
            }
        }));
        tracing::info!(node_id = config.node_id, %http_addr, raft_addr = %config.raft_addr, shards = context.replicas.len(), "ledger node started");

        Ok(RunningNode {
            context,
            http_addr,
            shutdown_sender,
            tasks,
            actor_runtime: Some(actor_runtime),
        })
    }

    /// Resolves when the cluster removed this node (it was drained and retired, or it came
    /// back after that): it serves nothing any more and should stop.
    pub async fn removed(&self) {
        self.context.cluster.wait_removed().await
    }

    /// Stops serving, shuts every Raft group down (flushing nothing that is not already durable:
    /// acknowledged writes were synced before they were acknowledged) and closes storage.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown_sender.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        for replica in self.context.replicas.all() {
            if let Err(error) = replica.raft.shutdown().await {
                tracing::warn!(shard = replica.shard, %error, "raft shutdown");
            }
        }
        if let Some(mut runtime) = self.actor_runtime.take() {
            // Joining actix threads blocks; keep it off the async workers.
            let _ = tokio::task::spawn_blocking(move || runtime.stop()).await;
        }
        self.context.storage.lock().take();
        tracing::info!(node_id = self.context.node_id(), "ledger node stopped");
    }
}

async fn wait_for_shutdown(mut receiver: watch::Receiver<bool>) {
    while !*receiver.borrow() {
        if receiver.changed().await.is_err() {
            return;
        }
    }
}
