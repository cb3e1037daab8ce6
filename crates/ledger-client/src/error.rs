//! What can go wrong when talking to the ledger, and whether a failed request may have applied.

use ledger_api::codes;

/// An error of a client call. Decided business rejections of debits are *not* errors: they come
/// back as `Ok(DebitResponse { status: "rejected", .. })`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error body that decided nothing that the call models as a
    /// value: bad input (400), unknown account (404), conflict (409), or a retryable status
    /// (429, 503) on a call that is not retried (node-specific calls).
    #[error("the ledger answered {status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// Every attempt failed with a retryable failure (connection error, timeout, 429, 503).
    /// `may_have_applied` is true when at least one attempt may have reached a leader that
    /// applied it: a timeout or a reset after the request was sent, or a 5xx other than
    /// `no_leader`.
    #[error("the ledger stayed unavailable after {attempts} attempts; last failure: {last}")]
    Unavailable {
        attempts: u32,
        last: String,
        may_have_applied: bool,
    },
    /// The request could not be built or sent at all; nothing reached a server.
    #[error("the request could not be sent: {0}")]
    Transport(String),
    /// The server answered but its answer could not be read; the request may have applied.
    #[error("the answer of the ledger could not be decoded: {0}")]
    Decode(String),
    /// A base URL given to the client is not an absolute `http://` URL.
    #[error("invalid base URL {url:?}: {reason}")]
    InvalidBaseUrl { url: String, reason: String },
}

/// The `code` of [`ClientError::Api`] when an error answer had no `{"error": {...}}` body (for
/// example a plain-text answer of a proxy or of the HTTP framework itself).
pub const UNRECOGNIZED_ERROR_BODY: &str = "unrecognized_error_body";

impl ClientError {
    /// Whether the request may have been applied by the ledger although the call failed. A
    /// checker must treat such a request as "outcome unknown" (ask `GET .../debits/{key}` or
    /// retry with the same key), never as "not applied".
    pub fn may_have_applied(&self) -> bool {
        match self {
            ClientError::Api { status, code, .. } => api_error_may_have_applied(*status, code),
            ClientError::Unavailable {
                may_have_applied, ..
            } => *may_have_applied,
            ClientError::Transport(_) | ClientError::InvalidBaseUrl { .. } => false,
            ClientError::Decode(_) => true,
        }
    }

    /// Whether the failure is definite: the request certainly did not apply.
    pub fn is_definite(&self) -> bool {
        !self.may_have_applied()
    }

    /// The HTTP status of an [`ClientError::Api`] error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The stable error code of an [`ClientError::Api`] error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// A 4xx answer decided that nothing applies (bad input, conflict, overload). A 5xx is only
/// definite when the server says it never proposed the request (`no_leader`, `overloaded`); any
/// other 5xx (`internal`, a failed forward, a leader lost while the entry was in flight) may
/// have been committed.
pub(crate) fn api_error_may_have_applied(status: u16, code: &str) -> bool {
    if status < 500 {
        return false;
    }
    !matches!(code, codes::NO_LEADER | codes::OVERLOADED)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str) -> ClientError {
        ClientError::Api {
            status,
            code: code.to_owned(),
            message: String::new(),
        }
    }

    #[test]
    fn definiteness_of_each_kind_of_failure() {
        let table = [
            (api(400, codes::INVALID_AMOUNT), true),
            (api(404, codes::ACCOUNT_NOT_FOUND), true),
            (api(409, codes::IDEMPOTENCY_CONFLICT), true),
            (api(429, codes::OVERLOADED), true),
            (api(503, codes::NO_LEADER), true),
            (api(503, codes::UNAVAILABLE), false),
            (api(500, codes::INTERNAL), false),
            (api(502, UNRECOGNIZED_ERROR_BODY), false),
            (ClientError::Transport("builder".into()), true),
            (ClientError::Decode("truncated".into()), false),
            (
                ClientError::Unavailable {
                    attempts: 3,
                    last: "connection refused".into(),
                    may_have_applied: false,
                },
                true,
            ),
            (
                ClientError::Unavailable {
                    attempts: 3,
                    last: "timed out".into(),
                    may_have_applied: true,
                },
                false,
            ),
        ];
        for (error, definite) in table {
            assert_eq!(error.is_definite(), definite, "{error}");
            assert_eq!(error.may_have_applied(), !definite, "{error}");
        }
    }
}
