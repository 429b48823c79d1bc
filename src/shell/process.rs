//! The process metrics (`process_open_fds`, `process_max_fds`, `process_resident_memory_bytes`,
//! `process_cpu_seconds_total`), read from `/proc/self` and the kernel's accounting when
//! `/metrics` or the operator page is asked for, never on a data path. Descriptors are the
//! scaling limit of a director (every session to a busy target may need an upstream socket),
//! so they are on every scrape.
//!
//! Owns reading them. Must not decide anything from them.

use nix::sys::resource::{Resource, UsageWho, getrlimit, getrusage};

use crate::metrics::Metrics;

/// Sets the process families of `m` to what the kernel says now. A source that cannot be
/// read (not Linux, `/proc` not mounted) leaves its family as it was.
pub(crate) fn refresh(m: &Metrics) {
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        m.process_open_fds
            .set(i64::try_from(dir.count()).unwrap_or(i64::MAX));
    }
    if let Ok((soft, _)) = getrlimit(Resource::RLIMIT_NOFILE) {
        m.process_max_fds
            .set(i64::try_from(soft).unwrap_or(i64::MAX));
    }
    if let Some(bytes) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .as_deref()
        .and_then(resident_bytes)
    {
        m.process_resident_memory
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
    if let Ok(usage) = getrusage(UsageWho::RUSAGE_SELF) {
        let seconds =
            |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1_000_000.0;
        let total = seconds(usage.user_time()) + seconds(usage.system_time());
        advance(&m.process_cpu, total);
    }
}

/// `VmRSS` of a `/proc/<pid>/status` text, in bytes.
fn resident_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let kib: u64 = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then(|| kib.saturating_mul(1024))
}

/// Moves a counter that mirrors a kernel total up to `total` (never down: a counter).
fn advance(
    counter: &prometheus_client::metrics::counter::Counter<f64, std::sync::atomic::AtomicU64>,
    total: f64,
) {
    let delta = total - counter.get();
    if delta > 0.0 {
        counter.inc_by(delta);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_bytes_reads_vm_rss_in_kib() {
        let status =
            "Name:\tudp-director\nVmPeak:\t  20000 kB\nVmRSS:\t    8812 kB\nRssAnon:\t 3000 kB\n";
        assert_eq!(resident_bytes(status), Some(8812 * 1024));
        assert_eq!(resident_bytes("Name:\tx\n"), None);
        assert_eq!(resident_bytes("VmRSS:\tlots kB\n"), None);
        assert_eq!(resident_bytes("VmRSS:\t12 pages\n"), None);
    }

    #[test]
    fn the_cpu_counter_follows_the_kernel_total_and_never_goes_down() {
        let m = Metrics::new();
        advance(&m.process_cpu, 1.5);
        advance(&m.process_cpu, 1.25);
        assert_eq!(m.process_cpu.get(), 1.5);
        advance(&m.process_cpu, 2.0);
        assert_eq!(m.process_cpu.get(), 2.0);
    }

    #[test]
    fn refresh_reads_this_process() {
        let m = Metrics::new();
        refresh(&m);
        assert!(
            m.process_open_fds.get() >= 3,
            "stdin, stdout, stderr at least"
        );
        assert!(m.process_max_fds.get() >= m.process_open_fds.get());
        assert!(m.process_resident_memory.get() > 1 << 20, "more than 1 MiB");
        let text = m.encode();
        assert!(text.contains("\nprocess_open_fds "), "{text}");
        assert!(!text.contains("process_open_fds 0\n"), "{text}");
    }
}
