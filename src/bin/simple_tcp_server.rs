//! `simple_tcp_server [OPTIONS] [HOST] [PORT]`: the binary. It parses the
//! arguments, raises the open-file limit, binds, and hands the listener and
//! stdout to the library's reactor.

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::Duration;

use clap::builder::TypedValueParser as _;
use clap::{CommandFactory, Parser};
use log::{debug, info, warn};

use ipnet::IpNet;
use simple_tcp_server::config::bounds;
use simple_tcp_server::duration::parse_within;
use simple_tcp_server::listen;
use simple_tcp_server::output::{Format, OutputError};
use simple_tcp_server::reactor::MAX_GREETING;
use simple_tcp_server::reactor::shutdown::Exits;
use simple_tcp_server::workers::{self, WorkerSide};
use simple_tcp_server::{Config, Server, config, limits};

/// A single-threaded TCP server that greets every client and prints what it
/// sends as `<LEN:TEXT>` frames of at most 25 bytes.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    after_help = "The transcript goes to stdout; diagnostics to stderr (RUST_LOG=debug for more).\n\
                  Durations take a unit (500us, 250ms, 5s, 2m, 1h); a bare number is seconds.\n\
                  Examples:\n  simple_tcp_server                      # localhost:50000\n  \
                  simple_tcp_server 0.0.0.0 6000 --tag   # all interfaces, frames tagged with the client\n  \
                  simple_tcp_server 127.0.0.1 0          # any free port; the real one is printed"
)]
struct Args {
    /// Host name or address to listen on.
    #[arg(default_value = simple_tcp_server::protocol::DEFAULT_HOST)]
    host: String,

    /// Port to listen on; 0 picks a free one.
    #[arg(default_value_t = simple_tcp_server::protocol::DEFAULT_PORT)]
    port: u16,

    /// Bytes per frame: each `<LEN:TEXT>` line holds at most this many bytes
    /// (512 gives server.go's framing).
    #[arg(long, value_name = "N", default_value_t = simple_tcp_server::protocol::MAX_READ,
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
    /// Default: the open-file limit minus 32 (per worker, with --workers).
    /// The cap counts every reactor and every worker together.
    #[arg(long, value_name = "N", value_parser = at_least_one)]
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

    /// Expect a PROXY protocol header (v1 or v2, as HAProxy's send-proxy and
    /// send-proxy-v2 write) before each client's bytes; the client's real
    /// address then appears in the transcript.
    #[arg(long, help_heading = "Behind a proxy")]
    proxy_protocol: bool,

    /// A network allowed to send PROXY headers (repeatable; default
    /// 127.0.0.0/8 and ::1). Anyone else is closed without a greeting.
    #[arg(long, value_name = "CIDR", requires = "proxy_protocol", value_parser = parse_net,
          help_heading = "Behind a proxy")]
    proxy_from: Vec<IpNet>,

    /// Close a connection whose PROXY header is not complete within this
    /// long (at most 1h).
    #[arg(long, value_name = "DURATION", default_value = "5s", requires = "proxy_protocol",
          value_parser = within(bounds::PROXY_TIMEOUT), help_heading = "Behind a proxy")]
    proxy_timeout: Duration,

    /// Let only clients from this network connect (repeatable); others are
    /// closed without a greeting. Behind --proxy-protocol, the client's
    /// address from the header is checked.
    #[arg(long, value_name = "CIDR", value_parser = parse_net, help_heading = "Who may connect")]
    allow: Vec<IpNet>,

    /// Close clients from this network without a greeting (repeatable;
    /// wins over --allow).
    #[arg(long, value_name = "CIDR", value_parser = parse_net, help_heading = "Who may connect")]
    deny: Vec<IpNet>,

    /// More allow and deny rules, one a line (`allow CIDR`, `deny CIDR`,
    /// `#` comments), read again on SIGHUP: established clients stay, new
    /// ones meet the new rules; a file that does not parse keeps the rules
    /// in force.
    #[arg(long, value_name = "PATH", help_heading = "Who may connect")]
    access_file: Option<std::path::PathBuf>,

    /// The most connections one client address may hold at once (behind
    /// --proxy-protocol, the address the header names); one more is told
    /// "ERR too many connections from your address" and closed.
    #[arg(long, value_name = "N", value_parser = at_least_one, help_heading = "Who may connect")]
    max_per_source: Option<usize>,

    /// Serve Prometheus metrics (GET /metrics) on this address, e.g.
    /// 127.0.0.1:9464, from a thread of its own; with --workers, the
    /// supervisor serves every worker's.
    #[arg(long, value_name = "ADDR", help_heading = "Operating it")]
    metrics: Option<std::net::SocketAddr>,

    /// Worker processes, each a whole server (with --threads reactors) under
    /// its own open-file limit, behind one supervisor that shares the port,
    /// merges their transcripts line by line and restarts a worker that
    /// dies; 1 (default) runs no supervisor; 0 starts one per core.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(0..=workers::MAX_WORKERS as i64).map(|n| n as usize))]
    workers: usize,

    /// (Set by the supervisor.) Run as worker N of --worker-count, on the
    /// descriptors it passed.
    #[arg(long, hide = true, requires = "worker_count")]
    worker_id: Option<usize>,

    /// (Set by the supervisor.) How many workers there are.
    #[arg(long, hide = true)]
    worker_count: Option<usize>,

    /// (Set by the supervisor.) The cap over all workers.
    #[arg(long, hide = true)]
    worker_cap: Option<usize>,
}

