//! The key layout of the node's RocksDB: column family names and the byte keys inside them.
//!
//! Every key starts with the shard id (`u32`, big endian), so one shard's data is one contiguous
//! key range in each column family: it can be iterated, and replaced with one `delete_range`, without
//! touching any other shard. Integers are big endian so that byte order is numeric order (log
//! indexes sort in log order).
//!
//! | column family | key | value |
//! |---|---|---|
//! | `raft_log` | shard ++ index (u64) | bincode `Entry` |
//! | `raft_state` | shard ++ tag (vote, committed, last purged) | bincode `Vote` / `LogId` |
//! | `ledger` | shard ++ `APPLIED_STATE` | bincode `AppliedState` |
//! | `ledger` | shard ++ `ACCOUNT` ++ len-prefixed account id | bincode `Account` |
//! | `ledger` | shard ++ `DEBIT_RECORD` ++ len-prefixed account id ++ len-prefixed key | bincode `DebitRecord` |
//! | `ledger` | shard ++ `GRANT_RECORD` ++ len-prefixed account id ++ len-prefixed grant id | bincode `GrantRecord` |
//! | `ledger` | shard ++ `RESERVATION` ++ len-prefixed account id ++ len-prefixed reservation id | bincode `Reservation` |
//! | `ledger` | shard ++ `JOURNAL` ++ len-prefixed account id ++ sequence (u64) | bincode `JournalEntry` |
//! | `ledger` | shard ++ `EVENT` ++ sequence (u64) | bincode `Event` |
//! | `ledger` | shard ++ `SHARD_META` | bincode `ShardMeta` (catalog, acknowledged events) |
//! | `raft_state` | `u32::MAX` ++ `NODE_RECORD` | the node's own record (server-defined bytes) |
//! | `snapshot` | shard ++ `SNAPSHOT_META` | bincode `StoredSnapshotMeta` of the current snapshot |
//! | `snapshot` | shard ++ `SNAPSHOT_DATA` | the current snapshot's bytes (bincode format version `u32`, then a bincode `SnapshotPayload`) |

use ledger_raft::ShardId;

/// Raft log entries of every shard.
pub(crate) const CF_RAFT_LOG: &str = "raft_log";
/// Vote, committed and last purged log id of every shard.
pub(crate) const CF_RAFT_STATE: &str = "raft_state";
/// The applied ledger of every shard: accounts, debit and grant records, and the applied state.
pub(crate) const CF_LEDGER: &str = "ledger";
/// The current snapshot of every shard.
pub(crate) const CF_SNAPSHOT: &str = "snapshot";

pub(crate) const COLUMN_FAMILIES: [&str; 4] = [CF_RAFT_LOG, CF_RAFT_STATE, CF_LEDGER, CF_SNAPSHOT];

/// Tags of the `raft_state` column family. Stored on disk: never renumber.
pub(crate) const RAFT_STATE_VOTE: u8 = 1;
pub(crate) const RAFT_STATE_COMMITTED: u8 = 2;
pub(crate) const RAFT_STATE_LAST_PURGED: u8 = 3;

/// Tags of the `ledger` column family. Stored on disk: never renumber.
pub(crate) const LEDGER_APPLIED_STATE: u8 = 0;
pub(crate) const LEDGER_ACCOUNT: u8 = 1;
pub(crate) const LEDGER_DEBIT_RECORD: u8 = 2;
pub(crate) const LEDGER_GRANT_RECORD: u8 = 3;
pub(crate) const LEDGER_RESERVATION: u8 = 4;
pub(crate) const LEDGER_JOURNAL: u8 = 5;
pub(crate) const LEDGER_EVENT: u8 = 6;
pub(crate) const LEDGER_SHARD_META: u8 = 7;

/// Tags of the `snapshot` column family. Stored on disk: never renumber.
pub(crate) const SNAPSHOT_META: u8 = 1;
pub(crate) const SNAPSHOT_DATA: u8 = 2;

/// The largest shard id the key layout supports. `u32::MAX` is excluded so that the exclusive
/// upper bound of every shard's range is simply the next shard's prefix.
pub(crate) const SHARD_ID_MAX: ShardId = ShardId::MAX - 1;

