//! Behaviour of the node storage beyond openraft's suite: restart, snapshot transfer, shard
//! isolation, group commit and the fail points.
//!
//! A shard's state survives a restart through its snapshot (`checkpoint`) and the committed log
//! after it; tests that reopen a shard checkpoint it first.

mod common;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use common::*;
use ledger_core::Ledger;
use ledger_raft::{BatchOutcome, Entry, LedgerBatch, LedgerMembership, ShardId};
use ledger_storage::{LogStore, NodeStorage, StateMachineStore, StorageError};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{RaftLogReader, RaftSnapshotBuilder, StorageHelper, StoredMembership, Vote};
use tempfile::TempDir;

/// Applies `entry_count` entries (random ledger batches, with a blank entry first and a
/// membership change in the middle) to `state_machine`, in calls of 1 to 4 entries, and checks
/// every outcome against `model`. Returns the membership the model expects.
async fn apply_random_entries(
    state_machine: &mut StateMachineStore,
    model: &mut Ledger,
    generator: &mut CommandGenerator,
    first_index: u64,
    entry_count: u64,
) -> anyhow::Result<LedgerMembership> {
    apply_entries_to(
        None,
        state_machine,
        model,
        generator,
        first_index,
        entry_count,
    )
    .await
}

/// `apply_random_entries`, each call's entries appended to `log_store` first, as openraft does
/// (a follower appends, then applies what the leader says is committed).
async fn log_and_apply_random_entries(
    log_store: &mut LogStore,
    state_machine: &mut StateMachineStore,
    model: &mut Ledger,
    generator: &mut CommandGenerator,
    first_index: u64,
    entry_count: u64,
) -> anyhow::Result<LedgerMembership> {
    apply_entries_to(
        Some(log_store),
        state_machine,
        model,
        generator,
        first_index,
        entry_count,
    )
    .await
}

async fn apply_entries_to(
    mut log_store: Option<&mut LogStore>,
    state_machine: &mut StateMachineStore,
    model: &mut Ledger,
    generator: &mut CommandGenerator,
    first_index: u64,
    entry_count: u64,
) -> anyhow::Result<LedgerMembership> {
    let mut membership = LedgerMembership::default();
    let mut pending: Vec<Entry> = Vec::new();
    let mut expected: Vec<BatchOutcome> = Vec::new();
    for index in first_index..first_index + entry_count {
        let entry = if index == first_index {
            expected.push(BatchOutcome::default());
            blank_entry(2, index)
        } else if index == first_index + entry_count / 2 {
            let entry = membership_entry(2, index, &[1, 2, 3]);
            if let openraft::EntryPayload::Membership(config) = &entry.payload {
                membership = StoredMembership::new(Some(entry.log_id), config.clone());
            }
            expected.push(BatchOutcome::default());
            entry
        } else {
            let batch = generator.batch(1_000_000 + index * 10);
            expected.push(BatchOutcome {
                outcomes: model_apply(model, &batch),
            });
            batch_entry(2, index, batch)
        };
        pending.push(entry);
        if pending.len() == 1 + (index % 4) as usize {
            if let Some(log_store) = log_store.as_deref_mut() {
                log_store.blocking_append(pending.clone()).await?;
            }
            let outcomes = state_machine.apply(std::mem::take(&mut pending)).await?;
            ensure!(
                outcomes == std::mem::take(&mut expected),
                "outcomes differ from the model"
            );
        }
    }
    if let Some(log_store) = log_store {
        log_store.blocking_append(pending.clone()).await?;
    }
    let outcomes = state_machine.apply(pending).await?;
    ensure!(outcomes == expected, "outcomes differ from the model");
    Ok(membership)
}

/// Builds a snapshot of the shard: its checkpoint, the state it opens with next time.
async fn checkpoint(state_machine: &mut StateMachineStore) -> anyhow::Result<()> {
    state_machine
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await?;
    Ok(())
}

fn open_shard_stores(
    storage: &NodeStorage,
    shard: ShardId,
) -> anyhow::Result<(LogStore, StateMachineStore, ledger_raft::SharedShardState)> {
    storage
        .open_shard(shard)
        .with_context(|| format!("open shard {shard}"))
}

