//! `ledger-client`: the Rust client of the ledger's public HTTP API.
//!
//! Used by the process-level tests, the chaos harness and the benchmarks. One [`LedgerClient`]
//! holds a keep-alive connection pool and a list of node URLs; it is cheap to clone and share.
//!
//! Two rules shape the API:
//! - **Decided outcomes are values.** A debit that the ledger decided to reject (402
//!   `insufficient_credits`, or any error answer marked with `replayed`, the server's sign that
//!   the decision is recorded under the key, such as a 404 `account_not_found`) is
//!   `Ok(DebitResponse { status: "rejected", .. })`,
//!   because checkers must count it like an acceptance. Errors are what decided nothing
//!   ([`ClientError::Api`]) or what left the outcome unknown ([`ClientError::may_have_applied`]).
//! - **Retries reuse the key.** Connection errors, timeouts, 429, 502, 503 and 504 are retried
//!   with the very same body (so the same idempotency key, grant id or account id), rotating
//!   through the node URLs and honouring `Retry-After` up to the backoff cap. Other 4xx are never
//!   retried: they are definite answers.
//!
//! [`DebitBatcher`] sends concurrent single debits as batch requests, with the same per-debit
//! semantics.
//!
//! **Boundary:** HTTP and JSON only, through `ledger-api`'s types. It must never depend on the
//! ledger's internals (core, raft, storage, actors, server): it sees the ledger as any outside
//! client does.

mod batcher;
mod error;

pub use batcher::{BatchingOptions, DebitBatcher};
pub use error::{ClientError, UNRECOGNIZED_ERROR_BODY};

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ledger_api::{
    codes, AccountResponse, ApplyClusterRequest, ApplyClusterResponse, BackupRequest,
    BackupResponse, BatchDebitItem, BatchDebitResponse, ClusterResponse, CommitRequest,
    CreateAccountRequest, CreateGrantRequest, DebitRequest, DebitResponse, ErrorBody,
    ErrorResponse, GrantResponse, MoveShardRequest, MoveShardResponse, NodeInfo,
    ReservationResponse, ReserveRequest, TransferLeaderRequest, TransferLeaderResponse,
    STATUS_REJECTED,
};
use reqwest::{header, Method, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Timeouts and retry policy of a [`LedgerClient`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientOptions {
    /// Deadline of one HTTP attempt, connection included.
    pub request_timeout_ms: u64,
    /// Attempts per call, the first one included (at least 1).
    pub max_attempts: u32,
    /// Backoff before the first retry; it doubles with every further retry.
    pub retry_backoff_ms: u64,
    /// Cap of every backoff, also of a server's `Retry-After`.
    pub retry_backoff_max_ms: u64,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout_ms: 5_000,
            max_attempts: 8,
            retry_backoff_ms: 25,
            retry_backoff_max_ms: 1_000,
        }
    }
}

/// Answer of [`LedgerClient::create_account`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountCreated {
    /// True on 201 (this call created it), false on 200 (it already existed, same parameters).
    pub created: bool,
}

/// A status and body as received, for tests that send what the typed API cannot express.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawResponse {
    pub status: u16,
    pub body: String,
}

impl RawResponse {
    /// The `error.code` of an error body, if the body is one.
    pub fn error_code(&self) -> Option<String> {
        serde_json::from_str::<ErrorResponse>(&self.body)
            .ok()
            .map(|response| response.error.code)
    }
}

/// Client of a ledger cluster. Clones share the connection pool and the round-robin cursor.
#[derive(Clone, Debug)]
pub struct LedgerClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    base_urls: Vec<Url>,
    options: ClientOptions,
    /// Round-robin cursor: successive calls start on successive nodes, so every node serves.
    next_base_url: AtomicUsize,
}

/// A received HTTP answer.
struct Answer {
    status: u16,
    retry_after_seconds: Option<u64>,
    body: Vec<u8>,
}

/// Why one attempt did not produce a usable answer.
enum AttemptFailure {
    /// Worth another attempt, possibly on another node.
    Retryable {
        description: String,
        may_have_applied: bool,
        retry_after_seconds: Option<u64>,
    },
    /// Retrying cannot help.
    Fatal(ClientError),
}

impl LedgerClient {
    /// A client of the nodes at `base_urls` (e.g. `http://127.0.0.1:7001`), default options.
    pub fn new(base_urls: Vec<String>) -> Result<LedgerClient, ClientError> {
        LedgerClient::with_options(base_urls, ClientOptions::default())
    }

