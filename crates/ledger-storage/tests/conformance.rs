//! openraft's own storage conformance suite, run against `LogStore` and `StateMachineStore`.

mod common;

use ledger_raft::{NodeId, ShardId, TypeConfig};
use ledger_storage::{LogStore, NodeStorage, StateMachineStore};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{StorageError, StorageIOError, Vote};
use tempfile::TempDir;

/// Keeps the database and its directory alive for one suite case (fields drop in order: the
/// storage closes before the directory is removed).
struct Guard {
    _storage: NodeStorage,
    _directory: TempDir,
}

/// Builds the stores of `shard` in a fresh database. With `busy_neighbours`, the shards on both
/// sides of it already hold a log, a vote and applied state, so that the suite also checks that
/// none of it leaks into the shard under test.
struct Builder {
    shard: ShardId,
    busy_neighbours: bool,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, Guard> for Builder {
    async fn build(&self) -> Result<(Guard, LogStore, StateMachineStore), StorageError<NodeId>> {
        let directory = TempDir::new().map_err(|error| StorageIOError::write(&error))?;
        let storage =
            NodeStorage::open(directory.path()).map_err(|error| StorageIOError::write(&error))?;
        if self.busy_neighbours {
            for neighbour in [self.shard - 1, self.shard + 1] {
                fill_neighbour(&storage, neighbour).await?;
            }
        }
        let (log_store, state_machine, _state) = storage
            .open_shard(self.shard)
            .map_err(|error| StorageIOError::write(&error))?;
        Ok((
            Guard {
                _storage: storage,
                _directory: directory,
            },
            log_store,
            state_machine,
        ))
    }
}

async fn fill_neighbour(storage: &NodeStorage, shard: ShardId) -> Result<(), StorageError<NodeId>> {
    let (mut log_store, mut state_machine, _state) = storage
        .open_shard(shard)
        .map_err(|error| StorageIOError::write(&error))?;
    let entries: Vec<_> = (0..30).map(|index| common::blank_entry(5, index)).collect();
    log_store.blocking_append(entries.clone()).await?;
    log_store.save_vote(&Vote::new(5, 9)).await?;
    log_store
        .save_committed(Some(common::log_id(5, 29)))
        .await?;
    state_machine.apply(entries).await?;
    state_machine
        .apply([common::membership_entry(5, 30, &[7, 8, 9])])
        .await?;
    Ok(())
}

#[test]
fn openraft_suite_on_a_fresh_database() -> anyhow::Result<()> {
    Suite::test_all(Builder {
        shard: 0,
        busy_neighbours: false,
    })?;
    Ok(())
}

#[test]
fn openraft_suite_between_busy_neighbour_shards() -> anyhow::Result<()> {
    Suite::test_all(Builder {
        shard: 7,
        busy_neighbours: true,
    })?;
    Ok(())
}
