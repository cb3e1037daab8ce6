//! [`DebitRecords`]: every debit decision of a shard, found by (account id, idempotency key).
//!
//! A snapshot copies the shard's state while no entry can be applied, and the debit records are
//! most of that state: one per debit ever decided. In a `BTreeMap` the copy cloned every record
//! (about 200 ms per million, `benches/RESULTS.md`, sessions 10 and 11). Records are never
//! removed, so they are kept in the order decided, in full chunks of [`CHUNK`] records shared
//! between copies plus one tail, with a hash index of positions beside them: a copy clones a
//! pointer per chunk, at most `CHUNK - 1` records, and the index's plain `(hash, position)`
//! pairs. A lookup hashes the key once and compares the one or two records its hash points to,
//! instead of a B-tree's twenty-odd string comparisons.
//!
//! The index's hasher is randomly keyed per ledger (keys come from clients; a fixed hash would
//! let them collide on purpose). Nothing observable depends on it: iteration is in the order
//! decided, equality is that of the sets of records, and the state digest's part is a sum of
//! per-record digests, the same whatever the order.

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};

use hashbrown::{DefaultHashBuilder, HashTable};
use xxhash_rust::xxh3::Xxh3;

use crate::chunked::Chunked;
use crate::ledger::DigestHasher;
use crate::types::DebitRecord;

/// Records per shared chunk. One tail for the whole shard, so a copy clones at most this many
/// records; a million records are about a thousand chunk pointers.
pub(crate) const CHUNK: usize = 1024;

type Key = (String, String);
type Record = (Key, DebitRecord);

/// The debit records of one shard; see the module documentation.
#[derive(Clone, Default)]
pub(crate) struct DebitRecords {
    /// Every record, in the order decided.
    records: Chunked<Record, CHUNK>,
    /// `(hash of the key, position in the order decided)` of every record.
    index: HashTable<(u64, usize)>,
    hasher: DefaultHashBuilder,
}

impl DebitRecords {
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    fn hash_of(&self, account_id: &str, idempotency_key: &str) -> u64 {
        self.hasher.hash_one((account_id, idempotency_key))
    }

    fn position(&self, hash: u64, account_id: &str, idempotency_key: &str) -> Option<usize> {
        self.index
            .find(hash, |&(stored_hash, position)| {
                stored_hash == hash && {
                    let ((account, key), _) = self.records.get(position);
                    account == account_id && key == idempotency_key
                }
            })
            .map(|&(_, position)| position)
    }

    /// The decision of a debit key, if it was ever decided.
    pub(crate) fn get(&self, account_id: &str, idempotency_key: &str) -> Option<&DebitRecord> {
        let hash = self.hash_of(account_id, idempotency_key);
        self.position(hash, account_id, idempotency_key)
            .map(|position| &self.records.get(position).1)
    }

    /// Records a decision. A key already present has its record replaced (in place, so that
    /// the key is still listed once) and the previous one is returned; the ledger never does
    /// that outside the fault-injection build.
    pub(crate) fn insert(&mut self, key: Key, record: DebitRecord) -> Option<DebitRecord> {
        let hash = self.hash_of(&key.0, &key.1);
        if let Some(position) = self.position(hash, &key.0, &key.1) {
            let stored = &mut self.records.get_mut(position).1;
            return Some(std::mem::replace(stored, record));
        }
        let position = self.len();
        self.index
            .insert_unique(hash, (hash, position), |&(stored_hash, _)| stored_hash);
        self.records.push((key, record));
        None
    }

    /// Every record, in the order decided.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Key, &DebitRecord)> {
        self.records.iter().map(|(key, record)| (key, record))
    }
}

impl FromIterator<Record> for DebitRecords {
    fn from_iter<T: IntoIterator<Item = Record>>(records: T) -> DebitRecords {
        let mut collected = DebitRecords::default();
        for (key, record) in records {
            collected.insert(key, record);
        }
        collected
    }
}

/// Equal when they hold the same records, whatever the order they were decided in.
impl PartialEq for DebitRecords {
    fn eq(&self, other: &DebitRecords) -> bool {
        self.len() == other.len()
            && self
                .iter()
                .all(|((account, key), record)| other.get(account, key) == Some(record))
    }
}

impl Eq for DebitRecords {}