#[tokio::test]
async fn restart_recovers_the_snapshot_then_the_committed_log_and_the_raft_state(
) -> anyhow::Result<()> {
    let seed = test_seed("restart_recovers_the_snapshot_then_the_committed_log_and_the_raft_state");
    let directory = TempDir::new()?;
    let shard = 3;
    let mut model = Ledger::new();
    let mut generator = CommandGenerator::new(seed, "acct");

    // Entries 1..=30 are applied and checkpointed, 31..=45 are applied and known committed,
    // 46..=60 are applied here but the restarted node does not know them committed (the
    // commit index is saved unsynced, so a crash may lose its latest value), and 61..=65 are
    // appended, never committed, and truncated from 63 on.
    let (at_snapshot, at_commit, membership_at_commit, before) = {
        let storage = NodeStorage::open(directory.path())?;
        let (mut log_store, mut machine, state) = open_shard_stores(&storage, shard)?;
        log_store.save_vote(&Vote::new_committed(2, 1)).await?;
        log_and_apply_random_entries(
            &mut log_store,
            &mut machine,
            &mut model,
            &mut generator,
            1,
            30,
        )
        .await?;
        checkpoint(&mut machine).await?;
        let at_snapshot = state.read().clone();
        let membership_at_commit = log_and_apply_random_entries(
            &mut log_store,
            &mut machine,
            &mut model,
            &mut generator,
            31,
            15,
        )
        .await?;
        let at_commit = model.clone();
        log_and_apply_random_entries(
            &mut log_store,
            &mut machine,
            &mut model,
            &mut generator,
            46,
            15,
        )
        .await?;
        log_store
            .blocking_append(
                (61..=65)
                    .map(|index| blank_entry(2, index))
                    .collect::<Vec<_>>(),
            )
            .await?;
        log_store.save_committed(Some(log_id(2, 45))).await?;
        log_store.purge(log_id(2, 10)).await?;
        log_store.truncate(log_id(2, 63)).await?;
        let before = state.read().clone();
        (at_snapshot, at_commit, membership_at_commit, before)
    };
    assert_model_is_rich(&model);
    assert_eq!(before.ledger, model);

    let storage = NodeStorage::open(directory.path())?;
    let (mut log_store, mut machine, state) = open_shard_stores(&storage, shard)?;
    {
        // The shard opens with its snapshot's state...
        let opened = state.read();
        assert_eq!(opened.ledger, at_snapshot.ledger);
        assert_eq!(opened.last_applied, Some(log_id(2, 30)));
        assert_eq!(opened.last_membership, at_snapshot.last_membership);
    }
    // ...and openraft's start re-applies the committed log after it, and nothing beyond.
    StorageHelper::new(&mut log_store, &mut machine)
        .get_initial_state()
        .await?;
    {
        let recovered = state.read();
        assert_eq!(recovered.ledger, at_commit, "the state at the commit index");
        assert_eq!(recovered.ledger.digest(), at_commit.digest());
        assert_eq!(recovered.last_applied, Some(log_id(2, 45)));
        assert_eq!(recovered.last_membership, membership_at_commit);
    }
    assert_eq!(
        log_store.read_vote().await?,
        Some(Vote::new_committed(2, 1))
    );
    assert_eq!(log_store.read_committed().await?, Some(log_id(2, 45)));
    let log_state = log_store.get_log_state().await?;
    assert_eq!(log_state.last_purged_log_id, Some(log_id(2, 10)));
    assert_eq!(log_state.last_log_id, Some(log_id(2, 62)));
    let entries = log_store.try_get_log_entries(0..).await?;
    let indexes: Vec<u64> = entries.iter().map(|entry| entry.log_id.index).collect();
    assert_eq!(indexes, (11..=62).collect::<Vec<u64>>());

    // When the leader says 46..=60 are committed, applying them from the log reaches the state
    // the node had before it stopped, with the same outcomes.
    let rest: Vec<Entry> = entries
        .into_iter()
        .filter(|entry| (46..=60).contains(&entry.log_id.index))
        .collect();
    machine.apply(rest).await?;
    assert_eq!(state.read().ledger, model, "the state before the restart");
    assert_eq!(
        machine.applied_state().await?,
        (Some(log_id(2, 60)), before.last_membership.clone())
    );

    // Every grant decided as rejected before the restart is still rejected after it: a retry
    // is that rejection, replayed, and never a new decision (a grant to an account created
    // since, say).
    let (retries, expected) = grant_rejection_retries(&model);
    let batch = LedgerBatch {
        timestamp_ms: 2_000_000,
        commands: retries.into(),
    };
    let outcomes = machine.apply([batch_entry(2, 61, batch)]).await?;
    assert_eq!(
        outcomes,
        vec![BatchOutcome { outcomes: expected }],
        "retries of rejected grants after the restart"
    );
    Ok(())
}

