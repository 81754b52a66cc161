//! `tcp_load`: drives a server at high connection counts (hold, flood,
//! chat, churn) and reports what it cost the server. See
//! `simple_tcp_server::load`.
//!
//! Exit codes: 0 when the run was clean (every connection did what it was
//! asked, acknowledged by the server, within `--timeout`); 1 when it was
//! not (the report, printed all the same, says why) or could not run; 2 for
//! a usage error.

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand};

use simple_tcp_server::duration::{format as format_duration, parse_duration};
use simple_tcp_server::load::{self, LoadConfig, Mode, ProbeConfig, ProbeReport, Report, procs};

/// Load generator for simple_tcp_server: hold many connections, flood them
/// with bytes, chat at a paced message rate, or churn connections.
#[derive(Debug, Parser)]
#[command(
    name = "tcp_load",
    version,
    after_help = "Exit status: 0 the run was clean; 1 it was not (the report says why: a connection \
        failed, the run was cut short, a rate was out of reach) or could not run; 2 usage error.\n\n\
        Examples:\n  \
        tcp_load --server-pid $(pgrep -o -f simple_tcp_server) hold --conns 19000\n  \
        tcp_load --procs 50 --server-pid $PID hold --conns 1000000 --hold 60s\n  \
        tcp_load flood --conns 100 --bytes 10MB\n  \
        tcp_load --server-pid $PID chat --conns 10000 --rate 50000 --secs 10\n  \
        tcp_load churn --hold 3000 --rate 1000 --secs 60s\n  \
        tcp_load probe --transcript server.out --rate 100 --secs 60s"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    mode: ModeCmd,
}

#[derive(Debug, Args)]
struct Common {
    /// The server's host.
    #[arg(long, global = true, default_value = "127.0.0.1")]
    host: String,
    /// The server's port.
    #[arg(long, global = true, default_value_t = simple_tcp_server::protocol::DEFAULT_PORT)]
    port: u16,
    /// Loopback source addresses to spread connections over, per process.
    #[arg(long, global = true, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=4096))]
    sources: u16,
    /// The first loopback source address.
    #[arg(long, global = true, value_name = "IPV4", default_value = "127.0.0.1")]
    source_base: Ipv4Addr,
    /// Run N generator processes, each with its share of the connections
    /// and rates and its own block of source addresses (127.I.0.1 up), and
    /// add up their reports: for more connections than one process may
    /// open. Loopback targets only.
    #[arg(long, global = true, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=procs::MAX_PROCS as i64))]
    procs: u16,
    /// Connections connecting or awaiting their greeting at once, per process.
    #[arg(long, global = true, default_value_t = 512)]
    in_flight: usize,
    /// Bytes of greeting to expect per connection (0 for --no-greeting servers).
    #[arg(long, global = true, default_value_t = simple_tcp_server::protocol::GREETING.len())]
    greeting_len: usize,
    /// The server's process id: report its memory, threads and CPU from /proc.
    #[arg(long, global = true, value_name = "PID", value_parser = existing_pid)]
    server_pid: Option<i32>,
    /// Bound on the whole run: a run that has not finished by then stops
    /// and is not clean.
    #[arg(long, global = true, value_name = "DURATION", default_value = "120s", value_parser = parse_duration)]
    timeout: Duration,
    /// Print one JSON line instead of the summary.
    #[arg(long, global = true)]
    json: bool,
    /// No progress bar.
    #[arg(long, global = true)]
    quiet: bool,
    /// Run as one of the processes of `--procs` (internal).
    #[arg(long, global = true, hide = true)]
    coordinated: bool,
    /// Which of the processes of `--procs` this is, from 1 (internal).
    #[arg(long, global = true, hide = true, default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=procs::MAX_PROCS as i64))]
    proc_index: u16,
    /// Say on stderr when the main phase begins (`tcp_load: all N
    /// connections are up`, or `M of N` when some are not), for a script
    /// that starts something beside the run.
    #[arg(long, global = true)]
    announce: bool,
}

