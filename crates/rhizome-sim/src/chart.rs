//! The storm as an SVG chart: answers per second above, the probes' latency (p50 and max per
//! second, log scale) below, on one time axis. Written by hand: a few hundred lines of SVG text
//! need no plotting library.

use crate::{Report, ReturnMode};
use std::fmt::Write;

/// The picture's size, px.
pub const WIDTH: f64 = 900.0;
/// The picture's size, px.
pub const HEIGHT: f64 = 580.0;
/// Left edge of both plots (the time axis's 0), px.
pub const PLOT_LEFT: f64 = 90.0;
/// Right edge of both plots (the time axis's end), px.
pub const PLOT_RIGHT: f64 = 870.0;
/// Top of the throughput plot (its axis's largest value), px.
pub const THROUGHPUT_TOP: f64 = 95.0;
/// Bottom of the throughput plot (0 answers per second), px.
pub const THROUGHPUT_BOTTOM: f64 = 285.0;
/// Top of the latency plot (its axis's largest value), px.
pub const LATENCY_TOP: f64 = 320.0;
/// Bottom of the latency plot (its axis's smallest value), px.
pub const LATENCY_BOTTOM: f64 = 510.0;

/// Latencies are drawn on a log scale, so none is drawn below this (a sub-millisecond answer is
/// reported as 0 ms).
const LATENCY_FLOOR_MS: u64 = 1;

const THROUGHPUT_COLOR: &str = "#1f77b4";
const P50_COLOR: &str = "#2ca02c";
const MAX_COLOR: &str = "#d62728";
const SYNCED_COLOR: &str = "#555555";

/// What the chart shows: per-second series of one storm.
#[derive(Debug, Clone, Default)]
pub struct Chart {
    /// The first line: the scenario.
    pub title: String,
    /// The second line: the server and the outcome.
    pub subtitle: String,
    /// Answers to queued actions in each second of the storm.
    pub throughput_per_second: Vec<u64>,
    /// Median probe latency of the actions sent in each second, ms; `None` for none answered.
    pub p50_ms_per_second: Vec<Option<u64>>,
    /// Largest probe latency of the actions sent in each second, ms; `None` for none answered.
    pub max_ms_per_second: Vec<Option<u64>>,
    /// When every client was synced, ms after the storm's start (a marker across both plots).
    pub synced_after_ms: Option<u64>,
}

impl Chart {
    /// The chart of a run.
    pub fn of(report: &Report) -> Chart {
        let s = &report.scenario;
        let returning = match s.return_mode {
            ReturnMode::Burst => "all returning at once".to_owned(),
            ReturnMode::Even => format!("returning evenly within {} ms", s.return_within_ms),
            ReturnMode::Ramp => format!("returning on a ramp within {} ms", s.return_within_ms),
        };
        let title = format!(
            "rhizome sim: {} clients × {} queued actions, {returning}, {} probes",
            s.clients, s.actions_per_client, s.probes
        );
        let synced = match report.time_to_sync_ms {
            Some(ms) => format!("all synced after {}", seconds_label(ms as f64 / 1000.0)),
            None => format!("{} of {} clients synced", report.clients_synced, s.clients),
        };
        let log = match &report.server_log {
            Some(log) => format!("{} missing from the server's log", log.missing),
            None => "the server's log not checked".to_owned(),
        };
        let subtitle =
            format!("{}: {synced}, {} of {} actions lost, {log}", s.url, report.lost, report.queued);
        Chart {
            title,
            subtitle,
            throughput_per_second: report.throughput_per_second.clone(),
            p50_ms_per_second: report.probes.p50_ms_per_second.clone(),
            max_ms_per_second: report.probes.max_ms_per_second.clone(),
            synced_after_ms: report.time_to_sync_ms,
        }
    }

    /// Seconds on the time axis: every bucket of every series and the synced marker.
    fn seconds(&self) -> usize {
        let synced = self.synced_after_ms.map_or(0, |ms| ms.div_ceil(1000) as usize);
        [self.throughput_per_second.len(), self.p50_ms_per_second.len(), self.max_ms_per_second.len(), synced]
            .into_iter()
            .max()
            .unwrap_or(0)
            .max(1)
    }

    /// The time axis: second `t` since the storm's start to px.
    fn time(&self) -> Scale {
        Scale::linear(0.0, self.seconds() as f64, PLOT_LEFT, PLOT_RIGHT)
    }