#[tokio::test]
async fn snapshot_installs_on_another_node_and_replaces_the_whole_shard() -> anyhow::Result<()> {
    let seed = test_seed("snapshot_installs_on_another_node_and_replaces_the_whole_shard");
    let shard = 5;
    let neighbour = 6;

    // The leader's node: its shard applies 50 entries, then builds a snapshot.
    let leader_directory = TempDir::new()?;
    let leader_storage = NodeStorage::open(leader_directory.path())?;
    let (_leader_log, mut leader_machine, leader_state) =
        open_shard_stores(&leader_storage, shard)?;
    let mut leader_model = Ledger::new();
    let mut generator = CommandGenerator::new(seed, "acct");
    apply_random_entries(
        &mut leader_machine,
        &mut leader_model,
        &mut generator,
        1,
        50,
    )
    .await?;
    assert_model_is_rich(&leader_model);
    let snapshot = leader_machine
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await?;
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(2, 50)));
    let current = leader_machine
        .get_current_snapshot()
        .await?
        .context("the built snapshot is the current one")?;
    assert_eq!(current.meta, snapshot.meta);
    let second = leader_machine
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await?;
    assert_ne!(
        second.meta.snapshot_id, snapshot.meta.snapshot_id,
        "snapshot ids are unique"
    );

    // The follower's node: the same shard holds other, older accounts; a neighbour shard holds
    // its own.
    let follower_directory = TempDir::new()?;
    let follower_storage = NodeStorage::open(follower_directory.path())?;
    let mut stale_model = Ledger::new();
    let mut neighbour_model = Ledger::new();
    {
        let (_log, mut machine, _state) = open_shard_stores(&follower_storage, shard)?;
        let mut stale = CommandGenerator::new(seed ^ 1, "stale");
        apply_random_entries(&mut machine, &mut stale_model, &mut stale, 1, 20).await?;
        checkpoint(&mut machine).await?;
        let (_log, mut machine, _state) = open_shard_stores(&follower_storage, neighbour)?;
        let mut other = CommandGenerator::new(seed ^ 2, "other");
        apply_random_entries(&mut machine, &mut neighbour_model, &mut other, 1, 20).await?;
        checkpoint(&mut machine).await?;
    }
    ensure!(
        stale_model.accounts().next().is_some(),
        "the stale shard holds accounts"
    );
    ensure!(
        stale_model.grant_records().next().is_some(),
        "the stale shard holds grant records"
    );

    {
        let (_log, mut machine, state) = open_shard_stores(&follower_storage, shard)?;
        let mut receiving = machine.begin_receiving_snapshot().await?;
        *receiving = *current.snapshot;
        machine.install_snapshot(&current.meta, receiving).await?;
        assert_eq!(
            state.read().ledger.digest(),
            leader_state.read().ledger.digest()
        );
        assert_eq!(
            machine
                .get_current_snapshot()
                .await?
                .map(|snapshot| snapshot.meta),
            Some(current.meta.clone())
        );
    }

    // After a restart the follower's shard is exactly the leader's: the stale keys are gone.
    drop(follower_storage);
    let follower_storage = NodeStorage::open(follower_directory.path())?;
    let (_log, mut machine, state) = open_shard_stores(&follower_storage, shard)?;
    {
        let restored = state.read();
        assert_eq!(restored.ledger, leader_model);
        assert_eq!(restored.ledger.digest(), leader_model.digest());
        for stale_account in stale_model.accounts() {
            assert!(restored.ledger.account(&stale_account.account_id).is_none());
        }
        for ((account_id, grant_id), _) in stale_model.grant_records() {
            assert!(restored.ledger.grant_record(account_id, grant_id).is_none());
        }
        for ((account_id, grant_id), record) in leader_model.grant_records() {
            assert_eq!(
                restored.ledger.grant_record(account_id, grant_id),
                Some(record)
            );
        }
    }
    assert_eq!(
        machine.applied_state().await?,
        (
            current.meta.last_log_id,
            current.meta.last_membership.clone()
        )
    );
    let (_log, _machine, neighbour_state) = open_shard_stores(&follower_storage, neighbour)?;
    assert_eq!(
        neighbour_state.read().ledger,
        neighbour_model,
        "the neighbour shard is untouched"
    );
    Ok(())
}

