//! Go's `net.Error` classification, for Rust's `io::Error`: is an error a
//! timeout, temporary (worth retrying after a pause), or permanent?
//!
//! Go's runtime calls an errno a timeout when it is `EAGAIN`/`EWOULDBLOCK`
//! or `ETIMEDOUT`, and temporary when it is a timeout or `EINTR`, `EMFILE`,
//! `ENFILE`; on `accept` it also treats `ECONNRESET` and `ECONNABORTED` as
//! temporary (golang/go#6163). We add `ENOBUFS` and `ENOMEM`, which on Linux
//! are transient shortages as well.
//!
//! The server's accept loop needs one more distinction, [`AcceptAction`]:
//! an error that belongs to the one connection being accepted (retry at
//! once), a shortage of descriptors or memory (back off, keep serving), or a
//! broken listener (the only accept error that ends the server).

use std::io;

/// The operation that failed: Go classifies some errors by operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Accepting a connection on a listener.
    Accept,
    /// Dialling (connecting) to a server.
    Dial,
    /// Reading from or writing to a connection.
    Io,
}

/// What kind of error, in Go's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// `Timeout()` is true (and so is `Temporary()`).
    Timeout,
    /// `Temporary()` is true: retrying after a pause may succeed.
    Temporary,
    /// Neither: retrying will not help.
    Permanent,
}

/// Classifies `err`, which `op` returned, as Go's `net.Error` would.
pub fn classify(op: Op, err: &io::Error) -> Class {
    if let Some(errno) = err.raw_os_error() {
        return classify_errno(op, errno);
    }
    match err.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Class::Timeout,
        io::ErrorKind::Interrupted => Class::Temporary,
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted if op == Op::Accept => Class::Temporary,
        _ => Class::Permanent,
    }
}

/// Classifies a raw errno (see [`classify`]).
pub fn classify_errno(op: Op, errno: i32) -> Class {
    match errno {
        libc::EAGAIN | libc::ETIMEDOUT => Class::Timeout,
        libc::EINTR | libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM => Class::Temporary,
        libc::ECONNRESET | libc::ECONNABORTED if op == Op::Accept => Class::Temporary,
        // EWOULDBLOCK is EAGAIN on Linux; kept for platforms where it is not.
        #[allow(unreachable_patterns)]
        libc::EWOULDBLOCK => Class::Timeout,
        _ => Class::Permanent,
    }
}

/// Go's `Timeout()`.
pub fn is_timeout(op: Op, err: &io::Error) -> bool {
    classify(op, err) == Class::Timeout
}

/// Go's `Temporary()`: true for timeouts too.
pub fn is_temporary(op: Op, err: &io::Error) -> bool {
    classify(op, err) != Class::Permanent
}

/// What the accept loop does after `accept` fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptAction {
    /// The error belongs to the connection being accepted (it was reset or
    /// aborted before we took it, or a network error was pending on it):
    /// accept the next one at once.
    Retry,
    /// Out of descriptors, buffers or memory: stop accepting for a moment
    /// and keep serving the clients already connected.
    Backoff,
    /// The listener itself is unusable: the server cannot go on.
    Fatal,
}

/// Decides what to do about an `accept` error.
pub fn accept_action(err: &io::Error) -> AcceptAction {
    match err.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => AcceptAction::Backoff,
        // accept(2): "Linux accept() passes already-pending network errors on
        // the new socket as an error code from accept() ... treat them like
        // EAGAIN by retrying": ENETDOWN, EPROTO, ENOPROTOOPT, EHOSTDOWN,
        // ENONET, EHOSTUNREACH, EOPNOTSUPP, ENETUNREACH. EPERM is a firewall
        // refusing this one connection.
        Some(
            libc::EINTR
            | libc::ECONNABORTED
            | libc::ECONNRESET
            | libc::ENETDOWN
            | libc::EPROTO
            | libc::ENOPROTOOPT
            | libc::EHOSTDOWN
            | libc::ENONET
            | libc::EHOSTUNREACH
            | libc::EOPNOTSUPP
            | libc::ENETUNREACH
            | libc::EPERM,
        ) => AcceptAction::Retry,
        // The listener is gone or was never one.
        Some(libc::EBADF | libc::EINVAL | libc::ENOTSOCK | libc::EFAULT) => AcceptAction::Fatal,
        // Anything else we have not met: assume it passes, and pause rather
        // than spin or die.
        Some(_) => AcceptAction::Backoff,
        None => match err.kind() {
            io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset => {
                AcceptAction::Retry
            }
            _ => AcceptAction::Backoff,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(errno: i32) -> io::Error {
        io::Error::from_raw_os_error(errno)
    }

    #[test]
    fn timeouts_as_go() {
        for errno in [libc::EAGAIN, libc::EWOULDBLOCK, libc::ETIMEDOUT] {
            for op in [Op::Accept, Op::Dial, Op::Io] {
                assert_eq!(classify(op, &os(errno)), Class::Timeout, "errno {errno}");
                assert!(is_timeout(op, &os(errno)));
                assert!(is_temporary(op, &os(errno)));
            }
        }
        assert_eq!(classify(Op::Io, &io::ErrorKind::TimedOut.into()), Class::Timeout);
    }

    #[test]
    fn temporaries_as_go() {
        for errno in [libc::EINTR, libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert_eq!(classify(Op::Dial, &os(errno)), Class::Temporary, "errno {errno}");
            assert!(!is_timeout(Op::Dial, &os(errno)));
        }
        // Reset and aborted are temporary only when accepting (golang/go#6163).
        for errno in [libc::ECONNRESET, libc::ECONNABORTED] {
            assert_eq!(classify(Op::Accept, &os(errno)), Class::Temporary);
            assert_eq!(classify(Op::Io, &os(errno)), Class::Permanent);
        }
    }

    #[test]
    fn permanents() {
        for errno in [
            libc::ECONNREFUSED,
            libc::EPIPE,
            libc::EADDRINUSE,
            libc::EACCES,
            libc::EHOSTUNREACH,
            libc::ENETUNREACH,
        ] {
            assert_eq!(classify(Op::Dial, &os(errno)), Class::Permanent, "errno {errno}");
            assert!(!is_temporary(Op::Dial, &os(errno)));
        }
        assert_eq!(classify(Op::Io, &io::ErrorKind::UnexpectedEof.into()), Class::Permanent);
    }

    #[test]
    fn accept_actions() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert_eq!(accept_action(&os(errno)), AcceptAction::Backoff);
        }
        for errno in [libc::ECONNABORTED, libc::EPROTO, libc::EINTR, libc::EPERM] {
            assert_eq!(accept_action(&os(errno)), AcceptAction::Retry);
        }
        for errno in [libc::EBADF, libc::EINVAL, libc::ENOTSOCK] {
            assert_eq!(accept_action(&os(errno)), AcceptAction::Fatal);
        }
    }
}
