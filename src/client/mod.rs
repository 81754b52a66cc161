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
//! - `dial`: addresses (`HOST:PORT`, `[V6]:PORT`), resolving, connecting
//!   with retries, and dial.go's checks.
//! - `chat`: client.go's session, with bounded input.
//! - `display`: the server's text escaped as a stream, and the prompts.
//! - `http`: socket.go's GET: URLs, a checked path, one deadline for the
//!   whole exchange, `Content-Length`.

mod chat;
mod dial;
mod display;
mod http;

use std::fmt;
use std::io::{self, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use log::info;

use crate::duration::format as format_duration;
use crate::net_error::{self, Class, Op};

pub use chat::{ChatOptions, ChatOutput, LINE_PROMPT, NAME_PROMPT, chat};
pub use dial::{Network, dial, dial_check, parse_dial_args, resolve, split_host_port};
pub use http::{GetRequest, http_get};

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
        /// The port dialled: the "is the server running?" hint is for ours.
        port: u16,
        /// The last error.
        err: io::Error,
        /// Connection attempts made.
        attempts: u32,
        /// The `--timeout` each attempt had, for a timeout's message.
        timeout: Duration,
    },
    /// An exchange ran past `--timeout`.
    TimedOut {
        /// What timed out: `write`, `read`, `the request`.
        what: &'static str,
        /// The `--timeout` that was exceeded.
        after: Duration,
        /// Times it was tried.
        attempts: u32,
    },
    /// The server closed the connection while we were talking.
    ServerClosed,
    /// The connection broke (reset, ...).
    Connection(io::Error),
    /// Reading input or writing output failed.
    Local(io::Error),
}