#[tokio::test]
async fn a_snapshot_of_another_format_version_is_refused_and_changes_nothing() -> anyhow::Result<()>
{
    let seed = test_seed("a_snapshot_of_another_format_version_is_refused_and_changes_nothing");
    let directory = TempDir::new()?;
    let storage = NodeStorage::open(directory.path())?;
    let (_leader_log, mut leader, _leader_state) = open_shard_stores(&storage, 1)?;
    let mut leader_model = Ledger::new();
    let mut generator = CommandGenerator::new(seed, "acct");
    apply_random_entries(&mut leader, &mut leader_model, &mut generator, 1, 10).await?;
    let snapshot = leader.get_snapshot_builder().await.build_snapshot().await?;

    let (_log, mut follower, follower_state) = open_shard_stores(&storage, 2)?;
    let mut follower_model = Ledger::new();
    let mut other = CommandGenerator::new(seed ^ 1, "other");
    apply_random_entries(&mut follower, &mut follower_model, &mut other, 1, 10).await?;
    let applied_before = follower.applied_state().await?;

    // The version is the first byte (bincode writes a small u32 as one byte): make it 3, the
    // version before the cluster map existed.
    let mut data = snapshot.snapshot.into_inner();
    ensure!(data.first() == Some(&4), "the current format version is 4");
    data[0] = 3;
    let mut receiving = follower.begin_receiving_snapshot().await?;
    *receiving = std::io::Cursor::new(data);
    let refused = follower.install_snapshot(&snapshot.meta, receiving).await;
    let error = refused
        .err()
        .context("a snapshot of version 3 is refused")?;
    ensure!(
        error.to_string().contains("format version 3"),
        "refused for its version: {error}"
    );
    assert_eq!(follower_state.read().ledger, follower_model);
    assert_eq!(follower.applied_state().await?, applied_before);
    Ok(())
}

#[tokio::test]
async fn shards_in_one_database_do_not_see_each_other() -> anyhow::Result<()> {
    let seed = test_seed("shards_in_one_database_do_not_see_each_other");
    let directory = TempDir::new()?;
    let shards: [ShardId; 3] = [1, 2, 256];
    let mut models = Vec::new();
    {
        let storage = NodeStorage::open(directory.path())?;
        for (position, &shard) in shards.iter().enumerate() {
            let term = 10 + position as u64;
            let (mut log_store, mut machine, _state) = open_shard_stores(&storage, shard)?;
            let entries: Vec<Entry> = (1..=(20 + position as u64))
                .map(|index| blank_entry(term, index))
                .collect();
            log_store.blocking_append(entries).await?;
            log_store.save_vote(&Vote::new(term, shard as u64)).await?;
            let mut model = Ledger::new();
            let mut generator = CommandGenerator::new(seed + position as u64, &format!("s{shard}"));
            apply_random_entries(&mut machine, &mut model, &mut generator, 1, 30).await?;
            checkpoint(&mut machine).await?;
            models.push(model);
        }
        // Truncating one shard's log and purging another's leaves the third one whole.
        let (mut first_log, _, _) = open_shard_stores(&storage, shards[0])?;
        first_log.truncate(log_id(10, 5)).await?;
        let (mut second_log, _, _) = open_shard_stores(&storage, shards[1])?;
        second_log.purge(log_id(11, 15)).await?;
    }

    let storage = NodeStorage::open(directory.path())?;
    let expected_indexes: [Vec<u64>; 3] =
        [(1..=4).collect(), (16..=21).collect(), (1..=22).collect()];
    for (position, &shard) in shards.iter().enumerate() {
        let term = 10 + position as u64;
        let (mut log_store, _machine, state) = open_shard_stores(&storage, shard)?;
        assert_eq!(
            state.read().ledger,
            models[position],
            "ledger of shard {shard}"
        );
        assert_eq!(
            log_store.read_vote().await?,
            Some(Vote::new(term, shard as u64))
        );
        let entries = log_store.try_get_log_entries(0..).await?;
        assert!(entries
            .iter()
            .all(|entry| entry.log_id.leader_id.term == term));
        let indexes: Vec<u64> = entries.iter().map(|entry| entry.log_id.index).collect();
        assert_eq!(indexes, expected_indexes[position], "log of shard {shard}");
    }
    Ok(())
}

