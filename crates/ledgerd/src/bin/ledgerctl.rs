//! `ledgerctl`: the operator's command line for a running Credit Ledger cluster.
//!
//! - `ledgerctl status`: every node's view of every shard (leader, members, applied index) and
//!   whether the replicas of a shard agree (same digest at the same applied index).
//! - `ledgerctl shards`: the shard map (members and leader of each shard).
//! - `ledgerctl backup NAME`: a RocksDB checkpoint on every node, under its data directory.
//!
//! It talks to the nodes' HTTP API only (`GET /admin/cluster`, `POST /admin/backups`), starting
//! from `--node` and reaching every node that node's configuration lists.

use std::collections::BTreeMap;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use ledger_api::ClusterResponse;
use ledger_client::{ClientOptions, LedgerClient};

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
