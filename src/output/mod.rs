//! The transcript sink: frame lines and connection lines are appended to one
//! reused buffer and written to the output (any `Write`) in large blocks.
//!
//! The buffer is written out when it passes [`FLUSH_AT`] bytes, and otherwise
//! before the server's loop blocks (or, with `--flush-lag`, at most that long
//! after its first unwritten byte), so that under load one `write` carries
//! many messages while an interactive reader sees each line at once.

pub mod text;
pub mod unicode_table;

use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Buffered bytes that trigger a write at once: the server checks after
/// every read block, so a bulk client's lines go out in one large write per
/// block while they are still in the cache, and many small messages are
/// gathered into writes of at least this size.
pub const FLUSH_AT: usize = 64 * 1024;

/// How long to wait before retrying an output that said `WouldBlock` (a
/// non-blocking pipe inherited from the parent).
const OUTPUT_RETRY: Duration = Duration::from_millis(1);

/// The buffered transcript writer.
#[derive(Debug)]
pub struct Transcript<W: Write> {
    /// Where the transcript goes (stdout in the binary).
    sink: W,
    /// Lines not yet written to `sink`.
    buf: Vec<u8>,
    /// When `buf` received its first unwritten byte.
    pending_since: Option<Instant>,
    /// Bytes written to `sink` so far.
    written: u64,
}

impl<W: Write> Transcript<W> {
    /// A transcript writing to `sink`.
    pub fn new(sink: W) -> Transcript<W> {
        Transcript {
            sink,
            // Room for the threshold plus one read block's lines.
            buf: Vec::with_capacity(FLUSH_AT * 3),
            pending_since: None,
            written: 0,
        }
    }

    /// The buffer to append lines to.
    #[inline]
    pub fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Appends `label` and the address, then a newline: `Connection from:  ADDR`.
    pub fn addr_line(&mut self, label: &str, addr: SocketAddr) {
        let mut line = String::with_capacity(64);
        // Writing to a String cannot fail.
        let _ = write!(line, "{label}{addr}");
        self.buf.extend_from_slice(line.as_bytes());
        self.buf.push(b'\n');
    }

    /// Bytes waiting to be written.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Bytes written to the sink so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Notes the time of the first unwritten byte, if not noted yet.
    pub fn stamp(&mut self, now: Instant) {
        if self.pending_since.is_none() && !self.buf.is_empty() {
            self.pending_since = Some(now);
        }
    }

    /// When the buffered lines must be written by, if any are buffered.
    pub fn deadline(&self, lag: Duration) -> Option<Instant> {
        self.pending_since.map(|t| t + lag)
    }

    /// Writes the buffer if it has grown past [`FLUSH_AT`].
    #[inline]
    pub fn flush_if_full(&mut self) -> io::Result<()> {
        if self.buf.len() >= FLUSH_AT {
            self.flush()
        } else {
            Ok(())
        }
    }

    /// Writes everything buffered to the sink and flushes the sink.
    pub fn flush(&mut self) -> io::Result<()> {
        let mut done = 0;
        while done < self.buf.len() {
            match self.sink.write(&self.buf[done..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(OUTPUT_RETRY),
                Err(e) => {
                    self.buf.drain(..done);
                    return Err(e);
                }
            }
        }
        self.written += done as u64;
        self.buf.clear();
        self.pending_since = None;
        self.sink.flush()
    }

    /// The sink, for callers that need it back.
    pub fn into_inner(self) -> W {
        self.sink
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_until_flushed() {
        let mut t = Transcript::new(Vec::new());
        t.addr_line("Connection from:  ", "127.0.0.1:9".parse().expect("addr"));
        assert_eq!(t.pending(), 30);
        let now = Instant::now();
        t.stamp(now);
        assert_eq!(
            t.deadline(Duration::from_millis(1)),
            Some(now + Duration::from_millis(1))
        );
        t.flush().expect("flush to a Vec");
        assert_eq!(t.deadline(Duration::from_millis(1)), None);
        assert_eq!(t.written(), 30);
        assert_eq!(t.into_inner(), b"Connection from:  127.0.0.1:9\n");
    }
}
