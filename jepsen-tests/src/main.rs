//! `jepsen-tests`: runs the chaos harness once and exits 0 only when every checker is valid
//! (with `--bug`: only when the injected bug is caught). Exit 1: an anomaly (or a bug not
//! caught); exit 2: the harness itself failed (nothing was judged).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Parser;
use jepsen_tests::checker::Verdict;
use jepsen_tests::history::Workload;
use jepsen_tests::nemesis::{parse_fault_kinds, FaultKind};
use jepsen_tests::run::{run, run_dir_name, Bug, RunOptions};

#[derive(Parser, Debug)]
#[command(name = "jepsen-tests", about = "Chaos harness of the Credit Ledger")]
struct Arguments {
    /// Seconds of workload under faults (setup and checking come on top).
    #[arg(long, default_value_t = 30)]
    time_limit: u64,
    /// Seed of every random choice (schedule, targets, workload); random when omitted.
    #[arg(long)]
    seed: Option<u64>,
    /// Nodes in the cluster: 3 or 5.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Shards (Raft groups) of the cluster.
    #[arg(long, default_value_t = 8)]
    shards: u32,
    /// Entries a shard applies between two snapshots (each node's `[snapshots]
    /// entries_since_last`). Low by default, so that every run builds snapshots, restarts nodes
    /// from them and sends them to replicas that fell behind.
    #[arg(long, default_value_t = 300)]
    snapshot_entries: u64,
    /// Faults: any of kill,pause,partition,clock, or all, or none. Default: all (with --bug:
    /// the faults that expose that bug).
    #[arg(long)]
    nemesis: Option<String>,
    /// Workloads: bank,linear. Default: both (with --bug: the ones that expose that bug).
    #[arg(long)]
    workload: Option<String>,
    /// Self-test: run ledgerd with this named bug (a `fault-injection` build) and pass only if
    /// the expected anomaly is reported.
    #[arg(long)]
    bug: Option<String>,
    /// Network: `proxy` (loopback; partitions cut Raft links through the harness's proxy, no
    /// root needed) or `netns` (a network namespace per node; partitions are firewall DROP
    /// rules that cut every packet between nodes; root only).
    #[arg(long, default_value = "proxy")]
    net: String,
    /// Run directory. Default: jepsen-tests/runs/<UTC timestamp>-seed<seed>.
    #[arg(long)]
    out: Option<PathBuf>,
    /// A prebuilt ledgerd instead of `cargo build --release -p ledgerd`.
    #[arg(long)]
    ledgerd: Option<PathBuf>,
    /// Accounts of the bank workload.
    #[arg(long, default_value_t = 8)]
    bank_accounts: usize,
    /// Concurrent debit clients of the bank workload.
    #[arg(long, default_value_t = 10)]
    bank_clients: u32,
    /// Accounts of the linearizability workload (two clients each).
    #[arg(long, default_value_t = 4)]
    linear_accounts: usize,
    /// Add reservations (reserve, then commit or release) to the bank workload. Needs the
    /// reservation endpoints.
    #[arg(long)]
    reservations: bool,
    /// Keep the ledgerd copy and the data directories also when the run passes (a failed run
    /// always keeps them, to investigate and replay).
    #[arg(long)]
    keep_artifacts: bool,
    /// Length of each fault window in milliseconds, `LOW-HIGH` (drawn per window). Default
    /// 3000-6000; long windows (e.g. 20000-40000) let a drain of the membership nemesis finish,
    /// so that the cluster removes the node mid-run.
    #[arg(long, value_parser = parse_range_ms)]
    fault_ms: Option<(u64, u64)>,
    /// Quiet time between fault windows in milliseconds, `LOW-HIGH`. Default 2000-4000.
    #[arg(long, value_parser = parse_range_ms)]
    quiet_ms: Option<(u64, u64)>,
}

