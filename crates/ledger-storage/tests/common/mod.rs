//! Helpers shared by the storage tests: log entries, seeded random ledger commands, and a plain
//! in-memory `Ledger` as the model the stored state is compared with.

#![allow(dead_code)] // Each test binary uses its own subset.

use std::collections::BTreeSet;

use ledger_core::{ChangeSet, Command, GrantCommand, GrantSource, Ledger, Outcome};
use ledger_raft::{Entry, LedgerBatch, LedgerLogId, NodeId};
use openraft::{CommittedLeaderId, EntryPayload, LogId, Membership};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub fn log_id(term: u64, index: u64) -> LedgerLogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

pub fn blank_entry(term: u64, index: u64) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Blank,
    }
}

pub fn membership_entry(term: u64, index: u64, voters: &[NodeId]) -> Entry {
    let voters: BTreeSet<NodeId> = voters.iter().copied().collect();
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Membership(Membership::new(vec![voters], None)),
    }
}

pub fn batch_entry(term: u64, index: u64, batch: LedgerBatch) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(batch),
    }
}

/// The seed of a random test: `LEDGER_STORAGE_SEED` to replay one, else a fresh one. Printed
/// either way so that a failure can be replayed.
pub fn test_seed(test_name: &str) -> u64 {
    let seed = match std::env::var("LEDGER_STORAGE_SEED") {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("LEDGER_STORAGE_SEED={text:?} is not a u64")),
        Err(_) => rand::random(),
    };
    println!("{test_name}: seed {seed} (replay with LEDGER_STORAGE_SEED={seed})");
    seed
}

/// Random ledger commands over a few accounts, with the conflicts and replays that exercise
/// every kind of stored key (accounts, grants, accepted and rejected debit records).
pub struct CommandGenerator {
    random: StdRng,
    account_prefix: String,
    next_key: u64,
}

impl CommandGenerator {
    pub fn new(seed: u64, account_prefix: &str) -> CommandGenerator {
        CommandGenerator {
            random: StdRng::seed_from_u64(seed),
            account_prefix: account_prefix.to_owned(),
            next_key: 0,
        }
    }

    pub fn command(&mut self) -> Command {
        let account_id = format!("{}-{}", self.account_prefix, self.random.gen_range(0..5));
        let fresh_key = self.random.gen_bool(0.8) || self.next_key == 0;
        if fresh_key {
            self.next_key += 1;
        }
        let key = format!("k{}", self.random.gen_range(0..self.next_key.max(1)));
        match self.random.gen_range(0..10) {
            0 | 1 => Command::CreateAccount {
                account_id,
                overdraft_limit: self.random.gen_range(0..3) * 50,
            },
            2..=4 => Command::Grant(GrantCommand {
                account_id,
                grant_id: format!("g{}", self.next_key),
                amount: self.random.gen_range(1..500),
                source: GrantSource::Purchase,
                priority: self.random.gen_range(0..=100),
                effective_at_ms: None,
                expires_at_ms: self
                    .random
                    .gen_bool(0.3)
                    .then(|| 1_000_000 + self.random.gen_range(1..20_000)),
            }),
            _ => Command::Debit {
                account_id,
                idempotency_key: key,
                amount: self.random.gen_range(1..200),
            },
        }
    }

    pub fn batch(&mut self, timestamp_ms: u64) -> LedgerBatch {
        let command_count = self.random.gen_range(0..8);
        LedgerBatch {
            timestamp_ms,
            commands: (0..command_count).map(|_| self.command()).collect(),
        }
    }
}

/// Applies `batch` to the model ledger and returns the outcomes the store must return.
pub fn model_apply(model: &mut Ledger, batch: &LedgerBatch) -> Vec<Outcome> {
    let mut changes = ChangeSet::default();
    batch
        .commands
        .iter()
        .map(|command| model.apply(command, batch.timestamp_ms, &mut changes))
        .collect()
}

/// Fails unless the model holds what a storage test must round-trip: accounts with grants, and
/// both accepted and rejected debit decisions. Guards the random tests against passing on an
/// empty ledger.
pub fn assert_model_is_rich(model: &Ledger) {
    assert!(
        model.accounts().any(|account| !account.grants.is_empty()),
        "no account with grants"
    );
    assert!(
        model
            .debit_records()
            .any(|(_, record)| record.result.is_ok()),
        "no accepted debit"
    );
    assert!(
        model
            .debit_records()
            .any(|(_, record)| record.result.is_err()),
        "no rejected debit"
    );
}
