//! Harness of the process-level tests: real `ledgerd` processes on loopback ports.
//!
//! A [`TestCluster`] writes one config file per node (the TOML format of the public contract)
//! into a fresh directory, starts `ledgerd --config FILE` per node with its output in a per-node
//! log file, and can SIGKILL, SIGTERM and restart nodes on their data directories. Every wait
//! polls a condition with a deadline; nothing waits a fixed time hoping a condition holds.
//!
//! A test ends with [`TestCluster::pass`]. A cluster dropped without it (a panic, or an error
//! returned with `?`) keeps its directory (configs, data, logs) and prints the log paths and
//! their last lines; a passed one deletes it.

// Each test binary includes this module and uses a part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use ledger_api::{ClusterResponse, ShardInfo};
use ledger_client::{ClientOptions, LedgerClient};

pub mod load;

pub type NodeId = u64;
pub type ShardId = u32;

/// Bound of every startup wait: a node on a loaded 2-core CI machine opens RocksDB, replays its
/// log and holds elections within this.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound of waiting for a node to exit after SIGTERM.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound of waiting for replicas to reach the same applied index.
pub const CONVERGENCE_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval between two checks of a condition being waited for.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// One `ledgerd` process slot: its addresses, files, and the running process if any.
pub struct TestNode {
    pub id: NodeId,
    pub http_addr: SocketAddr,
    pub raft_addr: SocketAddr,
    pub config_path: PathBuf,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    process: Option<Child>,
    starts: u32,
}

impl TestNode {
    pub fn url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// Fails (with the end of the log) if the process exited by itself.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        let Some(process) = self.process.as_mut() else {
            return Ok(());
        };
        if let Some(status) = process.try_wait().context("polling a ledgerd process")? {
            self.process = None;
            bail!(
                "node {} exited by itself ({status}); log {}:\n{}",
                self.id,
                self.log_path.display(),
                log_tail(&self.log_path, 40)
            );
        }
        Ok(())
    }
}

/// A cluster of `ledgerd` processes in a directory of their own.
pub struct TestCluster {
    directory: tempfile::TempDir,
    pub shard_count: u32,
    pub replication: usize,
    nodes: Vec<TestNode>,
    /// One attempt per call: the harness asks about one node at a time and decides itself.
    admin: LedgerClient,
    /// Set by [`TestCluster::pass`]; a cluster dropped without it belongs to a failed test.
    passed: bool,
}

impl TestCluster {
    /// Writes the configs of `node_count` nodes (ids 1..=node_count, every shard replicated
    /// `min(3, node_count)` times) and starts every node. Does not wait for anything.
    pub fn start(test_name: &str, node_count: usize, shard_count: u32) -> anyhow::Result<Self> {
        TestCluster::start_formation(test_name, node_count, node_count, shard_count)
    }

    /// Writes the configs of `node_count` node slots and starts the first `formation` of them,
    /// which form the cluster (their configs list only them; the others' configs list every
    /// node, as an operator's edited config would). Replication `min(3, formation)`. The other
    /// slots are started later with [`TestCluster::spawn`] and declared with
    /// [`TestCluster::apply`].
    pub fn start_formation(
        test_name: &str,
        node_count: usize,
        formation: usize,
        shard_count: u32,
    ) -> anyhow::Result<Self> {
        let directory = tempfile::Builder::new()
            .prefix(&format!("{test_name}-"))
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .context("creating the cluster directory")?;
        let ports = free_ports(node_count * 2)?;
        let addresses: Vec<(SocketAddr, SocketAddr)> = (0..node_count)
            .map(|index| {
                let http = SocketAddr::from(([127, 0, 0, 1], ports[2 * index]));
                let raft = SocketAddr::from(([127, 0, 0, 1], ports[2 * index + 1]));
                (http, raft)
            })
            .collect();
        let replication = formation.min(3);
        let mut nodes = Vec::with_capacity(node_count);
        for (index, (http_addr, raft_addr)) in addresses.iter().enumerate() {
            let id = index as NodeId + 1;
            let config_path = directory.path().join(format!("node{id}.toml"));
            let data_dir = directory.path().join(format!("data/node{id}"));
            let log_path = directory.path().join(format!("node{id}.log"));
            let listed = if index < formation {
                &addresses[..formation]
            } else {
                &addresses[..]
            };
            let config = node_config(id, &data_dir, listed, shard_count, replication);
            std::fs::write(&config_path, config)
                .with_context(|| format!("writing {}", config_path.display()))?;
            nodes.push(TestNode {
                id,
                http_addr: *http_addr,
                raft_addr: *raft_addr,
                config_path,
                data_dir,
                log_path,
                process: None,
                starts: 0,
            });
        }
        let admin = LedgerClient::with_options(
            nodes.iter().map(TestNode::url).collect(),
            ClientOptions {
                request_timeout_ms: 2_000,
                max_attempts: 1,
                ..ClientOptions::default()
            },
        )?;
        let mut cluster = TestCluster {
            directory,
            shard_count,
            replication,
            nodes,
            admin,
            passed: false,
        };
        for id in 1..=formation as NodeId {
            cluster.spawn(id)?;
        }
        eprintln!(
            "cluster of {formation} of {node_count} node(s) in {}",
            cluster.directory.path().display()
        );
        Ok(cluster)
    }

