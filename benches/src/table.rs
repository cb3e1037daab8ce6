//! The side-by-side table of several runs: one block per workload, one row per system, and the
//! ratio of a reference system's throughput to each row's.

use std::fmt::Write as _;

use crate::recorder::Summary;

/// `12,345` for 12345.4.
pub fn thousands(value: f64) -> String {
    let rounded = value.round().max(0.0) as u64;
    let digits = rounded.to_string();
    // Groups of three from the right.
    let groups: Vec<String> = digits
        .as_bytes()
        .rchunks(3)
        .rev()
        .map(|group| String::from_utf8_lossy(group).into_owned())
        .collect();
    groups.join(",")
}

/// The ratio `reference / other` of two rates, two decimals; `-` when it is undefined.
pub fn ratio(reference: f64, other: f64) -> String {
    if other > 0.0 && reference.is_finite() {
        format!("{:.2}", reference / other)
    } else {
        "-".to_owned()
    }
}

/// A Markdown table of `summaries`, grouped by `run.workload` (in order of first appearance),
/// with the ratio of `reference_label`'s debits/s to each system's in the same workload.
pub fn render_table(summaries: &[Summary], reference_label: &str) -> String {
    let mut workloads: Vec<&str> = Vec::new();
    for summary in summaries {
        if !workloads.contains(&summary.run.workload.as_str()) {
            workloads.push(&summary.run.workload);
        }
    }
    let mut table = String::new();
    let _ = writeln!(
        table,
        "| workload | system | debits/s | p50 ms | p99 ms | p99.9 ms | errors | dropped | {reference_label} ÷ system |"
    );
    table.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for workload in workloads {
        let rows: Vec<&Summary> = summaries
            .iter()
            .filter(|summary| summary.run.workload == workload)
            .collect();
        let reference = rows
            .iter()
            .find(|summary| summary.run.label == reference_label)
            .map(|summary| summary.debits_per_sec);
        for row in rows {
            let _ = writeln!(
                table,
                "| {workload} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {} | {} |",
                row.run.label,
                thousands(row.debits_per_sec),
                row.p50_ms,
                row.p99_ms,
                row.p999_ms,
                row.errors,
                row.dropped,
                reference
                    .map(|reference| ratio(reference, row.debits_per_sec))
                    .unwrap_or_else(|| "-".to_owned()),
            );
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::RunDescription;

    fn summary(label: &str, workload: &str, debits_per_sec: f64, p99_ms: f64) -> Summary {
        Summary {
            debits_per_sec,
            p50_ms: p99_ms / 2.0,
            p99_ms,
            p999_ms: p99_ms * 2.0,
            run: RunDescription {
                label: label.to_owned(),
                workload: workload.to_owned(),
                ..RunDescription::default()
            },
            ..Summary::default()
        }
    }

    #[test]
    fn thousands_and_ratios() {
        let table = [
            (0.0, "0"),
            (999.4, "999"),
            (1_000.0, "1,000"),
            (123_456.7, "123,457"),
            (1_234_567.0, "1,234,567"),
        ];
        for (value, text) in table {
            assert_eq!(thousands(value), text);
        }
        assert_eq!(ratio(30.0, 10.0), "3.00");
        assert_eq!(ratio(10.0, 40.0), "0.25");
        assert_eq!(ratio(10.0, 0.0), "-");
    }

    #[test]
    fn table_groups_by_workload_with_ratios_to_the_reference() {
        let summaries = [
            summary("ledger-3", "c64-batch1", 20_000.0, 8.0),
            summary("postgres", "c64-batch1", 4_000.0, 30.0),
            summary("redis-always", "c64-batch1", 10_000.0, 12.0),
            summary("postgres", "hot-batch1", 400.0, 300.0),
        ];
        let table = render_table(&summaries, "ledger-3");
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2 + 4, "{table}");
        assert!(lines[0].contains("ledger-3 ÷ system"));
        assert_eq!(
            lines[2],
            "| c64-batch1 | ledger-3 | 20,000 | 4.0 | 8.0 | 16.0 | 0 | 0 | 1.00 |"
        );
        assert!(lines[3].starts_with("| c64-batch1 | postgres | 4,000 |"));
        assert!(lines[3].ends_with("| 5.00 |"), "{}", lines[3]);
        assert!(lines[4].ends_with("| 2.00 |"), "{}", lines[4]);
        // No reference run in that workload: no ratio.
        assert!(lines[5].starts_with("| hot-batch1 | postgres | 400 |"));
        assert!(lines[5].ends_with("| - |"), "{}", lines[5]);
    }
}
