//! `tcp_client`: the companion blocking client. Chat (client.go) by default,
//! `dial` (dial.go) and `get` (socket.go) as subcommands.
//!
//! Exit codes: 0 when the session, every dial or the GET succeeded (and
//! when our own stdout was closed by its reader, as for any filter); 1 when
//! the server could not be reached, went away or timed out; 2 for a usage
//! error.

use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand};

use simple_tcp_server::client::{self, ChatOptions, ChatOutput, ClientError, GetRequest, RetryPolicy};
use simple_tcp_server::duration::{format as format_duration, parse_duration};
use simple_tcp_server::net_error::{self, Op};

/// The companion client of simple_tcp_server: chat with the server as
/// client.go does, check connections as dial.go does, fetch a page as
/// socket.go does.
#[derive(Debug, Parser)]
#[command(
    name = "tcp_client",
    version,
    args_conflicts_with_subcommands = true,
    after_help = "Prompts go to stdout on a terminal and to stderr otherwise, so that \
        `tcp_client > FILE` keeps only what the server said; --no-prompts drops them.\n\
        Exit status: 0 done, 1 the server could not be reached, went away or timed out, 2 usage error.\n\n\
        Examples:\n  \
        tcp_client                                   # chat with localhost:50000\n  \
        printf 'wong\\n123\\nQ\\n' | tcp_client          # a scripted session\n  \
        tcp_client --name wong --wait 5s host:6000   # wait up to 5 s for the server\n  \
        tcp_client '[::1]:50000'\n  \
        tcp_client dial tcp6 '[::1]:50000'\n  \
        tcp_client get http://example.com/index.html"
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
        /// An optional network, tcp (the default: IPv4 or IPv6), tcp4, tcp6,
        /// udp, udp4 or udp6, then addresses: HOST:PORT, [IPV6]:PORT, or
        /// HOST (port 80).
        #[arg(required = true, value_name = "[NETWORK] ADDR")]
        args: Vec<String>,
        /// Bound on each connection attempt.
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_timeout)]
        timeout: Duration,
    },
    /// Send an HTTP/1.0 GET and print the raw response (socket.go).
    #[command(
        after_help = "The path is percent-encoded where it must be (a space becomes %20); a \
        control character in it is refused.\n\
        The response ends when the server closes or Content-Length bytes of body have come; \
        --timeout bounds the whole exchange.\n\n\
        Examples:\n  \
        tcp_client get http://127.0.0.1:8080/status\n  \
        tcp_client get example.com\n  \
        tcp_client get 127.0.0.1:8080 /status"
    )]
    Get {
        /// http://HOST[:PORT][/PATH], or HOST[:PORT] (port 80 by default).
        target: String,
        /// The path to fetch (default `/`), if the target is not a URL with one.
        path: Option<String>,
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
    /// Keep retrying a refused connection for this long, the last time at
    /// its end (so a script can start the client before the server).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    wait: Option<Duration>,
    /// Bound on the whole connect, every attempt and retry included (or
    /// --wait, when longer), and on each write (chat); on the whole exchange
    /// (get).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_timeout)]
    timeout: Duration,
}

