//! The blocking companion client (`tcp_client`), on `std::net`: client.go's
//! chat, dial.go's connection checks and socket.go's raw HTTP GET.
//!
//! Errors are classified with [`crate::net_error`], the module the server
//! uses: temporary ones (Go's `Temporary()`/`Timeout()`) are retried with
//! exponential backoff, permanent ones fail at once.
//!
//! # Layout
//!
//! - this file: the errors as the user reads them, the retry policy and the
//!   retrying write.
//! - `dial`: resolving, connecting with retries, and dial.go's checks.
//! - `chat`: client.go's session.
//! - `http`: socket.go's GET.

mod chat;
mod dial;
mod http;

use std::fmt;
use std::io::{self, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use log::info;

use crate::net_error::{self, Class, Op};

pub use chat::{ChatOptions, LINE_PROMPT, NAME_PROMPT, SharedOut, chat};
pub use dial::{Network, dial, dial_check, resolve, split_host_port};
pub use http::http_get;

/// First pause before a retry; doubled each time up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest pause between retries.
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// Bytes per read of a response, as socket.go reads.
pub(crate) const READ_CHUNK: usize = 4096;

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

#[cfg(test)]
mod tests {
    use super::*;

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
