//! The credit-semantics endpoints (DESIGN.md "Credit semantics endpoints"): account policy,
//! voids, reservations, the catalog (rate card, plans, webhook endpoint) and its installation on
//! every shard, subscriptions, spend limits, alerts, events, and the reports computed from the
//! journal (entries, balance at an instant, usage, statements).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ledger_api::{codes, ReservationResponse};
use ledger_core::{
    Accepted, AlertSettings, Catalog, CatalogChange, Command, Event, EventKind, JournalEntry,
    LimitScope, Outcome, Plan, Reservation, ReservationState, SpendLimit, Subscription,
    CATALOG_SHARD,
};
use ledger_raft::ShardId;
use serde_json::{json, Value};

use super::handlers::{
    account_not_found, account_response, forwardable, now_ms, record_outcome, shard_of,
};
use super::parse::{self, format_instant_ms};
use super::routing::{self, Forwardable, Routed};
use super::ApiError;
use crate::node::NodeContext;

type Context = State<Arc<NodeContext>>;
type Params = Query<HashMap<String, String>>;

/// Most items of one page (entries, events).
const PAGE_LIMIT_MAX: usize = 1_000;
const PAGE_LIMIT_DEFAULT: usize = 100;

// ------------------------------------------------------------------ JSON views

pub fn subscription_json(subscription: &Subscription) -> Value {
    json!({
        "plan_id": subscription.plan_id,
        "seats": subscription.seats,
        "period": subscription.terms.period.to_iso(),
        "period_index": subscription.period_index,
        "started_at": format_instant_ms(subscription.anchor_ms),
        "next_reset_at": format_instant_ms(subscription.next_reset_ms),
        "credits_per_period": subscription.terms.credits_per_period,
        "per_seat": subscription.terms.per_seat,
        "rollover_max": subscription.terms.rollover_max,
    })
}

pub fn limit_json(scope: LimitScope, limit: &SpendLimit) -> Value {
    json!({
        "scope": scope.as_str(),
        "period": limit.terms.period.to_iso(),
        "soft": limit.terms.soft,
        "hard": limit.terms.hard,
        "window_start": format_instant_ms(limit.window_start_ms),
        "window_end": format_instant_ms(limit.window_end_ms),
        "spent": limit.spent,
    })
}

pub fn alerts_json(alerts: &AlertSettings) -> Value {
    json!({
        "low_balance": alerts.low_balance,
        "auto_top_up_below": alerts.auto_top_up_below,
        "grant_expiring_within_ms": alerts.grant_expiring_within_ms,
    })
}

fn plan_json(plan: &Plan) -> Value {
    json!({
        "plan_id": plan.plan_id,
        "version": plan.version,
        "credits_per_period": plan.terms.credits_per_period,
        "period": plan.terms.period.to_iso(),
        "per_seat": plan.terms.per_seat,
        "rollover_max": plan.terms.rollover_max,
    })
}

fn rate_card_json(catalog: &Catalog, version: Option<u64>) -> Option<Value> {
    let card = match version {
        None => catalog.rate_card(),
        Some(0) => Default::default(),
        Some(version) => catalog
            .rate_cards
            .iter()
            .find(|card| card.version == version)?
            .clone(),
    };
    let features: serde_json::Map<String, Value> = card
        .features
        .iter()
        .map(|(name, credits)| (name.clone(), json!({ "credits_per_unit": credits })))
        .collect();
    Some(json!({
        "version": card.version,
        "features": features,
        "created_at": (card.version > 0).then(|| format_instant_ms(card.created_at_ms)),
    }))
}

/// An event as the API and the webhooks show it; its id is `{shard}-{sequence}`.
pub fn event_json(shard: ShardId, event: &Event) -> Value {
    let data = match &event.kind {
        EventKind::LowBalance {
            threshold,
            available,
        }
        | EventKind::AutoTopUpWanted {
            threshold,
            available,
        } => json!({ "threshold": threshold, "available": available }),
        EventKind::SoftLimitReached {
            scope,
            window_start_ms,
            spent,
            limit,
        }
        | EventKind::HardLimitReached {
            scope,
            window_start_ms,
            spent,
            limit,
        } => json!({
            "scope": scope.as_str(),
            "window_start": format_instant_ms(*window_start_ms),
            "spent": spent,
            "limit": limit,
        }),
        EventKind::GrantExpiring {
            grant_id,
            expires_at_ms,
            remaining,
        } => json!({
            "grant_id": grant_id,
            "expires_at": format_instant_ms(*expires_at_ms),
            "remaining": remaining,
        }),
        EventKind::AllowanceReset {
            plan_id,
            period_index,
            period_start_ms,
            period_end_ms,
            granted,
            rolled_over,
        } => json!({
            "plan_id": plan_id,
            "period_index": period_index,
            "period_start": format_instant_ms(*period_start_ms),
            "period_end": format_instant_ms(*period_end_ms),
            "granted": granted,
            "rolled_over": rolled_over,
        }),
    };
    json!({
        "id": format!("{shard}-{}", event.sequence),
        "type": event.kind.type_name(),
        "account_id": event.account_id,
        "at": format_instant_ms(event.at_ms),
        "data": data,
    })
}

