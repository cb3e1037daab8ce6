//! The state machine store of one shard (`RaftStateMachine`): the ledger in memory, shared with
//! readers, checkpointed as the shard's current snapshot (its meta in the `snapshot` column
//! family, its bytes in a file, see `snapshot_files`).
//!
//! **The Raft log is the state machine's write-ahead log.** `apply` changes memory only; the
//! state reaches the disk as a snapshot (built by openraft's snapshot policy, or installed from
//! the leader). A shard opens with the state of its current snapshot, and openraft re-applies
//! the committed entries after it from the log (`read_committed`, then the leader's commit
//! index). This is sound because openraft purges the log only up to a snapshot it has built or
//! installed: every applied entry is either in the current snapshot or still in the log.
//! **Invariant:** a snapshot install makes it the shard's current snapshot with one fsynced write
//! batch (of its meta, naming its already synced file) before the state in memory is replaced; a
//! half-installed snapshot never survives a crash.
//! **Invariant:** a snapshot's bytes are the state at its `last_log_id` exactly: the copy is taken
//! under the state's lock, between two applies.
//!
//! Blocking choice: `apply` runs the ledger in memory on the calling task (no I/O). Snapshot
//! building, installing and reading run on tokio's blocking pool (they encode or decode whole
//! shards and write to RocksDB); `applied_state` reads memory only.

use std::io::Cursor;
use std::sync::Arc;

use ledger_core::{
    Account, DebitRecord, Event, GrantRecord, JournalEntry, Ledger, LedgerParts, Reservation,
    ShardMeta,
};
use ledger_raft::{
    BatchOutcome, Entry, LedgerLogId, LedgerMembership, LedgerNode, NodeId, ShardId, ShardState,
    SharedShardState, TypeConfig,
};
use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError, StoredMembership};
use parking_lot::Mutex;
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::error::StorageError;
use crate::keys::*;
use crate::node::{run_blocking, Durability, ShardHandle};

type RaftStorageError = openraft::StorageError<NodeId>;
type LedgerSnapshotMeta = SnapshotMeta<NodeId, LedgerNode>;

/// Version of the snapshot payload encoding; a follower refuses a payload of another version.
/// Version 2 added `grant_records`; version 3 the credit semantics (reservations, journal,
/// events, the shard's metadata); version 4 the cluster map in the shard metadata.
const SNAPSHOT_FORMAT_VERSION: u32 = 4;

/// The bytes of a snapshot after its format version (a bincode `u32` first): a shard's whole
/// applied state.
#[derive(Debug, Deserialize)]
struct SnapshotPayload {
    last_applied: Option<LedgerLogId>,
    last_membership: LedgerMembership,
    last_timestamp_ms: u64,
    accounts: Vec<Account>,
    debit_records: Vec<((String, String), DebitRecord)>,
    grant_records: Vec<((String, String), GrantRecord)>,
    reservations: Vec<((String, String), Reservation)>,
    journal: Vec<(String, JournalEntry)>,
    events: Vec<Event>,
    meta: ShardMeta,
}

/// The encoding side of a snapshot, borrowing from the ledger: the format version, then the
/// fields of `SnapshotPayload` in the same order (bincode writes a struct as its fields in
/// sequence, so these are the bytes of the version followed by a `SnapshotPayload`).
#[derive(Serialize)]
struct SnapshotPayloadRef<'a> {
    format_version: u32,
    last_applied: &'a Option<LedgerLogId>,
    last_membership: &'a LedgerMembership,
    last_timestamp_ms: u64,
    accounts: Vec<&'a Account>,
    debit_records: Vec<(&'a (String, String), &'a DebitRecord)>,
    grant_records: Vec<(&'a (String, String), &'a GrantRecord)>,
    reservations: Vec<(&'a (String, String), &'a Reservation)>,
    journal: Vec<(&'a String, &'a JournalEntry)>,
    events: &'a [Event],
    meta: &'a ShardMeta,
}

/// The stored metadata of the current snapshot of a shard.
#[derive(Debug, Serialize, Deserialize)]
struct StoredSnapshotMeta {
    meta: LedgerSnapshotMeta,
    /// Number of the build or install that produced it, to make snapshot ids unique.
    sequence: u64,
}

/// The current snapshot of a shard, as this process knows it. Its lock serializes the writes
/// of the `snapshot` column family for the shard: a snapshot build runs concurrently with the
/// state machine (which may install a newer snapshot meanwhile), and an older snapshot must
/// never replace a newer one.
pub(crate) struct SnapshotSlot {
    current: Mutex<SnapshotSlotState>,
}

