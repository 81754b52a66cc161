//! The server's memory, threads and CPU time, from `/proc`.

use std::io;

/// What the server's process looked like, from /proc.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcSample {
    /// Resident memory, bytes.
    pub rss: u64,
    /// Threads.
    pub threads: u64,
    /// User + system CPU time, seconds.
    pub cpu_secs: f64,
}

/// Reads `/proc/PID/status` and `/proc/PID/stat`.
pub fn sample_process(pid: i32) -> io::Result<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| io::Error::other("bad /proc stat"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the name.
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ProcSample {
        rss: field("VmRSS:") * 1024,
        threads: field("Threads:"),
        cpu_secs: (ticks(11) + ticks(12)) as f64 / hz,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_process() {
        let s = sample_process(std::process::id() as i32).expect("/proc");
        assert!(s.rss > 0 && s.threads >= 1);
    }
}
