use proptest::prelude::*;

use super::*;

fn address(node: NodeId) -> NodeAddress {
    NodeAddress {
        http_addr: format!("127.0.0.1:{}", 7000 + node),
        raft_addr: format!("127.0.0.1:{}", 7100 + node),
    }
}

fn addresses(nodes: impl IntoIterator<Item = NodeId>) -> BTreeMap<NodeId, NodeAddress> {
    nodes
        .into_iter()
        .map(|node| (node, address(node)))
        .collect()
}

/// The placement of `ledger_raft::placement` (consecutive nodes from `shard % n`), restated.
fn formed(node_count: u64, shard_count: u32, replication: u32) -> ClusterMap {
    let nodes: Vec<NodeId> = (1..=node_count).collect();
    let placement = |shard: u32| {
        let count = (replication as usize).clamp(1, nodes.len());
        (0..count)
            .map(|offset| nodes[(shard as usize + offset) % nodes.len()])
            .collect()
    };
    ClusterMap::formation(
        shard_count,
        replication,
        addresses(nodes.clone()),
        placement,
    )
}

/// Runs the controller's loop without failures: plan, begin, settle with the planned voters.
/// Returns the number of steps; panics if a shard ever has fewer voters than it had.
fn converge(map: &mut ClusterMap, step_limit: usize) -> usize {
    for steps in 0..step_limit {
        match next_step(map) {
            None => return steps,
            Some(Step::Retire(node)) => {
                let version = map.version;
                assert_eq!(
                    map.apply(&ClusterChange::Retire { version, node }),
                    Ok(true)
                );
            }
            Some(Step::Move(step)) => {
                let before = map.shards[&step.shard].replicas.clone();
                let version = map.version;
                assert_eq!(
                    map.apply(&ClusterChange::BeginMove { version, step }),
                    Ok(true),
                    "{step:?}"
                );
                let replicas = step.voters_after(&before);
                assert!(
                    replicas.len() >= before.len().min(map.effective_replication()),
                    "{step:?} shrinks {before:?} to {replicas:?}"
                );
                let version = map.version;
                let settle = ClusterChange::SettleMove {
                    version,
                    shard: step.shard,
                    replicas,
                };
                assert_eq!(map.apply(&settle), Ok(true));
            }
        }
    }
    panic!("no convergence in {step_limit} steps: {map:?}");
}

fn assert_balanced(map: &ClusterMap) {
    let wanted = map.effective_replication();
    for (shard, placement) in &map.shards {
        assert_eq!(placement.replicas.len(), wanted, "shard {shard}");
        assert!(placement.moving.is_none());
        assert!(
            placement
                .replicas
                .iter()
                .all(|node| map.desired.contains(node)),
            "shard {shard} on {:?}, desired {:?}",
            placement.replicas,
            map.desired
        );
    }
    let load = map.load();
    let loads: Vec<usize> = map.desired.iter().map(|node| load[node]).collect();
    let (min, max) = (loads.iter().min(), loads.iter().max());
    assert!(max.unwrap_or(&0) - min.unwrap_or(&0) <= 1, "{loads:?}");
    assert_eq!(
        map.nodes.keys().copied().collect::<BTreeSet<_>>(),
        map.desired
    );
}

#[test]
fn a_formed_three_node_cluster_needs_no_step() {
    let map = formed(3, 16, 3);
    assert_eq!(next_step(&map), None);
    assert_balanced(&map);
    assert_eq!(map.shards.len(), 17);
}

