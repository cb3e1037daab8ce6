//! A deterministic debit load for process tests: accounts covering every shard, each granted
//! the same amount, and workers that debit them and retry every key with the same key until the
//! ledger decides it (as the contract asks of clients). Afterwards, everything the workers were
//! told is checked against the ledger:
//! - exactly once and conservation: per account, `available == granted - Σ accepted amounts`
//!   and `consumed == Σ accepted amounts` (a debit applied twice, or applied although it was
//!   reported rejected, breaks this);
//! - every acknowledged key reads back (`GET .../debits/{key}`) as the decision the client got,
//!   and a replay of it returns that decision marked `replayed`;
//! - no overspend: `available >= -overdraft_limit`.
//!
//! Which worker debits which account how much is a function of the worker and sequence numbers;
//! only the interleaving with the faults varies between runs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use ledger_api::{codes, CreateGrantRequest, DebitResponse, STATUS_ACCEPTED, STATUS_REJECTED};
use ledger_client::{ClientError, LedgerClient};
use tokio::task::JoinHandle;

use super::{accounts_covering_shards, POLL_INTERVAL};

const ACCOUNTS_PER_SHARD: usize = 2;
const WORKERS: usize = 6;
const GRANT_AMOUNT: u64 = 50;
/// Every fourth account may go this far below zero.
const OVERDRAFT_LIMIT: u64 = 20;
/// Decisions to wait for in each phase: before the kill, while the node is down, after its
/// restart.
const DECISIONS_PER_PHASE: u64 = 60;
/// How long one key may stay undecided while the worker keeps retrying it.
const KEY_DECISION_TIMEOUT: Duration = Duration::from_secs(60);
const PHASE_TIMEOUT: Duration = Duration::from_secs(40);

/// A debit the client was told the decision of.
#[derive(Clone, Debug)]
struct Acknowledged {
    account_id: String,
    idempotency_key: String,
    amount: u64,
    outcome: DebitResponse,
}

fn overdraft_limit_of(account_index: usize) -> Option<u64> {
    match account_index % 4 {
        0 => Some(OVERDRAFT_LIMIT),
        _ => None,
    }
}

/// Retries one key until the ledger decides it: an unavailable cluster (an election, a dead
/// node) is waited out with the same key; anything else is a failure of the test.
async fn decide(
    client: &LedgerClient,
    account_id: &str,
    idempotency_key: &str,
    amount: u64,
    undecided_calls: &AtomicU64,
) -> anyhow::Result<DebitResponse> {
    let deadline = Instant::now() + KEY_DECISION_TIMEOUT;
    loop {
        match client.debit(account_id, idempotency_key, amount).await {
            Ok(outcome) => return Ok(outcome),
            Err(error @ ClientError::Unavailable { .. }) if Instant::now() < deadline => {
                undecided_calls.fetch_add(1, Ordering::Relaxed);
                eprintln!("{idempotency_key}: still undecided, retrying the same key: {error}");
            }
            Err(error) => {
                bail!("debit {idempotency_key} of {account_id} ({amount}) failed: {error}")
            }
        }
    }
}

async fn debit_worker(
    worker: usize,
    client: LedgerClient,
    accounts: Arc<Vec<String>>,
    stop: Arc<AtomicBool>,
    decided: Arc<AtomicU64>,
    undecided_calls: Arc<AtomicU64>,
) -> anyhow::Result<Vec<Acknowledged>> {
    let mut acknowledged = Vec::new();
    let mut sequence = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let account_id = &accounts[(worker * 5 + sequence * 3) % accounts.len()];
        let idempotency_key = format!("w{worker}-d{sequence}");
        let amount = 1 + ((worker * 7 + sequence) % 9) as u64;
        let outcome = decide(
            &client,
            account_id,
            &idempotency_key,
            amount,
            &undecided_calls,
        )
        .await?;
        match outcome.status.as_str() {
            STATUS_ACCEPTED => ensure!(
                outcome.amount == Some(amount),
                "{idempotency_key}: accepted {:?}, asked {amount}",
                outcome.amount
            ),
            STATUS_REJECTED => ensure!(
                outcome.code.as_deref() == Some(codes::INSUFFICIENT_CREDITS),
                "{idempotency_key}: unexpected rejection {outcome:?}"
            ),
            other => bail!("{idempotency_key}: unknown status {other}"),
        }
        acknowledged.push(Acknowledged {
            account_id: account_id.clone(),
            idempotency_key,
            amount,
            outcome,
        });
        decided.fetch_add(1, Ordering::Relaxed);
        sequence += 1;
    }
    Ok(acknowledged)
}

type Worker = JoinHandle<anyhow::Result<Vec<Acknowledged>>>;

