//! Request bodies, field by field, so that every bad input gets a code naming the problem.
//!
//! Bodies are first parsed as JSON values and then read field by field (instead of deriving
//! `Deserialize` on the request types) because serde's errors do not say *which* rule a field
//! broke: a negative amount must be `invalid_amount`, not a generic `invalid_json`.

use axum::body::Bytes;
use ledger_api::codes;
use std::collections::BTreeMap;

use ledger_core::{
    validate_identifier, AlertSettings, CatalogChange, Charge, Command, GrantCommand, GrantSource,
    LimitScope, Period, PlanTerms, SpendLimitTerms, WebhookEndpoint, AMOUNT_MAX, FEATURES_MAX,
    PRIORITY_DEFAULT, PRIORITY_MAX, RESERVATION_TTL_MAX_MS, SEATS_MAX, THRESHOLDS_MAX,
    WEBHOOK_FIELD_LENGTH_MAX,
};
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::ApiError;

pub type Object = Map<String, Value>;

pub fn object(body: &Bytes) -> Result<Object, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(ApiError::bad_request(
            codes::INVALID_JSON,
            "the body must be a JSON object",
        )),
        Err(error) => Err(ApiError::bad_request(
            codes::INVALID_JSON,
            format!("the body is not valid JSON: {error}"),
        )),
    }
}

pub fn identifier(value: &str, field: &str) -> Result<String, ApiError> {
    validate_identifier(value).map_err(|_| {
        ApiError::bad_request(
            codes::INVALID_IDENTIFIER,
            format!("{field} must be 1 to 128 characters of A-Z a-z 0-9 . _ : -"),
        )
    })?;
    Ok(value.to_owned())
}

pub fn required_identifier(object: &Object, field: &str) -> Result<String, ApiError> {
    match object.get(field) {
        None | Some(Value::Null) => Err(ApiError::bad_request(
            codes::MISSING_FIELD,
            format!("{field} is required"),
        )),
        Some(Value::String(value)) => identifier(value, field),
        Some(_) => Err(ApiError::bad_request(
            codes::INVALID_IDENTIFIER,
            format!("{field} must be a string"),
        )),
    }
}

/// An amount of credits: an integer, positive (or zero where `zero_allowed`), at most
/// `AMOUNT_MAX`.
pub fn optional_amount(
    object: &Object,
    field: &str,
    zero_allowed: bool,
) -> Result<Option<u64>, ApiError> {
    let value = match object.get(field) {
        None | Some(Value::Null) => return Ok(None),
        Some(value) => value,
    };
    let invalid = || {
        ApiError::bad_request(
            codes::INVALID_AMOUNT,
            format!(
                "{field} must be a {} integer",
                if zero_allowed {
                    "non-negative"
                } else {
                    "positive"
                }
            ),
        )
    };
    let too_large = || {
        ApiError::bad_request(
            codes::AMOUNT_TOO_LARGE,
            format!("{field} must be at most {AMOUNT_MAX}"),
        )
    };
    let Value::Number(number) = value else {
        return Err(invalid());
    };
    if let Some(amount) = number.as_u64() {
        if amount == 0 && !zero_allowed {
            return Err(invalid());
        }
        if amount > AMOUNT_MAX {
            return Err(too_large());
        }
        return Ok(Some(amount));
    }
    if number.as_i64().is_some() {
        // Negative integer.
        return Err(invalid());
    }
    // A float: too large to be an integer we accept, or fractional.
    match number.as_f64() {
        Some(float) if float.fract() == 0.0 && float > AMOUNT_MAX as f64 => Err(too_large()),
        _ => Err(invalid()),
    }
}

pub fn required_amount(object: &Object, field: &str) -> Result<u64, ApiError> {
    optional_amount(object, field, false)?
        .ok_or_else(|| ApiError::bad_request(codes::MISSING_FIELD, format!("{field} is required")))
}

