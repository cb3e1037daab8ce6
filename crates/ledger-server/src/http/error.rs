//! API errors: `{"error": {"code", "message"}}` with a fitting status.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ledger_api::{codes, ErrorBody, ErrorResponse};
use ledger_core::Rejection;

/// An error answer. Built by handlers for bad input, decided rejections, missing leaders and
/// overload; turned into the contract's JSON error body.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// For decided rejections of keyed requests: whether this answer is a replay.
    pub replayed: Option<bool>,
    /// Seconds for `Retry-After` (503 and 429).
    pub retry_after_seconds: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            replayed: None,
            retry_after_seconds: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 503: nothing was decided; retry (with the same key) after a moment.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            retry_after_seconds: Some(1),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }

    /// 429: this node or account is at its bound; retry after a moment.
    pub fn overloaded(message: impl Into<String>) -> ApiError {
        ApiError {
            retry_after_seconds: Some(1),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, codes::OVERLOADED, message)
        }
    }

    /// A decided business rejection of the state machine.
    pub fn rejection(rejection: Rejection, replayed: bool, subject: &str) -> ApiError {
        ApiError {
            replayed: Some(replayed),
            ..ApiError::new(
                rejection_status(rejection),
                rejection.code(),
                rejection_message(rejection, subject),
            )
        }
    }

    pub fn body(&self) -> ErrorResponse {
        ErrorResponse {
            error: ErrorBody {
                code: self.code.to_owned(),
                message: self.message.clone(),
                replayed: self.replayed,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after_seconds {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The HTTP status of each business rejection.
pub fn rejection_status(rejection: Rejection) -> StatusCode {
    match rejection {
        Rejection::InvalidIdentifier
        | Rejection::InvalidAmount
        | Rejection::InvalidPriority
        | Rejection::InvalidExpiry
        | Rejection::AmountOverflow => StatusCode::BAD_REQUEST,
        Rejection::AccountNotFound => StatusCode::NOT_FOUND,
        Rejection::AccountConflict | Rejection::GrantConflict | Rejection::IdempotencyConflict => {
            StatusCode::CONFLICT
        }
        Rejection::InsufficientCredits | Rejection::SpendLimitExceeded => {
            StatusCode::PAYMENT_REQUIRED
        }
        Rejection::UnknownFeature
        | Rejection::InvalidTtl
        | Rejection::InvalidPeriod
        | Rejection::InvalidSeats
        | Rejection::InvalidSettings => StatusCode::BAD_REQUEST,
        Rejection::ReservationNotFound | Rejection::GrantNotFound | Rejection::PlanNotFound => {
            StatusCode::NOT_FOUND
        }
        Rejection::ReservationConflict
        | Rejection::ReservationExpired
        | Rejection::ReservationReleased
        | Rejection::ReservationCommitted
        | Rejection::OverdraftInUse
        | Rejection::StaleCatalog
        | Rejection::ClusterVersionConflict
        | Rejection::NodeRemoved => StatusCode::CONFLICT,
        Rejection::InvalidClusterChange => StatusCode::BAD_REQUEST,
    }
}

fn rejection_message(rejection: Rejection, subject: &str) -> String {
    match rejection {
        Rejection::InvalidIdentifier => format!("{subject}: an identifier is not valid"),
        Rejection::InvalidAmount => format!("{subject}: amount must be a positive integer"),
        Rejection::InvalidPriority => format!("{subject}: priority must be between 0 and 100"),
        Rejection::InvalidExpiry => {
            format!("{subject}: expires_at must be after effective_at and in the future")
        }
        Rejection::AccountNotFound => format!("{subject}: account not found"),
        Rejection::AccountConflict => {
            format!("{subject}: the account exists with different parameters")
        }
        Rejection::GrantConflict => {
            format!("{subject}: the grant id was already used with different parameters")
        }
        Rejection::IdempotencyConflict => {
            format!("{subject}: the idempotency key was used for a different request")
        }
        Rejection::AmountOverflow => format!("{subject}: the account's totals would overflow"),
        Rejection::InsufficientCredits => format!("{subject}: not enough credits"),
        Rejection::UnknownFeature => format!("{subject}: the feature is not on the rate card"),
        Rejection::SpendLimitExceeded => {
            format!("{subject}: a hard spend limit of the current period would be exceeded")
        }
        Rejection::ReservationNotFound => format!("{subject}: no such reservation"),
        Rejection::ReservationConflict => {
            format!("{subject}: the reservation id was used with other parameters")
        }
        Rejection::ReservationExpired => {
            format!("{subject}: the reservation expired and its credits were released")
        }
        Rejection::ReservationReleased => format!("{subject}: the reservation was released"),
        Rejection::ReservationCommitted => {
            format!("{subject}: the reservation was already committed with another charge")
        }
        Rejection::InvalidTtl => format!("{subject}: ttl_ms must be between 1 and 86400000"),
        Rejection::GrantNotFound => format!("{subject}: no such grant"),
        Rejection::PlanNotFound => format!("{subject}: no such plan"),
        Rejection::InvalidPeriod => format!("{subject}: the period is out of bounds"),
        Rejection::InvalidSeats => format!("{subject}: seats must be between 1 and 1000000"),
        Rejection::OverdraftInUse => {
            format!("{subject}: the overdraft limit is below the overage already owed")
        }
        Rejection::InvalidSettings => format!("{subject}: the settings are inconsistent"),
        Rejection::StaleCatalog => format!("{subject}: the catalog is older than this shard's"),
        Rejection::ClusterVersionConflict => {
            format!("{subject}: the cluster map changed since this change was planned")
        }
        Rejection::InvalidClusterChange => format!(
            "{subject}: the change cannot be served (fewer nodes than the replication, an \
             address used twice or changed, or a move that does not fit the map)"
        ),
        Rejection::NodeRemoved => format!(
            "{subject}: a node that was removed cannot rejoin under its id; give it a new id \
             and an empty data directory"
        ),
    }
}