/// A network in CIDR notation; a bare address is a network of one.
fn parse_net(text: &str) -> Result<IpNet, String> {
    simple_tcp_server::rules::parse_net(text)
}

/// A whole number of at least 1 (clap's own range check would print the
/// upper bound as 18446744073709551615).
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("`{text}` is not a whole number of at least 1")),
    }
}

/// The most reactors (threads over all workers) one server runs: far past
/// any core count, and far short of exhausting the machine's threads.
const MAX_REACTORS: usize = 4096;

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
    let mut logger = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if let Some(id) = args.worker_id {
        // A worker's lines say whose they are (they share the terminal).
        logger.format(move |buf, record| {
            writeln!(
                buf,
                "[{} {} worker {id} {}] {}",
                buf.timestamp(),
                record.level(),
                record.target(),
                record.args()
            )
        });
    }
    logger.init();
    let who = args.worker_id.map_or(String::new(), |id| format!("worker {id}: "));
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            // Never `eprintln!`: it panics when stderr is gone (a closed
            // pipe shared with stdout), and the message is all that is left
            // to lose.
            let _ = writeln!(io::stderr(), "simple_tcp_server: {who}{message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let threads = match args.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    // A worker takes the descriptors its supervisor passed before it opens
    // anything else.
    let worker = match (args.worker_id, args.worker_count) {
        (Some(id), Some(count)) => {
            // SAFETY: nothing in `run` has kept a file open yet, so
            // descriptors 3 to 6 are the supervisor's (and if there is no
            // supervisor, `take` finds them closed and says so).
            let side = unsafe { WorkerSide::take(id, count, threads) };
            Some(side.map_err(|e| format!("cannot take the supervisor's descriptors: {}", plain(&e)))?)
        }
        _ => None,
    };
    let workers = match (args.workers, &worker) {
        (_, Some(_)) => 1,
        (0, None) => std::thread::available_parallelism().map_or(1, |n| n.get()),
        (n, None) => n,
    };
    let soft_limit = match limits::raise_nofile_limit() {
        Ok(soft) => soft,
        Err(e) => {
            warn!("cannot raise the open-file limit: {e}");
            limits::nofile_limit().map(|(soft, _)| soft).unwrap_or(1024)
        }
    };
    let fitting = limits::max_connections_for(soft_limit);
    // The cap counts every worker's connections; by default each worker may
    // fill its own open-file limit.
    let cap = match (args.worker_cap, args.max_connections) {
        (Some(cap), _) => cap,
        (None, Some(cap)) => cap,
        (None, None) => fitting.saturating_mul(workers),
    };
    if worker.is_none() {
        let hard = limits::nofile_limit().map_or(soft_limit, |(_, hard)| hard);
        let free = limits::machine_files_free();
        let reachable = limits::reachable_connections(workers as u64, hard, free);
        if cap as u64 > reachable {
            warn!(
                "--max-connections {cap} is more than this machine lets {workers} process{} hold: about {reachable} \
                 (open-file limit {hard} per process{}); past that, new clients wait in the backlog",
                if workers == 1 { "" } else { "es" },
                free.map_or(String::new(), |free| format!(
                    ", {free} files free on the machine (fs.file-max)"
                ))
            );
        }
    }
    if workers.saturating_mul(threads) > MAX_REACTORS {
        return Err(format!(
            "--workers {workers} x --threads {threads} is more than {MAX_REACTORS} reactors in all"
        ));
    }
    let mut greeting = args.greeting.into_bytes();
    if args.no_greeting {
        greeting.clear();
    } else if !greeting.ends_with(b"\n") {
        greeting.push(b'\n');
    }
    if greeting.len() > MAX_GREETING {
        return Err("--greeting is too long".into());
    }
    // The access file's rules join the command line's.
    let cli_rules = simple_tcp_server::rules::Rules {
        allow: args.allow.clone(),
        deny: args.deny.clone(),
    };
    // A worker takes the rules its supervisor read (never the file: the
    // file may have changed, or broken, since).
    let file_rules = match (&args.access_file, &worker) {
        (Some(_), Some(side)) => simple_tcp_server::rules::parse_bytes(&side.access_rules())
            .map_err(|e| format!("the access rules from the supervisor: {e}"))?,
        (Some(path), None) => simple_tcp_server::rules::load(path).map_err(|e| format!("--access-file: {e}"))?,
        (None, _) => simple_tcp_server::rules::Rules::default(),
    };
    let config = Config {
        max_read: args.max_read,
        greeting,
        raw: args.raw,
        tag: args.tag,
        format: args.format,
        max_connections: Some(cap),
        backlog: args.backlog,
        idle_timeout: args.idle_timeout,
        keepalive: args.keepalive,
        stats_interval: args.stats,
        flush_lag: args.flush_lag,
        coalesce: args.coalesce,
        shutdown_timeout: args.shutdown_timeout,
        threads,
        proxy_protocol: args.proxy_protocol,
        proxy_from: if args.proxy_from.is_empty() {
            config::loopback_nets()
        } else {
            args.proxy_from
        },
        proxy_timeout: args.proxy_timeout,
        allow: args.allow.iter().chain(&file_rules.allow).copied().collect(),
        deny: args.deny.iter().chain(&file_rules.deny).copied().collect(),
        max_per_source: args.max_per_source.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
        publish_counters: args.metrics.is_some(),
        ..Config::default()
    };
    // The metrics endpoint is the supervisor's (or the one process's), not
    // a worker's.
    let metrics = match (args.metrics, &worker) {
        (Some(addr), None) => Some(
            std::net::TcpListener::bind(addr)
                .map_err(|e| format!("--metrics: cannot listen on {addr}: {}", plain(&e)))?,
        ),
        _ => None,
    };

    let reload = Reload {
        path: args.access_file.clone(),
        cli: cli_rules,
        from_supervisor: None,
    };
    if let Some(mut side) = worker {
        // Only a cap below what the workers' open-file limits allow in all
        // is checked across workers at each accept.
        side.share.cap_binding = (cap as u64) < (fitting as u64).saturating_mul(args.worker_count.unwrap_or(1) as u64);
        let reload = Reload {
            from_supervisor: Some(side.rules_source()),
            ..reload
        };
        return run_worker(side, config, cap.min(fitting), soft_limit, reload);
    }
    // Under systemd socket activation the listener is passed in, already
    // bound (HOST and PORT are the .socket unit's business then); every
    // reactor (and every worker) polls it.
    let per_process = if workers > 1 { workers } else { threads };
    // SAFETY: no thread has been started yet (the logger starts none), and
    // descriptor 3 and up are still the service manager's.
    let activated = unsafe { listen::activated() };
    let (listeners, owned) = match activated.map_err(|e| format!("socket activation: {}", plain(&e)))? {
        Some(listener) => {
            info!("using the listening socket passed by the service manager (LISTEN_FDS)");
            (vec![listener], false)
        }
        None => (bind(&args.host, args.port, config.backlog, per_process)?, true),
    };
    if workers > 1 {
        return run_supervisor(
            listeners,
            owned,
            workers,
            cap,
            &config,
            metrics,
            args.access_file.clone(),
        );
    }
    // Threads to come (reactors, the metrics endpoint, the reload thread):
    // the descriptor table grows now, while it is this thread's alone.
    if threads > 1 || metrics.is_some() || args.access_file.is_some() {
        grow_fd_table(listeners[0].as_fd(), cap.min(fitting));
    }
    let mut server = Server::from_listeners(listeners, config).map_err(|e| format!("cannot start: {}", plain(&e)))?;
    server
        .stop_on_signals()
        .map_err(|e| format!("cannot handle signals: {}", plain(&e)))?;
    reload
        .on_sighup(server.access_rules())
        .map_err(|e| format!("cannot handle SIGHUP: {}", plain(&e)))?;
    if let Some(listener) = metrics {
        let addr = listener.local_addr().map_err(|e| plain(&e))?;
        simple_tcp_server::metrics::http::spawn(listener, server.metrics_source())
            .map_err(|e| format!("--metrics: {}", plain(&e)))?;
        info!("metrics on http://{addr}/metrics");
    }
    // Under systemd (Type=notify), say when serving and when stopping; a
    // no-op elsewhere ($NOTIFY_SOCKET unset).
    server.on_stop(simple_tcp_server::notify::stopping);
    simple_tcp_server::notify::ready();
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
        Err(e) => Err(match OutputError::of(&e) {
            Some(e) => stdout_error(e),
            None => format!("stopped: {}", plain(&e)),
        }),
    }
}

