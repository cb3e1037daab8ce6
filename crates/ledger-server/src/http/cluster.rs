//! The cluster endpoints: `GET /admin/cluster` (what this node knows of the cluster),
//! `POST /admin/cluster/apply` (declare the node set), and the internal calls of the cluster
//! map (`GET /internal/cluster`), of the controller (`POST /internal/shards/{s}/membership`) and
//! of a node retiring a replica (`GET /internal/shards/{s}/members`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ledger_api::{
    codes, ApplyClusterRequest, ApplyClusterResponse, ClusterMapInfo, ClusterResponse, MoveInfo,
    NodeInfo, ShardInfo,
};
use ledger_core::cluster::{moves_remaining, ClusterChange, ClusterMap, META_SHARD};
use ledger_core::{Accepted, Command, Rejection};
use ledger_raft::ShardId;

use super::routing::{self, Forwardable, Routed};
use super::ApiError;
use crate::cluster::{
    declared_nodes, ClusterIdentity, GroupMembers, MembershipAnswer, MembershipRequest,
};
use crate::node::NodeContext;

type Context = State<Arc<NodeContext>>;

/// `GET /admin/cluster[?digest=false]`: this node's view. Shards it hosts report their group's
/// leader, voters, applied index and digest; the others what the cluster map says.
///
/// A digest hashes the shard's whole state (a cost that grows with every debit recorded, and
/// that holds off the shard's apply meanwhile), and it is recomputed whenever the applied index
/// moved. Callers that poll for leaders (the load generator, dashboards) pass `digest=false` and
/// get `""` in its place.
pub async fn cluster(
    State(context): Context,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let with_digest = match params.get("digest").map(String::as_str) {
        None | Some("true") => true,
        Some("false") => false,
        Some(_) => {
            return ApiError::bad_request(codes::INVALID_QUERY, "digest must be true or false")
                .into_response()
        }
    };
    // A metadata replica here may have applied a newer map than the cluster loop cached.
    crate::cluster::install_local_map(&context);
    let map = context.cluster.map();
    let nodes = if map.nodes.is_empty() {
        context
            .config
            .cluster
            .nodes
            .iter()
            .map(|node| NodeInfo {
                id: node.id,
                http_addr: node.http_addr.clone(),
                raft_addr: node.raft_addr.clone(),
            })
            .collect()
    } else {
        map.nodes
            .iter()
            .map(|(id, address)| NodeInfo {
                id: *id,
                http_addr: address.http_addr.clone(),
                raft_addr: address.raft_addr.clone(),
            })
            .collect()
    };
    let shards = (0..context.shard_count())
        .map(|shard| shard_info(&context, shard, with_digest))
        .collect();
    let map_info = map.exists().then(|| map_info(&context, &map, with_digest));
    Json(ClusterResponse {
        node_id: context.node_id(),
        nodes,
        shards,
        map: map_info,
    })
    .into_response()
}

fn shard_info(context: &NodeContext, shard: ShardId, with_digest: bool) -> ShardInfo {
    match context.replicas.get(&shard) {
        Some(replica) => {
            let metrics = replica.raft.metrics().borrow().clone();
            let members = metrics.membership_config.membership().voter_ids().collect();
            let (last_applied, digest) = if with_digest {
                let (last_applied, digest) = replica.applied_digest();
                (last_applied, format!("{digest:032x}"))
            } else {
                (replica.last_applied(), String::new())
            };
            ShardInfo {
                shard_id: shard,
                leader: metrics.current_leader,
                members,
                last_applied,
                digest,
            }
        }
        None => ShardInfo {
            shard_id: shard,
            leader: None,
            members: context
                .cluster
                .map()
                .shard(shard)
                .map(|placement| placement.replicas.clone())
                .unwrap_or_default(),
            last_applied: None,
            digest: String::new(),
        },
    }
}

fn map_info(context: &NodeContext, map: &ClusterMap, with_digest: bool) -> ClusterMapInfo {
    let progress = context.cluster.progress();
    let moving = map.move_under_way().map(|step| {
        let seen = progress.filter(|progress| progress.step == step);
        MoveInfo {
            shard_id: step.shard,
            add: step.add,
            remove: step.remove,
            caught_up_to: seen.and_then(|progress| progress.caught_up_to),
            leader_last_index: seen.and_then(|progress| progress.leader_last_index),
        }
    });
    ClusterMapInfo {
        version: map.version,
        desired: map.desired.iter().copied().collect(),
        removed: map.removed.iter().copied().collect(),
        metadata_group: shard_info(context, META_SHARD, with_digest),
        moving,
        moves_remaining: moves_remaining(map),
    }
}

/// `GET /internal/cluster`: who this node is, what it decided about its membership, and the
/// newest cluster map it knows.
pub async fn identity(State(context): Context) -> Response {
    Json(ClusterIdentity {
        node_id: context.node_id(),
        config_nodes: context.config.node_ids(),
        record: context.cluster.record(),
        map: (*context.cluster.map()).clone(),
    })
    .into_response()
}

