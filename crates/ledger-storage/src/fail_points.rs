//! Fail points on the durability paths, switched on by tests (and chaos tooling) at run time.
//!
//! They sit where TiKV puts its `fail` crate points, on the WAL sync of the log (the state
//! machine writes nothing at apply; its checkpoint is the snapshot). When off, each costs one
//! relaxed atomic load per sync, which is why they are compiled in rather than behind a feature.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::syncer::SyncerShared;

/// The fail points of one node's storage; see `NodeStorage::fail_points`.
pub struct FailPoints {
    wal_sync_error: AtomicBool,
    syncer: Arc<SyncerShared>,
}

impl FailPoints {
    pub(crate) fn new(syncer: Arc<SyncerShared>) -> FailPoints {
        FailPoints {
            wal_sync_error: AtomicBool::new(false),
            syncer,
        }
    }

    /// While set, the WAL syncer fails instead of syncing: the waiting appends complete with an
    /// error, and (as after a real fsync failure) every later sync of this node fails too.
    pub fn set_wal_sync_error(&self, enabled: bool) {
        self.wal_sync_error.store(enabled, Ordering::Relaxed);
    }

    /// Holds the WAL syncer: appends still write and return, but their callbacks wait (and pile
    /// up, so that the next sync serves all of them) until `resume_wal_sync`.
    pub fn pause_wal_sync(&self) {
        self.syncer.set_paused(true);
    }

    pub fn resume_wal_sync(&self) {
        self.syncer.set_paused(false);
    }

    /// Append callbacks queued and not yet taken by the syncer.
    pub fn pending_wal_syncs(&self) -> usize {
        self.syncer.pending_count()
    }

    pub(crate) fn wal_sync_error_is_set(&self) -> bool {
        self.wal_sync_error.load(Ordering::Relaxed)
    }
}