fn entry_json(entry: &JournalEntry) -> Value {
    let mut value = json!({
        "sequence": entry.sequence,
        "at": format_instant_ms(entry.at_ms),
        "kind": entry.kind.as_str(),
        "amount": entry.amount,
        "delta": entry.delta,
        "balance": entry.balance,
        "reference": entry.reference,
    });
    let object = value.as_object_mut().expect("an object");
    if let Some(source) = entry.source {
        object.insert("source".into(), json!(source.as_str()));
    }
    if let Some(feature) = &entry.feature {
        object.insert("feature".into(), json!(feature));
    }
    if let Some(quantity) = entry.quantity {
        object.insert("quantity".into(), json!(quantity));
    }
    if let Some(version) = entry.rate_card_version {
        object.insert("rate_card_version".into(), json!(version));
    }
    if entry.overage > 0 {
        object.insert("overage".into(), json!(entry.overage));
    }
    value
}

fn reservation_response(
    account_id: &str,
    reservation_id: &str,
    reservation: &Reservation,
    replayed: bool,
) -> ReservationResponse {
    let mut response = ReservationResponse {
        account_id: account_id.to_owned(),
        reservation_id: reservation_id.to_owned(),
        status: String::new(),
        amount: reservation.amount,
        expires_at: format_instant_ms(reservation.expires_at_ms),
        committed: None,
        released: None,
        available: None,
        rate_card_version: None,
        code: None,
        replayed,
    };
    match &reservation.state {
        ReservationState::Active => {
            response.status = "active".into();
            if let Ok(Accepted::Reserved { available, .. }) = &reservation.reserve_result {
                response.available = Some(*available);
            }
        }
        ReservationState::Committed {
            amount,
            released,
            available,
            rate_card_version,
            ..
        } => {
            response.status = "committed".into();
            response.committed = Some(*amount);
            response.released = Some(*released);
            response.available = Some(*available);
            response.rate_card_version = *rate_card_version;
        }
        ReservationState::Released { available, .. } => {
            response.status = "released".into();
            response.released = Some(reservation.amount);
            response.available = Some(*available);
        }
        ReservationState::Expired { available, .. } => {
            response.status = "expired".into();
            response.released = Some(reservation.amount);
            response.available = Some(*available);
        }
        ReservationState::Rejected { rejection } => {
            response.status = "rejected".into();
            response.code = Some(rejection.code().to_owned());
        }
    }
    response
}

// ------------------------------------------------------------------ helpers

/// Decides an account command at its shard's leader: the outcome, or the complete answer
/// (forwarded, or an error).
async fn decide(
    context: &NodeContext,
    account_id: &str,
    command: Command,
    request: &Forwardable,
) -> Result<Outcome, Response> {
    let shard = shard_of(context, account_id);
    match routing::write(context, shard, command, request).await {
        Routed::Here(outcome) => Ok(outcome),
        Routed::Answered(response) => Err(response),
    }
}

/// The account as this node (the shard's leader, which just applied a command of it) sees it.
fn account_after_write(context: &NodeContext, account_id: &str) -> Response {
    let shard = shard_of(context, account_id);
    let view = context
        .replicas
        .get(&shard)
        .and_then(|replica| replica.state.read().ledger.view(account_id, now_ms()));
    match view {
        Some(view) => Json(account_response(view)).into_response(),
        None => account_not_found(account_id).into_response(),
    }
}

/// The answer to a malformed account id in a path, if it is one.
fn invalid_account(account_id: &str) -> Option<Response> {
    parse::identifier(account_id, "account id")
        .err()
        .map(IntoResponse::into_response)
}

fn page_limit(params: &HashMap<String, String>) -> Result<usize, ApiError> {
    match params.get("limit") {
        None => Ok(PAGE_LIMIT_DEFAULT),
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|limit| (1..=PAGE_LIMIT_MAX).contains(limit))
            .ok_or_else(|| {
                ApiError::bad_request(
                    codes::INVALID_QUERY,
                    format!("limit must be an integer from 1 to {PAGE_LIMIT_MAX}"),
                )
            }),
    }
}

/// Runs `read` on the account's journal as of now (linearizable), or answers.
async fn with_journal<T>(
    context: &NodeContext,
    account_id: &str,
    request: &Forwardable,
    read: impl FnOnce(&[JournalEntry]) -> T,
) -> Result<T, Response> {
    let shard = shard_of(context, account_id);
    let now = now_ms();
    match routing::linearizable_read(context, shard, request, |state| {
        state.ledger.journal_at(account_id, now)
    })
    .await
    {
        Routed::Here(Some(entries)) => Ok(read(&entries)),
        Routed::Here(None) => Err(account_not_found(account_id).into_response()),
        Routed::Answered(response) => Err(response),
    }
}

// ------------------------------------------------------------------ account policy