fn optional_string<'a>(object: &'a Object, field: &str) -> Result<Option<&'a str>, ApiError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(value)) => Ok(Some(value)),
        Some(_) => Err(ApiError::bad_request(
            codes::INVALID_FIELD,
            format!("{field} must be a string"),
        )),
    }
}

/// An RFC 3339 instant, as milliseconds since the Unix epoch.
fn optional_instant_ms(object: &Object, field: &str) -> Result<Option<u64>, ApiError> {
    let Some(text) = optional_string(object, field)? else {
        return Ok(None);
    };
    let invalid = || {
        ApiError::bad_request(
            codes::INVALID_TIMESTAMP,
            format!("{field} must be an RFC 3339 instant after 1970, e.g. 2026-12-01T00:00:00Z"),
        )
    };
    let instant = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| invalid())?;
    let milliseconds = instant.unix_timestamp_nanos() / 1_000_000;
    u64::try_from(milliseconds).map(Some).map_err(|_| invalid())
}

/// Formats milliseconds since the epoch as RFC 3339 (UTC).
pub fn format_instant_ms(milliseconds: u64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(milliseconds) * 1_000_000)
        .ok()
        .and_then(|instant| instant.format(&Rfc3339).ok())
        .unwrap_or_else(|| milliseconds.to_string())
}

/// `POST /v1/accounts`.
pub fn create_account(body: &Bytes) -> Result<Command, ApiError> {
    let object = object(body)?;
    Ok(Command::CreateAccount {
        account_id: required_identifier(&object, "account_id")?,
        overdraft_limit: optional_amount(&object, "overdraft_limit", true)?.unwrap_or(0),
    })
}

/// `POST /v1/accounts/{id}/grants`.
pub fn create_grant(account_id: &str, body: &Bytes) -> Result<Command, ApiError> {
    let object = object(body)?;
    let grant_id = required_identifier(&object, "grant_id")?;
    let amount = required_amount(&object, "amount")?;
    let source = match optional_string(&object, "source")? {
        None => GrantSource::Manual,
        Some(name) => GrantSource::parse(name).ok_or_else(|| {
            ApiError::bad_request(
                codes::INVALID_SOURCE,
                "source must be one of plan, purchase, promo, seat, manual",
            )
        })?,
    };
    let priority = match object.get("priority") {
        None | Some(Value::Null) => PRIORITY_DEFAULT,
        Some(value) => value
            .as_u64()
            .filter(|priority| *priority <= u64::from(PRIORITY_MAX))
            .map(|priority| priority as u8)
            .ok_or_else(|| {
                ApiError::bad_request(
                    codes::INVALID_PRIORITY,
                    "priority must be an integer from 0 to 100",
                )
            })?,
    };
    let effective_at_ms = optional_instant_ms(&object, "effective_at")?;
    let expires_at_ms = optional_instant_ms(&object, "expires_at")?;
    if let (Some(effective), Some(expires)) = (effective_at_ms, expires_at_ms) {
        if expires <= effective {
            return Err(ApiError::bad_request(
                codes::INVALID_EXPIRY,
                "expires_at must be after effective_at",
            ));
        }
    }
    Ok(Command::Grant(GrantCommand {
        account_id: account_id.to_owned(),
        grant_id,
        amount,
        source,
        priority,
        effective_at_ms,
        expires_at_ms,
    }))
}

