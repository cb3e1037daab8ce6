//! Automatic batching of single debits: many concurrent [`DebitBatcher::debit`] calls travel as
//! one `POST /v1/debits/batch`.
//!
//! An AI platform issues one debit per AI action, from many request handlers at once. Each debit
//! as its own HTTP request costs a request's parsing, routing and answer on every hop; a batch
//! pays those once. The batcher sends a batch as soon as it has a free slot (at most
//! [`BatchingOptions::max_in_flight`] batches wait for answers at once) and puts into it every
//! call that arrived meanwhile, up to [`BatchingOptions::max_batch`]. So a lone call is sent at
//! once, alone (no timer adds latency), and under load batches grow by themselves with the load.
//!
//! Each call keeps the semantics of [`LedgerClient::debit_request`]: a decided outcome, accepted
//! or rejected, is `Ok`; an item the ledger could not decide now (no leader, overload) is retried
//! in a later batch with the same idempotency key, up to the client's `max_attempts`; an error
//! says whether the debit may have applied ([`ClientError::may_have_applied`]).

use std::sync::Arc;

use ledger_api::{BatchDebitItem, BatchDebitResult, DebitRequest, DebitResponse};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::error::api_error_may_have_applied;
use crate::{is_recorded_rejection, recorded_rejection, ClientError, LedgerClient};

/// Limits of a [`DebitBatcher`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchingOptions {
    /// Debits per batch request at most (the server accepts up to 10,000).
    pub max_batch: usize,
    /// Batch requests waiting for their answers at once; calls arriving meanwhile queue up and
    /// go in the next batch.
    pub max_in_flight: usize,
}

impl Default for BatchingOptions {
    fn default() -> Self {
        BatchingOptions {
            max_batch: 1_000,
            max_in_flight: 4,
        }
    }
}

/// Sends concurrent single debits as batches. Cheap to clone; the batching task ends when the
/// last clone is dropped and every queued call is answered. Must be created inside a tokio
/// runtime.
#[derive(Clone, Debug)]
pub struct DebitBatcher {
    queue: mpsc::UnboundedSender<Pending>,
}

/// A call waiting for its batch and its answer.
#[derive(Debug)]
struct Pending {
    item: BatchDebitItem,
    /// Batches this debit was sent in so far.
    attempts: u32,
    /// Whether an earlier attempt may have applied it.
    may_have_applied: bool,
    reply: oneshot::Sender<Result<DebitResponse, ClientError>>,
}

impl DebitBatcher {
    /// A batcher sending through `client` (its nodes, timeouts and retry policy).
    pub fn new(client: LedgerClient, options: BatchingOptions) -> DebitBatcher {
        let (queue, receiver) = mpsc::unbounded_channel();
        let requeue = queue.downgrade();
        tokio::spawn(run(client, options, receiver, requeue));
        DebitBatcher { queue }
    }

    /// Debits `account_id` as `POST /v1/accounts/{id}/debits` would, but in a batch with the
    /// other calls of the moment.
    pub async fn debit(
        &self,
        account_id: &str,
        request: DebitRequest,
    ) -> Result<DebitResponse, ClientError> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            item: BatchDebitItem {
                account_id: account_id.to_owned(),
                debit: request,
            },
            attempts: 0,
            may_have_applied: false,
            reply,
        };
        self.queue.send(pending).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> ClientError {
    ClientError::Transport("the debit batcher stopped".to_owned())
}

async fn run(
    client: LedgerClient,
    options: BatchingOptions,
    mut queue: mpsc::UnboundedReceiver<Pending>,
    requeue: mpsc::WeakUnboundedSender<Pending>,
) {
    let slots = Arc::new(Semaphore::new(options.max_in_flight.max(1)));
    let max_batch = options.max_batch.max(1);
    loop {
        // Wait for a free slot first: calls arriving meanwhile gather in the queue.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match queue.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        tokio::spawn(send(client.clone(), batch, requeue.clone(), slot));
    }
}

/// Sends one batch and answers (or requeues) each of its calls.
async fn send(
    client: LedgerClient,
    mut batch: Vec<Pending>,
    requeue: mpsc::WeakUnboundedSender<Pending>,
    slot: OwnedSemaphorePermit,
) {
    for pending in &mut batch {
        pending.attempts += 1;
    }
    let items: Vec<BatchDebitItem> = batch.iter().map(|pending| pending.item.clone()).collect();
    let answer = client.batch_debits(&items).await;
    drop(slot);
    match answer {
        Err(error) => {
            for pending in batch {
                let error = with_earlier_attempts(error.clone(), &pending);
                drop(pending.reply.send(Err(error)));
            }
        }
        Ok(response) => {
            for (pending, result) in batch.into_iter().zip(response.results) {
                settle(&client, pending, result, &requeue);
            }
        }
    }
}

/// Answers one call from its item's result, or puts it back in the queue when the ledger could
/// not decide it now and attempts remain.
fn settle(
    client: &LedgerClient,
    mut pending: Pending,
    result: BatchDebitResult,
    requeue: &mpsc::WeakUnboundedSender<Pending>,
) {
    let answer = match (result.outcome, result.error) {
        (Some(outcome), _) => Ok(outcome),
        (None, Some(error)) if is_recorded_rejection(result.http_status, &error) => Ok(
            recorded_rejection(&pending.item.account_id, &pending.item.debit, error),
        ),
        (None, Some(error)) if matches!(result.http_status, 429 | 502 | 503 | 504) => {
            pending.may_have_applied |= api_error_may_have_applied(result.http_status, &error.code);
            let max_attempts = client.options().max_attempts.max(1);
            if pending.attempts >= max_attempts {
                Err(ClientError::Unavailable {
                    attempts: pending.attempts,
                    last: format!("{} {}: {}", result.http_status, error.code, error.message),
                    may_have_applied: pending.may_have_applied,
                })
            } else {
                let backoff = client.backoff(pending.attempts, None);
                let requeue = requeue.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(backoff).await;
                    match requeue.upgrade() {
                        Some(queue) => {
                            if let Err(mpsc::error::SendError(pending)) = queue.send(pending) {
                                drop(pending.reply.send(Err(stopped())));
                            }
                        }
                        None => drop(pending.reply.send(Err(stopped()))),
                    }
                });
                return;
            }
        }
        (None, Some(error)) => Err(ClientError::Api {
            status: result.http_status,
            code: error.code,
            message: error.message,
        }),
        (None, None) => Err(ClientError::Decode(
            "a batch result with neither an outcome nor an error".to_owned(),
        )),
    };
    let answer = answer.map_err(|error| with_earlier_attempts(error, &pending));
    drop(pending.reply.send(answer));
}

/// A definite failure of a call whose earlier attempt may have applied is not definite.
fn with_earlier_attempts(error: ClientError, pending: &Pending) -> ClientError {
    if pending.may_have_applied && error.is_definite() {
        ClientError::Unavailable {
            attempts: pending.attempts,
            last: error.to_string(),
            may_have_applied: true,
        }
    } else {
        error
    }
}

#[cfg(test)]
mod tests;