const SHARD_PREFIX_LENGTH: usize = 4;

/// The prefix of node-level keys: above every shard's range.
pub(crate) const NODE_RECORD_PREFIX: ShardId = ShardId::MAX;
/// Tag of the node's own record under `NODE_RECORD_PREFIX` in `raft_state`.
const NODE_RECORD: u8 = 1;

/// The key of the node's own record.
pub(crate) fn node_record_key() -> [u8; 5] {
    tagged_key(NODE_RECORD_PREFIX, NODE_RECORD)
}

/// The key of log entry `index` of `shard`.
pub(crate) fn log_key(shard: ShardId, index: u64) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..4].copy_from_slice(&shard.to_be_bytes());
    key[4..].copy_from_slice(&index.to_be_bytes());
    key
}

/// The exclusive upper bound of the log keys of `shard` with an index up to `index` inclusive.
pub(crate) fn log_key_after(shard: ShardId, index: u64) -> [u8; 12] {
    match index.checked_add(1) {
        Some(next) => log_key(shard, next),
        None => log_key(shard + 1, 0),
    }
}

/// The log index stored in a `raft_log` key, `None` if the key is not a log key.
pub(crate) fn log_index_of_key(key: &[u8]) -> Option<u64> {
    let index: [u8; 8] = key.get(SHARD_PREFIX_LENGTH..)?.try_into().ok()?;
    Some(u64::from_be_bytes(index))
}

/// `[start, end)` covering every key of `shard` in any column family.
pub(crate) fn shard_range(shard: ShardId) -> ([u8; 4], [u8; 4]) {
    debug_assert!(shard <= SHARD_ID_MAX);
    (shard.to_be_bytes(), (shard + 1).to_be_bytes())
}

pub(crate) fn raft_state_key(shard: ShardId, tag: u8) -> [u8; 5] {
    tagged_key(shard, tag)
}

pub(crate) fn applied_state_key(shard: ShardId) -> [u8; 5] {
    tagged_key(shard, LEDGER_APPLIED_STATE)
}

pub(crate) fn account_key(shard: ShardId, account_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(SHARD_PREFIX_LENGTH + 1 + 4 + account_id.len());
    key.extend_from_slice(&tagged_key(shard, LEDGER_ACCOUNT));
    push_length_prefixed(&mut key, account_id.as_bytes());
    key
}

pub(crate) fn debit_record_key(shard: ShardId, account_id: &str, idempotency_key: &str) -> Vec<u8> {
    let mut key =
        Vec::with_capacity(SHARD_PREFIX_LENGTH + 1 + 8 + account_id.len() + idempotency_key.len());
    key.extend_from_slice(&tagged_key(shard, LEDGER_DEBIT_RECORD));
    push_length_prefixed(&mut key, account_id.as_bytes());
    push_length_prefixed(&mut key, idempotency_key.as_bytes());
    key
}

pub(crate) fn grant_record_key(shard: ShardId, account_id: &str, grant_id: &str) -> Vec<u8> {
    let mut key =
        Vec::with_capacity(SHARD_PREFIX_LENGTH + 1 + 8 + account_id.len() + grant_id.len());
    key.extend_from_slice(&tagged_key(shard, LEDGER_GRANT_RECORD));
    push_length_prefixed(&mut key, account_id.as_bytes());
    push_length_prefixed(&mut key, grant_id.as_bytes());
    key
}

pub(crate) fn reservation_key(shard: ShardId, account_id: &str, reservation_id: &str) -> Vec<u8> {
    let mut key =
        Vec::with_capacity(SHARD_PREFIX_LENGTH + 1 + 8 + account_id.len() + reservation_id.len());
    key.extend_from_slice(&tagged_key(shard, LEDGER_RESERVATION));
    push_length_prefixed(&mut key, account_id.as_bytes());
    push_length_prefixed(&mut key, reservation_id.as_bytes());
    key
}

pub(crate) fn journal_key(shard: ShardId, account_id: &str, sequence: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(SHARD_PREFIX_LENGTH + 1 + 4 + account_id.len() + 8);
    key.extend_from_slice(&tagged_key(shard, LEDGER_JOURNAL));
    push_length_prefixed(&mut key, account_id.as_bytes());
    key.extend_from_slice(&sequence.to_be_bytes());
    key
}

