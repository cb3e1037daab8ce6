//! Measurements of one run: HDR histograms of latency, counts of decided debits, errors by kind,
//! a per-second time series, and the JSON [`Summary`].
//!
//! Every completed operation is recorded once, by its completion time: completions during the
//! warm-up appear only in the time series (marked `warmup`), completions in the measured window
//! count in the summary, later ones are ignored. Latency is in microseconds in the histograms and
//! in milliseconds in the summary.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::driver::{ItemOutcome, OperationResult};
use crate::workload::OperationKind;

/// Highest latency a histogram holds: 60 s. Anything longer is recorded as 60 s (and shows as
/// the maximum), rather than lost.
const LATENCY_MAX_MICROS: u64 = 60_000_000;

/// Where a completion falls in the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Warmup,
    Measured,
    After,
}

/// The warm-up and measured window of a run, both from the run's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Phases {
    pub warmup: Duration,
    pub duration: Duration,
}

impl Phases {
    pub fn phase_of(&self, offset: Duration) -> Phase {
        if offset < self.warmup {
            Phase::Warmup
        } else if offset < self.warmup + self.duration {
            Phase::Measured
        } else {
            Phase::After
        }
    }

    /// End of the measured window, from the run's start.
    pub fn end(&self) -> Duration {
        self.warmup + self.duration
    }
}

fn latency_histogram(significant_figures: u8) -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts (1 ≤ low, 2 * low ≤ high, figures ≤ 5).
    Histogram::new_with_bounds(1, LATENCY_MAX_MICROS, significant_figures)
        .expect("constant histogram bounds are valid")
}

fn record_latency(histogram: &mut Histogram<u64>, latency: Duration) {
    let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    // Clamped into the histogram's range, so recording cannot fail.
    histogram.saturating_record(micros.clamp(1, LATENCY_MAX_MICROS));
}

fn milliseconds(micros: u64) -> f64 {
    micros as f64 / 1_000.0
}

/// Counts of one second of the run.
struct SecondBucket {
    debits: u64,
    operations: u64,
    errors: u64,
    dropped: u64,
    latency: Histogram<u64>,
}

impl SecondBucket {
    fn new() -> SecondBucket {
        SecondBucket {
            debits: 0,
            operations: 0,
            errors: 0,
            dropped: 0,
            // Two significant figures are plenty for a plot and keep a bucket near 20 KiB.
            latency: latency_histogram(2),
        }
    }
}

struct RecorderState {
    all_latency: Histogram<u64>,
    latency_by_kind: [Histogram<u64>; 3],
    operations: u64,
    requests: u64,
    debits_accepted: u64,
    debits_rejected: u64,
    rejections_by_code: BTreeMap<String, u64>,
    reads: u64,
    reservations_committed: u64,
    reservations_rejected: u64,
    errors: u64,
    errors_by_kind: BTreeMap<String, u64>,
    dropped: u64,
    series: Vec<SecondBucket>,
}

/// Shared by every worker of a run. One short lock per completed operation: at the rates this
/// machine reaches (tens of thousands of operations per second) that is far below the cost of
/// the HTTP request being measured.
pub struct Recorder {
    phases: Phases,
    state: Mutex<RecorderState>,
}

impl Recorder {
    pub fn new(phases: Phases) -> Recorder {
        Recorder {
            phases,
            state: Mutex::new(RecorderState {
                all_latency: latency_histogram(3),
                latency_by_kind: [
                    latency_histogram(3),
                    latency_histogram(3),
                    latency_histogram(3),
                ],
                operations: 0,
                requests: 0,
                debits_accepted: 0,
                debits_rejected: 0,
                rejections_by_code: BTreeMap::new(),
                reads: 0,
                reservations_committed: 0,
                reservations_rejected: 0,
                errors: 0,
                errors_by_kind: BTreeMap::new(),
                dropped: 0,
                series: Vec::new(),
            }),
        }
    }