/// `LOW-HIGH` in milliseconds, LOW ≤ HIGH.
fn parse_range_ms(text: &str) -> Result<(u64, u64), String> {
    let (low, high) = text
        .split_once('-')
        .ok_or_else(|| format!("{text:?} is not LOW-HIGH"))?;
    let parse = |part: &str| {
        part.trim()
            .parse::<u64>()
            .map_err(|error| format!("{part:?} in {text:?}: {error}"))
    };
    let (low, high) = (parse(low)?, parse(high)?);
    if low > high {
        return Err(format!("{text:?}: LOW is above HIGH"));
    }
    Ok((low, high))
}

fn parse_workloads(text: &str) -> anyhow::Result<std::collections::BTreeSet<Workload>> {
    text.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| match part {
            "bank" => Ok(Workload::Bank),
            "linear" => Ok(Workload::Linear),
            other => anyhow::bail!("unknown workload {other:?} (expected bank or linear)"),
        })
        .collect()
}

fn run_options(arguments: Arguments) -> anyhow::Result<RunOptions> {
    if arguments.nodes != 3 && arguments.nodes != 5 {
        anyhow::bail!("--nodes must be 3 or 5");
    }
    if arguments.snapshot_entries == 0 {
        anyhow::bail!("--snapshot-entries must be at least 1");
    }
    let bug = arguments.bug.as_deref().map(Bug::parse).transpose()?;
    let nemeses = match (&arguments.nemesis, bug) {
        (Some(text), _) => parse_fault_kinds(text)?,
        (None, Some(bug)) => bug.default_nemeses(),
        (None, None) => FaultKind::ALL.into_iter().collect(),
    };
    let workloads = match (&arguments.workload, bug) {
        (Some(text), _) => parse_workloads(text)?,
        (None, Some(bug)) => bug.default_workloads(),
        (None, None) => [Workload::Bank, Workload::Linear].into_iter().collect(),
    };
    let namespaces = match arguments.net.as_str() {
        "proxy" => false,
        "netns" => true,
        other => anyhow::bail!("unknown --net {other:?} (expected proxy or netns)"),
    };
    if workloads.is_empty() {
        anyhow::bail!("at least one workload is needed");
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?;
    let seed = arguments.seed.unwrap_or(now.as_nanos() as u64 % 1_000_000);
    let run_dir = match arguments.out {
        Some(path) => path,
        None => jepsen_tests::ledgerd_binary::workspace_root()
            .join("jepsen-tests")
            .join("runs")
            .join(run_dir_name(now.as_secs(), seed)),
    };
    Ok(RunOptions {
        time_limit: Duration::from_secs(arguments.time_limit),
        seed,
        node_count: arguments.nodes,
        shard_count: arguments.shards,
        snapshot_entries: arguments.snapshot_entries,
        nemeses,
        workloads,
        schedule: {
            let mut schedule = bug.map(Bug::default_schedule).unwrap_or_default();
            if let Some(fault_ms) = arguments.fault_ms {
                schedule.fault_ms = fault_ms;
            }
            if let Some(quiet_ms) = arguments.quiet_ms {
                schedule.quiet_ms = quiet_ms;
            }
            schedule
        },
        bug,
        namespaces,
        run_dir,
        ledgerd: arguments.ledgerd,
        bank_accounts: arguments.bank_accounts,
        bank_clients: arguments.bank_clients,
        linear_accounts: arguments.linear_accounts,
        linear_clients_per_account: 2,
        reservations: arguments.reservations,
        keep_artifacts: arguments.keep_artifacts,
    })
}

fn main() -> ExitCode {
    let arguments = Arguments::parse();
    let options = match run_options(arguments) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("jepsen-tests: {error:#}");
            return ExitCode::from(2);
        }
    };
    eprintln!(
        "jepsen-tests: seed {} (replay with --seed {}), run dir {}",
        options.seed,
        options.seed,
        options.run_dir.display()
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("jepsen-tests: starting the runtime: {error}");
            return ExitCode::from(2);
        }
    };
    let run_dir = options.run_dir.clone();
    let seed = options.seed;
    let outcome = runtime.block_on(async {
        tokio::select! {
            outcome = run(options) => Some(outcome),
            signal = shutdown_signal() => {
                eprintln!("jepsen-tests: {signal}: stopping the nodes and removing the network");
                None
            }
        }
    });
    let Some(outcome) = outcome else {
        // Dropping the runtime drops the nemesis and workload tasks, and with the last of them
        // the cluster, whose drop kills the nodes and deletes the network namespaces.
        drop(runtime);
        eprintln!("run directory: {}", run_dir.display());
        return ExitCode::from(130);
    };
    match outcome {
        Ok(summary) => {
            println!("{}", summary.report_text);
            println!("run directory: {}", run_dir.display());
            match summary.bug_caught {
                Some(true) => {
                    println!("bug caught (seed {seed})");
                    ExitCode::SUCCESS
                }
                Some(false) => {
                    println!("bug NOT caught (seed {seed})");
                    ExitCode::from(1)
                }
                None if summary.verdict == Verdict::Valid => {
                    println!("valid (seed {seed})");
                    ExitCode::SUCCESS
                }
                None => {
                    println!("{} (seed {seed})", summary.verdict.name());
                    ExitCode::from(1)
                }
            }
        }
        Err(error) => {
            eprintln!("jepsen-tests: the harness failed (nothing was judged): {error}");
            eprintln!("run directory: {}", run_dir.display());
            ExitCode::from(2)
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM with the signal's name, so that the run is dropped (and
/// cleans up) instead of the process dying with its namespaces and firewall rules left behind.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => tokio::select! {
            _ = tokio::signal::ctrl_c() => "interrupted (Ctrl-C)",
            _ = terminate.recv() => "terminated (SIGTERM)",
        },
        Err(_) => {
            // Without a SIGTERM handler, Ctrl-C is still handled.
            let _ = tokio::signal::ctrl_c().await;
            "interrupted (Ctrl-C)"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jepsen_tests::nemesis::Schedule;

    #[test]
    fn defaults_follow_the_bug() {
        let arguments = Arguments::parse_from([
            "jepsen-tests",
            "--bug",
            "stale-follower-reads",
            "--seed",
            "3",
        ]);
        let options = run_options(arguments).expect("valid arguments");
        assert_eq!(options.seed, 3);
        assert_eq!(options.nemeses, Bug::StaleFollowerReads.default_nemeses());
        assert_eq!(options.workloads, [Workload::Linear].into_iter().collect());
        let arguments = Arguments::parse_from([
            "jepsen-tests",
            "--nemesis",
            "kill,clock",
            "--workload",
            "bank",
        ]);
        let options = run_options(arguments).expect("valid arguments");
        assert_eq!(
            options.nemeses,
            [FaultKind::Kill, FaultKind::Clock].into_iter().collect()
        );
        assert!(!options.namespaces, "the proxy is the default network");
        assert!(Arguments::try_parse_from(["jepsen-tests", "--nodes"]).is_err());
        let netns = run_options(Arguments::parse_from(["jepsen-tests", "--net", "netns"]))
            .expect("valid arguments");
        assert!(netns.namespaces);
        assert!(run_options(Arguments::parse_from(["jepsen-tests", "--net", "vlan"])).is_err());
    }

    #[test]
    fn window_lengths_override_the_schedule() {
        let options = run_options(Arguments::parse_from([
            "jepsen-tests",
            "--fault-ms",
            "20000-40000",
            "--quiet-ms",
            "1000-1000",
        ]))
        .expect("valid arguments");
        assert_eq!(options.schedule.fault_ms, (20_000, 40_000));
        assert_eq!(options.schedule.quiet_ms, (1_000, 1_000));
        let default = run_options(Arguments::parse_from(["jepsen-tests"])).expect("valid");
        assert_eq!(default.schedule.fault_ms, Schedule::default().fault_ms);
        for bad in ["40000-20000", "20000", "a-b", "-5"] {
            assert!(
                Arguments::try_parse_from(["jepsen-tests", "--fault-ms", bad]).is_err(),
                "{bad}"
            );
        }
    }
}
