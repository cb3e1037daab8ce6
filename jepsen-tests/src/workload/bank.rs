//! The bank workload: `accounts` accounts with an opening grant, `clients` clients debiting
//! random accounts with fresh keys (and sometimes sending a decided debit again, which must be
//! answered as a replay of the same decision), a top-up client granting more credits, and, when
//! enabled, reservations (reserve, then commit part of it or release it).

use std::time::Instant;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::{ClientContext, RetryPolicy};
use crate::history::{Answer, Outcome, Request};

#[derive(Clone, Debug)]
pub struct BankOptions {
    pub accounts: Vec<String>,
    pub clients: u32,
    /// Turn on the reservation op mix (needs the reservation endpoints).
    pub reservations: bool,
    /// First process number of this workload's clients.
    pub first_process: u32,
}

/// Account ids of the bank workload. Odd accounts allow an overdraft, even ones do not, so the
/// floor checker sees both policies.
pub fn bank_accounts(count: usize) -> Vec<(String, u64)> {
    (0..count)
        .map(|index| (format!("bank-{index}"), if index % 2 == 1 { 50 } else { 0 }))
        .collect()
}

pub const OPENING_BALANCE: u64 = 1_000;
const RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 8,
    backoff_ms: (50, 300),
};
/// Chance that a decided debit is sent once more with its key.
const RESEND_PROBABILITY: f64 = 0.1;

/// Runs the clients and the top-up client until `deadline`.
pub async fn run(context: ClientContext, options: BankOptions, seed: u64, deadline: Instant) {
    let mut tasks = Vec::new();
    for index in 0..options.clients {
        let process = options.first_process + index;
        let context = context.clone();
        let options = options.clone();
        tasks.push(tokio::spawn(async move {
            debit_client(context, options, process, seed, deadline).await;
        }));
    }
    let process = options.first_process + options.clients;
    let top_up_context = context.clone();
    let accounts = options.accounts.clone();
    tasks.push(tokio::spawn(async move {
        top_up_client(top_up_context, accounts, process, seed, deadline).await;
    }));
    for task in tasks {
        // A panicking client is a harness bug; its history so far stays recorded.
        let _ = task.await;
    }
}

fn process_rng(seed: u64, process: u32) -> StdRng {
    StdRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(process))
}

async fn debit_client(
    context: ClientContext,
    options: BankOptions,
    process: u32,
    seed: u64,
    deadline: Instant,
) {
    let mut rng = process_rng(seed, process);
    let mut sequence = 0_u64;
    while Instant::now() < deadline {
        sequence += 1;
        let Some(account) = options.accounts.choose(&mut rng).cloned() else {
            return;
        };
        let roll: f64 = rng.gen();
        if roll < 0.15 {
            context
                .attempt(&mut rng, process, &account, Request::Read)
                .await;
        } else if options.reservations && roll < 0.30 {
            reservation_flow(&context, &mut rng, process, &account, sequence).await;
        } else {
            let request = Request::Debit {
                key: format!("b{process}-{sequence}"),
                amount: rng.gen_range(1..=20),
            };
            let outcome = context
                .until_decided(&mut rng, process, &account, request.clone(), RETRY)
                .await;
            if matches!(outcome, Outcome::Ok(_)) && rng.gen_bool(RESEND_PROBABILITY) {
                context.attempt(&mut rng, process, &account, request).await;
            }
        }
    }
}

async fn reservation_flow(
    context: &ClientContext,
    rng: &mut StdRng,
    process: u32,
    account: &str,
    sequence: u64,
) {
    let reservation_id = format!("r{process}-{sequence}");
    let amount = rng.gen_range(1..=30);
    let reserve = Request::Reserve {
        reservation_id: reservation_id.clone(),
        amount,
        ttl_ms: rng.gen_range(2_000..=10_000),
    };
    let outcome = context
        .until_decided(rng, process, account, reserve, RETRY)
        .await;
    let reserved = matches!(
        outcome,
        Outcome::Ok(Answer::Reservation { accepted: true, .. })
    );
    if !reserved {
        return;
    }
    let finish = if rng.gen_bool(0.6) {
        Request::CommitReservation {
            reservation_id,
            amount: rng.gen_range(1..=amount),
        }
    } else {
        Request::ReleaseReservation { reservation_id }
    };
    context
        .until_decided(rng, process, account, finish, RETRY)
        .await;
}

async fn top_up_client(
    context: ClientContext,
    accounts: Vec<String>,
    process: u32,
    seed: u64,
    deadline: Instant,
) {
    let mut rng = process_rng(seed, process);
    let mut sequence = 0_u64;
    while Instant::now() < deadline {
        sequence += 1;
        let Some(account) = accounts.choose(&mut rng).cloned() else {
            return;
        };
        let request = Request::Grant {
            grant_id: format!("top-{process}-{sequence}"),
            amount: rng.gen_range(50..=300),
        };
        context
            .until_decided(&mut rng, process, &account, request, RETRY)
            .await;
        // The pace of top-ups (a client's think time, not a wait for a condition).
        tokio::time::sleep(std::time::Duration::from_millis(rng.gen_range(200..=600))).await;
    }
}
