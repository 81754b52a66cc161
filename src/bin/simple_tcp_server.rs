//! `simple_tcp_server [OPTIONS] [HOST] [PORT]`: the binary. It parses the
//! arguments, raises the open-file limit, binds, and hands the listener and
//! stdout to the library's reactor.

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::Duration;

use clap::builder::TypedValueParser as _;
use clap::{CommandFactory, Parser};
use log::{info, warn};

use simple_tcp_server::config::bounds;
use simple_tcp_server::duration::parse_within;
use simple_tcp_server::listen;
use simple_tcp_server::output::{Format, OutputError};
use simple_tcp_server::reactor::MAX_GREETING;
use simple_tcp_server::{Config, Server, config, limits};

/// A single-threaded TCP server that greets every client and prints what it
/// sends as `<LEN:TEXT>` frames of at most 25 bytes.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    after_help = "The transcript goes to stdout; diagnostics to stderr (RUST_LOG=debug for more).\n\
                  Examples:\n  simple_tcp_server                      # localhost:50000\n  \
                  simple_tcp_server 0.0.0.0 6000 --tag   # all interfaces, frames tagged with the client\n  \
                  simple_tcp_server 127.0.0.1 0          # any free port; the real one is printed"
)]
struct Args {
    /// Host name or address to listen on.
    #[arg(default_value = simple_tcp_server::DEFAULT_HOST)]
    host: String,

    /// Port to listen on; 0 picks a free one.
    #[arg(default_value_t = simple_tcp_server::DEFAULT_PORT)]
    port: u16,

    /// Bytes per frame: each `<LEN:TEXT>` line holds at most this many bytes
    /// (512 gives server.go's framing).
    #[arg(long, value_name = "N", default_value_t = simple_tcp_server::MAX_READ,
          value_parser = clap::value_parser!(u32).range(1..=1 << 20).map(|n| n as usize))]
    max_read: usize,

    /// Greeting written to every new client (a newline is added unless TEXT
    /// ends with one).
    #[arg(
        long,
        value_name = "TEXT",
        default_value = "Let's GO!",
        conflicts_with = "no_greeting"
    )]
    greeting: String,

    /// Send no greeting.
    #[arg(long)]
    no_greeting: bool,

    /// Print TEXT bytes unchanged instead of escaping them (lets clients
    /// write control bytes and newlines to your terminal).
    #[arg(long)]
    raw: bool,

    /// Start every frame line with the client's address and a space.
    #[arg(long)]
    tag: bool,

    /// Transcript format: the chapter's text lines, or one JSON object per
    /// line for log pipelines (timestamp, event, peer, and each frame's
    /// exact bytes as `text`, or `b64` when not UTF-8).
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = Format::Text)]
    format: Format,

    /// Clients served at once; more are sent "ERR server full" and closed.
    /// Default: the open-file limit minus 32.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..).map(|n| n as usize))]
    max_connections: Option<usize>,

    /// Listen backlog (connections the kernel queues before they are accepted).
    #[arg(long, value_name = "N", default_value_t = config::DEFAULT_BACKLOG,
          value_parser = clap::value_parser!(u32).range(1..=i32::MAX as i64))]
    backlog: u32,

    /// Close a client that sends nothing for this long (e.g. 30s, 5m; at
    /// most 24 days).
    #[arg(long, value_name = "DURATION", value_parser = within(bounds::IDLE_TIMEOUT))]
    idle_timeout: Option<Duration>,

    /// Turn on TCP keepalive on accepted sockets with this idle time (1s to
    /// 32767s: TCP counts it in whole seconds).
    #[arg(long, value_name = "DURATION", value_parser = within(bounds::KEEPALIVE))]
    keepalive: Option<Duration>,

    /// Log a statistics line to stderr this often (e.g. 10s; at most 24h).
    #[arg(long, value_name = "DURATION", value_parser = within(bounds::STATS))]
    stats: Option<Duration>,

    /// Let printed lines wait up to this long in the output buffer instead
    /// of writing them before the loop blocks (0: write before blocking; at
    /// most 10s).
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = within(bounds::FLUSH_LAG))]
    flush_lag: Duration,

    /// Under a steady stream of small messages, with no connections coming
    /// or going, let readiness events gather this long between polls: one
    /// system call and context switch per batch instead of per message, for
    /// at most this much transcript latency (0 turns it off; at most 1s).
    #[arg(long, value_name = "DURATION", default_value = "500us", value_parser = within(bounds::COALESCE))]
    coalesce: Duration,

    /// After SIGINT/SIGTERM, give the drain (printing what was received)
    /// this long; then exit 1, saying how many connections were not
    /// finished. A second signal exits at once (at most 24h).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = within(bounds::SHUTDOWN_TIMEOUT))]
    shutdown_timeout: Duration,

    /// Reactors, each on its own thread with its own poll, connections and
    /// listener (SO_REUSEPORT); 0 for one per available core. The cap,
    /// stats and shutdown cover them all.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(0..=1024).map(|n| n as usize))]
    threads: usize,
}

