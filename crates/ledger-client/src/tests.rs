//! The client against a scripted fake node on 127.0.0.1:0: each test lists the answers the node
//! gives, in order, and checks both what the client returned and what the node received.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, Method as HttpMethod, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use ledger_api::{BatchDebitItem, CreateGrantRequest, DebitRequest, STATUS_ACCEPTED};
use serde_json::json;

use super::*;

/// One scripted answer of the fake node.
enum Reply {
    Json {
        status: u16,
        body: serde_json::Value,
        retry_after: Option<&'static str>,
    },
    /// Never answers: the client's timeout must fire.
    Hang,
}

fn reply(status: u16, body: serde_json::Value) -> Reply {
    Reply::Json {
        status,
        body,
        retry_after: None,
    }
}

fn error_reply(status: u16, code: &str, replayed: Option<bool>) -> Reply {
    let mut error = json!({"code": code, "message": format!("scripted {code}")});
    if let Some(replayed) = replayed {
        error["replayed"] = json!(replayed);
    }
    reply(status, json!({ "error": error }))
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Received {
    method: String,
    path: String,
    body: String,
}

#[derive(Default)]
struct Script {
    replies: VecDeque<Reply>,
    received: Vec<Received>,
}

struct FakeNode {
    url: String,
    script: Arc<Mutex<Script>>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeNode {
    async fn start(replies: Vec<Reply>) -> FakeNode {
        let script = Arc::new(Mutex::new(Script {
            replies: replies.into(),
            received: Vec::new(),
        }));
        let router = Router::new()
            .fallback(answer_from_script)
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("local address"));
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .await
                .expect("fake node serves");
        });
        FakeNode {
            url,
            script,
            server,
        }
    }

    fn received(&self) -> Vec<Received> {
        self.script.lock().expect("script lock").received.clone()
    }

    fn remaining_replies(&self) -> usize {
        self.script.lock().expect("script lock").replies.len()
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn answer_from_script(
    State(script): State<Arc<Mutex<Script>>>,
    method: HttpMethod,
    uri: Uri,
    body: Bytes,
) -> Response {
    let next = {
        let mut script = script.lock().expect("script lock");
        script.received.push(Received {
            method: method.to_string(),
            path: uri.path().to_owned(),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        script.replies.pop_front()
    };
    match next {
        Some(Reply::Json {
            status,
            body,
            retry_after,
        }) => {
            let status = StatusCode::from_u16(status).expect("scripted status is valid");
            let mut response = (status, axum::Json(body)).into_response();
            if let Some(seconds) = retry_after {
                response
                    .headers_mut()
                    .insert("retry-after", HeaderValue::from_static(seconds));
            }
            response
        }
        Some(Reply::Hang) => std::future::pending().await,
        None => (StatusCode::IM_A_TEAPOT, "script exhausted").into_response(),
    }
}

/// Options that keep the retry loops of the tests short.
fn fast_options(max_attempts: u32) -> ClientOptions {
    ClientOptions {
        request_timeout_ms: 2_000,
        max_attempts,
        retry_backoff_ms: 1,
        retry_backoff_max_ms: 10,
    }
}

fn client_of(urls: &[&str], options: ClientOptions) -> LedgerClient {
    LedgerClient::with_options(urls.iter().map(|url| url.to_string()).collect(), options)
        .expect("valid client")
}

fn accepted_debit(account_id: &str, key: &str, amount: u64, available: i64) -> serde_json::Value {
    json!({
        "status": "accepted",
        "account_id": account_id,
        "idempotency_key": key,
        "amount": amount,
        "available": available,
        "replayed": false,
    })
}

/// A loopback URL on which nothing listens: the port was just bound and released.
async fn dead_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let address = listener.local_addr().expect("local address");
    drop(listener);
    format!("http://{address}")
}

#[tokio::test]
async fn a_503_is_retried_with_the_same_body_until_decided() {
    let node = FakeNode::start(vec![
        Reply::Json {
            status: 503,
            body: json!({"error": {"code": "no_leader", "message": "election"}}),
            retry_after: Some("1"),
        },
        reply(200, accepted_debit("acct-1", "key-1", 7, 93)),
    ])
    .await;
    let client = client_of(&[&node.url], fast_options(3));

    let outcome = client.debit("acct-1", "key-1", 7).await.expect("decided");

    assert_eq!(outcome.status, STATUS_ACCEPTED);
    assert_eq!(outcome.amount, Some(7));
    assert_eq!(outcome.available, Some(93));
    let received = node.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0], received[1], "a retry resends the same request");
    assert_eq!(received[0].path, "/v1/accounts/acct-1/debits");
    let body: DebitRequest = serde_json::from_str(&received[0].body).expect("a debit body");
    assert_eq!(body.idempotency_key, "key-1");
    assert_eq!(body.amount, Some(7));
}

