//! Operations on one shard: `POST /admin/shards/{s}/transfer-leader` (hand its leadership to a
//! replica), `POST /admin/shards/{s}/move` (move one of its replicas to another node), and the
//! internal calls behind the hand-over and the leader balancer (`POST
//! /internal/shards/{s}/campaign`, `GET /internal/leaders`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ledger_api::{
    codes, MoveShardRequest, MoveShardResponse, TransferLeaderRequest, TransferLeaderResponse,
};
use ledger_core::cluster::{ClusterChange, ReplicaMove, META_SHARD};
use ledger_core::{Accepted, Command};
use ledger_raft::transfer::{campaign as start_campaign, TransferError};
use ledger_raft::{NodeId, ShardId};
use serde::de::DeserializeOwned;

use super::routing::{self, Forwardable, Routed};
use super::ApiError;
use crate::leadership::{led_here, transfer_here, CampaignRequest, LeadersAnswer};
use crate::node::NodeContext;

type Context = State<Arc<NodeContext>>;

fn parse<T: DeserializeOwned>(body: &Bytes, expected: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| {
        ApiError::bad_request(codes::INVALID_JSON, format!("expected {expected}: {error}"))
    })
}

/// The body of an admin request about `shard`: 404 unless `shard` is one of the cluster's
/// shards or the metadata group, 400 unless the body is the `expected` JSON.
fn shard_request<T: DeserializeOwned>(
    context: &NodeContext,
    shard: ShardId,
    body: &Bytes,
    expected: &str,
) -> Result<T, ApiError> {
    known_shard(context, shard)?;
    parse(body, expected)
}

fn known_shard(context: &NodeContext, shard: ShardId) -> Result<(), ApiError> {
    if shard < context.shard_count() || shard == META_SHARD {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        codes::NOT_FOUND,
        format!(
            "no shard {shard}: the cluster has shards 0..{} and the metadata group {META_SHARD}",
            context.shard_count()
        ),
    ))
}

/// `POST /admin/shards/{shard}/transfer-leader {"to": N}`: on the shard's leader (forwarded
/// there), hands leadership to the replica on node N and answers once N leads. The shard
/// decides nothing for about 1.7 s meanwhile (requests wait, none fails).
pub async fn transfer_leader(
    State(context): Context,
    Path(shard): Path<ShardId>,
    body: Bytes,
) -> Response {
    let request: TransferLeaderRequest =
        match shard_request(&context, shard, &body, "{\"to\": <node id>}") {
            Ok(request) => request,
            Err(error) => return error.into_response(),
        };
    let forwardable = Forwardable {
        method: Method::POST,
        path_and_query: format!("/admin/shards/{shard}/transfer-leader"),
        body,
        hops: 0,
        accept: None,
    };
    transfer_here_or_forwarded(&context, shard, request.to, &forwardable).await
}

async fn transfer_here_or_forwarded(
    context: &NodeContext,
    shard: ShardId,
    to: NodeId,
    forwardable: &Forwardable,
) -> Response {
    let replica = match routing::leader_replica(context, shard, forwardable).await {
        Ok(replica) => replica,
        Err(response) => return response,
    };
    if replica.current_leader() == Some(to) {
        return Json(TransferLeaderResponse {
            shard_id: shard,
            leader: to,
        })
        .into_response();
    }
    match transfer_here(context, &replica, to).await {
        Ok(()) => Json(TransferLeaderResponse {
            shard_id: shard,
            leader: to,
        })
        .into_response(),
        Err(error @ TransferError::NotAVoter { .. }) => ApiError::bad_request(
            codes::INVALID_LEADER_TRANSFER,
            format!("shard {shard}: {error}; only a voting replica can lead"),
        )
        .into_response(),
        Err(error) => ApiError::unavailable(
            codes::UNAVAILABLE,
            format!("shard {shard}: leadership not transferred: {error}; retry"),
        )
        .into_response(),
    }
}

