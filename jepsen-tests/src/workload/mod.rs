//! Workloads: concurrent clients that issue requests to random nodes and record each attempt
//! in the history. A keyed request (debit, grant, reservation call) whose attempt fails or times
//! out is retried with the same key, on another node, until the ledger gives a decided answer
//! or the attempts run out.
//!
//! - [`bank`]: many clients debit (fresh keys) a set of accounts that a top-up client keeps
//!   granting; some decided debits are sent again on purpose to check replays; optional
//!   reservations.
//! - [`linear`]: few accounts, two clients each, debits, grants and linearizable reads, for
//!   the linearizability checker.

pub mod bank;
pub mod linear;

use std::sync::PoisonError;
use std::time::Duration;

use ledger_api::{CreateGrantRequest, STATUS_ACCEPTED};
use ledger_client::{ClientError, ClientOptions, LedgerClient, RawResponse};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use crate::cluster::RemovedNodes;
use crate::error::HarnessError;
use crate::history::{AccountSnapshot, Answer, Outcome, Recorder, Request, Workload};
use crate::NodeId;

/// One client per node, each making a single attempt per call, so that the history names the
/// node of every attempt and the workload decides about retries itself.
#[derive(Clone)]
pub struct NodeClients {
    nodes: Vec<(NodeId, String, LedgerClient)>,
    /// Nodes the cluster removed: no longer chosen.
    removed: RemovedNodes,
}

impl NodeClients {
    pub fn new(
        urls: &[(NodeId, String)],
        request_timeout_ms: u64,
    ) -> Result<NodeClients, HarnessError> {
        let mut nodes = Vec::with_capacity(urls.len());
        for (id, url) in urls {
            let client = LedgerClient::with_options(
                vec![url.clone()],
                ClientOptions {
                    request_timeout_ms,
                    max_attempts: 1,
                    ..ClientOptions::default()
                },
            )?;
            nodes.push((*id, url.clone(), client));
        }
        if nodes.is_empty() {
            return Err(HarnessError::Setup {
                message: "no nodes to talk to".to_owned(),
            });
        }
        Ok(NodeClients {
            nodes,
            removed: RemovedNodes::default(),
        })
    }

    /// Leaves out the nodes in `removed` (now and as it grows) when choosing a node.
    pub fn leaving_out(mut self, removed: RemovedNodes) -> NodeClients {
        self.removed = removed;
        self
    }

    fn random(&self, rng: &mut StdRng) -> &(NodeId, String, LedgerClient) {
        let removed = self.removed.read().unwrap_or_else(PoisonError::into_inner);
        let serving: Vec<&(NodeId, String, LedgerClient)> = self
            .nodes
            .iter()
            .filter(|(id, _, _)| !removed.contains(id))
            .collect();
        match serving.choose(rng) {
            Some(node) => node,
            // `new` refuses an empty list, so a choice always exists; the cluster never
            // removes its last node.
            None => self
                .nodes
                .choose(rng)
                .unwrap_or_else(|| unreachable!("NodeClients is never empty")),
        }
    }
}

/// What a client needs to issue and record requests.
#[derive(Clone)]
pub struct ClientContext {
    pub clients: NodeClients,
    pub recorder: Recorder,
    pub workload: Workload,
}

/// How hard a keyed request is retried.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff_ms: (u64, u64),
}

impl ClientContext {
    /// One attempt on a random node, recorded as invoke then completion.
    pub async fn attempt(
        &self,
        rng: &mut StdRng,
        process: u32,
        account: &str,
        request: Request,
    ) -> Outcome {
        let (node, url, client) = self.clients.random(rng);
        let invocation =
            self.recorder
                .invoke(process, self.workload, account, *node, request.clone());
        let outcome = send(client, url, account, &request).await;
        self.recorder.complete(&invocation, outcome.clone());
        outcome
    }

    /// Attempts a keyed request until the ledger decides it (an `ok`), retrying with the same
    /// key after `fail` and `info`. Returns the last outcome.
    pub async fn until_decided(
        &self,
        rng: &mut StdRng,
        process: u32,
        account: &str,
        request: Request,
        policy: RetryPolicy,
    ) -> Outcome {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let outcome = self.attempt(rng, process, account, request.clone()).await;
            if matches!(outcome, Outcome::Ok(_)) || attempts >= policy.max_attempts {
                return outcome;
            }
            // Client backoff before a retry (not a wait for a condition): it spreads the
            // retries of clients that failed together.
            let (low, high) = policy.backoff_ms;
            tokio::time::sleep(Duration::from_millis(rng.gen_range(low..=high.max(low)))).await;
        }
    }
}

