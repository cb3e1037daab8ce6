//! The node's one RocksDB: opening it, the WAL syncer, and opening the stores of each shard.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ledger_raft::{Entry, LedgerLogId, ShardId, SharedShardState};
use parking_lot::{Mutex, RwLock};
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, Direction, IteratorMode, Options,
    ReadOptions, WriteBatch, WriteOptions, DB,
};

use crate::codec::decode;
use crate::error::StorageError;
use crate::fail_points::FailPoints;
use crate::keys::*;
use crate::log_store::{LogPointers, LogStore};
use crate::snapshot_files::SnapshotFiles;
use crate::state_machine::{load_state, SnapshotSlot, StateMachineStore};
use crate::syncer::{LogSyncStats, SyncerShared, WalSyncer};

/// The storage of one node: one RocksDB holding the Raft logs and state machines of all the
/// shards it hosts, and the syncer thread that makes their appends durable together.
///
/// Cheap to clone (a shared handle). The database closes when the last clone and the last store
/// opened from it are dropped.
#[derive(Clone)]
pub struct NodeStorage {
    node: Arc<NodeInner>,
}

/// Whether a write must be on disk when it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Durability {
    /// In the WAL (readable, survives a process crash) but not fsynced: a later sync or the WAL
    /// order makes it durable, see the callers' comments.
    Buffered,
    /// fsynced before the write returns.
    Synced,
}

pub(crate) struct NodeInner {
    // Declared first so that it is dropped first: its drop drains the queue and joins the thread,
    // which holds the last other reference to `db`.
    _syncer: WalSyncer,
    pub(crate) db: Arc<DB>,
    pub(crate) syncer_shared: Arc<SyncerShared>,
    pub(crate) fail_points: Arc<FailPoints>,
    /// The bytes of every shard's current snapshot (its meta is in the `snapshot` family).
    pub(crate) snapshot_files: SnapshotFiles,
    open_shards: Mutex<BTreeSet<ShardId>>,
    path: PathBuf,
}

/// What a shard's stores share: the node, the shard id, and the claim on that shard, released
/// when the last store of the shard is dropped.
pub(crate) struct ShardHandle {
    pub(crate) node: Arc<NodeInner>,
    pub(crate) shard: ShardId,
}

impl Drop for ShardHandle {
    fn drop(&mut self) {
        self.node.open_shards.lock().remove(&self.shard);
    }
}