/// `PATCH /v1/accounts/{id}`
pub async fn update_account(
    State(context): Context,
    Path(account_id): Path<String>,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = forwardable(method, &uri, &headers, body);
    parsed_setting(&context, &account_id, request, parse::update_account).await
}

/// A setting whose body `parse` turns into a command: decided, answered with the account.
async fn parsed_setting(
    context: &NodeContext,
    account_id: &str,
    request: Forwardable,
    parse: fn(&str, &Bytes) -> Result<Command, ApiError>,
) -> Response {
    let command = match parse::identifier(account_id, "account id")
        .and_then(|account_id| parse(&account_id, &request.body))
    {
        Ok(command) => command,
        Err(error) => return error.into_response(),
    };
    setting(context, account_id, command, request).await
}

/// Decides a setting of an account and answers with the account.
async fn setting(
    context: &NodeContext,
    account_id: &str,
    command: Command,
    request: Forwardable,
) -> Response {
    match decide(context, account_id, command, &request).await {
        Ok(Outcome { result: Ok(_), .. }) => account_after_write(context, account_id),
        Ok(Outcome {
            result: Err(rejection),
            replayed,
        }) => ApiError::rejection(rejection, replayed, &format!("account {account_id}"))
            .into_response(),
        Err(response) => response,
    }
}

/// `POST /v1/accounts/{id}/grants/{grant_id}/void`
pub async fn void_grant(
    State(context): Context,
    Path((account_id, grant_id)): Path<(String, String)>,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(response) = invalid_account(&account_id) {
        return response;
    }
    let command = Command::VoidGrant {
        account_id: account_id.clone(),
        grant_id: grant_id.clone(),
    };
    let request = forwardable(method, &uri, &headers, body);
    match decide(&context, &account_id, command, &request).await {
        Ok(Outcome {
            result: Ok(Accepted::Voided { voided }),
            replayed,
        }) => Json(json!({
            "account_id": account_id,
            "grant_id": grant_id,
            "voided": voided,
            "replayed": replayed,
        }))
        .into_response(),
        Ok(Outcome {
            result: Err(rejection),
            replayed,
        }) => {
            ApiError::rejection(rejection, replayed, &format!("grant {grant_id}")).into_response()
        }
        Ok(other) => unexpected(&other),
        Err(response) => response,
    }
}

fn unexpected(outcome: &Outcome) -> Response {
    tracing::error!(
        ?outcome,
        "a command was answered with an outcome of another kind"
    );
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        codes::INTERNAL,
        "unexpected outcome",
    )
    .into_response()
}

// ------------------------------------------------------------------ reservations

/// `POST /v1/accounts/{id}/reservations`: 201 (200 for a replay), or 402.
pub async fn reserve(
    State(context): Context,
    Path(account_id): Path<String>,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let command = match parse::identifier(&account_id, "account id")
        .and_then(|account_id| parse::reserve(&account_id, &body))
    {
        Ok(command) => command,
        Err(error) => return error.into_response(),
    };
    let Command::Reserve { reservation_id, .. } = &command else {
        return unexpected_command();
    };
    let reservation_id = reservation_id.clone();
    let request = forwardable(method, &uri, &headers, body);
    let outcome = match decide(&context, &account_id, command, &request).await {
        Ok(outcome) => outcome,
        Err(response) => return response,
    };
    record_outcome("reserve", &outcome.result);
    reservation_answer(
        &context,
        &account_id,
        &reservation_id,
        &outcome,
        StatusCode::CREATED,
    )
}

fn unexpected_command() -> Response {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        codes::INTERNAL,
        "unexpected command",
    )
    .into_response()
}

/// The answer to reserve, commit and release: the reservation's state after the decision.
fn reservation_answer(
    context: &NodeContext,
    account_id: &str,
    reservation_id: &str,
    outcome: &Outcome,
    created: StatusCode,
) -> Response {
    if let Err(rejection) = &outcome.result {
        return ApiError::rejection(
            *rejection,
            outcome.replayed,
            &format!("reservation {reservation_id}"),
        )
        .into_response();
    }
    let shard = shard_of(context, account_id);
    let reservation = context.replicas.get(&shard).and_then(|replica| {
        replica
            .state
            .read()
            .ledger
            .reservation(account_id, reservation_id)
            .cloned()
    });
    let Some(reservation) = reservation else {
        return ApiError::unavailable(
            codes::UNAVAILABLE,
            "leadership changed; read the reservation",
        )
        .into_response();
    };
    let mut body = reservation_response(account_id, reservation_id, &reservation, outcome.replayed);
    // The answer is this command's outcome, even if the reservation moved on since.
    match &outcome.result {
        Ok(Accepted::Committed {
            amount,
            released,
            available,
            rate_card_version,
        }) => {
            body.status = "committed".into();
            body.committed = Some(*amount);
            body.released = Some(*released);
            body.available = Some(*available);
            body.rate_card_version = *rate_card_version;
        }
        Ok(Accepted::Released {
            released,
            available,
            expired,
        }) => {
            body.status = if *expired { "expired" } else { "released" }.into();
            body.released = Some(*released);
            body.available = Some(*available);
        }
        _ => {}
    }
    let status = if outcome.replayed {
        StatusCode::OK
    } else {
        created
    };
    (status, Json(body)).into_response()
}

