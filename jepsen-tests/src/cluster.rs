//! The cluster under test: N `ledgerd` processes on loopback, each with its own config file (the
//! operators' TOML format), data directory, log file and clock offset file, in the run
//! directory.
//!
//! In [`NetworkMode::RaftProxy`] node j binds Raft on a private port and every config advertises
//! the [`RaftProxy`]'s port for j instead, so the harness sits on every Raft link. In
//! [`NetworkMode::Namespaces`] every node runs in a network namespace of its own
//! ([`NetnsNetwork`]) on its own address instead of loopback. Every wait polls a condition with a
//! deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use ledger_api::ClusterResponse;
use ledger_client::{ClientOptions, LedgerClient};

use crate::clock::{write_offset, Faketime};
use crate::error::HarnessError;
use crate::netns::NetnsNetwork;
use crate::proxy::{BlockedLinks, ProxiedNode, RaftProxy};
use crate::NodeId;

/// The nodes the cluster removed, shared with the workloads' clients so that they stop sending
/// requests to a node that is gone.
pub type RemovedNodes = Arc<RwLock<BTreeSet<NodeId>>>;

/// The environment variable that switches a named bug on in a `fault-injection` build.
pub const FAULT_INJECTION_ENV: &str = "LEDGER_FAULT_INJECTION";
/// Interval between two checks of a condition being waited for.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

pub type ShardId = u32;

/// The HTTP port of every node in its own namespace (each namespace has its own ports).
pub const NAMESPACE_HTTP_PORT: u16 = 7_000;
/// The Raft port of every node in its own namespace.
pub const NAMESPACE_RAFT_PORT: u16 = 7_100;

/// How the nodes are connected, and what a partition cuts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkMode {
    /// Loopback, nothing in between: partitions are impossible.
    Loopback,
    /// Loopback with the harness's proxy on every Raft link: partitions cut Raft only (no root).
    RaftProxy,
    /// A network namespace per node behind a bridge: partitions are firewall DROP rules that
    /// cut every packet between nodes (root only).
    Namespaces,
}

impl NetworkMode {
    pub fn name(self) -> &'static str {
        match self {
            NetworkMode::Loopback => "loopback",
            NetworkMode::RaftProxy => "proxy (Raft links only)",
            NetworkMode::Namespaces => "netns (firewall rules between namespaces)",
        }
    }
}

/// What the cluster is made of.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub node_count: usize,
    pub shard_count: u32,
    /// `[snapshots] entries_since_last` of every node: low, so that runs build snapshots,
    /// restart from them and install them on lagging replicas.
    pub snapshot_entries: u64,
    pub ledgerd: PathBuf,
    pub run_dir: PathBuf,
    /// How nodes are connected (the partition nemesis needs the proxy or namespaces).
    pub network: NetworkMode,
    /// Run every node under libfaketime (needed by the clock nemesis).
    pub faketime: Option<Faketime>,
    /// A named bug of a `fault-injection` build, passed as [`FAULT_INJECTION_ENV`].
    pub bug: Option<String>,
}

/// One `ledgerd` slot: addresses, files and the process when it runs.
pub struct NodeProcess {
    pub id: NodeId,
    pub http_addr: SocketAddr,
    /// Where the node's Raft listener binds.
    pub raft_bind_addr: SocketAddr,
    /// Where the other nodes dial it (the proxy when partitions are enabled).
    pub raft_advertised_addr: SocketAddr,
    pub config_path: PathBuf,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub clock_offset_path: PathBuf,
    process: Option<Child>,
    paused: bool,
    starts: u32,
}

impl NodeProcess {
    pub fn url(&self) -> String {
        format!("http://{}", self.http_addr)
    }
}