/// Runs as one of a supervisor's workers: serves its listener with the
/// shared cap, prints no `Listening to:` line (the supervisor did) and no
/// `--stats` line (the supervisor adds up every worker's), publishes its
/// counts in the shared memory, and tells the supervisor when it is ready,
/// draining and done.
fn run_worker(
    side: WorkerSide,
    mut config: Config,
    connections: usize,
    soft_limit: u64,
    reload: Reload,
) -> Result<(), String> {
    // With reactor threads or the reload thread to come, the descriptor
    // table grows while it is this thread's alone.
    if config.threads > 1 || reload.path.is_some() {
        grow_fd_table(side.listener.as_fd(), connections);
    }
    config.announce = false;
    config.stats_interval = None;
    config.worker = Some(side.share);
    let listener = side
        .listener
        .try_clone()
        .map_err(|e| format!("listener: {}", plain(&e)))?;
    let mut server = Server::from_listener(listener, config).map_err(|e| format!("cannot start: {}", plain(&e)))?;
    server
        .stop_on_signals_as(Exits::WorkerOfSupervisor)
        .map_err(|e| format!("cannot handle signals: {}", plain(&e)))?;
    // The supervisor reads the file on SIGHUP; each worker takes its rules.
    reload
        .on_sighup(server.access_rules())
        .map_err(|e| format!("cannot handle SIGHUP: {}", plain(&e)))?;
    let status = side.status_pipe().map_err(|e| format!("status pipe: {}", plain(&e)))?;
    server.on_stop(move || {
        // The supervisor steers new clients away from a draining worker.
        let _ = (&status).write_all(workers::DRAINING);
    });
    info!(
        "serving on {} (open-file limit {soft_limit})",
        match server.threads() {
            1 => "one thread".to_string(),
            n => format!("{n} threads"),
        }
    );
    let stdout = io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .map_err(|e| format!("cannot use stdout: {}", plain(&e)))?;
    let id = side.share.id;
    if let Err(e) =
        simple_tcp_server::title::set(&format!("simple_tcp_server: worker {id}"), &format!("stcp worker {id}"))
    {
        debug!("cannot set the process title: {e}");
    }
    side.say(workers::READY)
        .map_err(|e| format!("cannot tell the supervisor: {}", plain(&e)))?;
    let summary = server.run(stdout).map_err(|e| match OutputError::of(&e) {
        Some(e) => format!("cannot write the transcript to the supervisor: {}", plain(e)),
        None => format!("stopped: {}", plain(&e)),
    })?;
    debug!("summary: {summary}");
    // The counts are in the shared memory: the supervisor reads them.
    side.say(workers::DONE)
        .map_err(|e| format!("cannot tell the supervisor: {}", plain(&e)))
}

