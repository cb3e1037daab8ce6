//! The plot of a run: throughput (top) and latency p50/p99 (bottom) per second, the warm-up
//! shaded. Written as plain SVG text: no plotting library, no fonts, no system libraries, and
//! any browser shows it.

use std::fmt::Write as _;

use crate::recorder::SeriesPoint;

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 600.0;
const MARGIN_LEFT: f64 = 80.0;
const MARGIN_RIGHT: f64 = 150.0;
const TITLE_HEIGHT: f64 = 50.0;
const PANEL_HEIGHT: f64 = 220.0;
const PANEL_GAP: f64 = 60.0;

const DEBITS_COLOUR: &str = "#1f77b4";
const ERRORS_COLOUR: &str = "#d62728";
const P50_COLOUR: &str = "#2ca02c";
const P99_COLOUR: &str = "#ff7f0e";

/// Escapes text for an SVG text node or attribute.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// Round tick values from 0 to at least `maximum`: steps of 1, 2 or 5 times a power of ten,
/// about `target` of them.
pub fn nice_ticks(maximum: f64, target: usize) -> Vec<f64> {
    let maximum = if maximum.is_finite() && maximum > 0.0 {
        maximum
    } else {
        1.0
    };
    let raw_step = maximum / target.max(1) as f64;
    let magnitude = 10f64.powf(raw_step.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|factor| factor * magnitude)
        .find(|step| *step >= raw_step)
        .unwrap_or(10.0 * magnitude);
    let count = (maximum / step).ceil() as usize;
    (0..=count).map(|index| index as f64 * step).collect()
}

fn format_tick(value: f64) -> String {
    if value >= 1_000_000.0 {
        format!("{}M", trim_number(value / 1_000_000.0))
    } else if value >= 1_000.0 {
        format!("{}k", trim_number(value / 1_000.0))
    } else {
        trim_number(value)
    }
}

fn trim_number(value: f64) -> String {
    let text = format!("{value:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// One line of a panel.
struct Line<'a> {
    label: &'a str,
    colour: &'a str,
    values: Vec<f64>,
}

/// Draws one panel (axes, ticks, lines, legend) with its top edge at `top`.
fn panel(
    svg: &mut String,
    top: f64,
    y_label: &str,
    seconds: &[u64],
    warmup: &[bool],
    lines: &[Line],
) {
    let plot_width = WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let bottom = top + PANEL_HEIGHT;
    let last_second = seconds.last().copied().unwrap_or(0).max(1) as f64;
    let x_of = |second: f64| MARGIN_LEFT + plot_width * (second / (last_second + 1.0));
    let maximum = lines
        .iter()
        .flat_map(|line| line.values.iter().copied())
        .fold(0.0, f64::max);
    let ticks = nice_ticks(maximum, 5);
    let y_top = ticks.last().copied().unwrap_or(1.0).max(f64::MIN_POSITIVE);
    let y_of = |value: f64| bottom - PANEL_HEIGHT * (value / y_top);

    // Warm-up: a shaded band over the seconds marked warm-up.
    if let Some(warmup_seconds) = warmup.iter().rposition(|is_warmup| *is_warmup) {
        let right = x_of(warmup_seconds as f64 + 1.0);
        let _ = writeln!(
            svg,
            r##"<rect x="{MARGIN_LEFT:.1}" y="{top:.1}" width="{:.1}" height="{PANEL_HEIGHT:.1}" fill="#eeeeee"/>"##,
            right - MARGIN_LEFT
        );
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" font-size="11" fill="#888888">warm-up</text>"##,
            MARGIN_LEFT + 4.0,
            top + 14.0
        );
    }
    for tick in &ticks {
        let y = y_of(*tick);
        let _ = writeln!(
            svg,
            r##"<line x1="{MARGIN_LEFT:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#dddddd"/>"##,
            MARGIN_LEFT + plot_width
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"#,
            MARGIN_LEFT - 6.0,
            y + 4.0,
            format_tick(*tick)
        );
    }
    let x_ticks = nice_ticks(last_second + 1.0, 10);
    for tick in x_ticks.iter().filter(|tick| **tick <= last_second + 1.0) {
        let x = x_of(*tick);
        let _ = writeln!(
            svg,
            r#"<text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
            bottom + 16.0,
            trim_number(*tick)
        );
    }
    let _ = writeln!(
        svg,
        r#"<rect x="{MARGIN_LEFT:.1}" y="{top:.1}" width="{plot_width:.1}" height="{PANEL_HEIGHT:.1}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle" transform="rotate(-90 {:.1} {:.1})">{}</text>"#,
        MARGIN_LEFT - 55.0,
        top + PANEL_HEIGHT / 2.0,
        MARGIN_LEFT - 55.0,
        top + PANEL_HEIGHT / 2.0,
        escape(y_label)
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">seconds since start</text>"#,
        MARGIN_LEFT + plot_width / 2.0,
        bottom + 34.0
    );
    for (number, line) in lines.iter().enumerate() {
        // Each second's value is drawn at the middle of that second.
        let points: Vec<String> = seconds
            .iter()
            .zip(&line.values)
            .map(|(second, value)| format!("{:.1},{:.1}", x_of(*second as f64 + 0.5), y_of(*value)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
            points.join(" "),
            line.colour
        );
        let legend_y = top + 20.0 + 20.0 * number as f64;
        let legend_x = MARGIN_LEFT + plot_width + 15.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{legend_x:.1}" y1="{legend_y:.1}" x2="{:.1}" y2="{legend_y:.1}" stroke="{}" stroke-width="2"/>"#,
            legend_x + 20.0,
            line.colour
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="12">{}</text>"#,
            legend_x + 26.0,
            legend_y + 4.0,
            escape(line.label)
        );
    }
}

