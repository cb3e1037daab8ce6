//! Where a request is served: on this node when it leads the request's shard, else forwarded to
//! the leader's HTTP address; 503 with `Retry-After` when the shard has no leader right now.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use ledger_actors::SubmitError;
use ledger_api::codes;
use ledger_core::{Command, Outcome};
use ledger_raft::proposer::ProposeError;
use ledger_raft::reads::ReadError;
use ledger_raft::{NodeId, ShardId, ShardState};

use super::{ApiError, HOPS_HEADER, HOPS_MAX};
use crate::node::{NodeContext, ShardReplica};

/// What is needed to send the same request on to another node.
pub struct Forwardable {
    pub method: Method,
    /// Path and query, e.g. `/v1/accounts/a/debits`.
    pub path_and_query: String,
    pub body: Bytes,
    /// Forwards so far (from the `x-ledger-hops` header).
    pub hops: u32,
    /// The `Accept` header, which chooses a representation (a statement as CSV).
    pub accept: Option<axum::http::HeaderValue>,
}

impl Forwardable {
    pub fn new(method: Method, path_and_query: String, headers: &HeaderMap, body: Bytes) -> Self {
        let hops = headers
            .get(HOPS_HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok())
            .unwrap_or(0);
        Forwardable {
            method,
            path_and_query,
            body,
            hops,
            accept: headers.get(header::ACCEPT).cloned(),
        }
    }
}

/// The outcome of routing: served here, or a complete response from elsewhere (forwarded answer
/// or an error).
pub enum Routed<T> {
    Here(T),
    Answered(Response),
}

fn no_leader(shard: ShardId) -> Response {
    ApiError::unavailable(
        codes::NO_LEADER,
        format!("shard {shard} has no leader right now; retry with the same key"),
    )
    .into_response()
}

/// Rotates the replica a request is forwarded to when this node holds none of its shard, so
/// that a dead replica does not take all of them.
static NEXT_REPLICA: AtomicUsize = AtomicUsize::new(0);

/// Where a request for a shard goes from this node.
pub enum Route {
    /// This node leads the shard.
    Here(Arc<ShardReplica>),
    /// To this node: the leader, or a replica that knows it.
    Forward(NodeId),
    /// Nobody to ask right now (an election): 503.
    NoLeader,
}

/// The one routing decision, shared by single requests and batch sub-batches.
pub fn route(context: &NodeContext, shard: ShardId) -> Route {
    let me = context.node_id();
    match context.replicas.get(&shard) {
        Some(replica) => match replica.current_leader() {
            Some(leader) if leader == me => Route::Here(replica),
            Some(leader) => Route::Forward(leader),
            // A voter that knows no leader: an election is under way.
            None if replica.is_voter(me) => Route::NoLeader,
            // A replica being added (a learner not yet reached, or an empty one) knows no leader
            // while the group has one: the voters know it.
            None => any_replica_node(context, shard).map_or(Route::NoLeader, Route::Forward),
        },
        // This node holds no replica of the shard: any replica knows the leader.
        None => any_replica_node(context, shard).map_or(Route::NoLeader, Route::Forward),
    }
}

/// The replica of `shard` on this node, if this node currently leads it; otherwise the answer to
/// give (forwarded, or 503).
pub async fn leader_replica(
    context: &NodeContext,
    shard: ShardId,
    request: &Forwardable,
) -> Result<Arc<ShardReplica>, Response> {
    match route(context, shard) {
        Route::Here(replica) => Ok(replica),
        Route::Forward(node) => Err(forward(context, node, shard, request).await),
        Route::NoLeader => Err(no_leader(shard)),
    }
}

/// For the node's own calls through a handler (the controller, the leader balancer): the body
/// of a success, or the status and the start of the body as the error.
pub async fn success_body(response: Response) -> Result<Bytes, String> {
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1024 * 1024)
        .await
        .map_err(|error| error.to_string())?;
    if status.is_success() {
        return Ok(bytes);
    }
    Err(format!(
        "{status}: {}",
        String::from_utf8_lossy(&bytes)
            .chars()
            .take(300)
            .collect::<String>()
    ))
}

/// Another node holding a replica of `shard` per the cluster map, in rotation.
pub fn any_replica_node(context: &NodeContext, shard: ShardId) -> Option<NodeId> {
    let me = context.node_id();
    let nodes: Vec<NodeId> = context
        .replica_nodes(shard)
        .into_iter()
        .filter(|node| *node != me)
        .collect();
    if nodes.is_empty() {
        return None;
    }
    Some(nodes[NEXT_REPLICA.fetch_add(1, Ordering::Relaxed) % nodes.len()])
}