/// The balancer's call: hands `shard`'s leadership to `to`, through its leader wherever it is.
pub async fn shard_transfer_leader(
    context: &NodeContext,
    shard: ShardId,
    to: NodeId,
) -> Result<(), String> {
    let body = serde_json::to_vec(&TransferLeaderRequest { to }).map_err(|e| e.to_string())?;
    let forwardable = Forwardable {
        method: Method::POST,
        path_and_query: format!("/admin/shards/{shard}/transfer-leader"),
        body: Bytes::from(body),
        hops: 0,
        accept: None,
    };
    let response = transfer_here_or_forwarded(context, shard, to, &forwardable).await;
    routing::success_body(response).await.map(|_| ())
}

/// `POST /admin/shards/{shard}/move {"from": A, "to": B}`: records the move of the shard's
/// replica from node A to node B in the cluster map (202 with the map version); the controller
/// carries it out like its own moves. The controller keeps replica counts balanced, so a move
/// that unbalances them is followed by one that restores the balance.
pub async fn move_shard(
    State(context): Context,
    Path(shard): Path<ShardId>,
    body: Bytes,
) -> Response {
    let expected = "{\"from\": <node id>, \"to\": <node id>}";
    let request: MoveShardRequest = match shard_request(&context, shard, &body, expected) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    let map = context.cluster.map();
    let problem = if !map.exists() {
        Some("the cluster is still forming (no cluster map yet)".to_owned())
    } else if let Some(step) = map.move_under_way() {
        Some(format!(
            "shard {} is moving (add {:?}, remove {:?}); one move at a time",
            step.shard, step.add, step.remove
        ))
    } else if !map
        .shard(shard)
        .is_some_and(|placement| placement.replicas.contains(&request.from))
    {
        Some(format!(
            "node {} holds no replica of shard {shard}",
            request.from
        ))
    } else if !map.desired.contains(&request.to) {
        Some(format!("node {} is not a declared node", request.to))
    } else if map
        .shard(shard)
        .is_some_and(|placement| placement.replicas.contains(&request.to))
    {
        Some(format!(
            "node {} already holds a replica of shard {shard}",
            request.to
        ))
    } else {
        None
    };
    if let Some(problem) = problem {
        return ApiError::bad_request(codes::INVALID_CLUSTER_CHANGE, problem).into_response();
    }
    let forwardable = Forwardable {
        method: Method::POST,
        path_and_query: format!("/admin/shards/{shard}/move"),
        body,
        hops: 0,
        accept: None,
    };
    let command = Command::UpdateCluster(ClusterChange::BeginMove {
        version: map.version,
        step: ReplicaMove {
            shard,
            add: Some(request.to),
            remove: Some(request.from),
        },
    });
    match routing::write(&context, META_SHARD, command, &forwardable).await {
        Routed::Here(outcome) => match outcome.result {
            Ok(Accepted::ClusterUpdated { version }) => {
                (StatusCode::ACCEPTED, Json(MoveShardResponse { version })).into_response()
            }
            Ok(_) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                codes::INTERNAL,
                "unexpected outcome of a cluster change",
            )
            .into_response(),
            Err(rejection) => {
                ApiError::rejection(rejection, outcome.replayed, "shard move").into_response()
            }
        },
        Routed::Answered(response) => response,
    }
}

/// `POST /internal/shards/{shard}/campaign {"leader": N}`: the leader N hands this node the
/// shard's leadership; start an election.
pub async fn campaign(
    State(context): Context,
    Path(shard): Path<ShardId>,
    body: Bytes,
) -> Response {
    let request: CampaignRequest = match parse(&body, "{\"leader\": <node id>}") {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    let Some(replica) = context.replicas.get(&shard) else {
        return ApiError::unavailable(
            codes::UNAVAILABLE,
            format!("shard {shard}: no replica on this node"),
        )
        .into_response();
    };
    match start_campaign(&replica.raft, request.leader).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => ApiError::unavailable(
            codes::UNAVAILABLE,
            format!("shard {shard}: not campaigning: {error}"),
        )
        .into_response(),
    }
}

/// `GET /internal/leaders`: the shards this node leads.
pub async fn leaders(State(context): Context) -> Response {
    Json(LeadersAnswer {
        node_id: context.node_id(),
        shards: led_here(&context),
    })
    .into_response()
}
