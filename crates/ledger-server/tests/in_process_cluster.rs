//! In-process multi-node tests: three complete nodes (real RocksDB, real Raft over real loopback
//! sockets, real HTTP) in one test process, driven through the Rust client. Network partitions
//! are injected with the transport's `LinkFaults` (no root needed).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use ledger_api::CreateGrantRequest;
use ledger_client::LedgerClient;
use ledger_core::shard_for_account;
use ledger_raft::config::SnapshotSettings;
use ledger_server::cluster::{retire_if_uncounted, MembershipRequest};
use ledger_server::http::shard_membership_step;
use ledger_server::node::Retirement;
use ledger_server::NodeTuning;

mod support;

use support::*;

fn grant(grant_id: &str, amount: u64) -> CreateGrantRequest {
    CreateGrantRequest::new(grant_id, amount, "purchase")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn debits_through_any_node_are_decided_once_and_replicas_agree() -> Result<()> {
    let cluster = TestCluster::start(3).await?;
    let urls = cluster.urls();
    let clients: Vec<LedgerClient> = urls
        .iter()
        .map(|url| LedgerClient::new(vec![url.clone()]))
        .collect::<Result<_, _>>()?;

    // Accounts on every shard, created through node 1, granted through node 2.
    let accounts: Vec<String> = (0..12).map(|index| format!("customer-{index}")).collect();
    let shards: std::collections::BTreeSet<u32> = accounts
        .iter()
        .map(|account| shard_for_account(account, SHARDS))
        .collect();
    assert!(shards.len() > 1, "the accounts should span several shards");
    for account in &accounts {
        clients[0].create_account(account, None).await?;
        clients[1].grant(account, &grant("initial", 1_000)).await?;
    }

    // Debits through node 3; every key is sent twice (the retry must be a replay).
    let mut accepted_by_account: BTreeMap<String, u64> = BTreeMap::new();
    for (index, account) in accounts.iter().enumerate() {
        for debit in 0..5u64 {
            let key = format!("debit-{index}-{debit}");
            let amount = 10 + debit;
            let first = clients[2].debit(account, &key, amount).await?;
            assert_eq!(first.status, "accepted", "{first:?}");
            assert!(!first.replayed);
            let retry = clients[(debit % 3) as usize]
                .debit(account, &key, amount)
                .await?;
            assert_eq!(retry.status, "accepted");
            assert!(retry.replayed, "a retry of {key} must be a replay");
            assert_eq!(retry.amount, first.amount);
            *accepted_by_account.entry(account.clone()).or_default() += amount;
        }
    }
    // Batches through every node: items of every shard (those another node leads are forwarded
    // to it as one sub-batch), answered in request order; a bad item gets its own 400 and
    // decides nothing; the same batch again, through another node, is all replays.
    for (node, url) in urls.iter().enumerate() {
        let mut debits: Vec<serde_json::Value> = accounts
            .iter()
            .map(|account| {
                serde_json::json!({
                    "account_id": account,
                    "idempotency_key": format!("batch-{node}-{account}"),
                    "amount": 3,
                })
            })
            .collect();
        debits.insert(
            2,
            serde_json::json!({"account_id": "bad id!", "idempotency_key": "k", "amount": 1}),
        );
        debits.insert(5, serde_json::json!("not an object"));
        debits.push(serde_json::json!({"account_id": accounts[0], "amount": 1}));
        let body = serde_json::json!({ "debits": debits }).to_string();
        let bad_items = [
            (2, "invalid_identifier"),
            (5, "invalid_field"),
            (debits.len() - 1, "missing_field"),
        ];
        for (attempt, through) in [(0, url), (1, &urls[(node + 1) % urls.len()])] {
            let answer = clients[0]
                .post_raw(through, "/v1/debits/batch", &body)
                .await?;
            assert_eq!(answer.status, 200, "{}", answer.body);
            let results =
                serde_json::from_str::<ledger_api::BatchDebitResponse>(&answer.body)?.results;
            assert_eq!(results.len(), debits.len());
            for (index, result) in results.iter().enumerate() {
                if let Some((_, code)) = bad_items.iter().find(|(bad, _)| *bad == index) {
                    assert_eq!(result.http_status, 400, "item {index}: {result:?}");
                    assert_eq!(
                        result.error.as_ref().map(|error| error.code.as_str()),
                        Some(*code),
                        "item {index}"
                    );
                    assert!(result.outcome.is_none());
                    continue;
                }
                let outcome = result.outcome.as_ref().context("a decided item")?;
                assert_eq!(outcome.account_id, debits[index]["account_id"]);
                assert_eq!(outcome.idempotency_key, debits[index]["idempotency_key"]);
                assert_eq!(
                    (outcome.status.as_str(), outcome.amount, outcome.replayed),
                    ("accepted", Some(3), attempt == 1),
                    "item {index}: {result:?}"
                );
                if attempt == 0 {
                    *accepted_by_account
                        .entry(outcome.account_id.clone())
                        .or_default() += 3;
                }
            }
        }
    }

    // A grant to a missing account is rejected, and stays rejected (as a replay) for its grant id
    // even after the account is created: a request never applies after it was told "rejected".
    let early = clients[0].grant("late-account", &grant("early", 10)).await;
    assert!(
        matches!(&early, Err(error) if error.code() == Some("account_not_found")),
        "{early:?}"
    );
    clients[1].create_account("late-account", None).await?;
    let retried = clients[2].grant("late-account", &grant("early", 10)).await;
    assert!(
        matches!(&retried, Err(error) if error.code() == Some("account_not_found")),
        "{retried:?}"
    );
    assert_eq!(clients[0].get_account("late-account").await?.available, 0);

    // A debit beyond the balance is rejected, and its replay is the same rejection.
    let rejected = clients[0].debit(&accounts[0], "too-much", 5_000).await?;
    assert_eq!(rejected.code.as_deref(), Some("insufficient_credits"));
    let rejected_again = clients[1].debit(&accounts[0], "too-much", 5_000).await?;
    assert_eq!(rejected_again.code.as_deref(), Some("insufficient_credits"));
    assert!(rejected_again.replayed);

    for (account, consumed) in &accepted_by_account {
        for client in &clients {
            let view = client.get_account(account).await?;
            assert_eq!(view.consumed, *consumed, "{account}");
            assert_eq!(view.available, 1_000 - *consumed as i64, "{account}");
        }
    }
    // Many concurrent reads (they share leadership confirmations): each one still sees every
    // write acknowledged before it began.
    let reads = (0..60).map(|index| {
        let client = clients[index % 3].clone();
        let account = accounts[index % accounts.len()].clone();
        async move {
            client
                .get_account(&account)
                .await
                .map(|view| (account, view))
        }
    });
    for result in futures::future::join_all(reads).await {
        let (account, view) = result?;
        assert_eq!(view.consumed, accepted_by_account[&account], "{account}");
    }
    let digests = cluster.converged_digests().await?;
    assert_eq!(digests.len(), SHARDS as usize);

    // The view without digests (for polling) names the same leaders, members and indexes.
    let full = clients[0].cluster(&urls[0]).await?;
    let light = clients[0].cluster_without_digests(&urls[0]).await?;
    assert_eq!(full.shards.len(), light.shards.len());
    for (with, without) in full.shards.iter().zip(&light.shards) {
        assert_eq!(
            (with.shard_id, with.leader, &with.members, with.last_applied),
            (
                without.shard_id,
                without.leader,
                &without.members,
                without.last_applied
            )
        );
        assert_eq!(with.digest, format!("{:032x}", digests[&with.shard_id]));
        assert_eq!(without.digest, "");
    }
    let bad = clients[0]
        .get_raw(&urls[0], "/admin/cluster?digest=maybe")
        .await?;
    assert_eq!(bad.status, 400);
    assert_eq!(
        bad.error_code().as_deref(),
        Some("invalid_query"),
        "{}",
        bad.body
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_isolated_leader_is_replaced_and_nothing_acknowledged_is_lost() -> Result<()> {
    let cluster = TestCluster::start(3).await?;
    let client = LedgerClient::new(cluster.urls())?;
    let account = "isolated-leader-account";
    let shard = shard_for_account(account, SHARDS);
    client.create_account(account, None).await?;
    client.grant(account, &grant("g", 10_000)).await?;
    for key in 0..10 {
        client.debit(account, &format!("before-{key}"), 7).await?;
    }

    let leaders = cluster.wait_for_leaders().await?;
    let old_leader = leaders[&shard];
    // Cut the old leader off from both peers, in both directions.
    isolate(&cluster, old_leader);
    // The majority elects a new leader for the shard.
    let deadline = Instant::now() + DEADLINE;
    let new_leader = loop {
        let views: Vec<Option<u64>> = cluster
            .nodes
            .iter()
            .flatten()
            .filter(|node| node.context.node_id() != old_leader)
            .map(|node| {
                node.context
                    .replicas
                    .get(&shard)
                    .expect("the node hosts the shard")
                    .current_leader()
            })
            .collect();
        if let Some(Some(leader)) = views.first() {
            if *leader != old_leader && views.iter().all(|view| *view == Some(*leader)) {
                break *leader;
            }
        }
        if Instant::now() > deadline {
            bail!("no new leader for shard {shard} after isolating node {old_leader}: {views:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let majority_url = format!("http://{}", cluster.node(new_leader).http_addr);
    let majority = LedgerClient::new(vec![majority_url])?;
    for key in 0..10 {
        let outcome = majority
            .debit(account, &format!("during-{key}"), 11)
            .await?;
        assert_eq!(outcome.status, "accepted");
    }

    // Heal; the old leader catches up and everything is there exactly once.
    heal(&cluster);
    let view = client
        .get_account(account)
        .await
        .context("read after heal")?;
    assert_eq!(view.consumed, 10 * 7 + 10 * 11);
    for key in 0..10 {
        let decided = client
            .get_debit(account, &format!("before-{key}"))
            .await?
            .context("an acknowledged debit must be found")?;
        assert_eq!(decided.amount, Some(7));
    }
    cluster.converged_digests().await?;
    cluster.shutdown().await;
    Ok(())
}

/// Cuts `isolated` off from every peer, in both directions (the transport's no-root partition).
fn isolate(cluster: &TestCluster, isolated: u64) {
    for node in cluster.nodes.iter().flatten() {
        let me = node.context.node_id();
        for peer in 1..=cluster.configs.len() as u64 {
            if peer != me && (me == isolated || peer == isolated) {
                node.context.transport.faults().block_peer(peer);
            }
        }
    }
}

fn heal(cluster: &TestCluster) {
    for node in cluster.nodes.iter().flatten() {
        node.context.transport.faults().unblock_all();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_behind_a_compacted_log_catches_up_by_snapshot() -> Result<()> {
    // Snapshot every 10 entries and keep no log behind it, so that a follower that misses a few
    // dozen entries can only catch up through a snapshot transfer.
    let cluster = TestCluster::start_with(3, compacting()).await?;
    let account = "snapshot-account";
    let shard = shard_for_account(account, SHARDS);
    let client = LedgerClient::new(cluster.urls())?;
    client.create_account(account, Some(100)).await?;
    client.grant(account, &grant("g", 1_000)).await?;

    let leader = cluster.wait_for_leaders().await?[&shard];
    let lagging = (1..=3u64)
        .find(|node| *node != leader)
        .context("three nodes")?;
    isolate(&cluster, lagging);
    let leader_client =
        LedgerClient::new(vec![format!("http://{}", cluster.node(leader).http_addr)])?;
    // Sequential debits: one entry each. The last ones overdraw into the overdraft.
    for key in 0..60u64 {
        let outcome = leader_client.debit(account, &format!("k{key}"), 18).await?;
        assert_eq!(outcome.status, "accepted", "{outcome:?}");
    }
    let lagging_applied = cluster
        .node(lagging)
        .context
        .replicas
        .get(&shard)
        .expect("the node hosts the shard")
        .state
        .read()
        .last_applied
        .map(|log_id| log_id.index);
    // The leader compacts its log past everything the lagging follower has.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let purged = cluster
            .node(leader)
            .context
            .replicas
            .get(&shard)
            .expect("the node hosts the shard")
            .raft
            .metrics()
            .borrow()
            .purged
            .map(|log_id| log_id.index);
        if purged > lagging_applied {
            break;
        }
        if Instant::now() > deadline {
            bail!("leader never purged past {lagging_applied:?} (purged {purged:?})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    heal(&cluster);
    cluster.converged_digests().await?;
    let lagging_replica = cluster
        .node(lagging)
        .context
        .replicas
        .get(&shard)
        .expect("the node hosts the shard");
    let snapshot = lagging_replica.raft.metrics().borrow().snapshot;
    assert!(
        snapshot.map(|log_id| log_id.index) > lagging_applied,
        "the lagging follower should hold a snapshot past {lagging_applied:?}, has {snapshot:?}"
    );
    let view = lagging_replica
        .state
        .read()
        .ledger
        .view(account, 0)
        .context("the account reached the follower")?;
    assert_eq!(view.consumed, 60 * 18);
    assert_eq!(view.available, 1_000 - 60 * 18);
    cluster.shutdown().await;
    Ok(())
}

/// Seed 612 of the chaos harness: a node's replica was moved out of its group and, before the
/// node deleted it, a newer move added the node back as a learner. The leader counted what the
/// old replica's log held; the node then deleted it and opened an empty one, and the group
/// waited forever for entries it believed were there. A node must not delete a replica while
/// its group counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_its_group_counts_again_is_kept_and_catches_up() -> Result<()> {
    // A compacted log, as in the run: an empty replica can only catch up by a snapshot, which a
    // leader that believes the replica holds its log never sends.
    let cluster = TestCluster::start_with(3, compacting()).await?;
    let account = "returning-replica";
    let shard = shard_for_account(account, SHARDS);
    let client = LedgerClient::new(cluster.urls())?;
    client.create_account(account, Some(0)).await?;
    client.grant(account, &grant("g", 1_000)).await?;
    for key in 0..30u64 {
        client.debit(account, &format!("before-{key}"), 1).await?;
    }
    let leader = cluster.wait_for_leaders().await?[&shard];
    let returning = (1..=3u64)
        .find(|node| *node != leader)
        .context("three nodes")?;
    let leader_context = &cluster.node(leader).context;
    let returning_context = &cluster.node(returning).context;

    // Out of the group, then back in as a learner, as two moves of the controller would take
    // it; the old replica is still there and takes the learner's log.
    let remove = MembershipRequest {
        add: None,
        add_address: None,
        remove: Some(returning),
    };
    let answer = shard_membership_step(leader_context, shard, &remove)
        .await
        .map_err(anyhow::Error::msg)?;
    assert!(
        answer.done && !answer.voters.contains(&returning),
        "{answer:?}"
    );
    let add = MembershipRequest {
        add: Some(returning),
        add_address: leader_context.cluster.address_of(returning),
        remove: None,
    };
    let answer = shard_membership_step(leader_context, shard, &add)
        .await
        .map_err(anyhow::Error::msg)?;
    assert!(!answer.done, "a learner is added first: {answer:?}");
    let returning_replica = returning_context
        .replicas
        .get(&shard)
        .context("the old replica is still open")?;
    wait_until("the old replica holds the learner entry", || {
        returning_replica
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .learner_ids()
            .any(|learner| learner == returning)
    })
    .await?;

    // The map moved the replica away (as far as this node knows): the group counts it, so it
    // stays, and it goes on taking the leader's entries.
    assert_eq!(
        retire_if_uncounted(returning_context, shard).await,
        Retirement::Kept
    );
    let outcome = client.debit(account, "after-the-return", 100).await?;
    assert_eq!(outcome.status, "accepted", "{outcome:?}");
    wait_until("the kept replica applies the new debit", || {
        returning_context
            .replicas
            .get(&shard)
            .is_some_and(|replica| {
                replica
                    .state
                    .read()
                    .ledger
                    .view(account, 0)
                    .is_some_and(|view| view.consumed == 130)
            })
    })
    .await?;

    // Once the group no longer counts the node, the replica goes.
    let answer = shard_membership_step(leader_context, shard, &remove)
        .await
        .map_err(anyhow::Error::msg)?;
    assert!(
        answer.done && !answer.voters.contains(&returning),
        "{answer:?}"
    );
    assert_eq!(
        retire_if_uncounted(returning_context, shard).await,
        Retirement::Dropped
    );
    cluster.shutdown().await;
    Ok(())
}

/// A snapshot every 10 entries and no log kept behind it.
fn compacting() -> NodeTuning {
    NodeTuning {
        snapshots: SnapshotSettings {
            entries_since_last: 10,
            entries_to_keep: 0,
        },
        ..NodeTuning::default()
    }
}

/// Polls `condition` until it holds, or fails after `DEADLINE`.
async fn wait_until(what: &str, condition: impl Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        if Instant::now() > deadline {
            bail!("timed out waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
