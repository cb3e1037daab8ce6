//! Cost of `ledger_core::Ledger::apply` per command: debits spread over many accounts, debits on
//! one hot account, and grants. The state machine is the part of a debit that no batching can
//! share, so its cost per command bounds the throughput of one shard.
//!
//! `snapshot_point`: the copy a snapshot takes of a shard's state under its read lock, during
//! which no entry is applied; with a shard that has decided `DECIDED_DEBITS` debits.
//!
//! `iter_custom`: each sample builds a fresh ledger and its commands outside the timed part,
//! then times the applies alone, so the ledger does not grow across samples.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ledger_core::{Charge, Command, GrantCommand, GrantSource, Ledger};

const ACCOUNTS: u64 = 10_000;
const CREDITS_PER_ACCOUNT: u64 = 1_000_000_000_000;
/// The leader's stamp; constant, as within one Raft entry.
const TIMESTAMP_MS: u64 = 1_700_000_000_000;
/// Debits already decided by the shard of `snapshot_point`.
const DECIDED_DEBITS: u64 = 1_000_000;

fn account(index: u64) -> String {
    format!("loadgen-{index}")
}

/// A ledger with `accounts` accounts, each granted plenty of credits.
fn funded_ledger(accounts: u64) -> Ledger {
    let mut ledger = Ledger::new();
    for index in 0..accounts {
        let create = Command::CreateAccount {
            account_id: account(index),
            overdraft_limit: 0,
        };
        let grant = Command::Grant(GrantCommand {
            account_id: account(index),
            grant_id: "loadgen-grant".to_owned(),
            amount: CREDITS_PER_ACCOUNT,
            source: GrantSource::Purchase,
            priority: 50,
            effective_at_ms: None,
            expires_at_ms: None,
        });
        for command in [create, grant] {
            let outcome = ledger.apply(&command, TIMESTAMP_MS);
            assert!(
                outcome.result.is_ok(),
                "setup command rejected: {outcome:?}"
            );
        }
    }
    ledger
}

fn debit(account_index: u64, sequence: u64) -> Command {
    Command::Debit {
        account_id: account(account_index),
        idempotency_key: format!("key-{sequence}"),
        charge: Charge::Credits(1),
    }
}

/// Times `iterations` applies of the commands `make(i)` on a fresh copy of `base`.
fn time_applies(base: &Ledger, iterations: u64, make: impl Fn(u64) -> Command) -> Duration {
    let mut ledger = base.clone();
    let commands: Vec<Command> = (0..iterations).map(make).collect();
    let started = Instant::now();
    for command in &commands {
        let outcome = ledger.apply(command, TIMESTAMP_MS);
        std::hint::black_box(&outcome);
    }
    started.elapsed()
}

fn apply(criterion: &mut Criterion) {
    let many = funded_ledger(ACCOUNTS);
    let hot = funded_ledger(1);
    let mut group = criterion.benchmark_group("apply");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("debit_many_accounts", |bencher| {
        bencher.iter_custom(|iterations| {
            // Accounts in a scattered order (a multiplicative hash of the sequence).
            time_applies(&many, iterations, |sequence| {
                debit(sequence.wrapping_mul(2_654_435_761) % ACCOUNTS, sequence)
            })
        })
    });
    group.bench_function("debit_hot_account", |bencher| {
        bencher
            .iter_custom(|iterations| time_applies(&hot, iterations, |sequence| debit(0, sequence)))
    });
    group.bench_function("grant", |bencher| {
        bencher.iter_custom(|iterations| {
            time_applies(&many, iterations, |sequence| {
                Command::Grant(GrantCommand {
                    account_id: account(sequence % ACCOUNTS),
                    grant_id: format!("grant-{sequence}"),
                    amount: 1_000,
                    source: GrantSource::Promo,
                    priority: 10,
                    effective_at_ms: None,
                    expires_at_ms: None,
                })
            })
        })
    });
    group.finish();
}

fn snapshot_point(criterion: &mut Criterion) {
    let mut shard = funded_ledger(ACCOUNTS);
    for sequence in 0..DECIDED_DEBITS {
        let outcome = shard.apply(&debit(sequence % ACCOUNTS, sequence), TIMESTAMP_MS);
        assert!(outcome.result.is_ok(), "setup debit rejected: {outcome:?}");
    }
    let mut group = criterion.benchmark_group("snapshot_point");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("copy_1m_decided_debits", |bencher| {
        bencher.iter_custom(|iterations| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iterations {
                let started = Instant::now();
                let copy = shard.clone();
                elapsed += started.elapsed();
                drop(std::hint::black_box(copy));
            }
            elapsed
        })
    });
    group.finish();
}

criterion_group!(benches, apply, snapshot_point);
criterion_main!(benches);