/// What a debit or a commit costs: `{"amount"}` or `{"feature","quantity"}` (priced by the
/// rate card in force when it is applied). `zero_allowed` for commits (nothing was used).
pub fn charge(object: &Object, zero_allowed: bool) -> Result<Charge, ApiError> {
    let has_amount = !matches!(object.get("amount"), None | Some(Value::Null));
    match (optional_string(object, "feature")?, has_amount) {
        (Some(_), true) => Err(ApiError::bad_request(
            codes::INVALID_FIELD,
            "give either amount or feature and quantity, not both",
        )),
        (Some(feature), false) => {
            let feature = identifier(feature, "feature")?;
            let quantity = optional_amount(object, "quantity", false)?.ok_or_else(|| {
                ApiError::bad_request(codes::MISSING_FIELD, "quantity is required with feature")
            })?;
            Ok(Charge::Feature { feature, quantity })
        }
        (None, _) => {
            let amount = optional_amount(object, "amount", zero_allowed)?.ok_or_else(|| {
                ApiError::bad_request(
                    codes::MISSING_FIELD,
                    "amount (or feature and quantity) is required",
                )
            })?;
            Ok(Charge::Credits(amount))
        }
    }
}

/// A debit: `{"idempotency_key","amount"}` or `{"idempotency_key","feature","quantity"}`.
pub fn debit_from_object(account_id: &str, object: &Object) -> Result<Command, ApiError> {
    let idempotency_key = required_identifier(object, "idempotency_key")?;
    Ok(Command::Debit {
        account_id: account_id.to_owned(),
        idempotency_key,
        charge: charge(object, false)?,
    })
}

/// `PATCH /v1/accounts/{id}`: `{"overdraft_limit"}`.
pub fn update_account(account_id: &str, body: &Bytes) -> Result<Command, ApiError> {
    let object = object(body)?;
    reject_unknown_fields(&object, &["overdraft_limit"])?;
    let overdraft_limit = optional_amount(&object, "overdraft_limit", true)?;
    if overdraft_limit.is_none() {
        return Err(ApiError::bad_request(
            codes::MISSING_FIELD,
            "nothing to change: give overdraft_limit",
        ));
    }
    Ok(Command::UpdateAccount {
        account_id: account_id.to_owned(),
        overdraft_limit,
    })
}

/// `POST /v1/accounts/{id}/reservations`: `{"reservation_id","amount","ttl_ms"}`.
pub fn reserve(account_id: &str, body: &Bytes) -> Result<Command, ApiError> {
    let object = object(body)?;
    let reservation_id = required_identifier(&object, "reservation_id")?;
    let amount = required_amount(&object, "amount")?;
    let ttl_ms = match object.get("ttl_ms") {
        None | Some(Value::Null) => {
            return Err(ApiError::bad_request(
                codes::MISSING_FIELD,
                "ttl_ms is required",
            ))
        }
        Some(value) => value
            .as_u64()
            .filter(|ttl_ms| (1..=RESERVATION_TTL_MAX_MS).contains(ttl_ms))
            .ok_or_else(|| {
                ApiError::bad_request(
                    codes::INVALID_TTL,
                    format!("ttl_ms must be an integer from 1 to {RESERVATION_TTL_MAX_MS}"),
                )
            })?,
    };
    Ok(Command::Reserve {
        account_id: account_id.to_owned(),
        reservation_id,
        amount,
        ttl_ms,
    })
}

/// `POST .../reservations/{rid}/commit`: `{"amount"}` (0 allowed) or `{"feature","quantity"}`.
pub fn commit(account_id: &str, reservation_id: &str, body: &Bytes) -> Result<Command, ApiError> {
    let object = object(body)?;
    Ok(Command::Commit {
        account_id: account_id.to_owned(),
        reservation_id: reservation_id.to_owned(),
        charge: charge(&object, true)?,
    })
}

