//! The credit semantics end to end: a three-node in-process cluster driven through HTTP, every
//! request sent to a node chosen round-robin (so most are forwarded to a shard leader). Periods
//! of two seconds make resets, expiries and reservation time-outs observable without faking any
//! clock; the test waits for each with a deadline, never for a fixed time.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use axum::body::Bytes;
use axum::http::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};
use support::*;

/// A JSON client that spreads requests over the nodes.
struct Api {
    client: reqwest::Client,
    urls: Vec<String>,
    next: AtomicUsize,
}

impl Api {
    fn new(urls: Vec<String>) -> Api {
        Api {
            client: reqwest::Client::new(),
            urls,
            next: AtomicUsize::new(0),
        }
    }

    /// Sends the request, retrying while the cluster answers 503 (a leader change), and returns
    /// the status and the JSON body.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let node = self.next.fetch_add(1, Ordering::Relaxed) % self.urls.len();
            let mut request = self
                .client
                .request(method.clone(), format!("{}{path}", self.urls[node]));
            if let Some(body) = &body {
                request = request.json(body);
            }
            let answer = request
                .send()
                .await
                .with_context(|| format!("{method} {path}"))?;
            let status = answer.status().as_u16();
            let text = answer.text().await?;
            if status == 503 && Instant::now() < deadline {
                tokio::task::yield_now().await;
                continue;
            }
            let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            return Ok((status, value));
        }
    }

    async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let (status, value) = self.call(method.clone(), path, body).await?;
        ensure!(
            (200..300).contains(&status),
            "{method} {path}: {status} {value}"
        );
        Ok(value)
    }

    async fn get(&self, path: &str) -> Result<Value> {
        self.ok(Method::GET, path, None).await
    }

    /// Polls `path` until `done` holds for its answer.
    async fn wait_for(
        &self,
        path: &str,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let value = self.get(path).await?;
            if done(&value) {
                return Ok(value);
            }
            if Instant::now() > deadline {
                bail!("{what}: not reached within {DEADLINE:?}; last answer {value}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn events(&self) -> Result<Vec<Value>> {
        let mut all = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = self
                .get(&format!("/v1/events?after={cursor}&limit=1000"))
                .await?;
            let events = page["events"].as_array().cloned().unwrap_or_default();
            cursor = page["next"].as_str().unwrap_or_default().to_owned();
            if events.is_empty() {
                return Ok(all);
            }
            all.extend(events);
        }
    }
}

