//! Availability figures: per window of the run (healthy stretches and fault windows), how many
//! operations ended ok / fail / info, and the latency percentiles of the completed ones. These
//! are figures, not a verdict: a fault is allowed to make the ledger unavailable.

use crate::history::{Operation, Outcome};
use crate::nemesis::FaultWindow;

/// One row of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowFigures {
    pub label: String,
    pub start_us: u64,
    pub end_us: u64,
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
}

/// Splits `[0, end_us)` at fault window boundaries; an operation counts in the window of its
/// invocation. Overlapping faults are merged into one window labelled with both.
pub fn figures(
    operations: &[Operation],
    windows: &[FaultWindow],
    end_us: u64,
) -> Vec<WindowFigures> {
    let mut merged: Vec<(u64, u64, String)> = Vec::new();
    for window in windows {
        match merged.last_mut() {
            Some((_, end, label)) if window.start_us < *end => {
                *end = (*end).max(window.end_us);
                label.push_str(" + ");
                label.push_str(&window.label);
            }
            _ => merged.push((window.start_us, window.end_us, window.label.clone())),
        }
    }
    let mut spans = Vec::new();
    let mut cursor = 0;
    for (start, end, label) in merged {
        if start > cursor {
            spans.push((cursor, start, "healthy".to_owned()));
        }
        spans.push((start, end, label));
        cursor = end;
    }
    if cursor < end_us {
        spans.push((cursor, end_us, "healthy".to_owned()));
    }
    spans
        .into_iter()
        .map(|(start_us, end_us, label)| {
            let inside: Vec<&Operation> = operations
                .iter()
                .filter(|operation| operation.invoke_us >= start_us && operation.invoke_us < end_us)
                .collect();
            let count = |wanted: fn(&Outcome) -> bool| {
                inside
                    .iter()
                    .filter(|operation| wanted(&operation.outcome))
                    .count()
            };
            let mut latencies: Vec<u64> = inside
                .iter()
                .filter(|operation| !matches!(operation.outcome, Outcome::Info(_)))
                .filter_map(|operation| operation.latency_us())
                .collect();
            latencies.sort_unstable();
            WindowFigures {
                label,
                start_us,
                end_us,
                ok: count(|outcome| matches!(outcome, Outcome::Ok(_))),
                fail: count(|outcome| matches!(outcome, Outcome::Fail(_))),
                info: count(|outcome| matches!(outcome, Outcome::Info(_))),
                latency_p50_ms: percentile_ms(&latencies, 0.50),
                latency_p99_ms: percentile_ms(&latencies, 0.99),
            }
        })
        .collect()
}

/// Nearest-rank percentile of sorted microsecond latencies, in milliseconds.
pub fn percentile_ms(sorted_us: &[u64], quantile: f64) -> Option<f64> {
    if sorted_us.is_empty() {
        return None;
    }
    let rank = (quantile * sorted_us.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted_us.len()) - 1;
    Some(sorted_us[index] as f64 / 1_000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::test_support::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let latencies: Vec<u64> = (1..=100).map(|ms| ms * 1_000).collect();
        assert_eq!(percentile_ms(&latencies, 0.5), Some(50.0));
        assert_eq!(percentile_ms(&latencies, 0.99), Some(99.0));
        assert_eq!(percentile_ms(&[], 0.5), None);
    }

    #[test]
    fn operations_fall_into_healthy_and_fault_windows() {
        let history = HistoryBuilder::new()
            .op(
                1,
                "a",
                debit("k1", 1),
                1_000,
                Some(3_000),
                accepted(1, 9, false),
            )
            .op(1, "a", debit("k2", 1), 12_000, Some(13_000), fail())
            .op(1, "a", debit("k3", 1), 15_000, None, info())
            .op(
                1,
                "a",
                debit("k4", 1),
                25_000,
                Some(26_000),
                accepted(1, 8, false),
            )
            .build();
        let windows = vec![FaultWindow {
            start_us: 10_000,
            end_us: 20_000,
            label: "kill".to_owned(),
        }];
        let rows = figures(&history, &windows, 30_000);
        let counts: Vec<(&str, usize, usize, usize)> = rows
            .iter()
            .map(|row| (row.label.as_str(), row.ok, row.fail, row.info))
            .collect();
        assert_eq!(
            counts,
            vec![
                ("healthy", 1, 0, 0),
                ("kill", 0, 1, 1),
                ("healthy", 1, 0, 0)
            ]
        );
        assert_eq!(rows[0].latency_p50_ms, Some(2.0));
    }
}