/// `POST /v1/accounts/{id}/reservations/{rid}/commit`
pub async fn commit(
    State(context): Context,
    Path((account_id, reservation_id)): Path<(String, String)>,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let command = match parse::identifier(&account_id, "account id")
        .and_then(|_| parse::identifier(&reservation_id, "reservation id"))
        .and_then(|_| parse::commit(&account_id, &reservation_id, &body))
    {
        Ok(command) => command,
        Err(error) => return error.into_response(),
    };
    let request = forwardable(method, &uri, &headers, body);
    let outcome = match decide(&context, &account_id, command, &request).await {
        Ok(outcome) => outcome,
        Err(response) => return response,
    };
    record_outcome("commit", &outcome.result);
    reservation_answer(
        &context,
        &account_id,
        &reservation_id,
        &outcome,
        StatusCode::OK,
    )
}

/// `POST /v1/accounts/{id}/reservations/{rid}/release`
pub async fn release(
    State(context): Context,
    Path((account_id, reservation_id)): Path<(String, String)>,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(error) = parse::identifier(&account_id, "account id")
        .and_then(|_| parse::identifier(&reservation_id, "reservation id"))
    {
        return error.into_response();
    }
    let command = Command::Release {
        account_id: account_id.clone(),
        reservation_id: reservation_id.clone(),
    };
    let request = forwardable(method, &uri, &headers, body);
    let outcome = match decide(&context, &account_id, command, &request).await {
        Ok(outcome) => outcome,
        Err(response) => return response,
    };
    record_outcome("release", &outcome.result);
    reservation_answer(
        &context,
        &account_id,
        &reservation_id,
        &outcome,
        StatusCode::OK,
    )
}

/// `GET /v1/accounts/{id}/reservations/{rid}`: linearizable.
pub async fn get_reservation(
    State(context): Context,
    Path((account_id, reservation_id)): Path<(String, String)>,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
) -> Response {
    if let Err(error) = parse::identifier(&account_id, "account id")
        .and_then(|_| parse::identifier(&reservation_id, "reservation id"))
    {
        return error.into_response();
    }
    let shard = shard_of(&context, &account_id);
    let request = forwardable(method, &uri, &headers, Bytes::new());
    let now = now_ms();
    let found = routing::linearizable_read(&context, shard, &request, |state| {
        let reservation = state
            .ledger
            .reservation(&account_id, &reservation_id)?
            .clone();
        // An active reservation past its time to live is shown as the settlement will record it.
        let expired_by_now = matches!(reservation.state, ReservationState::Active)
            && reservation.expires_at_ms <= now;
        Some((reservation, expired_by_now))
    })
    .await;
    match found {
        Routed::Here(Some((mut reservation, expired_by_now))) => {
            if expired_by_now {
                let available = state_available(&context, shard, &account_id, now);
                reservation.state = ReservationState::Expired {
                    at_ms: reservation.expires_at_ms,
                    available,
                };
            }
            Json(reservation_response(
                &account_id,
                &reservation_id,
                &reservation,
                true,
            ))
            .into_response()
        }
        Routed::Here(None) => ApiError::new(
            StatusCode::NOT_FOUND,
            codes::RESERVATION_NOT_FOUND,
            format!("no reservation {reservation_id} on account {account_id}"),
        )
        .into_response(),
        Routed::Answered(response) => response,
    }
}

fn state_available(context: &NodeContext, shard: ShardId, account_id: &str, now: u64) -> i64 {
    context
        .replicas
        .get(&shard)
        .and_then(|replica| replica.state.read().ledger.view(account_id, now))
        .map_or(0, |view| view.available)
}

// ------------------------------------------------------------------ catalog

/// Sequences a catalog change on the catalog shard, then installs the new catalog on every
/// other shard before answering, so that the change is in force everywhere once acknowledged
/// (a node's background reconciler finishes an installation an interrupted request left
/// behind).
async fn update_catalog(
    context: &NodeContext,
    change: CatalogChange,
    request: &Forwardable,
) -> Result<(u64, u64, bool), Response> {
    let outcome = match routing::write(
        context,
        CATALOG_SHARD,
        Command::UpdateCatalog(change),
        request,
    )
    .await
    {
        Routed::Here(outcome) => outcome,
        Routed::Answered(response) => return Err(response),
    };
    let (catalog_version, item_version) = match outcome.result {
        Ok(Accepted::CatalogUpdated {
            catalog_version,
            item_version,
        }) => (catalog_version, item_version),
        Err(rejection) => {
            return Err(ApiError::rejection(rejection, outcome.replayed, "catalog").into_response())
        }
        Ok(_) => return Err(unexpected(&outcome)),
    };
    let catalog = context
        .replicas
        .get(&CATALOG_SHARD)
        .map(|replica| replica.state.read().ledger.catalog().clone());
    let Some(catalog) = catalog else {
        return Err(unexpected(&outcome));
    };
    if let Err(shard) = install_catalog_everywhere(context, &catalog).await {
        return Err(ApiError::unavailable(
            codes::CATALOG_NOT_IN_FORCE,
            format!(
                "the change is recorded (catalog version {catalog_version}) but shard {shard} \
                 has not installed it yet; retry the same request"
            ),
        )
        .into_response());
    }
    Ok((catalog_version, item_version, outcome.replayed))
}

