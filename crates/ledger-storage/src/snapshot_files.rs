//! The bytes of every shard's current snapshot, one file each, beside the database:
//! `<database>/snapshots/<shard>/<sequence>.snapshot`.
//!
//! They used to be one RocksDB value, written in the same synced batch as the snapshot's meta.
//! A snapshot is the shard's whole state (hundreds of megabytes once a shard has decided
//! millions of debits), and a synced write of that size into the database that also holds the
//! Raft log held up the log appends of every shard of the node behind it (about 1.4 s, see
//! `benches/RESULTS.md`, session 10). Written as a file, in chunks synced one after another, the
//! log's WAL syncs interleave with it.
//!
//! **Invariant:** the file named by a shard's stored meta exists and is complete. A file is
//! written under a temporary name, synced, renamed and its directory synced before the meta that
//! names it is written (synced), and files no meta names are deleted only after that. A crash
//! leaves at most a stray file, which the shard's next open deletes.
//! **Invariant:** a backup ([`SnapshotFiles::link_all_into`]) sees no meta switch while it copies
//! the database and the files: both hold the same lock.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use ledger_raft::ShardId;
use parking_lot::{Mutex, MutexGuard};

use crate::error::StorageError;

/// Name of the directory of snapshot files inside the database directory. A backup (a RocksDB
/// checkpoint) gets a copy of it at the same place, so that restoring a backup stays "put it in
/// place of the database directory".
pub(crate) const SNAPSHOTS_DIRECTORY: &str = "snapshots";

const EXTENSION: &str = "snapshot";
const TEMPORARY_EXTENSION: &str = "snapshot-partial";

/// How much of a snapshot is written between two syncs: enough to keep the syncs few, small
/// enough that a WAL sync queued behind one waits for a few milliseconds of disk time only.
const SYNC_CHUNK_BYTES: usize = 8 * 1024 * 1024;

/// The snapshot files of one node.
pub(crate) struct SnapshotFiles {
    root: PathBuf,
    /// Held while a shard's stored meta switches to another file (and the older files are
    /// deleted), and while a backup copies the database and the files.
    switch: Mutex<()>,
}

impl SnapshotFiles {
    pub(crate) fn new(database: &Path) -> SnapshotFiles {
        SnapshotFiles {
            root: database.join(SNAPSHOTS_DIRECTORY),
            switch: Mutex::new(()),
        }
    }

    fn shard_directory(&self, shard: ShardId) -> PathBuf {
        self.root.join(shard.to_string())
    }

    fn path(&self, shard: ShardId, sequence: u64) -> PathBuf {
        self.shard_directory(shard)
            .join(format!("{sequence:020}.{EXTENSION}"))
    }

    /// Writes `data` as the file of `shard`'s snapshot number `sequence`, durably: synced chunk
    /// by chunk under a temporary name, then renamed, then the directory synced. Nothing names
    /// the file yet; [`SnapshotFiles::switch`] makes it current.
    pub(crate) fn write(
        &self,
        shard: ShardId,
        sequence: u64,
        data: &[u8],
    ) -> Result<(), StorageError> {
        let directory = self.shard_directory(shard);
        if !directory.is_dir() {
            std::fs::create_dir_all(&directory).map_err(io_error("creating", &directory))?;
            sync_directory(&self.root)?;
            if let Some(database) = self.root.parent() {
                sync_directory(database)?;
            }
        }
        let path = self.path(shard, sequence);
        let partial = path.with_extension(TEMPORARY_EXTENSION);
        let mut file = File::create(&partial).map_err(io_error("creating", &partial))?;
        for chunk in data.chunks(SYNC_CHUNK_BYTES) {
            file.write_all(chunk)
                .map_err(io_error("writing", &partial))?;
            file.sync_data().map_err(io_error("syncing", &partial))?;
        }
        file.sync_all().map_err(io_error("syncing", &partial))?;
        drop(file);
        std::fs::rename(&partial, &path).map_err(io_error("renaming", &partial))?;
        sync_directory(&directory)
    }

    /// The bytes of `shard`'s snapshot number `sequence`, or `None` when there is no such file
    /// (a snapshot stored by an older version, whose bytes are in the database).
    pub(crate) fn read(
        &self,
        shard: ShardId,
        sequence: u64,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let path = self.path(shard, sequence);
        match std::fs::read(&path) {
            Ok(data) => Ok(Some(data)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(io_error("reading", &path)(error)),
        }
    }

    /// Runs `write_meta` (which makes snapshot `keep` the shard's current one, or records that
    /// the shard has none) under the switch lock, then deletes the shard's other files.
    pub(crate) fn switch<T>(
        &self,
        shard: ShardId,
        keep: Option<u64>,
        write_meta: impl FnOnce() -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let _switch = self.switch.lock();
        let written = write_meta()?;
        self.remove_all_but(shard, keep)?;
        Ok(written)
    }

    /// Deletes every file of `shard` but snapshot `keep`'s, partial ones included: what a crash
    /// left between writing a file and switching to it, or between a switch and the deletion.
    pub(crate) fn remove_all_but(
        &self,
        shard: ShardId,
        keep: Option<u64>,
    ) -> Result<(), StorageError> {
        let directory = self.shard_directory(shard);
        let entries = match std::fs::read_dir(&directory) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(io_error("listing", &directory)(error)),
        };
        let kept = keep.map(|sequence| self.path(shard, sequence));
        for entry in entries {
            let path = entry.map_err(io_error("listing", &directory))?.path();
            if Some(&path) != kept.as_ref() {
                std::fs::remove_file(&path).map_err(io_error("deleting", &path))?;
            }
        }
        Ok(())
    }

    /// Holds off every switch (and so every deletion) until the guard is dropped.
    pub(crate) fn hold_switches(&self) -> MutexGuard<'_, ()> {
        self.switch.lock()
    }

    /// Hard-links (or copies, across file systems) every snapshot file into
    /// `<target>/snapshots/<shard>/`. Call it holding [`SnapshotFiles::hold_switches`], right
    /// after the database's checkpoint was written to `target`.
    pub(crate) fn link_all_into(&self, target: &Path) -> Result<(), StorageError> {
        let shards = match std::fs::read_dir(&self.root) {
            Ok(shards) => shards,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(io_error("listing", &self.root)(error)),
        };
        for shard in shards {
            let shard = shard.map_err(io_error("listing", &self.root))?;
            let target_directory = target.join(SNAPSHOTS_DIRECTORY).join(shard.file_name());
            std::fs::create_dir_all(&target_directory)
                .map_err(io_error("creating", &target_directory))?;
            let source_directory = shard.path();
            for file in std::fs::read_dir(&source_directory)
                .map_err(io_error("listing", &source_directory))?
            {
                let source = file.map_err(io_error("listing", &source_directory))?.path();
                if source
                    .extension()
                    .is_some_and(|extension| extension == EXTENSION)
                {
                    let Some(name) = source.file_name() else {
                        continue;
                    };
                    let destination = target_directory.join(name);
                    if std::fs::hard_link(&source, &destination).is_err() {
                        std::fs::copy(&source, &destination)
                            .map_err(io_error("copying", &source))?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn sync_directory(directory: &Path) -> Result<(), StorageError> {
    File::open(directory)
        .and_then(|handle| handle.sync_all())
        .map_err(io_error("syncing", directory))
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StorageError {
    let path = path.to_path_buf();
    move |source| StorageError::SnapshotFile {
        action,
        path,
        source,
    }
}
