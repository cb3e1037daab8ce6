//! The ledger, through its public HTTP API (`ledger-client`), as any outside client sees it.
//!
//! Routing: with [`Route::Leader`] every request goes to the node that leads its account's shard
//! (`ledger_core::shard_for_account` and the leaders of `GET /admin/cluster`, refreshed every
//! second), so no request pays a forwarding hop; a batch is split by leader into one request per
//! node, sent concurrently. With [`Route::Any`] requests rotate over the given nodes and the
//! ledger forwards what it does not lead, as it would for a client that knows nothing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use ledger_api::{
    BatchDebitItem, BatchDebitResult, ClusterResponse, CreateGrantRequest, DebitRequest,
    STATUS_ACCEPTED,
};
use ledger_client::{
    BatchingOptions, ClientError, ClientOptions, DebitBatcher, LedgerClient,
    UNRECOGNIZED_ERROR_BODY,
};
use serde::Serialize;

use super::{
    all_failed, DebitItem, Driver, DriverError, ItemOutcome, OperationResult, ReservationItem,
};
use crate::workload::{account_id, OperationKind};

const SYSTEM: &str = "ledger";

/// The grant that setup gives every account; its id makes setup idempotent.
pub const SETUP_GRANT_ID: &str = "loadgen-grant";

/// How often the leader map is refreshed during a run.
const LEADER_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// Where requests go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// To the leader of the account's shard (split batches by leader).
    Leader,
    /// Round-robin over the given nodes; the ledger forwards.
    Any,
}

impl Route {
    pub fn from_name(name: &str) -> Option<Route> {
        match name {
            "leader" => Some(Route::Leader),
            "any" => Some(Route::Any),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Route::Leader => "leader",
            Route::Any => "any",
        }
    }
}

/// Settings of the ledger driver.
#[derive(Clone, Debug)]
pub struct LedgerDriverOptions {
    pub route: Route,
    /// Deadline of one HTTP attempt.
    pub request_timeout_ms: u64,
    /// Attempts per measured request (1 = no retries, so that overload shows as errors instead
    /// of hiding in the latency). Setup always retries.
    pub attempts: u32,
    /// How long to wait for every shard to have a leader before giving up.
    pub ready_timeout_ms: u64,
    /// Send single debits through the client's [`DebitBatcher`] (one per node): concurrent
    /// calls travel together as batch requests.
    pub auto_batch: Option<BatchingOptions>,
}

/// One node of the cluster and the clients bound to it alone.
struct NodeClients {
    url: String,
    measured: LedgerClient,
    setup: LedgerClient,
    /// The measured client's batcher, with `auto_batch`.
    batcher: Option<DebitBatcher>,
}

/// The ledger driver. Create it with [`LedgerDriver::connect`].
pub struct LedgerDriver {
    nodes: Vec<NodeClients>,
    /// All the given nodes, round-robin (for [`Route::Any`]).
    any: LedgerClient,
    /// `any`'s batcher, with `auto_batch`.
    any_batcher: Option<DebitBatcher>,
    route: Route,
    shard_count: u32,
    /// Index into `nodes` of each shard's leader; `usize::MAX` while unknown.
    leaders: Vec<AtomicUsize>,
    /// Round-robin cursor for accounts whose leader is unknown.
    next_node: AtomicUsize,
}

const UNKNOWN_LEADER: usize = usize::MAX;