struct SnapshotSlotState {
    /// `None`: no snapshot stored; `Some(last_log_id)` of the stored one otherwise.
    stored_last_log_id: Option<Option<LedgerLogId>>,
    next_sequence: u64,
}

impl SnapshotSlot {
    pub(crate) fn load(shard: &ShardHandle) -> Result<SnapshotSlot, StorageError> {
        let stored = read_snapshot_meta(shard)?;
        // What a crash left between writing a snapshot file and switching to it.
        shard
            .node
            .snapshot_files
            .remove_all_but(shard.shard, stored.as_ref().map(|stored| stored.sequence))?;
        Ok(SnapshotSlot {
            current: Mutex::new(SnapshotSlotState {
                stored_last_log_id: stored.as_ref().map(|stored| stored.meta.last_log_id),
                next_sequence: stored.map_or(0, |stored| stored.sequence + 1),
            }),
        })
    }
}

/// The state machine of one shard. Created by `NodeStorage::open_shard`; hand it to
/// `openraft::Raft::new`.
pub struct StateMachineStore {
    shard: Arc<ShardHandle>,
    state: SharedShardState,
    snapshots: Arc<SnapshotSlot>,
}

/// Builds a snapshot of one shard's state machine, concurrently with `apply`.
pub struct ShardSnapshotBuilder {
    shard: Arc<ShardHandle>,
    state: SharedShardState,
    snapshots: Arc<SnapshotSlot>,
}

impl StateMachineStore {
    pub(crate) fn new(
        shard: Arc<ShardHandle>,
        state: SharedShardState,
        snapshots: Arc<SnapshotSlot>,
    ) -> StateMachineStore {
        StateMachineStore {
            shard,
            state,
            snapshots,
        }
    }

    /// The shard this state machine belongs to.
    pub fn shard(&self) -> ShardId {
        self.shard.shard
    }