/// The number of records, then the wrapping sum of each record's XXH3-128 digest: equal for
/// equal sets of records, whatever their order.
impl Hash for DebitRecords {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut record_hasher = DigestHasher(Xxh3::new());
        let mut sum: u128 = 0;
        for record in self.iter() {
            record_hasher.0.reset();
            record.hash(&mut record_hasher);
            sum = sum.wrapping_add(record_hasher.0.digest128());
        }
        state.write_usize(self.len());
        state.write_u128(sum);
    }
}

impl fmt::Debug for DebitRecords {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::hash::DefaultHasher;

    use super::*;
    use crate::types::{Accepted, Charge, Rejection};

    fn record(amount: u64) -> DebitRecord {
        DebitRecord {
            charge: Charge::Credits(amount),
            result: if amount.is_multiple_of(7) {
                Err(Rejection::InsufficientCredits)
            } else {
                Ok(Accepted::Debited {
                    amount,
                    available: 1_000,
                    rate_card_version: None,
                })
            },
            decided_at_ms: 1_000 + amount,
        }
    }

    fn key(account: u64, sequence: u64) -> Key {
        (format!("account-{account}"), format!("key-{sequence}"))
    }

    fn digest(records: &DebitRecords) -> u64 {
        let mut hasher = DefaultHasher::new();
        records.hash(&mut hasher);
        hasher.finish()
    }

    #[test]
    fn records_behave_as_a_map_across_chunks_and_copies() {
        let mut records = DebitRecords::default();
        let mut model: BTreeMap<Key, DebitRecord> = BTreeMap::new();
        let total = 3 * CHUNK as u64 + 17;
        let mut copies = Vec::new();
        for sequence in 0..total {
            let key = key(sequence % 13, sequence);
            assert_eq!(records.insert(key.clone(), record(sequence)), None);
            model.insert(key, record(sequence));
            if sequence % 500 == 0 {
                copies.push((records.clone(), model.clone()));
            }
        }
        assert_eq!(records.len(), model.len());
        for (key, expected) in &model {
            assert_eq!(records.get(&key.0, &key.1), Some(expected));
        }
        assert_eq!(
            records.get("account-1", "key-0"),
            None,
            "key-0 is account-0's"
        );
        assert_eq!(records.get("account-0", "missing"), None);
        // In the order decided.
        let listed: Vec<u64> = records
            .iter()
            .map(|(_, record)| record.decided_at_ms - 1_000)
            .collect();
        assert_eq!(listed, (0..total).collect::<Vec<_>>());
        // Copies do not see what was decided after them.
        for (copy, model_then) in &copies {
            assert_eq!(copy.len(), model_then.len());
            for (key, expected) in model_then {
                assert_eq!(copy.get(&key.0, &key.1), Some(expected));
            }
            assert_eq!(copy.get(&key(0, total - 13).0, &key(0, total - 13).1), None);
        }
    }

    #[test]
    fn a_replaced_record_is_listed_once_and_copies_keep_the_old_one() {
        let mut records: DebitRecords = (0..(CHUNK as u64 + 5))
            .map(|sequence| (key(1, sequence), record(sequence)))
            .collect();
        let copy = records.clone();
        for sequence in [3, CHUNK as u64 + 2] {
            let previous = records.insert(key(1, sequence), record(10_000 + sequence));
            assert_eq!(previous, Some(record(sequence)));
            assert_eq!(
                records.get(&key(1, sequence).0, &key(1, sequence).1),
                Some(&record(10_000 + sequence))
            );
            assert_eq!(
                copy.get(&key(1, sequence).0, &key(1, sequence).1),
                Some(&record(sequence))
            );
        }
        assert_eq!(records.len(), CHUNK + 5);
        assert_eq!(records.iter().count(), CHUNK + 5);
        assert_ne!(records, copy);
    }

    #[test]
    fn equality_and_digest_do_not_depend_on_the_order_decided() {
        let forward: DebitRecords = (0..2_100)
            .map(|sequence| (key(sequence % 5, sequence), record(sequence)))
            .collect();
        let backward: DebitRecords = (0..2_100)
            .rev()
            .map(|sequence| (key(sequence % 5, sequence), record(sequence)))
            .collect();
        assert_eq!(forward, backward);
        assert_eq!(digest(&forward), digest(&backward));
        let mut changed = backward.clone();
        changed.insert(key(0, 0), record(1));
        assert_ne!(forward, changed);
        assert_ne!(digest(&forward), digest(&changed));
        let fewer: DebitRecords = (0..2_099)
            .map(|sequence| (key(sequence % 5, sequence), record(sequence)))
            .collect();
        assert_ne!(forward, fewer);
        assert_ne!(digest(&forward), digest(&fewer));
    }
}