impl NodeStorage {
    /// Opens (creating if needed) the node's database at `path` and starts its WAL syncer.
    pub fn open(path: impl AsRef<Path>) -> Result<NodeStorage, StorageError> {
        let path = path.as_ref().to_path_buf();
        let mut db_options = Options::default();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        // Writes go to the WAL file at once (a process crash loses nothing); only the fsync is
        // deferred to the syncer. `manual_wal_flush` stays off for that reason.
        db_options.set_manual_wal_flush(false);
        let column_families = COLUMN_FAMILIES.iter().map(|name| {
            let mut family_options = Options::default();
            family_options.set_compression_type(DBCompressionType::Lz4);
            ColumnFamilyDescriptor::new(*name, family_options)
        });
        // A database written before the state machine was checkpointed by snapshots only has a
        // `ledger` family (the applied state, written on every apply). Nothing reads it now: a
        // shard opens from its snapshot and the log after it, which openraft never purges past
        // a snapshot. It is opened (RocksDB opens every family or none) and dropped.
        let legacy_family = DB::list_cf(&db_options, &path)
            .unwrap_or_default()
            .into_iter()
            .find(|name| name.as_str() == CF_LEGACY_LEDGER);
        let legacy = legacy_family
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(name.as_str(), Options::default()));
        let open_error = |source| StorageError::Open {
            path: path.clone(),
            source,
        };
        let mut db = DB::open_cf_descriptors(&db_options, &path, column_families.chain(legacy))
            .map_err(open_error)?;
        if legacy_family.is_some() {
            db.drop_cf(CF_LEGACY_LEDGER).map_err(open_error)?;
            tracing::info!(path = %path.display(), "dropped the legacy `ledger` column family");
        }
        let db = Arc::new(db);
        let syncer_shared = Arc::new(SyncerShared::new());
        let fail_points = Arc::new(FailPoints::new(Arc::clone(&syncer_shared)));
        let syncer = WalSyncer::start(
            Arc::clone(&db),
            Arc::clone(&syncer_shared),
            Arc::clone(&fail_points),
        )?;
        tracing::info!(path = %path.display(), "node storage opened");
        Ok(NodeStorage {
            node: Arc::new(NodeInner {
                _syncer: syncer,
                db,
                syncer_shared,
                fail_points,
                snapshot_files: SnapshotFiles::new(&path),
                open_shards: Mutex::new(BTreeSet::new()),
                path,
            }),
        })
    }

    /// Opens the log store and the state machine store of `shard`, loading the state of its
    /// current snapshot into the returned `SharedShardState` (which the state machine store
    /// writes and readers share). openraft re-applies the committed log after the snapshot when
    /// the group starts (`openraft::StorageHelper::get_initial_state`).
    ///
    /// Blocking: it reads and decodes the shard's snapshot. From async code call it inside
    /// `tokio::task::spawn_blocking`. A shard can be open once at a time; it can be opened again
    /// after both of its stores (and their readers and snapshot builders) are dropped.
    pub fn open_shard(
        &self,
        shard: ShardId,
    ) -> Result<(LogStore, StateMachineStore, SharedShardState), StorageError> {
        // From here on, dropping the handle (also on an error below) releases the claim.
        let handle = Arc::new(self.claim_shard(shard)?);
        mark_hosted(&handle)?;
        let log_pointers = load_log_pointers(&handle)?;
        let snapshot_slot = SnapshotSlot::load(&handle)?;
        let shard_state = load_state(&handle)?;
        tracing::info!(
            shard,
            last_purged = ?log_pointers.last_purged_log_id,
            last_log = ?log_pointers.last_present_log_id,
            last_applied = ?shard_state.last_applied,
            accounts = shard_state.ledger.accounts().count(),
            "shard storage opened"
        );
        let shared_state: SharedShardState = Arc::new(RwLock::new(shard_state));
        let log_store = LogStore::new(Arc::clone(&handle), log_pointers);
        let state_machine =
            StateMachineStore::new(handle, Arc::clone(&shared_state), Arc::new(snapshot_slot));
        Ok((log_store, state_machine, shared_state))
    }

    /// Claims `shard` for this process (one open or delete at a time); the claim ends when the
    /// returned handle is dropped.
    fn claim_shard(&self, shard: ShardId) -> Result<ShardHandle, StorageError> {
        if shard > SHARD_ID_MAX {
            return Err(StorageError::ShardIdOutOfRange {
                shard,
                shard_id_max: SHARD_ID_MAX,
            });
        }
        if !self.node.open_shards.lock().insert(shard) {
            return Err(StorageError::ShardAlreadyOpen { shard });
        }
        Ok(ShardHandle {
            node: Arc::clone(&self.node),
            shard,
        })
    }

    /// Deletes every key of `shard` (log, vote, applied state, snapshot meta) in one synced
    /// write, then its snapshot files: the replica left this node. The shard must not be open; afterwards it can be opened again
    /// as a new, empty replica. Blocking.
    pub fn delete_shard(&self, shard: ShardId) -> Result<(), StorageError> {
        // Holding the claim while deleting keeps `open_shard` out until the keys are gone.
        let handle = self.claim_shard(shard)?;
        let (start, end) = shard_range(shard);
        let mut batch = WriteBatch::default();
        for family in COLUMN_FAMILIES {
            batch.delete_range_cf(handle.node.cf(family), start, end);
        }
        handle.node.snapshot_files.switch(shard, None, || {
            handle
                .node
                .write(batch, Durability::Synced, CF_RAFT_STATE, shard)
        })?;
        tracing::info!(shard, "shard replica deleted from storage");
        Ok(())
    }

    /// The shards with any stored state on this node: the replicas it held when it stopped,
    /// including those opened but not yet written to (`open_shard` marks every replica it opens).
    /// Blocking.
    pub fn stored_shards(&self) -> Result<BTreeSet<ShardId>, StorageError> {
        let mut shards = BTreeSet::new();
        // Every replica opened since the hosted mark exists has it; one from an older database
        // has its vote once its group started, or a snapshot once one was installed.
        for family in [CF_RAFT_STATE, CF_SNAPSHOT] {
            let mut next: ShardId = 0;
            loop {
                let mut found = None;
                let start = next.to_be_bytes();
                let end = NODE_RECORD_PREFIX.to_be_bytes();
                self.node
                    .scan(family, &start, &end, Direction::Forward, next, |key, _| {
                        found = key
                            .get(..4)
                            .and_then(|prefix| prefix.try_into().ok())
                            .map(ShardId::from_be_bytes);
                        Ok(false)
                    })?;
                match found {
                    Some(shard) => {
                        shards.insert(shard);
                        match shard.checked_add(1) {
                            Some(following) if following <= SHARD_ID_MAX => next = following,
                            _ => break,
                        }
                    }
                    None => break,
                }
            }
        }
        Ok(shards)
    }

    /// The node's own record (what the server keeps about the cluster it belongs to), if any.
    /// Blocking.
    pub fn node_record(&self) -> Result<Option<Vec<u8>>, StorageError> {
        self.node
            .get(CF_RAFT_STATE, &node_record_key(), NODE_RECORD_PREFIX)
    }

    /// Replaces the node's own record, synced. Blocking.
    pub fn put_node_record(&self, record: &[u8]) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.node.cf(CF_RAFT_STATE), node_record_key(), record);
        self.node
            .write(batch, Durability::Synced, CF_RAFT_STATE, NODE_RECORD_PREFIX)
    }

    /// The directory of the database.
    pub fn path(&self) -> &Path {
        &self.node.path
    }

    /// Writes a consistent copy of the whole database (every shard's log, vote and state) to
    /// `directory`, which must not exist yet: a RocksDB checkpoint, made of hard links to the
    /// immutable table files where the file system allows it, after flushing the memtables, and
    /// the snapshot files beside it (hard links too). No shard switches to another snapshot
    /// meanwhile, so every snapshot the copy names is in it. A node started on a copy of it (as
    /// its `<data_dir>/rocksdb`) recovers the state of this moment. Blocking: call it off the
    /// async workers.
    pub fn checkpoint(&self, directory: &Path) -> Result<(), StorageError> {
        let failed = |source| StorageError::Checkpoint {
            path: directory.to_path_buf(),
            source,
        };
        let checkpoint = rocksdb::checkpoint::Checkpoint::new(&self.node.db).map_err(failed)?;
        let _no_switch = self.node.snapshot_files.hold_switches();
        checkpoint.create_checkpoint(directory).map_err(failed)?;
        self.node.snapshot_files.link_all_into(directory)
    }

    /// Counters of the group commit (WAL syncs and the appends they completed).
    pub fn log_sync_stats(&self) -> LogSyncStats {
        self.node.syncer_shared.stats()
    }

    /// The fail points of this node's storage, for failure tests.
    pub fn fail_points(&self) -> &FailPoints {
        &self.node.fail_points
    }
}

