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
//! | `raft_state` | `u32::MAX` ++ `NODE_RECORD` | the node's own record (server-defined bytes) |
//! | `snapshot` | shard ++ `SNAPSHOT_META` | bincode `StoredSnapshotMeta` of the current snapshot |
//! | `snapshot` | shard ++ `SNAPSHOT_DATA` | written by older versions only: the current snapshot's bytes, read when its file is absent and deleted at the next snapshot |
//!
//! The current snapshot's bytes (bincode format version `u32`, then a bincode `SnapshotPayload`)
//! are the file `snapshots/<shard>/<sequence>.snapshot` inside the database directory
//! (`snapshot_files.rs`), named by the meta's `sequence`.

use ledger_raft::ShardId;

/// Raft log entries of every shard.
pub(crate) const CF_RAFT_LOG: &str = "raft_log";
/// Vote, committed and last purged log id of every shard.
pub(crate) const CF_RAFT_STATE: &str = "raft_state";
/// The current snapshot of every shard: the checkpoint of its state machine.
pub(crate) const CF_SNAPSHOT: &str = "snapshot";
/// The family that held every shard's applied state, written on every apply, before the state
/// machine was checkpointed by snapshots only. Dropped when found (`NodeStorage::open`).
pub(crate) const CF_LEGACY_LEDGER: &str = "ledger";

pub(crate) const COLUMN_FAMILIES: [&str; 3] = [CF_RAFT_LOG, CF_RAFT_STATE, CF_SNAPSHOT];

/// Tags of the `raft_state` column family. Stored on disk: never renumber.
pub(crate) const RAFT_STATE_VOTE: u8 = 1;
pub(crate) const RAFT_STATE_COMMITTED: u8 = 2;
pub(crate) const RAFT_STATE_LAST_PURGED: u8 = 3;
/// Present from the moment a replica is first opened until it is deleted: a replica that has
/// stored nothing else yet (no vote, no entry) is still one this node hosts after a restart.
pub(crate) const RAFT_STATE_HOSTED: u8 = 4;

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

pub(crate) fn snapshot_key(shard: ShardId, tag: u8) -> [u8; 5] {
    tagged_key(shard, tag)
}

fn tagged_key(shard: ShardId, tag: u8) -> [u8; 5] {
    let mut key = [0u8; 5];
    key[..4].copy_from_slice(&shard.to_be_bytes());
    key[4] = tag;
    key
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
                raft_state_key(shard, RAFT_STATE_HOSTED).to_vec(),
                snapshot_key(shard, SNAPSHOT_META).to_vec(),
                snapshot_key(shard, SNAPSHOT_DATA).to_vec(),
            ];
            for key in keys {
                assert!(start.as_slice() <= key.as_slice() && key.as_slice() < end.as_slice());
            }
        }
    }
}