#[derive(Debug, Subcommand)]
enum ModeCmd {
    /// Open N connections, read each greeting, send one message each, hold.
    Hold {
        /// Connections to open.
        #[arg(long, value_parser = positive)]
        conns: usize,
        /// How long to hold them once all are up.
        #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
        hold: Duration,
    },
    /// Each connection streams B bytes of chat text, half-closes, and waits
    /// for the server to close; reports MB/s of what the server acknowledged.
    Flood {
        /// Connections.
        #[arg(long, value_parser = positive)]
        conns: usize,
        /// Bytes per connection (suffixes k, M, G: powers of 1000; KiB, MiB, GiB).
        #[arg(long, value_parser = parse_bytes)]
        bytes: u64,
        /// Bytes per write.
        #[arg(long, default_value = "256KiB", value_parser = parse_bytes)]
        write_size: u64,
    },
    /// R messages per second spread evenly over N connections for T
    /// seconds (R x T in all, round robin); reports the server's CPU per
    /// message and whether it kept up. Every message is 25 bytes,
    /// `cKEY says: PROC.NUMBER`, so a transcript can be checked for each
    /// exactly once.
    Chat {
        /// Connections.
        #[arg(long, value_parser = positive)]
        conns: usize,
        /// Messages per second, over all connections.
        #[arg(long, value_parser = positive_u64)]
        rate: u64,
        /// How long to send.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        secs: Duration,
        /// How often each generator process wakes to send what is due.
        #[arg(long, value_name = "DURATION", default_value = "1ms", value_parser = parse_tick)]
        tick: Duration,
    },
    /// Latency probe: a few clients send numbered messages at a paced rate
    /// and watch the server's transcript file for their lines; reports
    /// send-to-print latency (p50, p99, p99.9, max) and whether each
    /// message was printed exactly once. It stops sending 1 s past --secs
    /// if the rate is out of reach (and says so), and ends --wait after
    /// its last message at the latest (--timeout and --procs do not apply).
    Probe {
        /// The file the server's stdout goes to.
        #[arg(long, value_name = "PATH")]
        transcript: std::path::PathBuf,
        /// Probe clients, used in turn.
        #[arg(long, default_value_t = 4, value_parser = positive)]
        clients: usize,
        /// Probe messages per second, over all its clients.
        #[arg(long, default_value_t = 100, value_parser = positive_u64)]
        rate: u64,
        /// How long to send.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        secs: Duration,
        /// How long after the last message to wait for lines still missing
        /// (at least 10ms).
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_wait)]
        wait: Duration,
        /// How long to sleep when the transcript has nothing new (10us to 1s).
        #[arg(long, value_name = "DURATION", default_value = "200us", value_parser = parse_poll)]
        poll: Duration,
    },
    /// Hold N connections while others come and go at R per second
    /// (connect, greeting, one message, close) for T seconds.
    Churn {
        /// Connections held open throughout.
        #[arg(long, default_value_t = 0)]
        hold: usize,
        /// Short-lived connections per second.
        #[arg(long, value_parser = positive_u64)]
        rate: u64,
        /// How long to churn.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        secs: Duration,
    },
}

fn positive(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("`{text}` is not a positive number")),
    }
}

/// A rate: a whole number of at least 1.
fn positive_u64(text: &str) -> Result<u64, String> {
    positive(text).map(|n| n as u64)
}

/// A chat tick: 100 us to 1 s.
fn parse_tick(text: &str) -> Result<Duration, String> {
    let tick = parse_duration(text)?;
    if tick < Duration::from_micros(100) || tick > Duration::from_secs(1) {
        return Err(format!("`{text}` is not a tick between 100us and 1s"));
    }
    Ok(tick)
}

/// The probe's wait for missing lines: at least 10 ms.
fn parse_wait(text: &str) -> Result<Duration, String> {
    let wait = parse_duration(text)?;
    if wait < Duration::from_millis(10) {
        return Err(format!("`{text}` is shorter than 10ms"));
    }
    Ok(wait)
}

/// The probe's sleep between reads: 10 us to 1 s (0 would spin a core).
fn parse_poll(text: &str) -> Result<Duration, String> {
    let poll = parse_duration(text)?;
    if poll < Duration::from_micros(10) || poll > Duration::from_secs(1) {
        return Err(format!("`{text}` is not between 10us and 1s"));
    }
    Ok(poll)
}

/// A process id that names a running process.
fn existing_pid(text: &str) -> Result<i32, String> {
    let pid: i32 = text.parse().map_err(|_| format!("`{text}` is not a process id"))?;
    if pid <= 0 || !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        return Err(format!("no process with PID {pid} is running"));
    }
    Ok(pid)
}

