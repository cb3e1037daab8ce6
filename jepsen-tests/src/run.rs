//! One run, start to end: get `ledgerd`, start the cluster, set up accounts, run the workloads
//! and the nemesis until the time limit, heal, read the final state, check, and write the run
//! directory (`history.jsonl`, `nemesis.jsonl`, node logs, `report.txt`, `latency.svg`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledger_api::STATUS_ACCEPTED;
use ledger_client::{ClientOptions, LedgerClient};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::Mutex;

use crate::checker::{self, CheckResult, FinalState, Lookup, ReservationLookup, Verdict};
use crate::clock::{self, Faketime};
use crate::cluster::{Cluster, ClusterOptions, NetworkMode};
use crate::error::HarnessError;
use crate::history::{self, AccountSnapshot, Operation, Recorder, Request, Workload};
use crate::ledgerd_binary;
use crate::nemesis::{self, FaultKind, Nemesis, NemesisEvent, Phase, Schedule};
use crate::report::{self, ReportInput};
use crate::workload::{self, bank, linear, ClientContext, NodeClients};

/// Bound of waiting for the cluster to serve (start, and recovery after healing).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound of waiting for replicas to reach the same applied index after healing.
pub const CONVERGENCE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound of a stall while reading the final state (every account, every debit key, every
/// reservation: hundreds of thousands of reads that take minutes on a healthy cluster). A shard
/// that never recovers would make each read retry for minutes, so once no read has been
/// answered for this long, what is left is recorded as unread (an unknown to the checkers), and
/// the run ends.
pub const FINAL_READ_STALL: Duration = Duration::from_secs(60);

/// The deadline of the final reads: `FINAL_READ_STALL` after the last answered read.
struct ReadProgress {
    deadline: tokio::time::Instant,
}

impl ReadProgress {
    fn start() -> ReadProgress {
        ReadProgress {
            deadline: tokio::time::Instant::now() + FINAL_READ_STALL,
        }
    }

    fn answered(&mut self) {
        self.deadline = tokio::time::Instant::now() + FINAL_READ_STALL;
    }
}

/// The named bugs of ledgerd's `fault-injection` build, and what the self-test expects of each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    SkipIdempotencyCheck,
    AckBeforeCommit,
    StaleFollowerReads,
}