/// `PUT /v1/rate-card`: `{"features":{"name":{"credits_per_unit":N}}}`.
pub fn rate_card(body: &Bytes) -> Result<CatalogChange, ApiError> {
    let object = object(body)?;
    let Some(Value::Object(features)) = object.get("features") else {
        return Err(ApiError::bad_request(
            codes::MISSING_FIELD,
            "features is required: an object of feature name to {\"credits_per_unit\": N}",
        ));
    };
    if features.len() > FEATURES_MAX {
        return Err(ApiError::bad_request(
            codes::INVALID_FIELD,
            format!("a rate card has at most {FEATURES_MAX} features"),
        ));
    }
    let mut priced = BTreeMap::new();
    for (name, price) in features {
        let name = identifier(name, "feature name")?;
        let Value::Object(price) = price else {
            return Err(ApiError::bad_request(
                codes::INVALID_FIELD,
                format!("feature {name}: must be {{\"credits_per_unit\": N}}"),
            ));
        };
        let credits = optional_amount(price, "credits_per_unit", true)?.ok_or_else(|| {
            ApiError::bad_request(
                codes::MISSING_FIELD,
                format!("feature {name}: credits_per_unit is required"),
            )
        })?;
        priced.insert(name, credits);
    }
    Ok(CatalogChange::RateCard { features: priced })
}

/// An ISO 8601 period field.
fn required_period(object: &Object, field: &str) -> Result<Period, ApiError> {
    let text = optional_string(object, field)?.ok_or_else(|| {
        ApiError::bad_request(codes::MISSING_FIELD, format!("{field} is required"))
    })?;
    Period::parse(text)
        .map_err(|error| ApiError::bad_request(codes::INVALID_PERIOD, error.to_string()))
}

fn optional_bool(object: &Object, field: &str) -> Result<Option<bool>, ApiError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(value)) => Ok(Some(*value)),
        Some(_) => Err(ApiError::bad_request(
            codes::INVALID_FIELD,
            format!("{field} must be true or false"),
        )),
    }
}

/// `PUT /v1/plans/{plan_id}`: `{"credits_per_period","period","per_seat"?,"rollover_max"?}`.
pub fn plan(plan_id: &str, body: &Bytes) -> Result<CatalogChange, ApiError> {
    let object = object(body)?;
    let credits_per_period =
        optional_amount(&object, "credits_per_period", true)?.ok_or_else(|| {
            ApiError::bad_request(codes::MISSING_FIELD, "credits_per_period is required")
        })?;
    Ok(CatalogChange::Plan {
        plan_id: plan_id.to_owned(),
        terms: PlanTerms {
            credits_per_period,
            period: required_period(&object, "period")?,
            per_seat: optional_bool(&object, "per_seat")?.unwrap_or(false),
            rollover_max: optional_amount(&object, "rollover_max", true)?,
        },
    })
}

/// `PUT /v1/accounts/{id}/subscription`: `{"plan_id","seats"?}`.
pub fn subscribe(account_id: &str, body: &Bytes) -> Result<Command, ApiError> {
    let object = object(body)?;
    let plan_id = required_identifier(&object, "plan_id")?;
    let seats = match object.get("seats") {
        None | Some(Value::Null) => 1,
        Some(value) => value
            .as_u64()
            .filter(|seats| (1..=SEATS_MAX).contains(seats))
            .ok_or_else(|| {
                ApiError::bad_request(
                    codes::INVALID_SEATS,
                    format!("seats must be an integer from 1 to {SEATS_MAX}"),
                )
            })?,
    };
    Ok(Command::Subscribe {
        account_id: account_id.to_owned(),
        plan_id,
        seats,
    })
}

/// `PUT /v1/accounts/{id}/limits`: `{"period","soft"?,"hard"?,"scope"?}`; `{"scope"?,
/// "period": null}` removes the scope's limit.
pub fn spend_limit(account_id: &str, body: &Bytes) -> Result<Command, ApiError> {
    let object = object(body)?;
    let scope = match optional_string(&object, "scope")? {
        None => LimitScope::Platform,
        Some(name) => LimitScope::parse(name).ok_or_else(|| {
            ApiError::bad_request(codes::INVALID_FIELD, "scope must be platform or customer")
        })?,
    };
    let limit = if matches!(object.get("period"), Some(Value::Null)) {
        None
    } else {
        let soft = optional_amount(&object, "soft", true)?;
        let hard = optional_amount(&object, "hard", true)?;
        if soft.is_none() && hard.is_none() {
            return Err(ApiError::bad_request(
                codes::MISSING_FIELD,
                "give soft, hard or both (or \"period\": null to remove the limit)",
            ));
        }
        if let (Some(soft), Some(hard)) = (soft, hard) {
            if soft > hard {
                return Err(ApiError::bad_request(
                    codes::INVALID_SETTINGS,
                    "soft must not be above hard",
                ));
            }
        }
        Some(SpendLimitTerms {
            period: required_period(&object, "period")?,
            soft,
            hard,
        })
    };
    Ok(Command::SetSpendLimit {
        account_id: account_id.to_owned(),
        scope,
        limit,
    })
}

