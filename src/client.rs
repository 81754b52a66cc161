//! The blocking companion client (`tcp_client`), on `std::net`: client.go's
//! chat, dial.go's connection checks and socket.go's raw HTTP GET.
//!
//! Errors are classified with [`crate::net_error`], the module the server
//! uses: temporary ones (Go's `Temporary()`/`Timeout()`) are retried with
//! exponential backoff, permanent ones fail at once.

use std::fmt;
use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use log::info;

use crate::net_error::{self, Class, Op};
use crate::output::text as frame;

/// The prompt for the name, as client.go prints it.
pub const NAME_PROMPT: &str = "First, what is your name?";
/// The prompt for each line, as client.go prints it.
pub const LINE_PROMPT: &str = "What to send to the server? Type Q to quit.";

/// How long the chat waits for the server's greeting before the first prompt,
/// so that a greeting is shown before the prompts even in a scripted session.
const GREETING_WAIT: Duration = Duration::from_millis(500);
/// First pause before a retry; doubled each time up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest pause between retries.
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// Bytes per read of a response, as socket.go reads.
const READ_CHUNK: usize = 4096;

/// A client failure, worded for the user.
#[derive(Debug)]
pub enum ClientError {
    /// The host name did not resolve.
    Resolve {
        /// What was looked up.
        target: String,
        /// Why it failed.
        err: io::Error,
    },
    /// Connecting failed (after any retries).
    Dial {
        /// `tcp 127.0.0.1:50000`.
        target: String,
        /// The last error.
        err: io::Error,
        /// Connection attempts made.
        attempts: u32,
    },
    /// The server closed the connection while we were talking.
    ServerClosed,
    /// The connection broke (reset, timeout, ...).
    Connection(io::Error),
    /// Reading input or writing output failed.
    Local(io::Error),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Resolve { target, err } => write!(f, "cannot resolve {target}: {}", go_message(err)),
            ClientError::Dial { target, err, attempts } => {
                write!(f, "Error dialing {target}: {}", go_message(err))?;
                if *attempts > 1 {
                    write!(f, " (after {attempts} attempts)")?;
                }
                if err.kind() == io::ErrorKind::ConnectionRefused {
                    write!(f, "; is the server running? start it with `simple_tcp_server`")?;
                }
                Ok(())
            }
            ClientError::ServerClosed => write!(f, "the server closed the connection"),
            ClientError::Connection(err) if err.kind() == io::ErrorKind::ConnectionReset => {
                write!(f, "the server reset the connection")
            }
            ClientError::Connection(err) => write!(f, "connection failed: {}", go_message(err)),
            ClientError::Local(err) => write!(f, "{}", go_message(err)),
        }
    }
}

impl std::error::Error for ClientError {}

/// An error's message as Go words it: lower case, no "(os error N)".
pub fn go_message(err: &io::Error) -> String {
    let text = err.to_string();
    let text = match text.find(" (os error") {
        Some(at) => &text[..at],
        None => &text[..],
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// How hard to try when connecting and writing.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Retries of a temporary error (connect or write).
    pub retries: u32,
    /// Keep retrying a refused connection until this much time has passed.
    pub wait: Option<Duration>,
    /// Bound on each connect attempt and each write.
    pub timeout: Duration,
    /// The first pause before a retry (doubled each time, up to 500 ms).
    pub backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            retries: 3,
            wait: None,
            timeout: Duration::from_secs(10),
            backoff: FIRST_BACKOFF,
        }
    }
}

/// An operation that failed for good, after `attempts` tries.
#[derive(Debug)]
pub struct Failed {
    /// The last error.
    pub err: io::Error,
    /// How many times the operation was tried.
    pub attempts: u32,
}

