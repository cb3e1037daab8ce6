//! The run's report: `report.txt` (the verdict of every checker with its findings, the
//! availability table, the nemesis timeline) and `latency.svg` (latency of every operation over
//! time, by outcome, on a log scale, with the fault windows shaded), written by hand so that no
//! font or system library is needed.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::checker::availability::WindowFigures;
use crate::checker::{CheckResult, Verdict};
use crate::history::{Operation, Outcome};
use crate::nemesis::{FaultWindow, NemesisEvent};

/// Everything the text report shows.
pub struct ReportInput<'a> {
    pub header: Vec<(String, String)>,
    pub operations: &'a [Operation],
    pub results: &'a [CheckResult],
    pub availability: &'a [WindowFigures],
    pub timeline: &'a [NemesisEvent],
    /// The self-test's conclusion, when `--bug` was given.
    pub self_test: Option<String>,
}

pub fn overall_verdict(results: &[CheckResult]) -> Verdict {
    if results
        .iter()
        .any(|result| result.verdict == Verdict::Invalid)
    {
        Verdict::Invalid
    } else if results
        .iter()
        .any(|result| result.verdict == Verdict::Unknown)
    {
        Verdict::Unknown
    } else {
        Verdict::Valid
    }
}

pub fn render_text(input: &ReportInput<'_>) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "Credit Ledger chaos run");
    for (name, value) in &input.header {
        let _ = writeln!(text, "  {name:<16} {value}");
    }
    let count = |wanted: fn(&Outcome) -> bool| {
        input
            .operations
            .iter()
            .filter(|operation| wanted(&operation.outcome))
            .count()
    };
    let _ = writeln!(
        text,
        "  {:<16} {} (ok {}, fail {}, info {})",
        "operations",
        input.operations.len(),
        count(|outcome| matches!(outcome, Outcome::Ok(_))),
        count(|outcome| matches!(outcome, Outcome::Fail(_))),
        count(|outcome| matches!(outcome, Outcome::Info(_)))
    );
    let verdict = overall_verdict(input.results);
    let _ = writeln!(text, "\nVERDICT: {}", verdict.name().to_uppercase());
    if let Some(self_test) = &input.self_test {
        let _ = writeln!(text, "SELF-TEST: {self_test}");
    }
    let _ = writeln!(text, "\nCheckers");
    for result in input.results {
        let _ = writeln!(
            text,
            "  {:<22} {:<8} {}",
            result.name,
            result.verdict.name(),
            result.summary
        );
        for detail in &result.details {
            for (position, line) in detail.lines().enumerate() {
                let marker = if position == 0 { "- " } else { "  " };
                let _ = writeln!(text, "      {marker}{line}");
            }
        }
    }
    let _ = writeln!(
        text,
        "\nAvailability per window (operations by invocation time; latency of ok and fail)"
    );
    let _ = writeln!(
        text,
        "  {:>8} {:>8}  {:>6} {:>6} {:>6}  {:>9} {:>9}  window",
        "from s", "to s", "ok", "fail", "info", "p50 ms", "p99 ms"
    );
    for row in input.availability {
        let latency = |value: Option<f64>| value.map_or("-".to_owned(), |ms| format!("{ms:.1}"));
        let _ = writeln!(
            text,
            "  {:>8.1} {:>8.1}  {:>6} {:>6} {:>6}  {:>9} {:>9}  {}",
            row.start_us as f64 / 1e6,
            row.end_us as f64 / 1e6,
            row.ok,
            row.fail,
            row.info,
            latency(row.latency_p50_ms),
            latency(row.latency_p99_ms),
            row.label
        );
    }
    let _ = writeln!(text, "\nNemesis timeline");
    if input.timeline.is_empty() {
        let _ = writeln!(text, "  (no faults)");
    }
    for event in input.timeline {
        let _ = writeln!(
            text,
            "  {:>8.3}s  {:<6} {:<9} {}",
            event.time_us as f64 / 1e6,
            format!("{:?}", event.phase).to_lowercase(),
            event.fault,
            event.description
        );
    }
    text
}

/// Colour of an outcome in the plot (Jepsen's: ok blue, info orange, fail red).
fn colour(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Ok(_) => "#1f77b4",
        Outcome::Info(_) => "#ff7f0e",
        Outcome::Fail(_) => "#d62728",
    }
}

const WIDTH: f64 = 1200.0;
const HEIGHT: f64 = 560.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

