//! The state machine store of one shard (`RaftStateMachine`): the ledger in memory, shared with
//! readers, and persisted in the node's `ledger` column family; snapshots in `snapshot`.
//!
//! **Invariant:** the `ledger` column family holds, for each shard, exactly the accounts, debit
//! records and grant records of the in-memory ledger at the persisted `last_applied`: every
//! `apply` call writes the keys its commands changed together with `last_applied`,
//! `last_membership` and the ledger's last time stamp in one write batch.
//! **Invariant:** a snapshot install replaces the shard's whole `ledger` range, its applied state
//! and its current snapshot in one fsynced write batch: a half-installed snapshot never survives
//! a crash.
//!
//! The apply path is split into phases so that a fault can be injected between them (see
//! `FailPoints`): apply in memory under the write lock (`apply_entries`), encode the changed keys
//! under the read lock (`encode_changes`), then write the batch (`write_changes`).
//!
//! Blocking choice: `apply`, snapshot building, installing and reading run on tokio's blocking
//! pool (they run the ledger, encode whole shards or write to RocksDB); `applied_state` reads
//! memory only.

use std::io::Cursor;
use std::sync::Arc;

use ledger_core::{
    Account, ChangeSet, DebitRecord, Event, GrantRecord, JournalEntry, Ledger, LedgerParts,
    Reservation, ShardMeta,
};
use ledger_raft::{
    BatchOutcome, Entry, LedgerLogId, LedgerMembership, LedgerNode, NodeId, ShardId, ShardState,
    SharedShardState, TypeConfig,
};
use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError, StoredMembership};
use parking_lot::{Mutex, RwLockWriteGuard};
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::error::StorageError;
use crate::keys::*;
use crate::node::{run_blocking, run_inline, Durability, ShardHandle};

type RaftStorageError = openraft::StorageError<NodeId>;
type LedgerSnapshotMeta = SnapshotMeta<NodeId, LedgerNode>;

/// Version of the snapshot payload encoding; a follower refuses a payload of another version.
/// Version 2 added `grant_records`; version 3 the credit semantics (reservations, journal,
/// events, the shard's metadata); version 4 the cluster map in the shard metadata.
const SNAPSHOT_FORMAT_VERSION: u32 = 4;

/// What the `ledger` column family records besides accounts, debit records and grant records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AppliedState {
    pub(crate) last_applied: Option<LedgerLogId>,
    pub(crate) last_membership: LedgerMembership,
    pub(crate) last_timestamp_ms: u64,
}

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
        let entries: Vec<Entry> = entries.into_iter().collect();
        let Some(last_log_id) = entries.last().map(|entry| entry.log_id) else {
            return Ok(Vec::new());
        };
        let shard = Arc::clone(&self.shard);
        let state = Arc::clone(&self.state);
        run_inline(move || apply_and_persist(&shard, &state, entries))
            .map_err(|error| StorageIOError::apply(last_log_id, &error).into())
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

fn apply_and_persist(
    shard: &ShardHandle,
    state: &SharedShardState,
    entries: Vec<Entry>,
) -> Result<Vec<BatchOutcome>, StorageError> {
    let mut changes = ChangeSet::default();
    let mut write_guard = state.write();
    let outcomes = apply_entries(&mut write_guard, entries, &mut changes);
    // Readers may go on while the changes are encoded; the next apply cannot start before this
    // one returns (openraft applies in sequence), so the state does not move meanwhile.
    let read_guard = RwLockWriteGuard::downgrade(write_guard);
    let batch = encode_changes(shard, &read_guard, &changes)?;
    drop(read_guard);
    write_changes(shard, batch)?;
    Ok(outcomes)
}

