//! Scale-out by cluster config, with real `ledgerd` processes under continuous debits
//! (`common::load`): nodes 1-3 form the cluster; nodes 4 and 5 start with a config listing all
//! five and join it; `cluster apply` of nodes 1-5 moves replicas onto them and the balancer
//! spreads the leaders; an operator hands one shard's leadership over and moves one replica;
//! `cluster apply` of
//! nodes 2-5 drains node 1, which the cluster then removes (it exits by itself, and is refused
//! when started again). Throughout, every client call is decided within the client's own
//! retries, and afterwards the load's checks (exactly once, conservation, no overspend,
//! recorded decisions) and the replicas' digests hold.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use common::load::Load;
use common::{log_tail, patient_client_options, NodeId, TestCluster, POLL_INTERVAL};
use ledger_api::ClusterResponse;
use ledger_client::LedgerClient;

const SHARDS: u32 = 8;
/// Bound of one reconfiguration (every replica move it needs) on a loaded 2-core machine.
const RECONFIGURATION_TIMEOUT: Duration = Duration::from_secs(240);

/// Waits until the cluster map (as `observer` knows it) is at `min_version` or later, declares
/// exactly `nodes` and no move is left, and every shard's group (as its replicas report it) has
/// its voters on `nodes` only.
async fn wait_until_settled(
    cluster: &mut TestCluster,
    observer: NodeId,
    nodes: &[NodeId],
    min_version: u64,
) -> anyhow::Result<ClusterResponse> {
    let wanted: Vec<NodeId> = nodes.to_vec();
    let deadline = Instant::now() + RECONFIGURATION_TIMEOUT;
    let mut last_report = String::new();
    loop {
        cluster.check_alive()?;
        let views = cluster.views().await?;
        let Some(view) = views.get(&observer) else {
            bail!("node {observer} does not answer");
        };
        let report = match &view.map {
            None => "the map is not known yet".to_owned(),
            Some(map) => format!(
                "map v{} desired {:?} moving {:?} remaining {}",
                map.version, map.desired, map.moving, map.moves_remaining
            ),
        };
        if report != last_report {
            eprintln!("{report}");
            last_report = report;
        }
        let map_settled = view.map.as_ref().is_some_and(|map| {
            map.version >= min_version
                && map.desired == wanted
                && map.moving.is_none()
                && map.moves_remaining == 0
        });
        let groups_settled = (0..SHARDS).all(|shard| {
            views.values().all(|view| {
                view.shards
                    .iter()
                    .find(|info| info.shard_id == shard)
                    .is_some_and(|info| {
                        info.digest.is_empty()
                            || info.members.iter().all(|member| wanted.contains(member))
                    })
            })
        });
        if map_settled && groups_settled {
            return Ok(view.clone());
        }
        if Instant::now() >= deadline {
            bail!("not settled on {nodes:?} within {RECONFIGURATION_TIMEOUT:?}: {last_report}");
        }
        tokio::time::sleep(POLL_INTERVAL * 4).await;
    }
}

/// Waits until the balancer has spread the shards' leaders over `nodes`: each leads one or two
/// of the 8 shards (with every node holding 5 or 6 replicas, the balancer's end state allows
/// nothing else). Returns the leaders per node.
async fn wait_for_spread_leaders(
    cluster: &mut TestCluster,
    nodes: &[NodeId],
) -> anyhow::Result<BTreeMap<NodeId, usize>> {
    let deadline = Instant::now() + RECONFIGURATION_TIMEOUT;
    loop {
        let leaders = cluster.wait_for_leaders().await?;
        let mut led: BTreeMap<NodeId, usize> = nodes.iter().map(|node| (*node, 0)).collect();
        for leader in leaders.values() {
            *led.entry(*leader).or_default() += 1;
        }
        if led.values().all(|count| (1..=2).contains(count)) {
            return Ok(led);
        }
        if Instant::now() >= deadline {
            bail!("leaders not spread within {RECONFIGURATION_TIMEOUT:?}: {led:?}");
        }
        tokio::time::sleep(POLL_INTERVAL * 4).await;
    }
}