/// Runs `attempt` until it succeeds. Temporary errors (Go's `Temporary()`,
/// timeouts included) are retried up to `policy.retries` times with
/// exponential backoff; with `policy.wait`, a refused connection is also
/// retried until that much time has passed; anything else fails at once.
pub fn retry<T>(
    policy: &RetryPolicy,
    op: Op,
    what: &str,
    mut attempt: impl FnMut() -> io::Result<T>,
) -> Result<T, Failed> {
    let deadline = policy.wait.map(|w| Instant::now() + w);
    let mut retries = 0;
    let mut attempts = 0;
    let mut backoff = policy.backoff;
    loop {
        attempts += 1;
        let err = match attempt() {
            Ok(value) => return Ok(value),
            Err(err) => err,
        };
        let class = net_error::classify(op, &err);
        let waiting = deadline.is_some_and(|d| Instant::now() + backoff < d)
            && (class != Class::Permanent || err.kind() == io::ErrorKind::ConnectionRefused);
        let retrying = class != Class::Permanent && retries < policy.retries;
        if !(waiting || retrying) {
            return Err(Failed { err, attempts });
        }
        if !waiting {
            retries += 1;
        }
        info!("{what}: {}; retrying in {backoff:?}", go_message(&err));
        thread::sleep(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Resolves `host:port` (IPv4 first), or says why not.
pub fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, ClientError> {
    crate::listen::resolve(host, port).map_err(|err| ClientError::Resolve {
        target: format!("{host}:{port}"),
        err,
    })
}

fn connect_any(addrs: &[SocketAddr], timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for addr in addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Connects to `host:port`, retrying temporary errors with exponential
/// backoff (and, with `policy.wait`, refused connections until the deadline).
pub fn dial(host: &str, port: u16, policy: &RetryPolicy) -> Result<TcpStream, ClientError> {
    let addrs = resolve(host, port)?;
    let target = format!("tcp {}", addrs[0]);
    retry(policy, Op::Dial, &format!("dial {target}"), || {
        connect_any(&addrs, policy.timeout)
    })
    .map_err(|Failed { err, attempts }| ClientError::Dial { target, err, attempts })
}

/// Writes all of `data`, retrying temporary errors as `policy` allows.
pub fn write_with_retry(stream: &mut TcpStream, data: &[u8], policy: &RetryPolicy) -> Result<(), ClientError> {
    let policy = RetryPolicy {
        wait: None,
        ..policy.clone()
    };
    let mut sent = 0;
    while sent < data.len() {
        match retry(&policy, Op::Io, "write", || stream.write(&data[sent..])) {
            Ok(0) => return Err(ClientError::ServerClosed),
            Ok(n) => sent += n,
            Err(Failed { err, .. }) if err.kind() == io::ErrorKind::BrokenPipe => {
                return Err(ClientError::ServerClosed);
            }
            Err(Failed { err, .. }) => return Err(ClientError::Connection(err)),
        }
    }
    Ok(())
}

/// Output shared by the chat's prompts and the thread that shows what the
/// server sends.
pub type SharedOut = Arc<Mutex<dyn Write + Send>>;

fn emit(out: &SharedOut, bytes: &[u8]) -> io::Result<()> {
    let mut out = out.lock().map_err(|_| io::Error::other("output lock poisoned"))?;
    out.write_all(bytes)?;
    out.flush()
}

/// Shows bytes from the server, escaped so that a hostile server cannot
/// drive the terminal; newlines stay newlines.
fn show_server_bytes(out: &SharedOut, bytes: &[u8]) -> io::Result<()> {
    let mut text = Vec::with_capacity(bytes.len() + 16);
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if i > 0 {
            text.push(b'\n');
        }
        frame::escape_into(&mut text, line);
    }
    emit(out, &text)
}

/// The chat options (client.go's behaviour and ours).
#[derive(Debug, Clone, Default)]
pub struct ChatOptions {
    /// The name to use instead of asking for one.
    pub name: Option<String>,
    /// Add `\n` after each message, for servers that frame by line.
    pub newline: bool,
    /// Retries and timeouts.
    pub policy: RetryPolicy,
}

/// What the chat loop waits for: a line from the user, or the server leaving.
enum ChatEvent {
    /// A line of input, `\r\n` trimmed.
    Line(String),
    /// End of input.
    InputEnd,
    /// Reading input failed.
    InputFailed(io::Error),
    /// The server closed or broke the connection.
    ServerGone(ClientError),
}

/// client.go's loop over a connected `stream`: prompts on `out`, lines from
/// `input`, `NAME says: LINE` to the server; `Q` or end of input quits. What
/// the server sends is shown on `out` as it arrives, and a server that goes
/// away is noticed at once, even while the user is not typing.
///
/// Returns when the user quits (after closing our side and letting the
/// server finish), or with [`ClientError::ServerClosed`] /
/// [`ClientError::Connection`] when the server goes away first.
pub fn chat(
    mut stream: TcpStream,
    input: impl BufRead + Send + 'static,
    out: SharedOut,
    opts: &ChatOptions,
) -> Result<(), ClientError> {
    stream
        .set_write_timeout(Some(opts.policy.timeout))
        .map_err(ClientError::Connection)?;
    // Show the greeting before the first prompt, if it comes soon.
    let mut buf = vec![0u8; READ_CHUNK];
    stream
        .set_read_timeout(Some(GREETING_WAIT))
        .map_err(ClientError::Connection)?;
    match stream.read(&mut buf) {
        Ok(0) => return Err(ClientError::ServerClosed),
        Ok(n) => show_server_bytes(&out, &buf[..n]).map_err(ClientError::Local)?,
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
        Err(e) => return Err(ClientError::Connection(e)),
    }
    stream.set_read_timeout(None).map_err(ClientError::Connection)?;

    let (events, next_event) = mpsc::channel::<ChatEvent>();
    // One thread shows what the server sends and notices it leave.
    let mut reader = stream.try_clone().map_err(ClientError::Connection)?;
    let reader_out = Arc::clone(&out);
    let server_events = events.clone();
    thread::spawn(move || {
        let mut buf = vec![0u8; READ_CHUNK];
        let why = loop {
            match reader.read(&mut buf) {
                Ok(0) => break ClientError::ServerClosed,
                Ok(n) => {
                    if let Err(e) = show_server_bytes(&reader_out, &buf[..n]) {
                        break ClientError::Local(e);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break ClientError::Connection(e),
            }
        };
        let _ = server_events.send(ChatEvent::ServerGone(why));
    });
    // Another reads the user's lines, so that waiting for one does not keep
    // us from noticing the server leave.
    thread::spawn(move || {
        let mut input = input;
        loop {
            let mut line = String::new();
            let event = match input.read_line(&mut line) {
                Ok(0) => ChatEvent::InputEnd,
                Ok(_) => ChatEvent::Line(line.trim_matches(['\r', '\n']).to_string()),
                Err(e) => ChatEvent::InputFailed(e),
            };
            let last = !matches!(event, ChatEvent::Line(_));
            if events.send(event).is_err() || last {
                break;
            }
        }
    });

    let ask = |prompt: &str| -> Result<Option<String>, ClientError> {
        emit(&out, format!("{prompt}\n").as_bytes()).map_err(ClientError::Local)?;
        match next_event.recv() {
            Ok(ChatEvent::Line(line)) => Ok(Some(line)),
            Ok(ChatEvent::InputEnd) => Ok(None),
            Ok(ChatEvent::InputFailed(e)) => Err(ClientError::Local(e)),
            Ok(ChatEvent::ServerGone(why)) => Err(why),
            Err(_) => Ok(None),
        }
    };

    let name = match &opts.name {
        Some(name) => Some(name.clone()),
        None => ask(NAME_PROMPT)?,
    };
    if let Some(name) = name {
        while let Some(line) = ask(LINE_PROMPT)? {
            if line == "Q" {
                break;
            }
            let mut message = format!("{name} says: {line}");
            if opts.newline {
                message.push('\n');
            }
            write_with_retry(&mut stream, message.as_bytes(), &opts.policy)?;
        }
    }

    // Quit: close our side and give the server a moment to print and close.
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + opts.policy.timeout;
    loop {
        match next_event.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(ChatEvent::ServerGone(ClientError::ServerClosed)) | Err(_) => return Ok(()),
            Ok(ChatEvent::ServerGone(ClientError::Connection(e))) if e.kind() == io::ErrorKind::ConnectionReset => {
                return Ok(());
            }
            Ok(ChatEvent::ServerGone(other)) => return Err(other),
            // Input after the quit is not sent.
            Ok(_) => {}
        }
    }
}

/// The transport of a `dial` check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// TCP over IPv4 or IPv6.
    Tcp,
    /// TCP over IPv4 only.
    Tcp4,
    /// TCP over IPv6 only.
    Tcp6,
    /// UDP ("connecting" associates the socket with the peer; nothing is sent).
    Udp,
}

impl Network {
    /// Go's name for the network.
    pub fn name(self) -> &'static str {
        match self {
            Network::Tcp => "tcp",
            Network::Tcp4 => "tcp4",
            Network::Tcp6 => "tcp6",
            Network::Udp => "udp",
        }
    }
}

/// Splits `host:port`, `[v6]:port`, a bare host or a bare IPv6 address
/// (port `default_port`).
pub fn split_host_port(addr: &str, default_port: u16) -> Result<(String, u16), String> {
    if let Some(rest) = addr.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(|| format!("missing `]` in {addr}"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("bad port in {addr}"))?,
            None if after.is_empty() => default_port,
            None => return Err(format!("unexpected `{after}` after `]` in {addr}")),
        };
        return Ok((host.to_string(), port));
    }
    match addr.rsplit_once(':') {
        // More than one colon and no brackets: a bare IPv6 address.
        Some((host, _)) if host.contains(':') => Ok((addr.to_string(), default_port)),
        Some((host, port)) => Ok((
            host.to_string(),
            port.parse().map_err(|_| format!("bad port `{port}` in {addr}"))?,
        )),
        None => Ok((addr.to_string(), default_port)),
    }
}

/// dial.go for one address: connects over `network` and returns
/// `(local, remote)`.
pub fn dial_check(network: Network, addr: &str, timeout: Duration) -> io::Result<(SocketAddr, SocketAddr)> {
    let (host, port) = split_host_port(addr, 80).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()?
        .filter(|a| match network {
            Network::Tcp4 => a.is_ipv4(),
            Network::Tcp6 => a.is_ipv6(),
            Network::Tcp | Network::Udp => true,
        })
        .collect();
    if addrs.is_empty() {
        return Err(io::Error::new(io::ErrorKind::NotFound, "no suitable address found"));
    }
    if network == Network::Udp {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for remote in &addrs {
            let bind: SocketAddr = if remote.is_ipv4() {
                "0.0.0.0:0".parse().map_err(io::Error::other)?
            } else {
                "[::]:0".parse().map_err(io::Error::other)?
            };
            let attempt = UdpSocket::bind(bind).and_then(|s| {
                s.connect(remote)?;
                Ok((s.local_addr()?, s.peer_addr()?))
            });
            match attempt {
                Ok(pair) => return Ok(pair),
                Err(e) => last = e,
            }
        }
        return Err(last);
    }
    let stream = connect_any(&addrs, timeout)?;
    Ok((stream.local_addr()?, stream.peer_addr()?))
}

/// socket.go, done right: an HTTP/1.0 GET of `path` with a Host header;
/// the raw response is copied to `out` in 4096-byte reads until the server
/// closes. Returns the bytes copied.
pub fn http_get(target: &str, path: &str, policy: &RetryPolicy, out: &mut impl Write) -> Result<u64, ClientError> {
    let (host, port) = split_host_port(target, 80).map_err(|e| ClientError::Resolve {
        target: target.to_string(),
        err: io::Error::new(io::ErrorKind::InvalidInput, e),
    })?;
    let mut stream = dial(&host, port, policy)?;
    stream
        .set_read_timeout(Some(policy.timeout))
        .map_err(ClientError::Connection)?;
    stream
        .set_write_timeout(Some(policy.timeout))
        .map_err(ClientError::Connection)?;
    let host_header = if port == 80 {
        host.clone()
    } else if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host_header}\r\nConnection: close\r\n\r\n");
    write_with_retry(&mut stream, request.as_bytes(), policy)?;
    let mut buf = [0u8; READ_CHUNK];
    let mut total = 0u64;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.write_all(&buf[..n]).map_err(ClientError::Local)?;
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ClientError::Connection(e)),
        }
    }
    out.flush().map_err(ClientError::Local)?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_addresses() {
        assert_eq!(split_host_port("example.com", 80), Ok(("example.com".into(), 80)));
        assert_eq!(split_host_port("127.0.0.1:8080", 80), Ok(("127.0.0.1".into(), 8080)));
        assert_eq!(split_host_port("[::1]:81", 80), Ok(("::1".into(), 81)));
        assert_eq!(split_host_port("[::1]", 80), Ok(("::1".into(), 80)));
        assert_eq!(split_host_port("::1", 80), Ok(("::1".into(), 80)));
        assert!(split_host_port("host:http", 80).is_err());
        assert!(split_host_port("[::1", 80).is_err());
    }

    #[test]
    fn words_errors_as_go() {
        let refused = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(go_message(&refused), "connection refused");
        let e = ClientError::Dial {
            target: "tcp 127.0.0.1:50000".into(),
            err: refused,
            attempts: 1,
        };
        assert!(
            e.to_string()
                .starts_with("Error dialing tcp 127.0.0.1:50000: connection refused; is the server running?")
        );
    }

    fn quick(retries: u32) -> RetryPolicy {
        RetryPolicy {
            retries,
            backoff: Duration::from_millis(1),
            ..RetryPolicy::default()
        }
    }

    /// Runs `retry` over a script of results; returns (outcome, calls).
    fn scripted(policy: &RetryPolicy, script: Vec<io::Result<u8>>) -> (Result<u8, Failed>, usize) {
        let mut script = script.into_iter();
        let mut calls = 0;
        let result = retry(policy, Op::Dial, "test", || {
            calls += 1;
            script.next().unwrap_or(Ok(0))
        });
        (result, calls)
    }

    #[test]
    fn temporary_errors_are_retried_up_to_the_limit() {
        let os = io::Error::from_raw_os_error;
        let (result, calls) = scripted(&quick(3), vec![Err(os(libc::EINTR)), Err(os(libc::EMFILE)), Ok(7)]);
        assert_eq!((result.ok(), calls), (Some(7), 3));
        let (result, calls) = scripted(&quick(2), (0..5).map(|_| Err(os(libc::ETIMEDOUT))).collect());
        let failed = result.expect_err("gives up");
        assert_eq!((failed.attempts, calls), (3, 3));
        assert_eq!(failed.err.raw_os_error(), Some(libc::ETIMEDOUT));
    }

    #[test]
    fn permanent_errors_fail_at_once() {
        let os = io::Error::from_raw_os_error;
        for errno in [libc::ECONNREFUSED, libc::EHOSTUNREACH, libc::EACCES] {
            let (result, calls) = scripted(&quick(5), vec![Err(os(errno)), Ok(1)]);
            assert_eq!(calls, 1, "errno {errno} was retried");
            assert_eq!(result.expect_err("fails").attempts, 1);
        }
    }

    #[test]
    fn wait_retries_refused_until_the_deadline() {
        let os = io::Error::from_raw_os_error;
        let policy = RetryPolicy {
            wait: Some(Duration::from_secs(30)),
            ..quick(0)
        };
        let (result, calls) = scripted(
            &policy,
            vec![Err(os(libc::ECONNREFUSED)), Err(os(libc::ECONNREFUSED)), Ok(9)],
        );
        assert_eq!((result.ok(), calls), (Some(9), 3));
        // Other permanent errors are not waited out.
        let (result, calls) = scripted(&policy, vec![Err(os(libc::EACCES)), Ok(9)]);
        assert_eq!((result.is_err(), calls), (true, 1));
    }

    #[test]
    fn write_timeouts_are_retried_then_reported() {
        // A server that never reads, and a write that cannot finish.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let _server_side = listener.accept().expect("accept");
        client
            .set_write_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let big = vec![0u8; 64 << 20];
        match write_with_retry(&mut client, &big, &quick(2)) {
            Err(ClientError::Connection(e)) => {
                assert!(net_error::is_timeout(Op::Io, &e), "{e}");
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[test]
    fn refused_is_not_retried_without_wait() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let err = dial("127.0.0.1", port, &RetryPolicy::default()).expect_err("refused");
        match err {
            ClientError::Dial { err, attempts, .. } => {
                assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
                assert_eq!(attempts, 1, "a permanent error was retried");
            }
            other => panic!("unexpected {other}"),
        }
    }
}