#[tokio::test]
async fn a_shard_opens_once_at_a_time() -> anyhow::Result<()> {
    let directory = TempDir::new()?;
    let storage = NodeStorage::open(directory.path())?;
    let stores = open_shard_stores(&storage, 4)?;
    assert!(matches!(
        storage.open_shard(4),
        Err(StorageError::ShardAlreadyOpen { shard: 4 })
    ));
    assert!(matches!(
        storage.open_shard(u32::MAX),
        Err(StorageError::ShardIdOutOfRange { .. })
    ));
    drop(stores);
    open_shard_stores(&storage, 4)?;
    Ok(())
}

/// Opens `shard` and checks it is an empty replica (no vote, no entry, no state), then closes it.
async fn assert_opens_empty(storage: &NodeStorage, shard: ShardId) -> anyhow::Result<()> {
    let (mut log_store, _machine, state) = open_shard_stores(storage, shard)?;
    ensure!(
        log_store.read_vote().await?.is_none(),
        "shard {shard} has a vote"
    );
    ensure!(log_store.try_get_log_entries(0..).await?.is_empty());
    assert_eq!(state.read().ledger, Ledger::new());
    assert_eq!(state.read().last_applied, None);
    Ok(())
}

#[tokio::test]
async fn a_deleted_shard_is_gone_and_its_neighbours_and_the_node_record_stay() -> anyhow::Result<()>
{
    let seed = test_seed("a_deleted_shard_is_gone_and_its_neighbours_and_the_node_record_stay");
    let directory = TempDir::new()?;
    let meta_shard = ledger_core::cluster::META_SHARD;
    let shards: [ShardId; 3] = [3, 4, meta_shard];
    let mut models = Vec::new();
    {
        let storage = NodeStorage::open(directory.path())?;
        ensure!(storage.node_record()?.is_none());
        storage.put_node_record(b"record-1")?;
        for &shard in &shards {
            let (mut log_store, mut machine, _state) = open_shard_stores(&storage, shard)?;
            log_store
                .blocking_append(
                    (1..=12)
                        .map(|index| blank_entry(5, index))
                        .collect::<Vec<_>>(),
                )
                .await?;
            log_store.save_vote(&Vote::new(5, 1)).await?;
            let mut model = Ledger::new();
            let mut generator = CommandGenerator::new(seed + shard as u64, &format!("s{shard}"));
            apply_random_entries(&mut machine, &mut model, &mut generator, 1, 12).await?;
            checkpoint(&mut machine).await?;
            models.push(model);
        }
        assert_eq!(storage.stored_shards()?, shards.into_iter().collect());
        // An open shard cannot be deleted.
        let stores = open_shard_stores(&storage, 4)?;
        assert!(matches!(
            storage.delete_shard(4),
            Err(StorageError::ShardAlreadyOpen { shard: 4 })
        ));
        drop(stores);
        ensure!(
            snapshot_files(&directory, 4)?.len() == 1,
            "shard 4 has its snapshot file"
        );
        storage.delete_shard(4)?;
        ensure!(
            snapshot_files(&directory, 4)?.is_empty(),
            "a deleted shard's snapshot files are deleted with it"
        );
        storage.put_node_record(b"record-2")?;
    }

    let storage = NodeStorage::open(directory.path())?;
    assert_eq!(storage.node_record()?, Some(b"record-2".to_vec()));
    assert_eq!(
        storage.stored_shards()?,
        [3, meta_shard].into_iter().collect()
    );
    // The deleted shard opens as a new, empty replica; the others are whole.
    assert_opens_empty(&storage, 4).await?;
    for (position, shard) in [(0, 3), (2, meta_shard)] {
        let (mut log_store, _machine, state) = open_shard_stores(&storage, shard)?;
        assert_eq!(
            state.read().ledger,
            models[position],
            "ledger of shard {shard}"
        );
        assert_eq!(log_store.try_get_log_entries(0..).await?.len(), 12);
    }
    Ok(())
}