#[tokio::test]
async fn a_429_is_retried() {
    let node = FakeNode::start(vec![
        error_reply(429, codes::OVERLOADED, None),
        reply(200, accepted_debit("acct-1", "key-1", 1, 0)),
    ])
    .await;
    let client = client_of(&[&node.url], fast_options(3));

    let outcome = client.debit("acct-1", "key-1", 1).await.expect("decided");

    assert_eq!(outcome.status, STATUS_ACCEPTED);
    assert_eq!(node.received().len(), 2);
}

#[tokio::test]
async fn a_402_is_a_rejected_outcome_and_is_not_retried() {
    let node = FakeNode::start(vec![
        error_reply(402, codes::INSUFFICIENT_CREDITS, Some(true)),
        error_reply(402, codes::INSUFFICIENT_CREDITS, None),
    ])
    .await;
    let client = client_of(&[&node.url], fast_options(5));

    let replay = client.debit("acct-1", "key-9", 500).await.expect("decided");
    let first = client.debit("acct-1", "key-9", 500).await.expect("decided");

    for outcome in [&replay, &first] {
        assert_eq!(outcome.status, STATUS_REJECTED);
        assert_eq!(outcome.code.as_deref(), Some(codes::INSUFFICIENT_CREDITS));
        assert_eq!(outcome.account_id, "acct-1");
        assert_eq!(outcome.idempotency_key, "key-9");
        assert_eq!(outcome.amount, None);
    }
    assert!(replay.replayed);
    assert!(
        !first.replayed,
        "a 402 without `replayed` is a first decision"
    );
    assert_eq!(node.received().len(), 2, "one request per call");
}

#[tokio::test]
async fn an_error_marked_replayed_is_a_recorded_rejection() {
    let node = FakeNode::start(vec![error_reply(
        404,
        codes::ACCOUNT_NOT_FOUND,
        Some(false),
    )])
    .await;
    let client = client_of(&[&node.url], fast_options(3));

    let outcome = client.debit("ghost", "key-1", 5).await.expect("decided");

    assert_eq!(outcome.status, STATUS_REJECTED);
    assert_eq!(outcome.code.as_deref(), Some(codes::ACCOUNT_NOT_FOUND));
    assert!(!outcome.replayed);
}

#[tokio::test]
async fn errors_that_decided_nothing_are_definite_and_not_retried() {
    let cases = [
        (400, codes::INVALID_AMOUNT, None),
        (404, codes::ACCOUNT_NOT_FOUND, None),
        (409, codes::IDEMPOTENCY_CONFLICT, None),
        // Marked, but the key's decision belongs to the other request that used it first.
        (409, codes::IDEMPOTENCY_CONFLICT, Some(false)),
    ];
    for (status, code, replayed) in cases {
        let node = FakeNode::start(vec![
            error_reply(status, code, replayed),
            reply(200, accepted_debit("acct-1", "key-1", 1, 0)),
        ])
        .await;
        let client = client_of(&[&node.url], fast_options(5));

        let error = client
            .debit("acct-1", "key-1", 1)
            .await
            .expect_err("an error answer");

        assert_eq!(error.status(), Some(status));
        assert_eq!(error.code(), Some(code));
        assert!(error.is_definite(), "{error}");
        assert_eq!(node.received().len(), 1, "{status} must not be retried");
        assert_eq!(node.remaining_replies(), 1);
    }
}