    /// The shard's applied state, shared with readers (the same handle `open_shard` returned).
    pub fn state(&self) -> &SharedShardState {
        &self.state
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = ShardSnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LedgerLogId>, LedgerMembership), RaftStorageError> {
        let state = self.state.read();
        Ok((state.last_applied, state.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchOutcome>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Memory only: the entries are durable in the log, and openraft re-applies those after
        // the current snapshot when the shard opens again.
        let mut state = self.state.write();
        Ok(apply_entries(&mut state, entries))
    }

    async fn get_snapshot_builder(&mut self) -> ShardSnapshotBuilder {
        ShardSnapshotBuilder {
            shard: Arc::clone(&self.shard),
            state: Arc::clone(&self.state),
            snapshots: Arc::clone(&self.snapshots),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, RaftStorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &LedgerSnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), RaftStorageError> {
        let shard = Arc::clone(&self.shard);
        let state = Arc::clone(&self.state);
        let snapshots = Arc::clone(&self.snapshots);
        let installed_meta = meta.clone();
        let data = snapshot.into_inner();
        run_blocking(self.shard.shard, move || {
            install_snapshot_blocking(&shard, &state, &snapshots, installed_meta, data)
        })
        .await
        .map_err(|error| StorageIOError::write_snapshot(Some(meta.signature()), &error).into())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        let shard = Arc::clone(&self.shard);
        let snapshots = Arc::clone(&self.snapshots);
        run_blocking(self.shard.shard, move || {
            read_current_snapshot(&shard, &snapshots)
        })
        .await
        .map_err(|error| StorageIOError::read_snapshot(None, &error).into())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for ShardSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        let shard = Arc::clone(&self.shard);
        let state = Arc::clone(&self.state);
        let snapshots = Arc::clone(&self.snapshots);
        run_blocking(self.shard.shard, move || {
            build_snapshot_blocking(&shard, &state, &snapshots)
        })
        .await
        .map_err(|error| StorageIOError::write_snapshot(None, &error).into())
    }
}

/// Applies `entries` to the in-memory state, in order.
fn apply_entries(
    state: &mut ShardState,
    entries: impl IntoIterator<Item = Entry>,
) -> Vec<BatchOutcome> {
    entries
        .into_iter()
        .map(|entry| {
            assert!(
                Some(entry.log_id) > state.last_applied,
                "entry {} applied after {:?}: openraft applies each entry once, in order",
                entry.log_id,
                state.last_applied
            );
            state.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => BatchOutcome::default(),
                EntryPayload::Normal(batch) => BatchOutcome {
                    outcomes: batch
                        .commands
                        .iter()
                        .map(|command| state.ledger.apply(command, batch.timestamp_ms))
                        .collect(),
                },
                EntryPayload::Membership(membership) => {
                    state.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    BatchOutcome::default()
                }
            }
        })
        .collect()
}

fn build_snapshot_blocking(
    shard: &ShardHandle,
    state: &SharedShardState,
    snapshots: &SnapshotSlot,
) -> Result<Snapshot<TypeConfig>, StorageError> {
    // A consistent point: the ledger, `last_applied` and the membership as of one instant. The
    // copy is taken under the read lock and encoded after it, so that apply is held up for a
    // memory copy only.
    let copy: ShardState = state.read().clone();
    let data = encode_snapshot_payload(shard.shard, &copy)?;

    let mut slot = snapshots.current.lock();
    let sequence = slot.next_sequence;
    slot.next_sequence += 1;
    let meta = LedgerSnapshotMeta {
        last_log_id: copy.last_applied,
        last_membership: copy.last_membership.clone(),
        snapshot_id: snapshot_id(copy.last_applied, sequence),
    };
    let is_newest = slot
        .stored_last_log_id
        .is_none_or(|stored_last_log_id| stored_last_log_id <= meta.last_log_id);
    if is_newest {
        write_snapshot(shard, &mut slot, &meta, sequence, &data)?;
    }
    drop(slot);
    tracing::info!(shard = shard.shard, snapshot = %meta, bytes = data.len(), "snapshot built");
    Ok(Snapshot {
        meta,
        snapshot: Box::new(Cursor::new(data)),
    })
}

fn encode_snapshot_payload(shard: ShardId, state: &ShardState) -> Result<Vec<u8>, StorageError> {
    let payload = SnapshotPayloadRef {
        format_version: SNAPSHOT_FORMAT_VERSION,
        last_applied: &state.last_applied,
        last_membership: &state.last_membership,
        last_timestamp_ms: state.ledger.last_timestamp_ms(),
        accounts: state.ledger.accounts().collect(),
        debit_records: state.ledger.debit_records().collect(),
        grant_records: state.ledger.grant_records().collect(),
        reservations: state.ledger.reservations().collect(),
        journal: state
            .ledger
            .journals()
            .flat_map(|(account_id, entries)| entries.iter().map(move |entry| (account_id, entry)))
            .collect(),
        events: state.ledger.events(),
        meta: state.ledger.meta(),
    };
    encode(&payload, "snapshot", shard)
}

/// Snapshot ids name the last log id and this node's build number of the shard, which makes
/// them unique on the node even for two builds at the same log id.
fn snapshot_id(last_log_id: Option<LedgerLogId>, sequence: u64) -> String {
    match last_log_id {
        Some(log_id) => format!("{log_id}-S{sequence}"),
        None => format!("empty-S{sequence}"),
    }
}

/// Makes `meta` and `data` the shard's current snapshot, recorded in `slot`: the bytes go to a
/// synced file of their own (`snapshot_files`: not through the database, whose WAL the Raft log
/// appends of every shard share), then one synced batch switches the meta to it, and the
/// previous file is deleted. A crash leaves either snapshot whole. Synced because the snapshot
/// is the state machine's checkpoint: openraft purges the log up to it next.
fn write_snapshot(
    shard: &ShardHandle,
    slot: &mut SnapshotSlotState,
    meta: &LedgerSnapshotMeta,
    sequence: u64,
    data: &[u8],
) -> Result<(), StorageError> {
    let files = &shard.node.snapshot_files;
    files.write(shard.shard, sequence, data)?;
    let family = shard.node.cf(CF_SNAPSHOT);
    let stored_meta = StoredSnapshotMeta {
        meta: meta.clone(),
        sequence,
    };
    let mut batch = WriteBatch::default();
    batch.put_cf(
        family,
        snapshot_key(shard.shard, SNAPSHOT_META),
        encode(&stored_meta, "snapshot meta", shard.shard)?,
    );
    // The bytes of a snapshot stored by a version that kept them in the database.
    batch.delete_cf(family, snapshot_key(shard.shard, SNAPSHOT_DATA));
    files.switch(shard.shard, Some(sequence), || {
        shard
            .node
            .write(batch, Durability::Synced, CF_SNAPSHOT, shard.shard)
    })?;
    slot.stored_last_log_id = Some(meta.last_log_id);
    Ok(())
}

fn install_snapshot_blocking(
    shard: &ShardHandle,
    state: &SharedShardState,
    snapshots: &SnapshotSlot,
    meta: LedgerSnapshotMeta,
    data: Vec<u8>,
) -> Result<(), StorageError> {
    let installed = decode_snapshot(shard.shard, &meta, &data)?;
    let mut slot = snapshots.current.lock();
    let sequence = slot.next_sequence;
    slot.next_sequence += 1;
    // On disk before openraft is told the install is done.
    write_snapshot(shard, &mut slot, &meta, sequence, &data)?;
    drop(slot);
    *state.write() = installed;
    tracing::info!(shard = shard.shard, snapshot = %meta, "snapshot installed");
    Ok(())
}

/// The state a shard opens with: its current snapshot's, or the empty state at no log id when
/// it has none. openraft then re-applies the committed log after it. Blocking.
pub(crate) fn load_state(shard: &ShardHandle) -> Result<ShardState, StorageError> {
    let Some(stored) = read_snapshot_meta(shard)? else {
        return Ok(ShardState::default());
    };
    let data = read_snapshot_data(shard, &stored)?;
    decode_snapshot(shard.shard, &stored.meta, &data)
}

/// The state a snapshot's bytes hold, checked against its meta. A payload of another format
/// version is refused as such.
fn decode_snapshot(
    shard: ShardId,
    meta: &LedgerSnapshotMeta,
    data: &[u8],
) -> Result<ShardState, StorageError> {
    // The version is the payload's first field: read it alone first, so that a payload of
    // another version is refused as such rather than as undecodable bytes.
    let (format_version, payload_start) = decode_format_version(data, shard)?;
    if format_version != SNAPSHOT_FORMAT_VERSION {
        return Err(StorageError::Corrupt {
            what: "snapshot",
            shard,
            detail: format!(
                "format version {format_version} (this node reads {SNAPSHOT_FORMAT_VERSION})"
            ),
        });
    }
    let payload: SnapshotPayload = decode(&data[payload_start..], "snapshot", shard)?;
    if payload.last_applied != meta.last_log_id || payload.last_membership != meta.last_membership {
        return Err(StorageError::Corrupt {
            what: "snapshot",
            shard,
            detail: format!(
                "payload at {:?} with membership {:?} does not match its meta {meta}",
                payload.last_applied, payload.last_membership
            ),
        });
    }
    let mut shard_meta = payload.meta;
    shard_meta.last_timestamp_ms = payload.last_timestamp_ms;
    let ledger = Ledger::restore(LedgerParts {
        accounts: payload.accounts,
        debit_records: payload.debit_records,
        grant_records: payload.grant_records,
        reservations: payload.reservations,
        journal: payload.journal,
        events: payload.events,
        meta: shard_meta,
    });
    Ok(ShardState {
        ledger,
        last_applied: payload.last_applied,
        last_membership: payload.last_membership,
    })
}

/// The format version at the start of a snapshot's bytes, whatever version the rest is, and
/// where the rest starts.
fn decode_format_version(data: &[u8], shard: ShardId) -> Result<(u32, usize), StorageError> {
    bincode::serde::decode_from_slice::<u32, _>(data, bincode::config::standard()).map_err(
        |source| StorageError::Decode {
            what: "snapshot format version",
            shard,
            source,
        },
    )
}

fn read_snapshot_meta(shard: &ShardHandle) -> Result<Option<StoredSnapshotMeta>, StorageError> {
    shard
        .node
        .get(
            CF_SNAPSHOT,
            &snapshot_key(shard.shard, SNAPSHOT_META),
            shard.shard,
        )?
        .map(|bytes| decode(&bytes, "snapshot meta", shard.shard))
        .transpose()
}

fn read_current_snapshot(
    shard: &ShardHandle,
    snapshots: &SnapshotSlot,
) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
    // Under the slot's lock, so that the meta and the data read are of the same snapshot.
    let _slot = snapshots.current.lock();
    let Some(stored) = read_snapshot_meta(shard)? else {
        return Ok(None);
    };
    let data = read_snapshot_data(shard, &stored)?;
    Ok(Some(Snapshot {
        meta: stored.meta,
        snapshot: Box::new(Cursor::new(data)),
    }))
}

/// The bytes of the stored snapshot: its file, or (for a snapshot stored by a version that kept
/// them in the database) the `SNAPSHOT_DATA` value.
fn read_snapshot_data(
    shard: &ShardHandle,
    stored: &StoredSnapshotMeta,
) -> Result<Vec<u8>, StorageError> {
    if let Some(data) = shard
        .node
        .snapshot_files
        .read(shard.shard, stored.sequence)?
    {
        return Ok(data);
    }
    shard
        .node
        .get(
            CF_SNAPSHOT,
            &snapshot_key(shard.shard, SNAPSHOT_DATA),
            shard.shard,
        )?
        .ok_or_else(|| StorageError::Corrupt {
            what: "snapshot",
            shard: shard.shard,
            detail: format!("meta of {} stored without its data", stored.meta),
        })
}