    pub fn phases(&self) -> Phases {
        self.phases
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RecorderState> {
        // A worker that panicked while holding the lock left counts that are still valid
        // numbers; the run reports them rather than failing as a whole.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records an operation that completed `completed_offset` after the run's start and took
    /// `latency`.
    pub fn record(&self, completed_offset: Duration, latency: Duration, result: &OperationResult) {
        let phase = self.phases.phase_of(completed_offset);
        if phase == Phase::After {
            return;
        }
        let mut decided_debits = 0u64;
        let mut errors = 0u64;
        for outcome in &result.outcomes {
            match (result.kind, outcome) {
                (OperationKind::Debit, ItemOutcome::Accepted | ItemOutcome::Rejected { .. }) => {
                    decided_debits += 1;
                }
                (_, ItemOutcome::Failed { .. }) => errors += 1,
                _ => {}
            }
        }
        let mut state = self.lock();
        let second = completed_offset.as_secs() as usize;
        while state.series.len() <= second {
            state.series.push(SecondBucket::new());
        }
        let bucket = &mut state.series[second];
        bucket.debits += decided_debits;
        bucket.operations += 1;
        bucket.errors += errors;
        record_latency(&mut bucket.latency, latency);
        if phase == Phase::Warmup {
            return;
        }
        record_latency(&mut state.all_latency, latency);
        record_latency(&mut state.latency_by_kind[result.kind.index()], latency);
        state.operations += 1;
        state.requests += u64::from(result.requests);
        for outcome in &result.outcomes {
            match (result.kind, outcome) {
                (OperationKind::Debit, ItemOutcome::Accepted) => state.debits_accepted += 1,
                (OperationKind::Debit, ItemOutcome::Rejected { code }) => {
                    state.debits_rejected += 1;
                    *state.rejections_by_code.entry(code.clone()).or_default() += 1;
                }
                (OperationKind::Read, ItemOutcome::Accepted) => state.reads += 1,
                (OperationKind::Reserve, ItemOutcome::Accepted) => {
                    state.reservations_committed += 1
                }
                (OperationKind::Read | OperationKind::Reserve, ItemOutcome::Rejected { code }) => {
                    if result.kind == OperationKind::Reserve {
                        state.reservations_rejected += 1;
                    }
                    *state.rejections_by_code.entry(code.clone()).or_default() += 1;
                }
                (_, ItemOutcome::Failed { kind }) => {
                    state.errors += 1;
                    *state.errors_by_kind.entry(kind.clone()).or_default() += 1;
                }
            }
        }
    }

    /// Records an open-loop send that was due `intended_offset` after the start but not sent,
    /// because the bound of requests in flight was reached.
    pub fn record_dropped(&self, intended_offset: Duration) {
        let phase = self.phases.phase_of(intended_offset);
        if phase == Phase::After {
            return;
        }
        let mut state = self.lock();
        let second = intended_offset.as_secs() as usize;
        while state.series.len() <= second {
            state.series.push(SecondBucket::new());
        }
        state.series[second].dropped += 1;
        if phase == Phase::Measured {
            state.dropped += 1;
        }
    }

    /// The summary of the run so far, described by `run`.
    pub fn summary(&self, run: RunDescription) -> Summary {
        let state = self.lock();
        let measured_seconds = self.phases.duration.as_secs_f64().max(f64::MIN_POSITIVE);
        let warmup_seconds = self.phases.warmup.as_secs();
        let latency = LatencySummary::of(&state.all_latency);
        let latency_by_operation = OperationKind::ALL
            .into_iter()
            .filter(|kind| !state.latency_by_kind[kind.index()].is_empty())
            .map(|kind| {
                (
                    kind.name().to_owned(),
                    LatencySummary::of(&state.latency_by_kind[kind.index()]),
                )
            })
            .collect();
        let series = state
            .series
            .iter()
            .enumerate()
            .map(|(second, bucket)| SeriesPoint {
                second: second as u64,
                warmup: (second as u64) < warmup_seconds,
                debits: bucket.debits,
                operations: bucket.operations,
                errors: bucket.errors,
                dropped: bucket.dropped,
                p50_ms: quantile_ms(&bucket.latency, 0.5),
                p99_ms: quantile_ms(&bucket.latency, 0.99),
            })
            .collect();
        Summary {
            debits_per_sec: (state.debits_accepted + state.debits_rejected) as f64
                / measured_seconds,
            operations_per_sec: state.operations as f64 / measured_seconds,
            requests_per_sec: state.requests as f64 / measured_seconds,
            p50_ms: latency.p50_ms,
            p99_ms: latency.p99_ms,
            p999_ms: latency.p999_ms,
            max_ms: latency.max_ms,
            debits_accepted: state.debits_accepted,
            debits_rejected: state.debits_rejected,
            rejections_by_code: state.rejections_by_code.clone(),
            reads: state.reads,
            reservations_committed: state.reservations_committed,
            reservations_rejected: state.reservations_rejected,
            errors: state.errors,
            errors_by_kind: state.errors_by_kind.clone(),
            dropped: state.dropped,
            duration_s: self.phases.duration.as_secs_f64(),
            warmup_s: self.phases.warmup.as_secs_f64(),
            latency_by_operation,
            run,
            series,
        }
    }
}

fn quantile_ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    if histogram.is_empty() {
        return 0.0;
    }
    milliseconds(histogram.value_at_quantile(quantile))
}

/// What was run, as stated on the command line; carried in the summary so that a JSON file
/// says what produced it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunDescription {
    /// Name of the system in tables, e.g. `ledger-3`, `postgres`, `redis-always`.
    pub label: String,
    /// Name of the workload in tables, e.g. `c64-batch1-uniform`.
    pub workload: String,
    /// `ledger`, `postgres` or `redis`.
    pub target: String,
    /// `closed` or `open`.
    pub mode: String,
    /// Open loop: operations per second intended.
    pub rate_per_sec: Option<u64>,
    /// Closed loop: clients; open loop: the bound of operations in flight.
    pub concurrency: usize,
    pub batch: usize,
    pub accounts: u64,
    pub distribution: String,
    pub mix: String,
    /// Ledger: `leader` or `any`.
    pub route: String,
    /// Ledger: node URLs given.
    pub nodes: usize,
    pub seed: u64,
}

