//! The storage error type of this crate.
//!
//! `NodeStorage::open` and `NodeStorage::open_shard` return it directly. Inside the openraft
//! trait implementations it is wrapped into `openraft::StorageError` with the subject and verb of
//! the operation that failed (see `raft_error` helpers in the store modules), which makes openraft
//! stop the shard's Raft group: a storage failure must stop the replica rather than let it go on
//! in an unknown state.

use std::path::PathBuf;

use ledger_raft::ShardId;

/// A failure of the node's storage. Every variant names what was being done and where.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// RocksDB refused to open the database directory.
    #[error("cannot open RocksDB at {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rocksdb::Error,
    },

    /// A checkpoint (backup) of the database could not be written.
    #[error("cannot write a RocksDB checkpoint to {path}: {source}")]
    Checkpoint {
        path: PathBuf,
        #[source]
        source: rocksdb::Error,
    },

    /// A snapshot file could not be written, read, renamed or deleted.
    #[error("{action} snapshot file {path} failed: {source}")]
    SnapshotFile {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A RocksDB read or write failed.
    #[error(
        "RocksDB {operation} failed on column family {column_family} (shard {shard}): {source}"
    )]
    RocksDb {
        operation: &'static str,
        column_family: &'static str,
        shard: ShardId,
        #[source]
        source: rocksdb::Error,
    },

    /// A value could not be encoded with bincode (a bug: every stored type is serializable).
    #[error("cannot encode {what} for shard {shard}: {source}")]
    Encode {
        what: &'static str,
        shard: ShardId,
        #[source]
        source: bincode::error::EncodeError,
    },

    /// A stored value could not be decoded: the database is corrupt or was written by an
    /// incompatible version.
    #[error("cannot decode {what} of shard {shard}: {source}")]
    Decode {
        what: &'static str,
        shard: ShardId,
        #[source]
        source: bincode::error::DecodeError,
    },

    /// The stored data breaks an invariant of the key layout or of the Raft log.
    #[error("corrupt {what} of shard {shard}: {detail}")]
    Corrupt {
        what: &'static str,
        shard: ShardId,
        detail: String,
    },

    /// The shard id cannot be stored in the key layout (`u32::MAX` is reserved).
    #[error("shard id {shard} is out of range (largest supported is {shard_id_max})")]
    ShardIdOutOfRange {
        shard: ShardId,
        shard_id_max: ShardId,
    },

    /// `open_shard` was called for a shard whose stores are still alive: two log stores for one
    /// shard would each believe they own its log.
    #[error("shard {shard} is already open on this node")]
    ShardAlreadyOpen { shard: ShardId },

    /// The per-node WAL syncer thread could not be started.
    #[error("cannot start the WAL syncer thread: {source}")]
    SpawnSyncer {
        #[source]
        source: std::io::Error,
    },

    /// A blocking storage task panicked or was cancelled.
    #[error("blocking storage task for shard {shard} did not complete: {detail}")]
    BlockingTask { shard: ShardId, detail: String },
}