#[derive(Debug, Args)]
struct ChatArgs {
    /// Server host, or HOST:PORT, or [IPV6]:PORT [default: localhost].
    #[arg(value_name = "HOST")]
    target: Option<String>,
    /// Server port [default: 50000].
    port: Option<u16>,
    /// Your name (skips the question).
    #[arg(long)]
    name: Option<String>,
    /// End each message with a newline, for servers that frame by line.
    #[arg(long)]
    newline: bool,
    /// Show no prompts.
    #[arg(long)]
    no_prompts: bool,
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

/// How a command failed.
enum Failure {
    /// Bad arguments to the chat or to a subcommand: clap's usage error,
    /// exit 2.
    Usage(Option<&'static str>, String),
    /// Exit 1 with this message.
    Failed(String),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        Failure::Failed(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let result = match cli.command {
        None => chat(cli.chat),
        Some(Command::Dial { args, timeout }) => dial(&args, timeout),
        Some(Command::Get { target, path, retry }) => get(&target, path.as_deref(), &retry.policy()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(subcommand, message)) => {
            let mut cmd = Cli::command();
            cmd.build();
            match subcommand.and_then(|name| cmd.find_subcommand_mut(name)) {
                Some(sub) => sub.error(ErrorKind::ValueValidation, message).exit(),
                None => cmd.error(ErrorKind::ValueValidation, message).exit(),
            }
        }
        Err(Failure::Failed(message)) => {
            let _ = io::stdout().flush();
            // A closed stderr loses the message, not the exit status.
            let _ = writeln!(io::stderr(), "tcp_client: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `HOST PORT`, `HOST:PORT`, `[V6]:PORT`, `HOST` or nothing, as host and port.
fn chat_target(target: Option<&str>, port: Option<u16>) -> Result<(String, u16), String> {
    let target = target.unwrap_or(simple_tcp_server::protocol::DEFAULT_HOST);
    let Some(port) = port else {
        return client::split_host_port(target, simple_tcp_server::protocol::DEFAULT_PORT);
    };
    let has_port = if target.starts_with('[') {
        target.contains("]:")
    } else {
        target.matches(':').count() == 1
    };
    if has_port {
        return Err(format!("`{target}` has a port already: give HOST PORT or HOST:PORT"));
    }
    let host = target
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(target);
    Ok((host.to_string(), port))
}

/// Whether stdout and stderr reach the same place (one terminal, one file).
fn stdout_and_stderr_shared() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let identity = |fd: std::os::fd::BorrowedFd<'_>| {
        let file = std::fs::File::from(fd.try_clone_to_owned().ok()?);
        let meta = file.metadata().ok()?;
        Some((meta.dev(), meta.ino()))
    };
    let (out, err) = (io::stdout(), io::stderr());
    match (identity(out.as_fd()), identity(err.as_fd())) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

fn chat(args: ChatArgs) -> Result<(), Failure> {
    let (host, port) = chat_target(args.target.as_deref(), args.port).map_err(|m| Failure::Usage(None, m))?;
    let policy = args.retry.policy();
    let stream = client::dial(&host, port, &policy)?;
    let terminal = io::stdout().is_terminal();
    let prompts: Option<Box<dyn Write + Send>> = match (args.no_prompts, terminal) {
        (true, _) => None,
        (false, true) => Some(Box::new(io::stdout())),
        (false, false) => Some(Box::new(io::stderr())),
    };
    let out = ChatOutput {
        server: Box::new(io::stdout()),
        shared: prompts.is_some() && (terminal || stdout_and_stderr_shared()),
        prompts,
    };
    let opts = ChatOptions {
        name: args.name,
        newline: args.newline,
        policy,
    };
    match client::chat(stream, io::BufReader::new(io::stdin()), out, &opts) {
        Err(e) if e.is_broken_output() => Ok(()),
        other => Ok(other?),
    }
}

fn dial(args: &[String], timeout: Duration) -> Result<(), Failure> {
    let (network, addrs) = client::parse_dial_args(args).map_err(|m| Failure::Usage(Some("dial"), m))?;
    let mut stdout = io::stdout().lock();
    let mut failed = 0;
    for addr in &addrs {
        match client::dial_check(network, addr, timeout) {
            Ok((local, remote)) => {
                let line = format!("Connection is made with {local} -> {remote} ({})\n", network.name());
                if let Err(e) = stdout.write_all(line.as_bytes()).and_then(|()| stdout.flush()) {
                    if e.kind() == io::ErrorKind::BrokenPipe {
                        // Our reader has what it wanted.
                        break;
                    }
                    return Err(Failure::Failed(client::go_message(&e)));
                }
            }
            Err(e) => {
                let reason = if net_error::is_timeout(Op::Dial, &e) {
                    format!("timed out after {} (--timeout)", format_duration(timeout))
                } else {
                    client::go_message(&e)
                };
                let _ = writeln!(io::stderr(), "error connecting to {addr}: {reason}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        return Err(Failure::Failed(format!(
            "{failed} of {} connections failed",
            addrs.len()
        )));
    }
    Ok(())
}

fn get(target: &str, path: Option<&str>, policy: &RetryPolicy) -> Result<(), Failure> {
    let request = GetRequest::parse(target, path).map_err(|m| Failure::Usage(Some("get"), m))?;
    let mut out = io::stdout().lock();
    match client::http_get(&request, policy, &mut out) {
        Ok(_) => Ok(()),
        Err(e) if e.is_broken_output() => Ok(()),
        Err(e) => Err(e.into()),
    }
}
