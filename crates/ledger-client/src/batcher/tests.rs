//! The batcher against a fake node whose batch endpoint answers each item by its key's prefix:
//! `reject-` (402, a recorded rejection), `bad-` (400), `retry-` (503 `no_leader` the first time
//! the key is seen), `unknown-` (504 every time), anything else accepted.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use ledger_api::{BatchDebitRequest, DebitRequest, STATUS_ACCEPTED, STATUS_REJECTED};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use super::*;
use crate::ClientOptions;

#[derive(Default)]
struct Seen {
    /// The keys of every batch received, in order.
    batches: Vec<Vec<String>>,
    /// How often each key was received.
    times: BTreeMap<String, u32>,
}

#[derive(Clone)]
struct FakeBatchNode {
    seen: Arc<Mutex<Seen>>,
    /// The first batch is answered only once this turns true.
    release_first: watch::Receiver<bool>,
    arrivals: mpsc::UnboundedSender<usize>,
}

async fn answer_batch(
    State(node): State<FakeBatchNode>,
    Json(request): Json<BatchDebitRequest>,
) -> Json<Value> {
    let (position, times) = {
        let mut seen = node.seen.lock().expect("seen lock");
        let keys: Vec<String> = request
            .debits
            .iter()
            .map(|item| item.debit.idempotency_key.clone())
            .collect();
        let times: Vec<u32> = keys
            .iter()
            .map(|key| {
                let count = seen.times.entry(key.clone()).or_default();
                *count += 1;
                *count
            })
            .collect();
        seen.batches.push(keys);
        (seen.batches.len(), times)
    };
    let _ = node.arrivals.send(position);
    if position == 1 {
        let mut release = node.release_first.clone();
        drop(release.wait_for(|released| *released).await);
    }
    let results: Vec<Value> = request
        .debits
        .iter()
        .zip(times)
        .map(|(item, times)| {
            let key = item.debit.idempotency_key.as_str();
            let error = |status: u16, code: &str, replayed: Option<bool>| {
                let mut error = json!({"code": code, "message": format!("fake {code}")});
                if let Some(replayed) = replayed {
                    error["replayed"] = json!(replayed);
                }
                json!({"error": error, "http_status": status})
            };
            if key.starts_with("reject-") {
                error(402, "insufficient_credits", Some(false))
            } else if key.starts_with("bad-") {
                error(400, "invalid_field", None)
            } else if key.starts_with("retry-") && times == 1 {
                error(503, "no_leader", None)
            } else if key.starts_with("unknown-") {
                error(504, "leader_timeout", None)
            } else {
                json!({"http_status": 200, "outcome": {
                    "status": STATUS_ACCEPTED, "account_id": item.account_id,
                    "idempotency_key": key, "amount": item.debit.amount, "available": 0,
                    "replayed": false
                }})
            }
        })
        .collect();
    Json(json!({ "results": results }))
}

struct Fixture {
    batcher: DebitBatcher,
    seen: Arc<Mutex<Seen>>,
    release_first: watch::Sender<bool>,
    arrivals: mpsc::UnboundedReceiver<usize>,
    _server: tokio::task::JoinHandle<()>,
}

impl Fixture {
    async fn start(options: BatchingOptions, max_attempts: u32, hold_first: bool) -> Fixture {
        let (release_first, release_receiver) = watch::channel(!hold_first);
        let (arrivals_sender, arrivals) = mpsc::unbounded_channel();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let node = FakeBatchNode {
            seen: Arc::clone(&seen),
            release_first: release_receiver,
            arrivals: arrivals_sender,
        };
        let router = Router::new()
            .route("/v1/debits/batch", post(answer_batch))
            .with_state(node);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("local address"));
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .await
                .expect("fake node serves");
        });
        let client = LedgerClient::with_options(
            vec![url],
            ClientOptions {
                max_attempts,
                retry_backoff_ms: 1,
                retry_backoff_max_ms: 5,
                ..ClientOptions::default()
            },
        )
        .expect("client");
        Fixture {
            batcher: DebitBatcher::new(client, options),
            seen,
            release_first,
            arrivals,
            _server: server,
        }
    }

    fn batches(&self) -> Vec<Vec<String>> {
        self.seen.lock().expect("seen lock").batches.clone()
    }

    /// A call, already queued in the batcher (polled once) when this returns.
    fn queued_call(
        &self,
        key: &str,
    ) -> Pin<Box<dyn Future<Output = Result<DebitResponse, ClientError>> + Send + 'static>> {
        let request = DebitRequest {
            idempotency_key: key.to_owned(),
            amount: Some(1),
            feature: None,
            quantity: None,
        };
        let account = format!("acct-{key}");
        let batcher = self.batcher.clone();
        let mut call: Pin<Box<dyn Future<Output = _> + Send>> =
            Box::pin(async move { batcher.debit(&account, request).await });
        let mut context = Context::from_waker(Waker::noop());
        assert!(matches!(call.as_mut().poll(&mut context), Poll::Pending));
        call
    }
}

