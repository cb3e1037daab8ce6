//! The node configuration file (the public contract of DESIGN.md) and its validation.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ledger_core::DEFAULT_SHARD_COUNT;
use ledger_raft::config::SnapshotSettings;
use ledger_raft::NodeId;
use serde::{Deserialize, Serialize};

/// Most shards a cluster may have: each is a Raft group with its own heartbeats.
pub const SHARD_COUNT_MAX: u32 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {message}")]
    Invalid { message: String },
}

/// One node of the cluster as listed in `[cluster] nodes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterNode {
    pub id: NodeId,
    pub http_addr: String,
    /// The address *other nodes dial* to reach this node's Raft listener. It is usually the
    /// node's own top-level `raft_addr`, but may differ when something sits in between (a NAT,
    /// a TCP proxy, or the chaos harness's partitioning proxy): the node binds its top-level
    /// `raft_addr` and advertises this one.
    pub raft_addr: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    #[serde(default = "default_shards")]
    pub shards: u32,
    #[serde(default = "default_replication")]
    pub replication: usize,
    pub nodes: Vec<ClusterNode>,
}

fn default_shards() -> u32 {
    DEFAULT_SHARD_COUNT
}

fn default_replication() -> usize {
    3
}

/// A node's configuration: `ledgerd --config FILE`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    pub http_addr: String,
    pub raft_addr: String,
    pub cluster: ClusterConfig,
    /// `[snapshots]` (optional): when this node compacts each shard's log into a snapshot. A
    /// snapshot is the shard's checkpoint: a restart loads it and re-applies the log after it, so
    /// fewer entries between snapshots mean faster restarts and more snapshot work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<SnapshotSettings>,
}

impl NodeConfig {
    /// The embedded default of `ledgerd` without arguments: one node holding every shard,
    /// HTTP on 127.0.0.1:8080, data in `./data`. No Raft listener is opened (no peers).
    pub fn single_node() -> NodeConfig {
        let http_addr = "127.0.0.1:8080".to_owned();
        let raft_addr = "127.0.0.1:8081".to_owned();
        NodeConfig {
            node_id: 1,
            data_dir: PathBuf::from("data"),
            http_addr: http_addr.clone(),
            raft_addr: raft_addr.clone(),
            cluster: ClusterConfig {
                shards: DEFAULT_SHARD_COUNT,
                replication: 1,
                nodes: vec![ClusterNode {
                    id: 1,
                    http_addr,
                    raft_addr,
                }],
            },
            snapshots: None,
        }
    }