impl NodeInner {
    /// A column family handle. All of them are created by `open`, so a missing one is a bug.
    pub(crate) fn cf(&self, name: &'static str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .unwrap_or_else(|| panic!("column family {name} is created when the database opens"))
    }

    pub(crate) fn write(
        &self,
        batch: WriteBatch,
        durability: Durability,
        column_family: &'static str,
        shard: ShardId,
    ) -> Result<(), StorageError> {
        let mut write_options = WriteOptions::default();
        write_options.set_sync(durability == Durability::Synced);
        self.db
            .write_opt(batch, &write_options)
            .map_err(|source| StorageError::RocksDb {
                operation: "write",
                column_family,
                shard,
                source,
            })
    }

    pub(crate) fn get(
        &self,
        column_family: &'static str,
        key: &[u8],
        shard: ShardId,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        self.db
            .get_cf(self.cf(column_family), key)
            .map_err(|source| StorageError::RocksDb {
                operation: "get",
                column_family,
                shard,
                source,
            })
    }

    /// Visits the key-value pairs of `column_family` in `[start, end)`, in key order (or reverse
    /// order), until `visit` returns `false`.
    pub(crate) fn scan(
        &self,
        column_family: &'static str,
        start: &[u8],
        end: &[u8],
        direction: Direction,
        shard: ShardId,
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<bool, StorageError>,
    ) -> Result<(), StorageError> {
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_lower_bound(start.to_vec());
        read_options.set_iterate_upper_bound(end.to_vec());
        let mode = match direction {
            Direction::Forward => IteratorMode::Start,
            Direction::Reverse => IteratorMode::End,
        };
        for item in self
            .db
            .iterator_cf_opt(self.cf(column_family), read_options, mode)
        {
            let (key, value) = item.map_err(|source| StorageError::RocksDb {
                operation: "iterate",
                column_family,
                shard,
                source,
            })?;
            if !visit(&key, &value)? {
                break;
            }
        }
        Ok(())
    }
}