#[tokio::test]
async fn exhausted_retries_are_unavailable_and_say_whether_anything_may_have_applied() {
    let cases = [(codes::NO_LEADER, false), (codes::UNAVAILABLE, true)];
    for (code, may_have_applied) in cases {
        let node = FakeNode::start((0..3).map(|_| error_reply(503, code, None)).collect()).await;
        let client = client_of(&[&node.url], fast_options(3));

        let error = client
            .debit("acct-1", "key-1", 1)
            .await
            .expect_err("never decided");

        match &error {
            ClientError::Unavailable { attempts, last, .. } => {
                assert_eq!(*attempts, 3);
                assert!(last.contains(code), "{last}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert_eq!(error.may_have_applied(), may_have_applied, "{code}");
        assert_eq!(node.received().len(), 3);
    }
}

#[tokio::test]
async fn a_refused_connection_rotates_to_the_next_node() {
    let dead = dead_url().await;
    let live = FakeNode::start(vec![
        reply(200, accepted_debit("acct-1", "key-1", 1, 0)),
        reply(200, accepted_debit("acct-1", "key-2", 1, 0)),
    ])
    .await;
    let client = client_of(&[&dead, &live.url], fast_options(2));

    // Two calls start on two different nodes (round robin); both end on the live one.
    for key in ["key-1", "key-2"] {
        let outcome = client.debit("acct-1", key, 1).await.expect("decided");
        assert_eq!(outcome.status, STATUS_ACCEPTED);
    }
    assert_eq!(live.received().len(), 2);
}

#[tokio::test]
async fn refused_connections_only_are_definite() {
    let dead = dead_url().await;
    let client = client_of(&[&dead], fast_options(2));

    let error = client
        .debit("acct-1", "key-1", 1)
        .await
        .expect_err("nobody listens");

    assert!(
        matches!(error, ClientError::Unavailable { attempts: 2, .. }),
        "{error:?}"
    );
    assert!(
        error.is_definite(),
        "a connection never made carried nothing"
    );
}

#[tokio::test]
async fn a_timeout_leaves_the_outcome_unknown() {
    let node = FakeNode::start(vec![Reply::Hang]).await;
    let options = ClientOptions {
        request_timeout_ms: 200,
        ..fast_options(1)
    };
    let client = client_of(&[&node.url], options);

    let error = client
        .debit("acct-1", "key-1", 1)
        .await
        .expect_err("never answered");

    assert!(
        matches!(error, ClientError::Unavailable { attempts: 1, .. }),
        "{error:?}"
    );
    assert!(error.may_have_applied(), "the request was sent: {error}");
}

#[tokio::test]
async fn retry_after_is_bounded_by_the_backoff_cap() {
    let node = FakeNode::start(vec![
        Reply::Json {
            status: 503,
            body: json!({"error": {"code": "no_leader", "message": "election"}}),
            retry_after: Some("3600"),
        },
        reply(200, accepted_debit("acct-1", "key-1", 1, 0)),
    ])
    .await;
    let client = client_of(&[&node.url], fast_options(2));

    // An hour-long Retry-After would hang this test; the cap (10 ms) bounds it. The outer
    // timeout only turns such a hang into a failure.
    let outcome = tokio::time::timeout(Duration::from_secs(60), client.debit("acct-1", "key-1", 1))
        .await
        .expect("Retry-After is capped")
        .expect("decided");

    assert_eq!(outcome.status, STATUS_ACCEPTED);
}

#[tokio::test]
async fn create_account_tells_created_from_existing() {
    let node = FakeNode::start(vec![
        reply(201, json!({})),
        reply(200, json!({})),
        error_reply(409, codes::ACCOUNT_CONFLICT, None),
    ])
    .await;
    let client = client_of(&[&node.url], fast_options(3));

    let first = client
        .create_account("acct-1", None)
        .await
        .expect("created");
    let again = client.create_account("acct-1", None).await.expect("exists");
    let conflict = client
        .create_account("acct-1", Some(10))
        .await
        .expect_err("different parameters");

    assert_eq!(first, AccountCreated { created: true });
    assert_eq!(again, AccountCreated { created: false });
    assert_eq!(conflict.code(), Some(codes::ACCOUNT_CONFLICT));
    let received = node.received();
    assert_eq!(received[0].path, "/v1/accounts");
    let body: CreateAccountRequest = serde_json::from_str(&received[2].body).expect("a body");
    assert_eq!(body.overdraft_limit, Some(10));
    let body: serde_json::Value = serde_json::from_str(&received[0].body).expect("a body");
    assert!(body.get("overdraft_limit").is_none(), "absent, not null");
}

#[tokio::test]
async fn grant_decodes_new_and_replayed_grants() {
    let node = FakeNode::start(vec![
        reply(
            201,
            json!({"account_id": "acct-1", "grant_id": "g-1", "replayed": false}),
        ),
        reply(
            200,
            json!({"account_id": "acct-1", "grant_id": "g-1", "replayed": true}),
        ),
    ])
    .await;
    let client = client_of(&[&node.url], fast_options(3));
    let request = CreateGrantRequest::new("g-1", 100, "promo");

    let first = client.grant("acct-1", &request).await.expect("granted");
    let replay = client.grant("acct-1", &request).await.expect("replayed");

    assert!(!first.replayed);
    assert!(replay.replayed);
    assert_eq!(node.received()[0].path, "/v1/accounts/acct-1/grants");
}

#[tokio::test]
async fn get_debit_maps_debit_not_found_to_none_only() {
    let node = FakeNode::start(vec![
        error_reply(404, codes::DEBIT_NOT_FOUND, None),
        reply(200, accepted_debit("acct-1", "key-1", 3, 7)),
        error_reply(404, codes::ACCOUNT_NOT_FOUND, None),
    ])
    .await;
    let client = client_of(&[&node.url], fast_options(3));

    let undecided = client.get_debit("acct-1", "key-0").await.expect("answered");
    let decided = client.get_debit("acct-1", "key-1").await.expect("answered");
    let no_account = client
        .get_debit("ghost", "key-1")
        .await
        .expect_err("unknown");

    assert_eq!(undecided, None);
    assert_eq!(decided.and_then(|outcome| outcome.amount), Some(3));
    assert_eq!(no_account.code(), Some(codes::ACCOUNT_NOT_FOUND));
    assert_eq!(node.received()[1].path, "/v1/accounts/acct-1/debits/key-1");
}

#[tokio::test]
async fn get_reservation_maps_reservation_not_found_to_none_only() {
    let committed = json!({
        "account_id": "acct-1", "reservation_id": "r-1", "status": "committed", "amount": 10,
        "expires_at": "2026-11-26T00:00:10Z", "committed": 4, "released": 6, "replayed": false
    });
    let node = FakeNode::start(vec![
        error_reply(404, codes::RESERVATION_NOT_FOUND, None),
        reply(200, committed),
        error_reply(404, codes::ACCOUNT_NOT_FOUND, None),
    ])
    .await;
    let client = client_of(&[&node.url], fast_options(3));

    let never = client
        .get_reservation("acct-1", "r-0")
        .await
        .expect("answered");
    let found = client
        .get_reservation("acct-1", "r-1")
        .await
        .expect("answered");
    let no_account = client
        .get_reservation("ghost", "r-1")
        .await
        .expect_err("unknown");

    assert_eq!(never, None);
    let found = found.expect("decided");
    assert_eq!(
        (found.status.as_str(), found.committed),
        ("committed", Some(4))
    );
    assert_eq!(no_account.code(), Some(codes::ACCOUNT_NOT_FOUND));
    assert_eq!(
        node.received()[1].path,
        "/v1/accounts/acct-1/reservations/r-1"
    );
}

#[tokio::test]
async fn path_segments_are_percent_encoded() {
    let node = FakeNode::start(vec![error_reply(404, codes::ACCOUNT_NOT_FOUND, None)]).await;
    let client = client_of(&[&node.url], fast_options(1));

    let error = client.get_account("a b/c").await.expect_err("unknown");

    assert_eq!(error.code(), Some(codes::ACCOUNT_NOT_FOUND));
    assert_eq!(node.received()[0].path, "/v1/accounts/a%20b%2Fc");
}

#[tokio::test]
async fn a_batch_must_answer_once_per_item() {
    let one_result = json!({"results": [
        {"outcome": accepted_debit("acct-1", "key-1", 1, 0), "http_status": 200}
    ]});
    let node = FakeNode::start(vec![reply(200, one_result.clone()), reply(200, one_result)]).await;
    let client = client_of(&[&node.url], fast_options(1));
    let item = |key: &str| BatchDebitItem {
        account_id: "acct-1".to_owned(),
        debit: DebitRequest {
            idempotency_key: key.to_owned(),
            amount: Some(1),
            feature: None,
            quantity: None,
        },
    };

    let matching = client
        .batch_debits(&[item("key-1")])
        .await
        .expect("decoded");
    let short = client
        .batch_debits(&[item("key-1"), item("key-2")])
        .await
        .expect_err("one result for two items");

    assert_eq!(matching.results.len(), 1);
    assert!(matches!(short, ClientError::Decode(_)), "{short:?}");
    let body: serde_json::Value =
        serde_json::from_str(&node.received()[1].body).expect("a batch body");
    assert_eq!(body["debits"][1]["account_id"], "acct-1");
    assert_eq!(body["debits"][1]["idempotency_key"], "key-2");
}

#[tokio::test]
async fn health_is_false_when_the_node_is_down_or_unhealthy() {
    let node = FakeNode::start(vec![
        reply(200, json!({})),
        error_reply(503, codes::UNAVAILABLE, None),
    ])
    .await;
    let dead = dead_url().await;
    let client = client_of(&[&node.url], fast_options(3));

    assert!(client.health(&node.url).await.expect("asked"));
    assert!(!client.health(&node.url).await.expect("asked"));
    assert!(!client.health(&dead).await.expect("asked"));
    assert_eq!(
        node.received().len(),
        2,
        "health is asked once, not retried"
    );
}

#[test]
fn base_urls_must_be_absolute_http_urls() {
    for url in ["127.0.0.1:7001", "https://example.org", "not a url"] {
        let error = LedgerClient::new(vec![url.to_owned()]).expect_err(url);
        assert!(matches!(error, ClientError::InvalidBaseUrl { .. }), "{url}");
    }
    assert!(LedgerClient::new(Vec::new()).is_err());
    let client = LedgerClient::new(vec!["http://127.0.0.1:7001/".to_owned()]).expect("valid");
    assert_eq!(client.base_urls(), vec!["http://127.0.0.1:7001".to_owned()]);
}