    /// The x of bucket `i` (its middle).
    pub fn bucket_x(&self, i: usize) -> f64 {
        self.time().at(i as f64 + 0.5)
    }

    /// The throughput axis: from 0 to a round number at or above the busiest second.
    fn throughput_axis(&self) -> (Scale, Vec<f64>) {
        let max = self.throughput_per_second.iter().copied().max().unwrap_or(0).max(1) as f64;
        let step = round_step(max / 4.0);
        let top = (max / step).ceil() * step;
        let ticks = (0..=(top / step).round() as usize).map(|k| k as f64 * step).collect();
        (Scale::linear(0.0, top, THROUGHPUT_BOTTOM, THROUGHPUT_TOP), ticks)
    }

    /// The latency axis: whole decades of ms around every latency, at least one.
    fn latency_axis(&self) -> Option<(Scale, Vec<f64>)> {
        let all = self.p50_ms_per_second.iter().chain(&self.max_ms_per_second).flatten();
        let (lo, hi) = all.fold(None, |range: Option<(u64, u64)>, &ms| {
            let ms = ms.max(LATENCY_FLOOR_MS);
            Some(range.map_or((ms, ms), |(lo, hi)| (lo.min(ms), hi.max(ms))))
        })?;
        let lo_decade = (lo as f64).log10().floor() as i32;
        let hi_decade = ((hi as f64).log10().ceil() as i32).max(lo_decade + 1);
        let ticks = (lo_decade..=hi_decade).map(|d| 10f64.powi(d)).collect();
        let scale = Scale::log(10f64.powi(lo_decade), 10f64.powi(hi_decade), LATENCY_BOTTOM, LATENCY_TOP);
        Some((scale, ticks))
    }

    /// The picture.
    pub fn svg(&self) -> String {
        let mut out = String::new();
        let time = self.time();
        let (throughput, throughput_ticks) = self.throughput_axis();
        let latency = self.latency_axis();
        let _ = writeln!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(out, "<title>{}</title>", escape(&self.title));
        let _ = writeln!(out, r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#);
        let _ = writeln!(
            out,
            r#"<text x="{}" y="24" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
            WIDTH / 2.0,
            escape(&self.title)
        );
        let _ = writeln!(
            out,
            r#"<text x="{}" y="44" text-anchor="middle" fill="{SYNCED_COLOR}">{}</text>"#,
            WIDTH / 2.0,
            escape(&self.subtitle)
        );
        self.legend(&mut out);

        // The shared time axis: grid lines through both plots, labels under the lower one.
        let step = round_step(self.seconds() as f64 / 10.0).max(1.0);
        let mut t = 0.0;
        while t <= self.seconds() as f64 + 1e-9 {
            let x = time.at(t);
            for (top, bottom) in [(THROUGHPUT_TOP, THROUGHPUT_BOTTOM), (LATENCY_TOP, LATENCY_BOTTOM)] {
                let _ = writeln!(
                    out,
                    r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{bottom}" stroke="#e5e5e5"/>"##
                );
            }
            let _ = writeln!(
                out,
                r#"<text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
                LATENCY_BOTTOM + 16.0,
                seconds_label(t)
            );
            t += step;
        }
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle">seconds since the storm's start</text>"#,
            (PLOT_LEFT + PLOT_RIGHT) / 2.0,
            LATENCY_BOTTOM + 36.0
        );

        // Throughput: linear from 0.
        for &v in &throughput_ticks {
            let y = throughput.at(v);
            tick_y(&mut out, y, &count_label(v));
        }
        y_title(&mut out, (THROUGHPUT_TOP + THROUGHPUT_BOTTOM) / 2.0, "answers / s");
        let points: Vec<(f64, f64)> = self
            .throughput_per_second
            .iter()
            .enumerate()
            .map(|(i, &v)| (self.bucket_x(i), throughput.at(v as f64)))
            .collect();
        polyline(&mut out, "throughput", THROUGHPUT_COLOR, &points);
        markers(&mut out, "throughput", THROUGHPUT_COLOR, &points);
        frame(&mut out, THROUGHPUT_TOP, THROUGHPUT_BOTTOM);

        // Latency: log scale, p50 and max; a second without an answered probe breaks the line.
        y_title(&mut out, (LATENCY_TOP + LATENCY_BOTTOM) / 2.0, "probe latency (log)");
        match &latency {
            Some((scale, ticks)) => {
                for &v in ticks {
                    tick_y(&mut out, scale.at(v), &ms_label(v));
                }
                for (class, color, series) in [
                    ("probe-p50", P50_COLOR, &self.p50_ms_per_second),
                    ("probe-max", MAX_COLOR, &self.max_ms_per_second),
                ] {
                    let at =
                        |i: usize, ms: u64| (self.bucket_x(i), scale.at(ms.max(LATENCY_FLOOR_MS) as f64));
                    let mut run = Vec::new();
                    for (i, ms) in series.iter().enumerate() {
                        match ms {
                            Some(ms) => run.push(at(i, *ms)),
                            None => polyline(&mut out, class, color, &std::mem::take(&mut run)),
                        }
                    }
                    polyline(&mut out, class, color, &run);
                    let all: Vec<(f64, f64)> =
                        series.iter().enumerate().filter_map(|(i, ms)| Some(at(i, (*ms)?))).collect();
                    markers(&mut out, class, color, &all);
                }
            }
            None => {
                let _ = writeln!(
                    out,
                    r#"<text x="{}" y="{}" text-anchor="middle" fill="{SYNCED_COLOR}">no probe answered (run with --probes)</text>"#,
                    (PLOT_LEFT + PLOT_RIGHT) / 2.0,
                    (LATENCY_TOP + LATENCY_BOTTOM) / 2.0
                );
            }
        }
        frame(&mut out, LATENCY_TOP, LATENCY_BOTTOM);

        if let Some(ms) = self.synced_after_ms {
            let x = time.at(ms as f64 / 1000.0);
            let _ = writeln!(
                out,
                r#"<line class="synced" x1="{x:.1}" y1="{THROUGHPUT_TOP}" x2="{x:.1}" y2="{LATENCY_BOTTOM}" stroke="{SYNCED_COLOR}" stroke-dasharray="5,4"/>"#
            );
        }
        out.push_str("</svg>\n");
        out
    }

