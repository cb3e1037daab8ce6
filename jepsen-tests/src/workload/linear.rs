//! The linearizability workload: few accounts, two clients per account, each doing debits,
//! grants and linearizable reads with a short think time, so that per-account histories stay
//! small enough for an exhaustive (WGL) search.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{ClientContext, RetryPolicy};
use crate::history::Request;

#[derive(Clone, Debug)]
pub struct LinearOptions {
    pub accounts: Vec<String>,
    pub clients_per_account: u32,
    pub first_process: u32,
}

pub fn linear_accounts(count: usize) -> Vec<(String, u64)> {
    (0..count)
        .map(|index| (format!("lin-{index}"), 0))
        .collect()
}

pub const OPENING_BALANCE: u64 = 200;
const RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 20,
    backoff_ms: (50, 250),
};

pub async fn run(context: ClientContext, options: LinearOptions, seed: u64, deadline: Instant) {
    let mut tasks = Vec::new();
    let mut process = options.first_process;
    for account in &options.accounts {
        for _ in 0..options.clients_per_account {
            let context = context.clone();
            let account = account.clone();
            let this_process = process;
            tasks.push(tokio::spawn(async move {
                client(context, account, this_process, seed, deadline).await;
            }));
            process += 1;
        }
    }
    for task in tasks {
        let _ = task.await;
    }
}

async fn client(
    context: ClientContext,
    account: String,
    process: u32,
    seed: u64,
    deadline: Instant,
) {
    let mut rng =
        StdRng::seed_from_u64(seed.wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ u64::from(process));
    let mut sequence = 0_u64;
    while Instant::now() < deadline {
        sequence += 1;
        let roll: f64 = rng.gen();
        let request = if roll < 0.40 {
            Request::Read
        } else if roll < 0.85 {
            Request::Debit {
                key: format!("l{process}-{sequence}"),
                amount: rng.gen_range(1..=30),
            }
        } else {
            Request::Grant {
                grant_id: format!("lg{process}-{sequence}"),
                amount: rng.gen_range(20..=80),
            }
        };
        if request == Request::Read {
            context.attempt(&mut rng, process, &account, request).await;
        } else {
            context
                .until_decided(&mut rng, process, &account, request, RETRY)
                .await;
        }
        // Think time: keeps the per-account history small enough for the search.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(10..=60))).await;
    }
}