impl LedgerDriver {
    /// Connects to the cluster at `node_urls`, waits until every shard has a leader, and starts
    /// refreshing the leader map in the background (until the driver is dropped).
    pub async fn connect(
        node_urls: Vec<String>,
        options: LedgerDriverOptions,
    ) -> Result<Arc<LedgerDriver>, DriverError> {
        let connect_error = |address: String, reason: String| DriverError::Connect {
            system: SYSTEM,
            address,
            reason,
        };
        let measured_options = ClientOptions {
            request_timeout_ms: options.request_timeout_ms,
            max_attempts: options.attempts.max(1),
            ..ClientOptions::default()
        };
        let setup_options = ClientOptions {
            request_timeout_ms: options.request_timeout_ms,
            ..ClientOptions::default()
        };
        let any = LedgerClient::with_options(node_urls.clone(), measured_options.clone())
            .map_err(|error| connect_error(node_urls.join(","), error.to_string()))?;
        let given_urls = any.base_urls();

        let started = Instant::now();
        let deadline = started + Duration::from_millis(options.ready_timeout_ms);
        let clusters = loop {
            let clusters = fetch_clusters(&any, &given_urls).await;
            let last_problem = match &clusters {
                Ok(clusters) => match leaderless_shards(clusters) {
                    None => break clusters.clone(),
                    Some(problem) => problem,
                },
                Err(problem) => problem.clone(),
            };
            if Instant::now() >= deadline {
                return Err(DriverError::NotReady {
                    system: SYSTEM,
                    waited_ms: started.elapsed().as_millis() as u64,
                    reason: last_problem,
                });
            }
            // Polling a condition with a deadline: an election takes a few hundred ms.
            tokio::time::sleep(Duration::from_millis(200)).await;
        };

        // Every node of the cluster gets clients, also nodes that were not given (the leader
        // of a shard may be any of them); a given URL is kept as given.
        let mut urls: Vec<String> = Vec::new();
        for cluster in &clusters {
            for node in &cluster.nodes {
                let url = format!("http://{}", node.http_addr);
                if !urls.contains(&url) {
                    urls.push(url);
                }
            }
        }
        let mut nodes = Vec::new();
        for url in urls {
            let measured = LedgerClient::with_options(vec![url.clone()], measured_options.clone())
                .map_err(|error| connect_error(url.clone(), error.to_string()))?;
            let setup = LedgerClient::with_options(vec![url.clone()], setup_options.clone())
                .map_err(|error| connect_error(url.clone(), error.to_string()))?;
            let batcher = options
                .auto_batch
                .map(|batching| DebitBatcher::new(measured.clone(), batching));
            nodes.push(NodeClients {
                url,
                measured,
                setup,
                batcher,
            });
        }
        let shard_count = clusters
            .iter()
            .flat_map(|cluster| cluster.shards.iter().map(|shard| shard.shard_id + 1))
            .max()
            .unwrap_or(1);
        let any_batcher = options
            .auto_batch
            .map(|batching| DebitBatcher::new(any.clone(), batching));
        let driver = Arc::new(LedgerDriver {
            nodes,
            any,
            any_batcher,
            route: options.route,
            shard_count,
            leaders: (0..shard_count)
                .map(|_| AtomicUsize::new(UNKNOWN_LEADER))
                .collect(),
            next_node: AtomicUsize::new(0),
        });
        driver.update_leaders(&clusters);
        if options.route == Route::Leader {
            tokio::spawn(refresh_leaders(Arc::downgrade(&driver)));
        }
        Ok(driver)
    }

    pub fn shard_count(&self) -> u32 {
        self.shard_count
    }

    fn update_leaders(&self, clusters: &[ClusterResponse]) {
        let node_ids: BTreeMap<u64, usize> = clusters
            .iter()
            .flat_map(|cluster| cluster.nodes.iter())
            .filter_map(|node| {
                let url = format!("http://{}", node.http_addr);
                self.nodes
                    .iter()
                    .position(|known| known.url == url)
                    .map(|index| (node.id, index))
            })
            .collect();
        for cluster in clusters {
            for shard in &cluster.shards {
                let Some(slot) = self.leaders.get(shard.shard_id as usize) else {
                    continue;
                };
                if let Some(index) = shard.leader.and_then(|leader| node_ids.get(&leader)) {
                    slot.store(*index, Ordering::Relaxed);
                }
            }
        }
    }

    /// The node that should receive a request about `account_id`.
    fn node_for(&self, account_id: &str) -> usize {
        if self.route == Route::Leader {
            let shard = ledger_core::shard_for_account(account_id, self.shard_count);
            let leader = self.leaders[shard as usize].load(Ordering::Relaxed);
            if leader != UNKNOWN_LEADER {
                return leader;
            }
        }
        self.next_node.fetch_add(1, Ordering::Relaxed) % self.nodes.len()
    }

    fn measured_client(&self, account_id: &str) -> &LedgerClient {
        match self.route {
            Route::Leader => &self.nodes[self.node_for(account_id)].measured,
            Route::Any => &self.any,
        }
    }

    fn measured_batcher(&self, account_id: &str) -> Option<&DebitBatcher> {
        match self.route {
            Route::Leader => self.nodes[self.node_for(account_id)].batcher.as_ref(),
            Route::Any => self.any_batcher.as_ref(),
        }
    }

