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

/// The CPU model from `/proc/cpuinfo`, for report headers.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string())
}

/// Peak resident set size of this process in KiB (`VmHWM` in `/proc/self/status`), if known.
pub fn peak_rss_kib() -> Option<u64> {
    status_field_kib("VmHWM:")
}

/// Current resident set size of this process in KiB (`VmRSS`), if known.
pub fn rss_kib() -> Option<u64> {
    status_field_kib("VmRSS:")
}

fn status_field_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// True when cargo runs a bench target as a benchmark (`cargo bench` passes `--bench`); false
/// when it runs it as a test (`cargo test --benches`), where targets should do a quick smoke
/// run and write no file.
pub fn bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench")
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
    fn rss_is_readable_on_linux() {
        let peak = peak_rss_kib().expect("VmHWM");
        let now = rss_kib().expect("VmRSS");
        assert!(peak >= now && now > 0);
    }
}
