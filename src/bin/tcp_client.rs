//! `tcp_client`: the companion blocking client. Chat (client.go) by default,
//! `dial` (dial.go) and `get` (socket.go) as subcommands.

use std::io::{self, Write};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use simple_tcp_server::client::{self, ChatOptions, Network, RetryPolicy, SharedOut};
use simple_tcp_server::duration::parse_duration;

/// The companion client of simple_tcp_server: chat with the server as
/// client.go does, check connections as dial.go does, fetch a page as
/// socket.go does.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  \
        tcp_client                                   # chat with localhost:50000\n  \
        printf 'wong\\n123\\nQ\\n' | tcp_client          # a scripted session\n  \
        tcp_client --name wong --wait 5s host 6000   # wait up to 5 s for the server\n  \
        tcp_client dial tcp6 '[::1]:50000'\n  \
        tcp_client get example.com /index.html"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    chat: ChatArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Connect to each address and report the connection (dial.go).
    #[command(after_help = "Examples:\n  \
        tcp_client dial 127.0.0.1:50000\n  \
        tcp_client dial tcp6 '[::1]:50000'\n  \
        tcp_client dial udp 127.0.0.1:53 example.com:80")]
    Dial {
        /// An optional network, tcp (the default: IPv4 or IPv6), tcp4, tcp6
        /// or udp, then addresses: HOST:PORT, [IPV6]:PORT, or HOST (port 80).
        #[arg(required = true, value_name = "[NETWORK] ADDR")]
        args: Vec<String>,
        /// Bound on each connection attempt.
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Send an HTTP/1.0 GET and print the raw response (socket.go).
    #[command(after_help = "Examples:\n  \
        tcp_client get example.com\n  \
        tcp_client get 127.0.0.1:8080 /status")]
    Get {
        /// HOST or HOST:PORT (port 80 by default).
        target: String,
        /// The path to fetch.
        #[arg(default_value = "/")]
        path: String,
        #[command(flatten)]
        retry: RetryArgs,
    },
}

#[derive(Debug, Args)]
struct RetryArgs {
    /// Retries of a temporary error (timeouts, EINTR, EMFILE, ...), with
    /// exponential backoff; permanent errors fail at once.
    #[arg(long, value_name = "N", default_value_t = 3)]
    retries: u32,
    /// Keep retrying a refused connection for this long (so a script can
    /// start the client before the server).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    wait: Option<Duration>,
    /// Bound on each connect attempt and each write.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_timeout)]
    timeout: Duration,
}

#[derive(Debug, Args)]
struct ChatArgs {
    /// Server host.
    #[arg(default_value = simple_tcp_server::DEFAULT_HOST)]
    host: String,
    /// Server port.
    #[arg(default_value_t = simple_tcp_server::DEFAULT_PORT)]
    port: u16,
    /// Your name (skips the question).
    #[arg(long)]
    name: Option<String>,
    /// End each message with a newline, for servers that frame by line.
    #[arg(long)]
    newline: bool,
    #[command(flatten)]
    retry: RetryArgs,
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

impl RetryArgs {
    fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            retries: self.retries,
            wait: self.wait,
            timeout: self.timeout,
            ..RetryPolicy::default()
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let result = match cli.command {
        None => chat(cli.chat),
        Some(Command::Dial { args, timeout }) => dial(&args, timeout),
        Some(Command::Get { target, path, retry }) => get(&target, &path, &retry.policy()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            let _ = io::stdout().flush();
            eprintln!("tcp_client: {message}");
            ExitCode::FAILURE
        }
    }
}

fn chat(args: ChatArgs) -> Result<(), String> {
    let policy = args.retry.policy();
    let stream = client::dial(&args.host, args.port, &policy).map_err(|e| e.to_string())?;
    let out: SharedOut = Arc::new(Mutex::new(io::stdout()));
    let opts = ChatOptions {
        name: args.name,
        newline: args.newline,
        policy,
    };
    client::chat(stream, io::BufReader::new(io::stdin()), out, &opts).map_err(|e| e.to_string())
}

fn dial(args: &[String], timeout: Duration) -> Result<(), String> {
    let (network, addrs) = match args.first().map(String::as_str) {
        Some("tcp") => (Network::Tcp, &args[1..]),
        Some("tcp4") => (Network::Tcp4, &args[1..]),
        Some("tcp6") => (Network::Tcp6, &args[1..]),
        Some("udp") => (Network::Udp, &args[1..]),
        _ => (Network::Tcp, args),
    };
    if addrs.is_empty() {
        return Err("dial: no address given (try `tcp_client dial --help`)".into());
    }
    let mut failed = 0;
    for addr in addrs {
        match client::dial_check(network, addr, timeout) {
            Ok((local, remote)) => println!("Connection is made with {local} -> {remote} ({})", network.name()),
            Err(e) => {
                eprintln!("error connecting to {addr}: {}", client::go_message(&e));
                failed += 1;
            }
        }
    }
    if failed > 0 {
        return Err(format!("{failed} of {} connections failed", addrs.len()));
    }
    Ok(())
}

fn get(target: &str, path: &str, policy: &RetryPolicy) -> Result<(), String> {
    let mut out = io::stdout().lock();
    client::http_get(target, path, policy, &mut out)
        .map(|_| ())
        .map_err(|e| e.to_string())
}