    async fn post_json<T: Serialize>(
        &self,
        node: usize,
        path: &str,
        body: &T,
    ) -> Result<ledger_client::RawResponse, ClientError> {
        let body = serde_json::to_string(body)
            .map_err(|error| ClientError::Transport(format!("encoding the request: {error}")))?;
        let node = &self.nodes[node];
        node.measured.post_raw(&node.url, path, &body).await
    }
}

/// `GET /admin/cluster?digest=false` of every given node that answers; an error only if none
/// does.
async fn fetch_clusters(
    client: &LedgerClient,
    urls: &[String],
) -> Result<Vec<ClusterResponse>, String> {
    let answers =
        futures::future::join_all(urls.iter().map(|url| client.cluster_without_digests(url))).await;
    let mut clusters = Vec::new();
    let mut problems = Vec::new();
    for (url, answer) in urls.iter().zip(answers) {
        match answer {
            Ok(cluster) => clusters.push(cluster),
            Err(error) => problems.push(format!("{url}: {error}")),
        }
    }
    if clusters.is_empty() {
        return Err(problems.join("; "));
    }
    Ok(clusters)
}

/// `None` when every shard known to any node has a leader, else which ones lack one.
fn leaderless_shards(clusters: &[ClusterResponse]) -> Option<String> {
    let mut has_leader: BTreeMap<u32, bool> = BTreeMap::new();
    for cluster in clusters {
        for shard in &cluster.shards {
            *has_leader.entry(shard.shard_id).or_default() |= shard.leader.is_some();
        }
    }
    if has_leader.is_empty() {
        return Some("no shards reported yet".to_owned());
    }
    let leaderless: Vec<String> = has_leader
        .iter()
        .filter(|(_, has)| !**has)
        .map(|(shard, _)| shard.to_string())
        .collect();
    if leaderless.is_empty() {
        None
    } else {
        Some(format!("shards without a leader: {}", leaderless.join(",")))
    }
}

/// Keeps the leader map fresh while the driver lives. A failed refresh keeps the old map:
/// requests to a former leader are forwarded by the ledger anyway.
async fn refresh_leaders(driver: Weak<LedgerDriver>) {
    loop {
        tokio::time::sleep(LEADER_REFRESH_INTERVAL).await;
        let Some(driver) = driver.upgrade() else {
            return;
        };
        let urls: Vec<String> = driver.nodes.iter().map(|node| node.url.clone()).collect();
        if let Ok(clusters) = fetch_clusters(&driver.any, &urls).await {
            driver.update_leaders(&clusters);
        }
    }
}

/// The name of a failure in `errors_by_kind`: `http_{status}_{code}` for an answer,
/// `timeout`, `connection_failed`, ... for the rest.
pub fn error_kind(error: &ClientError) -> String {
    match error {
        ClientError::Api { status, code, .. } => format!("http_{status}_{code}"),
        ClientError::Unavailable { last, .. } => {
            if last.contains("timed out") {
                "timeout".to_owned()
            } else if last.contains("connection failed") {
                "connection_failed".to_owned()
            } else if let Some(kind) = answer_kind(last) {
                kind
            } else {
                "unavailable".to_owned()
            }
        }
        ClientError::Transport(_) => "transport".to_owned(),
        ClientError::Decode(_) => "decode".to_owned(),
        ClientError::InvalidBaseUrl { .. } => "invalid_base_url".to_owned(),
    }
}

/// `http_503_no_leader` from an `Unavailable` description such as
/// `http://127.0.0.1:7001/: 503 no_leader: shard 3 has no leader`.
fn answer_kind(description: &str) -> Option<String> {
    description.split(": ").find_map(|part| {
        let mut words = part.split_whitespace();
        let status: u16 = words.next()?.parse().ok()?;
        let code = words.next()?;
        (100..600)
            .contains(&status)
            .then(|| format!("http_{status}_{code}"))
    })
}

fn raw_kind(response: &ledger_client::RawResponse) -> String {
    let code = response
        .error_code()
        .unwrap_or_else(|| UNRECOGNIZED_ERROR_BODY.to_owned());
    format!("http_{}_{code}", response.status)
}

fn batch_item_outcome(result: &BatchDebitResult) -> ItemOutcome {
    match (&result.outcome, &result.error) {
        (Some(outcome), _) if outcome.status == STATUS_ACCEPTED => ItemOutcome::Accepted,
        (Some(outcome), _) => ItemOutcome::rejected(outcome.code.as_deref().unwrap_or("rejected")),
        (None, Some(error)) => {
            ItemOutcome::failed(format!("http_{}_{}", result.http_status, error.code))
        }
        (None, None) => ItemOutcome::failed(format!("http_{}", result.http_status)),
    }
}

