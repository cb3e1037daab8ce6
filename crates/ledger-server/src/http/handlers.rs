//! One function per endpoint of the public contract.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ledger_api::{
    codes, AccountResponse, BatchDebitResponse, BatchDebitResult, DebitResponse, ErrorBody,
    GrantResponse, GrantView, STATUS_ACCEPTED, STATUS_REJECTED,
};
use ledger_core::{shard_for_account, Accepted, AccountView, Command, Outcome, Rejection};
use ledger_raft::ShardId;
use serde_json::Value;

use super::error::rejection_status;
use super::parse::{self, format_instant_ms};
use super::routing::{self, Forwardable, Routed};
use super::{ApiError, BATCH_ITEMS_MAX, HOPS_HEADER, HOPS_MAX};
use crate::node::NodeContext;

type Context = State<Arc<NodeContext>>;

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

pub(super) fn forwardable(
    method: Method,
    uri: &OriginalUri,
    headers: &HeaderMap,
    body: Bytes,
) -> Forwardable {
    let path_and_query = uri
        .0
        .path_and_query()
        .map(|value| value.as_str().to_owned())
        .unwrap_or_else(|| uri.0.path().to_owned());
    Forwardable::new(method, path_and_query, headers, body)
}

pub(super) fn account_response(view: AccountView) -> AccountResponse {
    AccountResponse {
        account_id: view.account_id,
        available: view.available,
        reserved: view.reserved,
        consumed: view.consumed,
        overdraft_limit: view.overdraft_limit,
        balance: view.balance,
        granted: view.granted,
        expired: view.expired,
        voided: view.voided,
        overage: view.overage,
        subscription: view
            .subscription
            .as_ref()
            .map(super::credits::subscription_json),
        limits: view
            .limits
            .iter()
            .map(|(scope, limit)| super::credits::limit_json(*scope, limit))
            .collect(),
        alerts: Some(super::credits::alerts_json(&view.alerts)),
        grants: view
            .grants
            .into_iter()
            .map(|grant| GrantView {
                grant_id: grant.grant_id,
                amount: grant.amount,
                remaining: grant.remaining,
                priority: grant.priority,
                expires_at: grant.expires_at_ms.map(format_instant_ms),
                effective_at: format_instant_ms(grant.effective_at_ms),
                source: grant.source.as_str().to_owned(),
            })
            .collect(),
    }
}

pub(super) fn account_not_found(account_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        codes::ACCOUNT_NOT_FOUND,
        format!("account {account_id} not found"),
    )
}

pub(super) fn shard_of(context: &NodeContext, account_id: &str) -> ShardId {
    shard_for_account(account_id, context.shard_count())
}

pub(super) fn record_outcome(kind: &'static str, result: &Result<Accepted, Rejection>) {
    let code = match result {
        Ok(_) => "accepted",
        Err(rejection) => rejection.code(),
    };
    metrics::counter!("ledger_commands_total", "kind" => kind, "result" => code).increment(1);
}

/// `POST /v1/accounts`
pub async fn create_account(
    State(context): Context,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let command = match parse::create_account(&body) {
        Ok(command) => command,
        Err(error) => return error.into_response(),
    };
    let account_id = command.account_id().unwrap_or_default().to_owned();
    let shard = shard_of(&context, &account_id);
    let request = forwardable(method, &uri, &headers, body);
    let outcome = match routing::write(&context, shard, command, &request).await {
        Routed::Here(outcome) => outcome,
        Routed::Answered(response) => return response,
    };
    record_outcome("create_account", &outcome.result);
    let status = match outcome.result {
        Ok(Accepted::AccountCreated) => StatusCode::CREATED,
        Ok(_) => StatusCode::OK,
        Err(rejection) => {
            return ApiError::rejection(rejection, outcome.replayed, &account_id).into_response()
        }
    };
    // This node leads the shard and has applied the creation: its state shows the account.
    let view = context
        .replicas
        .get(&shard)
        .and_then(|replica| replica.state.read().ledger.view(&account_id, now_ms()));
    match view {
        Some(view) => (status, Json(account_response(view))).into_response(),
        None => ApiError::unavailable(
            codes::UNAVAILABLE,
            "leadership changed; read the account again",
        )
        .into_response(),
    }
}

