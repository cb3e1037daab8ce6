//! The newest entries of a shard's log, kept in memory next to RocksDB.
//!
//! openraft reads the entries it has just appended twice or more: the leader's replication task
//! of each follower reads them to send them, and every replica reads them again to apply them.
//! From RocksDB each read is a scan plus a decode of every command (the profile of a leader under
//! batches of 100 had 12% of its CPU there, most of it allocating the decoded commands). An entry's
//! commands are shared (`LedgerBatch::commands` is an `Arc`), so handing out a cached entry costs
//! a reference count.
//!
//! **Invariant:** the tail is contiguous, and every entry it holds is the log's entry at that
//! index. The log store adds appended entries after RocksDB accepted them, and removes what a
//! truncation or purge removes before RocksDB does (and forgets the whole tail if that write
//! fails), so a reader never gets from the tail an entry the log no longer has. A read is served
//! from the tail only if the tail holds the whole range asked for; anything else goes to RocksDB.

use std::collections::VecDeque;

use ledger_raft::Entry;
use openraft::EntryPayload;

/// Bounds of a tail: whichever is reached first evicts the oldest entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TailLimits {
    pub(crate) entries_max: usize,
    /// Commands over all the entries held (an entry holds up to thousands of them).
    pub(crate) commands_max: usize,
}

impl Default for TailLimits {
    fn default() -> Self {
        // A follower more than a few hundred entries behind catches up from RocksDB. Whatever
        // the entries' size, a shard's tail holds at most 131,072 commands (and the newest
        // entry even when it alone is larger): with the proposer's largest entries (4,096
        // commands) that is 32 entries.
        TailLimits {
            entries_max: 512,
            commands_max: 1 << 17,
        }
    }
}

/// The newest entries of one shard's log, contiguous by index.
#[derive(Debug, Default)]
pub(crate) struct LogTail {
    entries: VecDeque<Entry>,
    commands: usize,
    limits: TailLimits,
}

fn commands_of(entry: &Entry) -> usize {
    match &entry.payload {
        EntryPayload::Normal(batch) => batch.commands.len(),
        EntryPayload::Blank | EntryPayload::Membership(_) => 0,
    }
}

