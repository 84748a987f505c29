//! Shared helpers for the peer-comparison benchmarks of the `evergreen-bench` package.
//!
//! The package exists so that the heavy peer libraries (actix, ractor, kameo, xtra, reqwest,
//! ureq, mysql_async, ...) are compiled only by `cargo bench --workspace`, never by the
//! README's test command (`cargo test`, which builds the workspace's default members).
//!
//! Method shared by every comparison here: several runs per point, runs interleaved across
//! libraries so that machine drift cancels, medians quoted, and the CPU named in the report.

/// Summary of repeated measurements of one point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Median of the samples.
    pub median: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
    /// Number of samples.
    pub runs: usize,
}

impl Summary {
    /// Summarises `samples`.
    ///
    /// # Panics
    /// If `samples` is empty.
    pub fn of(samples: &[f64]) -> Summary {
        assert!(!samples.is_empty(), "summary of no samples");
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let mid = s.len() / 2;
        let median = if s.len() % 2 == 1 {
            s[mid]
        } else {
            (s[mid - 1] + s[mid]) / 2.0
        };
        Summary {
            median,
            min: s[0],
            max: s[s.len() - 1],
            runs: s.len(),
        }
    }

    /// Spread of the samples relative to the median, `(max - min) / median`; a point whose
    /// spread is wide should not be trusted.
    pub fn spread(&self) -> f64 {
        if self.median == 0.0 {
            0.0
        } else {
            (self.max - self.min) / self.median
        }
    }
}

#[path = "../../benches/common/cpu.rs"]
mod cpu;
pub use cpu::cpu_model;

/// Peak resident set size of this process in KiB (`VmHWM` in `/proc/self/status`), if known.
pub fn peak_rss_kib() -> Option<u64> {
    status_field_kib("VmHWM:")
}

/// Current resident set size of this process in KiB (`VmRSS`), if known.
pub fn rss_kib() -> Option<u64> {
    status_field_kib("VmRSS:")
}

/// One timed run of a load of many tasks: its time and the peak memory it added.
pub struct LoadRun {
    /// The timed part of the run.
    pub elapsed: std::time::Duration,
    /// Peak resident set growth during the run, in bytes: `VmHWM` at the end minus `VmRSS`
    /// before the load started.
    pub peak_growth: u64,
}

impl LoadRun {
    /// A run that took `elapsed`, its peak growth over `before_kib` (an earlier [`rss_kib`])
    /// read now.
    pub fn new(elapsed: std::time::Duration, before_kib: u64) -> LoadRun {
        LoadRun {
            elapsed,
            peak_growth: peak_rss_kib().unwrap_or(0).saturating_sub(before_kib) * 1024,
        }
    }
}

fn status_field_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// User + system CPU time of this process so far, every thread included (`/proc/self/stat`,
/// in clock ticks of 10 ms); zero where that file cannot be read.
pub fn process_cpu() -> std::time::Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // utime and stime are fields 14 and 15 (1-based); `rest` starts at field 3 (the state,
    // not numeric, filtered out), so they are at indices 10 and 11 of the numbers.
    let ticks = f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0);
    std::time::Duration::from_millis(ticks * 10)
}

/// True when cargo runs a bench target as a benchmark (`cargo bench` passes `--bench`) and
/// [`QUICK_ENV`] is not set; false when it runs it as a test (`cargo test --benches`) or in
/// the report's quick mode, where targets should do a quick smoke run and write no file.
pub fn bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench") && std::env::var_os(QUICK_ENV).is_none()
}

/// Environment variable set by the report binary (`evergreen-bench quick`) when it runs the
/// bench targets: they then use their small smoke sizes and write no Markdown file.
pub const QUICK_ENV: &str = "EVERGREEN_BENCH_QUICK";

/// Environment variable naming a file to which bench targets append their samples as JSON
/// lines (see [`record`]); the report binary (`evergreen-bench all`) sets it and folds the
/// lines into `benches/RESULTS.md`.
pub const RESULTS_ENV: &str = "EVERGREEN_RESULTS_JSON";

/// Appends one point's samples to the file named by [`RESULTS_ENV`], if it is set, as one
/// JSON line: `{"workload", "runtime", "unit", "higher_is_better", "samples"}`. Nothing
/// happens when the variable is unset. A write failure is reported on stderr, not fatal: the
/// bench's own report still stands.
pub fn record(workload: &str, runtime: &str, unit: &str, higher_is_better: bool, samples: &[f64]) {
    use std::io::Write;
    let Some(path) = std::env::var_os(RESULTS_ENV) else {
        return;
    };
    let line = serde_json::json!({
        "workload": workload,
        "runtime": runtime,
        "unit": unit,
        "higher_is_better": higher_is_better,
        "samples": samples,
    });
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = written {
        eprintln!("{RESULTS_ENV}={}: {e}", path.to_string_lossy());
    }
}

/// Replaces the section `name` of the Markdown file at `path` (the text between
/// `<!-- name -->` and `<!-- /name -->`) with `text`, appending the section if the file lacks
/// it, so that several bench targets can each keep their own table in one report.
pub fn write_section(path: &str, name: &str, text: &str) -> std::io::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let (open, close) = (format!("<!-- {name} -->"), format!("<!-- /{name} -->"));
    let block = format!("{open}\n{}\n{close}", text.trim_end());
    let new = match (old.find(&open), old.find(&close)) {
        (Some(a), Some(b)) if a < b => format!("{}{block}{}", &old[..a], &old[b + close.len()..]),
        _ => format!(
            "{}{}{block}\n",
            old,
            if old.is_empty() || old.ends_with("\n\n") {
                ""
            } else {
                "\n"
            }
        ),
    };
    std::fs::write(path, new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_odd_and_even_counts() {
        let s = Summary::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max, s.runs), (2.0, 1.0, 3.0, 3));
        let s = Summary::of(&[4.0, 1.0, 2.0, 3.0]);
        assert_eq!(s.median, 2.5);
        assert!((s.spread() - 1.2).abs() < 1e-12);
    }

    #[test]
    fn sections_are_replaced_in_place() {
        let path = std::env::temp_dir().join(format!("evg-section-{}.md", std::process::id()));
        let p = path.to_str().unwrap();
        std::fs::write(p, "# Report\n\nintro\n").unwrap();
        write_section(p, "a", "first").unwrap();
        write_section(p, "b", "second").unwrap();
        write_section(p, "a", "third").unwrap();
        let s = std::fs::read_to_string(p).unwrap();
        std::fs::remove_file(p).unwrap();
        assert_eq!(
            s,
            "# Report\n\nintro\n\n<!-- a -->\nthird\n<!-- /a -->\n\n<!-- b -->\nsecond\n<!-- /b -->\n"
        );
    }

    #[test]
    fn rss_is_readable_on_linux() {
        // The current size first: the peak read after it cannot be smaller, even if the
        // process grew in between (tests run on parallel threads).
        let now = rss_kib().expect("VmRSS");
        let peak = peak_rss_kib().expect("VmHWM");
        assert!(peak >= now && now > 0);
    }
}
