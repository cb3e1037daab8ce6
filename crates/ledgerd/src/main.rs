//! `ledgerd`: the Credit Ledger server.
//!
//! `ledgerd` alone runs a single-node ledger (all shards local) on 127.0.0.1:8080 with data in
//! `./data`; `ledgerd --config FILE` runs one node of a cluster. A thin layer over
//! `ledger-server`: parse arguments, set up logs, run until SIGTERM or Ctrl-C, shut down cleanly.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use ledger_server::{NodeConfig, NodeTuning, RunningNode};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc malloc: the ledger allocates and frees many small objects per debit
/// on many threads (see benches/RESULTS.md for the measurement).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "ledgerd", version, about = "Credit Ledger server")]
struct Arguments {
    /// Cluster node configuration (TOML). Without it, a single-node ledger on 127.0.0.1:8080
    /// with data in ./data.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Log format: `text` (default) or `json`. The level comes from `RUST_LOG` (default `info`).
    #[arg(long, default_value = "text")]
    log_format: String,
}

fn main() -> anyhow::Result<()> {
    let arguments = Arguments::parse();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if arguments.log_format == "json" {
        subscriber.json().init();
    } else {
        subscriber.init();
    }

    // A panic anywhere (an invariant assertion of the state machine, a corrupt record) means this
    // node's state can no longer be trusted: log it and stop the whole process instead of letting
    // the other tasks go on serving. The replicas elsewhere and this node's durable log are the
    // way back.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        tracing::error!(%info, "panic: stopping the node");
        std::process::abort();
    }));

    if let Some(bug) = ledger_server::fault_injection::enable_from_environment()? {
        tracing::warn!(
            bug = bug.name(),
            "FAULT INJECTION: this node runs with a deliberate bug (chaos harness self-test)"
        );
    }
    let config = match &arguments.config {
        Some(path) => NodeConfig::load(path)?,
        None => NodeConfig::single_node(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ledgerd")
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(run(config))
}

async fn run(config: NodeConfig) -> anyhow::Result<()> {
    let tuning = NodeTuning {
        snapshots: config.snapshot_settings(),
        ..NodeTuning::default()
    };
    let node = RunningNode::start(config, tuning)
        .await
        .context("starting the node")?;
    tracing::info!(http_addr = %node.http_addr, "serving");
    let removed = tokio::select! {
        result = wait_for_signal() => {
            result?;
            false
        }
        _ = node.removed() => true,
    };
    tracing::info!("shutting down");
    node.shutdown().await;
    if removed {
        anyhow::bail!(
            "this node was removed from the cluster; to bring the machine back, give it a new \
             node id and an empty data directory and declare it with `ledgerctl cluster apply`"
        );
    }
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = terminate.recv() => {}
        result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C")?,
    }
    Ok(())
}