/// `GET /v1/accounts/{id}`: linearizable.
pub async fn get_account(
    State(context): Context,
    Path(account_id): Path<String>,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
) -> Response {
    if let Err(error) = parse::identifier(&account_id, "account id") {
        return error.into_response();
    }
    let shard = shard_of(&context, &account_id);
    let request = forwardable(method, &uri, &headers, Bytes::new());
    let read_at_ms = now_ms();
    match routing::linearizable_read(&context, shard, &request, |state| {
        state.ledger.view(&account_id, read_at_ms)
    })
    .await
    {
        Routed::Here(Some(view)) => Json(account_response(view)).into_response(),
        Routed::Here(None) => account_not_found(&account_id).into_response(),
        Routed::Answered(response) => response,
    }
}

/// `POST /v1/accounts/{id}/grants`
pub async fn create_grant(
    State(context): Context,
    Path(account_id): Path<String>,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let command = match parse::identifier(&account_id, "account id")
        .and_then(|account_id| parse::create_grant(&account_id, &body))
    {
        Ok(command) => command,
        Err(error) => return error.into_response(),
    };
    let Command::Grant(grant) = &command else {
        return ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            codes::INTERNAL,
            "not a grant",
        )
        .into_response();
    };
    let grant_id = grant.grant_id.clone();
    let shard = shard_of(&context, &account_id);
    let request = forwardable(method, &uri, &headers, body);
    let outcome = match routing::write(&context, shard, command, &request).await {
        Routed::Here(outcome) => outcome,
        Routed::Answered(response) => return response,
    };
    record_outcome("grant", &outcome.result);
    match outcome.result {
        Ok(_) => {
            let status = if outcome.replayed {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            let body = GrantResponse {
                account_id,
                grant_id,
                replayed: outcome.replayed,
            };
            (status, Json(body)).into_response()
        }
        Err(rejection) => {
            ApiError::rejection(rejection, outcome.replayed, &format!("grant {grant_id}"))
                .into_response()
        }
    }
}

/// The decided outcome of a debit key as the API shows it, with its HTTP status.
fn debit_outcome(
    account_id: &str,
    idempotency_key: &str,
    result: &Result<Accepted, Rejection>,
    replayed: bool,
) -> (StatusCode, DebitResponse) {
    let mut response = DebitResponse {
        status: STATUS_ACCEPTED.to_owned(),
        account_id: account_id.to_owned(),
        idempotency_key: idempotency_key.to_owned(),
        amount: None,
        available: None,
        code: None,
        rate_card_version: None,
        replayed,
    };
    match result {
        Ok(Accepted::Debited {
            amount,
            available,
            rate_card_version,
        }) => {
            response.amount = Some(*amount);
            response.available = Some(*available);
            response.rate_card_version = *rate_card_version;
            (StatusCode::OK, response)
        }
        Ok(other) => {
            tracing::error!(?other, "a debit key holds a non-debit outcome");
            (StatusCode::INTERNAL_SERVER_ERROR, response)
        }
        Err(rejection) => {
            response.status = STATUS_REJECTED.to_owned();
            response.code = Some(rejection.code().to_owned());
            (rejection_status(*rejection), response)
        }
    }
}

fn debit_answer(account_id: &str, idempotency_key: &str, outcome: &Outcome) -> Response {
    match &outcome.result {
        Err(rejection) => ApiError::rejection(
            *rejection,
            outcome.replayed,
            &format!("debit {idempotency_key}"),
        )
        .into_response(),
        Ok(_) => {
            let (status, body) = debit_outcome(
                account_id,
                idempotency_key,
                &outcome.result,
                outcome.replayed,
            );
            (status, Json(body)).into_response()
        }
    }
}