fn to_batch_item(item: DebitItem) -> BatchDebitItem {
    BatchDebitItem {
        account_id: item.account_id,
        debit: DebitRequest {
            idempotency_key: item.idempotency_key,
            amount: Some(item.amount),
            feature: None,
            quantity: None,
        },
    }
}

impl Driver for LedgerDriver {
    fn describe(&self) -> String {
        format!(
            "ledger: {} nodes, {} shards, route {}",
            self.nodes.len(),
            self.shard_count,
            self.route.name()
        )
    }

    async fn setup(
        &self,
        accounts: u64,
        credits_per_account: u64,
        concurrency: usize,
    ) -> Result<(), DriverError> {
        let grant = CreateGrantRequest::new(SETUP_GRANT_ID, credits_per_account, "purchase");
        let grant = &grant;
        futures::stream::iter(0..accounts)
            .map(Ok)
            .try_for_each_concurrent(concurrency.max(1), |index| async move {
                let account = account_id(index);
                let client = &self.nodes[self.node_for(&account)].setup;
                let failed = |error: ClientError| DriverError::Setup {
                    system: SYSTEM,
                    account_id: account.clone(),
                    reason: error.to_string(),
                };
                client
                    .create_account(&account, None)
                    .await
                    .map_err(failed)?;
                client.grant(&account, grant).await.map_err(failed)?;
                Ok(())
            })
            .await
    }

    async fn debit(&self, item: DebitItem) -> OperationResult {
        let client = self.measured_client(&item.account_id);
        let request = DebitRequest {
            idempotency_key: item.idempotency_key,
            amount: Some(item.amount),
            feature: None,
            quantity: None,
        };
        let answer = match self.measured_batcher(&item.account_id) {
            Some(batcher) => batcher.debit(&item.account_id, request).await,
            None => client.debit_request(&item.account_id, &request).await,
        };
        let outcome = match answer {
            Ok(response) if response.status == STATUS_ACCEPTED => ItemOutcome::Accepted,
            Ok(response) => ItemOutcome::rejected(response.code.as_deref().unwrap_or("rejected")),
            Err(error) => ItemOutcome::failed(error_kind(&error)),
        };
        OperationResult {
            kind: OperationKind::Debit,
            outcomes: vec![outcome],
            requests: 1,
        }
    }

    async fn debit_batch(&self, items: Vec<DebitItem>) -> OperationResult {
        let count = items.len();
        if self.route == Route::Any {
            let items: Vec<BatchDebitItem> = items.into_iter().map(to_batch_item).collect();
            return match self.any.batch_debits(&items).await {
                Ok(response) => OperationResult {
                    kind: OperationKind::Debit,
                    outcomes: response.results.iter().map(batch_item_outcome).collect(),
                    requests: 1,
                },
                Err(error) => all_failed(OperationKind::Debit, count, &error_kind(&error)),
            };
        }
        // One request per leader, sent together; the operation ends when the last answers.
        let mut groups: BTreeMap<usize, (Vec<usize>, Vec<BatchDebitItem>)> = BTreeMap::new();
        for (position, item) in items.into_iter().enumerate() {
            let group = groups.entry(self.node_for(&item.account_id)).or_default();
            group.0.push(position);
            group.1.push(to_batch_item(item));
        }
        let requests = groups.len() as u32;
        let answers = futures::future::join_all(groups.into_iter().map(
            |(node, (positions, batch))| async move {
                let answer = self.nodes[node].measured.batch_debits(&batch).await;
                (positions, answer)
            },
        ))
        .await;
        let mut outcomes = vec![ItemOutcome::failed("missing_result"); count];
        for (positions, answer) in answers {
            match answer {
                Ok(response) => {
                    for (position, result) in positions.into_iter().zip(&response.results) {
                        outcomes[position] = batch_item_outcome(result);
                    }
                }
                Err(error) => {
                    let kind = error_kind(&error);
                    for position in positions {
                        outcomes[position] = ItemOutcome::failed(kind.clone());
                    }
                }
            }
        }
        OperationResult {
            kind: OperationKind::Debit,
            outcomes,
            requests,
        }
    }

    async fn read(&self, account_id: String) -> OperationResult {
        let outcome = match self
            .measured_client(&account_id)
            .get_account(&account_id)
            .await
        {
            Ok(_) => ItemOutcome::Accepted,
            Err(error) => ItemOutcome::failed(error_kind(&error)),
        };
        OperationResult {
            kind: OperationKind::Read,
            outcomes: vec![outcome],
            requests: 1,
        }
    }

