//! openraft settings shared by every shard group.

use std::sync::Arc;

use openraft::{Config, SnapshotPolicy};

use crate::{NodeId, ShardId};

/// The group settings were rejected by openraft's validation.
#[derive(Debug, thiserror::Error)]
#[error("invalid raft group settings: {message}")]
pub struct GroupConfigError {
    pub message: String,
}

/// Timing of the shard groups. Elections must not fire because of scheduling noise on a small,
/// busy machine (every node of a test cluster may share two cores), yet a dead leader should be
/// replaced within a few seconds. openraft 0.9 also uses the heartbeat interval as the
/// timeout of every append-entries RPC, so it must cover a follower's fsync under load.
///
/// openraft 0.9's leader lease equals `election_timeout_max`, so a follower campaigns
/// `election_timeout_max` + a random draw from [`election_timeout_min`, `election_timeout_max`]
/// after it last heard from its leader: 2.5–3.0 s with the defaults (12 heartbeats at least), and
/// only once the [`election_gate`](crate::election_gate) lets it.
#[derive(Clone, Copy, Debug)]
pub struct GroupTiming {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
}

impl Default for GroupTiming {
    fn default() -> Self {
        GroupTiming {
            heartbeat_interval_ms: 200,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 1500,
        }
    }
}

/// When a shard group compacts its log into a snapshot. It is also the optional `[snapshots]`
/// section of a node's config file, where each key may be left out (its default applies).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotSettings {
    /// Build a snapshot once this many entries (each a batch of commands) were applied since the
    /// last one. Snapshots serialize the shard's whole state, so not too often. Each replica
    /// waits for up to 7/16 more (see [`replica_config`]), so that the replicas of a shard do not
    /// all build theirs at once.
    pub entries_since_last: u64,
    /// Entries kept in the log behind a snapshot, so that a briefly lagging follower catches up
    /// from the log rather than by a snapshot transfer.
    pub entries_to_keep: u64,
}

impl Default for SnapshotSettings {
    fn default() -> Self {
        SnapshotSettings {
            entries_since_last: 20_000,
            entries_to_keep: 2_000,
        }
    }
}

/// The openraft config of one shard group. Elections start disabled: the node's
/// [`election_gate`](crate::election_gate) enables them per group when a majority agrees that the
/// leader is gone, so the node must run one.
pub fn group_config(
    shard_count: u32,
    timing: GroupTiming,
    snapshots: SnapshotSettings,
) -> Result<Arc<Config>, GroupConfigError> {
    let config = Config {
        cluster_name: format!("credit-ledger-{shard_count}-shards"),
        heartbeat_interval: timing.heartbeat_interval_ms,
        election_timeout_min: timing.election_timeout_min_ms,
        election_timeout_max: timing.election_timeout_max_ms,
        // An entry already carries thousands of commands; keep replication messages moderate.
        max_payload_entries: 64,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshots.entries_since_last),
        max_in_snapshot_log_to_keep: snapshots.entries_to_keep,
        snapshot_max_chunk_size: 4 * 1024 * 1024,
        install_snapshot_timeout: 10_000,
        enable_elect: false,
        ..Config::default()
    };
    let config = config.validate().map_err(|error| GroupConfigError {
        message: error.to_string(),
    })?;
    Ok(Arc::new(config))
}

/// The config of `node`'s replica of `shard`: the node's group config with the snapshot
/// threshold spread over `[n, n + 7n/16]` by replica, where `n` is
/// [`SnapshotSettings::entries_since_last`].
///
/// With one threshold, every replica of a shard reaches it at the same log index and builds the
/// same snapshot in the same seconds; a build holds up the replica's applies and fills its disk,
/// so all of them slowed down at once and so did the shard (`benches/RESULTS.md`, session 10).
/// The spread is `(node + 3 × shard) mod 8` sixteenths of `n`: distinct for replicas on nodes
/// whose ids differ by less than 8, and for 8 consecutive shards on one node.
pub fn replica_config(group: &Config, node: NodeId, shard: ShardId) -> Arc<Config> {
    let mut config = group.clone();
    if let SnapshotPolicy::LogsSinceLast(entries) = group.snapshot_policy {
        let spread = (node.wrapping_add(3 * u64::from(shard))) % 8;
        let extra = entries.saturating_mul(spread) / 16;
        config.snapshot_policy = SnapshotPolicy::LogsSinceLast(entries.saturating_add(extra));
    }
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn threshold(config: &Config) -> u64 {
        match config.snapshot_policy {
            SnapshotPolicy::LogsSinceLast(entries) => entries,
            SnapshotPolicy::Never => panic!("the ledger always snapshots"),
        }
    }

    #[test]
    fn the_replicas_of_a_shard_snapshot_at_different_points_within_the_bound() {
        let settings = SnapshotSettings {
            entries_since_last: 16_000,
            entries_to_keep: 100,
        };
        let group = group_config(16, GroupTiming::default(), settings).expect("valid settings");
        for shard in 0..16 {
            let thresholds: Vec<u64> = (1..=5)
                .map(|node| threshold(&replica_config(&group, node, shard)))
                .collect();
            let mut distinct = thresholds.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), 5, "shard {shard}: {thresholds:?}");
            assert!(
                thresholds
                    .iter()
                    .all(|&entries| (16_000..=23_000).contains(&entries)),
                "shard {shard}: {thresholds:?}"
            );
        }
        // Only the threshold differs from the group's config.
        let replica = replica_config(&group, 2, 3);
        assert_eq!(replica.max_in_snapshot_log_to_keep, 100);
        assert_eq!(replica.heartbeat_interval, group.heartbeat_interval);
        assert_eq!(replica.cluster_name, group.cluster_name);
    }
}