#[test]
fn adding_two_nodes_spreads_replicas_then_removing_one_drains_it() {
    let mut map = formed(3, 16, 3);
    assert_eq!(
        map.apply(&ClusterChange::Declare {
            nodes: addresses(1..=5)
        }),
        Ok(true)
    );
    let planned = moves_remaining(&map);
    let steps = converge(&mut map, 200);
    // No retirement in a scale-out: every step is a move, and the report counted them all.
    assert_eq!(planned, steps as u64);
    assert_eq!(moves_remaining(&map), 0);
    assert_balanced(&map);
    // 17 groups × 3 replicas over 5 nodes: 10 or 11 each.
    assert!(map.load().values().all(|load| (10..=11).contains(load)));

    assert_eq!(
        map.apply(&ClusterChange::Declare {
            nodes: addresses(2..=5)
        }),
        Ok(true)
    );
    let planned = moves_remaining(&map);
    assert!(planned > 0);
    // The metadata group leaves the drained node first.
    match next_step(&map) {
        Some(Step::Move(step)) if map.shards[&META_SHARD].replicas.contains(&1) => {
            assert_eq!((step.shard, step.remove), (META_SHARD, Some(1)));
        }
        Some(Step::Move(step)) => assert_eq!(step.remove, Some(1)),
        other => panic!("expected a move off node 1, got {other:?}"),
    }
    // A move under way counts as one still to make.
    if let Some(Step::Move(step)) = next_step(&map) {
        let mut begun = map.clone();
        let version = begun.version;
        begun
            .apply(&ClusterChange::BeginMove { version, step })
            .expect("begin");
        assert_eq!(moves_remaining(&begun), planned);
    }
    let steps = converge(&mut map, 200);
    // The drain's moves, then node 1's retirement.
    assert_eq!(planned + 1, steps as u64);
    assert_balanced(&map);
    assert!(map.removed.contains(&1));
    assert!(!map.nodes.contains_key(&1));
}

#[test]
fn a_single_node_cluster_grows_to_three_replicas() {
    let mut map = formed(1, 4, 3);
    assert_eq!(map.effective_replication(), 1);
    map.apply(&ClusterChange::Declare {
        nodes: addresses(1..=3),
    })
    .expect("declare");
    converge(&mut map, 100);
    assert_balanced(&map);
    assert_eq!(map.shards[&0].replicas, vec![1, 2, 3]);
}

#[test]
fn declare_refuses_what_cannot_be_served() {
    let mut map = formed(3, 4, 3);
    let before = map.clone();
    let refused = [
        (addresses(1..=2), Rejection::InvalidClusterChange),
        (BTreeMap::new(), Rejection::InvalidClusterChange),
        (
            {
                let mut nodes = addresses(1..=4);
                nodes.insert(4, address(1));
                nodes
            },
            Rejection::InvalidClusterChange,
        ),
        (
            {
                let mut nodes = addresses(1..=3);
                nodes.insert(2, address(9));
                nodes
            },
            Rejection::InvalidClusterChange,
        ),
    ];
    for (nodes, rejection) in refused {
        assert_eq!(
            map.apply(&ClusterChange::Declare {
                nodes: nodes.clone()
            }),
            Err(rejection),
            "{nodes:?}"
        );
        assert_eq!(map, before);
    }
    assert_eq!(
        map.apply(&ClusterChange::Declare {
            nodes: addresses(1..=3)
        }),
        Ok(false),
        "the same node set again is a replay"
    );
    assert_eq!(map, before);
}

#[test]
fn a_removed_node_is_refused_for_good() {
    let mut map = formed(3, 4, 3);
    map.apply(&ClusterChange::Declare {
        nodes: addresses(1..=4),
    })
    .expect("declare");
    converge(&mut map, 100);
    map.apply(&ClusterChange::Declare {
        nodes: addresses(2..=4),
    })
    .expect("declare");
    converge(&mut map, 100);
    assert!(map.removed.contains(&1));
    assert_eq!(
        map.apply(&ClusterChange::Declare {
            nodes: addresses(1..=4)
        }),
        Err(Rejection::NodeRemoved)
    );
}

