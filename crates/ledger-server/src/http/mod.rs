//! The HTTP API (the public contract of DESIGN.md): routes, JSON at the edge, errors with stable
//! codes, and forwarding of requests to the leader of their shard.

mod error;
mod handlers;
mod parse;
mod routing;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

use crate::node::NodeContext;

pub use error::ApiError;

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
        .route("/v1/accounts/{account_id}", get(handlers::get_account))
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
        .route("/admin/cluster", get(handlers::cluster))
        .route("/health", get(handlers::health))
        .route("/metrics", get(handlers::metrics))
        .fallback(handlers::not_found)
        .with_state(context)
}