/// Runs the supervisor of `workers` worker processes (see
/// `simple_tcp_server::workers`).
fn run_supervisor(
    listeners: Vec<std::net::TcpListener>,
    owns_listeners: bool,
    workers: usize,
    cap: usize,
    config: &Config,
    metrics: Option<std::net::TcpListener>,
    access_file: Option<std::path::PathBuf>,
) -> Result<(), String> {
    let local_addr = listeners[0].local_addr().map_err(|e| plain(&e))?;
    let program = std::env::current_exe().map_err(|e| format!("cannot find this program: {}", plain(&e)))?;
    // The cap first: the user's arguments may end with `-- HOST PORT`.
    let mut args: Vec<std::ffi::OsString> = vec!["--worker-cap".into(), cap.to_string().into()];
    args.extend(std::env::args_os().skip(1));
    let stdout = io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .map_err(|e| format!("cannot use stdout: {}", plain(&e)))?;
    info!("supervising {workers} workers, up to {cap} connections in all");
    // The arguments are read (above): their memory may now hold the title.
    if let Err(e) = simple_tcp_server::title::set(
        &format!("simple_tcp_server: supervisor of {workers} workers"),
        "stcp supervisor",
    ) {
        debug!("cannot set the process title: {e}");
    }
    let plan = workers::Plan {
        program,
        args,
        listeners,
        owns_listeners,
        workers,
        threads: config.threads,
        shutdown_timeout: config.shutdown_timeout,
        stats_interval: config.stats_interval,
        max_connections: cap,
        metrics,
        // With a per-source limit (and no proxy, whose clients are known
        // only from their headers), all of one address's connections go to
        // one worker, which counts them all.
        steer_by_address: config.max_per_source.is_some() && !config.proxy_protocol,
        access_file,
        first_line: simple_tcp_server::output::listening_line(config.format, local_addr),
    };
    if let Some(addr) = plan.metrics.as_ref().and_then(|l| l.local_addr().ok()) {
        info!("metrics on http://{addr}/metrics");
    }
    // READY=1 comes from the supervisor once every worker is ready.
    let outcome = workers::supervise(plan, stdout).map_err(|e| match OutputError::of(&e) {
        Some(e) => stdout_error(e),
        None => format!("stopped: {}", plain(&e)),
    })?;
    info!("summary: {}", outcome.summary);
    if let Some(e) = outcome.failure {
        return Err(match OutputError::of(&e) {
            Some(e) => stdout_error(e),
            None => plain(&e),
        });
    }
    if outcome.unfinished_workers.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the drain did not finish: {} connection{} not finished ({})",
        outcome.unfinished,
        if outcome.unfinished == 1 { "" } else { "s" },
        outcome.unfinished_workers.join("; ")
    ))
}

