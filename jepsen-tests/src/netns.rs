//! Real partitions with network namespaces (`--net netns`, root only).
//!
//! Every node runs in a network namespace of its own (`jt-<pid>-n<id>`, where `<pid>` is the
//! harness's process id), connected by a veth pair (`jt-<pid>-v<id>` on the host side, `eth0`
//! inside) to a bridge `jt-<pid>-br` in the root namespace. The bridge has the address
//! `10.<a>.<b>.254/24` and node `id` has `10.<a>.<b>.<id>`, so the harness's clients in the root
//! namespace reach every node over the bridge, and nodes reach each other through it too.
//!
//! A partition is a set of DROP rules in the nodes' own firewalls (an nftables table `inet jt`,
//! or iptables' `INPUT` chain when nft is missing): for a blocked link (source, target), the
//! target drops every packet from the source's address. Unlike the Raft proxy this cuts *every*
//! packet between the two nodes (Raft and HTTP forwarding, new and established connections),
//! while the harness's own traffic (from the bridge address) still passes.
//!
//! Everything created here is removed by [`NetnsNetwork`]'s `Drop` (also after an error or a
//! Ctrl-C that unwinds the run), and [`NetnsNetwork::create`] first removes leftovers of
//! harness processes that no longer run (a `kill -9` of the harness cannot clean up).

use std::fs::File;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::HarnessError;
use crate::proxy::BlockedLinks;
use crate::NodeId;

/// Every name created here starts with this, followed by the owner's pid and a dash.
pub const NAME_PREFIX: &str = "jt-";
/// The last octet of the bridge's address; nodes use their id (1..=5).
const BRIDGE_HOST_OCTET: u8 = 254;

/// Which firewall holds the partition rules inside the node namespaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firewall {
    Nft,
    Iptables,
}

impl Firewall {
    pub fn name(self) -> &'static str {
        match self {
            Firewall::Nft => "nft",
            Firewall::Iptables => "iptables",
        }
    }
}

/// One node's place in the network.
#[derive(Clone, Debug)]
pub struct NetnsNode {
    pub id: NodeId,
    pub namespace: String,
    pub address: Ipv4Addr,
}

/// The namespaces, veths and bridge of one run, torn down on drop.
pub struct NetnsNetwork {
    owner_pid: u32,
    bridge: String,
    bridge_address: Ipv4Addr,
    nodes: Vec<NetnsNode>,
    firewall: Firewall,
    torn_down: bool,
}

/// The namespace of node `id` of the harness process `owner_pid`.
pub fn namespace_name(owner_pid: u32, id: NodeId) -> String {
    format!("{NAME_PREFIX}{owner_pid}-n{id}")
}

/// The host side of node `id`'s veth (interface names have at most 15 bytes: a pid has at most
/// 7 digits, so this has at most 13 for a one-digit node id).
pub fn veth_name(owner_pid: u32, id: NodeId) -> String {
    format!("{NAME_PREFIX}{owner_pid}-v{id}")
}

pub fn bridge_name(owner_pid: u32) -> String {
    format!("{NAME_PREFIX}{owner_pid}-br")
}