/// Sends one request and classifies the answer.
async fn send(client: &LedgerClient, url: &str, account: &str, request: &Request) -> Outcome {
    match request {
        Request::Debit { key, amount } => match client.debit(account, key, *amount).await {
            Ok(response) => Outcome::Ok(Answer::Debit {
                accepted: response.status == STATUS_ACCEPTED,
                amount: response.amount,
                available: response.available,
                code: response.code,
                replayed: response.replayed,
            }),
            Err(error) => failed(&error),
        },
        Request::Grant { grant_id, amount } => {
            let grant = CreateGrantRequest::new(grant_id, *amount, "manual");
            match client.grant(account, &grant).await {
                Ok(response) => Outcome::Ok(Answer::Grant {
                    replayed: response.replayed,
                }),
                Err(error) => failed(&error),
            }
        }
        Request::Read => match client
            .get_raw(url, &format!("/v1/accounts/{account}"))
            .await
        {
            Ok(raw) if raw.status == 200 => {
                match serde_json::from_str::<serde_json::Value>(&raw.body)
                    .map_err(|error| error.to_string())
                    .and_then(|body| AccountSnapshot::from_json(&body))
                {
                    Ok(snapshot) => Outcome::Ok(Answer::Read(snapshot.without_grant_list())),
                    Err(error) => Outcome::Info(format!("undecodable read: {error}")),
                }
            }
            Ok(raw) => raw_failure(&raw),
            Err(error) => failed(&error),
        },
        Request::Reserve {
            reservation_id,
            amount,
            ttl_ms,
        } => {
            let body = serde_json::json!({"reservation_id": reservation_id, "amount": amount, "ttl_ms": ttl_ms});
            reservation_call(
                client,
                url,
                &format!("/v1/accounts/{account}/reservations"),
                &body,
            )
            .await
        }
        Request::CommitReservation {
            reservation_id,
            amount,
        } => {
            let body = serde_json::json!({"amount": amount});
            let path = format!("/v1/accounts/{account}/reservations/{reservation_id}/commit");
            reservation_call(client, url, &path, &body).await
        }
        Request::ReleaseReservation { reservation_id } => {
            let path = format!("/v1/accounts/{account}/reservations/{reservation_id}/release");
            reservation_call(client, url, &path, &serde_json::json!({})).await
        }
    }
}

async fn reservation_call(
    client: &LedgerClient,
    url: &str,
    path: &str,
    body: &serde_json::Value,
) -> Outcome {
    let raw = match client.post_raw(url, path, &body.to_string()).await {
        Ok(raw) => raw,
        Err(error) => return failed(&error),
    };
    if raw.status == 200 || raw.status == 201 {
        let body = serde_json::from_str::<serde_json::Value>(&raw.body).ok();
        let field = |name: &str| body.as_ref().and_then(|value| value.get(name).cloned());
        return Outcome::Ok(Answer::Reservation {
            accepted: true,
            code: None,
            replayed: field("replayed").and_then(|value| value.as_bool()),
            status: field("status").and_then(|value| value.as_str().map(str::to_owned)),
        });
    }
    let error = serde_json::from_str::<serde_json::Value>(&raw.body)
        .ok()
        .and_then(|value| value.get("error").cloned());
    let replayed = error
        .as_ref()
        .and_then(|error| error.get("replayed"))
        .and_then(serde_json::Value::as_bool);
    // A decided rejection: 402, or any error the server marks as recorded under the key.
    if raw.status == 402
        || (replayed.is_some() && raw.error_code().as_deref() != Some("idempotency_conflict"))
    {
        return Outcome::Ok(Answer::Reservation {
            accepted: false,
            code: raw.error_code(),
            replayed,
            status: None,
        });
    }
    raw_failure(&raw)
}

/// A non-success answer that decided nothing the workload models: 4xx, `no_leader` and
/// `overloaded` are definite; other 5xx may have applied.
fn raw_failure(raw: &RawResponse) -> Outcome {
    let code = raw
        .error_code()
        .unwrap_or_else(|| "unrecognized".to_owned());
    let description = format!("{} {code}", raw.status);
    if raw.status < 500 || code == "no_leader" || code == "overloaded" {
        Outcome::Fail(description)
    } else {
        Outcome::Info(description)
    }
}

fn failed(error: &ClientError) -> Outcome {
    if error.may_have_applied() {
        Outcome::Info(error.to_string())
    } else {
        Outcome::Fail(error.to_string())
    }
}

/// Creates an account with the patient client (setup is not part of the history: accounts are
/// created before any fault and their creation is not judged).
pub async fn create_account(
    client: &LedgerClient,
    account_id: &str,
    overdraft_limit: u64,
) -> Result<(), HarnessError> {
    let limit = (overdraft_limit > 0).then_some(overdraft_limit);
    client
        .create_account(account_id, limit)
        .await
        .map(|_| ())
        .map_err(|error| HarnessError::Setup {
            message: format!("creating account {account_id}: {error}"),
        })
}

/// The mark of the setup client in the history.
pub const SETUP_PROCESS: u32 = 0;

/// Grants the opening balance of an account through the recorded path (the linearizability
/// model starts from an empty account, so the grant must be in the history).
pub async fn opening_grant(
    context: &ClientContext,
    rng: &mut StdRng,
    account: &str,
    amount: u64,
) -> Result<(), HarnessError> {
    let request = Request::Grant {
        grant_id: format!("open-{account}"),
        amount,
    };
    let policy = RetryPolicy {
        max_attempts: 50,
        backoff_ms: (50, 200),
    };
    match context
        .until_decided(rng, SETUP_PROCESS, account, request, policy)
        .await
    {
        Outcome::Ok(_) => Ok(()),
        other => Err(HarnessError::Setup {
            message: format!("opening grant of {account}: {other:?}"),
        }),
    }
}
