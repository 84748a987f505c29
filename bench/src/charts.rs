//! SVG charts of the report, drawn with plotters' SVG backend (text is emitted as SVG `<text>`,
//! so no font rendering is compiled in).
//!
//! One bar chart per workload (bar = median, whisker = min to max over the runs), two charts
//! per scaling sweep (the rate and the peak memory per task against concurrency, log-log: tasks
//! waiting on timers, tasks holding TCP connections), and two grouped bar charts of the stats
//! pipeline (user fetches/s and CPU per user fetch, by API latency).

use std::collections::BTreeMap;
use std::error::Error;
use std::path::Path;

use evergreen_bench::Summary;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::Spec;

type Points = BTreeMap<(String, String), (Summary, Option<Summary>)>;

/// A stable color per runtime, the same in every chart.
fn color(rt: &str) -> RGBColor {
    match rt {
        "evergreen" => RGBColor(46, 139, 87),
        "evergreen-2hubs" => RGBColor(120, 190, 120),
        "tokio-ct" => RGBColor(70, 110, 200),
        "tokio-mt2" => RGBColor(20, 40, 130),
        "may-1" => RGBColor(230, 150, 40),
        "may-2" => RGBColor(170, 80, 10),
        "gevent" => RGBColor(150, 60, 160),
        _ => RGBColor(120, 120, 120),
    }
}

/// Draws every chart into `dir`.
pub fn draw_all(
    dir: &Path,
    specs: &[Spec],
    points: &Points,
    scaling: &[u64],
    pipeline: &BTreeMap<(u64, String), (Summary, Summary)>,
) -> Result<(), String> {
    for spec in specs {
        let mut rows: Vec<(String, Summary)> = points
            .iter()
            .filter(|((k, _), _)| k == spec.key)
            .map(|((_, rt), (s, _))| (rt.clone(), *s))
            .collect();
        if rows.is_empty() {
            continue;
        }
        rows.sort_by_key(|(rt, _)| crate::runtime_rank(rt));
        bars(
            &dir.join(format!("{}.svg", spec.key)),
            spec.title,
            spec.unit,
            &rows,
        )
        .map_err(|e| format!("{}.svg: {e}", spec.key))?;
    }
    let series = |prefix: &str, mem: bool| -> Vec<(String, Vec<(f64, f64)>)> {
        let mut by_rt: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for c in scaling {
            for ((k, rt), (s, m)) in points {
                if *k == format!("{prefix}/{c}") {
                    let y = if mem {
                        m.map(|m| m.median)
                    } else {
                        Some(s.median)
                    };
                    if let Some(y) = y.filter(|y| *y > 0.0) {
                        by_rt.entry(rt.clone()).or_default().push((*c as f64, y));
                    }
                }
            }
        }
        let mut v: Vec<_> = by_rt.into_iter().collect();
        v.sort_by_key(|(rt, _)| crate::runtime_rank(rt));
        v
    };
    for (prefix, title, unit, mem_title) in [
        (
            "scaling",
            "Scaling: timers fired per second",
            "timers/s",
            "Scaling: peak memory per task parked on a timer",
        ),
        (
            "scaling_conn",
            "Scaling: echo round trips per second, a task per connection",
            "round trips/s",
            "Scaling: peak memory per task holding a TCP connection",
        ),
    ] {
        let rate = series(prefix, false);
        if rate.is_empty() {
            continue;
        }
        lines(&dir.join(format!("{prefix}.svg")), title, unit, &rate)
            .map_err(|e| format!("{prefix}.svg: {e}"))?;
        lines(
            &dir.join(format!("{prefix}_memory.svg")),
            mem_title,
            "bytes per task",
            &series(prefix, true),
        )
        .map_err(|e| format!("{prefix}_memory.svg: {e}"))?;
    }
    if !pipeline.is_empty() {
        let groups = |cpu: bool| -> Vec<(String, Vec<(String, Summary)>)> {
            let mut lats: Vec<u64> = pipeline.keys().map(|(l, _)| *l).collect();
            lats.dedup();
            lats.into_iter()
                .map(|lat| {
                    let mut rows: Vec<(String, Summary)> = pipeline
                        .iter()
                        .filter(|((l, _), _)| *l == lat)
                        .map(|((_, rt), (r, c))| (rt.clone(), if cpu { *c } else { *r }))
                        .collect();
                    rows.sort_by_key(|(rt, _)| crate::runtime_rank(rt));
                    (format!("API latency {lat} ms"), rows)
                })
                .collect()
        };
        grouped_bars(
            &dir.join("pipeline.svg"),
            "Stats pipeline: user fetches per second",
            "user fetches/s",
            &groups(false),
        )
        .map_err(|e| format!("pipeline.svg: {e}"))?;
        grouped_bars(
            &dir.join("pipeline_cpu.svg"),
            "Stats pipeline: CPU time per user fetch",
            "µs per user fetch",
            &groups(true),
        )
        .map_err(|e| format!("pipeline_cpu.svg: {e}"))?;
    }
    Ok(())
}

