//! `ledgerctl`: the operator's command line for a running Credit Ledger cluster.
//!
//! - `ledgerctl status`: every node's view of every shard (leader, members, applied index) and
//!   whether the replicas of a shard agree (same digest at the same applied index).
//! - `ledgerctl shards`: the shard map (members and leader of each shard).
//! - `ledgerctl backup NAME`: a RocksDB checkpoint on every node, under its data directory.
//! - `ledgerctl cluster apply FILE`: declare the node set of a cluster config file (the
//!   `[cluster] nodes` of a node config); the cluster then moves replicas by itself.
//! - `ledgerctl cluster status [--wait]`: the cluster map: declared nodes, the move under way
//!   with a progress bar, moves remaining; `--wait` follows it until nothing is left to move.
//! - `ledgerctl shard transfer-leader SHARD --to NODE`: hand a shard's leadership to one of its
//!   replicas (the shard pauses for about 1.7 s; requests wait, none fails).
//! - `ledgerctl shard move SHARD --from NODE --to NODE [--wait]`: move one replica of a shard.
//!
//! It talks to the nodes' HTTP API only (`GET /admin/cluster`, `POST /admin/backups`,
//! `POST /admin/cluster/apply`, `POST /admin/shards/{s}/transfer-leader|move`), starting from `--node` and reaching every node of the cluster
//! map (or of that node's configuration before the map is known).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use ledger_api::{ClusterResponse, NodeInfo};
use ledger_client::{ClientError, ClientOptions, LedgerClient};
use serde::Deserialize;

/// How often `--wait` polls the cluster.
const WAIT_POLL: Duration = Duration::from_millis(500);
/// How long `cluster apply` retries while the cluster answers 503 (forming, electing).
const APPLY_RETRY_LIMIT: Duration = Duration::from_secs(60);
/// How long `--wait` follows the moves at most.
const WAIT_LIMIT: Duration = Duration::from_secs(3600);

#[derive(Parser, Debug)]
#[command(name = "ledgerctl", version, about = "Credit Ledger operations")]
struct Arguments {
    /// Any node of the cluster (its HTTP address); the others are found from its config.
    #[arg(long, default_value = "http://127.0.0.1:8080", global = true)]
    node: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Every node's view of every shard, and whether replicas agree.
    Status,
    /// The shard map: members and leader of each shard.
    Shards,
    /// Back up every node: a RocksDB checkpoint in `<data_dir>/backups/NAME` on each.
    Backup {
        /// The backup's name (an identifier; the directory name on every node).
        name: String,
    },
    /// Cluster membership: declare the node set, follow the replica moves.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// One shard: hand its leadership over, move one of its replicas.
    Shard {
        #[command(subcommand)]
        action: ShardAction,
    },
}

