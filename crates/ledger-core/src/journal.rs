//! The journal (every change of an account's credits, append-only, with the running balance),
//! the events (alerts decided in the log), and the reports computed from the journal: usage per
//! feature, balance at an instant, and the statement of a period.
//!
//! **Running balance.** `balance` is the account's credits held in live grants (effective or
//! not yet) minus its overage; credits held by reservations are not in it. Every change of it is
//! an entry whose `delta` is that change, so the balance after an entry is the sum of the deltas
//! up to it. Entries that move credits without changing the balance (the consumption of a held
//! reservation, the repayment of overage by a grant) have a delta of 0.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};

use crate::chunked::Chunked;
use crate::types::{GrantSource, LimitScope};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EntryKind {
    /// A grant was added (`amount` credits, `source`).
    Grant,
    /// A debit consumed `amount` (`overage` of it beyond the grants).
    Debit,
    /// A reservation held `amount` (`overage` of it beyond the grants).
    Reserve,
    /// A reservation gave `amount` back (explicitly, by commit, or by its time to live).
    Release,
    /// A reservation was committed: `amount` consumed, of which `-delta` drawn beyond the hold.
    Commit,
    /// A grant's remainder expired.
    Expire,
    /// A grant's remainder was voided.
    Void,
    /// A grant repaid `amount` of overage.
    OverageRepaid,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Grant => "grant",
            EntryKind::Debit => "debit",
            EntryKind::Reserve => "reserve",
            EntryKind::Release => "release",
            EntryKind::Commit => "commit",
            EntryKind::Expire => "expire",
            EntryKind::Void => "void",
            EntryKind::OverageRepaid => "overage_repaid",
        }
    }
}

/// One journal entry of an account.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct JournalEntry {
    /// 1, 2, ... per account: the cursor of `entries?after=`.
    pub sequence: u64,
    pub at_ms: u64,
    pub kind: EntryKind,
    pub amount: u64,
    /// Change of the running balance.
    pub delta: i64,
    /// Running balance after this entry.
    pub balance: i64,
    /// The grant id, debit idempotency key or reservation id the entry is about.
    pub reference: String,
    /// For grant, expire, void and overage_repaid entries: the grant's source.
    pub source: Option<GrantSource>,
    /// For debits and commits priced by the rate card: the feature, quantity and the version of
    /// the rate card that priced them.
    pub feature: Option<String>,
    pub quantity: Option<u64>,
    pub rate_card_version: Option<u64>,
    /// For debits, reserves and commits: the part beyond the grants (overage).
    pub overage: u64,
}

/// What an event is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    LowBalance {
        threshold: i64,
        available: i64,
    },
    AutoTopUpWanted {
        threshold: i64,
        available: i64,
    },
    SoftLimitReached {
        scope: LimitScope,
        window_start_ms: u64,
        spent: u64,
        limit: u64,
    },
    HardLimitReached {
        scope: LimitScope,
        window_start_ms: u64,
        spent: u64,
        limit: u64,
    },
    GrantExpiring {
        grant_id: String,
        expires_at_ms: u64,
        remaining: u64,
    },
    AllowanceReset {
        plan_id: String,
        period_index: u64,
        period_start_ms: u64,
        period_end_ms: u64,
        granted: u64,
        rolled_over: u64,
    },
}

impl EventKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            EventKind::LowBalance { .. } => "low_balance",
            EventKind::AutoTopUpWanted { .. } => "auto_top_up_wanted",
            EventKind::SoftLimitReached { .. } => "soft_limit_reached",
            EventKind::HardLimitReached { .. } => "hard_limit_reached",
            EventKind::GrantExpiring { .. } => "grant_expiring",
            EventKind::AllowanceReset { .. } => "allowance_reset",
        }
    }
}

/// An event, decided once in the log of its account's shard.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Event {
    /// 1, 2, ... per shard.
    pub sequence: u64,
    pub at_ms: u64,
    pub account_id: String,
    pub kind: EventKind,
}

/// Usage of one feature (`None`: debits and commits of plain credits).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureUsage {
    pub feature: Option<String>,
    pub credits: u64,
    pub count: u64,
    /// Sum of the quantities of the priced charges.
    pub quantity: u64,
}

/// Consumption per feature in `[from_ms, to_ms)`, features in name order (plain credits first).
pub fn usage(entries: &[JournalEntry], from_ms: u64, to_ms: u64) -> Vec<FeatureUsage> {
    let mut by_feature: BTreeMap<Option<&str>, FeatureUsage> = BTreeMap::new();
    for entry in in_window(entries, from_ms, to_ms) {
        if !matches!(entry.kind, EntryKind::Debit | EntryKind::Commit) {
            continue;
        }
        let usage = by_feature
            .entry(entry.feature.as_deref())
            .or_insert_with(|| FeatureUsage {
                feature: entry.feature.clone(),
                credits: 0,
                count: 0,
                quantity: 0,
            });
        usage.credits = usage.credits.saturating_add(entry.amount);
        usage.count += 1;
        usage.quantity = usage.quantity.saturating_add(entry.quantity.unwrap_or(0));
    }
    by_feature.into_values().collect()
}

/// The running balance at instant `at_ms`: after the last entry at or before it (0 before the
/// first).
pub fn balance_at(entries: &[JournalEntry], at_ms: u64) -> i64 {
    let after = entries.partition_point(|entry| entry.at_ms <= at_ms);
    if after == 0 {
        0
    } else {
        entries[after - 1].balance
    }
}

