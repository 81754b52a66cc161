//! `--procs N`: N generator processes, each under its own descriptor cap,
//! for connection counts past what one process may open (a million on one
//! box). The parent re-runs the generator binary N times, each with a slice
//! of the work and its own block of loopback source addresses (127.I.0.1
//! up for process I), so that ephemeral ports never run out; it keeps them
//! in step (everyone connected before the main phase starts, everyone done
//! before connections close), samples the server itself, and adds up their
//! reports. SIGINT and SIGTERM are passed on to the processes; on any exit,
//! even the parent's own death, the processes are killed.

use std::io::{self, BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::{LoadError, Mode, Report, sample_process};

/// Connections per loopback source address at most: well inside the
/// 28,232 ephemeral ports of Linux's default range (32768-60999), which
/// each source address has afresh for each server address.
pub const PORTS_PER_SOURCE: usize = 20_000;

/// Generator processes at most: each gets a /16 of 127.0.0.0/8.
pub const MAX_PROCS: usize = 254;

/// Time past `--timeout` for the processes to report before they are
/// killed: their own runs end at `--timeout`, their reports come after.
const REPORT_GRACE: Duration = Duration::from_secs(30);

/// Time for the server to print the last messages before its memory is
/// sampled with every connection up (as a single process does).
const SETTLE: Duration = Duration::from_millis(300);

/// The first source address of process `i` (from 0): 127.(i+1).0.1.
pub fn source_block(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, u8::try_from(i + 1).unwrap_or(u8::MAX), 0, 1)
}

/// Source addresses a process needs for `conns` connections at once (and
/// as many short-lived ones again, which leave their ports in TIME_WAIT).
pub fn sources_needed(conns: usize) -> usize {
    conns.div_ceil(PORTS_PER_SOURCE) + 1
}

/// `total` cut into `n` shares that differ by at most one, larger first.
fn shares(total: u64, n: usize) -> Vec<u64> {
    let n64 = n as u64;
    (0..n64).map(|i| total / n64 + u64::from(i < total % n64)).collect()
}

/// `mode`'s work cut into `n` slices, one per process: the connections and
/// the rates divided, everything else the same.
pub fn split(mode: &Mode, n: usize) -> Result<Vec<Mode>, String> {
    let need = |what: &str, have: u64| {
        if have < n as u64 {
            Err(format!(
                "--procs {n} needs at least {n} {what}, one per process (got {have})"
            ))
        } else {
            Ok(())
        }
    };
    let conns_of = |c: usize| shares(c as u64, n).into_iter().map(|c| c as usize);
    Ok(match mode {
        Mode::Hold { conns, hold } => {
            need("connections", *conns as u64)?;
            conns_of(*conns)
                .map(|conns| Mode::Hold { conns, hold: *hold })
                .collect()
        }
        Mode::Flood {
            conns,
            bytes,
            write_size,
        } => {
            need("connections", *conns as u64)?;
            conns_of(*conns)
                .map(|conns| Mode::Flood {
                    conns,
                    bytes: *bytes,
                    write_size: *write_size,
                })
                .collect()
        }
        Mode::Chat {
            conns,
            rate,
            secs,
            tick,
        } => {
            need("connections", *conns as u64)?;
            need("messages per second", *rate)?;
            conns_of(*conns)
                .zip(shares(*rate, n))
                .map(|(conns, rate)| Mode::Chat {
                    conns,
                    rate,
                    secs: *secs,
                    tick: *tick,
                })
                .collect()
        }
        Mode::Churn { hold, rate, secs } => {
            need("connections per second", *rate)?;
            conns_of(*hold)
                .zip(shares(*rate, n))
                .map(|(hold, rate)| Mode::Churn {
                    hold,
                    rate,
                    secs: *secs,
                })
                .collect()
        }
    })
}

/// How to run the processes.
#[derive(Debug, Clone)]
pub struct ProcsConfig {
    /// The generator binary.
    pub exe: PathBuf,
    /// Each process's arguments (with `--coordinated` and `--json`).
    pub args: Vec<Vec<String>>,
    /// The whole run's mode (for what to sample when).
    pub mode: Mode,
    /// The server's process id, sampled here (the processes do not).
    pub server_pid: Option<i32>,
    /// The run's `--timeout`.
    pub timeout: Duration,
    /// Say on stderr when every process has its connections up.
    pub announce: bool,
}

/// What the processes tell the parent.
enum Event {
    /// A line on a process's stdout.
    Line(usize, String),
    /// A process closed its stdout (it is exiting).
    Eof(usize),
    /// SIGINT or SIGTERM for the parent.
    Signal(i32),
}

/// The processes: killed, by PID, and reaped on any exit.
struct Children {
    children: Vec<Child>,
    stdins: Vec<Option<ChildStdin>>,
}

