//! Three real `ledgerd` processes: load, SIGTERM all of them, start all again on their data
//! directories. Every account reads back exactly as before, every decided key replays its
//! decision, new debits are decided as a reference model says, and replicas agree.
//!
//! The expected outcomes come from a plain model of the ledger (available credits plus the
//! overdraft allowance must cover a debit), not from the server's answers: each account's
//! debits are sent one after the other, so their order, and so their outcomes, are known.

mod common;

use std::collections::BTreeMap;

use anyhow::{ensure, Context as _};
use common::{accounts_covering_shards, NodeId, ShardId, TestCluster};
use ledger_api::{
    codes, AccountResponse, CreateGrantRequest, DebitResponse, STATUS_ACCEPTED, STATUS_REJECTED,
};
use ledger_client::LedgerClient;
use tokio::task::JoinSet;

const SHARDS: u32 = 8;
const ACCOUNTS_PER_SHARD: usize = 2;
/// Two grants per account: (id suffix, amount, priority).
const GRANTS: [(&str, u64, u8); 2] = [("plan", 100, 50), ("promo", 40, 10)];
/// The debits of every account before the restart, in order; with 140 credits some of them
/// are rejected, more so without an overdraft allowance.
const DEBITS_BEFORE: [u64; 6] = [30, 45, 50, 20, 10, 5];
const DEBIT_AFTER: u64 = 5;
/// Every third account may go this far below zero.
const OVERDRAFT_LIMIT: u64 = 25;

fn overdraft_limit_of(account_index: usize) -> u64 {
    match account_index % 3 {
        0 => OVERDRAFT_LIMIT,
        _ => 0,
    }
}

/// The reference model of one account: what is available and what may be overdrawn.
#[derive(Clone, Debug)]
struct ModelAccount {
    available: i64,
    overdraft_limit: u64,
}

impl ModelAccount {
    /// Accepted (with the available balance after it) or rejected.
    fn debit(&mut self, amount: u64) -> Option<i64> {
        let amount = i64::try_from(amount).expect("test amounts are small");
        let floor = -i64::try_from(self.overdraft_limit).expect("test limits are small");
        if self.available - amount >= floor {
            self.available -= amount;
            Some(self.available)
        } else {
            None
        }
    }
}

fn check_against_model(
    key: &str,
    outcome: &DebitResponse,
    expected_available: Option<i64>,
    amount: u64,
) -> anyhow::Result<()> {
    match expected_available {
        Some(available) => ensure!(
            outcome.status == STATUS_ACCEPTED
                && outcome.amount == Some(amount)
                && outcome.available == Some(available),
            "{key}: expected accepted {amount} leaving {available}, got {outcome:?}"
        ),
        None => ensure!(
            outcome.status == STATUS_REJECTED
                && outcome.code.as_deref() == Some(codes::INSUFFICIENT_CREDITS),
            "{key}: expected insufficient_credits, got {outcome:?}"
        ),
    }
    Ok(())
}

/// Creates the account, grants, and debits it in order; returns each key with its outcome.
async fn load_account(
    client: LedgerClient,
    account_id: String,
    mut model: ModelAccount,
) -> anyhow::Result<(String, ModelAccount, Vec<(String, u64, DebitResponse)>)> {
    client
        .create_account(&account_id, Some(model.overdraft_limit))
        .await?;
    for (suffix, amount, priority) in GRANTS {
        let grant = CreateGrantRequest {
            grant_id: format!("{account_id}-{suffix}"),
            amount,
            source: Some(if suffix == "plan" { "plan" } else { "promo" }.to_owned()),
            priority: Some(priority),
            effective_at: None,
            expires_at: None,
        };
        client.grant(&account_id, &grant).await?;
    }
    let mut decided = Vec::new();
    for (sequence, amount) in DEBITS_BEFORE.into_iter().enumerate() {
        let key = format!("{account_id}-before-{sequence}");
        let outcome = client.debit(&account_id, &key, amount).await?;
        check_against_model(&key, &outcome, model.debit(amount), amount)?;
        decided.push((key, amount, outcome));
    }
    Ok((account_id, model, decided))
}

