//! The CPU a report ran on. One file shared by the runtime's bench targets (`benches/common`)
//! and the workspace bench crate (`bench/src/lib.rs` includes it by path), so that every report
//! names the CPU the same way.

/// The CPU model from `/proc/cpuinfo`, for report headers.
pub fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let Some(model) = field("model name") else {
        return "unknown CPU".to_string();
    };
    // A VM may show only a family name ("AMD EPYC"): the family, model and stepping numbers
    // tell the generation apart.
    match (field("cpu family"), field("model"), field("stepping")) {
        (Some(f), Some(m), Some(s)) => format!("{model} (family {f}, model {m}, stepping {s})"),
        _ => model,
    }
}