impl Children {
    /// Passes `signal` on to every process still running.
    fn signal(&mut self, signal: i32) {
        for child in &mut self.children {
            if let Ok(None) = child.try_wait()
                && let Ok(pid) = libc::pid_t::try_from(child.id())
            {
                // SAFETY: kill has no memory effects; `pid` is our own child,
                // not yet reaped (try_wait said so), so it is not reused.
                unsafe { libc::kill(pid, signal) };
            }
        }
    }

    /// Tells every process still listening to go on.
    fn go(&mut self) {
        for stdin in self.stdins.iter_mut() {
            if let Some(pipe) = stdin
                && pipe.write_all(b"go\n").and_then(|()| pipe.flush()).is_err()
            {
                *stdin = None;
            }
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stdins.clear();
        for child in &mut self.children {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// Starts one generator process, which dies with this one.
fn spawn(exe: &PathBuf, args: &[String]) -> io::Result<Child> {
    let parent = std::process::id();
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: between fork and exec only async-signal-safe calls are made
    // (prctl, getppid) and nothing allocates: the error is a raw errno.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent died before prctl: nobody would kill us.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Runs the processes `cfg` describes and returns their reports added up,
/// with the server's samples and the verdict of the whole.
pub fn run(cfg: ProcsConfig) -> Result<Report, LoadError> {
    let n = cfg.args.len();
    let sample = || cfg.server_pid.and_then(|pid| sample_process(pid).ok());
    let server_before = sample();
    let (tx, rx) = mpsc::channel::<Event>();
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])?;
    let signal_handle = signals.handle();
    let signal_tx = tx.clone();
    thread::spawn(move || {
        for signal in signals.forever() {
            if signal_tx.send(Event::Signal(signal)).is_err() {
                break;
            }
        }
    });
    let mut children = Children {
        children: Vec::with_capacity(n),
        stdins: Vec::with_capacity(n),
    };
    for (i, args) in cfg.args.iter().enumerate() {
        let mut child = spawn(&cfg.exe, args)?;
        children.stdins.push(child.stdin.take());
        let stdout = child.stdout.take().ok_or_else(|| io::Error::other("no stdout pipe"))?;
        children.children.push(child);
        let tx = tx.clone();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout);
            let mut line = Vec::new();
            loop {
                line.clear();
                match lines.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line).trim_end().to_string();
                        if tx.send(Event::Line(i, text)).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = tx.send(Event::Eof(i));
        });
    }
    drop(tx);

    let give_up = Instant::now() + cfg.timeout + REPORT_GRACE;
    let mut reached = [vec![false; n], vec![false; n]];
    // Connections each process holds when it is ready.
    let mut held = vec![0usize; n];
    let mut went = [false; 2];
    let mut gone = vec![false; n];
    let mut reports: Vec<Option<Report>> = vec![None; n];
    let mut problems: Vec<String> = Vec::new();
    let mut stopped: Option<String> = None;
    let mut server_after = None;
    let mut cpu_before = None;
    // When each stage went ahead: the main phase ran between the two.
    let mut went_at: [Option<Instant>; 2] = [None, None];
    while gone.iter().any(|g| !g) {
        let event = match rx.recv_timeout(give_up.saturating_duration_since(Instant::now())) {
            Ok(event) => event,
            Err(_) => {
                stopped.get_or_insert_with(|| {
                    format!(
                        "the generator processes did not report within --timeout + {} s",
                        REPORT_GRACE.as_secs()
                    )
                });
                break;
            }
        };
        match event {
            Event::Line(i, line) if line.starts_with("ready") => {
                reached[0][i] = true;
                match line.strip_prefix("ready ").map(str::parse) {
                    Some(Ok(n)) => held[i] = n,
                    _ => problems.push(format!("process {} said {line:?}, not `ready N`", i + 1)),
                }
            }
            Event::Line(i, line) if line == "done" => reached[1][i] = true,
            Event::Line(i, line) => match Report::from_json(&line) {
                Ok(report) => reports[i] = Some(report),
                Err(e) => problems.push(format!("process {} printed {line:?}, not a report: {e}", i + 1)),
            },
            Event::Eof(i) => {
                gone[i] = true;
                children.stdins[i] = None;
                // A process gone before the main phase holds nothing in it.
                if !went[0] {
                    held[i] = 0;
                }
            }
            Event::Signal(signal) => {
                let name = if signal == signal_hook::consts::SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
                stopped.get_or_insert_with(|| format!("interrupted by {name}"));
                children.signal(signal);
                // End of input: processes waiting for a go stop instead.
                children.stdins.clear();
                children.stdins.resize_with(n, || None);
            }
        }
        // A stage goes ahead once every process still running has reached it.
        for stage in 0..2 {
            let all = (0..n).all(|i| reached[stage][i] || gone[i]);
            if went[stage] || !all || (stage == 1 && !went[0]) {
                continue;
            }
            went[stage] = true;
            match (stage, &cfg.mode) {
                (0, Mode::Hold { .. }) => {
                    thread::sleep(SETTLE);
                    server_after = sample();
                }
                (0, Mode::Chat { .. }) => cpu_before = sample(),
                (1, Mode::Chat { .. } | Mode::Flood { .. } | Mode::Churn { .. }) => server_after = sample(),
                _ => {}
            }
            went_at[stage] = Some(Instant::now());
            // Said only when some process is there to go ahead.
            if stage == 0 && cfg.announce && stopped.is_none() && reached[0].iter().any(|&r| r) {
                super::announce(held.iter().sum(), cfg.mode.conns());
            }
            children.go();
        }
    }
    // Reap the processes (killing any that did not finish).
    let children_list = std::mem::take(&mut children.children);
    drop(children);
    for (i, mut child) in children_list.into_iter().enumerate() {
        if let Ok(None) = child.try_wait() {
            let _ = child.kill();
        }
        let status = child.wait()?;
        if reports[i].is_none() {
            problems.push(format!("process {} ended ({status}) without a report", i + 1));
        }
    }
    signal_handle.close();