/// `POST /admin/cluster/apply {"nodes":[{"id","http_addr","raft_addr"}]}`: declares the node set
/// the cluster should have. The controller then moves replicas onto new nodes and drains the
/// nodes left out, one move at a time (`GET /admin/cluster` shows the progress).
pub async fn apply(State(context): Context, body: Bytes) -> Response {
    let request: ApplyClusterRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            return ApiError::bad_request(
                codes::INVALID_JSON,
                format!("expected {{\"nodes\":[{{\"id\",\"http_addr\",\"raft_addr\"}}]}}: {error}"),
            )
            .into_response()
        }
    };
    let nodes = match declared_nodes(&request.nodes) {
        Ok(nodes) => nodes,
        Err(message) => {
            return ApiError::bad_request(codes::INVALID_CLUSTER_CHANGE, message).into_response()
        }
    };
    let forwardable = Forwardable {
        method: Method::POST,
        path_and_query: "/admin/cluster/apply".to_owned(),
        body,
        hops: 0,
        accept: None,
    };
    let command = Command::UpdateCluster(ClusterChange::Declare { nodes });
    match routing::write(&context, META_SHARD, command, &forwardable).await {
        Routed::Here(outcome) => match outcome.result {
            Ok(Accepted::ClusterUpdated { version }) => Json(ApplyClusterResponse {
                version,
                changed: !outcome.replayed,
            })
            .into_response(),
            Ok(_) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                codes::INTERNAL,
                "unexpected outcome of a cluster change",
            )
            .into_response(),
            // Answered by the metadata leader before it recorded the map of the new cluster.
            Err(Rejection::InvalidClusterChange) if !metadata_map_exists(&context) => {
                ApiError::unavailable(
                    codes::UNAVAILABLE,
                    "the cluster is still forming (no cluster map yet); retry",
                )
                .into_response()
            }
            Err(rejection) => {
                ApiError::rejection(rejection, outcome.replayed, "cluster apply").into_response()
            }
        },
        Routed::Answered(response) => response,
    }
}

fn metadata_map_exists(context: &NodeContext) -> bool {
    context
        .replicas
        .get(&META_SHARD)
        .is_some_and(|meta| meta.state.read().ledger.meta().cluster.exists())
}

/// `POST /internal/shards/{shard}/membership`: one step of a replica move, on the shard's
/// leader (forwarded there).
pub async fn membership(
    State(context): Context,
    Path(shard): Path<ShardId>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request: MembershipRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            return ApiError::bad_request(codes::INVALID_JSON, error.to_string()).into_response()
        }
    };
    let forwardable = Forwardable::new(
        Method::POST,
        format!("/internal/shards/{shard}/membership"),
        &headers,
        body,
    );
    membership_here_or_forwarded(&context, shard, &request, &forwardable).await
}

async fn membership_here_or_forwarded(
    context: &NodeContext,
    shard: ShardId,
    request: &MembershipRequest,
    forwardable: &Forwardable,
) -> Response {
    let replica = match routing::leader_replica(context, shard, forwardable).await {
        Ok(replica) => replica,
        Err(response) => return response,
    };
    match crate::cluster::membership_step(context, &replica, request).await {
        Ok(answer) => Json(answer).into_response(),
        Err(message) => ApiError::unavailable(codes::UNAVAILABLE, message).into_response(),
    }
}

/// The controller's call: one step of a replica move of `shard`, taken by its leader wherever it
/// is.
pub async fn shard_membership_step(
    context: &NodeContext,
    shard: ShardId,
    request: &MembershipRequest,
) -> Result<MembershipAnswer, String> {
    let body = serde_json::to_vec(request).map_err(|error| error.to_string())?;
    let forwardable = Forwardable {
        method: Method::POST,
        path_and_query: format!("/internal/shards/{shard}/membership"),
        body: Bytes::from(body),
        hops: 0,
        accept: None,
    };
    let response = membership_here_or_forwarded(context, shard, request, &forwardable).await;
    let bytes = routing::success_body(response).await?;
    serde_json::from_slice(&bytes).map_err(|error| error.to_string())
}

/// `GET /internal/shards/{shard}/members`: every node the shard's group counts, answered by its
/// leader once a quorum confirmed it still leads (forwarded there). A node asks before deleting
/// a replica the map moved away.
pub async fn members(
    State(context): Context,
    Path(shard): Path<ShardId>,
    headers: HeaderMap,
) -> Response {
    let forwardable = Forwardable::new(Method::GET, members_path(shard), &headers, Bytes::new());
    members_here_or_forwarded(&context, shard, &forwardable).await
}

fn members_path(shard: ShardId) -> String {
    format!("/internal/shards/{shard}/members")
}

async fn members_here_or_forwarded(
    context: &NodeContext,
    shard: ShardId,
    forwardable: &Forwardable,
) -> Response {
    let replica = match routing::leader_replica(context, shard, forwardable).await {
        Ok(replica) => replica,
        Err(response) => return response,
    };
    // Only a leader a quorum still follows knows the group's current membership.
    match replica.reads.confirm().await {
        Ok(()) => Json(GroupMembers::of(&replica)).into_response(),
        Err(error) => ApiError::unavailable(codes::UNAVAILABLE, error.to_string()).into_response(),
    }
}

/// The node's own call: the members of `shard`'s group, from its leader wherever it is.
pub async fn shard_members(context: &NodeContext, shard: ShardId) -> Result<GroupMembers, String> {
    let forwardable = Forwardable {
        method: Method::GET,
        path_and_query: members_path(shard),
        body: Bytes::new(),
        hops: 0,
        accept: None,
    };
    let response = members_here_or_forwarded(context, shard, &forwardable).await;
    let bytes = routing::success_body(response).await?;
    serde_json::from_slice(&bytes).map_err(|error| error.to_string())
}