fn keys(batch: &[&str]) -> Vec<String> {
    batch.iter().map(|key| (*key).to_owned()).collect()
}

#[tokio::test]
async fn calls_arriving_while_a_batch_is_in_flight_go_together_in_the_next() {
    let options = BatchingOptions {
        max_batch: 100,
        max_in_flight: 1,
    };
    let mut fixture = Fixture::start(options, 3, true).await;
    let first = fixture.queued_call("k0");
    // The lone first call is sent at once, alone.
    assert_eq!(fixture.arrivals.recv().await, Some(1));
    let later: Vec<_> = ["k1", "k2", "k3", "k4"]
        .iter()
        .map(|key| fixture.queued_call(key))
        .collect();
    fixture.release_first.send_replace(true);

    let first = first.await.expect("decided");
    assert_eq!(
        (first.status.as_str(), first.idempotency_key.as_str()),
        (STATUS_ACCEPTED, "k0")
    );
    for (call, key) in later.into_iter().zip(["k1", "k2", "k3", "k4"]) {
        let answer = call.await.expect("decided");
        assert_eq!(answer.idempotency_key, key);
        assert_eq!(answer.account_id, format!("acct-{key}"));
    }
    assert_eq!(
        fixture.batches(),
        vec![keys(&["k0"]), keys(&["k1", "k2", "k3", "k4"])]
    );
}

#[tokio::test]
async fn each_item_keeps_the_meaning_of_a_single_debit() {
    let options = BatchingOptions {
        max_batch: 100,
        max_in_flight: 1,
    };
    let fixture = Fixture::start(options, 3, false).await;
    let ok = fixture.queued_call("ok-1");
    let rejected = fixture.queued_call("reject-1");
    let bad = fixture.queued_call("bad-1");
    let retried = fixture.queued_call("retry-1");

    let ok = ok.await.expect("decided");
    assert_eq!(ok.status, STATUS_ACCEPTED);
    let rejected = rejected.await.expect("a recorded rejection is an outcome");
    assert_eq!(rejected.status, STATUS_REJECTED);
    assert_eq!(rejected.code.as_deref(), Some("insufficient_credits"));
    assert_eq!(rejected.account_id, "acct-reject-1");
    let bad = bad.await.expect_err("a bad item decides nothing");
    assert_eq!(
        (bad.status(), bad.code()),
        (Some(400), Some("invalid_field"))
    );
    assert!(bad.is_definite());
    let retried = retried.await.expect("decided on the retry");
    assert_eq!(retried.status, STATUS_ACCEPTED);
    assert_eq!(
        fixture.batches(),
        vec![
            keys(&["ok-1", "reject-1", "bad-1", "retry-1"]),
            keys(&["retry-1"])
        ]
    );
}

#[tokio::test]
async fn an_item_left_undecided_after_every_attempt_says_whether_it_may_have_applied() {
    let options = BatchingOptions {
        max_batch: 100,
        max_in_flight: 1,
    };
    let fixture = Fixture::start(options, 2, false).await;
    let error = fixture
        .queued_call("unknown-1")
        .await
        .expect_err("never decided");
    assert!(
        matches!(
            error,
            ClientError::Unavailable {
                attempts: 2,
                may_have_applied: true,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(
        fixture.batches(),
        vec![keys(&["unknown-1"]), keys(&["unknown-1"])]
    );
}

#[tokio::test]
async fn batches_are_cut_at_max_batch() {
    let options = BatchingOptions {
        max_batch: 2,
        max_in_flight: 1,
    };
    let fixture = Fixture::start(options, 3, false).await;
    let calls: Vec<_> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|key| fixture.queued_call(key))
        .collect();
    for call in calls {
        call.await.expect("decided");
    }
    assert_eq!(
        fixture.batches(),
        vec![keys(&["a", "b"]), keys(&["c", "d"]), keys(&["e"])]
    );
}
