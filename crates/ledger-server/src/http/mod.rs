//! The HTTP API (the public contract of DESIGN.md): routes, JSON at the edge, errors with stable
//! codes, and forwarding of requests to the leader of their shard.

mod admin;
mod cluster;
mod credits;
mod error;
mod handlers;
mod openapi;
mod parse;
mod routing;
mod shards;

use std::sync::Arc;

use axum::routing::{get, post, put};
use axum::Router;

use crate::node::NodeContext;

pub use cluster::{shard_members, shard_membership_step};
pub use credits::{event_json, install_catalog_everywhere};
pub use error::ApiError;
pub use shards::shard_transfer_leader;

/// Header counting how many times a request was forwarded between nodes, so that a stale view
/// of leadership can never bounce a request around forever.
pub const HOPS_HEADER: &str = "x-ledger-hops";

/// Most forwards of one request. Two allow one stale hop and one correct hop.
pub const HOPS_MAX: u32 = 2;

/// Most items in one `POST /v1/debits/batch`.
pub const BATCH_ITEMS_MAX: usize = 10_000;

pub fn router(context: Arc<NodeContext>) -> Router {
    Router::new()
        .route("/v1/accounts", post(handlers::create_account))
        .route(
            "/v1/accounts/{account_id}",
            get(handlers::get_account).patch(credits::update_account),
        )
        .route(
            "/v1/accounts/{account_id}/grants/{grant_id}/void",
            post(credits::void_grant),
        )
        .route(
            "/v1/accounts/{account_id}/reservations",
            post(credits::reserve),
        )
        .route(
            "/v1/accounts/{account_id}/reservations/{reservation_id}",
            get(credits::get_reservation),
        )
        .route(
            "/v1/accounts/{account_id}/reservations/{reservation_id}/commit",
            post(credits::commit),
        )
        .route(
            "/v1/accounts/{account_id}/reservations/{reservation_id}/release",
            post(credits::release),
        )
        .route(
            "/v1/accounts/{account_id}/subscription",
            put(credits::put_subscription).delete(credits::delete_subscription),
        )
        .route("/v1/accounts/{account_id}/limits", put(credits::put_limits))
        .route("/v1/accounts/{account_id}/alerts", put(credits::put_alerts))
        .route("/v1/accounts/{account_id}/usage", get(credits::usage))
        .route("/v1/accounts/{account_id}/entries", get(credits::entries))
        .route("/v1/accounts/{account_id}/balance", get(credits::balance))
        .route(
            "/v1/accounts/{account_id}/statement",
            get(credits::statement),
        )
        .route(
            "/v1/rate-card",
            put(credits::put_rate_card).get(credits::get_rate_card),
        )
        .route(
            "/v1/plans/{plan_id}",
            put(credits::put_plan).get(credits::get_plan),
        )
        .route(
            "/v1/webhooks",
            put(credits::put_webhook).get(credits::get_webhook),
        )
        .route("/v1/events", get(credits::events))
        .route(
            "/internal/shards/{shard}/catalog",
            post(credits::install_catalog),
        )
        .route(
            "/internal/shards/{shard}/events",
            get(credits::shard_events),
        )
        .route("/openapi.json", get(openapi::document))
        .route(
            "/v1/accounts/{account_id}/grants",
            post(handlers::create_grant),
        )
        .route("/v1/accounts/{account_id}/debits", post(handlers::debit))
        .route(
            "/v1/accounts/{account_id}/debits/{idempotency_key}",
            get(handlers::get_debit),
        )
        .route("/v1/debits/batch", post(handlers::batch_debits))
        .route("/admin/cluster", get(cluster::cluster))
        .route("/admin/cluster/apply", post(cluster::apply))
        .route("/internal/cluster", get(cluster::identity))
        .route(
            "/internal/shards/{shard}/membership",
            post(cluster::membership),
        )
        .route("/internal/shards/{shard}/members", get(cluster::members))
        .route(
            "/admin/shards/{shard}/transfer-leader",
            post(shards::transfer_leader),
        )
        .route("/admin/shards/{shard}/move", post(shards::move_shard))
        .route("/internal/shards/{shard}/campaign", post(shards::campaign))
        .route("/internal/leaders", get(shards::leaders))
        .route("/admin/backups", post(admin::create_backup))
        .route("/health", get(handlers::health))
        .route("/metrics", get(handlers::metrics))
        .fallback(handlers::not_found)
        .with_state(context)
}