    async fn reserve_and_commit(&self, reservation: ReservationItem) -> OperationResult {
        #[derive(Serialize)]
        struct ReserveBody<'a> {
            reservation_id: &'a str,
            amount: u64,
            ttl_ms: u64,
        }
        #[derive(Serialize)]
        struct CommitBody {
            amount: u64,
        }
        let result = |outcome: ItemOutcome, requests: u32| OperationResult {
            kind: OperationKind::Reserve,
            outcomes: vec![outcome],
            requests,
        };
        // The reservation endpoints are not in `ledger-client` yet: one attempt each, raw.
        let node = self.node_for(&reservation.account_id);
        let account = &reservation.account_id;
        let reserve = self
            .post_json(
                node,
                &format!("/v1/accounts/{account}/reservations"),
                &ReserveBody {
                    reservation_id: &reservation.reservation_id,
                    amount: reservation.amount,
                    ttl_ms: reservation.ttl_ms,
                },
            )
            .await;
        match reserve {
            Ok(response) if matches!(response.status, 200 | 201) => {}
            Ok(response) if response.status == 402 => {
                let code = response
                    .error_code()
                    .unwrap_or_else(|| "insufficient_credits".to_owned());
                return result(ItemOutcome::rejected(code), 1);
            }
            Ok(response) => return result(ItemOutcome::failed(raw_kind(&response)), 1),
            Err(error) => return result(ItemOutcome::failed(error_kind(&error)), 1),
        }
        let commit = self
            .post_json(
                node,
                &format!(
                    "/v1/accounts/{account}/reservations/{}/commit",
                    reservation.reservation_id
                ),
                &CommitBody {
                    amount: reservation.commit_amount,
                },
            )
            .await;
        let outcome = match commit {
            Ok(response) if response.status == 200 => ItemOutcome::Accepted,
            Ok(response) => ItemOutcome::failed(raw_kind(&response)),
            Err(error) => ItemOutcome::failed(error_kind(&error)),
        };
        result(outcome, 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_name_the_failure() {
        let table = [
            (
                ClientError::Api {
                    status: 429,
                    code: "overloaded".into(),
                    message: "queue full".into(),
                },
                "http_429_overloaded",
            ),
            (
                ClientError::Unavailable {
                    attempts: 1,
                    last: "http://127.0.0.1:7001/: 503 no_leader: shard 3 has no leader".into(),
                    may_have_applied: false,
                },
                "http_503_no_leader",
            ),
            (
                ClientError::Unavailable {
                    attempts: 1,
                    last: "http://127.0.0.1:7001/: timed out: operation timed out".into(),
                    may_have_applied: true,
                },
                "timeout",
            ),
            (
                ClientError::Unavailable {
                    attempts: 1,
                    last: "http://127.0.0.1:7001/: connection failed: refused".into(),
                    may_have_applied: false,
                },
                "connection_failed",
            ),
            (
                ClientError::Unavailable {
                    attempts: 1,
                    last: "http://127.0.0.1:7001/: request failed: reset".into(),
                    may_have_applied: true,
                },
                "unavailable",
            ),
            (ClientError::Decode("truncated".into()), "decode"),
        ];
        for (error, kind) in table {
            assert_eq!(error_kind(&error), kind, "{error}");
        }
    }

    #[test]
    fn leaderless_shards_are_named() {
        let cluster = |leaders: &[Option<u64>]| ClusterResponse {
            node_id: 1,
            nodes: vec![],
            shards: leaders
                .iter()
                .enumerate()
                .map(|(shard, leader)| ledger_api::ShardInfo {
                    shard_id: shard as u32,
                    leader: *leader,
                    members: vec![1],
                    last_applied: None,
                    digest: String::new(),
                })
                .collect(),
            map: None,
        };
        assert_eq!(leaderless_shards(&[cluster(&[Some(1), Some(2)])]), None);
        assert_eq!(
            leaderless_shards(&[cluster(&[Some(1), None, None])]),
            Some("shards without a leader: 1,2".to_owned())
        );
        // One node that knows the leader is enough.
        assert_eq!(
            leaderless_shards(&[cluster(&[None, Some(1)]), cluster(&[Some(3), None])]),
            None
        );
        assert!(leaderless_shards(&[]).is_some());
    }
}