/// The pid of the harness that created a `jt-<pid>-...` name, if it is one of ours.
pub fn owner_of(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let (pid, suffix) = rest.split_once('-')?;
    if suffix.is_empty() || !pid.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// The first two variable octets of the run's /24, derived from the pid so that concurrent runs
/// usually differ; [`NetnsNetwork::create`] moves on while the subnet is in use.
pub fn subnet_for(owner_pid: u32, attempt: u32) -> (u8, u8) {
    let index = owner_pid.wrapping_add(attempt.wrapping_mul(7_919)) % (50 * 256);
    ((200 + index / 256) as u8, (index % 256) as u8)
}

/// The nft script that replaces the partition rules of the node at `own` with DROPs of the
/// packets of every source in `dropped_sources`.
pub fn nft_partition_script(dropped_sources: &[Ipv4Addr]) -> String {
    let mut script = String::from("flush chain inet jt input\n");
    if !dropped_sources.is_empty() {
        let sources: Vec<String> = dropped_sources.iter().map(Ipv4Addr::to_string).collect();
        script.push_str(&format!(
            "add rule inet jt input ip saddr {{ {} }} drop\n",
            sources.join(", ")
        ));
    }
    script
}

/// The sources whose packets node `target` must drop under `blocked`.
pub fn dropped_sources(
    blocked: &BlockedLinks,
    target: NodeId,
    nodes: &[NetnsNode],
) -> Vec<Ipv4Addr> {
    nodes
        .iter()
        .filter(|node| blocked.contains(&(node.id, target)))
        .map(|node| node.address)
        .collect()
}

impl NetnsNetwork {
    /// Checks root and tools (installing `iproute2` / `nftables` with apt-get when missing),
    /// removes leftovers of dead harness processes, and creates the network for `node_ids`.
    pub fn create(node_ids: &[NodeId]) -> Result<NetnsNetwork, HarnessError> {
        if !is_root() {
            return Err(network_error(
                "--net netns needs root (network namespaces, veths and firewall rules); run as \
                 root or use the default --net proxy",
            ));
        }
        let firewall = ensure_tools()?;
        for removed in cleanup_leftovers() {
            eprintln!("removed a leftover of an earlier run: {removed}");
        }
        let owner_pid = std::process::id();
        let (a, b) = free_subnet(owner_pid)?;
        let mut network = NetnsNetwork {
            owner_pid,
            bridge: bridge_name(owner_pid),
            bridge_address: Ipv4Addr::new(10, a, b, BRIDGE_HOST_OCTET),
            nodes: Vec::new(),
            firewall,
            torn_down: false,
        };
        // From here on, a failure drops `network`, which removes what was created so far.
        let bridge = network.bridge.clone();
        run(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", network.bridge_address),
            "dev",
            &bridge,
        ])?;
        run(&["ip", "link", "set", &bridge, "up"])?;
        for &id in node_ids {
            let octet = u8::try_from(id)
                .ok()
                .filter(|octet| (1..BRIDGE_HOST_OCTET).contains(octet))
                .ok_or_else(|| network_error(&format!("node id {id} does not fit an address")))?;
            let node = NetnsNode {
                id,
                namespace: namespace_name(owner_pid, id),
                address: Ipv4Addr::new(10, a, b, octet),
            };
            network.nodes.push(node.clone());
            let veth = veth_name(owner_pid, id);
            let namespace = node.namespace.as_str();
            run(&["ip", "netns", "add", namespace])?;
            run(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
                namespace,
            ])?;
            run(&["ip", "link", "set", &veth, "master", &bridge, "up"])?;
            run(&["ip", "-n", namespace, "link", "set", "lo", "up"])?;
            run(&[
                "ip",
                "-n",
                namespace,
                "addr",
                "add",
                &format!("{}/24", node.address),
                "dev",
                "eth0",
            ])?;
            run(&["ip", "-n", namespace, "link", "set", "eth0", "up"])?;
            network.init_firewall(&node)?;
        }
        Ok(network)
    }

    pub fn firewall(&self) -> Firewall {
        self.firewall
    }

    pub fn nodes(&self) -> &[NetnsNode] {
        &self.nodes
    }

    pub fn bridge_address(&self) -> Ipv4Addr {
        self.bridge_address
    }

    pub fn node(&self, id: NodeId) -> Option<&NetnsNode> {
        self.nodes.iter().find(|node| node.id == id)
    }

    /// Makes `command` start inside node `id`'s namespace (`setns` in the child before exec).
    /// The returned file must be held until the command is spawned.
    pub fn enter_namespace(&self, id: NodeId, command: &mut Command) -> Result<File, HarnessError> {
        let node = self
            .node(id)
            .ok_or_else(|| network_error(&format!("node {id} has no namespace")))?;
        let path = namespace_path(&node.namespace);
        let file = File::open(&path).map_err(HarnessError::io("opening", &path))?;
        let descriptor = file.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and only calls setns(2), which
        // is async-signal-safe; the descriptor stays open because the caller holds `file` until
        // spawn returns (it is close-on-exec, so the node does not inherit it).
        unsafe {
            command.pre_exec(move || {
                if libc::setns(descriptor, libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        Ok(file)
    }

    /// Replaces the partition: every node drops the packets of the sources blocked towards it.
    pub fn set_blocked(&self, blocked: &BlockedLinks) -> Result<(), HarnessError> {
        for node in &self.nodes {
            let sources = dropped_sources(blocked, node.id, &self.nodes);
            match self.firewall {
                Firewall::Nft => run_with_input(
                    &["ip", "netns", "exec", &node.namespace, "nft", "-f", "-"],
                    &nft_partition_script(&sources),
                )?,
                Firewall::Iptables => {
                    let exec = [
                        "ip",
                        "netns",
                        "exec",
                        node.namespace.as_str(),
                        "iptables",
                        "-w",
                    ];
                    run(&[&exec[..], &["-F", "INPUT"]].concat())?;
                    for source in sources {
                        let source = source.to_string();
                        run(&[&exec[..], &["-A", "INPUT", "-s", &source, "-j", "DROP"]].concat())?;
                    }
                }
            }
        }
        Ok(())
    }

    pub fn heal(&self) -> Result<(), HarnessError> {
        self.set_blocked(&BlockedLinks::new())
    }

    fn init_firewall(&self, node: &NetnsNode) -> Result<(), HarnessError> {
        match self.firewall {
            Firewall::Nft => run_with_input(
                &["ip", "netns", "exec", &node.namespace, "nft", "-f", "-"],
                "table inet jt {\n  chain input {\n    type filter hook input priority 0; policy accept;\n  }\n}\n",
            ),
            // A fresh namespace has empty iptables chains with policy ACCEPT.
            Firewall::Iptables => Ok(()),
        }
    }

    /// Deletes the namespaces (which removes the veths) and the bridge. Best effort: returns
    /// what could not be removed. The nodes must be stopped first.
    pub fn teardown(&mut self) -> Vec<String> {
        if self.torn_down {
            return Vec::new();
        }
        self.torn_down = true;
        let mut failures = Vec::new();
        for node in &self.nodes {
            // The veth pair goes first and explicitly: a namespace outlives its name while
            // killed nodes' sockets linger in it (retransmitting into a partition), and the pair
            // would stay with it.
            let veth = veth_name(self.owner_pid, node.id);
            if link_exists(&veth) {
                if let Err(error) = run(&["ip", "link", "delete", &veth]) {
                    failures.push(error.to_string());
                }
            }
            if let Err(error) = run(&["ip", "netns", "delete", &node.namespace]) {
                failures.push(error.to_string());
            }
        }
        if link_exists(&self.bridge) {
            if let Err(error) = run(&["ip", "link", "delete", &self.bridge]) {
                failures.push(error.to_string());
            }
        }
        failures
    }
}

impl Drop for NetnsNetwork {
    fn drop(&mut self) {
        for failure in self.teardown() {
            eprintln!("jepsen-tests: tearing down the network namespaces: {failure}");
        }
    }
}

fn namespace_path(namespace: &str) -> PathBuf {
    Path::new("/run/netns").join(namespace)
}

fn network_error(message: &str) -> HarnessError {
    HarnessError::Network {
        message: message.to_owned(),
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether `program` is an executable file in PATH (or the sbin directories, which a root shell
/// has but `sudo` environments sometimes lack).
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|directory| directory.join(program))
        .find(|candidate| candidate.is_file())
}

/// `ip` and a firewall, installed with apt-get when missing (we are root here).
fn ensure_tools() -> Result<Firewall, HarnessError> {
    if find_program("ip").is_none() {
        apt_install("iproute2")?;
        if find_program("ip").is_none() {
            return Err(network_error(
                "`ip` is missing after apt-get install iproute2",
            ));
        }
    }
    if find_program("nft").is_some() {
        return Ok(Firewall::Nft);
    }
    if find_program("iptables").is_some() {
        return Ok(Firewall::Iptables);
    }
    apt_install("nftables")?;
    if find_program("nft").is_some() {
        return Ok(Firewall::Nft);
    }
    Err(network_error(
        "neither `nft` nor `iptables` is installed, and apt-get install nftables did not provide \
         nft",
    ))
}

fn apt_install(package: &str) -> Result<(), HarnessError> {
    eprintln!("installing {package} (apt-get install -y {package})");
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .map_err(|error| network_error(&format!("cannot run apt-get for {package}: {error}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(network_error(&format!(
            "apt-get install {package} exited with {status}"
        )))
    }
}

/// Runs a command to completion; a non-zero exit is an error carrying its stderr.
fn run(arguments: &[&str]) -> Result<String, HarnessError> {
    run_inner(arguments, None)
}

fn run_with_input(arguments: &[&str], input: &str) -> Result<(), HarnessError> {
    run_inner(arguments, Some(input)).map(|_| ())
}

fn run_inner(arguments: &[&str], input: Option<&str>) -> Result<String, HarnessError> {
    let line = arguments.join(" ");
    let Some((program, rest)) = arguments.split_first() else {
        return Err(network_error("empty command"));
    };
    let mut command = Command::new(program);
    command
        .args(rest)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|error| network_error(&format!("cannot run `{line}`: {error}")))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(input.as_bytes())
            .map_err(|error| network_error(&format!("writing to `{line}`: {error}")))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|error| network_error(&format!("waiting for `{line}`: {error}")))?;
    if !output.status.success() {
        return Err(network_error(&format!(
            "`{line}` exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn link_exists(name: &str) -> bool {
    run(&["ip", "link", "show", "dev", name]).is_ok()
}

/// Whether a harness process with this pid still runs (its namespaces are then in use).
fn harness_alive(pid: u32) -> bool {
    // The binary is `jepsen-tests`; its test binaries are `jepsen_tests-<hash>`.
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|comm| comm.trim_start().starts_with("jepsen"))
}

/// Removes namespaces and links named `jt-<pid>-...` whose harness no longer runs (and kills
/// the node processes still running in those namespaces); returns what it removed. Best effort: what cannot be listed or removed is left for the next run.
pub fn cleanup_leftovers() -> Vec<String> {
    let mut removed = Vec::new();
    let stale = |name: &str| owner_of(name).is_some_and(|pid| !harness_alive(pid));
    // Namespaces first: deleting one removes its veth, and with it the host side.
    let namespaces = run(&["ip", "netns", "list"]).unwrap_or_default();
    for name in namespaces
        .lines()
        .filter_map(|line| line.split_whitespace().next())
    {
        if !stale(name) {
            continue;
        }
        // Nodes of a harness that was killed outlive it and keep their namespace alive (and
        // their ports and data directories busy): they are ours to stop.
        let pids = run(&["ip", "netns", "pids", name]).unwrap_or_default();
        for pid in pids
            .lines()
            .filter_map(|line| line.trim().parse::<libc::pid_t>().ok())
        {
            // SAFETY: kill(2) has no memory preconditions; the pid was listed as running in a
            // namespace only this harness creates.
            if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
                removed.push(format!("node process {pid} in {name}"));
            }
        }
        if run(&["ip", "netns", "delete", name]).is_ok() {
            removed.push(format!("namespace {name}"));
        }
    }
    let links = run(&["ip", "-o", "link", "show"]).unwrap_or_default();
    for name in links.lines().filter_map(link_name_of_line) {
        if stale(&name) && run(&["ip", "link", "delete", &name]).is_ok() {
            removed.push(format!("link {name}"));
        }
    }
    removed
}

/// The interface name of a line of `ip -o link show` (`7: jt-12-v1@if2: <...> ...`).
pub fn link_name_of_line(line: &str) -> Option<String> {
    let mut fields = line.split(": ");
    fields.next()?;
    let name = fields.next()?;
    Some(name.split('@').next().unwrap_or(name).to_owned())
}

/// A /24 in 10.200-249.x.0 that no interface of the root namespace uses yet.
fn free_subnet(owner_pid: u32) -> Result<(u8, u8), HarnessError> {
    let addresses = run(&["ip", "-4", "-o", "addr", "show"])?;
    (0..64)
        .map(|attempt| subnet_for(owner_pid, attempt))
        .find(|(a, b)| !addresses.contains(&format!(" 10.{a}.{b}.")))
        .ok_or_else(|| network_error("no free 10.x.y.0/24 subnet for the bridge"))
}

#[cfg(test)]
mod tests {
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::time::Duration;

    use super::*;
    use crate::proxy::cut_between;

    #[test]
    fn names_fit_interfaces_and_carry_their_owner() {
        let largest_pid = 4_194_304;
        assert!(veth_name(largest_pid, 5).len() <= 15);
        assert!(bridge_name(largest_pid).len() <= 15);
        assert_eq!(owner_of(&namespace_name(4321, 2)), Some(4321));
        assert_eq!(owner_of(&veth_name(17, 1)), Some(17));
        assert_eq!(owner_of(&bridge_name(17)), Some(17));
        assert_eq!(owner_of("jt-probe-br"), None);
        assert_eq!(owner_of("jt-12-"), None);
        assert_eq!(owner_of("eth0"), None);
    }

    #[test]
    fn parses_link_names_of_ip_output() {
        assert_eq!(
            link_name_of_line("7: jt-12-v1@if2: <BROADCAST,MULTICAST,UP> mtu 1500").as_deref(),
            Some("jt-12-v1")
        );
        assert_eq!(
            link_name_of_line("3: jt-12-br: <BROADCAST> mtu 1500").as_deref(),
            Some("jt-12-br")
        );
        assert_eq!(link_name_of_line("garbage"), None);
    }

    #[test]
    fn subnets_stay_in_the_private_range() {
        for pid in [0, 1, 255, 12_799, 12_800, 4_194_304] {
            for attempt in 0..64 {
                let (a, _) = subnet_for(pid, attempt);
                assert!(
                    (200..250).contains(&a),
                    "pid {pid} attempt {attempt}: 10.{a}"
                );
            }
        }
        assert_ne!(subnet_for(1234, 0), subnet_for(1234, 1));
    }

    #[test]
    fn a_node_drops_exactly_the_sources_cut_towards_it() {
        let nodes: Vec<NetnsNode> = (1..=3)
            .map(|id| NetnsNode {
                id,
                namespace: namespace_name(9, id),
                address: Ipv4Addr::new(10, 200, 0, id as u8),
            })
            .collect();
        let blocked = cut_between(&[1], &[2, 3]);
        assert_eq!(
            dropped_sources(&blocked, 1, &nodes),
            vec![Ipv4Addr::new(10, 200, 0, 2), Ipv4Addr::new(10, 200, 0, 3)]
        );
        assert_eq!(
            dropped_sources(&blocked, 2, &nodes),
            vec![Ipv4Addr::new(10, 200, 0, 1)]
        );
        assert!(dropped_sources(&BlockedLinks::new(), 2, &nodes).is_empty());
        assert_eq!(
            nft_partition_script(&[Ipv4Addr::new(10, 200, 0, 2)]),
            "flush chain inet jt input\nadd rule inet jt input ip saddr { 10.200.0.2 } drop\n"
        );
        assert_eq!(nft_partition_script(&[]), "flush chain inet jt input\n");
    }

    /// Runs `action` on a fresh thread that has entered `namespace` (setns affects only the
    /// calling thread), so sockets it creates live in that namespace.
    fn in_namespace<T: Send + 'static>(
        namespace: &str,
        action: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let file = File::open(namespace_path(namespace)).expect("the namespace exists");
        std::thread::spawn(move || {
            // SAFETY: setns(2) on an open namespace descriptor, for this thread only.
            let entered = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(entered, 0, "setns: {}", std::io::Error::last_os_error());
            action()
        })
        .join()
        .expect("the namespace thread")
    }

    fn connects(from: Option<&str>, to: SocketAddr) -> bool {
        // A dropped SYN is never answered: the bound turns "no answer" into a failed connect.
        let attempt = move || TcpStream::connect_timeout(&to, Duration::from_millis(700)).is_ok();
        match from {
            Some(namespace) => in_namespace(namespace, attempt),
            None => attempt(),
        }
    }

    /// As root: real namespaces, a listener in node 1's, and a partition that cuts node 2 from
    /// node 1 but not the harness; everything is gone after the drop. Without root: the clear
    /// refusal.
    #[test]
    fn partitions_cut_nodes_but_not_the_harness_and_teardown_removes_everything() {
        if !is_root() {
            let error = NetnsNetwork::create(&[1, 2])
                .err()
                .expect("refused without root");
            assert!(error.to_string().contains("needs root"), "{error}");
            return;
        }
        let network = NetnsNetwork::create(&[1, 2]).expect("the network is created");
        let node_1 = network.node(1).expect("node 1").clone();
        let node_2 = network.node(2).expect("node 2").clone();
        let target = SocketAddr::from((node_1.address, 7_000));
        let listener = in_namespace(&node_1.namespace, move || {
            TcpListener::bind(target).expect("bind inside node 1's namespace")
        });
        assert!(connects(None, target), "the harness reaches node 1");
        assert!(
            connects(Some(&node_2.namespace), target),
            "node 2 reaches node 1"
        );

        network
            .set_blocked(&cut_between(&[1], &[2]))
            .expect("the partition is set");
        assert!(
            !connects(Some(&node_2.namespace), target),
            "node 2 is cut from node 1"
        );
        assert!(connects(None, target), "the harness still reaches node 1");

        network.heal().expect("healed");
        assert!(
            connects(Some(&node_2.namespace), target),
            "node 2 reaches node 1 again"
        );
        drop(listener);

        let names = [node_1.namespace.clone(), node_2.namespace.clone()];
        let bridge = network.bridge.clone();
        let veths = [
            veth_name(network.owner_pid, 1),
            veth_name(network.owner_pid, 2),
        ];
        drop(network);
        for veth in veths {
            assert!(!link_exists(&veth), "{veth} was removed");
        }
        let namespaces = run(&["ip", "netns", "list"]).expect("ip netns list");
        for name in names {
            assert!(!namespaces.contains(&name), "{name} was removed");
        }
        assert!(!link_exists(&bridge), "{bridge} was removed");
    }
}
