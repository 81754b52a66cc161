//! `tcp_load`: drives a server at high connection counts (hold, flood, chat)
//! and reports what it cost the server. See `simple_tcp_server::load`.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use simple_tcp_server::duration::parse_duration;
use simple_tcp_server::load::{self, LoadConfig, Mode};

/// Load generator for simple_tcp_server: hold many connections, flood them
/// with bytes, or chat at a paced message rate.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    after_help = "Examples:\n  \
        tcp_load --server-pid $(pidof simple_tcp_server) hold --conns 19000\n  \
        tcp_load flood --conns 100 --bytes 10MB\n  \
        tcp_load --server-pid $PID chat --conns 10000 --rate 50000 --secs 10\n  \
        tcp_load churn --hold 3000 --rate 1000 --secs 60s"
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
    #[arg(long, global = true, default_value_t = simple_tcp_server::DEFAULT_PORT)]
    port: u16,
    /// Loopback source addresses to spread connections over (127.0.0.1 up).
    #[arg(long, global = true, default_value_t = 8, value_parser = clap::value_parser!(u8).range(1..))]
    sources: u8,
    /// Connections connecting or awaiting their greeting at once.
    #[arg(long, global = true, default_value_t = 512)]
    in_flight: usize,
    /// Bytes of greeting to expect per connection (0 for --no-greeting servers).
    #[arg(long, global = true, default_value_t = simple_tcp_server::GREETING.len())]
    greeting_len: usize,
    /// The server's process id: report its memory, threads and CPU from /proc.
    #[arg(long, global = true, value_name = "PID")]
    server_pid: Option<i32>,
    /// Bound on the whole run.
    #[arg(long, global = true, value_name = "DURATION", default_value = "120s", value_parser = parse_duration)]
    timeout: Duration,
    /// Print one JSON line instead of the summary.
    #[arg(long, global = true)]
    json: bool,
    /// No progress bar.
    #[arg(long, global = true)]
    quiet: bool,
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
    /// for the server to close; reports MB/s.
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
    /// R messages per second spread over N connections for T seconds;
    /// reports the server's CPU per message.
    Chat {
        /// Connections.
        #[arg(long, value_parser = positive)]
        conns: usize,
        /// Messages per second, over all connections.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        rate: u64,
        /// How long to send.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        secs: Duration,
    },
    /// Hold N connections while others come and go at R per second
    /// (connect, greeting, one message, close) for T seconds.
    Churn {
        /// Connections held open throughout.
        #[arg(long, default_value_t = 0)]
        hold: usize,
        /// Short-lived connections per second.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("tcp_load: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let c = cli.common;
    let target = simple_tcp_server::listen::resolve(&c.host, c.port)
        .map_err(|e| format!("cannot resolve `{}`: {e}", c.host))?[0];
    let mode = match cli.mode {
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
        ModeCmd::Chat { conns, rate, secs } => Mode::Chat { conns, rate, secs },
        ModeCmd::Churn { hold, rate, secs } => Mode::Churn { hold, rate, secs },
    };
    let soft = simple_tcp_server::limits::raise_nofile_limit().map_err(|e| format!("open-file limit: {e}"))?;
    let wanted = mode.conns();
    // The poller, stdio and a little slack.
    if wanted as u64 + 16 > soft {
        return Err(format!(
            "{wanted} connections need more file descriptors than this process may open ({soft}); \
             lower --conns or raise `ulimit -n`"
        ));
    }
    let config = LoadConfig {
        target,
        sources: load::default_sources(target, usize::from(c.sources)),
        mode,
        in_flight: c.in_flight.max(1),
        greeting_len: c.greeting_len,
        server_pid: c.server_pid,
        timeout: c.timeout,
        progress: !c.quiet && !c.json,
    };
    if let Some(pid) = c.server_pid {
        load::sample_process(pid).map_err(|e| format!("cannot read /proc for --server-pid {pid}: {e}"))?;
    }
    let report = load::run(config).map_err(|e| e.to_string())?;
    if c.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.human());
    }
    Ok(())
}