impl Bug {
    pub const ALL: [Bug; 3] = [
        Bug::SkipIdempotencyCheck,
        Bug::AckBeforeCommit,
        Bug::StaleFollowerReads,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Bug::SkipIdempotencyCheck => "skip-idempotency-check",
            Bug::AckBeforeCommit => "ack-before-commit",
            Bug::StaleFollowerReads => "stale-follower-reads",
        }
    }

    pub fn parse(text: &str) -> Result<Bug, HarnessError> {
        Bug::ALL
            .into_iter()
            .find(|bug| bug.name() == text)
            .ok_or_else(|| HarnessError::Options {
                message: format!(
                    "unknown bug {text:?} (expected one of: {})",
                    Bug::ALL.map(Bug::name).join(", ")
                ),
            })
    }

    /// The checkers of which at least one must report the anomaly.
    pub fn expected_checkers(self) -> &'static [&'static str] {
        match self {
            Bug::SkipIdempotencyCheck => &[checker::exactly_once::NAME],
            Bug::AckBeforeCommit => &[checker::durability::NAME, checker::linearizability::NAME],
            Bug::StaleFollowerReads => &[checker::linearizability::NAME],
        }
    }

    /// Faults that make the bug observable: retries need timeouts (kills), a lost
    /// acknowledgement needs a crashed leader, a stale follower needs a lagging replica.
    pub fn default_nemeses(self) -> BTreeSet<FaultKind> {
        match self {
            Bug::SkipIdempotencyCheck => [FaultKind::Kill].into_iter().collect(),
            Bug::AckBeforeCommit => [FaultKind::Kill].into_iter().collect(),
            Bug::StaleFollowerReads => [FaultKind::Partition, FaultKind::Pause]
                .into_iter()
                .collect(),
        }
    }

    pub fn default_workloads(self) -> BTreeSet<Workload> {
        match self {
            Bug::SkipIdempotencyCheck | Bug::AckBeforeCommit => {
                [Workload::Bank, Workload::Linear].into_iter().collect()
            }
            Bug::StaleFollowerReads => [Workload::Linear].into_iter().collect(),
        }
    }

    /// Kills come faster for ack-before-commit: each one is a chance to lose an acknowledgement.
    pub fn default_schedule(self) -> Schedule {
        match self {
            Bug::AckBeforeCommit => Schedule {
                quiet_ms: (1_000, 2_000),
                fault_ms: (1_000, 2_500),
                combine_probability: 0.0,
            },
            _ => Schedule::default(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub time_limit: Duration,
    pub seed: u64,
    pub node_count: usize,
    pub shard_count: u32,
    /// Entries between two snapshots of a shard on every node.
    pub snapshot_entries: u64,
    pub nemeses: BTreeSet<FaultKind>,
    pub workloads: BTreeSet<Workload>,
    pub schedule: Schedule,
    pub bug: Option<Bug>,
    /// Run every node in a network namespace of its own (`--net netns`, root only) instead of
    /// on loopback (with the Raft proxy when partitions are on).
    pub namespaces: bool,
    pub run_dir: PathBuf,
    /// A prebuilt binary instead of `cargo build`.
    pub ledgerd: Option<PathBuf>,
    pub bank_accounts: usize,
    pub bank_clients: u32,
    pub linear_accounts: usize,
    pub linear_clients_per_account: u32,
    pub reservations: bool,
    /// Keep the binary copy and data directories of a passed run too.
    pub keep_artifacts: bool,
}

/// The outcome of a run that got as far as checking.
#[derive(Debug)]
pub struct RunSummary {
    pub verdict: Verdict,
    pub results: Vec<CheckResult>,
    /// With `--bug`: whether an expected checker reported an anomaly.
    pub bug_caught: Option<bool>,
    pub report_text: String,
}

pub async fn run(options: RunOptions) -> Result<RunSummary, HarnessError> {
    std::fs::create_dir_all(&options.run_dir)
        .map_err(HarnessError::io("creating", &options.run_dir))?;
    let ledgerd = obtain_ledgerd(&options)?;
    let faketime = if options.nemeses.contains(&FaultKind::Clock) {
        Some(Faketime::locate_or_install()?)
    } else {
        None
    };
    let cluster = Cluster::start(ClusterOptions {
        node_count: options.node_count,
        shard_count: options.shard_count,
        snapshot_entries: options.snapshot_entries,
        ledgerd: ledgerd.clone(),
        run_dir: options.run_dir.clone(),
        network: network_mode(&options),
        faketime: faketime.clone(),
        bug: options.bug.map(|bug| bug.name().to_owned()),
    })
    .await?;
    if let Some(faketime) = &faketime {
        let (http_port, raft_port) = cluster.spare_ports;
        clock::verify_in_ledgerd(faketime, &ledgerd, &options.run_dir, http_port, raft_port)
            .await?;
        eprintln!("clock faults verified: ledgerd's leader time stamps follow the libfaketime offset file");
    }
    let cluster = Arc::new(Mutex::new(cluster));
    {
        let mut cluster = cluster.lock().await;
        cluster.wait_for_health(READY_TIMEOUT).await?;
        cluster.wait_for_leaders(READY_TIMEOUT).await?;
    }
    let (urls, removed) = {
        let cluster = cluster.lock().await;
        (cluster.urls(), cluster.removed_nodes())
    };
    let start = Instant::now();
    let recorder = Recorder::new(start);
    let accounts = setup_accounts(&options, &urls, &recorder).await?;
    eprintln!(
        "running for {} s: seed {}, nodes {}, nemeses [{}], workloads [{}]{}",
        options.time_limit.as_secs(),
        options.seed,
        options.node_count,
        options
            .nemeses
            .iter()
            .map(|kind| kind.name())
            .collect::<Vec<_>>()
            .join(","),
        options
            .workloads
            .iter()
            .map(|workload| format!("{workload:?}").to_lowercase())
            .collect::<Vec<_>>()
            .join(","),
        options
            .bug
            .map(|bug| format!(", bug {}", bug.name()))
            .unwrap_or_default()
    );

    let deadline = Instant::now() + options.time_limit;
    let nemesis = Nemesis::new(
        Arc::clone(&cluster),
        &options.nemeses,
        options.schedule,
        options.seed,
        start,
    );
    let nemesis_task = tokio::spawn(nemesis.run(deadline));
    let mut workload_tasks = Vec::new();
    if options.workloads.contains(&Workload::Bank) {
        let context = ClientContext {
            clients: NodeClients::new(&urls, 1_500)?.leaving_out(Arc::clone(&removed)),
            recorder: recorder.clone(),
            workload: Workload::Bank,
        };
        let bank_options = bank::BankOptions {
            accounts: accounts.bank.iter().map(|(id, _)| id.clone()).collect(),
            clients: options.bank_clients,
            reservations: options.reservations,
            first_process: 1,
        };
        workload_tasks.push(tokio::spawn(bank::run(
            context,
            bank_options,
            options.seed,
            deadline,
        )));
    }
    if options.workloads.contains(&Workload::Linear) {
        let context = ClientContext {
            clients: NodeClients::new(&urls, 1_000)?.leaving_out(Arc::clone(&removed)),
            recorder: recorder.clone(),
            workload: Workload::Linear,
        };
        let linear_options = linear::LinearOptions {
            accounts: accounts.linear.iter().map(|(id, _)| id.clone()).collect(),
            clients_per_account: options.linear_clients_per_account,
            first_process: 1_000,
        };
        workload_tasks.push(tokio::spawn(linear::run(
            context,
            linear_options,
            options.seed,
            deadline,
        )));
    }
    for task in workload_tasks {
        task.await.map_err(|error| HarnessError::Setup {
            message: format!("a workload task failed: {error}"),
        })?;
    }
    let timeline = nemesis_task.await.map_err(|error| HarnessError::Setup {
        message: format!("the nemesis task failed: {error}"),
    })??;
    let end_us = recorder.now_us();
    eprintln!("time limit reached; healed; checking recovery and reading the final state");

    let mut results = Vec::new();
    let recovery = {
        let mut cluster = cluster.lock().await;
        match cluster.wait_for_health(READY_TIMEOUT).await {
            Ok(()) => cluster.wait_for_leaders(READY_TIMEOUT).await.map(|_| ()),
            Err(error) => Err(error),
        }
    };
    results.push(CheckResult::from_findings(
        "recovery after healing",
        "every node serves and every shard has an agreed leader".to_owned(),
        recovery
            .err()
            .map(|error| error.to_string())
            .into_iter()
            .collect(),
        Vec::new(),
    ));
    results.push(crash_check(&timeline));

    let events = recorder.take_events();
    let operations = history::operations(&events);
    let final_state = read_final_state(&urls, &accounts, &operations).await?;
    results.push(replica_check(&cluster).await);
    results.push(checker::exactly_once::check(&operations, &final_state));
    results.push(checker::conservation::check(&operations, &final_state));
    results.push(checker::floor::check(&operations, &final_state));
    results.push(checker::durability::check(&operations, &final_state));
    let linear_limits: BTreeMap<String, u64> = accounts.linear.iter().cloned().collect();
    if !linear_limits.is_empty() {
        results.push(checker::linearizability::check(
            &operations,
            &linear_limits,
            &final_state,
        ));
    }
    cluster.lock().await.stop_all();

    let windows = nemesis::fault_windows(&timeline, end_us);
    let availability = checker::availability::figures(&operations, &windows, end_us);
    let verdict = report::overall_verdict(&results);
    let bug_caught = options.bug.map(|bug| {
        results.iter().any(|result| {
            result.verdict == Verdict::Invalid && bug.expected_checkers().contains(&result.name)
        })
    });
    let self_test = options.bug.zip(bug_caught).map(|(bug, caught)| {
        let expected = bug.expected_checkers().join(" or ");
        if caught {
            format!("bug caught: {} reported by {expected}", bug.name())
        } else {
            format!(
                "bug NOT caught: {} was injected but {expected} reported nothing",
                bug.name()
            )
        }
    });
    let header = report_header(&options, &ledgerd);
    let report_text = report::render_text(&ReportInput {
        header,
        operations: &operations,
        results: &results,
        availability: &availability,
        timeline: &timeline,
        self_test,
    });
    let run_dir = &options.run_dir;
    history::write_jsonl(&run_dir.join("history.jsonl"), &events)?;
    history::write_jsonl(&run_dir.join("nemesis.jsonl"), &timeline)?;
    let report_path = run_dir.join("report.txt");
    std::fs::write(&report_path, &report_text)
        .map_err(HarnessError::io("writing", &report_path))?;
    let title = format!(
        "latency, seed {}, {} nodes, nemeses [{}]{}",
        options.seed,
        options.node_count,
        options
            .nemeses
            .iter()
            .map(|kind| kind.name())
            .collect::<Vec<_>>()
            .join(","),
        options
            .bug
            .map(|bug| format!(", bug {}", bug.name()))
            .unwrap_or_default()
    );
    let svg_path = run_dir.join("latency.svg");
    std::fs::write(
        &svg_path,
        report::render_svg(&operations, &windows, end_us, &title),
    )
    .map_err(HarnessError::io("writing", &svg_path))?;
    let passed = bug_caught.unwrap_or(verdict == Verdict::Valid);
    if passed && !options.keep_artifacts {
        remove_bulky_artifacts(run_dir);
    }
    Ok(RunSummary {
        verdict,
        results,
        bug_caught,
        report_text,
    })
}

fn network_mode(options: &RunOptions) -> NetworkMode {
    if options.namespaces {
        NetworkMode::Namespaces
    } else if options.nemeses.contains(&FaultKind::Partition) {
        NetworkMode::RaftProxy
    } else {
        NetworkMode::Loopback
    }
}

/// A passed run keeps its history, timeline, logs and report, but not the binary copy (hundreds
/// of megabytes) and the data directories: long loops over many seeds would fill the disk.
fn remove_bulky_artifacts(run_dir: &std::path::Path) {
    // Best effort: a leftover file only costs disk space.
    let _ = std::fs::remove_file(run_dir.join("ledgerd"));
    let _ = std::fs::remove_dir_all(run_dir.join("data"));
    let _ = std::fs::remove_dir_all(run_dir.join("clock-probe").join("data"));
}

fn obtain_ledgerd(options: &RunOptions) -> Result<PathBuf, HarnessError> {
    let binary = match &options.ledgerd {
        Some(path) => path.clone(),
        None => {
            let root = ledgerd_binary::workspace_root();
            let features = ledgerd_binary::ledgerd_features(
                options.bug.map(Bug::name),
                ledgerd_binary::ledgerd_declares_fault_injection(&root),
            )?;
            ledgerd_binary::build_ledgerd(&root, &features)?
        }
    };
    ledgerd_binary::install_into_run_dir(&binary, &options.run_dir)
}

fn report_header(options: &RunOptions, ledgerd: &std::path::Path) -> Vec<(String, String)> {
    let list = |items: Vec<String>| {
        if items.is_empty() {
            "none".to_owned()
        } else {
            items.join(",")
        }
    };
    vec![
        ("seed".to_owned(), options.seed.to_string()),
        (
            "time limit".to_owned(),
            format!("{} s", options.time_limit.as_secs()),
        ),
        (
            "nodes".to_owned(),
            format!(
                "{} ({} shards, a snapshot every {} entries)",
                options.node_count, options.shard_count, options.snapshot_entries
            ),
        ),
        (
            "nemeses".to_owned(),
            list(
                options
                    .nemeses
                    .iter()
                    .map(|kind| kind.name().to_owned())
                    .collect(),
            ),
        ),
        (
            "workloads".to_owned(),
            list(
                options
                    .workloads
                    .iter()
                    .map(|workload| format!("{workload:?}").to_lowercase())
                    .collect(),
            ),
        ),
        (
            "network".to_owned(),
            network_mode(options).name().to_owned(),
        ),
        ("reservations".to_owned(), options.reservations.to_string()),
        (
            "bug".to_owned(),
            options
                .bug
                .map_or("none".to_owned(), |bug| bug.name().to_owned()),
        ),
        ("ledgerd".to_owned(), ledgerd.display().to_string()),
        ("run dir".to_owned(), options.run_dir.display().to_string()),
    ]
}

/// Account ids with their overdraft limits, per workload.
pub struct Accounts {
    pub bank: Vec<(String, u64)>,
    pub linear: Vec<(String, u64)>,
}

fn patient_client(urls: &[(crate::NodeId, String)]) -> Result<LedgerClient, HarnessError> {
    Ok(LedgerClient::with_options(
        urls.iter().map(|(_, url)| url.clone()).collect(),
        ClientOptions {
            request_timeout_ms: 3_000,
            max_attempts: 40,
            retry_backoff_ms: 50,
            retry_backoff_max_ms: 1_000,
        },
    )?)
}

async fn setup_accounts(
    options: &RunOptions,
    urls: &[(crate::NodeId, String)],
    recorder: &Recorder,
) -> Result<Accounts, HarnessError> {
    let client = patient_client(urls)?;
    let accounts = Accounts {
        bank: if options.workloads.contains(&Workload::Bank) {
            bank::bank_accounts(options.bank_accounts)
        } else {
            Vec::new()
        },
        linear: if options.workloads.contains(&Workload::Linear) {
            linear::linear_accounts(options.linear_accounts)
        } else {
            Vec::new()
        },
    };
    let mut rng = StdRng::seed_from_u64(options.seed);
    for (workload, list, opening) in [
        (Workload::Bank, &accounts.bank, bank::OPENING_BALANCE),
        (Workload::Linear, &accounts.linear, linear::OPENING_BALANCE),
    ] {
        let context = ClientContext {
            clients: NodeClients::new(urls, 3_000)?,
            recorder: recorder.clone(),
            workload,
        };
        for (account, overdraft_limit) in list {
            workload::create_account(&client, account, *overdraft_limit).await?;
            workload::opening_grant(&context, &mut rng, account, opening).await?;
        }
    }
    if options.reservations {
        probe_reservations(&client, urls).await?;
    }
    Ok(accounts)
}

/// Refuses `--reservations` while the endpoint does not exist (404 `not_found` from the
/// router's fallback), instead of recording a run of failures.
async fn probe_reservations(
    client: &LedgerClient,
    urls: &[(crate::NodeId, String)],
) -> Result<(), HarnessError> {
    const PROBE_ACCOUNT: &str = "reservation-probe";
    workload::create_account(client, PROBE_ACCOUNT, 0).await?;
    let Some((_, url)) = urls.first() else {
        return Err(HarnessError::Setup {
            message: "no nodes".to_owned(),
        });
    };
    let answer = client
        .post_raw(
            url,
            &format!("/v1/accounts/{PROBE_ACCOUNT}/reservations"),
            r#"{"reservation_id":"probe","amount":1,"ttl_ms":1000}"#,
        )
        .await?;
    if answer.status == 404 && answer.error_code().as_deref() == Some("not_found") {
        return Err(HarnessError::Options {
            message: "--reservations: the ledger has no reservation endpoint yet (404 not_found)"
                .to_owned(),
        });
    }
    Ok(())
}

/// Linearizable reads of every account and a lookup of every debit key, after healing.
async fn read_final_state(
    urls: &[(crate::NodeId, String)],
    accounts: &Accounts,
    operations: &[Operation],
) -> Result<FinalState, HarnessError> {
    let client = patient_client(urls)?;
    let mut progress = ReadProgress::start();
    let mut state = FinalState::default();
    for (account, limit) in accounts.bank.iter().chain(&accounts.linear) {
        state.overdraft_limits.insert(account.clone(), *limit);
        let snapshot =
            match tokio::time::timeout_at(progress.deadline, read_account(&client, urls, account))
                .await
            {
                Ok(snapshot) => {
                    progress.answered();
                    snapshot
                }
                Err(_) => Err(unread()),
            };
        state.accounts.insert(account.clone(), snapshot);
    }
    let debit_keys: BTreeSet<(String, String)> = operations
        .iter()
        .filter_map(|operation| match &operation.request {
            Request::Debit { key, .. } => Some((operation.account.clone(), key.clone())),
            _ => None,
        })
        .collect();
    state.debit_lookups = look_up_all(
        debit_keys,
        &mut progress,
        |(account, key)| {
            let client = client.clone();
            async move {
                match client.get_debit(&account, &key).await {
                    Ok(Some(response)) => Lookup::Decided {
                        accepted: response.status == STATUS_ACCEPTED,
                        amount: response.amount,
                        available: response.available,
                        code: response.code,
                    },
                    Ok(None) => Lookup::NotDecided,
                    Err(error) => Lookup::Failed(error.to_string()),
                }
            }
        },
        Lookup::Failed,
    )
    .await?;
    let reservation_ids: BTreeSet<(String, String)> = operations
        .iter()
        .filter_map(|operation| match &operation.request {
            Request::Reserve { reservation_id, .. } => {
                Some((operation.account.clone(), reservation_id.clone()))
            }
            _ => None,
        })
        .collect();
    state.reservation_lookups = look_up_all(
        reservation_ids,
        &mut progress,
        |(account, reservation_id)| {
            let client = client.clone();
            async move {
                match client.get_reservation(&account, &reservation_id).await {
                    Ok(Some(response)) => ReservationLookup::Found {
                        status: response.status,
                        amount: response.amount,
                        committed: response.committed,
                    },
                    Ok(None) => ReservationLookup::NotFound,
                    Err(error) => ReservationLookup::Failed(error.to_string()),
                }
            }
        },
        ReservationLookup::Failed,
    )
    .await?;
    Ok(state)
}

/// What a read not done by the final-read deadline records.
fn unread() -> String {
    format!("not read: no final read was answered for {FINAL_READ_STALL:?}")
}

/// Runs `look_up` for every key, a few at a time (thousands of keys, one round trip each); a
/// key not looked up by the progress deadline gets `failed(unread())`.
async fn look_up_all<V, F, Fut>(
    keys: BTreeSet<(String, String)>,
    progress: &mut ReadProgress,
    look_up: F,
    failed: fn(String) -> V,
) -> Result<BTreeMap<(String, String), V>, HarnessError>
where
    V: Send + 'static,
    F: Fn((String, String)) -> Fut,
    Fut: std::future::Future<Output = V> + Send + 'static,
{
    let keys: Vec<(String, String)> = keys.into_iter().collect();
    let mut found = BTreeMap::new();
    for chunk in keys.chunks(32) {
        let handles: Vec<_> = chunk
            .iter()
            .map(|key| {
                let lookup = tokio::time::timeout_at(progress.deadline, look_up(key.clone()));
                let key = key.clone();
                tokio::spawn(async move { (key, lookup.await.ok()) })
            })
            .collect();
        for handle in handles {
            let (key, value) = handle.await.map_err(|error| HarnessError::Setup {
                message: format!("a lookup task failed: {error}"),
            })?;
            let value = match value {
                Some(value) => {
                    progress.answered();
                    value
                }
                None => failed(unread()),
            };
            found.insert(key, value);
        }
    }
    Ok(found)
}

async fn read_account(
    client: &LedgerClient,
    urls: &[(crate::NodeId, String)],
    account: &str,
) -> Result<AccountSnapshot, String> {
    let mut last_error = String::new();
    for attempt in 0..30 {
        let (_, url) = &urls[attempt % urls.len()];
        match client
            .get_raw(url, &format!("/v1/accounts/{account}"))
            .await
        {
            Ok(raw) if raw.status == 200 => {
                return serde_json::from_str::<serde_json::Value>(&raw.body)
                    .map_err(|error| error.to_string())
                    .and_then(|body| AccountSnapshot::from_json(&body));
            }
            Ok(raw) => last_error = format!("{} {}", raw.status, raw.body),
            Err(error) => last_error = error.to_string(),
        }
        // Backoff between attempts of a read that failed (e.g. during an election).
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last_error)
}

/// Waits (bounded) until every shard's replicas are at one applied index; any two replicas at
/// the same index with different digests, in any poll, is an anomaly.
async fn replica_check(cluster: &Arc<Mutex<Cluster>>) -> CheckResult {
    const NAME: &str = "replica digests";
    let deadline = Instant::now() + CONVERGENCE_TIMEOUT;
    let mut mismatches = BTreeSet::new();
    let mut polls = 0;
    loop {
        polls += 1;
        let views = cluster.lock().await.views().await;
        mismatches.extend(checker::replicas::digest_mismatches(&views));
        match checker::replicas::replicas_in_sync(&views) {
            Ok(shards) if views.len() == cluster.lock().await.node_ids().len() => {
                return CheckResult::from_findings(
                    NAME,
                    format!(
                        "{shards} shards in sync on {} nodes after {polls} polls",
                        views.len()
                    ),
                    mismatches.into_iter().collect(),
                    Vec::new(),
                );
            }
            result => {
                if Instant::now() >= deadline {
                    let reason = match result {
                        Ok(_) => format!("only {} nodes answered", views.len()),
                        Err(reason) => reason,
                    };
                    return CheckResult::from_findings(
                        NAME,
                        format!("replicas did not converge within {CONVERGENCE_TIMEOUT:?}"),
                        mismatches.into_iter().collect(),
                        vec![format!("not in sync: {reason}")],
                    );
                }
            }
        }
        tokio::time::sleep(crate::cluster::POLL_INTERVAL).await;
    }
}

/// A node that exits by itself (an aborted process: a failed invariant, a storage error) is an
/// anomaly: the harness never causes one.
fn crash_check(timeline: &[NemesisEvent]) -> CheckResult {
    let crashes: Vec<String> = timeline
        .iter()
        .filter(|event| event.phase == Phase::Crash)
        .map(|event| {
            format!(
                "at {:.3}s: {} (see the node's log)",
                event.time_us as f64 / 1e6,
                event.description
            )
        })
        .collect();
    CheckResult::from_findings(
        "node crashes",
        format!("{} nodes exited by themselves", crashes.len()),
        crashes,
        Vec::new(),
    )
}

/// A directory name for a run: `<UTC timestamp>-seed<seed>`.
pub fn run_dir_name(unix_seconds: u64, seed: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let seconds_of_day = unix_seconds % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z-seed{seed}",
        seconds_of_day / 3_600,
        seconds_of_day / 60 % 60,
        seconds_of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_directories_are_named_by_utc_time_and_seed() {
        assert_eq!(run_dir_name(0, 7), "19700101T000000Z-seed7");
        assert_eq!(
            run_dir_name(951_868_800 + 3_661, 42),
            "20000301T010101Z-seed42"
        );
    }

    #[test]
    fn bugs_parse_by_name_and_expect_their_checkers() {
        for bug in Bug::ALL {
            assert_eq!(Bug::parse(bug.name()).expect("known"), bug);
            assert!(!bug.expected_checkers().is_empty());
            assert!(!bug.default_nemeses().is_empty());
        }
        assert!(Bug::parse("no-such-bug").is_err());
    }
}