    fn legend(&self, out: &mut String) {
        let mut entries = vec![
            (THROUGHPUT_COLOR, "", "answers per second"),
            (P50_COLOR, "", "probe latency p50 per second"),
            (MAX_COLOR, "", "probe latency max per second"),
        ];
        if self.synced_after_ms.is_some() {
            entries.push((SYNCED_COLOR, "5,4", "all clients synced"));
        }
        let mut x = PLOT_LEFT;
        for (color, dash, label) in entries {
            let _ = writeln!(
                out,
                r#"<line x1="{x}" y1="66" x2="{}" y2="66" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/>"#,
                x + 24.0
            );
            let _ = writeln!(out, r#"<text x="{}" y="70">{label}</text>"#, x + 30.0);
            x += 40.0 + 6.5 * label.len() as f64;
        }
    }
}

/// A map from values to px along one axis, linear or logarithmic.
#[derive(Debug, Clone, Copy)]
struct Scale {
    lo: f64,
    hi: f64,
    px_lo: f64,
    px_hi: f64,
    log: bool,
}

impl Scale {
    fn linear(lo: f64, hi: f64, px_lo: f64, px_hi: f64) -> Scale {
        Scale { lo, hi, px_lo, px_hi, log: false }
    }

    fn log(lo: f64, hi: f64, px_lo: f64, px_hi: f64) -> Scale {
        Scale { lo: lo.log10(), hi: hi.log10(), px_lo, px_hi, log: true }
    }

    fn at(&self, v: f64) -> f64 {
        let v = if self.log { v.log10() } else { v };
        self.px_lo + (v - self.lo) / (self.hi - self.lo) * (self.px_hi - self.px_lo)
    }
}

/// The smallest of 1, 2 or 5 times a power of ten that is at least `raw` (`raw` > 0).
fn round_step(raw: f64) -> f64 {
    let power = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|&s| s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * power)
}

fn polyline(out: &mut String, class: &str, color: &str, points: &[(f64, f64)]) {
    if points.len() < 2 {
        return;
    }
    let points: Vec<String> = points.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    let _ = writeln!(
        out,
        r#"<polyline class="{class}" points="{}" fill="none" stroke="{color}" stroke-width="2" stroke-linejoin="round"/>"#,
        points.join(" ")
    );
}