/// A white SVG canvas 760 pixels wide at `path`.
fn canvas(path: &Path, height: u32) -> Result<DrawingArea<SVGBackend<'_>, Shift>, Box<dyn Error>> {
    let root = SVGBackend::new(path, (760, height)).into_drawing_area();
    root.fill(&WHITE)?;
    Ok(root)
}

/// The frame every chart shares: `caption`, margins and label areas.
fn frame<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    caption: &str,
) -> ChartBuilder<'a, 'b, SVGBackend<'b>> {
    let mut b = ChartBuilder::on(root);
    b.caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70);
    b
}

/// The legend every chart with one shares, at `position`.
fn legend<'a, 'b: 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'b>, CT>,
    position: SeriesLabelPosition,
) -> Result<(), Box<dyn Error>> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn bars(
    path: &Path,
    title: &str,
    unit: &str,
    rows: &[(String, Summary)],
) -> Result<(), Box<dyn std::error::Error>> {
    let root = canvas(path, 400)?;
    let top = rows.iter().map(|(_, s)| s.max).fold(0.0, f64::max) * 1.1;
    let n = rows.len();
    let names: Vec<String> = rows.iter().map(|(rt, _)| rt.clone()).collect();
    let mut chart = frame(
        &root,
        &format!("{title} ({unit}; bar = median, whisker = min..max)"),
    )
    .build_cartesian_2d((0..n).into_segmented(), 0f64..top.max(1e-9))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .y_label_formatter(&|y| crate::si(*y))
        .y_desc(unit)
        .draw()?;
    chart.draw_series(rows.iter().enumerate().map(|(i, (rt, s))| {
        let mut bar = Rectangle::new(
            [
                (SegmentValue::Exact(i), 0.0),
                (SegmentValue::Exact(i + 1), s.median),
            ],
            color(rt).filled(),
        );
        bar.set_margin(0, 0, 14, 14);
        bar
    }))?;
    chart.draw_series(rows.iter().enumerate().map(|(i, (_, s))| {
        ErrorBar::new_vertical(
            SegmentValue::CenterOf(i),
            s.min,
            s.median,
            s.max,
            BLACK.filled(),
            12,
        )
    }))?;
    root.present()?;
    Ok(())
}

fn lines(
    path: &Path,
    title: &str,
    unit: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<(), Box<dyn std::error::Error>> {
    let root = canvas(path, 440)?;
    let all = series.iter().flat_map(|(_, v)| v.iter());
    let (mut x1, mut y0, mut y1) = (1.0f64, f64::MAX, 0.0f64);
    for (x, y) in all {
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    if y0 > y1 {
        (y0, y1) = (1.0, 10.0);
    }
    let mut chart = frame(&root, title).build_cartesian_2d(
        (1f64..x1 * 1.5).log_scale(),
        (y0 / 1.5..y1 * 1.5).log_scale(),
    )?;
    chart
        .configure_mesh()
        .x_desc("concurrent tasks")
        .y_desc(unit)
        .x_label_formatter(&|x| crate::si(*x))
        .y_label_formatter(&|y| crate::si(*y))
        .draw()?;
    for (rt, pts) in series {
        let c = color(rt);
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?
            .label(rt.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, c.filled())))?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    root.present()?;
    Ok(())
}

/// Bars grouped by `groups` (one bar per runtime in each group, colored by runtime, whisker =
/// min..max), with a legend.
fn grouped_bars(
    path: &Path,
    title: &str,
    unit: &str,
    groups: &[(String, Vec<(String, Summary)>)],
) -> Result<(), Box<dyn std::error::Error>> {
    let root = canvas(path, 420)?;
    let top = groups
        .iter()
        .flat_map(|(_, rows)| rows.iter().map(|(_, s)| s.max))
        .fold(0.0, f64::max)
        * 1.25;
    let width = groups.iter().map(|(_, r)| r.len()).max().unwrap_or(1) as f64 + 1.0;
    let n = groups.len() as f64 * width;
    let names: Vec<String> = groups.iter().map(|(g, _)| g.clone()).collect();
    let mut chart = frame(&root, &format!("{title} (median, whisker = min..max)"))
        .build_cartesian_2d(0f64..n, 0f64..top.max(1e-9))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let g = (x / width).floor();
            let centre = g * width + (width - 1.0) / 2.0 + 0.5;
            if (x - centre).abs() < width / 4.0 {
                names.get(g as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| crate::si(*y))
        .y_desc(unit)
        .draw()?;
    let mut seen: Vec<String> = Vec::new();
    for (g, (_, rows)) in groups.iter().enumerate() {
        for (i, (rt, s)) in rows.iter().enumerate() {
            let x0 = g as f64 * width + i as f64 + 0.5;
            let c = color(rt);
            let drawn = chart.draw_series(std::iter::once(Rectangle::new(
                [(x0 + 0.08, 0.0), (x0 + 0.92, s.median)],
                c.filled(),
            )))?;
            if !seen.contains(rt) {
                seen.push(rt.clone());
                drawn.label(rt.as_str()).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], c.filled())
                });
            }
            chart.draw_series(std::iter::once(ErrorBar::new_vertical(
                x0 + 0.5,
                s.min,
                s.median,
                s.max,
                BLACK.filled(),
                10,
            )))?;
        }
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present()?;
    Ok(())
}
