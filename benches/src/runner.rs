//! The load loops, generic over the [`Driver`]: every system runs the same operations, drawn
//! from the same seeded generators, measured by the same [`Recorder`].
//!
//! - **Closed loop**: `concurrency` workers, each sending its next operation when the previous
//!   one is answered. Throughput is what the system sustains with that many clients; latency is
//!   measured from each operation's send.
//! - **Open loop**: one dispatcher sends operations at a fixed rate whatever the answers, each
//!   as its own task, with latency measured from the intended send time (see `schedule.rs`). At
//!   most `max_in_flight` operations are outstanding: a send that finds the bound reached is
//!   dropped and counted (`dropped`), so an overloaded system cannot make the load generator
//!   queue without bound (and its memory grow) while pretending to keep the rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::Semaphore;

use crate::distribution::AccountDistribution;
use crate::driver::{DebitItem, Driver, OperationResult, ReservationItem};
use crate::recorder::{Phases, Recorder};
use crate::schedule::{open_loop_latency, OpenLoopSchedule};
use crate::workload::{account_id, Mix, OperationKind};

/// How load is offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadMode {
    Closed {
        concurrency: usize,
    },
    Open {
        schedule: OpenLoopSchedule,
        max_in_flight: usize,
    },
}

/// Everything that defines the operations of a run.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Debits per debit operation: 1 = one debit per request, more = one batch.
    pub batch: usize,
    /// Credits per debit.
    pub amount: u64,
    pub mix: Mix,
    pub distribution: Arc<AccountDistribution>,
    /// Seed of every random choice (operation kinds, accounts): the same seed gives the same
    /// operations on every system.
    pub seed: u64,
    pub reservation_ttl_ms: u64,
    /// Prefix of every idempotency key and reservation id of this run, so that runs never
    /// replay each other's keys.
    pub run_id: String,
}

/// One planned operation, before it is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlannedOperation {
    Debit(DebitItem),
    Batch(Vec<DebitItem>),
    Read(String),
    Reserve(ReservationItem),
}

/// Draws the operations of one worker (or of the open-loop dispatcher).
pub struct Planner {
    workload: Arc<Workload>,
    random: StdRng,
    worker: u64,
    sequence: u64,
}

impl Planner {
    pub fn new(workload: Arc<Workload>, worker: u64) -> Planner {
        // Each worker has its own stream, derived from the run's seed and its number.
        let seed = workload
            .seed
            .wrapping_add(worker.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        Planner {
            workload,
            random: StdRng::seed_from_u64(seed),
            worker,
            sequence: 0,
        }
    }

    fn next_key(&mut self) -> String {
        self.sequence += 1;
        format!("{}-{}-{}", self.workload.run_id, self.worker, self.sequence)
    }

    fn next_account(&mut self) -> String {
        account_id(self.workload.distribution.sample(&mut self.random))
    }

    fn next_debit(&mut self) -> DebitItem {
        DebitItem {
            account_id: self.next_account(),
            idempotency_key: self.next_key(),
            amount: self.workload.amount,
        }
    }

    pub fn next_operation(&mut self) -> PlannedOperation {
        match self.workload.mix.choose(&mut self.random) {
            OperationKind::Debit if self.workload.batch <= 1 => {
                PlannedOperation::Debit(self.next_debit())
            }
            OperationKind::Debit => {
                let items = (0..self.workload.batch)
                    .map(|_| self.next_debit())
                    .collect();
                PlannedOperation::Batch(items)
            }
            OperationKind::Read => PlannedOperation::Read(self.next_account()),
            OperationKind::Reserve => PlannedOperation::Reserve(ReservationItem {
                account_id: self.next_account(),
                reservation_id: self.next_key(),
                amount: self.workload.amount.saturating_mul(2),
                commit_amount: self.workload.amount,
                ttl_ms: self.workload.reservation_ttl_ms,
            }),
        }
    }
}

/// Sends one operation through the driver.
pub async fn execute<D: Driver>(driver: &D, operation: PlannedOperation) -> OperationResult {
    match operation {
        PlannedOperation::Debit(item) => driver.debit(item).await,
        PlannedOperation::Batch(items) => driver.debit_batch(items).await,
        PlannedOperation::Read(account) => driver.read(account).await,
        PlannedOperation::Reserve(reservation) => driver.reserve_and_commit(reservation).await,
    }
}

/// Runs the warm-up and the measured window against `driver` and returns the recorder with
/// every measurement (turn it into a summary with [`Recorder::summary`]).
pub async fn run<D: Driver>(
    driver: Arc<D>,
    workload: Workload,
    mode: LoadMode,
    phases: Phases,
) -> Arc<Recorder> {
    let recorder = Arc::new(Recorder::new(phases));
    let workload = Arc::new(workload);
    let started = Instant::now();
    match mode {
        LoadMode::Closed { concurrency } => {
            run_closed(driver, workload, concurrency, &recorder, started).await
        }
        LoadMode::Open {
            schedule,
            max_in_flight,
        } => {
            run_open(
                driver,
                workload,
                schedule,
                max_in_flight,
                &recorder,
                started,
            )
            .await
        }
    }
    recorder
}

async fn run_closed<D: Driver>(
    driver: Arc<D>,
    workload: Arc<Workload>,
    concurrency: usize,
    recorder: &Arc<Recorder>,
    started: Instant,
) {
    let end = started + recorder.phases().end();
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|worker| {
            let driver = Arc::clone(&driver);
            let recorder = Arc::clone(recorder);
            let mut planner = Planner::new(Arc::clone(&workload), worker as u64);
            tokio::spawn(async move {
                while Instant::now() < end {
                    let operation = planner.next_operation();
                    let sent = Instant::now();
                    let result = execute(&*driver, operation).await;
                    let completed = Instant::now();
                    recorder.record(completed - started, completed - sent, &result);
                }
            })
        })
        .collect();
    for worker in workers {
        // A worker that panicked is a bug of the load generator; its measurements up to then
        // are kept and the panic is reported.
        if let Err(error) = worker.await {
            eprintln!("loadgen: a worker failed: {error}");
        }
    }
}