#[derive(Subcommand, Debug)]
enum ShardAction {
    /// Hand SHARD's leadership to its replica on node TO; returns once TO leads.
    TransferLeader {
        shard: u32,
        #[arg(long)]
        to: u64,
    },
    /// Move SHARD's replica on node FROM to node TO (added, caught up, then FROM removed).
    Move {
        shard: u32,
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: u64,
        /// Then follow the move (and any rebalancing after it) until none is left.
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ClusterAction {
    /// Declare the nodes listed in FILE's `[cluster] nodes` (a node config file, as operators
    /// edit it): new nodes receive replicas, nodes left out are drained, then removed.
    Apply {
        file: PathBuf,
        /// Then follow the moves until the cluster is where FILE says.
        #[arg(long)]
        wait: bool,
    },
    /// The cluster map: declared nodes, the move under way, moves remaining.
    Status {
        /// Follow the moves until none is left.
        #[arg(long)]
        wait: bool,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let arguments = Arguments::parse();
    let client = LedgerClient::with_options(
        vec![arguments.node.clone()],
        ClientOptions {
            max_attempts: 1,
            ..ClientOptions::default()
        },
    )?;
    let first = client
        .cluster(&arguments.node)
        .await
        .with_context(|| format!("asking {} for the cluster", arguments.node))?;
    let node_urls: BTreeMap<u64, String> = first
        .nodes
        .iter()
        .map(|node| (node.id, format!("http://{}", node.http_addr)))
        .collect();
    match arguments.command {
        Command::Status => status(&client, &node_urls).await,
        Command::Shards => {
            print!("{}", shard_map(&first));
            Ok(())
        }
        Command::Backup { name } => backup(&client, &node_urls, &name).await,
        Command::Cluster {
            action: ClusterAction::Apply { file, wait },
        } => {
            let nodes = declared_nodes(&file)?;
            let ids: Vec<u64> = nodes.iter().map(|node| node.id).collect();
            // A cluster that is still forming (or electing the metadata leader) answers 503;
            // declaring the same nodes again is a replay, so retrying is safe.
            let deadline = Instant::now() + APPLY_RETRY_LIMIT;
            let answer =
                loop {
                    match client.apply_cluster(&arguments.node, nodes.clone()).await {
                        Ok(answer) => break answer,
                        Err(
                            ClientError::Api { status: 503, .. } | ClientError::Unavailable { .. },
                        ) if Instant::now() < deadline => tokio::time::sleep(WAIT_POLL).await,
                        Err(error) => return Err(error.into()),
                    }
                };
            println!(
                "declared nodes {ids:?}: cluster map version {}{}",
                answer.version,
                if answer.changed {
                    ""
                } else {
                    " (already declared)"
                }
            );
            cluster_status(&client, &arguments.node, wait, answer.version).await
        }
        Command::Cluster {
            action: ClusterAction::Status { wait },
        } => cluster_status(&client, &arguments.node, wait, 0).await,
        Command::Shard {
            action: ShardAction::TransferLeader { shard, to },
        } => {
            let started = Instant::now();
            let answer = client.transfer_leader(&arguments.node, shard, to).await?;
            println!(
                "shard {}: node {} leads ({:.1} s)",
                answer.shard_id,
                answer.leader,
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Shard {
            action:
                ShardAction::Move {
                    shard,
                    from,
                    to,
                    wait,
                },
        } => {
            let answer = client.move_shard(&arguments.node, shard, from, to).await?;
            println!(
                "shard {shard}: moving its replica from node {from} to node {to} (cluster map version {})",
                answer.version
            );
            cluster_status(&client, &arguments.node, wait, answer.version).await
        }
    }
}

/// The `[cluster] nodes` of a TOML file: a node's config file, or a file with only that table.
#[derive(Deserialize)]
struct ClusterFile {
    cluster: ClusterTable,
}

#[derive(Deserialize)]
struct ClusterTable {
    nodes: Vec<NodeInfo>,
}

fn declared_nodes(file: &std::path::Path) -> anyhow::Result<Vec<NodeInfo>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading the cluster config {}", file.display()))?;
    let parsed: ClusterFile = toml::from_str(&text)
        .with_context(|| format!("{}: expected a [cluster] table with nodes", file.display()))?;
    Ok(parsed.cluster.nodes)
}

/// Prints the cluster map as the metadata leader knows it (it reports the progress of the move
/// under way), once it is at `min_version` at least (the version an apply just recorded); with
/// `wait`, again at every change until no move is left.
async fn cluster_status(
    client: &LedgerClient,
    node: &str,
    wait: bool,
    min_version: u64,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT_LIMIT;
    let mut last = String::new();
    loop {
        let view = client.cluster(node).await?;
        // The metadata group's leader runs the controller and knows the move's progress.
        let leader_view = match view
            .map
            .as_ref()
            .and_then(|map| map.metadata_group.leader)
            .and_then(|leader| view.nodes.iter().find(|info| info.id == leader))
        {
            Some(leader) => client
                .cluster(&format!("http://{}", leader.http_addr))
                .await
                .unwrap_or(view),
            None => view,
        };
        let version = leader_view.map.as_ref().map_or(0, |map| map.version);
        if version >= min_version {
            let text = cluster_report(&leader_view);
            if text != last {
                print!("{text}");
                last = text;
            }
            let remaining = leader_view
                .map
                .as_ref()
                .map_or(1, |map| map.moves_remaining);
            if !wait || remaining == 0 {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            bail!("moves still under way after {WAIT_LIMIT:?}");
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

/// The map, the move under way with a progress bar, and the replicas per node.
fn cluster_report(view: &ClusterResponse) -> String {
    let Some(map) = &view.map else {
        return format!(
            "node {} does not know the cluster map yet (the cluster is forming)\n",
            view.node_id
        );
    };
    let mut text = format!(
        "cluster map v{}: nodes {:?}{}; metadata group on {:?} (leader {})\n",
        map.version,
        map.desired,
        if map.removed.is_empty() {
            String::new()
        } else {
            format!(", removed {:?}", map.removed)
        },
        map.metadata_group.members,
        map.metadata_group
            .leader
            .map_or_else(|| "none".to_owned(), |leader| leader.to_string())
    );
    match &map.moving {
        Some(step) => {
            let shard = if step.shard_id == map.metadata_group.shard_id {
                "metadata group".to_owned()
            } else {
                format!("shard {}", step.shard_id)
            };
            let describe = |node: Option<u64>| {
                node.map_or_else(|| "-".to_owned(), |node| format!("node {node}"))
            };
            text.push_str(&format!(
                "moving {shard}: add {}, remove {}  {}\n",
                describe(step.add),
                describe(step.remove),
                progress_bar(step.caught_up_to, step.leader_last_index)
            ));
        }
        None if map.moves_remaining == 0 => {
            text.push_str("no move left: the cluster is as declared\n")
        }
        None => {}
    }
    if map.moves_remaining > 0 {
        text.push_str(&format!("moves remaining: {}\n", map.moves_remaining));
    }
    text
}

/// `[#########...........] 45% (900/2000 entries)`, or what is not known yet.
fn progress_bar(caught_up_to: Option<u64>, leader_last_index: Option<u64>) -> String {
    const WIDTH: u64 = 20;
    match (caught_up_to, leader_last_index) {
        (Some(done), Some(total)) if total > 0 => {
            let done = done.min(total);
            let filled = done * WIDTH / total;
            format!(
                "[{}{}] {}% ({done}/{total} entries)",
                "#".repeat(filled as usize),
                ".".repeat((WIDTH - filled) as usize),
                done * 100 / total
            )
        }
        _ => "(new replica starting)".to_owned(),
    }
}

/// One line per shard: members and the leader as `node` sees it.
fn shard_map(view: &ClusterResponse) -> String {
    let mut text = format!(
        "{:>5}  {:>6}  members (as node {} sees them)\n",
        "shard", "leader", view.node_id
    );
    for shard in &view.shards {
        let leader = shard
            .leader
            .map_or_else(|| "-".to_owned(), |leader| leader.to_string());
        let members: Vec<String> = shard.members.iter().map(u64::to_string).collect();
        text.push_str(&format!(
            "{:>5}  {:>6}  {}\n",
            shard.shard_id,
            leader,
            members.join(",")
        ));
    }
    text
}

async fn status(client: &LedgerClient, node_urls: &BTreeMap<u64, String>) -> anyhow::Result<()> {
    let mut views: BTreeMap<u64, Result<ClusterResponse, String>> = BTreeMap::new();
    for (id, url) in node_urls {
        let view = client.cluster(url).await.map_err(|error| error.to_string());
        views.insert(*id, view);
    }
    for (id, view) in &views {
        match view {
            Ok(_) => println!("node {id} {}: up", node_urls[id]),
            Err(error) => println!("node {id} {}: DOWN ({error})", node_urls[id]),
        }
    }
    let reachable: Vec<&ClusterResponse> = views
        .values()
        .filter_map(|view| view.as_ref().ok())
        .collect();
    let Some(shard_count) = reachable.iter().map(|view| view.shards.len()).max() else {
        bail!("no node answered");
    };
    println!(
        "\n{:>5}  {:>6}  {:<24}  replicas",
        "shard", "leader", "applied index per node"
    );
    let mut disagreements = 0;
    for shard in 0..shard_count {
        let mut applied = Vec::new();
        let mut digests: BTreeMap<Option<u64>, Vec<&str>> = BTreeMap::new();
        let mut leaders = Vec::new();
        for view in &reachable {
            let Some(info) = view.shards.get(shard) else {
                continue;
            };
            if info.digest.is_empty() {
                continue;
            }
            applied.push(format!(
                "{}:{}",
                view.node_id,
                info.last_applied
                    .map_or_else(|| "-".to_owned(), |index| index.to_string())
            ));
            digests
                .entry(info.last_applied)
                .or_default()
                .push(&info.digest);
            if let Some(leader) = info.leader {
                leaders.push(leader);
            }
        }
        leaders.sort_unstable();
        leaders.dedup();
        let leader = match leaders.as_slice() {
            [] => "none".to_owned(),
            [one] => one.to_string(),
            several => format!("{several:?}?"),
        };
        let agree = digests
            .values()
            .all(|same_index| same_index.windows(2).all(|pair| pair[0] == pair[1]));
        if !agree {
            disagreements += 1;
        }
        let caught_up = digests.len() == 1;
        println!(
            "{shard:>5}  {leader:>6}  {:<24}  {}",
            applied.join(" "),
            match (agree, caught_up) {
                (false, _) => "DIVERGED (different digests at one index)",
                (true, true) => "in sync",
                (true, false) => "catching up (digests agree where indexes match)",
            }
        );
    }
    if disagreements > 0 {
        bail!("{disagreements} shard(s) with diverged replicas");
    }
    Ok(())
}

async fn backup(
    client: &LedgerClient,
    node_urls: &BTreeMap<u64, String>,
    name: &str,
) -> anyhow::Result<()> {
    let mut failures = 0;
    for (id, url) in node_urls {
        match client.backup(url, name).await {
            Ok(backup) => {
                let applied: Vec<String> = backup
                    .shards
                    .iter()
                    .map(|shard| {
                        format!(
                            "{}:{}",
                            shard.shard_id,
                            shard
                                .last_applied
                                .map_or_else(|| "-".to_owned(), |index| index.to_string())
                        )
                    })
                    .collect();
                println!(
                    "node {id}: {} (applied per shard {})",
                    backup.path,
                    applied.join(" ")
                );
            }
            Err(error) => {
                failures += 1;
                println!("node {id}: FAILED: {error}");
            }
        }
    }
    if failures > 0 {
        bail!("{failures} node(s) not backed up");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::progress_bar;

    #[test]
    fn progress_bar_shows_the_caught_up_share() {
        assert_eq!(
            progress_bar(Some(900), Some(2000)),
            "[#########...........] 45% (900/2000 entries)"
        );
        assert_eq!(
            progress_bar(Some(2100), Some(2000)),
            "[####################] 100% (2000/2000 entries)"
        );
        assert_eq!(progress_bar(None, Some(10)), "(new replica starting)");
        assert_eq!(progress_bar(Some(0), Some(0)), "(new replica starting)");
    }
}