/// `PUT /v1/accounts/{id}/alerts`: `{"low_balance":[100,10],"auto_top_up_below"?,
/// "grant_expiring_within_ms"?}`.
pub fn alerts(account_id: &str, body: &Bytes) -> Result<Command, ApiError> {
    let object = object(body)?;
    reject_unknown_fields(
        &object,
        &[
            "low_balance",
            "auto_top_up_below",
            "grant_expiring_within_ms",
        ],
    )?;
    let threshold = |value: &Value, field: &str| -> Result<i64, ApiError> {
        value
            .as_i64()
            .filter(|value| value.unsigned_abs() <= AMOUNT_MAX)
            .ok_or_else(|| {
                ApiError::bad_request(
                    codes::INVALID_FIELD,
                    format!("{field} must hold integers between -{AMOUNT_MAX} and {AMOUNT_MAX}"),
                )
            })
    };
    let low_balance = match object.get("low_balance") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(values)) if values.len() <= THRESHOLDS_MAX => values
            .iter()
            .map(|value| threshold(value, "low_balance"))
            .collect::<Result<Vec<i64>, ApiError>>()?,
        Some(_) => {
            return Err(ApiError::bad_request(
                codes::INVALID_FIELD,
                format!("low_balance must be an array of at most {THRESHOLDS_MAX} integers"),
            ))
        }
    };
    let auto_top_up_below = match object.get("auto_top_up_below") {
        None | Some(Value::Null) => None,
        Some(value) => Some(threshold(value, "auto_top_up_below")?),
    };
    let grant_expiring_within_ms = match object.get("grant_expiring_within_ms") {
        None | Some(Value::Null) => None,
        Some(value) => Some(value.as_u64().filter(|value| *value > 0).ok_or_else(|| {
            ApiError::bad_request(
                codes::INVALID_FIELD,
                "grant_expiring_within_ms must be a positive integer",
            )
        })?),
    };
    Ok(Command::SetAlerts {
        account_id: account_id.to_owned(),
        alerts: AlertSettings {
            low_balance,
            auto_top_up_below,
            grant_expiring_within_ms,
        },
    })
}

/// `PUT /v1/webhooks`: `{"url","secret"}`; `{"url": null}` removes the endpoint.
pub fn webhook(body: &Bytes) -> Result<CatalogChange, ApiError> {
    let object = object(body)?;
    if matches!(object.get("url"), Some(Value::Null)) {
        return Ok(CatalogChange::Webhook { endpoint: None });
    }
    let url = optional_string(&object, "url")?
        .ok_or_else(|| ApiError::bad_request(codes::MISSING_FIELD, "url is required"))?;
    let parsed = reqwest::Url::parse(url)
        .ok()
        .filter(|parsed| matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some());
    if parsed.is_none() || url.len() > WEBHOOK_FIELD_LENGTH_MAX {
        return Err(ApiError::bad_request(
            codes::INVALID_FIELD,
            "url must be an http or https URL",
        ));
    }
    let secret = optional_string(&object, "secret")?
        .filter(|secret| !secret.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(codes::MISSING_FIELD, "secret is required (1 to 2048 bytes)")
        })?;
    if secret.len() > WEBHOOK_FIELD_LENGTH_MAX {
        return Err(ApiError::bad_request(
            codes::INVALID_FIELD,
            "secret must be at most 2048 bytes",
        ));
    }
    Ok(CatalogChange::Webhook {
        endpoint: Some(WebhookEndpoint {
            url: url.to_owned(),
            secret: secret.to_owned(),
        }),
    })
}

