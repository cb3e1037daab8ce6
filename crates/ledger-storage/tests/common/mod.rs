//! Helpers shared by the storage tests: log entries, seeded random ledger commands, and a plain
//! in-memory `Ledger` as the model the stored state is compared with.

#![allow(dead_code)] // Each test binary uses its own subset.

use std::collections::BTreeSet;

use ledger_core::{Charge, Command, GrantCommand, GrantSource, Ledger, Outcome};
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
/// every kind of stored key (accounts, grants, accepted and rejected debit records, grant
/// records).
pub struct CommandGenerator {
    random: StdRng,
    account_prefix: String,
    next_key: u64,
    /// The latest commands, for retries.
    recent: Vec<Command>,
}

/// How many of the latest commands a retry chooses from.
const RECENT_COMMANDS: usize = 8;

impl CommandGenerator {
    pub fn new(seed: u64, account_prefix: &str) -> CommandGenerator {
        CommandGenerator {
            random: StdRng::seed_from_u64(seed),
            account_prefix: account_prefix.to_owned(),
            next_key: 0,
            recent: Vec::new(),
        }
    }

    /// Grants and debits name, now and then, an account that no command creates, so that
    /// rejections for a missing account are decided and stored. The very first command is such
    /// a grant, so that every stream holds at least one grant record. One command in ten is a
    /// client's retry of one of the latest commands, unchanged.
    pub fn command(&mut self) -> Command {
        let command = match self.recent.len() {
            0 => self.grant(self.missing_account_id()),
            sent if self.random.gen_bool(0.1) => {
                let first = sent.saturating_sub(RECENT_COMMANDS);
                self.recent[self.random.gen_range(first..sent)].clone()
            }
            _ => self.fresh_command(),
        };
        self.recent.push(command.clone());
        if self.recent.len() > 2 * RECENT_COMMANDS {
            self.recent.drain(..RECENT_COMMANDS);
        }
        command
    }

    fn fresh_command(&mut self) -> Command {
        let account_id = format!("{}-{}", self.account_prefix, self.random.gen_range(0..5));
        let target_id = if self.random.gen_bool(1.0 / 6.0) {
            self.missing_account_id()
        } else {
            account_id.clone()
        };
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
            2..=4 => self.grant(target_id),
            // Reservations exercise the reservation records and the journal's release entries;
            // a TTL inside the test's time span lets some of them time out.
            5 => Command::Reserve {
                account_id: target_id,
                reservation_id: format!("r{}", self.random.gen_range(0..self.next_key.max(1))),
                amount: self.random.gen_range(1..100),
                ttl_ms: self.random.gen_range(1..5_000),
            },
            6 => {
                let reservation_id = format!("r{}", self.random.gen_range(0..self.next_key.max(1)));
                if self.random.gen_bool(0.5) {
                    Command::Commit {
                        account_id: target_id,
                        reservation_id,
                        charge: Charge::Credits(self.random.gen_range(0..150)),
                    }
                } else {
                    Command::Release {
                        account_id: target_id,
                        reservation_id,
                    }
                }
            }
            7 => Command::Tick,
            _ => Command::Debit {
                account_id: target_id,
                idempotency_key: key,
                charge: Charge::Credits(self.random.gen_range(1..200)),
            },
        }
    }

    fn grant(&mut self, account_id: String) -> Command {
        Command::Grant(GrantCommand {
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
        })
    }

    fn missing_account_id(&self) -> String {
        format!("{}-never-created", self.account_prefix)
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
    batch
        .commands
        .iter()
        .map(|command| model.apply(command, batch.timestamp_ms))
        .collect()
}

/// Fails unless the model holds what a storage test must round-trip: accounts with grants, both
/// accepted and rejected debit decisions, and recorded grant rejections. Guards the random tests
/// against passing on an empty ledger.
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
    assert!(
        model.grant_records().next().is_some(),
        "no recorded grant rejection"
    );
}

/// A retry of every recorded grant rejection of `model`, with the outcome it must get: the
/// recorded rejection, as a replay. The expectation is read from the model's records, so a
/// store that lost a record answers otherwise. The retries leave `effective_at` out, which
/// matches whatever instant the first request named (naming the decision's stamp instead would
/// make a request whose expiry was already past fail the checks of the command alone).
pub fn grant_rejection_retries(model: &Ledger) -> (Vec<Command>, Vec<Outcome>) {
    model
        .grant_records()
        .map(|((account_id, grant_id), record)| {
            let retry = Command::Grant(GrantCommand {
                account_id: account_id.clone(),
                grant_id: grant_id.clone(),
                amount: record.amount,
                source: record.source,
                priority: record.priority,
                effective_at_ms: None,
                expires_at_ms: record.expires_at_ms,
            });
            let outcome = Outcome {
                result: Err(record.rejection),
                replayed: true,
            };
            (retry, outcome)
        })
        .unzip()
}
