//! Operations endpoints beyond the cluster view: backups.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ledger_api::{codes, BackupResponse, BackupShard};

use super::{parse, ApiError};
use crate::node::NodeContext;

/// Directory under the node's data directory that holds its backups.
pub const BACKUPS_DIRECTORY: &str = "backups";

/// `POST /admin/backups {"name"}`: writes a RocksDB checkpoint of this node's whole database
/// (every shard it hosts: logs, votes, state) to `<data_dir>/backups/<name>`. The name is an
/// identifier, so the request cannot write anywhere else; an existing backup is never replaced.
/// To restore, stop the node and put a copy of the backup in place of `<data_dir>/rocksdb`
/// (README, "Backup and restore").
pub async fn create_backup(State(context): State<Arc<NodeContext>>, body: Bytes) -> Response {
    match backup(&context, &body).await {
        Ok(response) => (StatusCode::CREATED, Json(response)).into_response(),
        Err(error) => error.into_response(),
    }
}

async fn backup(context: &Arc<NodeContext>, body: &Bytes) -> Result<BackupResponse, ApiError> {
    let object = parse::object(body)?;
    parse::reject_unknown_fields(&object, &["name"])?;
    let name = parse::required_identifier(&object, "name")?;
    let directory = context.config.data_dir.join(BACKUPS_DIRECTORY);
    let path = directory.join(&name);
    if path.exists() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            codes::BACKUP_EXISTS,
            format!("a backup named {name} exists on this node"),
        ));
    }
    let storage = context
        .storage
        .lock()
        .clone()
        .ok_or_else(|| ApiError::unavailable(codes::UNAVAILABLE, "the node is stopping"))?;
    // Applied indexes first: the checkpoint holds at least this much of every shard.
    let mut shards: Vec<BackupShard> = context
        .replicas
        .all()
        .into_iter()
        .map(|replica| BackupShard {
            shard_id: replica.shard,
            last_applied: replica
                .raft
                .metrics()
                .borrow()
                .last_applied
                .map(|log_id| log_id.index),
        })
        .collect();
    shards.sort_by_key(|shard| shard.shard_id);
    let target = path.clone();
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&directory)
            .map_err(|error| format!("creating {}: {error}", directory.display()))?;
        storage
            .checkpoint(&target)
            .map_err(|error| error.to_string())
    })
    .await
    .map_err(|error| storage_error(error.to_string()))?
    .map_err(storage_error)?;
    tracing::info!(name, path = %path.display(), "backup written");
    Ok(BackupResponse {
        node_id: context.node_id(),
        name,
        path: path.display().to_string(),
        shards,
    })
}

fn storage_error(message: String) -> ApiError {
    tracing::error!(%message, "backup failed");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        codes::STORAGE_ERROR,
        message,
    )
}
