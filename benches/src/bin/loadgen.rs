//! Load generator: one workload against one system (the ledger, PostgreSQL or Redis), closed or
//! open loop, with a JSON summary and an optional SVG plot. See `benches/README.md`.
//!
//! `cargo run --release -p benches --bin loadgen -- --nodes http://127.0.0.1:7001 --duration 15 \
//!     --accounts 100000 --concurrency 64 --batch 100 --json`

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use benches::distribution::AccountDistribution;
use benches::driver::ledger::{LedgerDriver, LedgerDriverOptions, Route};
use benches::driver::postgres::PostgresDriver;
use benches::driver::redis::RedisDriver;
use benches::driver::Driver;
use benches::recorder::{Phases, RunDescription};
use benches::runner::{default_run_id, run, LoadMode, Workload};
use benches::schedule::OpenLoopSchedule;
use benches::workload::Mix;
use benches::Summary;
use clap::Parser;
use ledger_client::BatchingOptions;

#[derive(Parser, Debug, Clone)]
#[command(about = "Load generator for the Credit Ledger and its peers (PostgreSQL, Redis)")]
struct Arguments {
    /// System under test: ledger, postgres or redis.
    #[arg(long, default_value = "ledger")]
    target: String,
    /// Ledger: comma-separated node URLs.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:8080")]
    nodes: Vec<String>,
    /// Ledger: `leader` sends each request to its shard's leader (batches split by leader);
    /// `any` spreads requests round-robin and lets the ledger forward.
    #[arg(long, default_value = "leader")]
    route: String,
    /// PostgreSQL connection string.
    #[arg(
        long,
        default_value = "host=127.0.0.1 port=5432 user=bench dbname=bench"
    )]
    postgres: String,
    /// PostgreSQL: connections in the pool (default: --concurrency in a closed loop, and
    /// --max-in-flight up to 256 in an open loop, below the server's max_connections of 300 set
    /// by peers/run.sh; operations beyond it wait for a connection).
    #[arg(long)]
    postgres_connections: Option<usize>,
    /// Redis URL.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Redis: multiplexed connections.
    #[arg(long, default_value_t = 8)]
    redis_connections: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 15)]
    duration: u64,
    /// Warm-up seconds, not measured (shown shaded in the plot).
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Accounts `loadgen-0` .. `loadgen-{N-1}`.
    #[arg(long, default_value_t = 1000)]
    accounts: u64,
    /// Closed loop: concurrent clients. Open loop: ignored (see --max-in-flight).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Open loop: operations per second (a batch is one operation). Without it: closed loop.
    #[arg(long)]
    rate: Option<u64>,
    /// Open loop: most operations outstanding; sends beyond it are dropped and counted.
    #[arg(long, default_value_t = 1024)]
    max_in_flight: usize,
    /// Debits per debit operation: 1 = one debit per request, more = one batch request.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Ledger, with --batch 1: each operation is still one debit call, but the client's
    /// automatic batcher sends the calls of the moment together as batch requests (what an
    /// application using the Rust client's `DebitBatcher` gets).
    #[arg(long)]
    auto_batch: bool,
    /// Ledger, with --auto-batch: debits per batch request at most.
    #[arg(long, default_value_t = 1000)]
    auto_batch_max: usize,
    /// Ledger, with --auto-batch: batch requests in flight per node at once.
    #[arg(long, default_value_t = 4)]
    auto_batch_in_flight: usize,
    /// Credits per debit.
    #[arg(long, default_value_t = 1)]
    amount: u64,
    /// Account choice: uniform, zipfian or hot (account loadgen-0 only).
    #[arg(long, default_value = "uniform")]
    distribution: String,
    /// Zipfian exponent (s in 1/rank^s).
    #[arg(long, default_value_t = 0.99)]
    zipf_exponent: f64,
    /// Operation mix, e.g. `debit=90,read=10` or `debit=80,reserve=20`.
    #[arg(long, default_value = "debit=100")]
    mix: String,
    /// Reservations: TTL of each hold.
    #[arg(long, default_value_t = 30_000)]
    reservation_ttl_ms: u64,
    /// Skip creating and granting the accounts (they exist from an earlier run).
    #[arg(long)]
    skip_setup: bool,
    /// Setup: accounts created concurrently (ledger).
    #[arg(long, default_value_t = 128)]
    setup_concurrency: usize,
    /// Setup: credits granted to every account.
    #[arg(long, default_value_t = 1_000_000_000_000)]
    credits: u64,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Ledger: attempts per measured request (1 = no retries: overload shows as errors).
    #[arg(long, default_value_t = 1)]
    attempts: u32,
    /// Deadline of one request.
    #[arg(long, default_value_t = 10_000)]
    request_timeout_ms: u64,
    /// Ledger: how long to wait for every shard to have a leader.
    #[arg(long, default_value_t = 60_000)]
    ready_timeout_ms: u64,
    /// Name of the system in tables (default: the target).
    #[arg(long)]
    label: Option<String>,
    /// Name of the workload in tables (default: derived from the settings).
    #[arg(long)]
    workload: Option<String>,
    /// Print the summary as one line of JSON only.
    #[arg(long)]
    json: bool,
    /// Also write the summary (JSON) to this file.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Write the plot of throughput and latency over time (SVG) to this file.
    #[arg(long)]
    plot: Option<PathBuf>,
}

