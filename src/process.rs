//! The process's own memory, as the kernel counts it (`/proc/self/status`): what an
//! operator's container limit is checked against, reported by `replay` and exported as a
//! metric. Linux only; elsewhere the figures are absent.

/// Resident set size now (`VmRSS`), in bytes.
pub fn rss_bytes() -> Option<u64> {
    status_kib("VmRSS:").map(|k| k * 1024)
}

/// Peak resident set size (`VmHWM`), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    status_kib("VmHWM:").map(|k| k * 1024)
}

/// CPU time (user + system) of process `pid` (`"self"` for this one, all its threads;
/// `"thread-self"` for the calling thread alone), in seconds, from `/proc/<pid>/stat` (in `USER_HZ`, 100 per second on Linux): for the
/// benchmarks that explain a rate by where the CPU went.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu(&stat)
}

fn parse_cpu(stat: &str) -> Option<f64> {
    // fields after the command name (which may hold spaces): state is field 3, utime 14
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_kib(&status, field)
}

fn parse_kib(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status() {
        let s = "Name:\tx\nVmHWM:\t   15360 kB\nVmRSS:\t    9000 kB\n";
        assert_eq!(parse_kib(s, "VmHWM:"), Some(15360));
        assert_eq!(parse_kib(s, "VmRSS:"), Some(9000));
        assert_eq!(parse_kib(s, "VmSwap:"), None);
    }

    #[test]
    fn parses_proc_stat() {
        let s = "4242 (a b) c) S 1 4242 4242 0 -1 4194560 500 0 0 0 1234 56 0 0 20 0 9 0";
        assert_eq!(parse_cpu(s), Some(12.90));
        assert!(cpu_seconds("self").is_some_and(|c| c >= 0.0));
        // a busy thread's own CPU time grows (10 ms ticks)
        let t0 = cpu_seconds("thread-self").unwrap();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed().as_millis() < 60 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        assert!(cpu_seconds("thread-self").unwrap() > t0);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn reads_own_memory() {
        let (rss, peak) = (rss_bytes().unwrap_or(0), peak_rss_bytes().unwrap_or(0));
        assert!(rss > 0 && peak >= rss, "rss {rss} peak {peak}");
    }
}
