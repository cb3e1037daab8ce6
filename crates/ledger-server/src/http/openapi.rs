//! `GET /openapi.json`: the OpenAPI 3.1 document of the HTTP API, kept next to the routes it
//! describes (a test checks that every route is documented).

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The document, as written in `openapi.json`.
pub const DOCUMENT: &str = include_str!("openapi.json");

pub async fn document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT).into_response()
}