/// Regression (a restored backup whose metadata group could never elect a leader again): a
/// replica opened when the cluster formed, but not yet contacted by its group when the node
/// stopped, had stored nothing, so the restart did not reopen it.
#[tokio::test]
async fn a_replica_that_stored_nothing_yet_is_still_hosted_after_a_restart() -> anyhow::Result<()> {
    let directory = TempDir::new()?;
    let meta_shard = ledger_core::cluster::META_SHARD;
    {
        let storage = NodeStorage::open(directory.path())?;
        ensure!(storage.stored_shards()?.is_empty());
        for shard in [2, meta_shard] {
            // Opened, then closed without a vote, an entry or a snapshot.
            drop(open_shard_stores(&storage, shard)?);
        }
        assert_eq!(
            storage.stored_shards()?,
            [2, meta_shard].into_iter().collect()
        );
    }
    let storage = NodeStorage::open(directory.path())?;
    assert_eq!(
        storage.stored_shards()?,
        [2, meta_shard].into_iter().collect()
    );
    // Reopened, it is the same empty replica; deleted, it is no longer hosted.
    assert_opens_empty(&storage, 2).await?;
    storage.delete_shard(2)?;
    assert_eq!(storage.stored_shards()?, [meta_shard].into_iter().collect());
    Ok(())
}

/// Waits until `condition` holds, failing after a generous deadline (a hang, not a slow run).
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        ensure!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_wal_sync_completes_the_appends_of_many_shards() -> anyhow::Result<()> {
    let directory = TempDir::new()?;
    let storage = NodeStorage::open(directory.path())?;
    let shard_count: ShardId = 8;
    let mut log_stores = Vec::new();
    for shard in 0..shard_count {
        log_stores.push(open_shard_stores(&storage, shard)?.0);
    }

    // Held syncer: every append writes and returns, its callback waits.
    storage.fail_points().pause_wal_sync();
    let mut appends = Vec::new();
    let mut readers = Vec::new();
    for mut log_store in log_stores {
        readers.push(log_store.get_log_reader().await);
        appends.push(tokio::spawn(async move {
            let entries: Vec<Entry> = (1..=3).map(|index| blank_entry(1, index)).collect();
            log_store.blocking_append(entries).await.map(|()| log_store)
        }));
    }
    let pending_target = shard_count as usize;
    wait_until("every shard's append waits for the WAL sync", || {
        storage.fail_points().pending_wal_syncs() == pending_target
    })
    .await?;
    // Readable before durable: openraft may replicate entries whose flush is still pending.
    for reader in &mut readers {
        assert_eq!(reader.try_get_log_entries(1..4).await?.len(), 3);
    }
    assert_eq!(storage.log_sync_stats().appends_completed, 0);

    storage.fail_points().resume_wal_sync();
    let mut log_stores = Vec::new();
    for append in appends {
        log_stores.push(append.await??);
    }
    let stats = storage.log_sync_stats();
    assert_eq!(stats.wal_syncs, 1, "one sync served all shards");
    assert_eq!(stats.appends_completed, u64::from(shard_count));

    // Under free-running concurrent load every append completes and the logs stay in order.
    let appends_per_shard = 40;
    let mut tasks = Vec::new();
    for mut log_store in log_stores {
        tasks.push(tokio::spawn(async move {
            for index in 4..4 + appends_per_shard {
                log_store.blocking_append([blank_entry(1, index)]).await?;
            }
            let indexes: Vec<u64> = log_store
                .try_get_log_entries(0..)
                .await?
                .iter()
                .map(|entry| entry.log_id.index)
                .collect();
            anyhow::Ok(indexes)
        }));
    }
    for task in tasks {
        assert_eq!(
            task.await??,
            (1..4 + appends_per_shard).collect::<Vec<u64>>()
        );
    }
    let stats = storage.log_sync_stats();
    assert_eq!(
        stats.appends_completed,
        u64::from(shard_count) * (1 + appends_per_shard)
    );
    println!(
        "group commit: {} appends in {} WAL syncs",
        stats.appends_completed, stats.wal_syncs
    );
    Ok(())
}