/// Runs a small, bounded storage operation on the calling task: an unsynced write batch of one
/// apply or append, or a read of recent log entries. These take microseconds (a memtable insert
/// and a buffered WAL write; reads of entries just written hit the memtable), and handing them
/// to the blocking pool cost more in thread hand-offs than the work itself (see
/// benches/RESULTS.md). What can take long — fsyncs, snapshot builds and installs, scans of a
/// whole shard — stays on the blocking pool (`run_blocking`). A RocksDB write stall would block
/// the calling worker; the node then slows down as a whole, which is the back pressure wanted.
pub(crate) fn run_inline<T, F>(operation: F) -> Result<T, StorageError>
where
    F: FnOnce() -> Result<T, StorageError>,
{
    operation()
}

/// Runs a blocking storage operation on tokio's blocking pool, so that fsyncs, snapshots and
/// scans of a whole shard never stall the async worker threads that drive the Raft groups and
/// the network.
pub(crate) async fn run_blocking<T, F>(shard: ShardId, operation: F) -> Result<T, StorageError>
where
    F: FnOnce() -> Result<T, StorageError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(operation)
        .await
        .map_err(|join_error| StorageError::BlockingTask {
            shard,
            detail: join_error.to_string(),
        })?
}

/// Records (synced, once) that this node hosts `handle`'s shard, so that a restart reopens the
/// replica even if it stored nothing else yet. Without it, a replica opened when the cluster was
/// formed but not yet contacted by its group (no vote, no entry) is forgotten by a restart; when
/// that happens to two of the metadata group's three replicas, the group can never elect a
/// leader again (the surviving replica has no one to vote for it), and no node learns the map
/// that would reopen them.
fn mark_hosted(handle: &ShardHandle) -> Result<(), StorageError> {
    let shard = handle.shard;
    let key = raft_state_key(shard, RAFT_STATE_HOSTED);
    if handle.node.get(CF_RAFT_STATE, &key, shard)?.is_some() {
        return Ok(());
    }
    let mut batch = WriteBatch::default();
    batch.put_cf(handle.node.cf(CF_RAFT_STATE), key, []);
    handle
        .node
        .write(batch, Durability::Synced, CF_RAFT_STATE, shard)
}

fn load_log_pointers(handle: &ShardHandle) -> Result<LogPointers, StorageError> {
    let shard = handle.shard;
    let last_purged_log_id: Option<LedgerLogId> = handle
        .node
        .get(
            CF_RAFT_STATE,
            &raft_state_key(shard, RAFT_STATE_LAST_PURGED),
            shard,
        )?
        .map(|bytes| decode(&bytes, "last purged log id", shard))
        .transpose()?;
    let mut last_present_log_id = None;
    let (start, end) = shard_range(shard);
    handle.node.scan(
        CF_RAFT_LOG,
        &start,
        &end,
        Direction::Reverse,
        shard,
        |_, value| {
            let entry: Entry = decode(value, "log entry", shard)?;
            last_present_log_id = Some(entry.log_id);
            Ok(false)
        },
    )?;
    Ok(LogPointers {
        last_purged_log_id,
        last_present_log_id,
    })
}