pub(crate) fn event_key(shard: ShardId, sequence: u64) -> [u8; 13] {
    let mut key = [0u8; 13];
    key[..5].copy_from_slice(&tagged_key(shard, LEDGER_EVENT));
    key[5..].copy_from_slice(&sequence.to_be_bytes());
    key
}

pub(crate) fn shard_meta_key(shard: ShardId) -> [u8; 5] {
    tagged_key(shard, LEDGER_SHARD_META)
}

pub(crate) fn snapshot_key(shard: ShardId, tag: u8) -> [u8; 5] {
    tagged_key(shard, tag)
}

/// A key of the `ledger` column family, parsed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LedgerKey {
    AppliedState,
    Account {
        account_id: String,
    },
    DebitRecord {
        account_id: String,
        idempotency_key: String,
    },
    GrantRecord {
        account_id: String,
        grant_id: String,
    },
    Reservation {
        account_id: String,
        reservation_id: String,
    },
    Journal {
        account_id: String,
        sequence: u64,
    },
    Event {
        sequence: u64,
    },
    ShardMeta,
}

/// Parses a `ledger` key of any shard; `None` if it is malformed (a corrupt database).
pub(crate) fn parse_ledger_key(key: &[u8]) -> Option<LedgerKey> {
    let (&tag, mut rest) = key.get(SHARD_PREFIX_LENGTH..)?.split_first()?;
    let parsed = match tag {
        LEDGER_APPLIED_STATE => LedgerKey::AppliedState,
        LEDGER_ACCOUNT => LedgerKey::Account {
            account_id: take_length_prefixed(&mut rest)?,
        },
        LEDGER_DEBIT_RECORD => LedgerKey::DebitRecord {
            account_id: take_length_prefixed(&mut rest)?,
            idempotency_key: take_length_prefixed(&mut rest)?,
        },
        LEDGER_GRANT_RECORD => LedgerKey::GrantRecord {
            account_id: take_length_prefixed(&mut rest)?,
            grant_id: take_length_prefixed(&mut rest)?,
        },
        LEDGER_RESERVATION => LedgerKey::Reservation {
            account_id: take_length_prefixed(&mut rest)?,
            reservation_id: take_length_prefixed(&mut rest)?,
        },
        LEDGER_JOURNAL => LedgerKey::Journal {
            account_id: take_length_prefixed(&mut rest)?,
            sequence: take_u64(&mut rest)?,
        },
        LEDGER_EVENT => LedgerKey::Event {
            sequence: take_u64(&mut rest)?,
        },
        LEDGER_SHARD_META => LedgerKey::ShardMeta,
        _ => return None,
    };
    rest.is_empty().then_some(parsed)
}

fn tagged_key(shard: ShardId, tag: u8) -> [u8; 5] {
    let mut key = [0u8; 5];
    key[..4].copy_from_slice(&shard.to_be_bytes());
    key[4] = tag;
    key
}

/// Appends `bytes` preceded by its length (`u32`, big endian). The length prefix keeps a
/// composite key unambiguous: ("ab", "c") and ("a", "bc") encode differently.
fn push_length_prefixed(key: &mut Vec<u8>, bytes: &[u8]) {
    let length = u32::try_from(bytes.len()).expect("identifiers are far shorter than 4 GiB");
    key.extend_from_slice(&length.to_be_bytes());
    key.extend_from_slice(bytes);
}

fn take_u64(rest: &mut &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = rest.get(..8)?.try_into().ok()?;
    *rest = &rest[8..];
    Some(u64::from_be_bytes(bytes))
}

