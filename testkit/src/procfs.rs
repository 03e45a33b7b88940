//! A process's memory as `/proc` reports it, for the benchmarks and the memory-bound test.

/// A `kB` field of `/proc/{pid}/status` (e.g. `VmRSS`, `VmHWM`; `pid` may be `self`), in bytes;
/// 0 when the process or the field is gone.
pub fn status_bytes(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

pub fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_048_576.0)
}