#[tokio::test]
async fn a_failed_wal_sync_fails_its_appends_and_every_later_one() -> anyhow::Result<()> {
    let directory = TempDir::new()?;
    let storage = NodeStorage::open(directory.path())?;
    let (mut log_store, _machine, _state) = open_shard_stores(&storage, 0)?;
    log_store.blocking_append([blank_entry(1, 1)]).await?;

    storage.fail_points().set_wal_sync_error(true);
    assert!(log_store
        .blocking_append([blank_entry(1, 2)])
        .await
        .is_err());
    // The fault is gone, but a sync after a failed fsync cannot be trusted: still an error.
    storage.fail_points().set_wal_sync_error(false);
    assert!(log_store
        .blocking_append([blank_entry(1, 3)])
        .await
        .is_err());
    Ok(())
}

#[tokio::test]
async fn a_database_with_the_legacy_ledger_family_opens_and_drops_it() -> anyhow::Result<()> {
    let directory = TempDir::new()?;
    {
        // The families of an earlier version, which also kept a `ledger` family written on
        // every apply.
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let db = rocksdb::DB::open_cf(
            &options,
            directory.path(),
            ["raft_log", "raft_state", "ledger", "snapshot"],
        )?;
        let ledger = db.cf_handle("ledger").context("the ledger family")?;
        db.put_cf(ledger, b"\0\0\0\x01\x01stale", b"value")?;
    }
    {
        let storage = NodeStorage::open(directory.path())?;
        let (_log, _machine, state) = open_shard_stores(&storage, 1)?;
        assert_eq!(state.read().ledger, Ledger::new());
    }
    let families = rocksdb::DB::list_cf(&rocksdb::Options::default(), directory.path())?;
    assert!(
        !families.iter().any(|family| family == "ledger"),
        "families after the open: {families:?}"
    );
    // And it opens again without it.
    NodeStorage::open(directory.path())?;
    Ok(())
}

/// The names of the files in `shard`'s snapshot directory (none when it does not exist).
fn snapshot_files(database: &TempDir, shard: ShardId) -> anyhow::Result<Vec<String>> {
    let directory = database.path().join("snapshots").join(shard.to_string());
    if !directory.exists() {
        return Ok(Vec::new());
    }
    let mut names = std::fs::read_dir(&directory)?
        .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    names.sort();
    Ok(names)
}

#[tokio::test]
async fn a_snapshot_is_one_file_and_what_a_crash_left_beside_it_is_deleted_at_open(
) -> anyhow::Result<()> {
    let seed =
        test_seed("a_snapshot_is_one_file_and_what_a_crash_left_beside_it_is_deleted_at_open");
    let directory = TempDir::new()?;
    let shard = 6;
    let mut model = Ledger::new();
    let mut generator = CommandGenerator::new(seed, "acct");
    for first_index in [1, 11] {
        apply_ten_entries_and_snapshot(&directory, shard, &mut model, &mut generator, first_index)
            .await?;
    }
    // The second build replaced the first one's file.
    assert_eq!(
        snapshot_files(&directory, shard)?,
        ["00000000000000000001.snapshot"]
    );
    // A crash can leave a file being written, and a whole file no meta names yet.
    let shard_directory = directory.path().join("snapshots").join(shard.to_string());
    std::fs::write(
        shard_directory.join("00000000000000000002.snapshot-partial"),
        b"half",
    )?;
    std::fs::write(
        shard_directory.join("00000000000000000002.snapshot"),
        b"whole",
    )?;

    let storage = NodeStorage::open(directory.path())?;
    let (_log_store, _machine, state) = open_shard_stores(&storage, shard)?;
    assert_eq!(
        state.read().ledger,
        model,
        "the shard opens with its snapshot"
    );
    assert_eq!(
        snapshot_files(&directory, shard)?,
        ["00000000000000000001.snapshot"]
    );
    Ok(())
}