fn take_length_prefixed(rest: &mut &[u8]) -> Option<String> {
    let length_bytes: [u8; 4] = rest.get(..4)?.try_into().ok()?;
    let length = usize::try_from(u32::from_be_bytes(length_bytes)).ok()?;
    let bytes = rest.get(4..4 + length)?;
    let text = std::str::from_utf8(bytes).ok()?.to_owned();
    *rest = &rest[4 + length..];
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_by_shard_then_index() {
        let keys = [
            log_key(0, 0),
            log_key(0, 1),
            log_key(0, 256),
            log_key(0, u64::MAX),
            log_key(1, 0),
            log_key(1, 7),
        ];
        assert!(keys.windows(2).all(|pair| pair[0] < pair[1]));
        assert_eq!(log_index_of_key(&log_key(3, 42)), Some(42));
        assert_eq!(log_key_after(2, 9), log_key(2, 10));
        assert_eq!(log_key_after(2, u64::MAX), log_key(3, 0));
    }

    #[test]
    fn every_key_of_a_shard_lies_in_its_range_and_no_other() {
        for shard in [0, 1, 255, 256, SHARD_ID_MAX] {
            let (start, end) = shard_range(shard);
            let keys: Vec<Vec<u8>> = vec![
                log_key(shard, 0).to_vec(),
                log_key(shard, u64::MAX).to_vec(),
                raft_state_key(shard, RAFT_STATE_LAST_PURGED).to_vec(),
                applied_state_key(shard).to_vec(),
                account_key(shard, "acct"),
                debit_record_key(shard, "acct", "key"),
                grant_record_key(shard, "acct", "grant"),
                reservation_key(shard, "acct", "hold"),
                journal_key(shard, "acct", u64::MAX),
                event_key(shard, u64::MAX).to_vec(),
                shard_meta_key(shard).to_vec(),
                snapshot_key(shard, SNAPSHOT_META).to_vec(),
                snapshot_key(shard, SNAPSHOT_DATA).to_vec(),
            ];
            for key in keys {
                assert!(start.as_slice() <= key.as_slice() && key.as_slice() < end.as_slice());
            }
        }
    }

    #[test]
    fn ledger_keys_round_trip_and_stay_unambiguous() {
        let cases = [
            (
                account_key(5, "acct-1"),
                LedgerKey::Account {
                    account_id: "acct-1".into(),
                },
            ),
            (
                debit_record_key(5, "ab", "c"),
                LedgerKey::DebitRecord {
                    account_id: "ab".into(),
                    idempotency_key: "c".into(),
                },
            ),
            (
                debit_record_key(5, "a", "bc"),
                LedgerKey::DebitRecord {
                    account_id: "a".into(),
                    idempotency_key: "bc".into(),
                },
            ),
            (
                grant_record_key(5, "ab", "c"),
                LedgerKey::GrantRecord {
                    account_id: "ab".into(),
                    grant_id: "c".into(),
                },
            ),
            (
                grant_record_key(5, "a", "bc"),
                LedgerKey::GrantRecord {
                    account_id: "a".into(),
                    grant_id: "bc".into(),
                },
            ),
            (applied_state_key(5).to_vec(), LedgerKey::AppliedState),
            (
                reservation_key(5, "a", "bc"),
                LedgerKey::Reservation {
                    account_id: "a".into(),
                    reservation_id: "bc".into(),
                },
            ),
            (
                journal_key(5, "acct", 258),
                LedgerKey::Journal {
                    account_id: "acct".into(),
                    sequence: 258,
                },
            ),
            (event_key(5, 7).to_vec(), LedgerKey::Event { sequence: 7 }),
            (shard_meta_key(5).to_vec(), LedgerKey::ShardMeta),
        ];
        for (key, expected) in cases {
            assert_eq!(parse_ledger_key(&key), Some(expected));
        }
        assert_ne!(
            debit_record_key(5, "ab", "c"),
            debit_record_key(5, "a", "bc")
        );
        // The same pair of identifiers as a debit key and as a grant id are different keys.
        assert_ne!(
            debit_record_key(5, "acct", "id"),
            grant_record_key(5, "acct", "id")
        );
    }

    #[test]
    fn malformed_ledger_keys_are_rejected() {
        let mut truncated = account_key(1, "acct");
        truncated.pop();
        let mut trailing = account_key(1, "acct");
        trailing.push(0);
        let unknown_tag = tagged_key(1, 9).to_vec();
        for key in [truncated, trailing, unknown_tag, vec![0, 0, 1]] {
            assert_eq!(parse_ledger_key(&key), None, "{key:?}");
        }
    }
}