async fn run_open<D: Driver>(
    driver: Arc<D>,
    workload: Arc<Workload>,
    schedule: OpenLoopSchedule,
    max_in_flight: usize,
    recorder: &Arc<Recorder>,
    started: Instant,
) {
    let end_offset = recorder.phases().end();
    let max_in_flight = max_in_flight.max(1);
    let in_flight = Arc::new(Semaphore::new(max_in_flight));
    let mut planner = Planner::new(workload, 0);
    let mut next_index = 0u64;
    loop {
        let elapsed = started.elapsed();
        if elapsed >= end_offset {
            break;
        }
        // Everything due by now goes out at once: after a late wake-up the sends catch up, and
        // their latency still counts from their intended instants.
        let due = schedule.due_count(elapsed);
        while next_index < due {
            let intended = schedule.intended_offset(next_index);
            next_index += 1;
            match Arc::clone(&in_flight).try_acquire_owned() {
                Ok(permit) => {
                    let operation = planner.next_operation();
                    let driver = Arc::clone(&driver);
                    let recorder = Arc::clone(recorder);
                    tokio::spawn(async move {
                        let result = execute(&*driver, operation).await;
                        let completed = started.elapsed();
                        recorder.record(completed, open_loop_latency(intended, completed), &result);
                        drop(permit);
                    });
                }
                Err(_) => recorder.record_dropped(intended),
            }
        }
        let next = schedule.intended_offset(next_index).min(end_offset);
        tokio::time::sleep_until((started + next).into()).await;
    }
    // The operations still in flight complete (each within the driver's request timeout); what
    // completes after the window is not counted, but must not be cut off mid-request either.
    let everything = u32::try_from(max_in_flight).unwrap_or(u32::MAX);
    let _ = in_flight.acquire_many(everything).await;
}

/// The default run id: `lg` and the wall-clock milliseconds, unique per run.
pub fn default_run_id() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis();
    format!("lg{millis}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(mix: &str, batch: usize, seed: u64) -> Arc<Workload> {
        Arc::new(Workload {
            batch,
            amount: 3,
            mix: mix.parse().expect("valid mix"),
            distribution: Arc::new(AccountDistribution::uniform(1_000).expect("valid")),
            seed,
            reservation_ttl_ms: 30_000,
            run_id: "lgtest".to_owned(),
        })
    }

    #[test]
    fn planners_with_the_same_seed_plan_the_same_operations() {
        let seed = crate::test_support::seed();
        let mut first = Planner::new(workload("debit=5,read=3,reserve=2", 4, seed), 7);
        let mut second = Planner::new(workload("debit=5,read=3,reserve=2", 4, seed), 7);
        let mut other_worker = Planner::new(workload("debit=5,read=3,reserve=2", 4, seed), 8);
        let planned: Vec<PlannedOperation> = (0..200).map(|_| first.next_operation()).collect();
        let again: Vec<PlannedOperation> = (0..200).map(|_| second.next_operation()).collect();
        let other: Vec<PlannedOperation> =
            (0..200).map(|_| other_worker.next_operation()).collect();
        assert_eq!(planned, again, "seed {seed}");
        assert_ne!(
            planned, other,
            "seed {seed}: workers must not repeat each other"
        );
    }

    #[test]
    fn keys_are_unique_and_operations_have_their_shape() {
        let seed = crate::test_support::seed();
        let mut planner = Planner::new(workload("debit=1,reserve=1", 5, seed), 2);
        let mut keys = std::collections::BTreeSet::new();
        for _ in 0..500 {
            match planner.next_operation() {
                PlannedOperation::Batch(items) => {
                    assert_eq!(items.len(), 5);
                    for item in items {
                        assert_eq!(item.amount, 3);
                        assert!(item.account_id.starts_with("loadgen-"));
                        assert!(keys.insert(item.idempotency_key));
                    }
                }
                PlannedOperation::Reserve(reservation) => {
                    assert_eq!((reservation.amount, reservation.commit_amount), (6, 3));
                    assert!(keys.insert(reservation.reservation_id));
                }
                other => panic!("seed {seed}: unexpected {other:?}"),
            }
        }
        // Every key is a valid ledger identifier.
        for key in &keys {
            assert!(ledger_core::validate_identifier(key).is_ok(), "{key}");
        }
    }

    #[test]
    fn batch_of_one_is_a_single_debit() {
        let mut planner = Planner::new(workload("debit=1", 1, 1), 0);
        assert!(matches!(
            planner.next_operation(),
            PlannedOperation::Debit(_)
        ));
    }
}
