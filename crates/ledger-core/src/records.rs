//! The debit records of a shard: every debit decision, keyed by (account id, idempotency key).
//!
//! The map every debit searches and then inserts into, and the one that grows with every debit
//! ever decided. It is split into `PARTITIONS` standard B-trees, each behind an `Arc`, chosen by a
//! fixed hash of the key:
//!
//! - **Cloning is O(`PARTITIONS`)**: a snapshot's copy shares every partition. A write to a
//!   partition the copy still shares clones that partition alone (`Arc::make_mut`), a
//!   thousandth of the records, so the copying a snapshot causes is spread over the writes that
//!   follow it in small pieces, instead of one walk of millions of records while applies wait.
//! - **Searches stay cheap**: a `BTreeMap` keeps its keys apart from its values, so a search
//!   compares keys without striding over records, and each partition is small. (A persistent
//!   B-tree, `imbl::OrdMap`, stores pairs inline; it made a debit's apply about a third slower.)
//!
//! Iteration goes partition by partition, each in key order: the same order on every replica
//! that holds the same records, whatever order they were inserted in.

use std::collections::BTreeMap;
use std::sync::Arc;

use xxhash_rust::xxh3::Xxh3;

use crate::ledger::RecordKey;
use crate::types::DebitRecord;

/// Partitions of the debit records. A million records make partitions of about a thousand,
/// which one write clones in well under a millisecond.
const PARTITIONS: usize = 1024;

type Partition = BTreeMap<(String, String), DebitRecord>;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct DebitRecords {
    partitions: Vec<Arc<Partition>>,
}

impl Default for DebitRecords {
    fn default() -> Self {
        DebitRecords {
            partitions: (0..PARTITIONS).map(|_| Arc::default()).collect(),
        }
    }
}

/// The partition of a key: XXH3 with a fixed seed over both parts, so every replica and every
/// build agrees.
fn partition_of(account_id: &str, idempotency_key: &str) -> usize {
    let mut hasher = Xxh3::new();
    hasher.update(account_id.as_bytes());
    hasher.update(&[0xff]);
    hasher.update(idempotency_key.as_bytes());
    // The modulus is below `usize::MAX`, so the narrowing keeps the value.
    (hasher.digest() % PARTITIONS as u64) as usize
}

impl DebitRecords {
    pub(crate) fn get(&self, account_id: &str, idempotency_key: &str) -> Option<&DebitRecord> {
        self.partitions[partition_of(account_id, idempotency_key)]
            .get(&(account_id, idempotency_key) as &dyn RecordKey)
    }

    pub(crate) fn insert(
        &mut self,
        key: (String, String),
        record: DebitRecord,
    ) -> Option<DebitRecord> {
        let partition = &mut self.partitions[partition_of(&key.0, &key.1)];
        Arc::make_mut(partition).insert(key, record)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&(String, String), &DebitRecord)> {
        self.partitions
            .iter()
            .flat_map(|partition| partition.iter())
    }
}

impl FromIterator<((String, String), DebitRecord)> for DebitRecords {
    fn from_iter<I: IntoIterator<Item = ((String, String), DebitRecord)>>(entries: I) -> Self {
        let mut records = DebitRecords::default();
        for (key, record) in entries {
            records.insert(key, record);
        }
        records
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Charge, Rejection};

    fn record(decided_at_ms: u64) -> DebitRecord {
        DebitRecord {
            charge: Charge::Credits(1),
            result: Err(Rejection::AccountNotFound),
            decided_at_ms,
        }
    }

    fn key(index: u64) -> (String, String) {
        (format!("account-{}", index % 7), format!("key-{index}"))
    }

    #[test]
    fn a_clone_is_unchanged_by_writes_to_the_original_and_shares_what_was_not_written() {
        let mut records: DebitRecords = (0..5_000)
            .map(|index| (key(index), record(index)))
            .collect();
        let copy = records.clone();
        assert!(records
            .partitions
            .iter()
            .zip(&copy.partitions)
            .all(|(a, b)| Arc::ptr_eq(a, b)));

        assert_eq!(records.insert(key(5_000), record(5_000)), None);
        assert_eq!(records.insert(key(3), record(9)), Some(record(3)));

        assert_eq!(copy.get(&key(3).0, &key(3).1), Some(&record(3)));
        assert_eq!(copy.get(&key(5_000).0, &key(5_000).1), None);
        assert_eq!(records.get(&key(3).0, &key(3).1), Some(&record(9)));
        assert_eq!(
            records.get(&key(5_000).0, &key(5_000).1),
            Some(&record(5_000))
        );
        let unshared = records
            .partitions
            .iter()
            .zip(&copy.partitions)
            .filter(|(a, b)| !Arc::ptr_eq(a, b))
            .count();
        assert!(
            (1..=2).contains(&unshared),
            "two writes unshare at most two partitions, unshared {unshared}"
        );
    }

    #[test]
    fn the_same_records_inserted_in_any_order_iterate_alike_and_compare_equal() {
        let forward: DebitRecords = (0..2_000)
            .map(|index| (key(index), record(index)))
            .collect();
        let backward: DebitRecords = (0..2_000)
            .rev()
            .map(|index| (key(index), record(index)))
            .collect();
        assert_eq!(forward, backward);
        assert!(forward.iter().eq(backward.iter()));
        assert_eq!(forward.iter().count(), 2_000);
    }
}
