//! `benches`: load generation, peer comparisons and micro-benchmarks of the Credit Ledger.
//!
//! The `loadgen` binary drives one system (the ledger, PostgreSQL or Redis, each behind the
//! [`driver::Driver`] trait) with one workload: closed loop (N clients, each sending its next
//! request when the previous one is answered) or open loop (a target rate, latency measured from
//! each request's *intended* send time so that a stalled server cannot hide its stall: no
//! coordinated omission), batch size, account distribution, operation mix, warm-up and duration.
//! It reports throughput and latency percentiles from HDR histograms as a JSON [`Summary`], a
//! per-second time series and an SVG plot. `benches/peers/run.sh` runs every system side by side
//! and `peer-table` turns the summaries into one table with ratios. The criterion benchmarks in
//! `benches/benches/` measure the state machine, the log entry codec and RocksDB writes.
//!
//! Code map:
//! - `workload.rs`: account ids, the operation mix (`--mix debit=90,read=10`), what one
//!   operation is.
//! - `distribution.rs`: which account an operation touches (uniform, zipfian, one hot account).
//! - `schedule.rs`: open-loop arithmetic (intended send times, how many sends are due).
//! - `recorder.rs`: HDR histograms, counters, errors by kind, the per-second series, [`Summary`].
//! - `runner.rs`: the closed and open loops, generic over the driver.
//! - `driver/`: the [`driver::Driver`] trait and the ledger, PostgreSQL and Redis drivers.
//! - `plot.rs`: the SVG plot of throughput and latency over time (hand-written SVG, no fonts or
//!   system libraries needed).
//! - `table.rs`: the side-by-side table of several summaries, with ratios.
//! - `fsync.rs`: the disk's synced writes per second, the physical bound of every durable system.
//!
//! **Boundary:** the load generator drives the ledger only through `ledger-client` and HTTP, like
//! any outside user; it uses `ledger-core` for nothing but `shard_for_account`, the documented
//! placement function, to send each request to its shard's leader. Only the micro-benchmarks call
//! the library crates (core, raft types, RocksDB) directly.

pub mod distribution;
pub mod driver;
pub mod fsync;
pub mod plot;
pub mod recorder;
pub mod runner;
pub mod schedule;
pub mod table;
pub mod workload;

pub use recorder::{SeriesPoint, Summary};

#[cfg(test)]
pub(crate) mod test_support {
    /// The seed of a random test: `BENCHES_TEST_SEED` when set (to replay a failure), else a
    /// fresh one. Printed either way, so that every failure can be replayed.
    pub(crate) fn seed() -> u64 {
        let seed = std::env::var("BENCHES_TEST_SEED")
            .ok()
            .and_then(|text| text.parse().ok())
            .unwrap_or_else(rand::random);
        println!("seed {seed} (replay with BENCHES_TEST_SEED={seed})");
        seed
    }
}