/// The SVG document of a run's time series.
pub fn render_svg(title: &str, series: &[SeriesPoint]) -> String {
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="30" font-size="16" text-anchor="middle">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    if series.is_empty() {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="14" text-anchor="middle">no data</text>"#,
            WIDTH / 2.0,
            HEIGHT / 2.0
        );
        svg.push_str("</svg>\n");
        return svg;
    }
    let seconds: Vec<u64> = series.iter().map(|point| point.second).collect();
    let warmup: Vec<bool> = series.iter().map(|point| point.warmup).collect();
    let mut throughput = vec![Line {
        label: "debits/s",
        colour: DEBITS_COLOUR,
        values: series.iter().map(|point| point.debits as f64).collect(),
    }];
    if series.iter().any(|point| point.errors + point.dropped > 0) {
        throughput.push(Line {
            label: "errors+dropped/s",
            colour: ERRORS_COLOUR,
            values: series
                .iter()
                .map(|point| (point.errors + point.dropped) as f64)
                .collect(),
        });
    }
    panel(
        &mut svg,
        TITLE_HEIGHT,
        "debits per second",
        &seconds,
        &warmup,
        &throughput,
    );
    let latency = [
        Line {
            label: "p50 ms",
            colour: P50_COLOUR,
            values: series.iter().map(|point| point.p50_ms).collect(),
        },
        Line {
            label: "p99 ms",
            colour: P99_COLOUR,
            values: series.iter().map(|point| point.p99_ms).collect(),
        },
    ];
    panel(
        &mut svg,
        TITLE_HEIGHT + PANEL_HEIGHT + PANEL_GAP,
        "latency (ms)",
        &seconds,
        &warmup,
        &latency,
    );
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series() -> Vec<SeriesPoint> {
        (0..8)
            .map(|second| SeriesPoint {
                second,
                warmup: second < 2,
                debits: 1_000 * (second + 1),
                operations: 10 * (second + 1),
                errors: u64::from(second == 5),
                dropped: 0,
                p50_ms: 2.5 + second as f64,
                p99_ms: 9.0 + 2.0 * second as f64,
            })
            .collect()
    }

    fn parse(svg: &str) -> roxmltree::Document<'_> {
        roxmltree::Document::parse(svg).unwrap_or_else(|error| panic!("{error}\n{svg}"))
    }

    fn elements<'a>(
        document: &'a roxmltree::Document<'a>,
        name: &str,
    ) -> Vec<roxmltree::Node<'a, 'a>> {
        document
            .descendants()
            .filter(|node| node.tag_name().name() == name)
            .collect()
    }

    #[test]
    fn plot_is_well_formed_svg_with_one_line_per_measure() {
        let svg = render_svg("ledger-3 <c64 & batch 1>", &series());
        let document = parse(&svg);
        assert_eq!(document.root_element().tag_name().name(), "svg");
        assert_eq!(
            document.root_element().tag_name().namespace(),
            Some("http://www.w3.org/2000/svg")
        );
        // debits/s, errors/s (there is an error), p50 and p99.
        let polylines = elements(&document, "polyline");
        assert_eq!(polylines.len(), 4);
        for polyline in &polylines {
            let points = polyline.attribute("points").expect("points");
            assert_eq!(points.split(' ').count(), 8, "{points}");
            for point in points.split(' ') {
                let (x, y) = point.split_once(',').expect("x,y");
                let (x, y): (f64, f64) = (x.parse().expect("x"), y.parse().expect("y"));
                assert!(
                    (0.0..=WIDTH).contains(&x) && (0.0..=HEIGHT).contains(&y),
                    "{point}"
                );
            }
        }
        // The title survives escaping.
        let texts: Vec<&str> = elements(&document, "text")
            .iter()
            .filter_map(|node| node.text())
            .collect();
        assert!(texts.contains(&"ledger-3 <c64 & batch 1>"), "{texts:?}");
        assert!(texts.contains(&"warm-up"));
    }

    #[test]
    fn higher_values_are_drawn_higher() {
        let svg = render_svg("run", &series());
        let document = parse(&svg);
        let first = elements(&document, "polyline")[0]
            .attribute("points")
            .expect("points")
            .to_owned();
        let heights: Vec<f64> = first
            .split(' ')
            .map(|point| point.split_once(',').expect("x,y").1.parse().expect("y"))
            .collect();
        // Debits grow every second, so the line rises (smaller y) every second.
        assert!(
            heights.windows(2).all(|pair| pair[1] < pair[0]),
            "{heights:?}"
        );
    }

    #[test]
    fn empty_series_is_still_a_document() {
        let svg = render_svg("nothing", &[]);
        let document = parse(&svg);
        assert!(elements(&document, "polyline").is_empty());
    }

    #[test]
    fn ticks_are_round_and_cover_the_maximum() {
        let table: [(f64, &[f64]); 4] = [
            (10.0, &[0.0, 2.0, 4.0, 6.0, 8.0, 10.0]),
            (
                42_000.0,
                &[0.0, 10_000.0, 20_000.0, 30_000.0, 40_000.0, 50_000.0],
            ),
            (0.7, &[0.0, 0.2, 0.4, 0.6, 0.8]),
            // Nothing to show: a unit axis rather than a degenerate one.
            (0.0, &[0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        ];
        for (maximum, expected) in table {
            let ticks = nice_ticks(maximum, 5);
            assert_eq!(ticks.len(), expected.len(), "maximum {maximum}: {ticks:?}");
            for (tick, wanted) in ticks.iter().zip(expected) {
                assert!((tick - wanted).abs() < 1e-9, "maximum {maximum}: {ticks:?}");
            }
        }
        assert_eq!(format_tick(50_000.0), "50k");
        assert_eq!(format_tick(1_500_000.0), "1.5M");
        assert_eq!(format_tick(0.2), "0.2");
    }
}