impl ClientError {
    /// Our own output was closed (`tcp_client ... | head -c1`): not worth a
    /// message, as for any Unix filter.
    pub fn is_broken_output(&self) -> bool {
        matches!(self, ClientError::Local(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Resolve { target, err } => write!(f, "cannot resolve {target}: {}", go_message(err)),
            ClientError::Dial {
                target,
                port,
                err,
                attempts,
                timeout,
            } => {
                if net_error::is_timeout(Op::Dial, err) {
                    write!(
                        f,
                        "Error dialing {target}: timed out after {} (--timeout)",
                        format_duration(*timeout)
                    )?;
                } else {
                    write!(f, "Error dialing {target}: {}", go_message(err))?;
                }
                if *attempts > 1 {
                    write!(f, " (after {attempts} attempts)")?;
                }
                if err.kind() == io::ErrorKind::ConnectionRefused && *port == crate::protocol::DEFAULT_PORT {
                    write!(f, "; is the server running? start it with `simple_tcp_server`")?;
                }
                Ok(())
            }
            ClientError::TimedOut { what, after, attempts } => {
                write!(f, "{what} timed out after {} (--timeout)", format_duration(*after))?;
                if *attempts > 1 {
                    write!(f, ", {attempts} times")?;
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
    /// Keep retrying a refused connection until this much time has passed;
    /// the last try is made at that moment.
    pub wait: Option<Duration>,
    /// Bound on each connect attempt and each write.
    pub timeout: Duration,
    /// The first pause before a retry (doubled each time, up to 500 ms).
    pub backoff: Duration,
    /// The whole operation ends by then: no pause runs past it, no attempt
    /// starts after it, and no attempt may take longer than what is left.
    pub deadline: Option<Instant>,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            retries: 3,
            wait: None,
            timeout: Duration::from_secs(10),
            backoff: FIRST_BACKOFF,
            deadline: None,
        }
    }
}

impl RetryPolicy {
    /// The bound for the next attempt: `timeout`, or less if the deadline
    /// is closer. `None` once the deadline has passed.
    pub fn attempt_timeout(&self) -> Option<Duration> {
        match self.deadline {
            None => Some(self.timeout),
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                (!left.is_zero()).then(|| left.min(self.timeout))
            }
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
/// retried until that much time has passed, the last time at that moment;
/// anything else fails at once. Nothing runs past `policy.deadline`.
pub fn retry<T>(
    policy: &RetryPolicy,
    op: Op,
    what: &str,
    mut attempt: impl FnMut() -> io::Result<T>,
) -> Result<T, Failed> {
    let wait_until = policy.wait.map(|w| Instant::now() + w);
    let mut retries = 0;
    let mut attempts = 0;
    let mut backoff = policy.backoff;
    loop {
        attempts += 1;
        let err = match attempt() {
            Ok(value) => return Ok(value),
            Err(err) => err,
        };
        let now = Instant::now();
        if policy.deadline.is_some_and(|d| now >= d) {
            return Err(Failed { err, attempts });
        }
        let class = net_error::classify(op, &err);
        let waiting = wait_until.is_some_and(|d| now < d)
            && (class != Class::Permanent || err.kind() == io::ErrorKind::ConnectionRefused);
        let retrying = class != Class::Permanent && retries < policy.retries;
        if !(waiting || retrying) {
            return Err(Failed { err, attempts });
        }
        let mut pause = backoff;
        if waiting {
            // The last try lands on the wait's deadline, not a backoff short of it.
            if let Some(d) = wait_until {
                pause = pause.min(d - now);
            }
        } else {
            retries += 1;
        }
        if let Some(d) = policy.deadline {
            pause = pause.min(d - now);
        }
        info!("{what}: {}; retrying in {pause:?}", go_message(&err));
        thread::sleep(pause);
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Writes all of `data`, each write bounded by `policy.timeout` (and its
/// deadline), retrying temporary errors as `policy` allows.
pub fn write_with_retry(stream: &mut TcpStream, data: &[u8], policy: &RetryPolicy) -> Result<(), ClientError> {
    let policy = RetryPolicy {
        wait: None,
        ..policy.clone()
    };
    let timed_out = |attempts| ClientError::TimedOut {
        what: "write",
        after: policy.timeout,
        attempts,
    };
    let mut sent = 0;
    while sent < data.len() {
        let result = retry(&policy, Op::Io, "write", || {
            let bound = policy
                .attempt_timeout()
                .ok_or_else(|| io::Error::from(io::ErrorKind::TimedOut))?;
            stream.set_write_timeout(Some(bound))?;
            stream.write(&data[sent..])
        });
        match result {
            Ok(0) => return Err(ClientError::ServerClosed),
            Ok(n) => sent += n,
            Err(Failed { err, .. }) if err.kind() == io::ErrorKind::BrokenPipe => {
                return Err(ClientError::ServerClosed);
            }
            Err(Failed { err, attempts }) if net_error::is_timeout(Op::Io, &err) => return Err(timed_out(attempts)),
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
        let dial_error = |port: u16, err| ClientError::Dial {
            target: format!("tcp 127.0.0.1:{port}"),
            port,
            err,
            attempts: 1,
            timeout: Duration::from_secs(10),
        };
        assert_eq!(
            dial_error(50000, refused).to_string(),
            "Error dialing tcp 127.0.0.1:50000: connection refused; is the server running? \
             start it with `simple_tcp_server`"
        );
        // The hint is for our server's port only.
        let refused = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(
            dial_error(8080, refused).to_string(),
            "Error dialing tcp 127.0.0.1:8080: connection refused"
        );
    }

    #[test]
    fn timeouts_name_the_option_not_the_errno() {
        let e = ClientError::Dial {
            target: "tcp 10.0.0.1:80".into(),
            port: 80,
            err: io::Error::from_raw_os_error(libc::EAGAIN),
            attempts: 4,
            timeout: Duration::from_millis(1500),
        };
        assert_eq!(
            e.to_string(),
            "Error dialing tcp 10.0.0.1:80: timed out after 1500ms (--timeout) (after 4 attempts)"
        );
        let e = ClientError::TimedOut {
            what: "write",
            after: Duration::from_secs(10),
            attempts: 1,
        };
        assert_eq!(e.to_string(), "write timed out after 10s (--timeout)");
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
    fn wait_makes_a_last_try_at_its_deadline() {
        // When the next backoff would pass the deadline, the wait makes one
        // last attempt at the deadline instead of giving up before it (so
        // `--wait 2s` waits 2 s, not 1.76 s). Backoffs 1, 2, 4 ... ms
        // against a 150 ms wait: the last attempt must come at the deadline.
        let policy = RetryPolicy {
            wait: Some(Duration::from_millis(150)),
            backoff: Duration::from_millis(40),
            ..quick(0)
        };
        let start = Instant::now();
        let mut last = start;
        let result: Result<(), Failed> = retry(&policy, Op::Dial, "test", || {
            last = Instant::now();
            Err(io::Error::from_raw_os_error(libc::ECONNREFUSED))
        });
        assert!(result.is_err());
        assert!(
            last >= start + Duration::from_millis(150),
            "last try {:?} after the start, before the wait's end",
            last - start
        );
    }

    #[test]
    fn nothing_runs_past_the_deadline() {
        let policy = RetryPolicy {
            deadline: Some(Instant::now()),
            ..quick(5)
        };
        let os = io::Error::from_raw_os_error;
        let (result, calls) = scripted(&policy, vec![Err(os(libc::EINTR)), Ok(1)]);
        assert_eq!((result.is_err(), calls), (true, 1));
        assert_eq!(policy.attempt_timeout(), None);
    }

    #[test]
    fn write_timeouts_are_retried_then_reported() {
        // A server that never reads, and a write that cannot finish.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let _server_side = listener.accept().expect("accept");
        let policy = RetryPolicy {
            timeout: Duration::from_millis(20),
            ..quick(2)
        };
        let big = vec![0u8; 64 << 20];
        match write_with_retry(&mut client, &big, &policy) {
            Err(e @ ClientError::TimedOut { attempts: 3, .. }) => {
                assert_eq!(e.to_string(), "write timed out after 20ms (--timeout), 3 times");
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