/// The nodes and the harness's view of them.
pub struct Cluster {
    options: ClusterOptions,
    nodes: Vec<NodeProcess>,
    /// One attempt per call: the harness asks one node at a time.
    admin: LedgerClient,
    proxy: Option<RaftProxy>,
    /// Declared after nothing that needs it: `Drop for Cluster` stops the nodes before the
    /// fields drop, so the namespaces are deleted only once no node runs in them.
    netns: Option<NetnsNetwork>,
    /// Two spare free ports for probes (the clock check).
    pub spare_ports: (u16, u16),
    /// Nodes the cluster removed for good (drained by the membership nemesis, then retired):
    /// they exit and are refused if started again, so the harness leaves them out.
    removed: BTreeSet<NodeId>,
    /// The same set, for the workloads' clients.
    removed_shared: RemovedNodes,
    /// For the membership nemesis' calls, which wait for the cluster (a leadership hand-over
    /// takes about 2 s).
    operator: LedgerClient,
}

impl Cluster {
    /// Writes the configs, starts the proxy if wanted, and starts every node (no waiting).
    pub async fn start(options: ClusterOptions) -> Result<Cluster, HarnessError> {
        let count = options.node_count;
        let ports = free_ports(count * 3 + 2)?;
        let loopback = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let node_ids: Vec<NodeId> = (1..=count as NodeId).collect();
        let netns = if options.network == NetworkMode::Namespaces {
            Some(NetnsNetwork::create(&node_ids)?)
        } else {
            None
        };
        let mut nodes = Vec::with_capacity(count);
        for (index, &id) in node_ids.iter().enumerate() {
            let (http_addr, raft_bind_addr) = match netns.as_ref().and_then(|net| net.node(id)) {
                Some(place) => (
                    SocketAddr::from((place.address, NAMESPACE_HTTP_PORT)),
                    SocketAddr::from((place.address, NAMESPACE_RAFT_PORT)),
                ),
                None => (loopback(ports[3 * index]), loopback(ports[3 * index + 1])),
            };
            let raft_advertised_addr = if options.network == NetworkMode::RaftProxy {
                loopback(ports[3 * index + 2])
            } else {
                raft_bind_addr
            };
            nodes.push(NodeProcess {
                id,
                http_addr,
                raft_bind_addr,
                raft_advertised_addr,
                config_path: options.run_dir.join(format!("node{id}.toml")),
                data_dir: options.run_dir.join(format!("data/node{id}")),
                log_path: options.run_dir.join(format!("node{id}.log")),
                clock_offset_path: options.run_dir.join(format!("node{id}.clock-offset")),
                process: None,
                paused: false,
                starts: 0,
            });
        }
        let replication = count.min(3);
        for node in &nodes {
            let config = node_config(node, &nodes, &options, replication);
            std::fs::write(&node.config_path, config)
                .map_err(HarnessError::io("writing", &node.config_path))?;
            write_offset(&node.clock_offset_path, 0)?;
        }
        let proxy = if options.network == NetworkMode::RaftProxy {
            let proxied: Vec<ProxiedNode> = nodes
                .iter()
                .map(|node| ProxiedNode {
                    node: node.id,
                    advertised: node.raft_advertised_addr,
                    private: node.raft_bind_addr,
                })
                .collect();
            Some(RaftProxy::start(&proxied).await?)
        } else {
            None
        };
        let admin = LedgerClient::with_options(
            nodes.iter().map(NodeProcess::url).collect(),
            ClientOptions {
                request_timeout_ms: 2_000,
                max_attempts: 1,
                ..ClientOptions::default()
            },
        )?;
        let operator = LedgerClient::with_options(
            nodes.iter().map(NodeProcess::url).collect(),
            ClientOptions {
                request_timeout_ms: 15_000,
                max_attempts: 1,
                ..ClientOptions::default()
            },
        )?;
        let spare_ports = (ports[count * 3], ports[count * 3 + 1]);
        let mut cluster = Cluster {
            options,
            nodes,
            admin,
            proxy,
            netns,
            spare_ports,
            removed: BTreeSet::new(),
            removed_shared: RemovedNodes::default(),
            operator,
        };
        for id in cluster.node_ids() {
            cluster.spawn(id)?;
        }
        Ok(cluster)
    }

    pub fn options(&self) -> &ClusterOptions {
        &self.options
    }