/// Latency percentiles of one set of operations, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    fn of(histogram: &Histogram<u64>) -> LatencySummary {
        LatencySummary {
            count: histogram.len(),
            p50_ms: quantile_ms(histogram, 0.5),
            p99_ms: quantile_ms(histogram, 0.99),
            p999_ms: quantile_ms(histogram, 0.999),
            max_ms: if histogram.is_empty() {
                0.0
            } else {
                milliseconds(histogram.max())
            },
        }
    }
}

/// One second of the run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SeriesPoint {
    /// Seconds since the run's start (warm-up included).
    pub second: u64,
    pub warmup: bool,
    /// Debits decided (accepted or rejected) that second.
    pub debits: u64,
    /// Operations completed that second.
    pub operations: u64,
    pub errors: u64,
    /// Open loop: sends due that second that were dropped at the in-flight bound.
    pub dropped: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The result of one run: what `loadgen --json` prints.
///
/// Counts are of the measured window only. `debits_per_sec` counts debits *decided* (accepted
/// or rejected: both are the ledger's work), `errors` counts items that failed without a
/// decision (a failed batch request counts each of its items). Latency percentiles are of whole
/// operations (a batch of 100 debits is one operation) of every kind; `latency_by_operation`
/// splits them by kind.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub debits_per_sec: f64,
    pub operations_per_sec: f64,
    /// Requests sent to the system (a batch split over three leaders is three requests; a
    /// reservation and its commit are two).
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub debits_accepted: u64,
    pub debits_rejected: u64,
    pub rejections_by_code: BTreeMap<String, u64>,
    pub reads: u64,
    pub reservations_committed: u64,
    pub reservations_rejected: u64,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    pub dropped: u64,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub latency_by_operation: BTreeMap<String, LatencySummary>,
    pub run: RunDescription,
    pub series: Vec<SeriesPoint>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn debits(outcomes: Vec<ItemOutcome>) -> OperationResult {
        OperationResult {
            kind: OperationKind::Debit,
            outcomes,
            requests: 1,
        }
    }

    fn rejected(code: &str) -> ItemOutcome {
        ItemOutcome::Rejected {
            code: code.to_owned(),
        }
    }

    fn failed(kind: &str) -> ItemOutcome {
        ItemOutcome::Failed {
            kind: kind.to_owned(),
        }
    }

    fn phases() -> Phases {
        Phases {
            warmup: Duration::from_secs(2),
            duration: Duration::from_secs(4),
        }
    }

    #[test]
    fn phases_split_the_run() {
        let phases = phases();
        let table = [
            (0, Phase::Warmup),
            (1_999, Phase::Warmup),
            (2_000, Phase::Measured),
            (5_999, Phase::Measured),
            (6_000, Phase::After),
        ];
        for (offset_ms, phase) in table {
            assert_eq!(
                phases.phase_of(Duration::from_millis(offset_ms)),
                phase,
                "{offset_ms} ms"
            );
        }
    }

    /// A hand-computed run: what the warm-up and the time after the window must not change, and
    /// every count and rate the summary derives.
    #[test]
    fn summary_counts_only_the_measured_window() {
        let recorder = Recorder::new(phases());
        let ms = Duration::from_millis;
        // Warm-up: in the series only.
        recorder.record(ms(500), ms(100), &debits(vec![ItemOutcome::Accepted; 10]));
        // Measured: 4 accepted + 1 rejected + 1 failed in one batch; a single debit; a read; a
        // rejected reservation.
        recorder.record(
            ms(2_100),
            ms(10),
            &debits(vec![
                ItemOutcome::Accepted,
                ItemOutcome::Accepted,
                ItemOutcome::Accepted,
                ItemOutcome::Accepted,
                rejected("insufficient_credits"),
                failed("http_503_no_leader"),
            ]),
        );
        recorder.record(ms(3_500), ms(20), &debits(vec![ItemOutcome::Accepted]));
        recorder.record(
            ms(3_600),
            ms(30),
            &OperationResult {
                kind: OperationKind::Read,
                outcomes: vec![ItemOutcome::Accepted],
                requests: 1,
            },
        );
        recorder.record(
            ms(5_900),
            ms(40),
            &OperationResult {
                kind: OperationKind::Reserve,
                outcomes: vec![rejected("insufficient_credits")],
                requests: 1,
            },
        );
        recorder.record_dropped(ms(4_000));
        recorder.record_dropped(ms(1_000));
        // After the window: ignored.
        recorder.record(ms(6_000), ms(1), &debits(vec![ItemOutcome::Accepted; 50]));

        let summary = recorder.summary(RunDescription::default());
        assert_eq!(summary.debits_accepted, 5);
        assert_eq!(summary.debits_rejected, 1);
        assert_eq!(summary.reads, 1);
        assert_eq!(summary.reservations_rejected, 1);
        assert_eq!(summary.reservations_committed, 0);
        assert_eq!(summary.errors, 1);
        assert_eq!(
            summary.errors_by_kind,
            BTreeMap::from([("http_503_no_leader".to_owned(), 1)])
        );
        assert_eq!(
            summary.rejections_by_code,
            BTreeMap::from([("insufficient_credits".to_owned(), 2)])
        );
        assert_eq!(summary.dropped, 1);
        // 6 decided debits in 4 measured seconds; 4 operations, 4 requests.
        assert_eq!(summary.debits_per_sec, 1.5);
        assert_eq!(summary.operations_per_sec, 1.0);
        assert_eq!(summary.requests_per_sec, 1.0);
        // Latencies 10, 20, 30, 40 ms: the median is the second, the top is the largest.
        assert!((summary.p50_ms - 20.0).abs() < 0.02, "{}", summary.p50_ms);
        assert!((summary.max_ms - 40.0).abs() < 0.05, "{}", summary.max_ms);
        assert_eq!(summary.latency_by_operation["debit"].count, 2);
        assert_eq!(summary.latency_by_operation["read"].count, 1);
        assert_eq!(summary.latency_by_operation["reserve"].count, 1);

        let seconds: Vec<(u64, bool, u64, u64, u64)> = summary
            .series
            .iter()
            .map(|point| {
                (
                    point.second,
                    point.warmup,
                    point.debits,
                    point.operations,
                    point.dropped,
                )
            })
            .collect();
        assert_eq!(
            seconds,
            vec![
                (0, true, 10, 1, 0),
                (1, true, 0, 0, 1),
                (2, false, 5, 1, 0),
                (3, false, 1, 2, 0),
                (4, false, 0, 0, 1),
                (5, false, 0, 1, 0),
            ]
        );
        assert!((summary.series[0].p99_ms - 100.0).abs() < 1.0);
    }

    #[test]
    fn latencies_beyond_the_histogram_are_clamped_not_lost() {
        let recorder = Recorder::new(phases());
        recorder.record(
            Duration::from_secs(3),
            Duration::from_secs(3_600),
            &debits(vec![ItemOutcome::Accepted]),
        );
        recorder.record(
            Duration::from_secs(3),
            Duration::ZERO,
            &debits(vec![ItemOutcome::Accepted]),
        );
        let summary = recorder.summary(RunDescription::default());
        assert_eq!(summary.latency_by_operation["debit"].count, 2);
        assert!(summary.max_ms >= 59_000.0, "{}", summary.max_ms);
    }

    #[test]
    fn empty_run_summarizes_to_zeros() {
        let summary = Recorder::new(phases()).summary(RunDescription::default());
        assert_eq!(summary.debits_per_sec, 0.0);
        assert_eq!(summary.p99_ms, 0.0);
        assert!(summary.series.is_empty());
        assert!(summary.latency_by_operation.is_empty());
    }

    #[test]
    fn summary_round_trips_through_json() {
        let recorder = Recorder::new(phases());
        recorder.record(
            Duration::from_secs(2),
            Duration::from_millis(3),
            &debits(vec![
                ItemOutcome::Accepted,
                rejected("insufficient_credits"),
            ]),
        );
        let summary = recorder.summary(RunDescription {
            label: "ledger-3".into(),
            workload: "c64-batch1-uniform".into(),
            ..RunDescription::default()
        });
        let text = serde_json::to_string(&summary).expect("serializable");
        for field in [
            "\"debits_per_sec\"",
            "\"p50_ms\"",
            "\"p99_ms\"",
            "\"p999_ms\"",
            "\"errors_by_kind\"",
        ] {
            assert!(text.contains(field), "{field} missing from {text}");
        }
        let back: Summary = serde_json::from_str(&text).expect("readable");
        assert_eq!(back, summary);
    }
}
