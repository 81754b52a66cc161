//! The server's memory, threads and CPU time, from `/proc`: of its whole
//! process tree, so that a `--workers` supervisor counts with its workers.

use std::io;

/// What the server's processes looked like, from /proc.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcSample {
    /// Resident memory, bytes.
    pub rss: u64,
    /// Threads.
    pub threads: u64,
    /// User + system CPU time, seconds (with that of children that have
    /// ended and been waited for).
    pub cpu_secs: f64,
    /// Processes: the server's and its descendants' (a supervisor's
    /// workers).
    pub processes: u64,
}

/// Samples process `pid` and all its descendants, added up.
pub fn sample_process(pid: i32) -> io::Result<ProcSample> {
    let mut total = sample_one(pid)?;
    let mut pending = children(pid);
    while let Some(child) = pending.pop() {
        // A child that ends meanwhile is simply not counted.
        if let Ok(s) = sample_one(child) {
            total.rss += s.rss;
            total.threads += s.threads;
            total.cpu_secs += s.cpu_secs;
            total.processes += 1;
            pending.extend(children(child));
        }
    }
    Ok(total)
}

/// The children of process `pid` (from each process's parent in /proc).
fn children(pid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = &stat[stat.rfind(')')? + 2..];
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// Reads `/proc/PID/status` and `/proc/PID/stat` of one process.
fn sample_one(pid: i32) -> io::Result<ProcSample> {
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
    // Fields 14 to 17 of stat (utime, stime, and the children's cutime,
    // cstime: those waited for, such as a restarted worker) are 11 to 14
    // after the name.
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ProcSample {
        rss: field("VmRSS:") * 1024,
        threads: field("Threads:"),
        cpu_secs: (ticks(11) + ticks(12) + ticks(13) + ticks(14)) as f64 / hz,
        processes: 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_process() {
        let s = sample_process(std::process::id() as i32).expect("/proc");
        assert!(s.rss > 0 && s.threads >= 1 && s.processes >= 1);
    }

    #[test]
    fn counts_the_children_too() {
        let pid = std::process::id() as i32;
        let before = sample_process(pid).expect("/proc");
        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("sleep");
        let with = sample_process(pid).expect("/proc");
        let _ = child.kill();
        let _ = child.wait();
        // Other tests may start and end children of this process too: the
        // sleeping one is counted among them.
        assert!(with.processes >= 2, "{before:?} {with:?}");
    }

    /// CPU time of the calling thread so far.
    fn thread_cpu() -> f64 {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes one timespec through a pointer to a
        // live local.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime: {}", io::Error::last_os_error());
        ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
    }

    /// `--threads N` servers: the CPU time is the whole process's, every
    /// thread's, not the main thread's (which in a test binary is idle), and
    /// the thread count counts every thread.
    #[test]
    fn counts_the_cpu_and_threads_of_every_thread() {
        /// CPU the spinning thread uses: many clock ticks, so that the
        /// sample's tick rounding cannot hide it.
        const BURN: f64 = 0.3;
        let pid = std::process::id() as i32;
        let before = sample_process(pid).expect("/proc");
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let spinner = std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
            let mut x = 0u64;
            while thread_cpu() < BURN {
                assert!(std::time::Instant::now() < deadline, "no CPU for the spinning thread");
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            started_tx.send(thread_cpu()).expect("report");
            // Alive until the sample below is taken.
            let _ = done_rx.recv();
        });
        let burnt = started_rx.recv().expect("the spinning thread's CPU");
        let during = sample_process(pid).expect("/proc");
        let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task").count() as u64;
        done_tx.send(()).expect("release");
        spinner.join().expect("spinner");
        // The samples are in clock ticks (user and system time each rounded
        // down) and may lag the running thread by a scheduler tick: half
        // the spinner's CPU is a bound far from both those losses and from
        // what a sample of the main thread alone (idle here) would show.
        assert!(
            during.cpu_secs - before.cpu_secs >= burnt / 2.0,
            "{burnt} s of CPU on another thread, {} s in the process's sample",
            during.cpu_secs - before.cpu_secs
        );
        // This test's thread, the spinner and the harness's main thread at
        // least; other tests' threads come and go, so the count read from
        // /proc/self/task just after is close but not exact.
        assert!(during.threads >= 3, "{during:?}");
        assert!(during.threads.abs_diff(tasks) <= 16, "{during:?} against {tasks} tasks");
    }
}