/// (node, shard) → (last_applied, digest) of every replica of every running node.
async fn replica_states(
    cluster: &mut TestCluster,
) -> anyhow::Result<BTreeMap<(NodeId, ShardId), (u64, String)>> {
    let mut states = BTreeMap::new();
    for (node_id, view) in cluster.views().await? {
        for shard in view.shards {
            if let Some(index) = shard.last_applied {
                states.insert((node_id, shard.shard_id), (index, shard.digest));
            }
        }
    }
    Ok(states)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_node_full_restart() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start_ready("three_node_full_restart", 3, SHARDS).await?;
    let client = cluster.client()?;
    let granted: u64 = GRANTS.iter().map(|(_, amount, _)| amount).sum();

    // Load: the accounts in parallel, each account's commands in order.
    let accounts = accounts_covering_shards("restart", SHARDS, ACCOUNTS_PER_SHARD);
    let mut loads = JoinSet::new();
    for (index, account_id) in accounts.iter().enumerate() {
        let model = ModelAccount {
            available: i64::try_from(granted)?,
            overdraft_limit: overdraft_limit_of(index),
        };
        loads.spawn(load_account(client.clone(), account_id.clone(), model));
    }
    let mut models: BTreeMap<String, ModelAccount> = BTreeMap::new();
    let mut decided: Vec<(String, String, u64, DebitResponse)> = Vec::new();
    while let Some(joined) = loads.join_next().await {
        let (account_id, model, keys) = joined.context("a load task panicked")??;
        for (key, amount, outcome) in keys {
            decided.push((account_id.clone(), key, amount, outcome));
        }
        models.insert(account_id, model);
    }
    let rejected = decided
        .iter()
        .filter(|(_, _, _, outcome)| outcome.status == STATUS_REJECTED)
        .count();
    ensure!(rejected > 0, "the load should include rejections");

    let mut before: BTreeMap<String, AccountResponse> = BTreeMap::new();
    for account_id in &accounts {
        let account = client.get_account(account_id).await?;
        ensure!(
            account.available == models[account_id].available,
            "{account_id}: available {} but the model says {}",
            account.available,
            models[account_id].available
        );
        before.insert(account_id.clone(), account);
    }
    cluster.wait_for_replicas_in_sync().await?;
    let replicas_before = replica_states(&mut cluster).await?;

    // Stop everything cleanly, start everything again on the same data directories.
    cluster.terminate_all().await?;
    for id in cluster.node_ids() {
        cluster.spawn(id)?;
    }
    cluster.wait_for_health().await?;
    cluster.wait_for_leaders().await?;

    // A replica restored from disk at the index it had reached is the state it had: same
    // digest. (Where a new leader appended an entry since, the index moved and there is
    // nothing to compare.)
    let replicas_after = replica_states(&mut cluster).await?;
    let mut compared = 0;
    for (replica, (index, digest)) in &replicas_before {
        if let Some((index_after, digest_after)) = replicas_after.get(replica) {
            if index_after == index {
                compared += 1;
                ensure!(
                    digest_after == digest,
                    "node {} shard {} at applied index {index}: digest {digest} before the \
                     restart, {digest_after} restored from disk",
                    replica.0,
                    replica.1
                );
            }
        }
    }
    eprintln!(
        "{compared} of {} replicas restored at an unchanged index, all with unchanged digests",
        replicas_before.len()
    );

    for account_id in &accounts {
        let after = client.get_account(account_id).await?;
        ensure!(
            after == before[account_id],
            "{account_id} changed across the restart:\nbefore {:?}\nafter  {after:?}",
            before[account_id]
        );
    }
    for (account_id, key, amount, outcome) in &decided {
        let replay = client.debit(account_id, key, *amount).await?;
        ensure!(
            replay.replayed
                && replay.status == outcome.status
                && replay.amount == outcome.amount
                && replay.available == outcome.available
                && replay.code == outcome.code,
            "{key}: decided {outcome:?} before the restart, replayed as {replay:?}"
        );
        let recorded = client
            .get_debit(account_id, key)
            .await?
            .with_context(|| format!("{key} lost across the restart"))?;
        ensure!(
            recorded.status == outcome.status && recorded.amount == outcome.amount,
            "{key}: decided {outcome:?}, recorded {recorded:?}"
        );
    }

    // New work is decided as the model says.
    for account_id in &accounts {
        let key = format!("{account_id}-after");
        let outcome = client.debit(account_id, &key, DEBIT_AFTER).await?;
        let model = models
            .get_mut(account_id)
            .context("every account has a model")?;
        check_against_model(&key, &outcome, model.debit(DEBIT_AFTER), DEBIT_AFTER)?;
        let account = client.get_account(account_id).await?;
        ensure!(
            account.available == model.available,
            "{account_id}: available {} but the model says {}",
            account.available,
            model.available
        );
    }

    cluster.wait_for_replicas_in_sync().await?;
    cluster.pass();
    Ok(())
}