/// What SIGHUP rereads: `--access-file` (or, in a worker, the rules its
/// supervisor read), joined to the command line's rules.
struct Reload {
    path: Option<std::path::PathBuf>,
    cli: simple_tcp_server::rules::Rules,
    /// In a worker: where the supervisor puts the rules it read.
    from_supervisor: Option<Box<dyn Fn() -> Vec<u8> + Send>>,
}

impl Reload {
    /// From now on, SIGHUP rereads the access file into `rules`, on a
    /// thread of its own, never a reactor's; without an access file (and
    /// then no thread), it only says there is nothing to reread.
    fn on_sighup(self, rules: simple_tcp_server::AccessRules) -> io::Result<()> {
        let Some(path) = self.path else {
            let note = || {
                simple_tcp_server::reactor::shutdown::try_note(
                    b"simple_tcp_server: SIGHUP: no --access-file to read again\n",
                );
            };
            // SAFETY: the action only polls and writes stderr (`try_note`):
            // async-signal-safe.
            unsafe { signal_hook::low_level::register(signal_hook::consts::SIGHUP, note) }?;
            return simple_tcp_server::reactor::shutdown::unblock(&[signal_hook::consts::SIGHUP]);
        };
        let from_supervisor = self.from_supervisor;
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])?;
        std::thread::Builder::new().name("reload".into()).spawn(move || {
            for _ in signals.forever() {
                let read = match &from_supervisor {
                    Some(rules) => simple_tcp_server::rules::parse_bytes(&rules()),
                    None => simple_tcp_server::rules::load(&path),
                };
                match read {
                    Ok(file) => {
                        let all = self.cli.clone().with(&file);
                        let from = match &from_supervisor {
                            Some(_) => "taken from the supervisor".to_string(),
                            None => format!("read again from {}", path.display()),
                        };
                        let (allow, deny) = (all.allow.len(), all.deny.len());
                        // In force before it is said: whoever reads the
                        // line may count on the new rules.
                        rules.set(all.allow, all.deny);
                        info!("SIGHUP: access rules {from}: {allow} allow, {deny} deny");
                    }
                    Err(e) => warn!("SIGHUP: {e}; the rules in force stay"),
                }
            }
        })?;
        // A supervisor starts its workers with SIGHUP blocked until here.
        simple_tcp_server::reactor::shutdown::unblock(&[signal_hook::consts::SIGHUP])
    }
}