/// Applies `entries` to the in-memory state, in order, collecting the changed keys.
fn apply_entries(
    state: &mut ShardState,
    entries: Vec<Entry>,
    changes: &mut ChangeSet,
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
                        .map(|command| state.ledger.apply(command, batch.timestamp_ms, changes))
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

/// One write batch with every account, debit record and grant record named by `changes`, as
/// they are in `state` now, and the applied state.
fn encode_changes(
    shard: &ShardHandle,
    state: &ShardState,
    changes: &ChangeSet,
) -> Result<WriteBatch, StorageError> {
    let shard_id = shard.shard;
    let family = shard.node.cf(CF_LEDGER);
    let mut batch = WriteBatch::default();
    for account_id in &changes.accounts {
        let key = account_key(shard_id, account_id);
        match state.ledger.account(account_id) {
            Some(account) => batch.put_cf(family, key, encode(account, "account", shard_id)?),
            None => batch.delete_cf(family, key),
        }
    }
    for (account_id, idempotency_key) in &changes.debit_records {
        let key = debit_record_key(shard_id, account_id, idempotency_key);
        match state.ledger.debit_record(account_id, idempotency_key) {
            Some(record) => batch.put_cf(family, key, encode(record, "debit record", shard_id)?),
            None => batch.delete_cf(family, key),
        }
    }
    for (account_id, grant_id) in &changes.grant_records {
        let key = grant_record_key(shard_id, account_id, grant_id);
        match state.ledger.grant_record(account_id, grant_id) {
            Some(record) => batch.put_cf(family, key, encode(record, "grant record", shard_id)?),
            None => batch.delete_cf(family, key),
        }
    }
    for (account_id, reservation_id) in &changes.reservations {
        let key = reservation_key(shard_id, account_id, reservation_id);
        match state.ledger.reservation(account_id, reservation_id) {
            Some(reservation) => {
                batch.put_cf(family, key, encode(reservation, "reservation", shard_id)?)
            }
            None => batch.delete_cf(family, key),
        }
    }
    for (account_id, first_sequence) in &changes.journal {
        let journal = state.ledger.journal(account_id);
        let first_index = (*first_sequence as usize).saturating_sub(1);
        for entry in journal.get(first_index..).unwrap_or_default() {
            batch.put_cf(
                family,
                journal_key(shard_id, account_id, entry.sequence),
                encode(entry, "journal entry", shard_id)?,
            );
        }
    }
    if let Some(first_sequence) = changes.events_from {
        let events = state.ledger.events();
        let first_index = (first_sequence as usize).saturating_sub(1);
        for event in events.get(first_index..).unwrap_or_default() {
            batch.put_cf(
                family,
                event_key(shard_id, event.sequence),
                encode(event, "event", shard_id)?,
            );
        }
    }
    if changes.meta {
        batch.put_cf(
            family,
            shard_meta_key(shard_id),
            encode(state.ledger.meta(), "shard meta", shard_id)?,
        );
    }
    let applied_state = AppliedState {
        last_applied: state.last_applied,
        last_membership: state.last_membership.clone(),
        last_timestamp_ms: state.ledger.last_timestamp_ms(),
    };
    batch.put_cf(
        family,
        applied_state_key(shard_id),
        encode(&applied_state, "applied state", shard_id)?,
    );
    Ok(batch)
}

fn write_changes(shard: &ShardHandle, batch: WriteBatch) -> Result<(), StorageError> {
    if shard.node.fail_points.apply_write_error_is_set() {
        return Err(StorageError::FailPoint {
            fail_point: "apply_write_error",
            shard: shard.shard,
        });
    }
    // Not synced: the Raft log is the durable source of every applied entry. If a crash loses
    // this write, `last_applied` on disk is older and openraft re-applies the missing entries
    // from the log, deterministically, to the same state. Those entries cannot have been purged:
    // a purge is written after the state machine writes it relies on, and RocksDB's single WAL
    // recovers a prefix of the writes (with several column families it syncs the older WAL
    // files before a memtable flush makes a later write durable on its own).
    shard
        .node
        .write(batch, Durability::Buffered, CF_LEDGER, shard.shard)
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
        let mut batch = WriteBatch::default();
        put_snapshot(&mut batch, shard, &meta, sequence, &data)?;
        // Not synced: the state machine is persisted by itself, so the snapshot is only what
        // is sent to lagging followers. If a crash loses it, openraft builds one again at start
        // (and a log purge that relied on it cannot survive without it: it comes later in the
        // WAL).
        shard
            .node
            .write(batch, Durability::Buffered, CF_SNAPSHOT, shard.shard)?;
        slot.stored_last_log_id = Some(meta.last_log_id);
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

/// Adds the writes that make `meta` and `data` the shard's current snapshot to `batch`.
fn put_snapshot(
    batch: &mut WriteBatch,
    shard: &ShardHandle,
    meta: &LedgerSnapshotMeta,
    sequence: u64,
    data: &[u8],
) -> Result<(), StorageError> {
    let family = shard.node.cf(CF_SNAPSHOT);
    let stored_meta = StoredSnapshotMeta {
        meta: meta.clone(),
        sequence,
    };
    batch.put_cf(
        family,
        snapshot_key(shard.shard, SNAPSHOT_META),
        encode(&stored_meta, "snapshot meta", shard.shard)?,
    );
    batch.put_cf(family, snapshot_key(shard.shard, SNAPSHOT_DATA), data);
    Ok(())
}

fn install_snapshot_blocking(
    shard: &ShardHandle,
    state: &SharedShardState,
    snapshots: &SnapshotSlot,
    meta: LedgerSnapshotMeta,
    data: Vec<u8>,
) -> Result<(), StorageError> {
    let shard_id = shard.shard;
    // The version is the payload's first field: read it alone first, so that a payload of
    // another version is refused as such rather than as undecodable bytes.
    let (format_version, payload_start) = decode_format_version(&data, shard_id)?;
    if format_version != SNAPSHOT_FORMAT_VERSION {
        return Err(StorageError::Corrupt {
            what: "snapshot",
            shard: shard_id,
            detail: format!(
                "format version {format_version} (this node reads {SNAPSHOT_FORMAT_VERSION})"
            ),
        });
    }
    let payload: SnapshotPayload = decode(&data[payload_start..], "snapshot", shard_id)?;
    if payload.last_applied != meta.last_log_id || payload.last_membership != meta.last_membership {
        return Err(StorageError::Corrupt {
            what: "snapshot",
            shard: shard_id,
            detail: format!(
                "payload at {:?} with membership {:?} does not match its meta {meta}",
                payload.last_applied, payload.last_membership
            ),
        });
    }

    let ledger_family = shard.node.cf(CF_LEDGER);
    let (range_start, range_end) = shard_range(shard_id);
    let mut batch = WriteBatch::default();
    batch.delete_range_cf(ledger_family, range_start, range_end);
    for account in &payload.accounts {
        batch.put_cf(
            ledger_family,
            account_key(shard_id, &account.account_id),
            encode(account, "account", shard_id)?,
        );
    }
    for ((account_id, idempotency_key), record) in &payload.debit_records {
        batch.put_cf(
            ledger_family,
            debit_record_key(shard_id, account_id, idempotency_key),
            encode(record, "debit record", shard_id)?,
        );
    }
    for ((account_id, grant_id), record) in &payload.grant_records {
        batch.put_cf(
            ledger_family,
            grant_record_key(shard_id, account_id, grant_id),
            encode(record, "grant record", shard_id)?,
        );
    }
    for ((account_id, reservation_id), reservation) in &payload.reservations {
        batch.put_cf(
            ledger_family,
            reservation_key(shard_id, account_id, reservation_id),
            encode(reservation, "reservation", shard_id)?,
        );
    }
    for (account_id, entry) in &payload.journal {
        batch.put_cf(
            ledger_family,
            journal_key(shard_id, account_id, entry.sequence),
            encode(entry, "journal entry", shard_id)?,
        );
    }
    for event in &payload.events {
        batch.put_cf(
            ledger_family,
            event_key(shard_id, event.sequence),
            encode(event, "event", shard_id)?,
        );
    }
    batch.put_cf(
        ledger_family,
        shard_meta_key(shard_id),
        encode(&payload.meta, "shard meta", shard_id)?,
    );
    let applied_state = AppliedState {
        last_applied: meta.last_log_id,
        last_membership: meta.last_membership.clone(),
        last_timestamp_ms: payload.last_timestamp_ms,
    };
    batch.put_cf(
        ledger_family,
        applied_state_key(shard_id),
        encode(&applied_state, "applied state", shard_id)?,
    );

    let mut slot = snapshots.current.lock();
    let sequence = slot.next_sequence;
    slot.next_sequence += 1;
    put_snapshot(&mut batch, shard, &meta, sequence, &data)?;
    // One fsynced batch: the old ledger range is gone and the new one, the applied state and
    // the snapshot are in place, all or nothing, before openraft is told the install is done.
    shard
        .node
        .write(batch, Durability::Synced, CF_LEDGER, shard_id)?;
    slot.stored_last_log_id = Some(meta.last_log_id);
    drop(slot);

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
    *state.write() = ShardState {
        ledger,
        last_applied: meta.last_log_id,
        last_membership: meta.last_membership.clone(),
    };
    tracing::info!(shard = shard_id, snapshot = %meta, "snapshot installed");
    Ok(())
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
    let data = shard
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
        })?;
    Ok(Some(Snapshot {
        meta: stored.meta,
        snapshot: Box::new(Cursor::new(data)),
    }))
}