/// The latency plot: x = invocation time (s), y = latency (ms, log scale). Points that fall on
/// the same pixel with the same outcome are drawn once, so long runs stay small.
pub fn render_svg(
    operations: &[Operation],
    windows: &[FaultWindow],
    end_us: u64,
    title: &str,
) -> String {
    let plot_width = WIDTH - LEFT - RIGHT;
    let plot_height = HEIGHT - TOP - BOTTOM;
    let end_seconds = (end_us as f64 / 1e6).max(1.0);
    let latencies_ms: Vec<f64> = operations
        .iter()
        .filter_map(|operation| operation.latency_us())
        .map(|us| (us as f64 / 1e3).max(0.1))
        .collect();
    let max_ms = latencies_ms.iter().copied().fold(10.0_f64, f64::max);
    let (low_exponent, high_exponent) = (-1_i32, max_ms.log10().ceil() as i32);
    let x_of = |seconds: f64| LEFT + seconds / end_seconds * plot_width;
    let y_of = |ms: f64| {
        let span = f64::from(high_exponent - low_exponent);
        TOP + plot_height - (ms.max(0.1).log10() - f64::from(low_exponent)) / span * plot_height
    };
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="22" font-size="15">{}</text>"#,
        escape(title)
    );
    for (number, window) in windows.iter().enumerate() {
        let x = x_of(window.start_us as f64 / 1e6);
        let width = (x_of(window.end_us as f64 / 1e6) - x).max(1.0);
        let _ = writeln!(
            svg,
            r##"<rect x="{x:.1}" y="{TOP}" width="{width:.1}" height="{plot_height}" fill="#888" fill-opacity="0.18"><title>{}</title></rect>"##,
            escape(&window.label)
        );
        // A label only where it fits (about 5.5 px per character of the small font; labels
        // alternate between two rows so that neighbours do not overlap); the full text is in
        // the band's tooltip and in report.txt.
        let characters = ((width * 2.0) / 5.5) as usize;
        if characters >= 6 {
            let label_y = TOP + 12.0 + 12.0 * (number % 2) as f64;
            let short: String = window.label.chars().take(characters.min(40)).collect();
            let _ = writeln!(
                svg,
                r##"<text x="{:.1}" y="{label_y}" font-size="9" fill="#555">{}</text>"##,
                x + 2.0,
                escape(&short)
            );
        }
    }
    // Axes and grid.
    let _ = writeln!(
        svg,
        r#"<rect x="{LEFT}" y="{TOP}" width="{plot_width}" height="{plot_height}" fill="none" stroke="black"/>"#
    );
    for exponent in low_exponent..=high_exponent {
        let ms = 10_f64.powi(exponent);
        let y = y_of(ms);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_width,
            LEFT - 6.0,
            y + 4.0,
            if ms < 1.0 {
                format!("{ms}")
            } else {
                format!("{ms:.0}")
            }
        );
    }
    let tick_seconds = nice_step(end_seconds / 10.0);
    let mut tick = 0.0;
    while tick <= end_seconds + 1e-9 {
        let x = x_of(tick);
        let _ = writeln!(
            svg,
            r#"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="black"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{tick}</text>"#,
            TOP + plot_height,
            TOP + plot_height + 5.0,
            TOP + plot_height + 18.0
        );
        tick += tick_seconds;
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time since start (s)</text>"#,
        LEFT + plot_width / 2.0,
        HEIGHT - 22.0
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate(18,{:.1}) rotate(-90)" text-anchor="middle">latency (ms, log scale)</text>"#,
        TOP + plot_height / 2.0
    );
    // Points: info operations still pending at the end are drawn at the top.
    let mut drawn: BTreeSet<(i64, i64, &'static str)> = BTreeSet::new();
    for operation in operations {
        let latency_ms = match operation.latency_us() {
            Some(us) => us as f64 / 1e3,
            None => max_ms,
        };
        let x = x_of(operation.invoke_us as f64 / 1e6);
        let y = y_of(latency_ms);
        let fill = colour(&operation.outcome);
        if drawn.insert((x.round() as i64, y.round() as i64, fill)) {
            let _ = writeln!(
                svg,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="1.6" fill="{fill}" fill-opacity="0.7"/>"#
            );
        }
    }
    // Legend.
    for (position, (label, fill)) in [
        ("ok", "#1f77b4"),
        ("info (unknown)", "#ff7f0e"),
        ("fail", "#d62728"),
        ("fault window", "#bbb"),
    ]
    .iter()
    .enumerate()
    {
        let x = LEFT + 120.0 * position as f64;
        let y = HEIGHT - 8.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{x}" y="{:.1}" width="10" height="10" fill="{fill}"/><text x="{:.1}" y="{y}">{label}</text>"#,
            y - 9.0,
            x + 14.0
        );
    }
    let _ = writeln!(svg, "</svg>");
    svg
}

fn nice_step(raw: f64) -> f64 {
    for step in [
        1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
    ] {
        if step >= raw {
            return step;
        }
    }
    (raw / 3600.0).ceil() * 3600.0
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::test_support::*;

    #[test]
    fn the_svg_has_a_point_per_outcome_and_a_shaded_window() {
        let history = HistoryBuilder::new()
            .op(
                1,
                "a",
                debit("k1", 1),
                1_000_000,
                Some(1_005_000),
                accepted(1, 9, false),
            )
            .op(1, "a", debit("k2", 1), 2_000_000, Some(3_000_000), fail())
            .op(1, "a", debit("k3", 1), 4_000_000, None, info())
            .build();
        let windows = vec![FaultWindow {
            start_us: 1_500_000,
            end_us: 3_500_000,
            label: "kill -9 node 2 <leader>".to_owned(),
        }];
        let svg = render_svg(&history, &windows, 5_000_000, "test");
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains("#1f77b4") && svg.contains("#d62728") && svg.contains("#ff7f0e"));
        assert!(svg.contains("kill -9 node 2 &lt;leader&gt;"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn the_overall_verdict_is_the_worst_one() {
        let result = |verdict| CheckResult {
            name: "x",
            verdict,
            summary: String::new(),
            details: Vec::new(),
        };
        assert_eq!(overall_verdict(&[result(Verdict::Valid)]), Verdict::Valid);
        assert_eq!(
            overall_verdict(&[result(Verdict::Valid), result(Verdict::Unknown)]),
            Verdict::Unknown
        );
        assert_eq!(
            overall_verdict(&[result(Verdict::Unknown), result(Verdict::Invalid)]),
            Verdict::Invalid
        );
    }
}
