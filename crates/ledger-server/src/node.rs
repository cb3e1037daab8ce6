//! A running ledger node: storage, shard groups, transport, actors and HTTP, wired together.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ledger_actors::{AccountActors, ActorLimits, ActorRuntime};
use ledger_raft::config::{group_config, GroupTiming, SnapshotSettings};
use ledger_raft::election_gate::{spawn_election_gate, GateSettings, GateStats};
use ledger_raft::network::{serve, RaftTransport, ShardRegistry};
use ledger_raft::placement::{initializer_of_shard, replicas_of_shard};
use ledger_raft::proposer::{spawn_proposer, ProposerConfig, ProposerHandle};
use ledger_raft::reads::ReadBatcher;
use ledger_raft::{LedgerLogId, LedgerNode, LedgerRaft, NodeId, ShardId, SharedShardState};
use ledger_storage::NodeStorage;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

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

/// One shard replica hosted by this node.
#[derive(Clone)]
pub struct ShardReplica {
    pub shard: ShardId,
    pub raft: LedgerRaft,
    pub proposer: ProposerHandle,
    pub reads: ReadBatcher,
    pub state: SharedShardState,
    /// The last digest computed, with the applied log id it belongs to: the state changes only
    /// with `last_applied`, and a digest is O(state), so `GET /admin/cluster` (polled by tools)
    /// recomputes it only when the shard moved.
    digest: Arc<parking_lot::Mutex<Option<AppliedDigest>>>,
}

impl ShardReplica {
    /// The leader this replica knows of.
    pub fn current_leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
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

/// Everything a request handler needs; shared by all handlers.
pub struct NodeContext {
    pub config: NodeConfig,
    pub replicas: HashMap<ShardId, ShardReplica>,
    pub actors: AccountActors,
    pub forwarder: reqwest::Client,
    pub transport: Arc<RaftTransport>,
    pub metrics: crate::metrics::Metrics,
    /// What the node's election gate decided so far (for `/metrics`).
    pub election_gate: Arc<GateStats>,
    /// The node's database, for backups; taken out (and so closed) by shutdown.
    pub storage: parking_lot::Mutex<Option<NodeStorage>>,
}

impl NodeContext {
    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    pub fn shard_count(&self) -> u32 {
        self.config.cluster.shards
    }

    /// The HTTP address of `node`, from the cluster config.
    pub fn http_addr_of(&self, node: NodeId) -> Option<&str> {
        self.config.node(node).map(|entry| entry.http_addr.as_str())
    }

    /// The replicas of `shard` per the placement (used when this node holds no replica itself).
    pub fn replica_nodes(&self, shard: ShardId) -> Vec<NodeId> {
        replicas_of_shard(
            shard,
            &self.config.node_ids(),
            self.config.cluster.replication,
        )
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
    /// elect leaders in the background; requests meanwhile get 503 with `Retry-After`.
    pub async fn start(config: NodeConfig, tuning: NodeTuning) -> Result<RunningNode, NodeError> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|source| NodeError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let storage = NodeStorage::open(config.data_dir.join("rocksdb"))
            .map_err(|error| NodeError::Storage(error.to_string()))?;
        let node_ids = config.node_ids();
        let replication = config.cluster.replication;
        let transport = RaftTransport::new(config.node_id);
        let registry = Arc::new(ShardRegistry::new());
        let raft_config = group_config(config.cluster.shards, tuning.timing, tuning.snapshots)
            .map_err(|error| NodeError::Raft {
                shard: 0,
                message: error.to_string(),
            })?;

        let mut replicas = HashMap::new();
        for shard in 0..config.cluster.shards {
            if !replicas_of_shard(shard, &node_ids, replication).contains(&config.node_id) {
                continue;
            }
            // Opening a shard reads its whole state from disk: keep it off the async workers.
            let shard_storage = storage.clone();
            let (log_store, state_machine, state) =
                tokio::task::spawn_blocking(move || shard_storage.open_shard(shard))
                    .await
                    .map_err(|error| NodeError::Storage(error.to_string()))?
                    .map_err(|error| NodeError::Storage(error.to_string()))?;
            let raft = LedgerRaft::new(
                config.node_id,
                raft_config.clone(),
                transport.network_factory(shard),
                log_store,
                state_machine,
            )
            .await
            .map_err(|error| NodeError::Raft {
                shard,
                message: error.to_string(),
            })?;
            registry.register(shard, raft.clone());
            let proposer = spawn_proposer(shard, raft.clone(), tuning.proposer);
            replicas.insert(
                shard,
                ShardReplica {
                    digest: Arc::default(),
                    shard,
                    reads: ReadBatcher::new(shard, raft.clone()),
                    raft,
                    proposer,
                    state,
                },
            );
        }

        let (shutdown_sender, shutdown_receiver) = watch::channel(false);
        let mut tasks = Vec::new();

        // Node-to-node traffic. A single-node ledger has no peers and opens no Raft port.
        if node_ids.len() > 1 {
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

        // First start of the cluster: the first replica of each shard initializes its group with
        // all replicas as voters. On a restart the groups are already initialized on disk.
        for replica in replicas.values() {
            let shard = replica.shard;
            if initializer_of_shard(shard, &node_ids, replication) != Some(config.node_id) {
                continue;
            }
            let initialized =
                replica
                    .raft
                    .is_initialized()
                    .await
                    .map_err(|error| NodeError::Raft {
                        shard,
                        message: error.to_string(),
                    })?;
            if initialized {
                continue;
            }
            let members: BTreeMap<NodeId, LedgerNode> =
                replicas_of_shard(shard, &node_ids, replication)
                    .into_iter()
                    .filter_map(|id| {
                        config.node(id).map(|node| {
                            (
                                id,
                                LedgerNode {
                                    raft_addr: node.raft_addr.clone(),
                                    http_addr: node.http_addr.clone(),
                                },
                            )
                        })
                    })
                    .collect();
            tracing::info!(shard, members = ?members.keys().collect::<Vec<_>>(), "initializing shard group");
            if let Err(error) = replica.raft.initialize(members).await {
                // Another start may have initialized it meanwhile; anything else is fatal.
                if replica.raft.is_initialized().await.unwrap_or(false) {
                    tracing::warn!(shard, %error, "initialize raced with an existing config");
                } else {
                    return Err(NodeError::Raft {
                        shard,
                        message: error.to_string(),
                    });
                }
            }
        }

        let actor_runtime = ActorRuntime::start(2)?;
        let actors = AccountActors::new(&actor_runtime, tuning.actors);
        let forwarder = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|error| NodeError::Storage(format!("http client: {error}")))?;
        let context = Arc::new(NodeContext {
            config: config.clone(),
            replicas,
            actors,
            forwarder,
            transport,
            metrics: crate::metrics::Metrics::install(),
            storage: parking_lot::Mutex::new(Some(storage)),
            election_gate,
        });

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

    /// Stops serving, shuts every Raft group down (flushing nothing that is not already durable:
    /// acknowledged writes were synced before they were acknowledged) and closes storage.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown_sender.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        for replica in self.context.replicas.values() {
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