/// Replicas held per node, over the shards and the metadata group, per `view`.
fn replicas_per_node(view: &ClusterResponse) -> BTreeMap<NodeId, usize> {
    let mut count = BTreeMap::new();
    let metadata = view.map.as_ref().map(|map| &map.metadata_group);
    for info in view.shards.iter().chain(metadata) {
        for member in &info.members {
            *count.entry(*member).or_default() += 1;
        }
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_two_nodes_then_removing_one_moves_replicas_online() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start_formation("scale_out", 5, 3, SHARDS)?;
    cluster.wait_for_health().await?;
    cluster.wait_for_leaders().await?;
    // Nodes 2 and 3 stay through every change; they forward what they do not lead.
    let client = LedgerClient::with_options(
        vec![cluster.node(2).url(), cluster.node(3).url()],
        patient_client_options(),
    )?;
    let mut load = Load::start(&client, "scale", SHARDS).await?;
    load.phase("load before scaling out").await?;

    eprintln!("starting nodes 4 and 5 and declaring nodes 1-5");
    cluster.spawn(4)?;
    cluster.spawn(5)?;
    cluster.wait_for_health().await?;
    let version = cluster.apply(&[1, 2, 3, 4, 5]).await?;
    let view = wait_until_settled(&mut cluster, 2, &[1, 2, 3, 4, 5], version).await?;
    let spread = replicas_per_node(&view);
    eprintln!("replicas per node after adding 4 and 5: {spread:?}");
    // 9 groups × 3 replicas over 5 nodes: 5 or 6 each.
    ensure!(
        spread.len() == 5 && spread.values().all(|count| (5..=6).contains(count)),
        "replicas not spread over the five nodes: {spread:?}"
    );
    let led = wait_for_spread_leaders(&mut cluster, &[1, 2, 3, 4, 5]).await?;
    eprintln!("shards led per node after adding 4 and 5: {led:?}");
    load.phase("load after scaling out").await?;

    // The operator's tools: hand a shard's leadership to another replica, move a replica.
    let leaders = cluster.wait_for_leaders().await?;
    let Some(view) = cluster.views().await?.remove(&2) else {
        bail!("node 2 does not answer");
    };
    let Some(shard_zero) = view.shards.iter().find(|info| info.shard_id == 0).cloned() else {
        bail!("node 2 does not report shard 0");
    };
    let Some(&successor) = shard_zero
        .members
        .iter()
        .find(|member| Some(*member) != leaders.get(&0))
    else {
        bail!("shard 0 has no member besides its leader: {shard_zero:?}");
    };
    let admin = LedgerClient::new(vec![cluster.node(3).url()])?;
    let answer = admin
        .transfer_leader(&cluster.node(3).url(), 0, successor)
        .await?;
    ensure!(
        answer.leader == successor,
        "transfer-leader answered {answer:?}, wanted node {successor}"
    );
    // The new leader's replica moves away: it hands its leadership over first.
    let from = successor;
    let Some(to) = (1..=5).find(|node| !shard_zero.members.contains(node)) else {
        bail!("shard 0 is on every node: {shard_zero:?}");
    };
    eprintln!("moving shard 0's replica from node {from} to node {to}");
    let moved = admin
        .move_shard(&cluster.node(3).url(), 0, from, to)
        .await?;
    let view = wait_until_settled(&mut cluster, 2, &[1, 2, 3, 4, 5], moved.version).await?;
    let members = view
        .shards
        .iter()
        .find(|info| info.shard_id == 0)
        .map(|info| info.members.clone())
        .unwrap_or_default();
    ensure!(
        members.contains(&to) && !members.contains(&from),
        "shard 0 did not move from node {from} to node {to}: members {members:?}"
    );
    load.phase("load after the operator's transfer and move")
        .await?;

    eprintln!("declaring nodes 2-5: node 1 is drained, then removed");
    let version = cluster.apply(&[2, 3, 4, 5]).await?;
    let status = cluster
        .wait_for_own_exit(1, RECONFIGURATION_TIMEOUT)
        .await?;
    ensure!(
        !status.success(),
        "a removed node exits with an error status, got {status}"
    );
    let view = wait_until_settled(&mut cluster, 2, &[2, 3, 4, 5], version).await?;
    let removed: BTreeSet<NodeId> = view
        .map
        .as_ref()
        .map(|map| map.removed.iter().copied().collect())
        .unwrap_or_default();
    ensure!(
        removed == BTreeSet::from([1]),
        "node 1 is not recorded as removed: {removed:?}"
    );
    ensure!(
        view.nodes.iter().all(|node| node.id != 1),
        "node 1 is still listed: {:?}",
        view.nodes
    );
    let spread = replicas_per_node(&view);
    eprintln!("replicas per node after removing 1: {spread:?}");
    ensure!(
        spread.len() == 4 && spread.values().all(|count| (6..=7).contains(count)),
        "replicas not spread over the four nodes: {spread:?}"
    );
    cluster.wait_for_leaders().await?;
    load.phase("load after removing node 1").await?;

    let undecided = load.undecided_calls.load(Ordering::Relaxed);
    load.stop_and_check(&client).await?;
    ensure!(
        undecided == 0,
        "{undecided} client calls came back undecided while replicas moved"
    );
    cluster.wait_for_replicas_in_sync().await?;

    // A removed node that comes back on its data directory is refused: it learns from its
    // peers that it was removed and exits.
    cluster.spawn(1)?;
    let status = cluster
        .wait_for_own_exit(1, RECONFIGURATION_TIMEOUT)
        .await?;
    let log = std::fs::read_to_string(&cluster.node(1).log_path)?;
    let second_start = log.rsplit("harness: start #2").next().unwrap_or_default();
    ensure!(
        !status.success() && second_start.contains("was removed from the cluster"),
        "node 1 started again after its removal: {status}\n{}",
        log_tail(&cluster.node(1).log_path, 40)
    );
    cluster.pass();
    Ok(())
}