    /// Starts every node and waits until all serve and every shard has a leader.
    pub async fn start_ready(
        test_name: &str,
        node_count: usize,
        shard_count: u32,
    ) -> anyhow::Result<Self> {
        let mut cluster = TestCluster::start(test_name, node_count, shard_count)?;
        cluster.wait_for_health().await?;
        cluster.wait_for_leaders().await?;
        Ok(cluster)
    }

    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|node| node.id).collect()
    }

    pub fn running_node_ids(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|node| node.is_running())
            .map(|node| node.id)
            .collect()
    }

    pub fn node(&self, id: NodeId) -> &TestNode {
        &self.nodes[node_index(id)]
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(TestNode::url).collect()
    }

    /// A client of every node, with retries that ride out an election: the contract says a
    /// client retries 503s with the same key.
    pub fn client(&self) -> anyhow::Result<LedgerClient> {
        Ok(LedgerClient::with_options(
            self.urls(),
            patient_client_options(),
        )?)
    }

    /// Starts node `id` (again) on its config and data directory.
    pub fn spawn(&mut self, id: NodeId) -> anyhow::Result<()> {
        let node = &mut self.nodes[node_index(id)];
        if node.process.is_some() {
            bail!("node {id} already runs");
        }
        node.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .with_context(|| format!("opening {}", node.log_path.display()))?;
        writeln!(
            log,
            "===== harness: start #{} of node {id} =====",
            node.starts
        )?;
        let stderr = log.try_clone().context("sharing the log file")?;
        let process = Command::new(env!("CARGO_BIN_EXE_ledgerd"))
            .arg("--config")
            .arg(&node.config_path)
            .current_dir(self.directory.path())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            // Plain text in the log files: colour codes only help a terminal.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr))
            .spawn()
            .context("spawning ledgerd")?;
        node.process = Some(process);
        Ok(())
    }

    /// SIGKILL: a crash. Returns once the process is gone.
    pub fn kill(&mut self, id: NodeId) -> anyhow::Result<()> {
        let node = &mut self.nodes[node_index(id)];
        let Some(mut process) = node.process.take() else {
            bail!("node {id} is not running");
        };
        process.kill().context("sending SIGKILL")?;
        process.wait().context("reaping a killed ledgerd")?;
        append_to_log(&node.log_path, "===== harness: SIGKILL =====");
        Ok(())
    }

    /// SIGTERM and wait for the exit (bounded); returns the exit status. A node that does not
    /// stop in time is killed and reported as an error: a clean shutdown is part of the contract.
    pub async fn terminate(&mut self, id: NodeId) -> anyhow::Result<ExitStatus> {
        let node = &self.nodes[node_index(id)];
        let Some(process) = &node.process else {
            bail!("node {id} is not running");
        };
        append_to_log(&node.log_path, "===== harness: SIGTERM =====");
        send_sigterm(process)?;
        self.wait_for_exit(id).await
    }

    /// SIGTERM every running node (concurrently in effect: all get the signal first) and
    /// require clean exits.
    pub async fn terminate_all(&mut self) -> anyhow::Result<()> {
        for node in &self.nodes {
            if let Some(process) = &node.process {
                append_to_log(&node.log_path, "===== harness: SIGTERM =====");
                send_sigterm(process)?;
            }
        }
        for id in self.running_node_ids() {
            let status = self.wait_for_exit(id).await?;
            if !status.success() {
                bail!(
                    "node {id} exited with {status} after SIGTERM; log {}",
                    self.node(id).log_path.display()
                );
            }
        }
        Ok(())
    }

    /// Waits (bounded) for a signalled node to exit; kills it and fails if it does not.
    async fn wait_for_exit(&mut self, id: NodeId) -> anyhow::Result<ExitStatus> {
        let node = &mut self.nodes[node_index(id)];
        let Some(mut process) = node.process.take() else {
            bail!("node {id} is not running");
        };
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        loop {
            if let Some(status) = process.try_wait().context("polling a ledgerd process")? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                process.kill().context("sending SIGKILL")?;
                process.wait().context("reaping a killed ledgerd")?;
                bail!(
                    "node {id} did not exit within {SHUTDOWN_TIMEOUT:?} of SIGTERM; log {}",
                    node.log_path.display()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Fails if a node that should run has exited by itself.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            node.check_alive()?;
        }
        Ok(())
    }

    /// Waits until every running node answers `GET /health` with 200.
    pub async fn wait_for_health(&mut self) -> anyhow::Result<()> {
        let admin = self.admin.clone();
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            self.check_alive()?;
            let mut unhealthy = Vec::new();
            for node in self.nodes.iter().filter(|node| node.is_running()) {
                if !admin.health(&node.url()).await? {
                    unhealthy.push(node.id);
                }
            }
            if unhealthy.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("nodes {unhealthy:?} not healthy within {STARTUP_TIMEOUT:?}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// `GET /admin/cluster` of every running node; fails if a node exited by itself.
    pub async fn views(&mut self) -> anyhow::Result<BTreeMap<NodeId, ClusterResponse>> {
        self.check_alive()?;
        self.fetch_views().await
    }

    async fn fetch_views(&self) -> anyhow::Result<BTreeMap<NodeId, ClusterResponse>> {
        if self.running_node_ids().is_empty() {
            bail!("no node is running");
        }
        let mut views = BTreeMap::new();
        for node in self.nodes.iter().filter(|node| node.is_running()) {
            let view = self
                .admin
                .cluster(&node.url())
                .await
                .with_context(|| format!("GET /admin/cluster of node {}", node.id))?;
            if view.node_id != node.id {
                bail!("node {} says it is node {}", node.id, view.node_id);
            }
            views.insert(node.id, view);
        }
        Ok(views)
    }

    /// Waits until every shard has a leader that is running and that every running replica of
    /// the shard agrees on (so a request to any node is served or forwarded right). Returns
    /// the leader of each shard.
    pub async fn wait_for_leaders(&mut self) -> anyhow::Result<BTreeMap<ShardId, NodeId>> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            // A node that exited by itself fails the wait at once; only a node that does not
            // answer yet (busy starting its HTTP side) is waited for.
            self.check_alive()?;
            let reason = match self.fetch_views().await {
                Ok(views) => match agreed_leaders(&views, self.shard_count) {
                    Ok(leaders) => return Ok(leaders),
                    Err(reason) => reason,
                },
                Err(error) if Instant::now() < deadline => format!("{error:#}"),
                Err(error) => return Err(error),
            };
            if Instant::now() >= deadline {
                bail!("no agreed leader for every shard within {STARTUP_TIMEOUT:?}: {reason}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until, for every shard, all running replicas report the same `last_applied`, then
    /// requires equal digests. Replicas at the same applied index must have identical state
    /// (the deterministic-replicas invariant), so a difference fails at once.
    pub async fn wait_for_replicas_in_sync(
        &mut self,
    ) -> anyhow::Result<BTreeMap<ShardId, ShardInfo>> {
        let deadline = Instant::now() + CONVERGENCE_TIMEOUT;
        loop {
            let views = self.views().await?;
            let running: BTreeSet<NodeId> = views.keys().copied().collect();
            check_digests_at_equal_indexes(&views)?;
            match replicas_in_sync(&views, self.shard_count, &running) {
                Ok(shards) => return Ok(shards),
                Err(reason) if Instant::now() >= deadline => {
                    bail!("replicas not in sync within {CONVERGENCE_TIMEOUT:?}: {reason}")
                }
                Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
            }
        }
    }

    /// `POST /admin/cluster/apply` with the nodes `ids` (through any running node): the node set
    /// the cluster should move to. Returns the map version.
    pub async fn apply(&self, ids: &[NodeId]) -> anyhow::Result<u64> {
        let nodes = ids
            .iter()
            .map(|id| {
                let node = self.node(*id);
                ledger_api::NodeInfo {
                    id: *id,
                    http_addr: node.http_addr.to_string(),
                    raft_addr: node.raft_addr.to_string(),
                }
            })
            .collect::<Vec<_>>();
        // The metadata group may still be electing its first leader: 503s are retried, as the
        // contract asks of clients.
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let mut last_error = None;
            for id in self.running_node_ids() {
                match self
                    .admin
                    .apply_cluster(&self.node(id).url(), nodes.clone())
                    .await
                {
                    Ok(answer) => return Ok(answer.version),
                    Err(
                        error @ (ledger_client::ClientError::Unavailable { .. }
                        | ledger_client::ClientError::Api { status: 503, .. }),
                    ) => last_error = Some(error),
                    Err(error) => bail!("cluster apply refused: {error}"),
                }
            }
            if Instant::now() >= deadline {
                bail!("no node took the cluster apply within {STARTUP_TIMEOUT:?}: {last_error:?}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits (bounded by `timeout`) for node `id` to exit by itself (e.g. once the cluster
    /// removed it) and returns its exit status.
    pub async fn wait_for_own_exit(
        &mut self,
        id: NodeId,
        timeout: Duration,
    ) -> anyhow::Result<ExitStatus> {
        let node = &mut self.nodes[node_index(id)];
        let Some(process) = node.process.as_mut() else {
            bail!("node {id} is not running");
        };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = process.try_wait().context("polling a ledgerd process")? {
                node.process = None;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("node {id} did not exit by itself within {timeout:?}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Ends a successful test: stops the nodes and deletes the directory.
    pub fn pass(mut self) {
        self.passed = true;
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut process) = node.process.take() {
                // Ignoring errors: the process may have exited already; nothing else to do.
                let _ = process.kill();
                let _ = process.wait();
            }
        }
        if !self.passed {
            self.directory.disable_cleanup(true);
            let mut report = format!(
                "\n===== test failed; cluster directory kept: {} =====\n",
                self.directory.path().display()
            );
            for node in &self.nodes {
                let _ = writeln!(
                    report,
                    "----- node {} log: {} (last lines) -----\n{}",
                    node.id,
                    node.log_path.display(),
                    log_tail(&node.log_path, 30)
                );
            }
            eprintln!("{report}");
        }
    }
}

/// Retries long enough to ride out a leader election (a few seconds), with each attempt
/// bounded so that a dead node costs little.
pub fn patient_client_options() -> ClientOptions {
    ClientOptions {
        request_timeout_ms: 3_000,
        max_attempts: 40,
        retry_backoff_ms: 20,
        retry_backoff_max_ms: 500,
    }
}

fn node_index(id: NodeId) -> usize {
    assert!(id >= 1, "node ids start at 1");
    (id - 1) as usize
}

fn node_config(
    id: NodeId,
    data_dir: &Path,
    addresses: &[(SocketAddr, SocketAddr)],
    shard_count: u32,
    replication: usize,
) -> String {
    let (http_addr, raft_addr) = addresses[node_index(id)];
    let mut config = String::new();
    let _ = writeln!(config, "node_id = {id}");
    let _ = writeln!(config, "data_dir = {:?}", data_dir.display().to_string());
    let _ = writeln!(config, "http_addr = \"{http_addr}\"");
    let _ = writeln!(config, "raft_addr = \"{raft_addr}\"");
    let _ = writeln!(config, "[cluster]");
    let _ = writeln!(config, "shards = {shard_count}");
    let _ = writeln!(config, "replication = {replication}");
    let _ = writeln!(config, "nodes = [");
    for (index, (http, raft)) in addresses.iter().enumerate() {
        let _ = writeln!(
            config,
            "  {{ id = {}, http_addr = \"{http}\", raft_addr = \"{raft}\" }},",
            index + 1
        );
    }
    let _ = writeln!(config, "]");
    config
}

/// `count` distinct loopback ports that are free right now, taken *below* the kernel's
/// ephemeral range: ports from that range are also handed out to outgoing connections, so a
/// node restarted on its port could find it taken by one of the other nodes' connections.
fn free_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    const LOWEST: u16 = 20_000;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let highest = ephemeral_start.max(LOWEST + 1_000);
    let span = u32::from(highest - LOWEST);
    // Start at a place that differs between test processes, so that concurrently running test
    // binaries rarely probe the same ports.
    let offset = (std::process::id().wrapping_mul(7_919)) % span;
    // Tests of one binary run concurrently and start from the same offset: a port handed out
    // to one cluster is never handed out again in this process, even before its node binds it.
    static HANDED_OUT: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut held = Vec::with_capacity(count);
    for step in 0..span {
        if held.len() == count {
            break;
        }
        let port = LOWEST + ((offset + step) % span) as u16;
        if handed_out.contains(&port) {
            continue;
        }
        // Holding the listeners until all are chosen keeps the ports distinct.
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(listener);
        }
    }
    if held.len() < count {
        bail!("found only {} free loopback ports", held.len());
    }
    let mut ports = Vec::with_capacity(count);
    for listener in &held {
        let port = listener.local_addr()?.port();
        handed_out.insert(port);
        ports.push(port);
    }
    Ok(ports)
}

fn send_sigterm(process: &Child) -> anyhow::Result<()> {
    let pid = libc::pid_t::try_from(process.id()).context("pid out of range")?;
    // SAFETY: kill(2) with a pid of a child we spawned and have not reaped (the `Child` is
    // still held), so the pid cannot have been reused by another process.
    let result = unsafe { libc::kill(pid, libc::SIGTERM) };
    if result != 0 {
        return Err(anyhow!(std::io::Error::last_os_error()).context("sending SIGTERM"));
    }
    Ok(())
}

fn append_to_log(path: &Path, line: &str) {
    // Best effort: the marker only helps a human reading the log.
    if let Ok(mut file) = OpenOptions::new().append(true).open(path) {
        let _ = writeln!(file, "{line}");
    }
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match File::open(path).and_then(|mut file| {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut file, &mut text).map(|_| text)
    }) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(error) => format!("(cannot read {}: {error})", path.display()),
    }
}

/// The leader of every shard if all running nodes hosting it agree on one running leader;
/// otherwise why not.
fn agreed_leaders(
    views: &BTreeMap<NodeId, ClusterResponse>,
    shard_count: u32,
) -> Result<BTreeMap<ShardId, NodeId>, String> {
    let mut leaders = BTreeMap::new();
    for shard_id in 0..shard_count {
        let mut seen = BTreeSet::new();
        for (node_id, view) in views {
            let Some(shard) = view.shards.iter().find(|shard| shard.shard_id == shard_id) else {
                return Err(format!("node {node_id} does not list shard {shard_id}"));
            };
            if shard.members.contains(node_id) {
                seen.insert(shard.leader);
            }
        }
        let leader = match seen.into_iter().collect::<Vec<_>>().as_slice() {
            [Some(leader)] => *leader,
            [] => return Err(format!("no running node hosts shard {shard_id}")),
            other => return Err(format!("shard {shard_id}: leaders seen {other:?}")),
        };
        if !views.contains_key(&leader) {
            return Err(format!(
                "shard {shard_id}: leader {leader} is not a running node"
            ));
        }
        leaders.insert(shard_id, leader);
    }
    Ok(leaders)
}

/// Replicas (running nodes that host a shard) at the same `last_applied` must report the same
/// digest.
fn check_digests_at_equal_indexes(views: &BTreeMap<NodeId, ClusterResponse>) -> anyhow::Result<()> {
    let mut digests: BTreeMap<(ShardId, u64), (NodeId, &str)> = BTreeMap::new();
    for (node_id, view) in views {
        for shard in &view.shards {
            let Some(index) = shard.last_applied else {
                continue;
            };
            if shard.digest.is_empty() {
                continue;
            }
            match digests.get(&(shard.shard_id, index)) {
                Some((other_node, other_digest)) if *other_digest != shard.digest => bail!(
                    "shard {} at applied index {index}: node {other_node} has digest \
                     {other_digest}, node {node_id} has {}",
                    shard.shard_id,
                    shard.digest
                ),
                Some(_) => {}
                None => {
                    digests.insert((shard.shard_id, index), (*node_id, &shard.digest));
                }
            }
        }
    }
    Ok(())
}

/// Every shard's replicas among `running` at one `last_applied`, or why not. The replicas are
/// the voters of the shard's leader's membership: a replica its group has not contacted yet
/// knows no membership of its own, and must still be waited for.
fn replicas_in_sync(
    views: &BTreeMap<NodeId, ClusterResponse>,
    shard_count: u32,
    running: &BTreeSet<NodeId>,
) -> Result<BTreeMap<ShardId, ShardInfo>, String> {
    let mut in_sync = BTreeMap::new();
    for shard_id in 0..shard_count {
        let mut leader_members = None;
        for (node_id, view) in views {
            let Some(shard) = view.shards.iter().find(|shard| shard.shard_id == shard_id) else {
                return Err(format!("node {node_id} does not list shard {shard_id}"));
            };
            if shard.leader == Some(*node_id) {
                leader_members = Some(shard.members.clone());
            }
        }
        let Some(members) = leader_members else {
            return Err(format!("shard {shard_id}: no running node leads it"));
        };
        let mut replicas = Vec::new();
        for node_id in members.iter().filter(|node_id| running.contains(node_id)) {
            let shard = views
                .get(node_id)
                .and_then(|view| view.shards.iter().find(|shard| shard.shard_id == shard_id))
                .ok_or_else(|| format!("node {node_id} does not list shard {shard_id}"))?;
            replicas.push((*node_id, shard));
        }
        let Some((_, first)) = replicas.first() else {
            return Err(format!("no running replica of shard {shard_id}"));
        };
        let indexes: BTreeMap<NodeId, Option<u64>> = replicas
            .iter()
            .map(|(node_id, shard)| (*node_id, shard.last_applied))
            .collect();
        if first.last_applied.is_none()
            || replicas
                .iter()
                .any(|(_, shard)| shard.last_applied != first.last_applied)
        {
            return Err(format!(
                "shard {shard_id}: last_applied per node {indexes:?}"
            ));
        }
        in_sync.insert(shard_id, (*first).clone());
    }
    Ok(in_sync)
}

/// Account ids such that every shard holds `per_shard` of them (placement computed with the
/// ledger's own placement function).
pub fn accounts_covering_shards(prefix: &str, shard_count: u32, per_shard: usize) -> Vec<String> {
    let mut by_shard: BTreeMap<ShardId, Vec<String>> = BTreeMap::new();
    let mut candidate = 0u64;
    while by_shard.len() < shard_count as usize
        || by_shard.values().any(|accounts| accounts.len() < per_shard)
    {
        let account_id = format!("{prefix}-{candidate}");
        let shard = ledger_core::shard_for_account(&account_id, shard_count);
        let accounts = by_shard.entry(shard).or_default();
        if accounts.len() < per_shard {
            accounts.push(account_id);
        }
        candidate += 1;
    }
    by_shard.into_values().flatten().collect()
}

/// The node leading the most shards (lowest id on ties).
pub fn node_leading_most_shards(leaders: &BTreeMap<ShardId, NodeId>) -> NodeId {
    let mut counts: BTreeMap<NodeId, usize> = BTreeMap::new();
    for leader in leaders.values() {
        *counts.entry(*leader).or_default() += 1;
    }
    let most = counts.values().copied().max().unwrap_or(0);
    counts
        .into_iter()
        .find(|(_, count)| *count == most)
        .map(|(node, _)| node)
        .unwrap_or(1)
}

/// The value of `ledger_election_prevote_rounds_total{node, result}` in node `id`'s `/metrics`
/// (`result` is `won` or `lost`).
pub async fn prevote_rounds(
    client: &LedgerClient,
    node_url: &str,
    id: NodeId,
    result: &str,
) -> anyhow::Result<f64> {
    let metrics = client.metrics(node_url).await?;
    let prefix =
        format!("ledger_election_prevote_rounds_total{{node=\"{id}\",result=\"{result}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .with_context(|| format!("no {prefix} in /metrics of node {id}:\n{metrics}"))?
        .trim()
        .parse::<f64>()
        .context("a number of rounds")
}