#[test]
fn a_stale_controller_change_is_refused() {
    let mut map = formed(3, 4, 3);
    map.apply(&ClusterChange::Declare {
        nodes: addresses(1..=4),
    })
    .expect("declare");
    let Some(Step::Move(step)) = next_step(&map) else {
        panic!("a move is due");
    };
    let planned_at = map.version;
    map.apply(&ClusterChange::BeginMove {
        version: planned_at,
        step,
    })
    .expect("begin");
    let before = map.clone();
    let late = [
        ClusterChange::BeginMove {
            version: planned_at,
            step,
        },
        ClusterChange::SettleMove {
            version: planned_at,
            shard: step.shard,
            replicas: vec![1],
        },
        ClusterChange::Retire {
            version: planned_at,
            node: 4,
        },
    ];
    for change in late {
        assert_eq!(
            map.apply(&change),
            Err(Rejection::ClusterVersionConflict),
            "{change:?}"
        );
    }
    assert_eq!(map, before);
    // One move at a time: nothing else is planned, and a second begin is refused.
    assert_eq!(next_step(&map), None);
    let version = map.version;
    assert_eq!(
        map.apply(&ClusterChange::BeginMove { version, step }),
        Err(Rejection::InvalidClusterChange)
    );
}

#[test]
fn a_node_with_replicas_is_not_retired_and_create_happens_once() {
    let mut map = formed(3, 4, 3);
    let version = map.version;
    assert_eq!(
        map.apply(&ClusterChange::Retire { version, node: 1 }),
        Err(Rejection::InvalidClusterChange)
    );
    let other = formed(4, 4, 3);
    assert_eq!(map.apply(&ClusterChange::Create(other)), Ok(false));
    assert_eq!(map, formed(3, 4, 3));
    let mut empty = ClusterMap::default();
    assert_eq!(
        empty.apply(&ClusterChange::Declare {
            nodes: addresses(1..=3)
        }),
        Err(Rejection::InvalidClusterChange)
    );
    assert_eq!(
        empty.apply(&ClusterChange::Create(ClusterMap::default())),
        Err(Rejection::InvalidClusterChange)
    );
    assert_eq!(empty.apply(&ClusterChange::Create(map.clone())), Ok(true));
    assert_eq!(empty, map);
}

proptest! {
    /// From any formed cluster, any declared node set (at least the replication, or the
    /// current node count when smaller) is reached by a bounded number of steps, no move ever
    /// shrinks a shard below what it must keep, and the end state is balanced with the
    /// undeclared nodes retired.
    #[test]
    fn every_declared_node_set_is_reached(
        node_count in 1u64..=6,
        shard_count in 1u32..=24,
        replication in 1u32..=5,
        declared in proptest::collection::btree_set(1u64..=9, 1..=8),
        then in proptest::collection::btree_set(1u64..=9, 1..=8),
    ) {
        let mut map = formed(node_count, shard_count, replication);
        for nodes in [declared, then] {
            let nodes: BTreeSet<NodeId> =
                nodes.into_iter().filter(|node| !map.removed.contains(node)).collect();
            let change = ClusterChange::Declare { nodes: addresses(nodes.iter().copied()) };
            let before = map.clone();
            match map.apply(&change) {
                Ok(_) => {
                    converge(&mut map, 2_000);
                    assert_balanced(&map);
                }
                Err(rejection) => {
                    prop_assert_eq!(rejection, Rejection::InvalidClusterChange);
                    prop_assert!(nodes.len() < before.effective_replication() || nodes.is_empty());
                    prop_assert_eq!(&map, &before);
                }
            }
        }
    }
}

/// Hands leadership over as planned until the planner has nothing left; returns the number of
/// hand-overs. Panics if one goes to a node without a replica of the shard.
fn spread_leaders(map: &ClusterMap, leaders: &mut BTreeMap<u32, NodeId>) -> usize {
    for transfers in 0..1_000 {
        let Some(transfer) = next_leader_transfer(map, leaders) else {
            return transfers;
        };
        assert_eq!(leaders.get(&transfer.shard), Some(&transfer.from));
        assert!(
            map.shards[&transfer.shard].replicas.contains(&transfer.to),
            "{transfer:?}"
        );
        leaders.insert(transfer.shard, transfer.to);
    }
    panic!("leaders never settle: {leaders:?}");
}

