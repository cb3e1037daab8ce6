//! The Raft log store of one shard (`RaftLogStorage`), in the node's `raft_log` and `raft_state`
//! column families.
//!
//! **Invariant:** an append is acknowledged (its `LogFlushed` callback completed with `Ok`) only
//! after the WAL holding its entries is fsynced, by the node's group-commit syncer.
//! **Invariant:** the vote is fsynced before `save_vote` returns.
//! **Invariant:** the log has no holes: entries are written in index order, truncation deletes a
//! suffix and purging a prefix, each in one atomic write batch.
//!
//! Blocking choice: appends (one unsynced write batch) and reads of log entries run inline on
//! the calling task, because they take microseconds and a hand-off to the blocking pool cost more
//! than the work (measured in benches/RESULTS.md); the vote (fsynced), truncation and purging
//! run on tokio's blocking pool. Point reads of the vote and the committed log id, read once when
//! a Raft group starts, run inline. The log state is kept in memory, so `get_log_state` does no
//! I/O.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use ledger_raft::{Entry, LedgerLogId, NodeId, ShardId, TypeConfig};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError, Vote};
use parking_lot::Mutex;
use rocksdb::{Direction, WriteBatch};

use crate::codec::{decode, encode};
use crate::error::StorageError;
use crate::keys::*;
use crate::log_tail::{LogTail, TailLimits};
use crate::node::{run_blocking, run_inline, Durability, ShardHandle};

type RaftStorageError = openraft::StorageError<NodeId>;

/// Where a shard's log starts and ends, kept in memory (loaded when the shard opens).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LogPointers {
    pub(crate) last_purged_log_id: Option<LedgerLogId>,
    /// The id of the last entry present in the log; `None` if there is none.
    pub(crate) last_present_log_id: Option<LedgerLogId>,
}

/// The Raft log of one shard. Created by `NodeStorage::open_shard`; hand it to
/// `openraft::Raft::new`.
pub struct LogStore {
    shard: Arc<ShardHandle>,
    pointers: LogPointers,
    /// The newest entries, shared with the readers (see [`crate::log_tail`]).
    tail: Arc<Mutex<LogTail>>,
}

/// A reader of one shard's log, used by openraft's replication tasks concurrently with the
/// store's writes.
#[derive(Clone)]
pub struct LogReader {
    shard: Arc<ShardHandle>,
    tail: Arc<Mutex<LogTail>>,
}

impl LogStore {
    pub(crate) fn new(shard: Arc<ShardHandle>, pointers: LogPointers) -> LogStore {
        LogStore {
            shard,
            pointers,
            tail: Arc::new(Mutex::new(LogTail::new(TailLimits::default()))),
        }
    }

    /// The shard this log belongs to.
    pub fn shard(&self) -> ShardId {
        self.shard.shard
    }

    fn reader(&self) -> LogReader {
        LogReader {
            shard: Arc::clone(&self.shard),
            tail: Arc::clone(&self.tail),
        }
    }