/// Refuses fields a body must not carry, so that a typo is not silently ignored.
pub fn reject_unknown_fields(object: &Object, known: &[&str]) -> Result<(), ApiError> {
    match object.keys().find(|key| !known.contains(&key.as_str())) {
        Some(key) => Err(ApiError::bad_request(
            codes::UNKNOWN_FIELD,
            format!("unknown field {key}; expected one of {}", known.join(", ")),
        )),
        None => Ok(()),
    }
}

/// An instant in a query (`from`, `to`, `at`): RFC 3339 or milliseconds since the epoch.
pub fn query_instant_ms(value: Option<&String>, field: &str) -> Result<Option<u64>, ApiError> {
    let Some(text) = value else {
        return Ok(None);
    };
    if let Ok(milliseconds) = text.parse::<u64>() {
        return Ok(Some(milliseconds));
    }
    let mut object = Object::new();
    object.insert(field.to_owned(), Value::String(text.clone()));
    optional_instant_ms(&object, field)
}

pub fn debit(account_id: &str, body: &Bytes) -> Result<Command, ApiError> {
    debit_from_object(account_id, &object(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(text: &str) -> Bytes {
        Bytes::from(text.to_owned())
    }

    fn code_of(result: Result<Command, ApiError>) -> &'static str {
        match result {
            Ok(command) => panic!("expected an error, got {command:?}"),
            Err(error) => error.code,
        }
    }

    #[test]
    fn debit_bodies_table() {
        let table: &[(&str, &str)] = &[
            ("not json", codes::INVALID_JSON),
            ("[1]", codes::INVALID_JSON),
            (r#"{"amount": 5}"#, codes::MISSING_FIELD),
            (r#"{"idempotency_key": "k"}"#, codes::MISSING_FIELD),
            (
                r#"{"idempotency_key": "k", "amount": 0}"#,
                codes::INVALID_AMOUNT,
            ),
            (
                r#"{"idempotency_key": "k", "amount": -3}"#,
                codes::INVALID_AMOUNT,
            ),
            (
                r#"{"idempotency_key": "k", "amount": 1.5}"#,
                codes::INVALID_AMOUNT,
            ),
            (
                r#"{"idempotency_key": "k", "amount": "5"}"#,
                codes::INVALID_AMOUNT,
            ),
            (
                r#"{"idempotency_key": "k", "amount": 1000000000000000001}"#,
                codes::AMOUNT_TOO_LARGE,
            ),
            (
                r#"{"idempotency_key": "k", "amount": 1e30}"#,
                codes::AMOUNT_TOO_LARGE,
            ),
            (
                r#"{"idempotency_key": "", "amount": 5}"#,
                codes::INVALID_IDENTIFIER,
            ),
            (
                r#"{"idempotency_key": "a/b", "amount": 5}"#,
                codes::INVALID_IDENTIFIER,
            ),
            (
                r#"{"idempotency_key": 7, "amount": 5}"#,
                codes::INVALID_IDENTIFIER,
            ),
            (
                r#"{"idempotency_key": "k", "feature": "image"}"#,
                codes::MISSING_FIELD,
            ),
            (
                r#"{"idempotency_key": "k", "feature": "image", "quantity": 0}"#,
                codes::INVALID_AMOUNT,
            ),
            (
                r#"{"idempotency_key": "k", "feature": "a b", "quantity": 1}"#,
                codes::INVALID_IDENTIFIER,
            ),
            (
                r#"{"idempotency_key": "k", "feature": "image", "quantity": 1, "amount": 3}"#,
                codes::INVALID_FIELD,
            ),
        ];
        for (text, expected) in table {
            assert_eq!(
                code_of(debit("acct", &body(text))),
                *expected,
                "body {text}"
            );
        }
        assert_eq!(
            debit(
                "acct",
                &body(r#"{"idempotency_key": "k-1", "amount": 1000000000000000000}"#)
            )
            .expect("the largest amount is valid"),
            Command::Debit {
                account_id: "acct".into(),
                idempotency_key: "k-1".into(),
                charge: Charge::Credits(AMOUNT_MAX),
            }
        );
        assert_eq!(
            debit(
                "acct",
                &body(
                    r#"{"idempotency_key": "k-2", "feature": "image_generation", "quantity": 3}"#
                )
            )
            .expect("a feature debit is valid"),
            Command::Debit {
                account_id: "acct".into(),
                idempotency_key: "k-2".into(),
                charge: Charge::Feature {
                    feature: "image_generation".into(),
                    quantity: 3
                },
            }
        );
    }

    #[test]
    fn grant_bodies_table() {
        let table: &[(&str, &str)] = &[
            (r#"{"amount": 5}"#, codes::MISSING_FIELD),
            (r#"{"grant_id": "g"}"#, codes::MISSING_FIELD),
            (
                r#"{"grant_id": "g", "amount": 5, "source": "gift"}"#,
                codes::INVALID_SOURCE,
            ),
            (
                r#"{"grant_id": "g", "amount": 5, "priority": 101}"#,
                codes::INVALID_PRIORITY,
            ),
            (
                r#"{"grant_id": "g", "amount": 5, "priority": -1}"#,
                codes::INVALID_PRIORITY,
            ),
            (
                r#"{"grant_id": "g", "amount": 5, "expires_at": "tomorrow"}"#,
                codes::INVALID_TIMESTAMP,
            ),
            (
                r#"{"grant_id": "g", "amount": 5, "effective_at": "2026-12-02T00:00:00Z", "expires_at": "2026-12-01T00:00:00Z"}"#,
                codes::INVALID_EXPIRY,
            ),
        ];
        for (text, expected) in table {
            assert_eq!(
                code_of(create_grant("acct", &body(text))),
                *expected,
                "body {text}"
            );
        }
        let Command::Grant(grant) = create_grant(
            "acct",
            &body(r#"{"grant_id": "g", "amount": 5, "source": "promo", "priority": 10, "expires_at": "2026-12-01T00:00:00Z"}"#),
        )
        .expect("valid grant") else {
            panic!("expected a grant command");
        };
        assert_eq!(grant.source, GrantSource::Promo);
        assert_eq!(grant.priority, 10);
        assert_eq!(grant.expires_at_ms, Some(1_796_083_200_000));
        assert_eq!(format_instant_ms(1_796_083_200_000), "2026-12-01T00:00:00Z");
    }

    #[test]
    fn credit_semantics_bodies_table() {
        let reservation: &[(&str, &str)] = &[
            (r#"{"amount": 5, "ttl_ms": 10}"#, codes::MISSING_FIELD),
            (
                r#"{"reservation_id": "r", "ttl_ms": 10}"#,
                codes::MISSING_FIELD,
            ),
            (
                r#"{"reservation_id": "r", "amount": 5}"#,
                codes::MISSING_FIELD,
            ),
            (
                r#"{"reservation_id": "r", "amount": 5, "ttl_ms": 0}"#,
                codes::INVALID_TTL,
            ),
            (
                r#"{"reservation_id": "r", "amount": 5, "ttl_ms": 86400001}"#,
                codes::INVALID_TTL,
            ),
            (
                r#"{"reservation_id": "r", "amount": -5, "ttl_ms": 10}"#,
                codes::INVALID_AMOUNT,
            ),
        ];
        for (text, expected) in reservation {
            assert_eq!(code_of(reserve("a", &body(text))), *expected, "body {text}");
        }
        assert!(commit("a", "r", &body(r#"{"amount": 0}"#)).is_ok());
        assert_eq!(code_of(commit("a", "r", &body("{}"))), codes::MISSING_FIELD);
        let plans: &[(&str, &str)] = &[
            (r#"{"period": "P1M"}"#, codes::MISSING_FIELD),
            (r#"{"credits_per_period": 5}"#, codes::MISSING_FIELD),
            (
                r#"{"credits_per_period": 5, "period": "monthly"}"#,
                codes::INVALID_PERIOD,
            ),
            (
                r#"{"credits_per_period": 5, "period": "PT0S"}"#,
                codes::INVALID_PERIOD,
            ),
            (
                r#"{"credits_per_period": 5, "period": "P1M", "per_seat": "yes"}"#,
                codes::INVALID_FIELD,
            ),
        ];
        for (text, expected) in plans {
            let code = match plan("p", &body(text)) {
                Ok(change) => panic!("expected an error, got {change:?}"),
                Err(error) => error.code,
            };
            assert_eq!(code, *expected, "body {text}");
        }
        assert_eq!(
            code_of(subscribe("a", &body(r#"{"plan_id": "p", "seats": 0}"#))),
            codes::INVALID_SEATS
        );
        assert_eq!(
            code_of(spend_limit("a", &body(r#"{"period": "P1D"}"#))),
            codes::MISSING_FIELD
        );
        assert_eq!(
            code_of(spend_limit(
                "a",
                &body(r#"{"period": "P1D", "soft": 10, "hard": 5}"#)
            )),
            codes::INVALID_SETTINGS
        );
        assert_eq!(
            code_of(spend_limit(
                "a",
                &body(r#"{"period": "P1D", "hard": 5, "scope": "team"}"#)
            )),
            codes::INVALID_FIELD
        );
        assert_eq!(
            code_of(alerts("a", &body(r#"{"low_balanse": [1]}"#))),
            codes::UNKNOWN_FIELD
        );
        assert_eq!(
            code_of(alerts("a", &body(r#"{"low_balance": [1.5]}"#))),
            codes::INVALID_FIELD
        );
        let webhook_code = |text: &str| match webhook(&body(text)) {
            Ok(change) => panic!("expected an error, got {change:?}"),
            Err(error) => error.code,
        };
        assert_eq!(
            webhook_code(r#"{"url": "ftp://x", "secret": "s"}"#),
            codes::INVALID_FIELD
        );
        assert_eq!(
            webhook_code(r#"{"url": "http://127.0.0.1:9/hook"}"#),
            codes::MISSING_FIELD
        );
        let rate_code = |text: &str| match rate_card(&body(text)) {
            Ok(change) => panic!("expected an error, got {change:?}"),
            Err(error) => error.code,
        };
        assert_eq!(
            rate_code(r#"{"features": {"a b": {"credits_per_unit": 1}}}"#),
            codes::INVALID_IDENTIFIER
        );
        assert_eq!(
            rate_code(r#"{"features": {"img": {"credits_per_unit": -1}}}"#),
            codes::INVALID_AMOUNT
        );
        assert_eq!(
            rate_code(r#"{"features": {"img": 3}}"#),
            codes::INVALID_FIELD
        );
        assert_eq!(rate_code(r#"{}"#), codes::MISSING_FIELD);
    }

    #[test]
    fn account_bodies() {
        assert_eq!(code_of(create_account(&body("{}"))), codes::MISSING_FIELD);
        assert_eq!(
            code_of(create_account(&body(
                r#"{"account_id": "a", "overdraft_limit": -1}"#
            ))),
            codes::INVALID_AMOUNT
        );
        assert_eq!(
            create_account(&body(r#"{"account_id": "a", "overdraft_limit": 0}"#)).expect("valid"),
            Command::CreateAccount {
                account_id: "a".into(),
                overdraft_limit: 0
            }
        );
    }
}