fn entries_of_kind<'a>(entries: &'a Value, kind: &str) -> Vec<&'a Value> {
    entries["entries"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|entry| entry["kind"] == kind)
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_card_plans_reservations_limits_alerts_and_reports_through_http() -> Result<()> {
    let cluster = TestCluster::start(3).await?;
    let api = Api::new(cluster.urls());

    // Rate card: versioned; a debit is priced by the version in force and the journal says which.
    let card = api
        .ok(
            Method::PUT,
            "/v1/rate-card",
            Some(json!({"features": {"image": {"credits_per_unit": 10}}})),
        )
        .await?;
    ensure!(card["version"] == 1, "first rate card is version 1: {card}");
    let same = api
        .ok(
            Method::PUT,
            "/v1/rate-card",
            Some(json!({"features": {"image": {"credits_per_unit": 10}}})),
        )
        .await?;
    ensure!(
        same["version"] == 1 && same["replayed"] == true,
        "same card is a replay: {same}"
    );

    // A plan of 1,000 credits every 2 s, 100 of the unused allowance rolled over.
    api.ok(
        Method::PUT,
        "/v1/plans/pro",
        Some(json!({"credits_per_period": 1000, "period": "PT2S", "rollover_max": 100})),
    )
    .await?;
    api.ok(
        Method::POST,
        "/v1/accounts",
        Some(json!({"account_id": "acme"})),
    )
    .await?;
    let subscribed = api
        .ok(
            Method::PUT,
            "/v1/accounts/acme/subscription",
            Some(json!({"plan_id": "pro"})),
        )
        .await?;
    ensure!(
        subscribed["available"] == 1000,
        "first allowance granted now: {subscribed}"
    );
    // Hybrid: a purchased top-up next to the plan.
    api.ok(
        Method::POST,
        "/v1/accounts/acme/grants",
        Some(json!({"grant_id": "topup-1", "amount": 500, "source": "purchase"})),
    )
    .await?;

    let debit = api
        .ok(
            Method::POST,
            "/v1/accounts/acme/debits",
            Some(json!({"idempotency_key": "img-1", "feature": "image", "quantity": 3})),
        )
        .await?;
    ensure!(
        debit["amount"] == 30 && debit["rate_card_version"] == 1,
        "{debit}"
    );
    let card = api
        .ok(
            Method::PUT,
            "/v1/rate-card",
            Some(json!({"features": {"image": {"credits_per_unit": 12}}})),
        )
        .await?;
    ensure!(card["version"] == 2, "a new price is a new version: {card}");
    let debit = api
        .ok(
            Method::POST,
            "/v1/accounts/acme/debits",
            Some(json!({"idempotency_key": "img-2", "feature": "image", "quantity": 1})),
        )
        .await?;
    ensure!(
        debit["amount"] == 12 && debit["rate_card_version"] == 2,
        "{debit}"
    );
    let retry = api
        .ok(
            Method::POST,
            "/v1/accounts/acme/debits",
            Some(json!({"idempotency_key": "img-1", "feature": "image", "quantity": 3})),
        )
        .await?;
    ensure!(
        retry["amount"] == 30 && retry["rate_card_version"] == 1 && retry["replayed"] == true,
        "a retry replays the first pricing: {retry}"
    );
    let old_card = api.get("/v1/rate-card?version=1").await?;
    ensure!(
        old_card["features"]["image"]["credits_per_unit"] == 10,
        "{old_card}"
    );
    let (status, unknown) = api
        .call(
            Method::POST,
            "/v1/accounts/acme/debits",
            Some(json!({"idempotency_key": "vid-1", "feature": "video", "quantity": 1})),
        )
        .await?;
    ensure!(
        status == 400 && unknown["error"]["code"] == "unknown_feature",
        "{status} {unknown}"
    );

    // Reservations: commit less than held releases the rest; more than available is refused.
    let reserved = api
        .ok(
            Method::POST,
            "/v1/accounts/acme/reservations",
            Some(json!({"reservation_id": "stream-1", "amount": 200, "ttl_ms": 60000})),
        )
        .await?;
    ensure!(reserved["status"] == "active", "{reserved}");
    let committed = api
        .ok(
            Method::POST,
            "/v1/accounts/acme/reservations/stream-1/commit",
            Some(json!({"amount": 150})),
        )
        .await?;
    ensure!(
        committed["committed"] == 150 && committed["released"] == 50,
        "{committed}"
    );
    let (status, too_much) = api
        .call(
            Method::POST,
            "/v1/accounts/acme/reservations",
            Some(json!({"reservation_id": "huge", "amount": 1_000_000, "ttl_ms": 1000})),
        )
        .await?;
    ensure!(
        status == 402 && too_much["error"]["code"] == "insufficient_credits",
        "{too_much}"
    );
    // A hold that is never committed is released at its time to live, decided in the log.
    api.ok(
        Method::POST,
        "/v1/accounts/acme/reservations",
        Some(json!({"reservation_id": "stream-2", "amount": 100, "ttl_ms": 300})),
    )
    .await?;
    api.wait_for(
        "/v1/accounts/acme/entries?limit=1000",
        "release at TTL",
        |entries| {
            entries_of_kind(entries, "release")
                .iter()
                .any(|entry| entry["reference"] == "stream-2")
        },
    )
    .await?;
    let (status, late) = api
        .call(
            Method::POST,
            "/v1/accounts/acme/reservations/stream-2/commit",
            Some(json!({"amount": 10})),
        )
        .await?;
    ensure!(
        status == 409 && late["error"]["code"] == "reservation_expired",
        "{status} {late}"
    );

    // Period resets: the next allowance is granted and at most 100 unused credits roll over.
    let reset = api
        .wait_for(
            "/v1/accounts/acme/entries?limit=1000",
            "a period reset",
            |entries| {
                entries_of_kind(entries, "grant")
                    .iter()
                    .any(|entry| entry["reference"] == "~1~pro~1~rollover")
            },
        )
        .await?;
    let rollover = entries_of_kind(&reset, "grant")
        .into_iter()
        .find(|entry| entry["reference"] == "~1~pro~1~rollover")
        .context("rollover grant")?;
    ensure!(
        rollover["amount"] == 100,
        "rollover capped at 100: {rollover}"
    );
    ensure!(
        entries_of_kind(&reset, "expire")
            .iter()
            .any(|entry| entry["reference"] == "~1~pro~0"),
        "the unused allowance expired as a journal entry: {reset}"
    );

    // Spend limits: soft crossing is an event, hard is a 402 and is never exceeded.
    api.ok(
        Method::POST,
        "/v1/accounts",
        Some(json!({"account_id": "team"})),
    )
    .await?;
    api.ok(
        Method::POST,
        "/v1/accounts/team/grants",
        Some(json!({"grant_id": "g", "amount": 1000, "source": "manual"})),
    )
    .await?;
    api.ok(
        Method::PUT,
        "/v1/accounts/team/limits",
        Some(json!({"period": "P1D", "soft": 50, "hard": 100, "scope": "customer"})),
    )
    .await?;
    api.ok(
        Method::PUT,
        "/v1/accounts/team/alerts",
        Some(json!({"low_balance": [950, 500], "auto_top_up_below": 960})),
    )
    .await?;
    for key in 0..3 {
        api.ok(
            Method::POST,
            "/v1/accounts/team/debits",
            Some(json!({"idempotency_key": format!("t{key}"), "amount": 30})),
        )
        .await?;
    }
    let (status, limited) = api
        .call(
            Method::POST,
            "/v1/accounts/team/debits",
            Some(json!({"idempotency_key": "t3", "amount": 30})),
        )
        .await?;
    ensure!(
        status == 402 && limited["error"]["code"] == "spend_limit_exceeded",
        "{limited}"
    );
    let team = api.get("/v1/accounts/team").await?;
    ensure!(team["consumed"] == 90 && team["available"] == 910, "{team}");

    // Events: decided once in the log, listed in order across shards. The journal above shows
    // the reset as of now (a read settles the account on a copy); the event exists once a tick
    // has applied the reset, so wait for that.
    let deadline = Instant::now() + DEADLINE;
    let events = loop {
        let events = api.events().await?;
        let resets = events
            .iter()
            .filter(|event| event["account_id"] == "acme" && event["type"] == "allowance_reset")
            .count();
        if resets >= 2 {
            break events;
        }
        if Instant::now() > deadline {
            bail!("no period reset event within {DEADLINE:?}: {events:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let of = |account: &str, kind: &str| {
        events
            .iter()
            .filter(|event| event["account_id"] == account && event["type"] == kind)
            .count()
    };
    ensure!(
        of("team", "soft_limit_reached") == 1,
        "one soft crossing: {events:?}"
    );
    ensure!(
        of("team", "hard_limit_reached") == 1,
        "one hard event: {events:?}"
    );
    ensure!(
        of("team", "low_balance") == 1,
        "950 crossed once, 500 not: {events:?}"
    );
    ensure!(
        of("team", "auto_top_up_wanted") == 1,
        "one top-up wanted: {events:?}"
    );
    let ids: BTreeSet<&str> = events
        .iter()
        .filter_map(|event| event["id"].as_str())
        .collect();
    ensure!(ids.len() == events.len(), "event ids are unique");

    // Reports: usage per feature, statement (JSON and CSV), balance at a past instant.
    let usage = api.get("/v1/accounts/acme/usage").await?;
    let image = usage["features"]
        .as_array()
        .and_then(|features| {
            features
                .iter()
                .find(|feature| feature["feature"] == "image")
        })
        .context("image usage")?;
    ensure!(image["credits"] == 42 && image["count"] == 2, "{usage}");
    let statement = api
        .get("/v1/accounts/acme/statement?from=0&to=99999999999999")
        .await?;
    ensure!(
        statement["granted"]["purchase"].as_u64() == Some(500),
        "granted by source: {statement}"
    );
    ensure!(
        statement["consumed_total"] == 192,
        "30 + 12 + 150 consumed: {statement}"
    );
    let csv = reqwest::Client::new()
        .get(format!(
            "{}/v1/accounts/acme/statement?from=0&to=99999999999999",
            api.urls[0]
        ))
        .header("accept", "text/csv")
        .send()
        .await?
        .text()
        .await?;
    ensure!(
        csv.starts_with("section,item,credits,count\n") && csv.contains("granted,purchase,500,"),
        "{csv}"
    );
    let before_everything = api.get("/v1/accounts/acme/balance?at=1").await?;
    ensure!(before_everything["balance"] == 0, "{before_everything}");

    cluster.converged_digests().await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pay_as_you_go_seats_voids_releases_and_expiry_warnings_through_http() -> Result<()> {
    let cluster = TestCluster::start(3).await?;
    let api = Api::new(cluster.urls());

    // Pay-as-you-go: no allowance, overage allowed down to the overdraft limit and recorded.
    api.ok(
        Method::POST,
        "/v1/accounts",
        Some(json!({"account_id": "payg"})),
    )
    .await?;
    let (status, blocked) = api
        .call(
            Method::POST,
            "/v1/accounts/payg/debits",
            Some(json!({"idempotency_key": "p0", "amount": 5})),
        )
        .await?;
    ensure!(
        status == 402 && blocked["error"]["code"] == "insufficient_credits",
        "{blocked}"
    );
    let patched = api
        .ok(
            Method::PATCH,
            "/v1/accounts/payg",
            Some(json!({"overdraft_limit": 100})),
        )
        .await?;
    ensure!(patched["overdraft_limit"] == 100, "{patched}");
    let debit = api
        .ok(
            Method::POST,
            "/v1/accounts/payg/debits",
            Some(json!({"idempotency_key": "p1", "amount": 70})),
        )
        .await?;
    ensure!(debit["available"] == -70, "{debit}");
    let (status, over) = api
        .call(
            Method::POST,
            "/v1/accounts/payg/debits",
            Some(json!({"idempotency_key": "p2", "amount": 31})),
        )
        .await?;
    ensure!(
        status == 402 && over["error"]["code"] == "insufficient_credits",
        "{over}"
    );
    let (status, in_use) = api
        .call(
            Method::PATCH,
            "/v1/accounts/payg",
            Some(json!({"overdraft_limit": 50})),
        )
        .await?;
    ensure!(
        status == 409 && in_use["error"]["code"] == "overdraft_in_use",
        "{in_use}"
    );
    let statement = api
        .get("/v1/accounts/payg/statement?from=0&to=99999999999999")
        .await?;
    ensure!(
        statement["overage"] == 70 && statement["closing_balance"] == -70,
        "{statement}"
    );
    let before_debit = api.get("/v1/accounts/payg/entries").await?;
    let debit_at = before_debit["entries"][0]["at"]
        .as_str()
        .context("entry time")?
        .to_owned();
    let balance = api
        .get(&format!(
            "/v1/accounts/payg/balance?at={}",
            urlencode(&debit_at)
        ))
        .await?;
    ensure!(
        balance["balance"] == -70,
        "balance right after the debit: {balance}"
    );

    // Per-seat plan: seats × credits; more seats mid-period add a pro-rated seat grant.
    api.ok(
        Method::PUT,
        "/v1/plans/team",
        Some(json!({"credits_per_period": 100, "period": "P1D", "per_seat": true})),
    )
    .await?;
    api.ok(
        Method::POST,
        "/v1/accounts",
        Some(json!({"account_id": "seats"})),
    )
    .await?;
    let three = api
        .ok(
            Method::PUT,
            "/v1/accounts/seats/subscription",
            Some(json!({"plan_id": "team", "seats": 3})),
        )
        .await?;
    ensure!(three["available"] == 300, "3 seats × 100: {three}");
    let five = api
        .ok(
            Method::PUT,
            "/v1/accounts/seats/subscription",
            Some(json!({"plan_id": "team", "seats": 5})),
        )
        .await?;
    let available = five["available"].as_i64().context("available")?;
    // Two more seats for (almost) the whole day left: just under 200 more, rounded down.
    ensure!((498..=500).contains(&available), "pro-rated seats: {five}");
    ensure!(five["subscription"]["seats"] == 5, "{five}");

    // Void what is left of a grant; a second void is a replay.
    api.ok(
        Method::POST,
        "/v1/accounts/seats/grants",
        Some(json!({"grant_id": "promo-1", "amount": 40, "source": "promo", "priority": 0})),
    )
    .await?;
    api.ok(
        Method::POST,
        "/v1/accounts/seats/debits",
        Some(json!({"idempotency_key": "s1", "amount": 15})),
    )
    .await?;
    let voided = api
        .ok(Method::POST, "/v1/accounts/seats/grants/promo-1/void", None)
        .await?;
    ensure!(
        voided["voided"] == 25 && voided["replayed"] == false,
        "{voided}"
    );
    let again = api
        .ok(Method::POST, "/v1/accounts/seats/grants/promo-1/void", None)
        .await?;
    ensure!(
        again["voided"] == 25 && again["replayed"] == true,
        "{again}"
    );

    // An explicit release gives the whole hold back, and is idempotent.
    api.ok(
        Method::POST,
        "/v1/accounts/seats/reservations",
        Some(json!({"reservation_id": "h1", "amount": 50, "ttl_ms": 60000})),
    )
    .await?;
    let held = api.get("/v1/accounts/seats").await?;
    ensure!(held["reserved"] == 50, "{held}");
    let released = api
        .ok(
            Method::POST,
            "/v1/accounts/seats/reservations/h1/release",
            None,
        )
        .await?;
    ensure!(
        released["status"] == "released" && released["released"] == 50,
        "{released}"
    );
    let again = api
        .ok(
            Method::POST,
            "/v1/accounts/seats/reservations/h1/release",
            None,
        )
        .await?;
    ensure!(again["replayed"] == true, "{again}");
    let after = api.get("/v1/accounts/seats").await?;
    ensure!(
        after["reserved"] == 0
            && after["available"] == held["available"].as_i64().unwrap_or(0) + 50,
        "{after}"
    );

    // The same through the Rust client, whose retries reuse the reservation id.
    let client = ledger_client::LedgerClient::new(cluster.urls())?;
    let request = ledger_api::ReserveRequest {
        reservation_id: "c1".into(),
        amount: 5,
        ttl_ms: 60_000,
    };
    let held = client.reserve("seats", &request).await?;
    ensure!(held.status == "active" && !held.replayed, "{held:?}");
    let again = client.reserve("seats", &request).await?;
    ensure!(again.status == "active" && again.replayed, "{again:?}");
    let commit = ledger_api::CommitRequest {
        amount: Some(5),
        feature: None,
        quantity: None,
    };
    let done = client.commit("seats", "c1", &commit).await?;
    ensure!(
        done.committed == Some(5) && done.released == Some(0),
        "{done:?}"
    );
    let refused = client.release("seats", "c1").await;
    ensure!(
        matches!(
            &refused,
            Err(ledger_client::ClientError::Api { status: 409, code, .. }) if code == "reservation_committed"
        ),
        "{refused:?}"
    );

    // A grant about to expire is announced once, by the tick, without any request on the account.
    api.ok(
        Method::POST,
        "/v1/accounts",
        Some(json!({"account_id": "expiring"})),
    )
    .await?;
    let expires_at = ledger_server_time_in(Duration::from_secs(60));
    api.ok(
        Method::POST,
        "/v1/accounts/expiring/grants",
        Some(
            json!({"grant_id": "trial", "amount": 10, "source": "promo", "expires_at": expires_at}),
        ),
    )
    .await?;
    api.ok(
        Method::PUT,
        "/v1/accounts/expiring/alerts",
        Some(json!({"grant_expiring_within_ms": 3_600_000})),
    )
    .await?;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let warned = api
            .events()
            .await?
            .into_iter()
            .filter(|event| event["account_id"] == "expiring" && event["type"] == "grant_expiring")
            .count();
        if warned == 1 {
            break;
        }
        if Instant::now() > deadline || warned > 1 {
            bail!("{warned} grant_expiring events for one grant");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    cluster.converged_digests().await?;
    cluster.shutdown().await;
    Ok(())
}

/// An RFC 3339 instant `after` from now (UTC, second precision).
fn ledger_server_time_in(after: Duration) -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|now| (now + after).as_secs())
        .unwrap_or(0);
    let format = time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from_unix_timestamp(seconds as i64)
        .ok()
        .and_then(|instant| instant.format(&format).ok())
        .unwrap_or_default()
}

fn urlencode(text: &str) -> String {
    text.replace(':', "%3A").replace('+', "%2B")
}

/// What a webhook receiver got: (event id, signature, body).
type Received = Arc<Mutex<Vec<(String, String, String)>>>;

/// A webhook receiver that refuses deliveries while `accepting` is false.
async fn start_receiver(
    received: Received,
    accepting: Arc<std::sync::atomic::AtomicBool>,
) -> Result<(String, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let received = Arc::clone(&received);
            let accepting = Arc::clone(&accepting);
            async move {
                if !accepting.load(Ordering::SeqCst) {
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                }
                let id = headers
                    .get(ledger_server::EVENT_ID_HEADER)
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                received.lock().expect("lock").push((
                    id,
                    String::new(),
                    String::from_utf8_lossy(&body).into_owned(),
                ));
                axum::http::StatusCode::OK
            }
        }),
    );
    Ok((
        url,
        tokio::spawn(async move { axum::serve(listener, app).await }),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_delivery_continues_after_the_leader_is_gone() -> Result<()> {
    let received: Received = Arc::default();
    let accepting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (url, server) = start_receiver(Arc::clone(&received), Arc::clone(&accepting)).await?;
    let mut cluster = TestCluster::start(3).await?;
    let api = Api::new(cluster.urls());
    api.ok(
        Method::PUT,
        "/v1/webhooks",
        Some(json!({"url": url, "secret": "s"})),
    )
    .await?;
    let accounts: Vec<String> = (0..8).map(|index| format!("w{index}")).collect();
    for account in &accounts {
        api.ok(
            Method::POST,
            "/v1/accounts",
            Some(json!({"account_id": account})),
        )
        .await?;
        api.ok(
            Method::PUT,
            &format!("/v1/accounts/{account}/alerts"),
            Some(json!({"low_balance": [1]})),
        )
        .await?;
    }
    let expected: BTreeSet<String> = api
        .events()
        .await?
        .iter()
        .filter_map(|event| event["id"].as_str().map(str::to_owned))
        .collect();
    ensure!(expected.len() == accounts.len(), "{expected:?}");
    // The receiver refused every delivery so far. Stop the node that leads the most shards:
    // its shards' new leaders must deliver what it never got acknowledged.
    let leaders = cluster.wait_for_leaders().await?;
    let mut led: BTreeMap<u64, usize> = BTreeMap::new();
    for leader in leaders.values() {
        *led.entry(*leader).or_default() += 1;
    }
    let (&stopped, _) = led
        .iter()
        .max_by_key(|(_, count)| **count)
        .context("a leader")?;
    let node = cluster.nodes[(stopped - 1) as usize]
        .take()
        .context("the node runs")?;
    node.shutdown().await;
    accepting.store(true, Ordering::SeqCst);
    let api = Api::new(
        cluster
            .configs
            .iter()
            .filter(|config| config.node_id != stopped)
            .map(|config| format!("http://{}", config.http_addr))
            .collect(),
    );
    let deadline = Instant::now() + DEADLINE;
    loop {
        let got: BTreeSet<String> = received
            .lock()
            .expect("lock")
            .iter()
            .map(|(id, _, _)| id.clone())
            .collect();
        if expected.is_subset(&got) {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "after node {stopped} stopped, webhooks delivered {got:?}, expected {expected:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Still listed, in order, by the survivors.
    let listed = api.events().await?.len();
    ensure!(listed == expected.len(), "{listed} events listed");
    cluster.shutdown().await;
    server.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_are_delivered_as_signed_webhooks_at_least_once() -> Result<()> {
    // A receiver that refuses its first delivery, so that the retry path is exercised.
    let received: Received = Arc::default();
    let refused_once = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let receiver_url = format!("http://{}/hook", listener.local_addr()?);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let received = Arc::clone(&received);
            let refused_once = Arc::clone(&refused_once);
            move |headers: HeaderMap, body: Bytes| async move {
                if refused_once.fetch_add(1, Ordering::SeqCst) == 0 {
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                }
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|value| value.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                received.lock().expect("lock").push((
                    header(ledger_server::EVENT_ID_HEADER),
                    header(ledger_server::SIGNATURE_HEADER),
                    String::from_utf8_lossy(&body).into_owned(),
                ));
                axum::http::StatusCode::OK
            }
        }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let cluster = TestCluster::start(3).await?;
    let api = Api::new(cluster.urls());
    api.ok(
        Method::PUT,
        "/v1/webhooks",
        Some(json!({"url": receiver_url, "secret": "s3cret"})),
    )
    .await?;
    for account in ["a1", "a2", "a3"] {
        api.ok(
            Method::POST,
            "/v1/accounts",
            Some(json!({"account_id": account})),
        )
        .await?;
        api.ok(
            Method::PUT,
            &format!("/v1/accounts/{account}/alerts"),
            Some(json!({"low_balance": [10]})),
        )
        .await?;
    }
    let expected: BTreeSet<String> = api
        .events()
        .await?
        .iter()
        .filter_map(|event| event["id"].as_str().map(str::to_owned))
        .collect();
    ensure!(
        expected.len() == 3,
        "one low-balance event per account: {expected:?}"
    );
    let deadline = Instant::now() + DEADLINE;
    loop {
        let got: BTreeSet<String> = received
            .lock()
            .expect("lock")
            .iter()
            .map(|(id, _, _)| id.clone())
            .collect();
        if got == expected {
            break;
        }
        if Instant::now() > deadline {
            bail!("webhooks delivered {got:?}, expected {expected:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (id, signature, body) in received.lock().expect("lock").iter() {
        let timestamp: u64 = signature
            .strip_prefix("t=")
            .and_then(|rest| rest.split(',').next())
            .and_then(|text| text.parse().ok())
            .with_context(|| format!("signature header of {id}: {signature}"))?;
        ensure!(
            *signature == ledger_server::signature("s3cret", timestamp, body),
            "event {id}: signature does not verify"
        );
        let event: Value = serde_json::from_str(body)?;
        ensure!(
            event["id"] == id.as_str() && event["type"] == "low_balance",
            "{body}"
        );
    }
    cluster.converged_digests().await?;
    cluster.shutdown().await;
    server.abort();
    Ok(())
}