/// Grows the descriptor table for `connections` (and the reserve) before
/// threads share it (see `limits::grow_fd_table`); a failure only costs
/// the waits it would have spared.
fn grow_fd_table(any: std::os::fd::BorrowedFd<'_>, connections: usize) {
    let slots = (connections as u64).saturating_add(limits::RESERVED_FDS);
    match limits::grow_fd_table(any, slots) {
        Ok(grown) => debug!("descriptor table grown to {grown} slots before threads share it"),
        Err(e) => debug!("cannot grow the descriptor table ahead: {e}"),
    }
}

/// Says what went wrong with stdout.
fn stdout_error(e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::BrokenPipe {
        "stdout was closed (broken pipe); stopping".into()
    } else {
        format!("cannot write the transcript to stdout: {}; stopping", plain(e))
    }
}

/// Resolves `host` and binds `threads` listeners (SO_REUSEPORT when more
/// than one) on the first address that works.
fn bind(host: &str, port: u16, backlog: u32, threads: usize) -> Result<Vec<std::net::TcpListener>, String> {
    let addrs = listen::resolve(host, port).map_err(|e| format!("cannot resolve host `{host}`: {}", plain(&e)))?;
    let mut last_error = None;
    for addr in addrs {
        match listen::listen_many(addr, backlog, threads) {
            Ok(listeners) => return Ok(listeners),
            Err(e) => {
                let hint = match (e.kind(), listen::someone_listens_on(port), listen::ephemeral_ports()) {
                    (io::ErrorKind::AddrInUse, Some(true), _) => " (another program listens on it)".to_string(),
                    (io::ErrorKind::AddrInUse, _, Some((lo, hi))) if (lo..=hi).contains(&port) => format!(
                        " (nothing listens on it, but port {port} is in this machine's ephemeral range {lo}-{hi}: \
                         an outgoing connection, or its TIME-WAIT, holds it; choose a port outside the range, or \
                         wait a minute)"
                    ),
                    _ => String::new(),
                };
                last_error = Some(format!("cannot listen on {addr}: {}{hint}", plain(&e)));
            }
        }
    }
    Err(last_error.unwrap_or_else(|| "no address to listen on".into()))
}

/// An io::Error's message without the "(os error N)" suffix.
fn plain(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}