fn leader_counts(map: &ClusterMap, leaders: &BTreeMap<u32, NodeId>) -> BTreeMap<NodeId, usize> {
    let mut counts: BTreeMap<NodeId, usize> = map.desired.iter().map(|node| (*node, 0)).collect();
    for leader in leaders.values() {
        *counts.entry(*leader).or_default() += 1;
    }
    counts
}

#[test]
fn leaders_piled_on_one_node_are_spread() {
    let map = formed(3, 8, 3);
    let mut leaders: BTreeMap<u32, NodeId> = (0..8).map(|shard| (shard, 1)).collect();
    assert_eq!(
        next_leader_transfer(&map, &leaders),
        Some(LeaderTransfer {
            shard: 0,
            from: 1,
            to: 2
        })
    );
    assert_eq!(spread_leaders(&map, &mut leaders), 5);
    let counts: Vec<usize> = leader_counts(&map, &leaders).into_values().collect();
    assert_eq!(counts, vec![3, 3, 2]);
}

#[test]
fn no_leader_transfer_before_placement_or_without_every_leader() {
    let mut map = formed(3, 4, 3);
    let all_on_one: BTreeMap<u32, NodeId> = (0..4).map(|shard| (shard, 1)).collect();
    assert!(next_leader_transfer(&map, &all_on_one).is_some());

    // A shard whose leader is not known (an election): wait.
    let mut unknown = all_on_one.clone();
    unknown.remove(&2);
    assert_eq!(next_leader_transfer(&map, &unknown), None);

    // A leader the map does not place there (a stale answer): wait.
    let mut stale = all_on_one.clone();
    stale.insert(3, 9);
    assert_eq!(next_leader_transfer(&map, &stale), None);

    // Replicas to move first: nodes 4 and 5 declared, nothing moved yet.
    let declare = ClusterChange::Declare {
        nodes: addresses(1..=5),
    };
    assert_eq!(map.apply(&declare), Ok(true));
    assert_eq!(next_leader_transfer(&map, &all_on_one), None);
    converge(&mut map, 100);
    let leaders: BTreeMap<u32, NodeId> = map
        .shards
        .range(..META_SHARD)
        .map(|(shard, placement)| (*shard, placement.replicas[0]))
        .collect();
    let mut spread = leaders.clone();
    spread_leaders(&map, &mut spread);
    assert_leaders_even(&map, &spread);
}

/// No shard's leader leads two or more shards more than a node holding another of its replicas.
fn assert_leaders_even(map: &ClusterMap, leaders: &BTreeMap<u32, NodeId>) {
    let counts = leader_counts(map, leaders);
    for (shard, leader) in leaders {
        for replica in &map.shards[shard].replicas {
            assert!(
                counts[leader] <= counts[replica] + 1,
                "shard {shard} led by {leader}: {counts:?}"
            );
        }
    }
}

proptest! {
    /// From any settled placement and any choice of leaders, hand-overs end, each goes to a
    /// replica of its shard, and at the end no shard's leader leads two or more shards more than another of
    /// its replicas' nodes.
    #[test]
    fn leaders_settle_evenly(
        node_count in 1u64..=6,
        shard_count in 1u32..=24,
        replication in 1u32..=5,
        picks in proptest::collection::vec(0usize..5, 24),
    ) {
        let mut map = formed(node_count, shard_count, replication);
        converge(&mut map, 2_000);
        let mut leaders: BTreeMap<u32, NodeId> = map
            .shards
            .range(..META_SHARD)
            .map(|(shard, placement)| {
                let pick = picks[*shard as usize] % placement.replicas.len();
                (*shard, placement.replicas[pick])
            })
            .collect();
        spread_leaders(&map, &mut leaders);
        assert_leaders_even(&map, &leaders);
    }
}