    /// The nodes of the cluster: every node started, except those the cluster removed.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .map(|node| node.id)
            .filter(|id| !self.removed.contains(id))
            .collect()
    }

    /// Replicas per shard (the configs' `replication`).
    pub fn replication(&self) -> usize {
        self.options.node_count.min(3)
    }

    /// A client for operator calls (cluster apply, shard move, leader transfer).
    pub fn operator(&self) -> LedgerClient {
        self.operator.clone()
    }

    pub fn removed(&self) -> &BTreeSet<NodeId> {
        &self.removed
    }

    /// The removed nodes as they will be: the set grows when the cluster removes a node.
    pub fn removed_nodes(&self) -> RemovedNodes {
        Arc::clone(&self.removed_shared)
    }

    /// Whether `node`, which exited by itself, was removed by the cluster (a serving node's
    /// cluster map lists it as removed); if so it is left out from now on.
    pub async fn take_if_removed(&mut self, node: NodeId) -> bool {
        let removed = self.views().await.values().any(|view| {
            view.map
                .as_ref()
                .is_some_and(|map| map.removed.contains(&node))
        });
        if removed {
            self.removed.insert(node);
            self.removed_shared
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(node);
        }
        removed
    }

    pub fn node(&self, id: NodeId) -> Option<&NodeProcess> {
        self.nodes.iter().find(|node| node.id == id)
    }

    fn node_mut(&mut self, id: NodeId) -> Result<&mut NodeProcess, HarnessError> {
        self.nodes
            .iter_mut()
            .find(|node| node.id == id)
            .ok_or(HarnessError::Node {
                node: id,
                message: "no such node".to_owned(),
            })
    }

    /// (node id, base URL) of every node, running or not.
    pub fn urls(&self) -> Vec<(NodeId, String)> {
        self.nodes
            .iter()
            .map(|node| (node.id, node.url()))
            .collect()
    }

    pub fn proxy(&self) -> Option<&RaftProxy> {
        self.proxy.as_ref()
    }

    pub fn netns(&self) -> Option<&NetnsNetwork> {
        self.netns.as_ref()
    }

    /// Whether the network can be partitioned (proxy or namespaces).
    pub fn can_partition(&self) -> bool {
        self.proxy.is_some() || self.netns.is_some()
    }

    /// Replaces the set of cut (source, target) links: refused by the proxy, or dropped by the
    /// target's firewall in namespaces.
    pub fn set_partition(&self, blocked: BlockedLinks) -> Result<(), HarnessError> {
        if let Some(netns) = &self.netns {
            return netns.set_blocked(&blocked);
        }
        match &self.proxy {
            Some(proxy) => {
                proxy.set_blocked(blocked);
                Ok(())
            }
            None => Err(HarnessError::Options {
                message: "the partition nemesis needs the Raft proxy or --net netns".to_owned(),
            }),
        }
    }

    pub fn heal_partition(&self) -> Result<(), HarnessError> {
        self.set_partition(BlockedLinks::new())
    }

    pub fn is_running(&self, id: NodeId) -> bool {
        self.node(id).is_some_and(|node| node.process.is_some())
    }

    pub fn is_paused(&self, id: NodeId) -> bool {
        self.node(id).is_some_and(|node| node.paused)
    }

    /// Running and not paused: the nodes that can answer.
    pub fn serving_node_ids(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|node| node.process.is_some() && !node.paused)
            .filter(|node| !self.removed.contains(&node.id))
            .map(|node| node.id)
            .collect()
    }

    /// Starts node `id` on its config and data directory.
    pub fn spawn(&mut self, id: NodeId) -> Result<(), HarnessError> {
        let ledgerd = self.options.ledgerd.clone();
        let run_dir = self.options.run_dir.clone();
        let faketime = self.options.faketime.clone();
        let bug = self.options.bug.clone();
        if self.removed.contains(&id) {
            return Err(HarnessError::Node {
                node: id,
                message: "was removed from the cluster".to_owned(),
            });
        }
        let node = self.node_mut(id)?;
        if node.process.is_some() {
            return Err(HarnessError::Node {
                node: id,
                message: "already runs".to_owned(),
            });
        }
        node.starts += 1;
        append_to_log(
            &node.log_path,
            &format!("===== harness: start #{} of node {id} =====", node.starts),
        );
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .map_err(HarnessError::io("opening", &node.log_path))?;
        let log_for_stderr = log
            .try_clone()
            .map_err(HarnessError::io("sharing", &node.log_path))?;
        let mut command = Command::new(&ledgerd);
        command
            .arg("--config")
            .arg(&node.config_path)
            .current_dir(&run_dir)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info,openraft=warn".to_owned()),
            )
            // Plain text in the log files: colour codes only help a terminal.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_for_stderr));
        if let Some(faketime) = &faketime {
            command.envs(faketime.environment(&node.clock_offset_path));
        }
        if let Some(bug) = &bug {
            command.env(FAULT_INJECTION_ENV, bug);
        }
        let namespace = match &self.netns {
            Some(netns) => Some(netns.enter_namespace(id, &mut command)?),
            None => None,
        };
        let process = command
            .spawn()
            .map_err(HarnessError::io("spawning", &ledgerd))?;
        drop(namespace);
        let node = self.node_mut(id)?;
        node.process = Some(process);
        node.paused = false;
        Ok(())
    }

    /// SIGKILL (a crash); returns once the process is reaped.
    pub fn kill(&mut self, id: NodeId) -> Result<(), HarnessError> {
        let node = self.node_mut(id)?;
        let Some(mut process) = node.process.take() else {
            return Err(HarnessError::Node {
                node: id,
                message: "is not running".to_owned(),
            });
        };
        let killed = process.kill().and_then(|()| process.wait());
        node.paused = false;
        append_to_log(&node.log_path, "===== harness: SIGKILL =====");
        killed.map(|_| ()).map_err(|error| HarnessError::Node {
            node: id,
            message: format!("SIGKILL failed: {error}"),
        })
    }

    /// SIGSTOP: the process keeps its sockets but answers nothing.
    pub fn pause(&mut self, id: NodeId) -> Result<(), HarnessError> {
        self.signal(id, libc::SIGSTOP)?;
        self.node_mut(id)?.paused = true;
        Ok(())
    }

    /// SIGCONT after a pause.
    pub fn resume(&mut self, id: NodeId) -> Result<(), HarnessError> {
        self.signal(id, libc::SIGCONT)?;
        self.node_mut(id)?.paused = false;
        Ok(())
    }

    fn signal(&mut self, id: NodeId, signal: libc::c_int) -> Result<(), HarnessError> {
        let node = self.node_mut(id)?;
        let Some(process) = &node.process else {
            return Err(HarnessError::Node {
                node: id,
                message: "is not running".to_owned(),
            });
        };
        let pid = libc::pid_t::try_from(process.id()).map_err(|_| HarnessError::Node {
            node: id,
            message: "pid out of range".to_owned(),
        })?;
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped (the `Child` is
        // held), so the pid cannot belong to another process.
        let result = unsafe { libc::kill(pid, signal) };
        if result != 0 {
            return Err(HarnessError::Node {
                node: id,
                message: format!(
                    "kill({pid}, {signal}) failed: {}",
                    std::io::Error::last_os_error()
                ),
            });
        }
        Ok(())
    }

    /// Sets a node's wall-clock offset (effective within libfaketime's cache time).
    pub fn set_clock_offset(&self, id: NodeId, offset_seconds: i64) -> Result<(), HarnessError> {
        let node = self.node(id).ok_or(HarnessError::Node {
            node: id,
            message: "no such node".to_owned(),
        })?;
        write_offset(&node.clock_offset_path, offset_seconds)
    }

    /// Nodes that exited by themselves since the last call (a crash the harness did not cause,
    /// e.g. an invariant assertion): reaped, with their exit status.
    pub fn reap_exited(&mut self) -> Vec<(NodeId, ExitStatus)> {
        let mut exited = Vec::new();
        for node in &mut self.nodes {
            let Some(process) = node.process.as_mut() else {
                continue;
            };
            if let Ok(Some(status)) = process.try_wait() {
                node.process = None;
                node.paused = false;
                append_to_log(
                    &node.log_path,
                    &format!("===== harness: exited by itself ({status}) ====="),
                );
                exited.push((node.id, status));
            }
        }
        exited
    }

    /// `GET /admin/cluster` of every serving node; a node that does not answer is left out.
    pub async fn views(&self) -> BTreeMap<NodeId, ClusterResponse> {
        let mut views = BTreeMap::new();
        for id in self.serving_node_ids() {
            let Some(node) = self.node(id) else { continue };
            if let Ok(view) = self.admin.cluster(&node.url()).await {
                if view.node_id == id {
                    views.insert(id, view);
                }
            }
        }
        views
    }

    /// The node that leads the most shards in the views (lowest id on ties), if any leads.
    pub async fn leader_of_most_shards(&self) -> Option<NodeId> {
        let views = self.views().await;
        let mut counts: BTreeMap<NodeId, usize> = BTreeMap::new();
        for (node_id, view) in &views {
            for shard in &view.shards {
                if shard.leader == Some(*node_id) {
                    *counts.entry(*node_id).or_default() += 1;
                }
            }
        }
        let most = counts.values().copied().max()?;
        counts
            .into_iter()
            .find(|(_, count)| *count == most)
            .map(|(node, _)| node)
    }

    /// Waits until every serving node answers `GET /health` with 200.
    pub async fn wait_for_health(&mut self, timeout: Duration) -> Result<(), HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.fail_on_exit().await?;
            let mut unhealthy = Vec::new();
            for id in self.serving_node_ids() {
                if let Some(node) = self.node(id) {
                    if !self.admin.health(&node.url()).await.unwrap_or(false) {
                        unhealthy.push(id);
                    }
                }
            }
            if unhealthy.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::NotReady {
                    timeout_ms: millis(timeout),
                    reason: format!("nodes {unhealthy:?} not healthy"),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until every shard has a leader that every serving replica agrees on.
    pub async fn wait_for_leaders(
        &mut self,
        timeout: Duration,
    ) -> Result<BTreeMap<ShardId, NodeId>, HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.fail_on_exit().await?;
            let serving: BTreeSet<NodeId> = self.serving_node_ids().into_iter().collect();
            let views = self.views().await;
            let reason = if views.len() < serving.len() {
                format!(
                    "only nodes {:?} answer /admin/cluster",
                    views.keys().collect::<Vec<_>>()
                )
            } else {
                match agreed_leaders(&views, self.options.shard_count) {
                    Ok(leaders) => return Ok(leaders),
                    Err(reason) => reason,
                }
            };
            if Instant::now() >= deadline {
                return Err(HarnessError::NotReady {
                    timeout_ms: millis(timeout),
                    reason,
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn fail_on_exit(&mut self) -> Result<(), HarnessError> {
        for (node, status) in self.reap_exited() {
            if self.take_if_removed(node).await {
                continue;
            }
            return Err(HarnessError::Node {
                node,
                message: format!(
                    "exited by itself ({status}); {}",
                    self.node(node)
                        .map(|node| exit_reason(&node.log_path))
                        .unwrap_or_default()
                ),
            });
        }
        Ok(())
    }

    /// Stops every node: SIGCONT (a paused process cannot exit cleanly otherwise), then SIGKILL.
    pub fn stop_all(&mut self) {
        for id in self.node_ids() {
            if self.is_paused(id) {
                let _ = self.resume(id);
            }
            if self.is_running(id) {
                let _ = self.kill(id);
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The config of `node` in the operators' format. The top-level `raft_addr` is where it binds;
/// `cluster.nodes[].raft_addr` is where the others dial (the proxy when partitions are on).
fn node_config(
    node: &NodeProcess,
    nodes: &[NodeProcess],
    options: &ClusterOptions,
    replication: usize,
) -> String {
    let mut config = String::new();
    let _ = writeln!(config, "# Written by jepsen-tests for one run.");
    let _ = writeln!(config, "node_id = {}", node.id);
    let _ = writeln!(
        config,
        "data_dir = {:?}",
        node.data_dir.display().to_string()
    );
    let _ = writeln!(config, "http_addr = \"{}\"", node.http_addr);
    let _ = writeln!(config, "raft_addr = \"{}\"", node.raft_bind_addr);
    let _ = writeln!(config, "[cluster]");
    let _ = writeln!(config, "shards = {}", options.shard_count);
    let _ = writeln!(config, "replication = {replication}");
    let _ = writeln!(config, "nodes = [");
    for other in nodes {
        let _ = writeln!(
            config,
            "  {{ id = {}, http_addr = \"{}\", raft_addr = \"{}\" }},",
            other.id, other.http_addr, other.raft_advertised_addr
        );
    }
    let _ = writeln!(config, "]");
    let _ = writeln!(config, "[snapshots]");
    let _ = writeln!(config, "entries_since_last = {}", options.snapshot_entries);
    // Kept short too, so that a replica back from a fault often needs a snapshot transfer.
    let _ = writeln!(
        config,
        "entries_to_keep = {}",
        (options.snapshot_entries / 4).max(1)
    );
    config
}

/// `count` distinct loopback ports that are free right now, taken below the kernel's ephemeral
/// range: ports from that range are also handed to outgoing connections, so a node restarted on
/// its port could find it taken by another node's connection.
fn free_ports(count: usize) -> Result<Vec<u16>, HarnessError> {
    const LOWEST: u16 = 20_000;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let highest = ephemeral_start.max(LOWEST + 1_000);
    let span = u32::from(highest - LOWEST);
    // A start that differs between harness processes, so that concurrent runs rarely collide.
    let offset = std::process::id().wrapping_mul(7_919) % span;
    let mut held = Vec::with_capacity(count);
    for step in 0..span {
        if held.len() == count {
            break;
        }
        let port = LOWEST + ((offset + step) % span) as u16;
        // Holding the listeners until all are chosen keeps the ports distinct.
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(listener);
        }
    }
    if held.len() < count {
        return Err(HarnessError::Setup {
            message: format!("found only {} free loopback ports", held.len()),
        });
    }
    held.iter()
        .map(|listener| {
            listener
                .local_addr()
                .map(|address| address.port())
                .map_err(HarnessError::io(
                    "reading the address of",
                    "a probe listener",
                ))
        })
        .collect()
}

fn append_to_log(path: &Path, line: &str) {
    // Best effort: the marker only helps a human reading the log.
    if let Ok(mut file) = OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(file, "{line}");
    }
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(error) => format!("(cannot read {}: {error})", path.display()),
    }
}

/// What a node that exited printed about why: its `Error:` lines (anyhow's report, before the
/// backtrace) and panics, or else the last lines of its log.
fn exit_reason(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let reasons: Vec<&str> = text
        .lines()
        .filter(|line| {
            line.starts_with("Error:") || line.contains("panicked at") || line.contains("panic:")
        })
        .collect();
    if reasons.is_empty() {
        format!(
            "last lines of its log {}:\n{}",
            path.display(),
            log_tail(path, 30)
        )
    } else {
        format!(
            "its log {} says:\n{}",
            path.display(),
            reasons[reasons.len().saturating_sub(5)..].join("\n")
        )
    }
}

/// The leader of every shard if all answering replicas agree on one answering leader.
pub fn agreed_leaders(
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
            [] => return Err(format!("no answering node hosts shard {shard_id}")),
            other => return Err(format!("shard {shard_id}: leaders seen {other:?}")),
        };
        if !views.contains_key(&leader) {
            return Err(format!("shard {shard_id}: leader {leader} does not answer"));
        }
        leaders.insert(shard_id, leader);
    }
    Ok(leaders)
}