/// `POST /v1/accounts/{id}/debits`
pub async fn debit(
    State(context): Context,
    Path(account_id): Path<String>,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let command = match parse::identifier(&account_id, "account id")
        .and_then(|account_id| parse::debit(&account_id, &body))
    {
        Ok(command) => command,
        Err(error) => return error.into_response(),
    };
    let Command::Debit {
        idempotency_key, ..
    } = &command
    else {
        return ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            codes::INTERNAL,
            "not a debit",
        )
        .into_response();
    };
    let idempotency_key = idempotency_key.clone();
    let shard = shard_of(&context, &account_id);
    let request = forwardable(method, &uri, &headers, body);
    if let Some(response) = acknowledge_before_commit(&context, shard, &command, &request) {
        return response;
    }
    let response = match routing::write(&context, shard, command, &request).await {
        Routed::Here(outcome) => {
            record_outcome("debit", &outcome.result);
            debit_answer(&account_id, &idempotency_key, &outcome)
        }
        Routed::Answered(response) => response,
    };
    metrics::histogram!("ledger_debit_request_seconds").record(started.elapsed().as_secs_f64());
    response
}

/// The `ack-before-commit` bug (fault injection only): answers a debit "accepted" from the
/// local state at once and decides it in the background.
fn acknowledge_before_commit(
    context: &Arc<NodeContext>,
    shard: ShardId,
    command: &Command,
    request: &Forwardable,
) -> Option<Response> {
    use crate::fault_injection::{is_enabled, Bug};
    if !is_enabled(Bug::AckBeforeCommit) {
        return None;
    }
    let Command::Debit {
        account_id,
        idempotency_key,
        charge: ledger_core::Charge::Credits(amount),
    } = command
    else {
        return None;
    };
    let replica = context.replicas.get(&shard)?;
    let available = replica
        .state
        .read()
        .ledger
        .view(account_id, now_ms())?
        .available;
    let outcome = Outcome {
        result: Ok(Accepted::Debited {
            amount: *amount,
            available: available - *amount as i64,
            rate_card_version: None,
        }),
        replayed: false,
    };
    let answer = debit_answer(account_id, idempotency_key, &outcome);
    let (context, command) = (Arc::clone(context), command.clone());
    let request = Forwardable {
        method: request.method.clone(),
        path_and_query: request.path_and_query.clone(),
        body: request.body.clone(),
        hops: request.hops,
        accept: None,
    };
    tokio::spawn(async move {
        let _ = routing::write(&context, shard, command, &request).await;
    });
    Some(answer)
}

/// `GET /v1/accounts/{id}/debits/{key}`: linearizable.
pub async fn get_debit(
    State(context): Context,
    Path((account_id, idempotency_key)): Path<(String, String)>,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
) -> Response {
    if let Err(error) = parse::identifier(&account_id, "account id")
        .and_then(|_| parse::identifier(&idempotency_key, "idempotency key"))
    {
        return error.into_response();
    }
    let shard = shard_of(&context, &account_id);
    let request = forwardable(method, &uri, &headers, Bytes::new());
    let record = routing::linearizable_read(&context, shard, &request, |state| {
        state
            .ledger
            .debit_record(&account_id, &idempotency_key)
            .map(|record| record.result.clone())
    })
    .await;
    match record {
        Routed::Here(Some(result)) => {
            // A lookup is always a replay of the decision; 200 for both accepted and rejected.
            let (_, body) = debit_outcome(&account_id, &idempotency_key, &result, true);
            Json(body).into_response()
        }
        Routed::Here(None) => ApiError::new(
            StatusCode::NOT_FOUND,
            codes::DEBIT_NOT_FOUND,
            format!("no debit was decided under key {idempotency_key} of account {account_id}"),
        )
        .into_response(),
        Routed::Answered(response) => response,
    }
}

fn batch_error(error: &ApiError) -> BatchDebitResult {
    BatchDebitResult {
        outcome: None,
        error: Some(error.body().error),
        http_status: error.status.as_u16(),
    }
}

fn batch_outcome(account_id: &str, idempotency_key: &str, outcome: &Outcome) -> BatchDebitResult {
    let (status, body) = debit_outcome(
        account_id,
        idempotency_key,
        &outcome.result,
        outcome.replayed,
    );
    BatchDebitResult {
        outcome: Some(body),
        error: None,
        http_status: status.as_u16(),
    }
}