/// Installs `catalog` on every shard other than the catalog shard; `Err(shard)` names one that
/// did not confirm.
pub async fn install_catalog_everywhere(
    context: &NodeContext,
    catalog: &Catalog,
) -> Result<(), ShardId> {
    let body = match serde_json::to_vec(catalog) {
        Ok(body) => Bytes::from(body),
        Err(_) => return Err(CATALOG_SHARD),
    };
    let installs = (0..context.shard_count())
        .filter(|shard| *shard != CATALOG_SHARD)
        .map(|shard| {
            let body = body.clone();
            async move {
                let request = Forwardable {
                    method: Method::POST,
                    path_and_query: format!("/internal/shards/{shard}/catalog"),
                    body,
                    hops: 0,
                    accept: None,
                };
                let installed = match routing::write(
                    context,
                    shard,
                    Command::InstallCatalog(catalog.clone()),
                    &request,
                )
                .await
                {
                    Routed::Here(outcome) => outcome.result.is_ok(),
                    Routed::Answered(response) => response.status().is_success(),
                };
                if installed {
                    Ok(())
                } else {
                    Err(shard)
                }
            }
        });
    futures::future::join_all(installs)
        .await
        .into_iter()
        .collect::<Result<Vec<()>, ShardId>>()
        .map(|_| ())
}

/// `POST /internal/shards/{shard}/catalog`: installs a catalog on one shard (used by the node
/// that sequenced it; forwarded to the shard's leader like any write).
pub async fn install_catalog(
    State(context): Context,
    Path(shard): Path<ShardId>,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(catalog) = serde_json::from_slice::<Catalog>(&body) else {
        return ApiError::bad_request(codes::INVALID_JSON, "the body must be a catalog")
            .into_response();
    };
    if shard >= context.shard_count() {
        return ApiError::bad_request(codes::INVALID_FIELD, "no such shard").into_response();
    }
    let request = forwardable(method, &uri, &headers, body);
    match routing::write(&context, shard, Command::InstallCatalog(catalog), &request).await {
        Routed::Here(outcome) => {
            Json(json!({ "installed": outcome.result.is_ok() })).into_response()
        }
        Routed::Answered(response) => response,
    }
}

/// Reads the catalog at the catalog shard's leader.
async fn read_catalog(context: &NodeContext, request: &Forwardable) -> Result<Catalog, Response> {
    match routing::linearizable_read(context, CATALOG_SHARD, request, |state| {
        state.ledger.catalog().clone()
    })
    .await
    {
        Routed::Here(catalog) => Ok(catalog),
        Routed::Answered(response) => Err(response),
    }
}

/// `PUT /v1/rate-card` → `{"version"}`
pub async fn put_rate_card(
    State(context): Context,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let change = match parse::rate_card(&body) {
        Ok(change) => change,
        Err(error) => return error.into_response(),
    };
    let request = forwardable(method, &uri, &headers, body);
    match update_catalog(&context, change, &request).await {
        Ok((catalog_version, version, replayed)) => Json(json!({
            "version": version,
            "catalog_version": catalog_version,
            "replayed": replayed,
        }))
        .into_response(),
        Err(response) => response,
    }
}

/// `GET /v1/rate-card?version=N` (default: the one in force)
pub async fn get_rate_card(
    State(context): Context,
    Query(params): Params,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
) -> Response {
    let version = match params.get("version").map(|text| text.parse::<u64>()) {
        None => None,
        Some(Ok(version)) => Some(version),
        Some(Err(_)) => {
            return ApiError::bad_request(codes::INVALID_QUERY, "version must be an integer")
                .into_response()
        }
    };
    let request = forwardable(method, &uri, &headers, Bytes::new());
    match read_catalog(&context, &request).await {
        Ok(catalog) => match rate_card_json(&catalog, version) {
            Some(body) => Json(body).into_response(),
            None => ApiError::new(
                StatusCode::NOT_FOUND,
                codes::NOT_FOUND,
                "no such rate card version",
            )
            .into_response(),
        },
        Err(response) => response,
    }
}