/// `10MB`, `64KiB`, `1G`, `12345`.
fn parse_bytes(text: &str) -> Result<u64, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("`{text}` is not a byte count"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "k" | "K" | "kB" | "KB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(format!("unknown unit `{other}` in `{text}`")),
    };
    n.checked_mul(scale).ok_or_else(|| format!("`{text}` is too large"))
}

/// Why `run` did not produce a report.
enum Failure {
    /// Bad arguments: clap's usage error, exit 2.
    Usage(String),
    /// The run could not start or go on: exit 1.
    Failed(String),
}

/// A run's report.
enum Outcome {
    Load(Box<Report>),
    Probe(ProbeReport),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let json = cli.common.json;
    match run(cli) {
        Ok(outcome) => {
            let (text, ok) = match (&outcome, json) {
                (Outcome::Load(r), true) => (format!("{}\n", r.json()), r.ok),
                (Outcome::Load(r), false) => (r.human(), r.ok),
                (Outcome::Probe(r), true) => (format!("{}\n", r.json()), r.ok),
                (Outcome::Probe(r), false) => (r.human(), r.ok),
            };
            // A closed stdout (`tcp_load --json | true`) loses the report,
            // not the verdict.
            let mut out = io::stdout().lock();
            let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
            if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(Failure::Usage(message)) => Cli::command().error(ErrorKind::ArgumentConflict, message).exit(),
        Err(Failure::Failed(message)) => {
            // A closed stderr loses the message, not the exit status.
            let _ = writeln!(io::stderr(), "tcp_load: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<Outcome, Failure> {
    let c = cli.common;
    let target = simple_tcp_server::listen::resolve(&c.host, c.port)
        .map_err(|e| Failure::Failed(format!("cannot resolve `{}`: {e}", c.host)))?[0];
    let mode = match cli.mode {
        ModeCmd::Probe {
            transcript,
            clients,
            rate,
            secs,
            wait,
            poll,
        } => {
            if c.procs > 1 {
                return Err(Failure::Usage("the probe runs as one process: drop --procs".into()));
            }
            if u128::from(rate) * secs.as_nanos() < 1_000_000_000 {
                return Err(Failure::Usage(
                    "the probe would send no message: raise --rate or --secs".into(),
                ));
            }
            let config = ProbeConfig {
                target,
                transcript,
                clients,
                rate,
                secs,
                wait,
                poll,
                greeting_len: c.greeting_len,
            };
            return load::probe(&config)
                .map(Outcome::Probe)
                .map_err(|e| Failure::Failed(format!("probe: {e}")));
        }
        ModeCmd::Hold { conns, hold } => Mode::Hold { conns, hold },
        ModeCmd::Flood {
            conns,
            bytes,
            write_size,
        } => Mode::Flood {
            conns,
            bytes,
            write_size: usize::try_from(write_size.clamp(1, 16 << 20)).unwrap_or(1 << 20),
        },
        ModeCmd::Chat {
            conns,
            rate,
            secs,
            tick,
        } => Mode::Chat {
            conns,
            rate,
            secs,
            tick,
        },
        ModeCmd::Churn { hold, rate, secs } => Mode::Churn { hold, rate, secs },
    };
    if let Mode::Chat { rate, secs, .. } = &mode {
        // Every message's number (0 up) must fit its 25 bytes (8 digits),
        // in the process with the largest share of the rate.
        let largest_share = u128::from(*rate).div_ceil(u128::from(c.procs.max(1)));
        let per_process = largest_share * secs.as_nanos() / 1_000_000_000;
        let numbers = u128::from(load::CHAT_MAX_SEQ) + 1;
        if per_process > numbers {
            return Err(Failure::Usage(format!(
                "--rate x --secs gives a process {per_process} messages, more than the {numbers} \
                 a message number may count (0 to {}): spread them with --procs or send fewer",
                load::CHAT_MAX_SEQ
            )));
        }
    }
    let soft = simple_tcp_server::limits::raise_nofile_limit()
        .map_err(|e| Failure::Failed(format!("open-file limit: {e}")))?;
    if c.procs > 1 {
        return run_procs(&c, target, &mode, soft).map(|r| Outcome::Load(Box::new(r)));
    }
    check_descriptors(mode.conns(), soft).map_err(Failure::Failed)?;
    let sources = if target.ip().is_loopback() && target.is_ipv4() {
        load::sources_from(c.source_base, usize::from(c.sources))
    } else {
        load::default_sources(target, usize::from(c.sources))
    };
    let config = LoadConfig {
        target,
        sources,
        mode,
        in_flight: c.in_flight.max(1),
        greeting_len: c.greeting_len,
        server_pid: c.server_pid,
        timeout: c.timeout,
        progress: !c.quiet && !c.json,
        stop_on_signals: true,
        coordinated: c.coordinated,
        announce: c.announce,
        proc_index: c.proc_index,
    };
    load::run(config)
        .map(|r| Outcome::Load(Box::new(r)))
        .map_err(|e| Failure::Failed(e.to_string()))
}

/// One process's connections must fit its open-file limit.
fn check_descriptors(conns: usize, soft: u64) -> Result<(), String> {
    // The poller, stdio and a little slack.
    if conns as u64 + 16 > soft {
        return Err(format!(
            "{conns} connections need more file descriptors than this process may open ({soft}); \
             lower --conns, raise `ulimit -n`, or spread them with --procs"
        ));
    }
    Ok(())
}

/// `--procs N`: this binary again, N times, each with a slice of the work.
fn run_procs(c: &Common, target: SocketAddr, mode: &Mode, soft: u64) -> Result<Report, Failure> {
    let n = usize::from(c.procs);
    if !matches!(target.ip(), IpAddr::V4(ip) if ip.is_loopback()) {
        return Err(Failure::Usage(format!(
            "--procs spreads connections over loopback source addresses (127.0.0.0/8), so it needs a \
             loopback IPv4 target; {} is not one",
            target.ip()
        )));
    }
    let slices = procs::split(mode, n).map_err(Failure::Usage)?;
    let most = slices.iter().map(Mode::conns).max().unwrap_or(0);
    if most as u64 + 16 > soft {
        let per = usize::try_from(soft.saturating_sub(16).max(1)).unwrap_or(usize::MAX);
        return Err(Failure::Failed(format!(
            "--procs {n} gives a process {most} connections, more than its open-file limit ({soft}) allows; \
             use --procs {} or more",
            mode.conns().div_ceil(per)
        )));
    }
    let exe = std::env::current_exe().map_err(|e| Failure::Failed(format!("cannot find this program: {e}")))?;
    let args = slices
        .iter()
        .enumerate()
        .map(|(i, slice)| {
            let sources = usize::from(c.sources).max(procs::sources_needed(slice.conns()));
            let mut args: Vec<String> = [
                "--host",
                &target.ip().to_string(),
                "--port",
                &target.port().to_string(),
                "--source-base",
                &procs::source_block(i).to_string(),
                "--sources",
                &sources.to_string(),
                "--in-flight",
                &c.in_flight.to_string(),
                "--greeting-len",
                &c.greeting_len.to_string(),
                "--timeout",
                &format_duration(c.timeout),
                "--json",
                "--quiet",
                "--coordinated",
                "--proc-index",
                &(i + 1).to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(mode_args(slice));
            args
        })
        .collect();
    procs::run(procs::ProcsConfig {
        exe,
        args,
        mode: mode.clone(),
        server_pid: c.server_pid,
        timeout: c.timeout,
        announce: c.announce,
    })
    .map_err(|e| Failure::Failed(e.to_string()))
}

/// `mode` as this binary's arguments.
fn mode_args(mode: &Mode) -> Vec<String> {
    let d = |d: &Duration| format_duration(*d);
    let args: Vec<String> = match mode {
        Mode::Hold { conns, hold } => vec![
            "hold".into(),
            "--conns".into(),
            conns.to_string(),
            "--hold".into(),
            d(hold),
        ],
        Mode::Flood {
            conns,
            bytes,
            write_size,
        } => vec![
            "flood".into(),
            "--conns".into(),
            conns.to_string(),
            "--bytes".into(),
            bytes.to_string(),
            "--write-size".into(),
            write_size.to_string(),
        ],
        Mode::Chat {
            conns,
            rate,
            secs,
            tick,
        } => vec![
            "chat".into(),
            "--conns".into(),
            conns.to_string(),
            "--rate".into(),
            rate.to_string(),
            "--secs".into(),
            d(secs),
            "--tick".into(),
            format!("{}us", tick.as_micros()),
        ],
        Mode::Churn { hold, rate, secs } => vec![
            "churn".into(),
            "--hold".into(),
            hold.to_string(),
            "--rate".into(),
            rate.to_string(),
            "--secs".into(),
            d(secs),
        ],
    };
    args
}