    let parts: Vec<Report> = reports.iter().flatten().cloned().collect();
    let mut all = Report::merge(&parts);
    if all.mode.is_empty() {
        all.mode = cfg.mode.name().into();
    }
    let missing: usize = reports
        .iter()
        .zip(split(&cfg.mode, n).unwrap_or_default())
        .filter(|(r, _)| r.is_none())
        .map(|(_, slice)| slice.conns())
        .sum();
    all.conns += missing;
    all.fail("generator process failed", missing as u64);
    all.server_before = server_before;
    all.server_after = server_after.or_else(sample);
    if let (Mode::Chat { .. }, Some(before), Some(after), [Some(start), Some(end)]) =
        (&cfg.mode, cpu_before, all.server_after, went_at)
    {
        let cpu = after.cpu_secs - before.cpu_secs;
        if all.messages > 0 {
            all.cpu_us_per_msg = Some(cpu * 1e6 / all.messages as f64);
        }
        let secs = end.duration_since(start).as_secs_f64();
        if secs > 0.0 {
            all.server_cpu_util = Some(cpu / secs);
        }
        all.server_before = cpu_before;
    }
    if let Some(stop) = stopped {
        all.stopped = Some(match all.stopped.take() {
            Some(theirs) => format!("{stop}; {theirs}"),
            None => stop,
        });
    }
    all.judge();
    // A process's own verdict stands even where the sums would hide it.
    for (i, part) in reports.iter().enumerate() {
        if let Some(part) = part
            && !part.ok
            && all.ok
        {
            problems.push(format!(
                "process {}: {}",
                i + 1,
                part.reason.as_deref().unwrap_or("not clean")
            ));
        }
    }
    if !problems.is_empty() {
        all.ok = false;
        if all.mode == "chat" {
            all.kept_up = Some(false);
        }
        let mut reasons: Vec<String> = all.reason.take().into_iter().collect();
        reasons.extend(problems);
        all.reason = Some(reasons.join("; "));
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_is_split_evenly() {
        let slices = split(
            &Mode::Chat {
                conns: 10,
                rate: 7,
                secs: Duration::from_secs(2),
                tick: Duration::from_millis(1),
            },
            3,
        )
        .expect("split");
        let got: Vec<(usize, u64)> = slices
            .iter()
            .map(|m| match m {
                Mode::Chat { conns, rate, .. } => (*conns, *rate),
                _ => unreachable!("chat"),
            })
            .collect();
        assert_eq!(got, vec![(4, 3), (3, 2), (3, 2)]);
        assert!(
            split(
                &Mode::Hold {
                    conns: 2,
                    hold: Duration::ZERO
                },
                3
            )
            .is_err()
        );
        let churn = split(
            &Mode::Churn {
                hold: 0,
                rate: 3,
                secs: Duration::from_secs(1),
            },
            3,
        )
        .expect("churn without held connections");
        assert_eq!(churn.len(), 3);
    }

    #[test]
    fn a_million_connections_never_run_out_of_ports() {
        // 50 processes of 20,000 connections: each has its own block of
        // source addresses, enough of them, disjoint from every other's.
        let per = 1_000_000 / 50;
        let mut seen = std::collections::HashSet::new();
        for i in 0..50 {
            let sources = super::super::sources_from(source_block(i), sources_needed(per));
            assert!(sources.len() * PORTS_PER_SOURCE >= per);
            for s in sources {
                assert!(s.is_loopback());
                assert!(seen.insert(s), "{s} given twice");
            }
        }
        assert_eq!(source_block(253), Ipv4Addr::new(127, 254, 0, 1));
    }
}