    /// A client of the nodes at `base_urls` with explicit timeouts and retry policy.
    pub fn with_options(
        base_urls: Vec<String>,
        options: ClientOptions,
    ) -> Result<LedgerClient, ClientError> {
        if base_urls.is_empty() {
            return Err(ClientError::InvalidBaseUrl {
                url: String::new(),
                reason: "at least one node URL is needed".to_owned(),
            });
        }
        let base_urls = base_urls
            .iter()
            .map(|url| parse_base_url(url))
            .collect::<Result<Vec<Url>, ClientError>>()?;
        let timeout = Duration::from_millis(options.request_timeout_ms.max(1));
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|error| {
                ClientError::Transport(format!("building the HTTP client: {error}"))
            })?;
        Ok(LedgerClient {
            inner: Arc::new(Inner {
                http,
                base_urls,
                options,
                next_base_url: AtomicUsize::new(0),
            }),
        })
    }

    /// The node URLs this client rotates through, normalized.
    pub fn base_urls(&self) -> Vec<String> {
        self.inner
            .base_urls
            .iter()
            .map(|url| url.as_str().trim_end_matches('/').to_owned())
            .collect()
    }

    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// `POST /v1/accounts`: 201 → created, 200 → it already existed with the same parameters.
    /// A different existing account is `Api { status: 409, code: "account_conflict" }`.
    pub async fn create_account(
        &self,
        account_id: &str,
        overdraft_limit: Option<u64>,
    ) -> Result<AccountCreated, ClientError> {
        let request = CreateAccountRequest {
            account_id: account_id.to_owned(),
            overdraft_limit,
        };
        let answer = self
            .call(Method::POST, &["v1", "accounts"], Some(&request))
            .await?;
        match answer.status {
            201 => Ok(AccountCreated { created: true }),
            200 => Ok(AccountCreated { created: false }),
            _ => Err(api_error(&answer)),
        }
    }

    /// `POST /v1/accounts/{id}/grants`: 201 for a new grant, 200 (`replayed: true`) for a replay.
    pub async fn grant(
        &self,
        account_id: &str,
        request: &CreateGrantRequest,
    ) -> Result<GrantResponse, ClientError> {
        let answer = self
            .call(
                Method::POST,
                &["v1", "accounts", account_id, "grants"],
                Some(request),
            )
            .await?;
        match answer.status {
            200 | 201 => decode(&answer),
            _ => Err(api_error(&answer)),
        }
    }

    /// `POST /v1/accounts/{id}/debits` of a plain amount. See [`LedgerClient::debit_request`].
    pub async fn debit(
        &self,
        account_id: &str,
        idempotency_key: &str,
        amount: u64,
    ) -> Result<DebitResponse, ClientError> {
        let request = DebitRequest {
            idempotency_key: idempotency_key.to_owned(),
            amount: Some(amount),
            feature: None,
            quantity: None,
        };
        self.debit_request(account_id, &request).await
    }

    /// `POST /v1/accounts/{id}/debits`. Accepted and decided-rejected debits are both `Ok`:
    /// a rejection is `status: "rejected"` with its `code` (e.g. `insufficient_credits`) and
    /// `replayed`. Errors decided nothing (400, 404 of an unrecorded request, 409) or left the
    /// outcome unknown (see [`ClientError::may_have_applied`]).
    pub async fn debit_request(
        &self,
        account_id: &str,
        request: &DebitRequest,
    ) -> Result<DebitResponse, ClientError> {
        let answer = self
            .call(
                Method::POST,
                &["v1", "accounts", account_id, "debits"],
                Some(request),
            )
            .await?;
        if answer.status == 200 {
            return decode(&answer);
        }
        match serde_json::from_slice::<ErrorResponse>(&answer.body) {
            Ok(ErrorResponse { error }) if is_recorded_rejection(answer.status, &error) => {
                Ok(recorded_rejection(account_id, request, error))
            }
            _ => Err(api_error(&answer)),
        }
    }

    /// `GET /v1/accounts/{id}` (linearizable).
    pub async fn get_account(&self, account_id: &str) -> Result<AccountResponse, ClientError> {
        let answer = self
            .call::<()>(Method::GET, &["v1", "accounts", account_id], None)
            .await?;
        match answer.status {
            200 => decode(&answer),
            _ => Err(api_error(&answer)),
        }
    }

    /// `GET /v1/accounts/{id}/debits/{key}`: the decided outcome of a key, accepted or
    /// rejected, or `None` when the key was never decided (404 `debit_not_found`).
    pub async fn get_debit(
        &self,
        account_id: &str,
        idempotency_key: &str,
    ) -> Result<Option<DebitResponse>, ClientError> {
        let answer = self
            .call::<()>(
                Method::GET,
                &["v1", "accounts", account_id, "debits", idempotency_key],
                None,
            )
            .await?;
        match answer.status {
            200 => decode(&answer).map(Some),
            404 => match api_error(&answer) {
                ClientError::Api { code, .. } if code == codes::DEBIT_NOT_FOUND => Ok(None),
                other => Err(other),
            },
            _ => Err(api_error(&answer)),
        }
    }

    /// `GET /v1/accounts/{id}/reservations/{rid}`: the reservation's current state, or `None`
    /// when no reserve with that id was ever decided (404 `reservation_not_found`).
    pub async fn get_reservation(
        &self,
        account_id: &str,
        reservation_id: &str,
    ) -> Result<Option<ReservationResponse>, ClientError> {
        let answer = self
            .call::<()>(
                Method::GET,
                &["v1", "accounts", account_id, "reservations", reservation_id],
                None,
            )
            .await?;
        match answer.status {
            200 => decode(&answer).map(Some),
            404 => match api_error(&answer) {
                ClientError::Api { code, .. } if code == codes::RESERVATION_NOT_FOUND => Ok(None),
                other => Err(other),
            },
            _ => Err(api_error(&answer)),
        }
    }

    /// `POST /v1/debits/batch`: one result per item, in order. A retry of the whole batch after
    /// an unknown outcome is safe: every item carries its key.
    pub async fn batch_debits(
        &self,
        items: &[BatchDebitItem],
    ) -> Result<BatchDebitResponse, ClientError> {
        #[derive(Serialize)]
        struct BatchBody<'a> {
            debits: &'a [BatchDebitItem],
        }
        let answer = self
            .call(
                Method::POST,
                &["v1", "debits", "batch"],
                Some(&BatchBody { debits: items }),
            )
            .await?;
        if answer.status != 200 {
            return Err(api_error(&answer));
        }
        let response: BatchDebitResponse = decode(&answer)?;
        if response.results.len() != items.len() {
            return Err(ClientError::Decode(format!(
                "batch of {} debits answered with {} results",
                items.len(),
                response.results.len()
            )));
        }
        Ok(response)
    }

    /// `POST /v1/accounts/{id}/reservations`: holds `amount` credits for `ttl_ms`. A retry with
    /// the same reservation id is a replay; a rejection (e.g. `insufficient_credits`) is
    /// `Err(ClientError::Api { .. })` with its code.
    pub async fn reserve(
        &self,
        account_id: &str,
        request: &ReserveRequest,
    ) -> Result<ReservationResponse, ClientError> {
        self.reservation_call(
            &["v1", "accounts", account_id, "reservations"],
            Some(request),
        )
        .await
    }

    /// `POST .../reservations/{rid}/commit`: consumes what the call cost, releases the rest.
    pub async fn commit(
        &self,
        account_id: &str,
        reservation_id: &str,
        request: &CommitRequest,
    ) -> Result<ReservationResponse, ClientError> {
        self.reservation_call(
            &[
                "v1",
                "accounts",
                account_id,
                "reservations",
                reservation_id,
                "commit",
            ],
            Some(request),
        )
        .await
    }

    /// `POST .../reservations/{rid}/release`: gives the whole hold back.
    pub async fn release(
        &self,
        account_id: &str,
        reservation_id: &str,
    ) -> Result<ReservationResponse, ClientError> {
        self.reservation_call::<()>(
            &[
                "v1",
                "accounts",
                account_id,
                "reservations",
                reservation_id,
                "release",
            ],
            None,
        )
        .await
    }

    async fn reservation_call<B: Serialize>(
        &self,
        path: &[&str],
        body: Option<&B>,
    ) -> Result<ReservationResponse, ClientError> {
        let answer = self.call(Method::POST, path, body).await?;
        match answer.status {
            200 | 201 => decode(&answer),
            _ => Err(api_error(&answer)),
        }
    }

    /// `GET /admin/cluster` of one specific node (one attempt: this asks about that node).
    pub async fn cluster(&self, node_url: &str) -> Result<ClusterResponse, ClientError> {
        self.cluster_view(node_url, "/admin/cluster").await
    }

    /// `GET /admin/cluster?digest=false` of one specific node: the same view without the state
    /// digests (empty strings), which cost the node a hash of each shard's whole state. For
    /// callers that poll for leaders.
    pub async fn cluster_without_digests(
        &self,
        node_url: &str,
    ) -> Result<ClusterResponse, ClientError> {
        self.cluster_view(node_url, "/admin/cluster?digest=false")
            .await
    }

    async fn cluster_view(
        &self,
        node_url: &str,
        path: &str,
    ) -> Result<ClusterResponse, ClientError> {
        let answer = self.call_node(node_url, Method::GET, path, None).await?;
        match answer.status {
            200 => decode(&answer),
            _ => Err(api_error(&answer)),
        }
    }

    /// `POST /admin/backups` on one node: a checkpoint of its database under its data directory.
    pub async fn backup(&self, node_url: &str, name: &str) -> Result<BackupResponse, ClientError> {
        let body = serde_json::to_vec(&BackupRequest {
            name: name.to_owned(),
        })
        .map_err(|error| ClientError::Transport(format!("encoding the request: {error}")))?;
        let answer = self
            .call_node(node_url, Method::POST, "/admin/backups", Some(body))
            .await?;
        match answer.status {
            201 => decode(&answer),
            _ => Err(api_error(&answer)),
        }
    }

    /// `POST /admin/cluster/apply` through one node: declares the node set the cluster should
    /// have; the cluster then moves replicas by itself (see `GET /admin/cluster`).
    pub async fn apply_cluster(
        &self,
        node_url: &str,
        nodes: Vec<NodeInfo>,
    ) -> Result<ApplyClusterResponse, ClientError> {
        let body = serde_json::to_vec(&ApplyClusterRequest { nodes })
            .map_err(|error| ClientError::Transport(format!("encoding the request: {error}")))?;
        let answer = self
            .call_node(node_url, Method::POST, "/admin/cluster/apply", Some(body))
            .await?;
        match answer.status {
            200 => decode(&answer),
            _ => Err(api_error(&answer)),
        }
    }

    /// `POST /admin/shards/{shard}/transfer-leader` through one node: hands the shard's
    /// leadership to its replica on node `to`; answers once `to` leads.
    pub async fn transfer_leader(
        &self,
        node_url: &str,
        shard: u32,
        to: u64,
    ) -> Result<TransferLeaderResponse, ClientError> {
        let body = serde_json::to_vec(&TransferLeaderRequest { to })
            .map_err(|error| ClientError::Transport(format!("encoding the request: {error}")))?;
        let path = format!("/admin/shards/{shard}/transfer-leader");
        let answer = self
            .call_node(node_url, Method::POST, &path, Some(body))
            .await?;
        match answer.status {
            200 => decode(&answer),
            _ => Err(api_error(&answer)),
        }
    }

    /// `POST /admin/shards/{shard}/move` through one node: records the move of the shard's
    /// replica from node `from` to node `to`; the cluster carries it out (see
    /// `GET /admin/cluster`).
    pub async fn move_shard(
        &self,
        node_url: &str,
        shard: u32,
        from: u64,
        to: u64,
    ) -> Result<MoveShardResponse, ClientError> {
        let body = serde_json::to_vec(&MoveShardRequest { from, to })
            .map_err(|error| ClientError::Transport(format!("encoding the request: {error}")))?;
        let path = format!("/admin/shards/{shard}/move");
        let answer = self
            .call_node(node_url, Method::POST, &path, Some(body))
            .await?;
        match answer.status {
            202 => decode(&answer),
            _ => Err(api_error(&answer)),
        }
    }

    /// `GET /health` of one node: true when it answers 200, false when it answers anything
    /// else or cannot be reached.
    pub async fn health(&self, node_url: &str) -> Result<bool, ClientError> {
        match self.call_node(node_url, Method::GET, "/health", None).await {
            Ok(answer) => Ok(answer.status == 200),
            Err(ClientError::Unavailable { .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// `GET /metrics` of one node: the Prometheus text.
    pub async fn metrics(&self, node_url: &str) -> Result<String, ClientError> {
        let answer = self
            .call_node(node_url, Method::GET, "/metrics", None)
            .await?;
        if answer.status != 200 {
            return Err(api_error(&answer));
        }
        String::from_utf8(answer.body)
            .map_err(|error| ClientError::Decode(format!("metrics are not UTF-8: {error}")))
    }

    /// `POST {path}` with a raw JSON body to one node, one attempt, status and body as they
    /// come: for tests of malformed input.
    pub async fn post_raw(
        &self,
        node_url: &str,
        path: &str,
        json_body: &str,
    ) -> Result<RawResponse, ClientError> {
        let answer = self
            .call_node(
                node_url,
                Method::POST,
                path,
                Some(json_body.as_bytes().to_vec()),
            )
            .await?;
        raw_response(answer)
    }

    /// `GET {path}` of one node, one attempt, status and body as they come.
    pub async fn get_raw(&self, node_url: &str, path: &str) -> Result<RawResponse, ClientError> {
        let answer = self.call_node(node_url, Method::GET, path, None).await?;
        raw_response(answer)
    }

    /// One call through the cluster: any node, retried on retryable failures with the same
    /// body, each retry on the next node.
    async fn call<T: Serialize + ?Sized>(
        &self,
        method: Method,
        path_segments: &[&str],
        body: Option<&T>,
    ) -> Result<Answer, ClientError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|error| ClientError::Transport(format!("encoding the request: {error}")))?;
        let inner = &self.inner;
        let max_attempts = inner.options.max_attempts.max(1);
        let mut base_index = inner.next_base_url.fetch_add(1, Ordering::Relaxed);
        let mut may_have_applied = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let base = &inner.base_urls[base_index % inner.base_urls.len()];
            let url = endpoint(base, path_segments);
            let failure = match self.attempt(method.clone(), url, body.clone()).await {
                Ok(answer) => match retryable_answer(&answer) {
                    None => return Ok(answer),
                    Some(failure) => failure,
                },
                Err(failure) => failure,
            };
            let (description, retry_after_seconds) = match failure {
                AttemptFailure::Fatal(error) => return Err(error),
                AttemptFailure::Retryable {
                    description,
                    may_have_applied: this_may_have_applied,
                    retry_after_seconds,
                } => {
                    may_have_applied |= this_may_have_applied;
                    (description, retry_after_seconds)
                }
            };
            if attempt >= max_attempts {
                return Err(ClientError::Unavailable {
                    attempts: attempt,
                    last: format!("{base}: {description}"),
                    may_have_applied,
                });
            }
            tokio::time::sleep(self.backoff(attempt, retry_after_seconds)).await;
            base_index = base_index.wrapping_add(1);
        }
    }

    /// One attempt on one named node, whatever its status.
    async fn call_node(
        &self,
        node_url: &str,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, ClientError> {
        let base = parse_base_url(node_url)?;
        let url = base
            .join(path)
            .map_err(|error| ClientError::InvalidBaseUrl {
                url: format!("{node_url}{path}"),
                reason: error.to_string(),
            })?;
        match self.attempt(method, url, body).await {
            Ok(answer) => Ok(answer),
            Err(AttemptFailure::Fatal(error)) => Err(error),
            Err(AttemptFailure::Retryable {
                description,
                may_have_applied,
                ..
            }) => Err(ClientError::Unavailable {
                attempts: 1,
                last: format!("{node_url}: {description}"),
                may_have_applied,
            }),
        }
    }

    /// Sends one request and reads its whole answer.
    async fn attempt(
        &self,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, AttemptFailure> {
        let mut request = self.inner.http.request(method, url);
        if let Some(body) = body {
            request = request
                .header(header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let response = request.send().await.map_err(classify_send_error)?;
        let status = response.status().as_u16();
        let retry_after_seconds = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok());
        let body = response
            .bytes()
            .await
            .map_err(|error| AttemptFailure::Retryable {
                // The status line arrived, so the server processed the request.
                description: format!("reading the {status} answer: {error}"),
                may_have_applied: true,
                retry_after_seconds: None,
            })?;
        Ok(Answer {
            status,
            retry_after_seconds,
            body: body.to_vec(),
        })
    }

    /// Exponential backoff with jitter, at least the server's `Retry-After`, never above the cap.
    pub(crate) fn backoff(&self, attempt: u32, retry_after_seconds: Option<u64>) -> Duration {
        let options = &self.inner.options;
        let cap_ms = options.retry_backoff_max_ms.max(options.retry_backoff_ms);
        let exponent = attempt.saturating_sub(1).min(20);
        let exponential_ms = options
            .retry_backoff_ms
            .saturating_mul(1u64 << exponent)
            .min(cap_ms);
        // Half fixed, half random: clients that failed together (a leader died under all of
        // them) must not all come back at the same instant.
        let jitter_ms = RandomState::new().hash_one(attempt) % (exponential_ms / 2 + 1);
        let backoff_ms = exponential_ms / 2 + jitter_ms;
        let wanted_ms = retry_after_seconds
            .map(|seconds| seconds.saturating_mul(1_000).max(backoff_ms))
            .unwrap_or(backoff_ms);
        Duration::from_millis(wanted_ms.min(cap_ms))
    }
}

fn parse_base_url(url: &str) -> Result<Url, ClientError> {
    let invalid = |reason: String| ClientError::InvalidBaseUrl {
        url: url.to_owned(),
        reason,
    };
    let parsed = Url::parse(url).map_err(|error| invalid(error.to_string()))?;
    if parsed.scheme() != "http" {
        return Err(invalid(
            "only http:// is supported (the client is built without TLS)".to_owned(),
        ));
    }
    if parsed.cannot_be_a_base() || parsed.host().is_none() {
        return Err(invalid("a host is needed".to_owned()));
    }
    Ok(parsed)
}

/// `base` with the path segments appended, each percent-encoded as needed.
fn endpoint(base: &Url, path_segments: &[&str]) -> Url {
    let mut url = base.clone();
    // `path_segments_mut` only fails on cannot-be-a-base URLs, which `parse_base_url` refuses.
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(path_segments);
    }
    url
}

/// A connection that was never established carried nothing; every other failure after the
/// request started (timeout, reset, closed keep-alive connection) may have delivered it.
fn classify_send_error(error: reqwest::Error) -> AttemptFailure {
    if error.is_builder() {
        return AttemptFailure::Fatal(ClientError::Transport(error.to_string()));
    }
    let may_have_applied = !error.is_connect();
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    AttemptFailure::Retryable {
        description: format!("{kind}: {}", error_chain(&error)),
        may_have_applied,
        retry_after_seconds: None,
    }
}

/// reqwest's top-level message hides the cause ("error sending request"); the chain names it.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// 429 (overload) and 502/503/504 (no leader, a forward that failed) are worth retrying with
/// the same key; every other answer is final.
fn retryable_answer(answer: &Answer) -> Option<AttemptFailure> {
    if !matches!(answer.status, 429 | 502 | 503 | 504) {
        return None;
    }
    let (code, message) = error_code_and_message(answer);
    Some(AttemptFailure::Retryable {
        may_have_applied: error::api_error_may_have_applied(answer.status, &code),
        description: format!("{} {code}: {message}", answer.status),
        retry_after_seconds: answer.retry_after_seconds,
    })
}

/// Whether an error answer to a debit is the decision recorded under its key. The server marks
/// decided rejections with `replayed`; `idempotency_conflict` carries the mark too but is not
/// the key's decision (that belongs to the other request that used the key first), so it stays
/// an error, like every unmarked answer but 402.
pub(crate) fn is_recorded_rejection(status: u16, error: &ErrorBody) -> bool {
    status == 402 || (error.replayed.is_some() && error.code != codes::IDEMPOTENCY_CONFLICT)
}

/// The rejected outcome that an error answer of a debit stands for (see
/// [`is_recorded_rejection`]).
pub(crate) fn recorded_rejection(
    account_id: &str,
    request: &DebitRequest,
    error: ErrorBody,
) -> DebitResponse {
    DebitResponse {
        status: STATUS_REJECTED.to_owned(),
        account_id: account_id.to_owned(),
        idempotency_key: request.idempotency_key.clone(),
        amount: None,
        available: None,
        code: Some(error.code),
        rate_card_version: None,
        replayed: error.replayed.unwrap_or(false),
    }
}

fn error_code_and_message(answer: &Answer) -> (String, String) {
    match serde_json::from_slice::<ErrorResponse>(&answer.body) {
        Ok(response) => (response.error.code, response.error.message),
        Err(_) => (
            UNRECOGNIZED_ERROR_BODY.to_owned(),
            String::from_utf8_lossy(&answer.body).into_owned(),
        ),
    }
}

fn api_error(answer: &Answer) -> ClientError {
    let (code, message) = error_code_and_message(answer);
    ClientError::Api {
        status: answer.status,
        code,
        message,
    }
}

fn decode<T: DeserializeOwned>(answer: &Answer) -> Result<T, ClientError> {
    serde_json::from_slice(&answer.body).map_err(|error| {
        ClientError::Decode(format!(
            "{} answer {:?}: {error}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        ))
    })
}

fn raw_response(answer: Answer) -> Result<RawResponse, ClientError> {
    let body = String::from_utf8(answer.body)
        .map_err(|error| ClientError::Decode(format!("answer is not UTF-8: {error}")))?;
    Ok(RawResponse {
        status: answer.status,
        body,
    })
}

#[cfg(test)]
mod tests;