/// A clap parser for a duration within `(min, max)`.
fn within((min, max): (Duration, Duration)) -> impl Fn(&str) -> Result<Duration, String> + Clone {
    move |text| parse_within(text, min, max)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.raw && args.format == Format::Json {
        Args::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--raw has no meaning with --format json (JSON lines always carry the exact bytes)",
            )
            .exit();
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            // Never `eprintln!`: it panics when stderr is gone (a closed
            // pipe shared with stdout), and the message is all that is left
            // to lose.
            let _ = writeln!(io::stderr(), "simple_tcp_server: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let soft_limit = match limits::raise_nofile_limit() {
        Ok(soft) => soft,
        Err(e) => {
            warn!("cannot raise the open-file limit: {e}");
            limits::nofile_limit().map(|(soft, _)| soft).unwrap_or(1024)
        }
    };
    let fitting = limits::max_connections_for(soft_limit);
    if let Some(cap) = args.max_connections
        && cap > fitting
    {
        warn!(
            "--max-connections {cap} is more than the open-file limit ({soft_limit}) allows; \
                 past about {fitting}, new clients wait in the backlog until others leave"
        );
    }
    let threads = match args.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut greeting = args.greeting.into_bytes();
    if args.no_greeting {
        greeting.clear();
    } else if !greeting.ends_with(b"\n") {
        greeting.push(b'\n');
    }
    if greeting.len() > MAX_GREETING {
        return Err("--greeting is too long".into());
    }
    let config = Config {
        max_read: args.max_read,
        greeting,
        raw: args.raw,
        tag: args.tag,
        format: args.format,
        max_connections: Some(args.max_connections.unwrap_or(fitting)),
        backlog: args.backlog,
        idle_timeout: args.idle_timeout,
        keepalive: args.keepalive,
        stats_interval: args.stats,
        flush_lag: args.flush_lag,
        coalesce: args.coalesce,
        shutdown_timeout: args.shutdown_timeout,
        threads,
        ..Config::default()
    };

    let addrs = listen::resolve(&args.host, args.port)
        .map_err(|e| format!("cannot resolve host `{}`: {}", args.host, plain(&e)))?;
    let mut last_error = None;
    let mut bound = None;
    for addr in addrs {
        match listen::listen_many(addr, config.backlog, threads) {
            Ok(listeners) => {
                bound = Some(listeners);
                break;
            }
            Err(e) => last_error = Some(format!("cannot listen on {addr}: {}", plain(&e))),
        }
    }
    let listeners = bound.ok_or_else(|| last_error.unwrap_or_else(|| "no address to listen on".into()))?;
    let mut server = Server::from_listeners(listeners, config).map_err(|e| format!("cannot start: {}", plain(&e)))?;
    server
        .stop_on_signals()
        .map_err(|e| format!("cannot handle signals: {}", plain(&e)))?;
    info!(
        "serving up to {} connections on {} (open-file limit {soft_limit})",
        server.max_connections(),
        match server.threads() {
            1 => "one thread".to_string(),
            n => format!("{n} threads"),
        }
    );

    // Write the transcript straight to the stdout descriptor: the library
    // buffers it, and std's line-buffered stdout would only add a copy.
    let stdout = io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .map_err(|e| format!("cannot use stdout: {}", plain(&e)))?;
    match server.run(stdout) {
        Ok(summary) => {
            info!("summary: {summary}");
            Ok(())
        }
        Err(e) => match OutputError::of(&e) {
            Some(e) if e.kind() == io::ErrorKind::BrokenPipe => Err("stdout was closed (broken pipe); stopping".into()),
            Some(e) => Err(format!("cannot write the transcript to stdout: {}; stopping", plain(e))),
            None => Err(format!("stopped: {}", plain(&e))),
        },
    }
}

/// An io::Error's message without the "(os error N)" suffix.
fn plain(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}
