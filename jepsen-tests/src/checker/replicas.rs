//! Deterministic replicas: after healing, the replicas of every shard reach the same
//! `last_applied` (waited for with a deadline), and replicas at the same applied index report the
//! same state digest, in every poll along the way.

use std::collections::BTreeMap;

use ledger_api::ClusterResponse;

use crate::NodeId;

/// Replicas (nodes hosting a shard) at the same `last_applied` with different digests.
pub fn digest_mismatches(views: &BTreeMap<NodeId, ClusterResponse>) -> Vec<String> {
    let mut seen: BTreeMap<(u32, u64), (NodeId, &str)> = BTreeMap::new();
    let mut mismatches = Vec::new();
    for (node_id, view) in views {
        for shard in &view.shards {
            let Some(index) = shard.last_applied else {
                continue;
            };
            if shard.digest.is_empty() || !shard.members.contains(node_id) {
                continue;
            }
            match seen.get(&(shard.shard_id, index)) {
                Some((other_node, other_digest)) if *other_digest != shard.digest => {
                    mismatches.push(format!(
                        "shard {} at applied index {index}: node {other_node} has digest \
                         {other_digest}, node {node_id} has {}",
                        shard.shard_id, shard.digest
                    ));
                }
                Some(_) => {}
                None => {
                    seen.insert((shard.shard_id, index), (*node_id, &shard.digest));
                }
            }
        }
    }
    mismatches
}

/// `Ok` when every shard's replicas among the answering nodes are at one `last_applied`;
/// otherwise which shards are not.
pub fn replicas_in_sync(views: &BTreeMap<NodeId, ClusterResponse>) -> Result<usize, String> {
    let mut indexes: BTreeMap<u32, BTreeMap<NodeId, Option<u64>>> = BTreeMap::new();
    for (node_id, view) in views {
        for shard in &view.shards {
            if shard.members.contains(node_id) {
                indexes
                    .entry(shard.shard_id)
                    .or_default()
                    .insert(*node_id, shard.last_applied);
            }
        }
    }
    let behind: Vec<String> = indexes
        .iter()
        .filter(|(_, per_node)| {
            let mut values = per_node.values();
            let first = values.next();
            values.any(|value| Some(value) != first)
        })
        .map(|(shard, per_node)| format!("shard {shard}: {per_node:?}"))
        .collect();
    if behind.is_empty() {
        Ok(indexes.len())
    } else {
        Err(behind.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger_api::ShardInfo;

    fn view(node_id: NodeId, shards: &[(u32, Option<u64>, &str)]) -> ClusterResponse {
        ClusterResponse {
            node_id,
            nodes: Vec::new(),
            shards: shards
                .iter()
                .map(|(shard_id, last_applied, digest)| ShardInfo {
                    shard_id: *shard_id,
                    leader: Some(1),
                    members: vec![1, 2, 3],
                    last_applied: *last_applied,
                    digest: digest.to_string(),
                })
                .collect(),
            map: None,
        }
    }

    #[test]
    fn equal_indexes_with_equal_digests_are_in_sync() {
        let views: BTreeMap<NodeId, ClusterResponse> = [
            (1, view(1, &[(0, Some(5), "aa"), (1, Some(9), "bb")])),
            (2, view(2, &[(0, Some(5), "aa"), (1, Some(9), "bb")])),
        ]
        .into_iter()
        .collect();
        assert!(digest_mismatches(&views).is_empty());
        assert_eq!(replicas_in_sync(&views), Ok(2));
    }

    #[test]
    fn a_lagging_replica_is_not_in_sync_but_not_a_mismatch() {
        let views: BTreeMap<NodeId, ClusterResponse> = [
            (1, view(1, &[(0, Some(5), "aa")])),
            (2, view(2, &[(0, Some(4), "zz")])),
        ]
        .into_iter()
        .collect();
        assert!(digest_mismatches(&views).is_empty());
        assert!(replicas_in_sync(&views).is_err());
    }

    #[test]
    fn different_digests_at_one_index_are_a_mismatch() {
        let views: BTreeMap<NodeId, ClusterResponse> = [
            (1, view(1, &[(0, Some(5), "aa")])),
            (3, view(3, &[(0, Some(5), "ab")])),
        ]
        .into_iter()
        .collect();
        assert_eq!(digest_mismatches(&views).len(), 1);
    }
}