struct BatchItem {
    index: usize,
    command: Command,
    json: Value,
}

/// `POST /v1/debits/batch`: items are validated one by one (a bad item gets its own 400 result
/// and decides nothing), grouped by shard, decided by their leaders, answered in request order.
pub async fn batch_debits(State(context): Context, headers: HeaderMap, body: Bytes) -> Response {
    let mut object = match parse::object(&body) {
        Ok(object) => object,
        Err(error) => return error.into_response(),
    };
    let items = match object.remove("debits") {
        Some(Value::Array(items)) => items,
        None | Some(Value::Null) => {
            return ApiError::bad_request(codes::MISSING_FIELD, "debits is required")
                .into_response()
        }
        Some(_) => {
            return ApiError::bad_request(codes::INVALID_FIELD, "debits must be an array")
                .into_response()
        }
    };
    if items.len() > BATCH_ITEMS_MAX {
        return ApiError::bad_request(
            codes::INVALID_FIELD,
            format!("a batch holds at most {BATCH_ITEMS_MAX} debits"),
        )
        .into_response();
    }
    let hops = Forwardable::new(Method::POST, String::new(), &headers, Bytes::new()).hops;
    let mut results: Vec<Option<BatchDebitResult>> = vec![None; items.len()];
    let mut by_shard: BTreeMap<ShardId, Vec<BatchItem>> = BTreeMap::new();
    for (index, item) in items.into_iter().enumerate() {
        let parsed = match &item {
            Value::Object(fields) => parse::required_identifier(fields, "account_id")
                .and_then(|account_id| parse::debit_from_object(&account_id, fields)),
            _ => Err(ApiError::bad_request(
                codes::INVALID_FIELD,
                "each debit must be a JSON object",
            )),
        };
        match parsed {
            Ok(command) => {
                let shard = shard_of(&context, command.account_id().unwrap_or_default());
                by_shard.entry(shard).or_default().push(BatchItem {
                    index,
                    command,
                    // Kept for a forward to the shard's leader; moved, not copied.
                    json: item,
                });
            }
            Err(error) => results[index] = Some(batch_error(&error)),
        }
    }
    let decided = futures::future::join_all(
        by_shard
            .into_iter()
            .map(|(shard, items)| decide_shard_items(&context, shard, items, hops)),
    )
    .await;
    for (index, result) in decided.into_iter().flatten() {
        results[index] = Some(result);
    }
    let results = results
        .into_iter()
        .map(|result| {
            result.unwrap_or_else(|| {
                batch_error(&ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    codes::INTERNAL,
                    "item was not decided",
                ))
            })
        })
        .collect();
    Json(BatchDebitResponse { results }).into_response()
}

/// Decides one shard's part of a batch, here or at its leader.
async fn decide_shard_items(
    context: &NodeContext,
    shard: ShardId,
    items: Vec<BatchItem>,
    hops: u32,
) -> Vec<(usize, BatchDebitResult)> {
    let no_leader = || {
        ApiError::unavailable(
            codes::NO_LEADER,
            format!("shard {shard} has no leader right now; retry with the same key"),
        )
    };
    match routing::route(context, shard) {
        routing::Route::Here(replica) => {
            let replica = &replica;
            let submissions = items.into_iter().map(|item| async move {
                let (account_id, key) = match &item.command {
                    Command::Debit {
                        account_id,
                        idempotency_key,
                        ..
                    } => (account_id.clone(), idempotency_key.clone()),
                    other => (
                        other.account_id().unwrap_or_default().to_owned(),
                        String::new(),
                    ),
                };
                let result = match context.actors.submit(&replica.proposer, item.command).await {
                    Ok(outcome) => {
                        record_outcome("debit", &outcome.result);
                        batch_outcome(&account_id, &key, &outcome)
                    }
                    Err(error) => {
                        let response = routing::submit_error_response(
                            context,
                            shard,
                            error,
                            // Items are never forwarded one by one: a lost leadership answers 503.
                            &Forwardable {
                                method: Method::POST,
                                path_and_query: String::new(),
                                body: Bytes::new(),
                                hops: HOPS_MAX,
                                accept: None,
                            },
                        )
                        .await;
                        batch_error_from_response(response).await
                    }
                };
                (item.index, result)
            });
            futures::future::join_all(submissions).await
        }
        routing::Route::Forward(node) if hops < HOPS_MAX => {
            forward_items(context, node, shard, items, hops).await
        }
        _ => fail_items(&items, &no_leader()),
    }
}

