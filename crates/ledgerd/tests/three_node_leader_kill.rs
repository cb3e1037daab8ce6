//! Three real `ledgerd` processes under concurrent debits (`common::load`) while the node that
//! leads the most shards is SIGKILLed and later restarted on its data directory; and a rolling
//! restart (SIGTERM and start again, one node after the other) under the same load, which
//! clients must ride out within their own retries: not one call may come back undecided.
//! Afterwards the load checks exactly-once, conservation, no overspend and the recorded
//! decisions; replicas of every shard at the same applied index have the same digest.

mod common;

use std::sync::atomic::Ordering;

use anyhow::ensure;
use common::load::Load;
use common::{node_leading_most_shards, prevote_rounds, TestCluster};

const SHARDS: u32 = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_node_leader_kill() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start_ready("three_node_leader_kill", 3, SHARDS).await?;
    let client = cluster.client()?;
    let mut load = Load::start(&client, "kill", SHARDS).await?;

    load.phase("load before the kill").await?;
    let leaders = cluster.wait_for_leaders().await?;
    let victim = node_leading_most_shards(&leaders);
    let led = leaders.values().filter(|leader| **leader == victim).count();
    eprintln!("SIGKILL node {victim}, leader of {led} of {SHARDS} shards");
    cluster.kill(victim)?;

    let new_leaders = cluster.wait_for_leaders().await?;
    ensure!(
        new_leaders.values().all(|leader| *leader != victim),
        "a dead node is still reported as leader: {new_leaders:?}"
    );
    // Elections are gated (PreVote): each of the dead node's shards got its new leader through
    // at least one pre-vote round won on a survivor.
    let mut won = 0.0;
    for id in cluster.running_node_ids() {
        won += prevote_rounds(&client, &cluster.node(id).url(), id, "won").await?;
    }
    ensure!(
        won >= led as f64,
        "{won} pre-vote rounds won on the survivors for {led} shards to re-elect"
    );
    load.phase("load while a node is down").await?;

    eprintln!("restarting node {victim}");
    cluster.spawn(victim)?;
    cluster.wait_for_health().await?;
    cluster.wait_for_leaders().await?;
    load.phase("load after the restart").await?;

    load.stop_and_check(&client).await?;
    cluster.wait_for_replicas_in_sync().await?;
    cluster.pass();
    Ok(())
}

/// Every node in turn: SIGTERM (a clean shutdown), start again on its data directory, wait
/// until it serves and every shard has a leader, let load run. The clients (the usual retry
/// policy: same key, backoff, up to 40 attempts) must get a decision for every call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_under_load_leaves_no_call_undecided() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start_ready("rolling_restart", 3, SHARDS).await?;
    let client = cluster.client()?;
    let mut load = Load::start(&client, "rolling", SHARDS).await?;
    load.phase("load before the restarts").await?;
    for id in cluster.node_ids() {
        eprintln!("rolling restart: node {id}");
        let status = cluster.terminate(id).await?;
        ensure!(
            status.success(),
            "node {id} exited with {status} after SIGTERM"
        );
        cluster.spawn(id)?;
        cluster.wait_for_health().await?;
        cluster.wait_for_leaders().await?;
        load.phase(&format!("load after restarting node {id}"))
            .await?;
    }
    let undecided = load.undecided_calls.load(Ordering::Relaxed);
    load.stop_and_check(&client).await?;
    ensure!(
        undecided == 0,
        "{undecided} client calls came back undecided during the rolling restart"
    );
    cluster.wait_for_replicas_in_sync().await?;
    cluster.pass();
    Ok(())
}
