//! A three-node cluster in one test process (real RocksDB, real Raft over loopback sockets, real
//! HTTP), shared by the in-process test files.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener as StdTcpListener;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use ledger_server::config::{ClusterConfig, ClusterNode};
use ledger_server::{NodeConfig, NodeTuning, RunningNode};
use tempfile::TempDir;

pub const SHARDS: u32 = 4;
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A port that is free now, chosen below the kernel's ephemeral range (32768 and up on Linux):
/// a port taken from that range can be handed to some outgoing connection (a client, a Raft
/// dial) between this check and the node's bind, which made tests collide.
pub fn free_port() -> Result<u16> {
    use std::sync::atomic::{AtomicU16, Ordering};
    // Spread over the range by process, then walk it: concurrent tests of one process never
    // pick the same port, and test processes rarely do.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = 20_000 + (std::process::id() % 600) as u16 * 20;
    for _ in 0..12_000 {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % 12_000;
        let port = 20_000 + (start - 20_000 + offset) % 12_000;
        if StdTcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port below the ephemeral range")
}

pub struct TestCluster {
    pub _directory: TempDir,
    pub configs: Vec<NodeConfig>,
    pub nodes: Vec<Option<RunningNode>>,
}

impl TestCluster {
    pub async fn start(node_count: usize) -> Result<TestCluster> {
        TestCluster::start_with(node_count, NodeTuning::default()).await
    }

    pub async fn start_with(node_count: usize, tuning: NodeTuning) -> Result<TestCluster> {
        let directory = tempfile::tempdir()?;
        let mut entries = Vec::new();
        for id in 1..=node_count as u64 {
            entries.push(ClusterNode {
                id,
                http_addr: format!("127.0.0.1:{}", free_port()?),
                raft_addr: format!("127.0.0.1:{}", free_port()?),
            });
        }
        let configs: Vec<NodeConfig> = entries
            .iter()
            .map(|entry| NodeConfig {
                node_id: entry.id,
                data_dir: directory.path().join(format!("node{}", entry.id)),
                http_addr: entry.http_addr.clone(),
                raft_addr: entry.raft_addr.clone(),
                cluster: ClusterConfig {
                    shards: SHARDS,
                    replication: 3,
                    nodes: entries.clone(),
                },
                snapshots: None,
            })
            .collect();
        let mut nodes = Vec::new();
        for config in &configs {
            nodes.push(Some(RunningNode::start(config.clone(), tuning).await?));
        }
        let cluster = TestCluster {
            _directory: directory,
            configs,
            nodes,
        };
        cluster.wait_for_leaders().await?;
        Ok(cluster)
    }

    pub fn urls(&self) -> Vec<String> {
        self.configs
            .iter()
            .map(|config| format!("http://{}", config.http_addr))
            .collect()
    }

    pub fn node(&self, id: u64) -> &RunningNode {
        self.nodes[(id - 1) as usize]
            .as_ref()
            .expect("node is running")
    }

    /// Leader of each shard as seen by the running nodes, once they all agree.
    pub fn agreed_leaders(&self) -> Option<BTreeMap<u32, u64>> {
        let mut leaders = BTreeMap::new();
        for node in self.nodes.iter().flatten() {
            for replica in node.context.replicas.values() {
                let leader = replica.current_leader()?;
                if *leaders.entry(replica.shard).or_insert(leader) != leader {
                    return None;
                }
            }
        }
        (leaders.len() == SHARDS as usize).then_some(leaders)
    }

    pub async fn wait_for_leaders(&self) -> Result<BTreeMap<u32, u64>> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(leaders) = self.agreed_leaders() {
                return Ok(leaders);
            }
            if Instant::now() > deadline {
                bail!("shards did not all elect an agreed leader within {DEADLINE:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every running replica of every shard applied the same index, then returns the
    /// per-shard digests after checking that they are equal on all replicas.
    pub async fn converged_digests(&self) -> Result<BTreeMap<u32, u128>> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let mut by_shard: BTreeMap<u32, Vec<(Option<u64>, u128)>> = BTreeMap::new();
            for node in self.nodes.iter().flatten() {
                for replica in node.context.replicas.values() {
                    let state = replica.state.read();
                    by_shard.entry(replica.shard).or_default().push((
                        state.last_applied.map(|log_id| log_id.index),
                        state.ledger.digest(),
                    ));
                }
            }
            let same_index = by_shard
                .values()
                .all(|replicas| replicas.iter().all(|(index, _)| *index == replicas[0].0));
            if same_index {
                let mut digests = BTreeMap::new();
                for (shard, replicas) in by_shard {
                    for (index, digest) in &replicas {
                        assert_eq!(
                            *digest, replicas[0].1,
                            "shard {shard}: replicas at index {index:?} differ"
                        );
                    }
                    digests.insert(shard, replicas[0].1);
                }
                return Ok(digests);
            }
            if Instant::now() > deadline {
                bail!("replicas did not reach the same applied index: {by_shard:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn shutdown(mut self) {
        for node in self.nodes.iter_mut() {
            if let Some(node) = node.take() {
                node.shutdown().await;
            }
        }
    }
}