impl LogTail {
    pub(crate) fn new(limits: TailLimits) -> LogTail {
        LogTail {
            entries: VecDeque::new(),
            commands: 0,
            limits,
        }
    }

    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|entry| entry.log_id.index)
    }

    fn last_index(&self) -> Option<u64> {
        self.entries.back().map(|entry| entry.log_id.index)
    }

    /// Entries just written after the log's last entry, in index order.
    pub(crate) fn append(&mut self, entries: &[Entry]) {
        for entry in entries {
            let follows = match self.last_index() {
                None => true,
                Some(last) => entry.log_id.index == last + 1,
            };
            if !follows {
                // The log store only appends right after its last entry; should that ever not
                // hold, forget everything rather than keep a tail with a hole.
                self.clear();
            }
            self.commands += commands_of(entry);
            self.entries.push_back(entry.clone());
        }
        while self.entries.len() > self.limits.entries_max
            || (self.commands > self.limits.commands_max && self.entries.len() > 1)
        {
            self.pop_front();
        }
    }

    /// The log lost every entry from `index` on.
    pub(crate) fn truncate(&mut self, index: u64) {
        while self.last_index().is_some_and(|last| last >= index) {
            if let Some(entry) = self.entries.pop_back() {
                self.commands -= commands_of(&entry);
            }
        }
    }

    /// The log lost every entry up to and including `index`.
    pub(crate) fn purge(&mut self, index: u64) {
        while self.first_index().is_some_and(|first| first <= index) {
            self.pop_front();
        }
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.commands = 0;
    }

    fn pop_front(&mut self) {
        if let Some(entry) = self.entries.pop_front() {
            self.commands -= commands_of(&entry);
        }
    }

    /// The entries `start..end`, if the tail holds every one of them.
    pub(crate) fn get(&self, start: u64, end: u64) -> Option<Vec<Entry>> {
        let first = self.first_index()?;
        let last = self.last_index()?;
        if start < first || end > last + 1 || end <= start {
            return None;
        }
        let from = usize::try_from(start - first).ok()?;
        let to = usize::try_from(end - first).ok()?;
        Some(self.entries.range(from..to).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ledger_core::{Charge, Command};
    use ledger_raft::LedgerBatch;
    use openraft::{CommittedLeaderId, LogId};

    use super::*;

    fn entry(term: u64, index: u64, commands: usize) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(LedgerBatch {
                timestamp_ms: index,
                commands: (0..commands)
                    .map(|n| Command::Debit {
                        account_id: format!("a{n}"),
                        idempotency_key: format!("k{index}-{n}"),
                        charge: Charge::Credits(1),
                    })
                    .collect::<Arc<[Command]>>(),
            }),
        }
    }

    fn entries(term: u64, indexes: std::ops::Range<u64>, commands: usize) -> Vec<Entry> {
        indexes.map(|index| entry(term, index, commands)).collect()
    }

    fn ids(entries: &[Entry]) -> Vec<(u64, u64)> {
        entries
            .iter()
            .map(|entry| (entry.log_id.leader_id.term, entry.log_id.index))
            .collect()
    }

    fn tail(entries_max: usize, commands_max: usize) -> LogTail {
        LogTail::new(TailLimits {
            entries_max,
            commands_max,
        })
    }

    #[test]
    fn serves_only_ranges_it_holds_entirely() {
        let mut tail = tail(100, 1_000);
        assert_eq!(tail.get(1, 2), None, "an empty tail holds nothing");
        tail.append(&entries(1, 5..10, 2));
        assert_eq!(ids(&tail.get(5, 10).unwrap()), ids(&entries(1, 5..10, 0)));
        assert_eq!(ids(&tail.get(7, 8).unwrap()), vec![(1, 7)]);
        for (start, end) in [(4, 6), (9, 11), (3, 4), (10, 11), (6, 6), (7, 6)] {
            assert_eq!(tail.get(start, end), None, "{start}..{end}");
        }
    }

    #[test]
    fn a_cached_entry_shares_its_commands() {
        let mut tail = tail(100, 1_000);
        let written = entries(1, 1..2, 3);
        tail.append(&written);
        let read = tail.get(1, 2).unwrap();
        let (EntryPayload::Normal(a), EntryPayload::Normal(b)) =
            (&written[0].payload, &read[0].payload)
        else {
            panic!("normal entries expected");
        };
        assert!(Arc::ptr_eq(&a.commands, &b.commands));
        assert_eq!(read[0].log_id, written[0].log_id);
    }

    #[test]
    fn truncation_and_purge_remove_what_the_log_lost() {
        let mut tail = tail(100, 1_000);
        tail.append(&entries(1, 1..11, 1));
        tail.truncate(8);
        assert_eq!(tail.get(7, 9), None, "entry 8 is gone");
        // The new leader's entries replace the truncated suffix.
        tail.append(&entries(2, 8..10, 1));
        assert_eq!(
            ids(&tail.get(6, 10).unwrap()),
            vec![(1, 6), (1, 7), (2, 8), (2, 9)]
        );
        tail.purge(6);
        assert_eq!(tail.get(6, 7), None);
        assert_eq!(ids(&tail.get(7, 10).unwrap()), vec![(1, 7), (2, 8), (2, 9)]);
        tail.purge(20);
        assert_eq!(tail.get(9, 10), None);
        assert_eq!(tail.commands, 0);
        tail.append(&entries(2, 21..22, 1));
        assert_eq!(ids(&tail.get(21, 22).unwrap()), vec![(2, 21)]);
    }

    #[test]
    fn a_gap_forgets_the_older_entries() {
        let mut tail = tail(100, 1_000);
        tail.append(&entries(1, 1..4, 1));
        tail.append(&entries(1, 6..7, 1));
        assert_eq!(tail.get(1, 2), None);
        assert_eq!(ids(&tail.get(6, 7).unwrap()), vec![(1, 6)]);
        assert_eq!(tail.commands, 1);
    }

    #[test]
    fn the_oldest_entries_leave_at_either_bound() {
        let mut by_entries = tail(3, 1_000);
        by_entries.append(&entries(1, 1..6, 1));
        assert_eq!(by_entries.get(2, 4), None);
        assert_eq!(ids(&by_entries.get(3, 6).unwrap()).len(), 3);

        let mut by_commands = tail(100, 10);
        by_commands.append(&entries(1, 1..5, 4));
        assert_eq!(by_commands.get(2, 5), None, "12 commands exceed 10");
        assert_eq!(ids(&by_commands.get(3, 5).unwrap()), vec![(1, 3), (1, 4)]);
        assert_eq!(by_commands.commands, 8);

        // One entry larger than the bound is still kept: it is the log's last.
        by_commands.append(&entries(1, 5..6, 50));
        assert_eq!(ids(&by_commands.get(5, 6).unwrap()), vec![(1, 5)]);
        assert_eq!(by_commands.commands, 50);
    }
}