    fn read_raft_state<T: serde::de::DeserializeOwned>(
        &self,
        tag: u8,
        what: &'static str,
    ) -> Result<Option<T>, StorageError> {
        let shard = self.shard.shard;
        self.shard
            .node
            .get(CF_RAFT_STATE, &raft_state_key(shard, tag), shard)?
            .map(|bytes| decode(&bytes, what, shard))
            .transpose()
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        read_entries(&self.shard, &self.tail, range).await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        read_entries(&self.shard, &self.tail, range).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        let LogPointers {
            last_purged_log_id,
            last_present_log_id,
        } = self.pointers;
        Ok(LogState {
            last_purged_log_id,
            // With no entry left, openraft expects the last purged id here.
            last_log_id: last_present_log_id.max(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        self.reader()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), RaftStorageError> {
        let shard = Arc::clone(&self.shard);
        let vote = *vote;
        run_blocking(self.shard.shard, move || {
            let mut batch = WriteBatch::default();
            batch.put_cf(
                shard.node.cf(CF_RAFT_STATE),
                raft_state_key(shard.shard, RAFT_STATE_VOTE),
                encode(&vote, "vote", shard.shard)?,
            );
            // A vote must never be forgotten (a node could vote twice in a term): fsynced now.
            // The sync also covers every earlier unsynced write, keeping the I/O order openraft
            // requires.
            shard
                .node
                .write(batch, Durability::Synced, CF_RAFT_STATE, shard.shard)
        })
        .await
        .map_err(|error| StorageIOError::write_vote(&error).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, RaftStorageError> {
        self.read_raft_state(RAFT_STATE_VOTE, "vote")
            .map_err(|error| StorageIOError::read_vote(&error).into())
    }

    async fn save_committed(
        &mut self,
        committed: Option<LedgerLogId>,
    ) -> Result<(), RaftStorageError> {
        let shard = Arc::clone(&self.shard);
        run_blocking(self.shard.shard, move || {
            let mut batch = WriteBatch::default();
            let key = raft_state_key(shard.shard, RAFT_STATE_COMMITTED);
            let family = shard.node.cf(CF_RAFT_STATE);
            match committed {
                Some(log_id) => {
                    batch.put_cf(family, key, encode(&log_id, "committed", shard.shard)?)
                }
                None => batch.delete_cf(family, key),
            }
            // Not synced: `committed` only lets a restarting node re-apply up to it from its own
            // log sooner. If it is lost, the node learns it again from the leader.
            shard
                .node
                .write(batch, Durability::Buffered, CF_RAFT_STATE, shard.shard)
        })
        .await
        .map_err(|error| StorageIOError::write(&error).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LedgerLogId>, RaftStorageError> {
        self.read_raft_state(RAFT_STATE_COMMITTED, "committed")
            .map_err(|error| StorageIOError::read(&error).into())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let last_log_id = entries.last().map(|entry| entry.log_id);
        let shard = Arc::clone(&self.shard);
        let tail = Arc::clone(&self.tail);
        run_inline(move || {
            let family = shard.node.cf(CF_RAFT_LOG);
            let mut batch = WriteBatch::default();
            for entry in &entries {
                batch.put_cf(
                    family,
                    log_key(shard.shard, entry.log_id.index),
                    encode(entry, "log entry", shard.shard)?,
                );
            }
            // Not synced here: the entries must be readable when `append` returns (openraft may
            // replicate them before they are durable), but durability is acknowledged later,
            // through the callback, by the per-node syncer. An empty append queues its callback
            // too, so that callbacks of one shard complete in the order of their appends.
            if !entries.is_empty() {
                shard
                    .node
                    .write(batch, Durability::Buffered, CF_RAFT_LOG, shard.shard)?;
                tail.lock().append(&entries);
            }
            shard.node.syncer_shared.enqueue(callback);
            Ok(())
        })
        .map_err(|error| {
            RaftStorageError::from(match last_log_id {
                Some(log_id) => StorageIOError::write_log_entry(log_id, &error),
                None => StorageIOError::write_logs(&error),
            })
        })?;
        if last_log_id.is_some() {
            self.pointers.last_present_log_id = last_log_id;
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LedgerLogId) -> Result<(), RaftStorageError> {
        self.tail.lock().truncate(log_id.index);
        let shard = Arc::clone(&self.shard);
        let new_last_present = run_blocking(self.shard.shard, move || {
            let (_, shard_end) = shard_range(shard.shard);
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(
                shard.node.cf(CF_RAFT_LOG),
                log_key(shard.shard, log_id.index).as_slice(),
                shard_end.as_slice(),
            );
            // Not synced, and that is safe: if a crash loses the truncation, the log is back to
            // its state before it, a state this node already had, and nothing acknowledged since
            // relied on it: the next append's callback completes only after a WAL sync, and the
            // WAL being one sequential file, that sync makes this earlier truncation durable too.
            shard
                .node
                .write(batch, Durability::Buffered, CF_RAFT_LOG, shard.shard)?;
            last_entry_before(&shard, log_id.index)
        })
        .await
        .map_err(|error| {
            self.tail.lock().clear();
            StorageIOError::write_log_entry(log_id, &error)
        })?;
        self.pointers.last_present_log_id = new_last_present;
        Ok(())
    }

    async fn purge(&mut self, log_id: LedgerLogId) -> Result<(), RaftStorageError> {
        self.tail.lock().purge(log_id.index);
        let shard = Arc::clone(&self.shard);
        run_blocking(self.shard.shard, move || {
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(
                shard.node.cf(CF_RAFT_LOG),
                log_key(shard.shard, 0).as_slice(),
                log_key_after(shard.shard, log_id.index).as_slice(),
            );
            batch.put_cf(
                shard.node.cf(CF_RAFT_STATE),
                raft_state_key(shard.shard, RAFT_STATE_LAST_PURGED),
                encode(&log_id, "last purged log id", shard.shard)?,
            );
            // Not synced, and that is safe: purge only removes entries that are applied and
            // covered by a snapshot. If a crash loses it, those entries come back and are purged
            // again; the deletion and `last_purged` are one batch, so they come back together.
            // The state machine writes that made them redundant precede this write in the WAL, so
            // they are durable whenever the purge is.
            shard
                .node
                .write(batch, Durability::Buffered, CF_RAFT_LOG, shard.shard)
        })
        .await
        .map_err(|error| {
            self.tail.lock().clear();
            StorageIOError::write_log_entry(log_id, &error)
        })?;
        self.pointers.last_purged_log_id = Some(log_id);
        if self.pointers.last_present_log_id <= Some(log_id) {
            self.pointers.last_present_log_id = None;
        }
        Ok(())
    }
}

/// The id of the entry just before `index`, if it is still in the log.
fn last_entry_before(shard: &ShardHandle, index: u64) -> Result<Option<LedgerLogId>, StorageError> {
    let Some(previous) = index.checked_sub(1) else {
        return Ok(None);
    };
    shard
        .node
        .get(CF_RAFT_LOG, &log_key(shard.shard, previous), shard.shard)?
        .map(|bytes| decode::<Entry>(&bytes, "log entry", shard.shard).map(|entry| entry.log_id))
        .transpose()
}

async fn read_entries<RB: RangeBounds<u64>>(
    shard: &Arc<ShardHandle>,
    tail: &Mutex<LogTail>,
    range: RB,
) -> Result<Vec<Entry>, RaftStorageError> {
    let start = match range.start_bound() {
        Bound::Included(&index) => index,
        Bound::Excluded(&index) => index.saturating_add(1),
        Bound::Unbounded => 0,
    };
    // `None`: up to the end of the log.
    let end = match range.end_bound() {
        Bound::Included(&index) => index.checked_add(1),
        Bound::Excluded(&index) => Some(index),
        Bound::Unbounded => None,
    };
    if end.is_some_and(|end| end <= start) {
        return Ok(Vec::new());
    }
    if let Some(entries) = end.and_then(|end| tail.lock().get(start, end)) {
        return Ok(entries);
    }
    let shard = Arc::clone(shard);
    run_inline(move || {
        let start_key = log_key(shard.shard, start);
        let end_key = match end {
            Some(end) => log_key(shard.shard, end),
            None => log_key(shard.shard + 1, 0),
        };
        let mut entries = Vec::new();
        shard.node.scan(
            CF_RAFT_LOG,
            &start_key,
            &end_key,
            Direction::Forward,
            shard.shard,
            |key, value| {
                let entry: Entry = decode(value, "log entry", shard.shard)?;
                if log_index_of_key(key) != Some(entry.log_id.index) {
                    return Err(StorageError::Corrupt {
                        what: "log entry",
                        shard: shard.shard,
                        detail: format!("key {key:?} holds entry {}", entry.log_id),
                    });
                }
                entries.push(entry);
                Ok(true)
            },
        )?;
        Ok(entries)
    })
    .map_err(|error| StorageIOError::read_log_at_index(start, &error).into())
}