/// `PUT /v1/plans/{plan_id}`
pub async fn put_plan(
    State(context): Context,
    Path(plan_id): Path<String>,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let change = match parse::identifier(&plan_id, "plan id")
        .and_then(|plan_id| parse::plan(&plan_id, &body))
    {
        Ok(change) => change,
        Err(error) => return error.into_response(),
    };
    let request = forwardable(method, &uri, &headers, body);
    if let Err(response) = update_catalog(&context, change, &request).await {
        return response;
    }
    let plan = context.replicas.get(&CATALOG_SHARD).and_then(|replica| {
        replica
            .state
            .read()
            .ledger
            .catalog()
            .plans
            .get(&plan_id)
            .cloned()
    });
    match plan {
        Some(plan) => Json(plan_json(&plan)).into_response(),
        None => ApiError::unavailable(codes::UNAVAILABLE, "leadership changed; read the plan")
            .into_response(),
    }
}

/// `GET /v1/plans/{plan_id}`
pub async fn get_plan(
    State(context): Context,
    Path(plan_id): Path<String>,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
) -> Response {
    if let Err(error) = parse::identifier(&plan_id, "plan id") {
        return error.into_response();
    }
    let request = forwardable(method, &uri, &headers, Bytes::new());
    match read_catalog(&context, &request).await {
        Ok(catalog) => match catalog.plans.get(&plan_id) {
            Some(plan) => Json(plan_json(plan)).into_response(),
            None => ApiError::new(
                StatusCode::NOT_FOUND,
                codes::PLAN_NOT_FOUND,
                format!("no plan {plan_id}"),
            )
            .into_response(),
        },
        Err(response) => response,
    }
}

/// `PUT /v1/webhooks`: `{"url","secret"}`
pub async fn put_webhook(
    State(context): Context,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let change = match parse::webhook(&body) {
        Ok(change) => change,
        Err(error) => return error.into_response(),
    };
    let url = match &change {
        CatalogChange::Webhook { endpoint } => {
            endpoint.as_ref().map(|endpoint| endpoint.url.clone())
        }
        _ => None,
    };
    let request = forwardable(method, &uri, &headers, body);
    match update_catalog(&context, change, &request).await {
        Ok((catalog_version, _, replayed)) => Json(json!({
            "url": url,
            "catalog_version": catalog_version,
            "replayed": replayed,
        }))
        .into_response(),
        Err(response) => response,
    }
}

/// `GET /v1/webhooks`: the URL (never the secret).
pub async fn get_webhook(
    State(context): Context,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
) -> Response {
    let request = forwardable(method, &uri, &headers, Bytes::new());
    match read_catalog(&context, &request).await {
        Ok(catalog) => Json(json!({
            "url": catalog.webhook.map(|endpoint| endpoint.url),
        }))
        .into_response(),
        Err(response) => response,
    }
}

// ------------------------------------------------------------------ subscriptions, limits, alerts

/// `PUT /v1/accounts/{id}/subscription`: `{"plan_id","seats"?}`
pub async fn put_subscription(
    State(context): Context,
    Path(account_id): Path<String>,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = forwardable(method, &uri, &headers, body);
    parsed_setting(&context, &account_id, request, parse::subscribe).await
}

/// `DELETE /v1/accounts/{id}/subscription`: no further allowance; the current one stays until
/// its period ends.
pub async fn delete_subscription(
    State(context): Context,
    Path(account_id): Path<String>,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
) -> Response {
    if let Some(response) = invalid_account(&account_id) {
        return response;
    }
    let command = Command::Unsubscribe {
        account_id: account_id.clone(),
    };
    setting(
        &context,
        &account_id,
        command,
        forwardable(method, &uri, &headers, Bytes::new()),
    )
    .await
}

/// `PUT /v1/accounts/{id}/limits`: `{"period","soft"?,"hard"?,"scope"?}`
pub async fn put_limits(
    State(context): Context,
    Path(account_id): Path<String>,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = forwardable(method, &uri, &headers, body);
    parsed_setting(&context, &account_id, request, parse::spend_limit).await
}

/// `PUT /v1/accounts/{id}/alerts`: `{"low_balance":[...],"auto_top_up_below"?,...}`
pub async fn put_alerts(
    State(context): Context,
    Path(account_id): Path<String>,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = forwardable(method, &uri, &headers, body);
    parsed_setting(&context, &account_id, request, parse::alerts).await
}

// ------------------------------------------------------------------ events

/// The events cursor: the last sequence seen of every shard, dot-separated (`0.0.3.0...`);
/// empty or absent = from the start.
fn parse_cursor(text: Option<&String>, shards: u32) -> Result<Vec<u64>, ApiError> {
    let Some(text) = text.filter(|text| !text.is_empty()) else {
        return Ok(vec![0; shards as usize]);
    };
    let positions: Result<Vec<u64>, _> = text.split('.').map(str::parse::<u64>).collect();
    match positions {
        Ok(positions) if positions.len() == shards as usize => Ok(positions),
        _ => Err(ApiError::bad_request(
            codes::INVALID_CURSOR,
            "after must be a cursor returned by this endpoint",
        )),
    }
}

