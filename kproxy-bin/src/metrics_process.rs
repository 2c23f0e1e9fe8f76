//! The standard `process_*` families (as Prometheus' Go client exports
//! them) and `kubernetes_build_info`, read from `/proc/self` at each
//! scrape, in OpenMetrics text.

use std::fmt::Write as _;
use std::time::SystemTime;

/// Clock ticks per second of `/proc/self/stat`'s CPU times (`USER_HZ`,
/// 100 on every Linux architecture).
const TICKS: f64 = 100.0;

/// A `kB` figure of `/proc/self/status`, in bytes.
fn status_bytes(status: &str, key: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

/// The soft limit named `name` in `/proc/self/limits` (`unlimited` as
/// the largest 64-bit value, as the Go client reports it).
fn limit(limits: &str, name: &str) -> Option<f64> {
    let line = limits.lines().find(|l| l.starts_with(name))?;
    let soft = line[name.len()..].split_whitespace().next()?;
    if soft == "unlimited" {
        Some(u64::MAX as f64)
    } else {
        soft.parse().ok()
    }
}

/// Bytes received and sent by the process's network namespace.
fn network() -> Option<(f64, f64)> {
    let dev = std::fs::read_to_string("/proc/self/net/dev").ok()?;
    let (mut rx, mut tx) = (0.0, 0.0);
    for line in dev.lines().skip(2) {
        let fields: Vec<&str> = line.split(':').nth(1)?.split_whitespace().collect();
        rx += fields.first()?.parse::<f64>().ok()?;
        tx += fields.get(8)?.parse::<f64>().ok()?;
    }
    Some((rx, tx))
}

fn family(out: &mut String, name: &str, kind: &str, help: &str, value: Option<f64>) {
    let Some(value) = value else { return };
    let sample = if kind == "counter" { format!("{name}_total") } else { name.to_string() };
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{sample} {value}\n");
}

/// The process families and the build info, for a process that started
/// at `started`.
pub fn encode(started: SystemTime) -> String {
    let mut out = String::new();
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces), from field 3.
    let after: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| after.get(i).and_then(|v| v.parse::<f64>().ok());
    let cpu = ticks(11).zip(ticks(12)).map(|(user, system)| (user + system) / TICKS);
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as f64).ok();
    let start = started.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).ok();
    let (rx, tx) = network().unzip();
    family(&mut out, "process_cpu_seconds", "counter", "Total user and system CPU time spent in seconds.", cpu);
    family(&mut out, "process_max_fds", "gauge", "Maximum number of open file descriptors.", limit(&limits, "Max open files"));
    family(&mut out, "process_network_receive_bytes", "counter", "Number of bytes received by the process over the network.", rx);
    family(&mut out, "process_network_transmit_bytes", "counter", "Number of bytes sent by the process over the network.", tx);
    family(&mut out, "process_open_fds", "gauge", "Number of open file descriptors.", fds);
    family(&mut out, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", status_bytes(&status, "VmRSS:"));
    family(&mut out, "process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.", start);
    family(&mut out, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", status_bytes(&status, "VmSize:"));
    family(&mut out, "process_virtual_memory_max_bytes", "gauge", "Maximum amount of virtual memory available in bytes.", limit(&limits, "Max address space"));
    // Not a Go program: the async runtime's live tasks stand in for
    // goroutines, so dashboards' "Goroutines" panels show kproxy's
    // concurrency.
    let tasks = tokio::runtime::Handle::try_current().ok().map(|h| h.metrics().num_alive_tasks() as f64);
    family(&mut out, "go_goroutines", "gauge", "Number of goroutines that currently exist (kproxy: live async tasks).", tasks);
    let version = env!("CARGO_PKG_VERSION");
    let (major, minor) = version.split_once('.').map(|(a, b)| (a, b.split('.').next().unwrap_or("0"))).unwrap_or(("0", "0"));
    let _ = write!(
        out,
        "# HELP kubernetes_build_info A metric with a constant '1' value labeled by major, minor, git version, git commit, git tree state, build date, Go version, and compiler from which Kubernetes was built, and platform on which it is running.\n\
         # TYPE kubernetes_build_info gauge\n\
         kubernetes_build_info{{major=\"{major}\",minor=\"{minor}\",git_version=\"v{version}-kproxy\",git_commit=\"\",git_tree_state=\"\",build_date=\"\",go_version=\"\",compiler=\"rustc\",platform=\"{}/{}\"}} 1\n",
        std::env::consts::OS,
        if std::env::consts::ARCH == "x86_64" { "amd64" } else { std::env::consts::ARCH },
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_measured() {
        let text = encode(SystemTime::now());
        let value = |name: &str| -> f64 {
            let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name} missing:\n{text}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        assert!(value("process_resident_memory_bytes") > 1_000_000.0);
        assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        assert!(value("process_cpu_seconds_total") >= 0.0);
        assert!(text.contains("kubernetes_build_info{"), "{text}");
    }
}
