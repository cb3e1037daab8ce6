//! The node's background work on the shards it leads: `Tick`s when something is due (expiry,
//! reservation time-outs, period resets, alerts), installing the catalog on shards that missed
//! it, and delivering events as signed webhooks.
//!
//! All of it is driven by the replicated state and decided in the log: a tick is proposed when
//! the leader's state says an account is due, and settling twice is harmless; webhook delivery
//! starts after the shard's acknowledged event and records its progress with
//! `AcknowledgeEvents`, so a new leader resumes where the old one's acknowledgements stopped
//! (delivery is at least once).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use ledger_core::{Command, Event, WebhookEndpoint, CATALOG_SHARD};
use ledger_raft::ShardId;
use sha2::Sha256;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::http::event_json;
use crate::node::{NodeContext, ShardReplica};

/// How often the leader looks for due accounts.
const TICK_INTERVAL: Duration = Duration::from_millis(200);
/// How often shards are checked for a missing catalog.
const CATALOG_INTERVAL: Duration = Duration::from_secs(1);
/// How often pending events are looked for.
const WEBHOOK_INTERVAL: Duration = Duration::from_millis(200);
/// Most events delivered per shard per round (then acknowledged with one entry).
const WEBHOOK_BATCH_MAX: usize = 100;
/// Retry back-off of a failing webhook endpoint.
const WEBHOOK_BACKOFF_MIN: Duration = Duration::from_millis(200);
const WEBHOOK_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Longest wait for one proposal.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The header carrying the signature: `t=<unix ms>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub const SIGNATURE_HEADER: &str = "x-ledger-signature";
/// The header carrying the event id (`{shard}-{sequence}`), for receivers to deduplicate.
pub const EVENT_ID_HEADER: &str = "x-ledger-event-id";

/// Starts the background tasks; they end when `shutdown` turns true.
pub fn spawn(context: Arc<NodeContext>, shutdown: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(every(TICK_INTERVAL, shutdown.clone(), {
            let context = Arc::clone(&context);
            move || {
                let context = Arc::clone(&context);
                async move { tick_due_shards(&context).await }
            }
        })),
        tokio::spawn(every(CATALOG_INTERVAL, shutdown.clone(), {
            let context = Arc::clone(&context);
            move || {
                let context = Arc::clone(&context);
                async move { reconcile_catalogs(&context).await }
            }
        })),
        tokio::spawn(deliver_webhooks(context, shutdown)),
    ]
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

fn is_shut_down(shutdown: &watch::Receiver<bool>) -> bool {
    *shutdown.borrow()
}

/// Runs `round` every `interval` until shutdown.
async fn every<F, Fut>(interval: Duration, mut shutdown: watch::Receiver<bool>, mut round: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => round().await,
            _ = shutdown.changed() => {}
        }
        if is_shut_down(&shutdown) {
            return;
        }
    }
}

/// The replicas this node leads now.
fn led_replicas(context: &NodeContext) -> Vec<Arc<ShardReplica>> {
    let mut led: Vec<Arc<ShardReplica>> = context
        .replicas
        .values()
        .into_iter()
        .filter(|replica| replica.current_leader() == Some(context.node_id()))
        .collect();
    led.sort_by_key(|replica| replica.shard);
    led
}

async fn propose(replica: &ShardReplica, command: Command) -> bool {
    match tokio::time::timeout(PROPOSE_TIMEOUT, replica.proposer.propose_and_wait(command)).await {
        Ok(Ok(outcome)) => outcome.result.is_ok(),
        Ok(Err(error)) => {
            tracing::debug!(shard = replica.shard, %error, "background proposal not decided");
            false
        }
        Err(_) => false,
    }
}

/// Proposes a `Tick` to every led shard whose state has an account due by now.
async fn tick_due_shards(context: &NodeContext) {
    let now = now_ms();
    for replica in led_replicas(context) {
        let due = replica.state.read().ledger.next_due_ms();
        if due.is_some_and(|due_ms| due_ms <= now) {
            propose(&replica, Command::Tick).await;
        }
    }
}

/// Installs the catalog shard's catalog on every led shard that has an older one (an
/// installation that a catalog change could not finish, e.g. because its node crashed).
async fn reconcile_catalogs(context: &NodeContext) {
    let Some(catalog) = context
        .replicas
        .get(&CATALOG_SHARD)
        .map(|replica| replica.state.read().ledger.catalog().clone())
    else {
        return;
    };
    for replica in led_replicas(context) {
        if replica.shard == CATALOG_SHARD {
            continue;
        }
        let behind = replica.state.read().ledger.catalog().version < catalog.version;
        if behind {
            tracing::info!(
                shard = replica.shard,
                version = catalog.version,
                "installing the catalog"
            );
            propose(&replica, Command::InstallCatalog(catalog.clone())).await;
        }
    }
}

/// Per shard: when delivery may be tried again, and the current back-off.
#[derive(Default)]
struct Backoff {
    retry_at: Option<Instant>,
    delay: Duration,
}

async fn deliver_webhooks(context: Arc<NodeContext>, mut shutdown: watch::Receiver<bool>) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "webhook client; webhooks are not delivered by this node");
            return;
        }
    };
    let mut backoffs: HashMap<ShardId, Backoff> = HashMap::new();
    let mut ticker = tokio::time::interval(WEBHOOK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => {}
        }
        if is_shut_down(&shutdown) {
            return;
        }
        for replica in led_replicas(&context) {
            let backoff = backoffs.entry(replica.shard).or_default();
            if backoff.retry_at.is_some_and(|at| Instant::now() < at) {
                continue;
            }
            let (endpoint, pending) = {
                let state = replica.state.read();
                let ledger = &state.ledger;
                let acknowledged = ledger.meta().events_acknowledged;
                (
                    ledger.catalog().webhook.clone(),
                    ledger
                        .events_after(acknowledged, WEBHOOK_BATCH_MAX)
                        .to_vec(),
                )
            };
            let Some(endpoint) = endpoint else { continue };
            if pending.is_empty() {
                continue;
            }
            let delivered = deliver(&client, &endpoint, replica.shard, &pending).await;
            if let Some(through_seq) = delivered {
                propose(&replica, Command::AcknowledgeEvents { through_seq }).await;
            }
            if delivered != pending.last().map(|event| event.sequence) {
                backoff.delay = (backoff.delay * 2).clamp(WEBHOOK_BACKOFF_MIN, WEBHOOK_BACKOFF_MAX);
                backoff.retry_at = Some(Instant::now() + backoff.delay);
            } else {
                *backoff = Backoff::default();
            }
        }
    }
}

/// Posts `events` in order until one fails; returns the sequence of the last one acknowledged
/// by a 2xx answer.
async fn deliver(
    client: &reqwest::Client,
    endpoint: &WebhookEndpoint,
    shard: ShardId,
    events: &[Event],
) -> Option<u64> {
    let mut delivered = None;
    for event in events {
        let body = event_json(shard, event).to_string();
        let timestamp = now_ms();
        let answer = client
            .post(&endpoint.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(EVENT_ID_HEADER, format!("{shard}-{}", event.sequence))
            .header(
                SIGNATURE_HEADER,
                signature(&endpoint.secret, timestamp, &body),
            )
            .body(body)
            .send()
            .await;
        match answer {
            Ok(answer) if answer.status().is_success() => delivered = Some(event.sequence),
            Ok(answer) => {
                tracing::warn!(shard, url = %endpoint.url, status = %answer.status(), "webhook refused; will retry");
                break;
            }
            Err(error) => {
                tracing::warn!(shard, url = %endpoint.url, %error, "webhook not delivered; will retry");
                break;
            }
        }
    }
    delivered
}

/// `t=<unix ms>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`: the timestamp is signed with the
/// body so that a receiver can refuse replays of old deliveries.
pub fn signature(secret: &str, timestamp_ms: u64, body: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(timestamp_ms.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!(
        "t={timestamp_ms},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The MAC is RFC 4231's HMAC-SHA256 (pinned by test case 2), over "<t>.<body>".
    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        let mut reference = Hmac::<Sha256>::new_from_slice(b"Jefe").expect("key");
        reference.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(reference.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let mut framed = Hmac::<Sha256>::new_from_slice(b"secret").expect("key");
        framed.update(b"1700000000000.{\"a\":1}");
        let expected = format!(
            "t=1700000000000,v1={}",
            hex::encode(framed.finalize().into_bytes())
        );
        assert_eq!(
            signature("secret", 1_700_000_000_000, "{\"a\":1}"),
            expected
        );
    }
}