fn markers(out: &mut String, class: &str, color: &str, points: &[(f64, f64)]) {
    for (x, y) in points {
        let _ = writeln!(out, r#"<circle class="{class}" cx="{x:.1}" cy="{y:.1}" r="2.5" fill="{color}"/>"#);
    }
}

fn frame(out: &mut String, top: f64, bottom: f64) {
    let _ = writeln!(
        out,
        r#"<rect x="{PLOT_LEFT}" y="{top}" width="{}" height="{}" fill="none" stroke="black"/>"#,
        PLOT_RIGHT - PLOT_LEFT,
        bottom - top
    );
}

fn tick_y(out: &mut String, y: f64, label: &str) {
    let _ = writeln!(
        out,
        r##"<line x1="{PLOT_LEFT}" y1="{y:.1}" x2="{PLOT_RIGHT}" y2="{y:.1}" stroke="#e5e5e5"/>"##
    );
    let _ = writeln!(
        out,
        r#"<line x1="{}" y1="{y:.1}" x2="{PLOT_LEFT}" y2="{y:.1}" stroke="black"/>"#,
        PLOT_LEFT - 5.0
    );
    let _ =
        writeln!(out, r#"<text x="{}" y="{:.1}" text-anchor="end">{label}</text>"#, PLOT_LEFT - 8.0, y + 4.0);
}

fn y_title(out: &mut String, y: f64, label: &str) {
    let _ = writeln!(
        out,
        r#"<text transform="translate(22 {y}) rotate(-90)" text-anchor="middle">{label}</text>"#
    );
}

/// `1500` as `1.5k`, `2000000` as `2M`.
pub(crate) fn count_label(v: f64) -> String {
    let (v, unit) = if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    format!("{}{unit}", trim(v))
}

/// A latency tick: `100 ms`, `1 s`.
fn ms_label(ms: f64) -> String {
    if ms >= 1000.0 {
        seconds_label(ms / 1000.0)
    } else {
        format!("{} ms", trim(ms))
    }
}

fn seconds_label(s: f64) -> String {
    format!("{} s", trim(s))
}

/// At most one decimal, none when it is 0.
fn trim(v: f64) -> String {
    let text = format!("{v:.1}");
    text.strip_suffix(".0").map(str::to_owned).unwrap_or(text)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart() -> Chart {
        Chart {
            title: "storm <1> & co".into(),
            subtitle: "ws://x/?a=1&b=2".into(),
            throughput_per_second: vec![0, 50, 100, 25],
            p50_ms_per_second: vec![Some(5), None, Some(20), Some(0)],
            max_ms_per_second: vec![Some(10), Some(400), Some(30), Some(2)],
            synced_after_ms: Some(3500),
        }
    }

    /// The `(x, y)` of every point of the polylines of `class`, line by line.
    fn lines(doc: &roxmltree::Document, class: &str) -> Vec<Vec<(f64, f64)>> {
        doc.descendants()
            .filter(|n| n.has_tag_name("polyline") && n.attribute("class") == Some(class))
            .map(|n| {
                let points = n.attribute("points").expect("points");
                points
                    .split(' ')
                    .map(|p| {
                        let (x, y) = p.split_once(',').expect("x,y");
                        (x.parse().expect("x"), y.parse().expect("y"))
                    })
                    .collect()
            })
            .collect()
    }

    fn circles(doc: &roxmltree::Document, class: &str) -> Vec<(f64, f64)> {
        let number =
            |n: roxmltree::Node, a: &str| -> f64 { n.attribute(a).expect(a).parse().expect("number") };
        doc.descendants()
            .filter(|n| n.has_tag_name("circle") && n.attribute("class") == Some(class))
            .map(|n| (number(n, "cx"), number(n, "cy")))
            .collect()
    }

    fn close(got: &[(f64, f64)], want: &[(f64, f64)]) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert!((g.0 - w.0).abs() < 0.06 && (g.1 - w.1).abs() < 0.06, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn the_svg_parses_and_carries_its_escaped_title() {
        let svg = chart().svg();
        let doc = roxmltree::Document::parse(&svg).expect("well-formed XML");
        assert!(doc.root_element().has_tag_name(("http://www.w3.org/2000/svg", "svg")));
        let texts: Vec<&str> = doc.descendants().filter_map(|n| n.text()).collect();
        assert!(texts.contains(&"storm <1> & co"), "{texts:?}");
        assert!(texts.contains(&"ws://x/?a=1&b=2"));
        for label in
            ["answers / s", "probe latency (log)", "seconds since the storm's start", "0", "100", "1 s"]
        {
            assert!(texts.contains(&label), "no {label:?} in {texts:?}");
        }
        assert_eq!(doc.descendants().filter(|n| n.attribute("class") == Some("synced")).count(), 1);
    }

    #[test]
    fn throughput_points_map_seconds_and_counts_to_the_plot() {
        let chart = chart();
        let svg = chart.svg();
        let doc = roxmltree::Document::parse(&svg).expect("well-formed XML");
        // Four seconds across the plot, each point in the middle of its second; 0 to 100
        // answers/s (the axis's top, a round 100) from the bottom to the top.
        let second = (PLOT_RIGHT - PLOT_LEFT) / 4.0;
        let x = |i: f64| PLOT_LEFT + (i + 0.5) * second;
        let height = THROUGHPUT_BOTTOM - THROUGHPUT_TOP;
        let want = [
            (x(0.0), THROUGHPUT_BOTTOM),
            (x(1.0), THROUGHPUT_BOTTOM - height / 2.0),
            (x(2.0), THROUGHPUT_TOP),
            (x(3.0), THROUGHPUT_BOTTOM - height / 4.0),
        ];
        let got = lines(&doc, "throughput");
        assert_eq!(got.len(), 1);
        close(&got[0], &want);
        close(&circles(&doc, "throughput"), &want);
    }

    #[test]
    fn latency_points_map_to_a_log_axis_and_gaps_break_the_line() {
        let chart = chart();
        let svg = chart.svg();
        let doc = roxmltree::Document::parse(&svg).expect("well-formed XML");
        // Latencies 0…400 ms: the axis spans the decades 1 ms to 1 s, a third of the height
        // each; 0 ms is drawn at the 1 ms floor.
        let second = (PLOT_RIGHT - PLOT_LEFT) / 4.0;
        let x = |i: f64| PLOT_LEFT + (i + 0.5) * second;
        let decade = (LATENCY_BOTTOM - LATENCY_TOP) / 3.0;
        let y = |ms: f64| LATENCY_BOTTOM - ms.log10() * decade;
        let max = [(x(0.0), y(10.0)), (x(1.0), y(400.0)), (x(2.0), y(30.0)), (x(3.0), y(2.0))];
        let got = lines(&doc, "probe-max");
        assert_eq!(got.len(), 1);
        close(&got[0], &max);
        close(&circles(&doc, "probe-max"), &max);
        assert!((y(10.0) - (LATENCY_BOTTOM - decade)).abs() < 1e-9);
        // p50 has no answer in second 1: one point before the gap (a marker only) and a line
        // of two after it.
        let p50 = [(x(0.0), y(5.0)), (x(2.0), y(20.0)), (x(3.0), LATENCY_BOTTOM)];
        let got = lines(&doc, "probe-p50");
        assert_eq!(got.len(), 1);
        close(&got[0], &p50[1..]);
        close(&circles(&doc, "probe-p50"), &p50);
    }

    #[test]
    fn a_chart_without_probes_says_so_and_a_long_storm_gets_round_ticks() {
        let chart = Chart {
            throughput_per_second: vec![44_500, 70_100, 73_700, 98_300, 225_000, 489_000],
            ..Chart::default()
        };
        let svg = chart.svg();
        let doc = roxmltree::Document::parse(&svg).expect("well-formed XML");
        let texts: Vec<&str> = doc.descendants().filter_map(|n| n.text()).collect();
        assert!(texts.iter().any(|t| t.starts_with("no probe answered")));
        // 489k answers/s: steps of 200k up to 600k.
        for label in ["0", "200k", "400k", "600k"] {
            assert!(texts.contains(&label), "no {label:?} in {texts:?}");
        }
        assert!(lines(&doc, "probe-p50").is_empty() && circles(&doc, "probe-max").is_empty());
        let top = lines(&doc, "throughput")[0].iter().map(|p| p.1).fold(f64::MAX, f64::min);
        assert!(top > THROUGHPUT_TOP, "489k stays below the 600k top");
    }

    #[test]
    fn steps_are_one_two_or_five_times_a_power_of_ten() {
        let steps: Vec<f64> =
            [0.3, 1.0, 1.5, 2.5, 7.0, 12.0, 122_250.0].into_iter().map(round_step).collect();
        assert_eq!(steps, [0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 200_000.0]);
        assert_eq!(
            (count_label(1500.0), count_label(2e6), ms_label(100.0), ms_label(1e4)),
            ("1.5k".to_owned(), "2M".to_owned(), "100 ms".to_owned(), "10 s".to_owned())
        );
    }
}