/// Waits until the workers together reached `target` decisions. A worker that stopped early
/// has failed: its error is the test's.
async fn wait_for_decisions(
    what: &str,
    decided: &AtomicU64,
    target: u64,
    workers: &mut [Worker],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + PHASE_TIMEOUT;
    loop {
        if let Some(index) = workers.iter().position(JoinHandle::is_finished) {
            let result = (&mut workers[index])
                .await
                .with_context(|| format!("worker {index} panicked"))?;
            result.with_context(|| format!("worker {index}"))?;
            bail!("worker {index} stopped before being told to");
        }
        let now = decided.load(Ordering::Relaxed);
        if now >= target {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "timed out after {PHASE_TIMEOUT:?} waiting for {what}: {now} of {target} decisions"
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Accounts with their grants, and the workers debiting them until told to stop.
pub struct Load {
    accounts: Arc<Vec<String>>,
    stop: Arc<AtomicBool>,
    decided: Arc<AtomicU64>,
    /// Client calls that came back undecided (`Unavailable` after all the client's retries).
    pub undecided_calls: Arc<AtomicU64>,
    workers: Vec<Worker>,
}

impl Load {
    pub async fn start(
        client: &LedgerClient,
        prefix: &str,
        shard_count: u32,
    ) -> anyhow::Result<Load> {
        let accounts = accounts_covering_shards(prefix, shard_count, ACCOUNTS_PER_SHARD);
        for (index, account_id) in accounts.iter().enumerate() {
            client
                .create_account(account_id, overdraft_limit_of(index))
                .await?;
            let grant = CreateGrantRequest {
                grant_id: format!("{account_id}-grant"),
                amount: GRANT_AMOUNT,
                source: None,
                priority: None,
                effective_at: None,
                expires_at: None,
            };
            client.grant(account_id, &grant).await?;
        }
        let accounts = Arc::new(accounts);
        let stop = Arc::new(AtomicBool::new(false));
        let decided = Arc::new(AtomicU64::new(0));
        let undecided_calls = Arc::new(AtomicU64::new(0));
        let workers = (0..WORKERS)
            .map(|worker| {
                tokio::spawn(debit_worker(
                    worker,
                    client.clone(),
                    accounts.clone(),
                    stop.clone(),
                    decided.clone(),
                    undecided_calls.clone(),
                ))
            })
            .collect();
        Ok(Load {
            accounts,
            stop,
            decided,
            undecided_calls,
            workers,
        })
    }

    /// Waits for `DECISIONS_PER_PHASE` more decisions.
    pub async fn phase(&mut self, what: &str) -> anyhow::Result<()> {
        let target = self.decided.load(Ordering::Relaxed) + DECISIONS_PER_PHASE;
        wait_for_decisions(what, &self.decided, target, &mut self.workers).await
    }

    /// Stops the workers and checks the ledger against everything they were told.
    pub async fn stop_and_check(self, client: &LedgerClient) -> anyhow::Result<()> {
        let Load {
            accounts,
            stop,
            workers,
            ..
        } = self;
        stop.store(true, Ordering::Relaxed);
        let mut acknowledged = Vec::new();
        for (index, worker) in workers.into_iter().enumerate() {
            let decisions = worker
                .await
                .with_context(|| format!("worker {index} panicked"))?
                .with_context(|| format!("worker {index}"))?;
            acknowledged.extend(decisions);
        }
        check_acknowledged(client, &accounts, &acknowledged).await
    }
}

/// Against what the clients were told: exactly once and conservation per account, no
/// overspend, every acknowledged key recorded as told, replays marked.
async fn check_acknowledged(
    client: &LedgerClient,
    accounts: &[String],
    acknowledged: &[Acknowledged],
) -> anyhow::Result<()> {
    let accepted = acknowledged
        .iter()
        .filter(|debit| debit.outcome.status == STATUS_ACCEPTED)
        .count();
    eprintln!(
        "{} debits decided: {accepted} accepted, {} rejected",
        acknowledged.len(),
        acknowledged.len() - accepted
    );
    ensure!(accepted > 0, "no debit was accepted");
    // Exactly once and conservation, per account.
    let mut accepted_per_account: BTreeMap<&str, u64> = BTreeMap::new();
    for debit in acknowledged {
        if debit.outcome.status == STATUS_ACCEPTED {
            *accepted_per_account.entry(&debit.account_id).or_default() += debit.amount;
        }
    }
    for (index, account_id) in accounts.iter().enumerate() {
        let account = client.get_account(account_id).await?;
        let drawn = accepted_per_account
            .get(account_id.as_str())
            .copied()
            .unwrap_or(0);
        let expected_available = i64::try_from(GRANT_AMOUNT)? - i64::try_from(drawn)?;
        ensure!(
            account.available == expected_available && account.consumed == drawn,
            "{account_id}: available {} consumed {}, but granted {GRANT_AMOUNT} and the clients \
             were told of {drawn} accepted",
            account.available,
            account.consumed
        );
        let floor = -i64::try_from(overdraft_limit_of(index).unwrap_or(0))?;
        ensure!(
            account.available >= floor,
            "{account_id}: overspent to {}",
            account.available
        );
    }

    // Every acknowledged key is recorded as told, and replays say so.
    for (position, debit) in acknowledged.iter().enumerate() {
        let recorded = client
            .get_debit(&debit.account_id, &debit.idempotency_key)
            .await?
            .with_context(|| format!("{} acknowledged but not recorded", debit.idempotency_key))?;
        ensure!(
            recorded.status == debit.outcome.status
                && recorded.amount == debit.outcome.amount
                && recorded.code == debit.outcome.code,
            "{}: told {:?}, recorded {recorded:?}",
            debit.idempotency_key,
            debit.outcome
        );
        if position % 7 == 0 {
            let replay = client
                .debit(&debit.account_id, &debit.idempotency_key, debit.amount)
                .await?;
            ensure!(
                replay.replayed
                    && replay.status == debit.outcome.status
                    && replay.amount == debit.outcome.amount,
                "{}: told {:?}, replay {replay:?}",
                debit.idempotency_key,
                debit.outcome
            );
        }
    }

    Ok(())
}
