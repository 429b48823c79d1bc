//! CPU time from `/proc`, for benchmarks that charge a path with the CPU it makes the
//! machine spend: its processes, and the softirqs of the devices and the routing it crosses.
//!
//! Two readings. [`machine_busy`] is the whole machine (all of `/proc/stat` but idle), what
//! a node pays, and what neighbours' work pollutes. [`processes`] is the CPU of given
//! processes (all their threads) plus the `ksoftirqd` threads: on a kernel with tick-based
//! accounting (no `CONFIG_IRQ_TIME_ACCOUNTING`) the softirqs of veth and routing are charged
//! to the task they ran in, i.e. the sender's or `ksoftirqd`'s, so this reading covers the
//! path and stays meaningful on a machine others are loading.

use std::time::Duration;

/// `/proc` counts in USER_HZ, which is 100 on every architecture this runs on.
const TICK: Duration = Duration::from_millis(10);

/// Busy CPU time of the whole machine since boot, all cores summed: everything but idle and
/// iowait. `None` where `/proc/stat` cannot be read.
pub fn machine_busy() -> Option<Duration> {
    busy_of(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// Busy time of the `cpu ` line of a `/proc/stat` text: user, nice, system, irq, softirq and
/// steal (guest time is already inside user and nice).
pub fn busy_of(proc_stat: &str) -> Option<Duration> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let [user, nice, system, _idle, _iowait, irq, softirq, steal] = fields.try_into().ok()?;
    ticks(user + nice + system + irq + softirq + steal)
}

/// User plus system time of process `pid` (all its threads, not its reaped children); `None`
/// once it is gone.
pub fn process(pid: u32) -> Option<Duration> {
    process_of(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// utime + stime of a `/proc/<pid>/stat` text (fields 14 and 15; the command name in
/// parentheses may itself hold spaces and parentheses, so fields are counted after the last
/// `)`).
pub fn process_of(stat: &str) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After `)`: state is field 3, so utime (14) is the 12th word and stime (15) the 13th.
    let mut words = rest.split_whitespace().skip(11);
    let utime: u64 = words.next()?.parse().ok()?;
    let stime: u64 = words.next()?.parse().ok()?;
    ticks(utime + stime)
}

/// The `ksoftirqd/N` kernel threads, which run the softirqs no sender ran.
pub fn ksoftirqd_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("ksoftirqd/"))
        })
        .collect()
}

/// CPU time of `pids` plus this process plus every `ksoftirqd` in `softirqd`; processes that
/// are gone count 0.
pub fn processes(pids: &[u32], softirqd: &[u32]) -> Duration {
    pids.iter()
        .chain(softirqd)
        .copied()
        .chain([std::process::id()])
        .filter_map(process)
        .sum()
}

fn ticks(n: u64) -> Option<Duration> {
    u32::try_from(n).ok().map(|t| TICK * t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_time_is_everything_but_idle_and_iowait() {
        let stat = "cpu  100 5 50 9000 40 3 7 1 20 0\ncpu0 50 2 25 4500 20 1 3 0 10 0\n";
        assert_eq!(busy_of(stat), Some(TICK * 166));
        assert_eq!(busy_of("cpu0 1 2 3 4 5 6 7 8\n"), None, "only the sum line");
        assert_eq!(
            busy_of("cpu  1 2 3\n"),
            None,
            "a short line is not guessed at"
        );
        assert!(machine_busy().is_some());
    }

    #[test]
    fn process_time_is_utime_plus_stime_counted_after_the_command_name() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 4 0 5 0 0";
        assert_eq!(process_of(stat), Some(TICK * 10));
        assert_eq!(process_of("42 (x) S 1"), None);
        assert!(process(std::process::id()).is_some());
        assert!(processes(&[u32::MAX], &[]) >= Duration::ZERO);
    }
}