/// `GET /v1/events?after=CURSOR&limit=N`: the events of every shard, each shard's in log
/// order, merged by time; `next` is the cursor to pass as `after` for the following page.
pub async fn events(State(context): Context, Query(params): Params) -> Response {
    let shards = context.shard_count();
    let (cursor, limit) = match parse_cursor(params.get("after"), shards)
        .and_then(|cursor| Ok((cursor, page_limit(&params)?)))
    {
        Ok(parsed) => parsed,
        Err(error) => return error.into_response(),
    };
    let reads = (0..shards).map(|shard| {
        let after = cursor[shard as usize];
        let context = &context;
        async move {
            let request = Forwardable {
                method: Method::GET,
                path_and_query: format!(
                    "/internal/shards/{shard}/events?after={after}&limit={limit}"
                ),
                body: Bytes::new(),
                hops: 0,
                accept: None,
            };
            read_shard_events(context, shard, after, limit, &request).await
        }
    });
    let mut streams = Vec::new();
    for (shard, read) in futures::future::join_all(reads)
        .await
        .into_iter()
        .enumerate()
    {
        match read {
            Ok(events) => streams.push((shard as ShardId, events.into_iter().peekable())),
            Err(response) => return response,
        }
    }
    // A k-way merge that takes a prefix of every shard's stream, so that the cursor (a position
    // per shard) never skips or repeats an event.
    let mut next = cursor.clone();
    let mut page = Vec::new();
    while page.len() < limit {
        let earliest = streams
            .iter_mut()
            .filter_map(|(shard, events)| events.peek().map(|event| (event.at_ms, *shard)))
            .min();
        let Some((_, shard)) = earliest else { break };
        let (_, events) = &mut streams[shard as usize];
        let Some(event) = events.next() else { break };
        next[shard as usize] = event.sequence;
        page.push(event_json(shard, &event));
    }
    let next: Vec<String> = next.iter().map(u64::to_string).collect();
    Json(json!({ "events": page, "next": next.join(".") })).into_response()
}

async fn read_shard_events(
    context: &NodeContext,
    shard: ShardId,
    after: u64,
    limit: usize,
    request: &Forwardable,
) -> Result<Vec<Event>, Response> {
    match routing::linearizable_read(context, shard, request, |state| {
        state.ledger.events_after(after, limit).to_vec()
    })
    .await
    {
        Routed::Here(events) => Ok(events),
        Routed::Answered(response) if response.status().is_success() => {
            let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024 * 1024)
                .await
                .unwrap_or_default();
            serde_json::from_slice::<Vec<Event>>(&bytes).map_err(|_| {
                ApiError::unavailable(
                    codes::UNAVAILABLE,
                    format!("shard {shard}: bad events answer"),
                )
                .into_response()
            })
        }
        Routed::Answered(response) => Err(response),
    }
}

/// `GET /internal/shards/{shard}/events?after=SEQ&limit=N`: one shard's events, as stored.
pub async fn shard_events(
    State(context): Context,
    Path(shard): Path<ShardId>,
    Query(params): Params,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
) -> Response {
    let after = params
        .get("after")
        .and_then(|text| text.parse::<u64>().ok())
        .unwrap_or(0);
    let limit = match page_limit(&params) {
        Ok(limit) => limit,
        Err(error) => return error.into_response(),
    };
    if shard >= context.shard_count() {
        return ApiError::bad_request(codes::INVALID_FIELD, "no such shard").into_response();
    }
    let request = forwardable(method, &uri, &headers, Bytes::new());
    match read_shard_events(&context, shard, after, limit, &request).await {
        Ok(events) => Json(events).into_response(),
        Err(response) => response,
    }
}

// ------------------------------------------------------------------ reports

fn window(params: &HashMap<String, String>, required: bool) -> Result<(u64, u64), ApiError> {
    let from = parse::query_instant_ms(params.get("from"), "from")?;
    let to = parse::query_instant_ms(params.get("to"), "to")?;
    if required && (from.is_none() || to.is_none()) {
        return Err(ApiError::bad_request(
            codes::MISSING_FIELD,
            "from and to are required (RFC 3339 instants or milliseconds since the epoch)",
        ));
    }
    let from = from.unwrap_or(0);
    let to = to.unwrap_or_else(|| now_ms() + 1);
    if to <= from {
        return Err(ApiError::bad_request(
            codes::INVALID_QUERY,
            "to must be after from",
        ));
    }
    Ok((from, to))
}

