//! Group commit of Raft log appends: one thread per node makes the WAL durable for every shard.
//!
//! `LogStore::append` writes its entries without syncing (they are readable at once) and queues
//! its `LogFlushed` callback here. The syncer thread repeatedly takes *all* queued callbacks, of
//! all shards, calls `flush_wal(true)` once (an fsync of RocksDB's single write-ahead log), and
//! then completes every one of them. Under load many appends share one fsync; this is the group
//! commit that TiKV's raftstore does and that openraft 0.9 needs, since it waits for each flush
//! of a shard before that shard's next append.
//!
//! **Invariant:** a callback is completed with `Ok` only by a WAL sync that started after the
//! callback was queued, hence after its entries were written: RocksDB's WAL is one sequential
//! file, so that sync covers them (and every earlier write of any column family).
//!
//! **Invariant:** after one failed sync, every later sync fails too, without calling fsync
//! again. A failed fsync may have dropped dirty pages, and a later fsync that succeeds would not
//! bring them back ("fsyncgate"); the node must stop and recover from its disk instead.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use ledger_raft::TypeConfig;
use openraft::storage::LogFlushed;
use parking_lot::{Condvar, Mutex};
use rocksdb::DB;

use crate::error::StorageError;
use crate::fail_points::FailPoints;

/// Counters of the group commit, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogSyncStats {
    /// WAL syncs done (or failed) by the syncer thread.
    pub wal_syncs: u64,
    /// Append callbacks completed; `appends_completed / wal_syncs` is the group commit factor.
    pub appends_completed: u64,
}

/// State shared between the stores (producers) and the syncer thread (consumer).
pub(crate) struct SyncerShared {
    queue: Mutex<SyncQueue>,
    wakeup: Condvar,
    wal_syncs: AtomicU64,
    appends_completed: AtomicU64,
}

#[derive(Default)]
struct SyncQueue {
    pending: Vec<LogFlushed<TypeConfig>>,
    /// Set by a fail point: callbacks accumulate until resumed.
    paused: bool,
    shutting_down: bool,
}

impl SyncerShared {
    pub(crate) fn new() -> SyncerShared {
        SyncerShared {
            queue: Mutex::new(SyncQueue::default()),
            wakeup: Condvar::new(),
            wal_syncs: AtomicU64::new(0),
            appends_completed: AtomicU64::new(0),
        }
    }

    /// Queues a callback, to be completed by the next WAL sync. The caller must have written its
    /// entries before calling this.
    pub(crate) fn enqueue(&self, callback: LogFlushed<TypeConfig>) {
        let mut queue = self.queue.lock();
        queue.pending.push(callback);
        drop(queue);
        self.wakeup.notify_one();
    }

    pub(crate) fn pending_count(&self) -> usize {
        self.queue.lock().pending.len()
    }

    pub(crate) fn set_paused(&self, paused: bool) {
        self.queue.lock().paused = paused;
        self.wakeup.notify_one();
    }

    pub(crate) fn stats(&self) -> LogSyncStats {
        LogSyncStats {
            wal_syncs: self.wal_syncs.load(Ordering::Acquire),
            appends_completed: self.appends_completed.load(Ordering::Acquire),
        }
    }

    /// Blocks until there is work, then takes all of it; `None` once shut down and drained.
    /// On shutdown the queue is drained even if paused, so that no append waits forever.
    fn take_batch(&self) -> Option<Vec<LogFlushed<TypeConfig>>> {
        let mut queue = self.queue.lock();
        loop {
            if !queue.pending.is_empty() && (!queue.paused || queue.shutting_down) {
                return Some(std::mem::take(&mut queue.pending));
            }
            if queue.shutting_down {
                return None;
            }
            self.wakeup.wait(&mut queue);
        }
    }
}

/// The per-node syncer thread. Dropping it drains the queue (one last sync) and joins the thread.
pub(crate) struct WalSyncer {
    shared: Arc<SyncerShared>,
    thread: Option<JoinHandle<()>>,
}

impl WalSyncer {
    pub(crate) fn start(
        db: Arc<DB>,
        shared: Arc<SyncerShared>,
        fail_points: Arc<FailPoints>,
    ) -> Result<WalSyncer, StorageError> {
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("ledger-wal-sync".to_owned())
            .spawn(move || run_syncer(&db, &thread_shared, &fail_points))
            .map_err(|source| StorageError::SpawnSyncer { source })?;
        Ok(WalSyncer {
            shared,
            thread: Some(thread),
        })
    }
}

impl Drop for WalSyncer {
    fn drop(&mut self) {
        self.shared.queue.lock().shutting_down = true;
        self.shared.wakeup.notify_one();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the WAL syncer thread panicked");
            }
        }
    }
}

fn run_syncer(db: &DB, shared: &SyncerShared, fail_points: &FailPoints) {
    // The first failure, kept so that every later sync reports it (see the module invariant).
    let mut first_failure: Option<String> = None;
    while let Some(batch) = shared.take_batch() {
        let result = match &first_failure {
            Some(failure) => Err(format!("an earlier WAL sync failed: {failure}")),
            None => sync_wal(db, fail_points),
        };
        if let Err(failure) = &result {
            tracing::error!(
                error = %failure,
                appends = batch.len(),
                "WAL sync failed; the appends waiting on it fail"
            );
            first_failure.get_or_insert_with(|| failure.clone());
        }
        // Counted before the callbacks run, so that whoever is woken by a callback sees the
        // sync that completed it.
        shared.wal_syncs.fetch_add(1, Ordering::AcqRel);
        shared
            .appends_completed
            .fetch_add(batch.len() as u64, Ordering::AcqRel);
        for callback in batch {
            let completion = match &result {
                Ok(()) => Ok(()),
                Err(failure) => Err(io::Error::other(failure.clone())),
            };
            callback.log_io_completed(completion);
        }
    }
}

fn sync_wal(db: &DB, fail_points: &FailPoints) -> Result<(), String> {
    if fail_points.wal_sync_error_is_set() {
        return Err("fail point wal_sync_error".to_owned());
    }
    db.flush_wal(true).map_err(|error| error.to_string())
}
