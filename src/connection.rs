//! One client's state. It lives in the server's slab, once per connection,
//! so every byte counts: the socket, the peer's address (needed for the
//! `Closed connection` line after a reset, when the kernel no longer knows
//! it), how much of the greeting is out, when the client last sent, and a few
//! flags. No buffer: the server reads through one shared block, and frames
//! never span reads, so nothing of a connection's data outlives its read.

use std::io::{self, Write};
use std::net::SocketAddr;

use mio::net::TcpStream;

/// The connection sits in the server's run queue (its read budget ran out
/// with data left), so it is revisited without a new event.
pub(crate) const QUEUED: u8 = 1;
/// The peer has closed its side (or the socket has an error): a short read
/// no longer means "drained", so read on to end of file.
pub(crate) const PEER_CLOSED: u8 = 2;
/// Registered for WRITABLE too, because the greeting is not all out.
pub(crate) const WANTS_WRITE: u8 = 4;

/// A connected client.
#[derive(Debug)]
pub(crate) struct Connection {
    /// The socket, registered with the server's poll under this slab key.
    pub(crate) stream: TcpStream,
    /// The client's address, for the transcript and the logs.
    pub(crate) peer: SocketAddr,
    /// Bytes of the greeting written so far.
    pub(crate) greeting_sent: u32,
    /// When the client last sent data, in the server's coarse milliseconds
    /// (wrapping); drives `--idle-timeout`.
    pub(crate) last_active: u32,
    /// [`QUEUED`], [`PEER_CLOSED`], [`WANTS_WRITE`].
    pub(crate) flags: u8,
}

impl Connection {
    pub(crate) fn new(stream: TcpStream, peer: SocketAddr, now_ms: u32) -> Connection {
        Connection {
            stream,
            peer,
            greeting_sent: 0,
            last_active: now_ms,
            flags: 0,
        }
    }

    /// Whether `flag` is set.
    #[inline]
    pub(crate) fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// Writes what remains of `greeting`. `Ok(true)` once it is all out,
    /// `Ok(false)` if the socket is full (finish on WRITABLE).
    pub(crate) fn write_greeting(&mut self, greeting: &[u8]) -> io::Result<bool> {
        loop {
            let sent = self.greeting_sent as usize;
            if sent >= greeting.len() {
                return Ok(true);
            }
            match self.stream.write(&greeting[sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                // Greetings are capped well below 4 GiB, so this cannot wrap.
                Ok(n) => self.greeting_sent += n as u32,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Gives up on the greeting (the peer cannot take it).
    pub(crate) fn abandon_greeting(&mut self, greeting: &[u8]) {
        self.greeting_sent = greeting.len() as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_small() {
        // The budget is 96 bytes of server memory per connection; the slab
        // entry is most of it.
        assert!(
            std::mem::size_of::<Connection>() <= 48,
            "{}",
            std::mem::size_of::<Connection>()
        );
        assert!(std::mem::size_of::<slab::Slab<Connection>>() <= 48);
    }
}