/// `GET /v1/accounts/{id}/usage?from=&to=`: credits and count per feature in `[from, to)`.
pub async fn usage(
    State(context): Context,
    Path(account_id): Path<String>,
    Query(params): Params,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
) -> Response {
    if let Some(response) = invalid_account(&account_id) {
        return response;
    }
    let (from, to) = match window(&params, false) {
        Ok(window) => window,
        Err(error) => return error.into_response(),
    };
    let request = forwardable(method, &uri, &headers, Bytes::new());
    match with_journal(&context, &account_id, &request, |entries| {
        ledger_core::usage(entries, from, to)
    })
    .await
    {
        Ok(features) => Json(json!({
            "account_id": account_id,
            "from": format_instant_ms(from),
            "to": format_instant_ms(to),
            "features": features.iter().map(|usage| json!({
                "feature": usage.feature,
                "credits": usage.credits,
                "count": usage.count,
                "quantity": usage.quantity,
            })).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(response) => response,
    }
}

/// `GET /v1/accounts/{id}/entries?after=&limit=`: the journal with the running balance.
pub async fn entries(
    State(context): Context,
    Path(account_id): Path<String>,
    Query(params): Params,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
) -> Response {
    if let Some(response) = invalid_account(&account_id) {
        return response;
    }
    let after = match params.get("after").map(|text| text.parse::<u64>()) {
        None => 0,
        Some(Ok(after)) => after,
        Some(Err(_)) => {
            return ApiError::bad_request(codes::INVALID_CURSOR, "after must be an entry sequence")
                .into_response()
        }
    };
    let limit = match page_limit(&params) {
        Ok(limit) => limit,
        Err(error) => return error.into_response(),
    };
    let request = forwardable(method, &uri, &headers, Bytes::new());
    match with_journal(&context, &account_id, &request, |entries| {
        let start = (after as usize).min(entries.len());
        let page: Vec<Value> = entries[start..]
            .iter()
            .take(limit)
            .map(entry_json)
            .collect();
        let more = entries.len() > start + page.len();
        (page, more)
    })
    .await
    {
        Ok((page, more)) => {
            let next = page
                .last()
                .and_then(|entry| entry.get("sequence").cloned())
                .filter(|_| more);
            Json(json!({ "account_id": account_id, "entries": page, "next_after": next }))
                .into_response()
        }
        Err(response) => response,
    }
}

/// `GET /v1/accounts/{id}/balance?at=`: the running balance at an instant (default now).
pub async fn balance(
    State(context): Context,
    Path(account_id): Path<String>,
    Query(params): Params,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
) -> Response {
    if let Some(response) = invalid_account(&account_id) {
        return response;
    }
    let at = match parse::query_instant_ms(params.get("at"), "at") {
        Ok(at) => at.unwrap_or_else(now_ms),
        Err(error) => return error.into_response(),
    };
    let request = forwardable(method, &uri, &headers, Bytes::new());
    match with_journal(&context, &account_id, &request, |entries| {
        ledger_core::balance_at(entries, at)
    })
    .await
    {
        Ok(balance) => Json(json!({
            "account_id": account_id,
            "at": format_instant_ms(at),
            "balance": balance,
        }))
        .into_response(),
        Err(response) => response,
    }
}

/// `GET /v1/accounts/{id}/statement?from=&to=`: JSON, or CSV with `Accept: text/csv`.
pub async fn statement(
    State(context): Context,
    Path(account_id): Path<String>,
    Query(params): Params,
    method: Method,
    uri: OriginalUri,
    headers: HeaderMap,
) -> Response {
    if let Some(response) = invalid_account(&account_id) {
        return response;
    }
    let (from, to) = match window(&params, true) {
        Ok(window) => window,
        Err(error) => return error.into_response(),
    };
    let csv = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains("text/csv"));
    let request = forwardable(method, &uri, &headers, Bytes::new());
    let statement = match with_journal(&context, &account_id, &request, |entries| {
        ledger_core::statement(entries, from, to)
    })
    .await
    {
        Ok(statement) => statement,
        Err(response) => return response,
    };
    if csv {
        let mut text = String::from("section,item,credits,count\n");
        text.push_str(&format!("balance,opening,{},\n", statement.opening_balance));
        for (source, credits) in &statement.granted {
            text.push_str(&format!("granted,{},{credits},\n", source.as_str()));
        }
        for usage in &statement.consumed {
            text.push_str(&format!(
                "consumed,{},{},{}\n",
                usage.feature.as_deref().unwrap_or("credits"),
                usage.credits,
                usage.count
            ));
        }
        text.push_str(&format!("consumed,total,{},\n", statement.consumed_total));
        text.push_str(&format!("expired,total,{},\n", statement.expired));
        text.push_str(&format!("voided,total,{},\n", statement.voided));
        text.push_str(&format!("overage,incurred,{},\n", statement.overage));
        text.push_str(&format!("overage,repaid,{},\n", statement.overage_repaid));
        text.push_str(&format!("balance,closing,{},\n", statement.closing_balance));
        return ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], text).into_response();
    }
    let granted: serde_json::Map<String, Value> = statement
        .granted
        .iter()
        .map(|(source, credits)| (source.as_str().to_owned(), json!(credits)))
        .collect();
    Json(json!({
        "account_id": account_id,
        "from": format_instant_ms(from),
        "to": format_instant_ms(to),
        "opening_balance": statement.opening_balance,
        "closing_balance": statement.closing_balance,
        "granted": granted,
        "consumed": statement.consumed.iter().map(|usage| json!({
            "feature": usage.feature,
            "credits": usage.credits,
            "count": usage.count,
            "quantity": usage.quantity,
        })).collect::<Vec<_>>(),
        "consumed_total": statement.consumed_total,
        "expired": statement.expired,
        "voided": statement.voided,
        "overage": statement.overage,
        "overage_repaid": statement.overage_repaid,
    }))
    .into_response()
}