#[tokio::test]
async fn a_backup_holds_the_snapshot_files_its_database_names() -> anyhow::Result<()> {
    let seed = test_seed("a_backup_holds_the_snapshot_files_its_database_names");
    let directory = TempDir::new()?;
    let backups = TempDir::new()?;
    let backup = backups.path().join("nightly");
    let shards: [ShardId; 2] = [1, 2];
    let mut at_backup = Vec::new();
    {
        let storage = NodeStorage::open(directory.path())?;
        let mut stores = Vec::new();
        for &shard in &shards {
            let (_log_store, mut machine, state) = open_shard_stores(&storage, shard)?;
            let mut model = Ledger::new();
            let mut generator = CommandGenerator::new(seed + u64::from(shard), "acct");
            apply_random_entries(&mut machine, &mut model, &mut generator, 1, 10).await?;
            checkpoint(&mut machine).await?;
            at_backup.push(state.read().clone());
            stores.push((machine, model, generator));
        }
        storage.checkpoint(&backup)?;
        // Later snapshots replace (and delete) the live files; the backup keeps its own.
        for (machine, model, generator) in &mut stores {
            apply_random_entries(machine, model, generator, 11, 10).await?;
            checkpoint(machine).await?;
        }
    }

    let restored = NodeStorage::open(&backup)?;
    assert_eq!(restored.stored_shards()?, shards.into_iter().collect());
    for (position, &shard) in shards.iter().enumerate() {
        let (_log_store, _machine, state) = open_shard_stores(&restored, shard)?;
        let state = state.read();
        assert_eq!(
            state.ledger, at_backup[position].ledger,
            "ledger of shard {shard}"
        );
        assert_eq!(state.last_applied, at_backup[position].last_applied);
    }
    Ok(())
}

#[tokio::test]
async fn a_snapshot_stored_in_the_database_by_an_older_version_still_opens() -> anyhow::Result<()> {
    let seed = test_seed("a_snapshot_stored_in_the_database_by_an_older_version_still_opens");
    let directory = TempDir::new()?;
    let shard: ShardId = 9;
    let mut model = Ledger::new();
    let mut generator = CommandGenerator::new(seed, "acct");
    apply_ten_entries_and_snapshot(&directory, shard, &mut model, &mut generator, 1).await?;
    // Older versions kept the bytes in the `snapshot` family under shard ++ 2 and had no file.
    let file = directory
        .path()
        .join("snapshots")
        .join(shard.to_string())
        .join("00000000000000000000.snapshot");
    let bytes = std::fs::read(&file)?;
    std::fs::remove_file(&file)?;
    {
        let database = open_raw_database(&directory)?;
        let family = database
            .cf_handle("snapshot")
            .context("the snapshot column family")?;
        database.put_cf(family, legacy_snapshot_data_key(shard), bytes)?;
    }

    let storage = NodeStorage::open(directory.path())?;
    {
        let (_log_store, mut machine, state) = open_shard_stores(&storage, shard)?;
        assert_eq!(
            state.read().ledger,
            model,
            "the shard opens with the old snapshot"
        );
        // The next snapshot is a file, and the old bytes are gone from the database.
        apply_random_entries(&mut machine, &mut model, &mut generator, 11, 10).await?;
        checkpoint(&mut machine).await?;
    }
    assert_eq!(
        snapshot_files(&directory, shard)?,
        ["00000000000000000001.snapshot"]
    );
    {
        let (_log_store, _machine, state) = open_shard_stores(&storage, shard)?;
        assert_eq!(state.read().ledger, model);
    }
    drop(storage);
    let database = open_raw_database(&directory)?;
    let family = database
        .cf_handle("snapshot")
        .context("the snapshot column family")?;
    ensure!(
        database
            .get_cf(family, legacy_snapshot_data_key(shard))?
            .is_none(),
        "the old bytes are deleted with the switch to the file"
    );
    Ok(())
}

/// The node's RocksDB opened directly, with every column family it has.
fn open_raw_database(directory: &TempDir) -> anyhow::Result<rocksdb::DB> {
    let options = rocksdb::Options::default();
    let families = rocksdb::DB::list_cf(&options, directory.path())?;
    Ok(rocksdb::DB::open_cf(&options, directory.path(), families)?)
}

/// Where versions before snapshot files kept a snapshot's bytes: the `snapshot` family, under
/// the shard id (big endian) and the tag 2.
fn legacy_snapshot_data_key(shard: ShardId) -> Vec<u8> {
    let mut key = shard.to_be_bytes().to_vec();
    key.push(2);
    key
}

/// Opens the node storage at `directory`, applies ten random entries from `first_index` to
/// `shard`, builds its snapshot, and closes the storage.
async fn apply_ten_entries_and_snapshot(
    directory: &TempDir,
    shard: ShardId,
    model: &mut Ledger,
    generator: &mut CommandGenerator,
    first_index: u64,
) -> anyhow::Result<()> {
    let storage = NodeStorage::open(directory.path())?;
    let (_log_store, mut machine, _state) = open_shard_stores(&storage, shard)?;
    apply_random_entries(&mut machine, model, generator, first_index, 10).await?;
    checkpoint(&mut machine).await
}