/// A period's statement, ready to turn into an invoice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    pub from_ms: u64,
    pub to_ms: u64,
    pub opening_balance: i64,
    pub closing_balance: i64,
    /// Granted per source, in source order (sources with no grant left out).
    pub granted: Vec<(GrantSource, u64)>,
    pub consumed: Vec<FeatureUsage>,
    pub consumed_total: u64,
    pub expired: u64,
    pub voided: u64,
    /// Credits consumed beyond the grants during the period (billed in arrears), and the part
    /// of overage that grants repaid during the period.
    pub overage: u64,
    pub overage_repaid: u64,
}

/// The statement of `[from_ms, to_ms)`.
pub fn statement(entries: &[JournalEntry], from_ms: u64, to_ms: u64) -> Statement {
    let mut granted: BTreeMap<GrantSource, u64> = BTreeMap::new();
    let (mut expired, mut voided, mut overage, mut overage_repaid) = (0_u64, 0_u64, 0_u64, 0_u64);
    for entry in in_window(entries, from_ms, to_ms) {
        match entry.kind {
            EntryKind::Grant => {
                let source = entry.source.unwrap_or(GrantSource::Manual);
                *granted.entry(source).or_default() += entry.amount;
            }
            EntryKind::Expire => expired += entry.amount,
            EntryKind::Void => voided += entry.amount,
            EntryKind::OverageRepaid => overage_repaid += entry.amount,
            EntryKind::Debit | EntryKind::Commit => overage += entry.overage,
            EntryKind::Reserve | EntryKind::Release => {}
        }
    }
    let consumed = usage(entries, from_ms, to_ms);
    Statement {
        from_ms,
        to_ms,
        opening_balance: balance_at(entries, from_ms.saturating_sub(1)),
        closing_balance: balance_at(entries, to_ms.saturating_sub(1)),
        granted: granted.into_iter().collect(),
        consumed_total: consumed.iter().map(|usage| usage.credits).sum(),
        consumed,
        expired,
        voided,
        overage,
        overage_repaid,
    }
}

fn in_window(entries: &[JournalEntry], from_ms: u64, to_ms: u64) -> &[JournalEntry] {
    let start = entries.partition_point(|entry| entry.at_ms < from_ms);
    let end = entries.partition_point(|entry| entry.at_ms < to_ms);
    &entries[start..end.max(start)]
}

/// One account's persisted journal: append-only, in chunks of [`Journal::CHUNK`] entries shared
/// between copies (see `chunked.rs`; the journal was a `Vec`, and a third of a snapshot's copy).
/// Equality, hashing (the state digest) and iteration are those of the entries in order,
/// whatever the chunking.
#[derive(Clone, Debug, Default)]
pub struct Journal(Chunked<JournalEntry, { Journal::CHUNK }>);

impl Journal {
    /// Entries per shared chunk: small, because the tails of all accounts are copied entry by
    /// entry, and a shard may hold many accounts with a few entries each.
    pub const CHUNK: usize = 16;

    pub const fn new() -> Journal {
        Journal(Chunked::new())
    }

    pub fn push(&mut self, entry: JournalEntry) {
        self.0.push(entry);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn last(&self) -> Option<&JournalEntry> {
        self.0.last()
    }

    /// The entries, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &JournalEntry> + '_ {
        self.0.iter()
    }

    pub fn to_vec(&self) -> Vec<JournalEntry> {
        self.iter().cloned().collect()
    }
}

impl Extend<JournalEntry> for Journal {
    fn extend<T: IntoIterator<Item = JournalEntry>>(&mut self, entries: T) {
        for entry in entries {
            self.push(entry);
        }
    }
}

impl FromIterator<JournalEntry> for Journal {
    fn from_iter<T: IntoIterator<Item = JournalEntry>>(entries: T) -> Journal {
        let mut journal = Journal::new();
        journal.extend(entries);
        journal
    }
}

impl PartialEq for Journal {
    fn eq(&self, other: &Journal) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Journal {}

/// As a slice of the entries hashes (length, then each entry), so the digest of a shard does
/// not depend on the chunking.
impl Hash for Journal {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_usize(self.len());
        for entry in self.iter() {
            entry.hash(state);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::hash::{DefaultHasher, Hash, Hasher};

    use super::*;

    fn entry(sequence: u64) -> JournalEntry {
        JournalEntry {
            sequence,
            at_ms: 1_000 + sequence,
            kind: EntryKind::Debit,
            amount: sequence,
            delta: -(sequence as i64),
            balance: 10_000 - sequence as i64,
            reference: format!("key-{sequence}"),
            source: None,
            feature: None,
            quantity: None,
            rate_card_version: None,
            overage: 0,
        }
    }

    fn hash_of(value: &impl Hash) -> u64 {
        let mut hasher = DefaultHasher::new();
        value.hash(&mut hasher);
        hasher.finish()
    }

    #[test]
    fn a_journal_is_its_entries_in_order_at_every_length_across_chunks() {
        let mut journal = Journal::new();
        let mut entries = Vec::new();
        for sequence in 1..=(3 * Journal::CHUNK as u64 + 5) {
            assert_eq!(journal.len(), entries.len());
            assert_eq!(journal.is_empty(), entries.is_empty());
            assert_eq!(journal.last(), entries.last());
            assert_eq!(journal.to_vec(), entries);
            assert_eq!(journal.iter().next_back(), entries.iter().next_back());
            // The digest hashes a journal as it hashed the `Vec` it replaces.
            assert_eq!(hash_of(&journal), hash_of(&entries));
            let copy = journal.clone();
            assert_eq!(copy, journal);
            journal.push(entry(sequence));
            entries.push(entry(sequence));
            assert_ne!(copy, journal, "a copy does not see later entries");
            assert_eq!(copy.len(), entries.len() - 1);
        }
        let collected: Journal = entries.iter().cloned().collect();
        assert_eq!(collected, journal);
        assert_eq!(hash_of(&collected), hash_of(&journal));
    }
}