impl Arguments {
    fn mode(&self) -> Result<LoadMode> {
        Ok(match self.rate {
            None => LoadMode::Closed {
                concurrency: self.concurrency.max(1),
            },
            Some(rate) => LoadMode::Open {
                schedule: OpenLoopSchedule::new(rate)?,
                max_in_flight: self.max_in_flight.max(1),
            },
        })
    }

    fn workload_name(&self) -> String {
        if let Some(name) = &self.workload {
            return name.clone();
        }
        let load = match self.rate {
            None => format!("c{}", self.concurrency),
            Some(rate) => format!("r{rate}"),
        };
        let batch = if self.auto_batch && self.batch == 1 {
            "auto".to_owned()
        } else {
            self.batch.to_string()
        };
        let mut name = format!("{load}-batch{batch}-{}", self.distribution);
        if self.mix != "debit=100" {
            name.push('-');
            name.push_str(&self.mix.replace(['=', ','], "_"));
        }
        name
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let arguments = Arguments::parse();
    match arguments.target.as_str() {
        "ledger" => {
            let route = Route::from_name(&arguments.route)
                .with_context(|| format!("unknown route {:?}", arguments.route))?;
            let driver = LedgerDriver::connect(
                arguments.nodes.clone(),
                LedgerDriverOptions {
                    route,
                    request_timeout_ms: arguments.request_timeout_ms,
                    attempts: arguments.attempts,
                    ready_timeout_ms: arguments.ready_timeout_ms,
                    auto_batch: arguments.auto_batch.then_some(BatchingOptions {
                        max_batch: arguments.auto_batch_max,
                        max_in_flight: arguments.auto_batch_in_flight,
                    }),
                },
            )
            .await?;
            drive(driver, &arguments).await
        }
        "postgres" => {
            let connections = arguments
                .postgres_connections
                .unwrap_or(match arguments.mode()? {
                    LoadMode::Closed { concurrency } => concurrency,
                    LoadMode::Open { max_in_flight, .. } => max_in_flight.min(256),
                });
            let driver = PostgresDriver::connect(&arguments.postgres, connections).await?;
            drive(driver, &arguments).await
        }
        "redis" => {
            let driver =
                RedisDriver::connect(&arguments.redis, arguments.redis_connections).await?;
            drive(driver, &arguments).await
        }
        other => bail!("unknown target {other:?} (expected ledger, postgres or redis)"),
    }
}

async fn drive<D: Driver>(driver: Arc<D>, arguments: &Arguments) -> Result<()> {
    let mode = arguments.mode()?;
    let mix: Mix = arguments.mix.parse()?;
    let distribution = AccountDistribution::from_name(
        &arguments.distribution,
        arguments.accounts,
        arguments.zipf_exponent,
    )?;
    if !arguments.json {
        eprintln!("loadgen: {}", driver.describe());
    }
    if !arguments.skip_setup {
        let started = Instant::now();
        // The hot distribution only touches account 0, but the accounts are the same for every
        // workload so that one setup serves a whole series of runs.
        driver
            .setup(
                arguments.accounts,
                arguments.credits,
                arguments.setup_concurrency,
            )
            .await
            .context("setting up the accounts")?;
        eprintln!(
            "loadgen: setup of {} accounts took {:.1?}",
            arguments.accounts,
            started.elapsed()
        );
    }
    let workload = Workload {
        batch: arguments.batch.max(1),
        amount: arguments.amount,
        mix: mix.clone(),
        distribution: Arc::new(distribution.clone()),
        seed: arguments.seed,
        reservation_ttl_ms: arguments.reservation_ttl_ms,
        run_id: default_run_id(),
    };
    let phases = Phases {
        warmup: Duration::from_secs(arguments.warmup),
        duration: Duration::from_secs(arguments.duration.max(1)),
    };
    let recorder = run(driver, workload, mode, phases).await;
    let summary: Summary = recorder.summary(RunDescription {
        label: arguments
            .label
            .clone()
            .unwrap_or_else(|| arguments.target.clone()),
        workload: arguments.workload_name(),
        target: arguments.target.clone(),
        mode: match mode {
            LoadMode::Closed { .. } => "closed".to_owned(),
            LoadMode::Open { .. } => "open".to_owned(),
        },
        rate_per_sec: arguments.rate,
        concurrency: match mode {
            LoadMode::Closed { concurrency } => concurrency,
            LoadMode::Open { max_in_flight, .. } => max_in_flight,
        },
        batch: arguments.batch.max(1),
        accounts: arguments.accounts,
        distribution: distribution.to_string(),
        mix: mix.to_string(),
        route: if arguments.target == "ledger" {
            arguments.route.clone()
        } else {
            String::new()
        },
        nodes: if arguments.target == "ledger" {
            arguments.nodes.len()
        } else {
            0
        },
        seed: arguments.seed,
    });
    let json = serde_json::to_string(&summary)?;
    if let Some(path) = &arguments.output {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &arguments.plot {
        let title = format!(
            "{} - {}: {:.0} debits/s, p99 {:.1} ms",
            summary.run.label, summary.run.workload, summary.debits_per_sec, summary.p99_ms
        );
        std::fs::write(path, benches::plot::render_svg(&title, &summary.series))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if arguments.json {
        println!("{json}");
    } else {
        print_human(&summary);
    }
    Ok(())
}

fn print_human(summary: &Summary) {
    println!(
        "{} {}: {:.0} debits/s, {:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        summary.run.label,
        summary.run.workload,
        summary.debits_per_sec,
        summary.requests_per_sec,
        summary.p50_ms,
        summary.p99_ms,
        summary.p999_ms,
        summary.max_ms
    );
    println!(
        "  debits accepted {}, rejected {} {:?}, errors {} {:?}, dropped {}",
        summary.debits_accepted,
        summary.debits_rejected,
        summary.rejections_by_code,
        summary.errors,
        summary.errors_by_kind,
        summary.dropped
    );
    for (kind, latency) in &summary.latency_by_operation {
        println!(
            "  {kind}: {} operations, p50 {:.2} ms, p99 {:.2} ms",
            latency.count, latency.p50_ms, latency.p99_ms
        );
    }
    for point in &summary.series {
        println!(
            "  second {:>3}{} {:>8} debits {:>6} ops {:>5} errors {:>5} dropped  p50 {:>8.2} ms  p99 {:>8.2} ms",
            point.second,
            if point.warmup { "*" } else { " " },
            point.debits,
            point.operations,
            point.errors,
            point.dropped,
            point.p50_ms,
            point.p99_ms
        );
    }
}
