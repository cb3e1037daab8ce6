//! Closed-loop load generator: N workers send debits (one per request, or batches) to the
//! cluster and the run reports debits/s and latency percentiles.
//!
//! `cargo run --release -p benches --bin loadgen -- --nodes http://127.0.0.1:7001 --duration 15 \
//!     --accounts 10000 --concurrency 64 --batch 1 --json`

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use ledger_api::{BatchDebitItem, CreateGrantRequest, DebitRequest};
use ledger_client::{ClientOptions, LedgerClient};
use rand::{Rng, SeedableRng};
use serde::Serialize;

#[derive(Parser, Debug, Clone)]
#[command(about = "Closed-loop load generator for the Credit Ledger HTTP API")]
struct Arguments {
    /// Comma-separated node URLs; requests are spread over them.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:8080")]
    nodes: Vec<String>,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 15)]
    duration: u64,
    /// Warm-up seconds, not measured.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Accounts debited (uniformly at random).
    #[arg(long, default_value_t = 1000)]
    accounts: u64,
    /// Concurrent requests in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Debits per request: 1 = `POST /v1/accounts/{id}/debits`, more = `POST /v1/debits/batch`.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Credits per debit.
    #[arg(long, default_value_t = 1)]
    amount: u64,
    /// Skip creating and granting the accounts (they exist from an earlier run).
    #[arg(long)]
    skip_setup: bool,
    /// Seed of the account choice.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Print the summary as JSON only.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize, Debug)]
struct Summary {
    debits_per_sec: f64,
    requests_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    debits_accepted: u64,
    debits_rejected: u64,
    errors: u64,
    duration_s: f64,
    concurrency: usize,
    batch: usize,
    accounts: u64,
    nodes: usize,
}

fn account_name(index: u64) -> String {
    format!("loadgen-{index}")
}

async fn setup(client: &LedgerClient, arguments: &Arguments) -> Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..arguments.concurrency.min(64) {
        let client = client.clone();
        let next = next.clone();
        let total = arguments.accounts;
        workers.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= total {
                    return Ok::<(), anyhow::Error>(());
                }
                let account = account_name(index);
                client.create_account(&account, None).await?;
                let grant = CreateGrantRequest::new("loadgen-grant", 1_000_000_000_000, "purchase");
                client.grant(&account, &grant).await?;
            }
        }));
    }
    for worker in workers {
        worker.await??;
    }
    Ok(())
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    rejected: AtomicU64,
    errors: AtomicU64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let arguments = Arguments::parse();
    let client = LedgerClient::with_options(
        arguments.nodes.clone(),
        ClientOptions {
            request_timeout_ms: 10_000,
            ..ClientOptions::default()
        },
    )?;
    if !arguments.skip_setup {
        let started = Instant::now();
        setup(&client, &arguments)
            .await
            .context("creating accounts")?;
        if !arguments.json {
            eprintln!(
                "setup: {} accounts in {:.1?}",
                arguments.accounts,
                started.elapsed()
            );
        }
    }
    let run_id = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let measuring = Arc::new(AtomicBool::new(false));
    let stopping = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    let mut workers = Vec::new();
    for worker_index in 0..arguments.concurrency {
        let client = client.clone();
        let arguments = arguments.clone();
        let measuring = measuring.clone();
        let stopping = stopping.clone();
        let counters = counters.clone();
        workers.push(tokio::spawn(async move {
            let mut histogram =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
            let mut random =
                rand::rngs::StdRng::seed_from_u64(arguments.seed ^ worker_index as u64);
            let mut sequence = 0u64;
            while !stopping.load(Ordering::Relaxed) {
                let items: Vec<BatchDebitItem> = (0..arguments.batch)
                    .map(|_| {
                        sequence += 1;
                        BatchDebitItem {
                            account_id: account_name(random.gen_range(0..arguments.accounts)),
                            debit: DebitRequest {
                                idempotency_key: format!("lg-{run_id}-{worker_index}-{sequence}"),
                                amount: Some(arguments.amount),
                                feature: None,
                                quantity: None,
                            },
                        }
                    })
                    .collect();
                let started = Instant::now();
                let (accepted, rejected, errors) = if arguments.batch == 1 {
                    let item = &items[0];
                    match client.debit_request(&item.account_id, &item.debit).await {
                        Ok(outcome) if outcome.status == "accepted" => (1, 0, 0),
                        Ok(_) => (0, 1, 0),
                        Err(_) => (0, 0, 1),
                    }
                } else {
                    match client.batch_debits(&items).await {
                        Ok(response) => {
                            response
                                .results
                                .iter()
                                .fold((0, 0, 0), |(a, r, e), result| match &result.outcome {
                                    Some(outcome) if outcome.status == "accepted" => (a + 1, r, e),
                                    Some(_) => (a, r + 1, e),
                                    None => (a, r, e + 1),
                                })
                        }
                        Err(_) => (0, 0, items.len() as u64),
                    }
                };
                if measuring.load(Ordering::Relaxed) {
                    let micros = started.elapsed().as_micros().max(1) as u64;
                    let _ = histogram.record(micros.min(60_000_000));
                    counters.accepted.fetch_add(accepted, Ordering::Relaxed);
                    counters.rejected.fetch_add(rejected, Ordering::Relaxed);
                    counters.errors.fetch_add(errors, Ordering::Relaxed);
                }
            }
            histogram
        }));
    }
    tokio::time::sleep(Duration::from_secs(arguments.warmup)).await;
    measuring.store(true, Ordering::Relaxed);
    let measured_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(arguments.duration)).await;
    measuring.store(false, Ordering::Relaxed);
    let measured = measured_from.elapsed().as_secs_f64();
    stopping.store(true, Ordering::Relaxed);
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for worker in workers {
        histogram.add(worker.await?)?;
    }
    let accepted = counters.accepted.load(Ordering::Relaxed);
    let rejected = counters.rejected.load(Ordering::Relaxed);
    let summary = Summary {
        debits_per_sec: (accepted + rejected) as f64 / measured,
        requests_per_sec: histogram.len() as f64 / measured,
        p50_ms: histogram.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: histogram.value_at_quantile(0.99) as f64 / 1000.0,
        p999_ms: histogram.value_at_quantile(0.999) as f64 / 1000.0,
        max_ms: histogram.max() as f64 / 1000.0,
        debits_accepted: accepted,
        debits_rejected: rejected,
        errors: counters.errors.load(Ordering::Relaxed),
        duration_s: measured,
        concurrency: arguments.concurrency,
        batch: arguments.batch,
        accounts: arguments.accounts,
        nodes: arguments.nodes.len(),
    };
    if arguments.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!("{summary:#?}");
    }
    Ok(())
}
