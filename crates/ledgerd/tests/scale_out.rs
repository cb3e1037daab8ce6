//! Scale-out by cluster config, with real `ledgerd` processes under continuous debits
//! (`common::load`): nodes 1-3 form the cluster; nodes 4 and 5 start with a config listing all
//! five and join it; `cluster apply` of nodes 1-5 moves replicas onto them; `cluster apply` of
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

/// Waits until the cluster map (as `observer` knows it) declares exactly `nodes` and no move is
/// left, and every shard's group (as its replicas report it) has its voters on `nodes` only.
async fn wait_until_settled(
    cluster: &mut TestCluster,
    observer: NodeId,
    nodes: &[NodeId],
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
            map.desired == wanted && map.moving.is_none() && map.moves_remaining == 0
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
    cluster.apply(&[1, 2, 3, 4, 5]).await?;
    let view = wait_until_settled(&mut cluster, 2, &[1, 2, 3, 4, 5]).await?;
    let spread = replicas_per_node(&view);
    eprintln!("replicas per node after adding 4 and 5: {spread:?}");
    // 9 groups × 3 replicas over 5 nodes: 5 or 6 each.
    ensure!(
        spread.len() == 5 && spread.values().all(|count| (5..=6).contains(count)),
        "replicas not spread over the five nodes: {spread:?}"
    );
    cluster.wait_for_leaders().await?;
    load.phase("load after scaling out").await?;

    eprintln!("declaring nodes 2-5: node 1 is drained, then removed");
    cluster.apply(&[2, 3, 4, 5]).await?;
    let status = cluster
        .wait_for_own_exit(1, RECONFIGURATION_TIMEOUT)
        .await?;
    ensure!(
        !status.success(),
        "a removed node exits with an error status, got {status}"
    );
    let view = wait_until_settled(&mut cluster, 2, &[2, 3, 4, 5]).await?;
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