/// Decides `command` through its shard's leader and returns the outcome, or the complete
/// response when the request was forwarded or could not be decided now.
pub async fn write(
    context: &NodeContext,
    shard: ShardId,
    command: Command,
    request: &Forwardable,
) -> Routed<Outcome> {
    let replica = match leader_replica(context, shard, request).await {
        Ok(replica) => replica,
        Err(response) => return Routed::Answered(response),
    };
    match context.actors.submit(&replica.proposer, command).await {
        Ok(outcome) => Routed::Here(outcome),
        Err(error) => Routed::Answered(submit_error_response(context, shard, error, request).await),
    }
}

/// The answer for a command that was not decided.
pub async fn submit_error_response(
    context: &NodeContext,
    shard: ShardId,
    error: SubmitError,
    request: &Forwardable,
) -> Response {
    match error {
        SubmitError::Overloaded { account_id } => ApiError::overloaded(format!(
            "account {account_id} has too many requests in flight"
        ))
        .into_response(),
        SubmitError::Propose(ProposeError::Overloaded { .. }) => {
            ApiError::overloaded(format!("shard {shard} is at its queue bound")).into_response()
        }
        SubmitError::Propose(ProposeError::NotLeader {
            leader: Some(leader),
            ..
        }) if leader != context.node_id() => forward(context, leader, shard, request).await,
        SubmitError::Propose(ProposeError::NotLeader { .. }) => no_leader(shard),
        SubmitError::Propose(ProposeError::OutcomeUnknown { .. }) => ApiError::unavailable(
            codes::UNAVAILABLE,
            format!(
                "shard {shard}: leadership changed while the request was in flight; retry with \
                 the same key to learn its outcome"
            ),
        )
        .into_response(),
        SubmitError::Propose(ProposeError::Stopped { .. }) | SubmitError::Stopped => {
            ApiError::unavailable(codes::UNAVAILABLE, "this node is shutting down").into_response()
        }
    }
}

/// Runs `read` on the shard's applied state after confirming leadership with a quorum and
/// waiting until the state reflects every write committed before the read began (read index,
/// one confirmation shared by the reads waiting for it): the read is linearizable.
pub async fn linearizable_read<T>(
    context: &NodeContext,
    shard: ShardId,
    request: &Forwardable,
    read: impl FnOnce(&ShardState) -> T,
) -> Routed<T> {
    if crate::fault_injection::is_enabled(crate::fault_injection::Bug::StaleFollowerReads) {
        if let Some(replica) = context.replicas.get(&shard) {
            return Routed::Here(read(&replica.state.read()));
        }
    }
    let replica = match leader_replica(context, shard, request).await {
        Ok(replica) => replica,
        Err(response) => return Routed::Answered(response),
    };
    match replica.reads.confirm().await {
        Ok(()) => Routed::Here(read(&replica.state.read())),
        Err(ReadError::NotLeader {
            leader: Some(leader),
            ..
        }) if leader != context.node_id() => {
            Routed::Answered(forward(context, leader, shard, request).await)
        }
        Err(error) => {
            tracing::debug!(shard, %error, "linearizable read failed");
            Routed::Answered(no_leader(shard))
        }
    }
}

/// Sends the request on to `node` and relays its answer unchanged.
pub async fn forward(
    context: &NodeContext,
    node: NodeId,
    shard: ShardId,
    request: &Forwardable,
) -> Response {
    if request.hops >= HOPS_MAX {
        return no_leader(shard);
    }
    let Some(address) = context.http_addr_of(node) else {
        return no_leader(shard);
    };
    let url = format!("http://{address}{}", request.path_and_query);
    let mut forwarded = context
        .forwarder
        .request(request.method.clone(), &url)
        .header(HOPS_HEADER, (request.hops + 1).to_string())
        .header(header::CONTENT_TYPE, "application/json")
        .body(request.body.clone());
    if let Some(accept) = &request.accept {
        forwarded = forwarded.header(header::ACCEPT, accept.clone());
    }
    let result = forwarded.send().await;
    let answer = match result {
        Ok(answer) => answer,
        Err(error) => {
            tracing::debug!(shard, node, %error, "forwarding failed");
            // The request may or may not have reached the leader: only a retry with the same key
            // can tell, which is what 503 asks for.
            return ApiError::unavailable(
                codes::UNAVAILABLE,
                format!("shard {shard}: the leader (node {node}) could not be reached; retry with the same key"),
            )
            .into_response();
        }
    };
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let retry_after = answer.headers().get(header::RETRY_AFTER).cloned();
    let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
    match answer.bytes().await {
        Ok(bytes) => {
            let mut response = (status, bytes).into_response();
            let headers = response.headers_mut();
            if let Some(value) = content_type {
                headers.insert(header::CONTENT_TYPE, value);
            }
            if let Some(value) = retry_after {
                headers.insert(header::RETRY_AFTER, value);
            }
            response
        }
        Err(error) => ApiError::unavailable(
            codes::UNAVAILABLE,
            format!(
                "shard {shard}: the leader's answer was cut off ({error}); retry with the same key"
            ),
        )
        .into_response(),
    }
}
