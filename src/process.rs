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
    #[cfg(target_os = "linux")]
    fn reads_own_memory() {
        let (rss, peak) = (rss_bytes().unwrap_or(0), peak_rss_bytes().unwrap_or(0));
        assert!(rss > 0 && peak >= rss, "rss {rss} peak {peak}");
    }
}