fn fail_items(items: &[BatchItem], error: &ApiError) -> Vec<(usize, BatchDebitResult)> {
    items
        .iter()
        .map(|item| (item.index, batch_error(error)))
        .collect()
}

async fn batch_error_from_response(response: Response) -> BatchDebitResult {
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let error = serde_json::from_slice::<ledger_api::ErrorResponse>(&bytes)
        .map(|body| body.error)
        .unwrap_or_else(|_| ErrorBody {
            code: codes::UNAVAILABLE.to_owned(),
            message: "the item could not be decided".to_owned(),
            replayed: None,
        });
    BatchDebitResult {
        outcome: None,
        error: Some(error),
        http_status: status,
    }
}

/// Sends a shard's items to its leader as one sub-batch.
async fn forward_items(
    context: &NodeContext,
    leader: ledger_raft::NodeId,
    shard: ShardId,
    items: Vec<BatchItem>,
    hops: u32,
) -> Vec<(usize, BatchDebitResult)> {
    let unreachable = ApiError::unavailable(
        codes::UNAVAILABLE,
        format!("shard {shard}: the leader (node {leader}) could not be reached; retry with the same key"),
    );
    let Some(address) = context.http_addr_of(leader) else {
        return fail_items(&items, &unreachable);
    };
    let body = serde_json::json!({
        "debits": items.iter().map(|item| item.json.clone()).collect::<Vec<_>>()
    });
    let answer = context
        .forwarder
        .post(format!("http://{address}/v1/debits/batch"))
        .header(HOPS_HEADER, (hops + 1).to_string())
        .json(&body)
        .send()
        .await;
    let decoded = match answer {
        Ok(answer) if answer.status().is_success() => {
            answer.json::<BatchDebitResponse>().await.ok()
        }
        _ => None,
    };
    match decoded {
        Some(response) if response.results.len() == items.len() => items
            .iter()
            .map(|item| item.index)
            .zip(response.results)
            .collect(),
        _ => fail_items(&items, &unreachable),
    }
}

/// `GET /health`: 200 while the node serves.
pub async fn health() -> Response {
    (StatusCode::OK, Json(serde_json::json!({"status": "ok"}))).into_response()
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(State(context): Context) -> Response {
    let node = context.node_id().to_string();
    for replica in context.replicas.values() {
        let metrics = replica.raft.metrics().borrow().clone();
        let shard = replica.shard.to_string();
        metrics::gauge!("ledger_shard_is_leader", "node" => node.clone(), "shard" => shard.clone())
            .set(if metrics.current_leader == Some(context.node_id()) {
                1.0
            } else {
                0.0
            });
        metrics::gauge!("ledger_shard_last_applied_index", "node" => node.clone(), "shard" => shard.clone())
            .set(metrics.last_applied.map(|log_id| log_id.index).unwrap_or(0) as f64);
        metrics::gauge!("ledger_shard_term", "node" => node.clone(), "shard" => shard)
            .set(metrics.current_term as f64);
    }
    // Pre-vote rounds of the election gate: "lost" rounds are elections it held back.
    metrics::counter!("ledger_election_prevote_rounds_total", "node" => node.clone(), "result" => "won")
        .absolute(context.election_gate.rounds_won());
    metrics::counter!("ledger_election_prevote_rounds_total", "node" => node.clone(), "result" => "lost")
        .absolute(context.election_gate.rounds_lost());
    metrics::gauge!("ledger_account_actors", "node" => node)
        .set(context.actors.active_count() as f64);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        context.metrics.render(),
    )
        .into_response()
}

pub async fn not_found(uri: OriginalUri) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        codes::NOT_FOUND,
        format!("no such endpoint: {}", uri.0.path()),
    )
    .into_response()
}