    /// Reads and validates a config file. A relative `data_dir` is taken relative to the current
    /// directory (as operators expect from a command line tool), not to the file.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: NodeConfig = toml::from_str(&text).map_err(|error| ConfigError::Parse {
            path: path.to_owned(),
            message: error.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid { message });
        if self.cluster.shards == 0 || self.cluster.shards > SHARD_COUNT_MAX {
            return invalid(format!(
                "cluster.shards must be between 1 and {SHARD_COUNT_MAX}, got {}",
                self.cluster.shards
            ));
        }
        if self
            .snapshots
            .is_some_and(|policy| policy.entries_since_last == 0)
        {
            return invalid("snapshots.entries_since_last must be at least 1".into());
        }
        if self.cluster.replication == 0 {
            return invalid("cluster.replication must be at least 1".into());
        }
        if self.cluster.nodes.is_empty() {
            return invalid("cluster.nodes must list at least this node".into());
        }
        let mut ids = BTreeSet::new();
        for node in &self.cluster.nodes {
            if node.id == 0 {
                return invalid("node ids must be positive".into());
            }
            if !ids.insert(node.id) {
                return invalid(format!("node id {} is listed twice", node.id));
            }
            for (name, address) in [
                ("http_addr", &node.http_addr),
                ("raft_addr", &node.raft_addr),
            ] {
                if address.parse::<SocketAddr>().is_err() {
                    return invalid(format!(
                        "node {}: {name} {address:?} is not an ip:port address",
                        node.id
                    ));
                }
            }
        }
        let Some(me) = self
            .cluster
            .nodes
            .iter()
            .find(|node| node.id == self.node_id)
        else {
            return invalid(format!(
                "node_id {} is not listed in cluster.nodes",
                self.node_id
            ));
        };
        // The Raft address may be advertised differently (see `ClusterNode::raft_addr`); the
        // HTTP address may not, because nodes forward requests to each other's `http_addr` and
        // a node must recognise itself among the leaders it is told about.
        if me.http_addr != self.http_addr {
            return invalid(format!(
                "node {}: http_addr differs from its entry in cluster.nodes",
                self.node_id
            ));
        }
        if self.raft_addr.parse::<SocketAddr>().is_err() {
            return invalid(format!(
                "raft_addr {:?} is not an ip:port address",
                self.raft_addr
            ));
        }
        Ok(())
    }

    /// The snapshot settings of this node's shard groups: `[snapshots]`, or the defaults.
    pub fn snapshot_settings(&self) -> SnapshotSettings {
        self.snapshots.unwrap_or_default()
    }

    /// Node ids, sorted: the input of placement, identical on every node.
    pub fn node_ids(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self.cluster.nodes.iter().map(|node| node.id).collect();
        ids.sort_unstable();
        ids
    }

    pub fn node(&self, id: NodeId) -> Option<&ClusterNode> {
        self.cluster.nodes.iter().find(|node| node.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTRACT_EXAMPLE: &str = r#"
node_id = 1
data_dir = "data/node1"
http_addr = "127.0.0.1:7001"     # client and admin API
raft_addr = "127.0.0.1:7101"     # node-to-node traffic
[cluster]
shards = 16
replication = 3
nodes = [
  { id = 1, http_addr = "127.0.0.1:7001", raft_addr = "127.0.0.1:7101" },
  { id = 2, http_addr = "127.0.0.1:7002", raft_addr = "127.0.0.1:7102" },
  { id = 3, http_addr = "127.0.0.1:7003", raft_addr = "127.0.0.1:7103" },
]
"#;

    #[test]
    fn parses_the_contract_example() {
        let config: NodeConfig = toml::from_str(CONTRACT_EXAMPLE).expect("contract example parses");
        config.validate().expect("contract example is valid");
        assert_eq!(config.node_ids(), vec![1, 2, 3]);
        assert_eq!(config.cluster.shards, 16);
        assert_eq!(config.data_dir, PathBuf::from("data/node1"));
    }

    #[test]
    fn single_node_default_is_valid() {
        NodeConfig::single_node()
            .validate()
            .expect("embedded default is valid");
    }

    #[test]
    fn rejects_inconsistent_configs() {
        let base: NodeConfig = toml::from_str(CONTRACT_EXAMPLE).expect("parses");
        let mut not_listed = base.clone();
        not_listed.node_id = 9;
        let mut zero_shards = base.clone();
        zero_shards.cluster.shards = 0;
        let mut duplicate = base.clone();
        duplicate.cluster.nodes.push(base.cluster.nodes[0].clone());
        let mut bad_address = base.clone();
        bad_address.cluster.nodes[1].raft_addr = "nowhere".into();
        let mut mismatch = base.clone();
        mismatch.http_addr = "127.0.0.1:9999".into();
        let mut bad_bind = base.clone();
        bad_bind.raft_addr = "everywhere".into();
        let mut snapshot_every_entry_zero = base.clone();
        snapshot_every_entry_zero.snapshots = Some(SnapshotSettings {
            entries_since_last: 0,
            entries_to_keep: 0,
        });
        for config in [
            not_listed,
            zero_shards,
            duplicate,
            bad_address,
            mismatch,
            bad_bind,
            snapshot_every_entry_zero,
        ] {
            assert!(
                matches!(config.validate(), Err(ConfigError::Invalid { .. })),
                "{config:?} should be invalid"
            );
        }
    }

    #[test]
    fn a_node_may_advertise_another_raft_address_than_it_binds() {
        let mut proxied: NodeConfig = toml::from_str(CONTRACT_EXAMPLE).expect("parses");
        proxied.raft_addr = "127.0.0.1:17101".into();
        proxied
            .validate()
            .expect("bind and advertised Raft addresses may differ");
    }

    #[test]
    fn the_snapshot_policy_is_optional_and_each_of_its_keys_too() {
        let base: NodeConfig = toml::from_str(CONTRACT_EXAMPLE).expect("parses");
        assert_eq!(base.snapshots, None);
        let defaults = SnapshotSettings::default();
        assert_eq!(base.snapshot_settings(), defaults);
        let text = format!("{CONTRACT_EXAMPLE}[snapshots]\nentries_since_last = 500\n");
        let tuned: NodeConfig = toml::from_str(&text).expect("parses");
        tuned.validate().expect("valid");
        assert_eq!(
            tuned.snapshots,
            Some(SnapshotSettings {
                entries_since_last: 500,
                entries_to_keep: defaults.entries_to_keep,
            })
        );
        assert_eq!(tuned.snapshot_settings().entries_since_last, 500);
        let unknown = format!("{CONTRACT_EXAMPLE}[snapshots]\nevery = 5\n");
        assert!(toml::from_str::<NodeConfig>(&unknown).is_err());
    }

    #[test]
    fn rejects_unknown_keys() {
        let text = CONTRACT_EXAMPLE.replace("node_id = 1", "node_id = 1\nnode_identifier = 2");
        assert!(toml::from_str::<NodeConfig>(&text).is_err());
    }
}
