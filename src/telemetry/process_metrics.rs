//! The process metrics operators expect from any service (the Prometheus client conventions):
//! CPU seconds, resident and virtual memory, open and maximum file descriptors, start time. Read
//! from `/proc/self` at scrape time, on Linux only; elsewhere nothing is exposed.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Registers the collector on the root (unprefixed) registry.
pub(crate) fn register(registry: &mut Registry) {
    registry.register_collector(Box::new(ProcessCollector));
}

#[derive(Debug)]
struct ProcessCollector;

/// One reading of the process's figures; a figure that cannot be read is left out.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct ProcessStats {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<i64>,
    pub virtual_bytes: Option<i64>,
    pub open_fds: Option<i64>,
    pub max_fds: Option<i64>,
    pub start_time_seconds: Option<i64>,
}

/// Linux reports CPU times and start times in clock ticks of `USER_HZ`, 100 on every
/// architecture's user ABI.
const TICKS_PER_SECOND: f64 = 100.0;

impl ProcessStats {
    /// Reads `/proc/self`; all `None` where there is no such thing.
    pub(crate) fn read() -> ProcessStats {
        if !cfg!(target_os = "linux") {
            return ProcessStats::default();
        }
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let status = std::fs::read_to_string("/proc/self/status").ok();
        let limits = std::fs::read_to_string("/proc/self/limits").ok();
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| parse_boot_time(&s));
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|dir| i64::try_from(dir.count()).unwrap_or(i64::MAX));
        let (cpu_seconds, start_ticks) = stat.as_deref().map_or((None, None), parse_stat);
        ProcessStats {
            cpu_seconds,
            resident_bytes: status.as_deref().and_then(|s| status_kib(s, "VmRSS:")),
            virtual_bytes: status.as_deref().and_then(|s| status_kib(s, "VmSize:")),
            open_fds,
            max_fds: limits.as_deref().and_then(parse_max_open_files),
            start_time_seconds: boot_time
                .zip(start_ticks)
                .map(|(boot, ticks)| boot + (ticks as f64 / TICKS_PER_SECOND) as i64),
        }
    }
}

/// CPU seconds (user + system) and the start time in ticks after boot, from `/proc/self/stat`.
/// The command name (field 2) may hold spaces and parentheses, so fields are counted after its
/// last `)`.
fn parse_stat(stat: &str) -> (Option<f64>, Option<u64>) {
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return (None, None);
    };
    // After the name: field 3 (state) is index 0, so field N is index N - 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let cpu = field(14)
        .zip(field(15))
        .map(|(user, system)| (user + system) as f64 / TICKS_PER_SECOND);
    (cpu, field(22))
}

fn status_kib(status: &str, key: &str) -> Option<i64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: i64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    kib.checked_mul(1024)
}

fn parse_boot_time(stat: &str) -> Option<i64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn parse_max_open_files(limits: &str) -> Option<i64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    // "Max open files            1048576              1048576              files"
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    match soft {
        "unlimited" => Some(i64::MAX),
        n => n.parse().ok(),
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = ProcessStats::read();
        if let Some(cpu) = stats.cpu_seconds {
            let counter = ConstCounter::new(cpu);
            let metric = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                counter.metric_type(),
            )?;
            counter.encode(metric)?;
        }
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                stats.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                stats.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                stats.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                stats.max_fds,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                stats.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                let gauge = ConstGauge::new(value);
                let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
                gauge.encode(metric)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 2000 0 0 0 250 130 0 0 20 0 9 0 123456 100000000 3000 18446744073709551615";
        let (cpu, start) = parse_stat(stat);
        assert_eq!(cpu, Some(3.8));
        assert_eq!(start, Some(123_456));
    }

    #[test]
    fn limits_and_status_parse() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        assert_eq!(parse_max_open_files(limits), Some(1024));
        assert_eq!(
            status_kib("Name:\tx\nVmSize:\t  2048 kB\nVmRSS:\t  100 kB\n", "VmRSS:"),
            Some(102_400)
        );
        assert_eq!(
            parse_boot_time("cpu 1 2\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reads_on_linux() {
        let stats = ProcessStats::read();
        assert!(stats.resident_bytes.is_some_and(|b| b > 0));
        assert!(stats.open_fds.is_some_and(|n| n > 0));
        assert!(stats.max_fds.is_some());
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!(
            stats
                .start_time_seconds
                .is_some_and(|t| t <= now + 1 && t > now - 86_400 * 365)
        );
        assert!(stats.cpu_seconds.is_some());
    }

    #[test]
    fn exposition_uses_the_conventional_names() {
        let text = crate::telemetry::metrics::Metrics::new().encode();
        if cfg!(target_os = "linux") {
            for name in [
                "process_cpu_seconds_total ",
                "process_resident_memory_bytes ",
                "process_virtual_memory_bytes ",
                "process_open_fds ",
                "process_max_fds ",
                "process_start_time_seconds ",
            ] {
                assert!(
                    text.contains(&format!("\n{name}")),
                    "missing {name} in\n{text}"
                );
            }
        }
        assert!(!text.contains("broker_process_"));
    }
}
