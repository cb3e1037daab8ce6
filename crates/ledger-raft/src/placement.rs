//! Which nodes hold a replica of which shard, and who starts each group.
//!
//! For this stage the placement is a pure function of the configured node list: shard `s` has
//! `replication` replicas on consecutive nodes starting at node index `s % nodes`. With three
//! nodes and replication three, every node holds every shard, and each node is the first
//! replica (the initializer, and usually the first leader) of a third of the shards, which
//! spreads the leaders.

use crate::types::{NodeId, ShardId};

/// The replicas of `shard`, first one first. `nodes` must be sorted and deduplicated by the caller
/// (the config loader does it), so that every node computes the same answer.
pub fn replicas_of_shard(shard: ShardId, nodes: &[NodeId], replication: usize) -> Vec<NodeId> {
    if nodes.is_empty() {
        return Vec::new();
    }
    let replica_count = replication.clamp(1, nodes.len());
    let start = shard as usize % nodes.len();
    (0..replica_count)
        .map(|offset| nodes[(start + offset) % nodes.len()])
        .collect()
}

/// The node that initializes the Raft group of `shard` on first start of the cluster.
pub fn initializer_of_shard(
    shard: ShardId,
    nodes: &[NodeId],
    replication: usize,
) -> Option<NodeId> {
    replicas_of_shard(shard, nodes, replication)
        .first()
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_holds_every_shard_with_three_nodes() {
        let nodes = [1, 2, 3];
        for shard in 0..16 {
            let mut replicas = replicas_of_shard(shard, &nodes, 3);
            replicas.sort_unstable();
            assert_eq!(replicas, vec![1, 2, 3], "shard {shard}");
        }
    }

    #[test]
    fn initializers_are_spread_over_nodes() {
        let nodes = [1, 2, 3];
        let mut count_by_node = [0usize; 3];
        for shard in 0..16 {
            let first = initializer_of_shard(shard, &nodes, 3).expect("nodes are not empty");
            count_by_node[(first - 1) as usize] += 1;
        }
        assert_eq!(count_by_node.iter().sum::<usize>(), 16);
        assert!(
            count_by_node.iter().all(|count| (5..=6).contains(count)),
            "{count_by_node:?}"
        );
    }

    #[test]
    fn replication_is_capped_by_node_count() {
        assert_eq!(replicas_of_shard(7, &[4], 3), vec![4]);
        assert_eq!(replicas_of_shard(1, &[1, 2, 3, 4, 5], 3), vec![2, 3, 4]);
        assert!(replicas_of_shard(0, &[], 3).is_empty());
    }
}
