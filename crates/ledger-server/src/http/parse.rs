//! Request bodies, field by field, so that every bad input gets a code naming the problem.
//!
//! Bodies are first parsed as JSON values and then read field by field (instead of deriving
//! `Deserialize` on the request types) because serde's errors do not say *which* rule a field
//! broke: a negative amount must be `invalid_amount`, not a generic `invalid_json`.

use axum::body::Bytes;
use ledger_api::codes;
use ledger_core::{
    validate_identifier, Command, GrantCommand, GrantSource, AMOUNT_MAX, PRIORITY_DEFAULT,
    PRIORITY_MAX,
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

/// A debit: `{"idempotency_key","amount"}`. Feature-priced debits (`feature`, `quantity`) need
/// the rate card, which this version of the ledger does not have yet: they are refused with
/// `unknown_feature` rather than guessed.
pub fn debit_from_object(account_id: &str, object: &Object) -> Result<Command, ApiError> {
    let idempotency_key = required_identifier(object, "idempotency_key")?;
    if let Some(feature) = optional_string(object, "feature")? {
        return Err(ApiError::bad_request(
            codes::UNKNOWN_FEATURE,
            format!("feature {feature:?} is not on the rate card"),
        ));
    }
    let amount = required_amount(object, "amount")?;
    Ok(Command::Debit {
        account_id: account_id.to_owned(),
        idempotency_key,
        amount,
    })
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
                r#"{"idempotency_key": "k", "feature": "image", "quantity": 1}"#,
                codes::UNKNOWN_FEATURE,
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
                amount: AMOUNT_MAX,
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
