//! The transcript: what each reactor prints, and how its lines reach the
//! one output.
//!
//! Each reactor owns a [`Transcript`]: the line formats (the chapter's text
//! lines, or JSON lines for log pipelines), the framer, and one reused
//! buffer of whole lines. The buffer is written out when it passes
//! [`FLUSH_AT`] bytes, and otherwise before the reactor's loop blocks (or,
//! with `--flush-lag`, at most that long after its first unwritten byte), so
//! that under load one `write` carries many messages while an interactive
//! reader sees each line at once.
//!
//! All reactors write to one sink behind a mutex, and a buffer is written
//! whole while the lock is held: lines are never split or interleaved,
//! whatever the sink is (a terminal, a pipe taking more than `PIPE_BUF` per
//! write, a file). A reactor that finds the output busy (another reactor
//! is writing) does not sleep on the lock: it goes on with the reads of its
//! wakeup and writes later, in one larger write, unless its buffer has
//! passed [`DEFER_UP_TO`]; before it polls again it writes everything,
//! waiting for the lock if need be. So a sink that blocks blocks every
//! reactor that has lines to write, a slow reader slows the clients down,
//! and nothing is lost.

pub mod json;
mod lines;
pub mod text;
pub mod unicode_table;

use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant, SystemTime};

use json::JsonLines;
use text::Framer;

/// Buffered bytes that trigger a write at once: the server checks after
/// every read block, so a bulk client's lines go out in one large write per
/// block while they are still in the cache, and many small messages are
/// gathered into writes of at least this size.
pub const FLUSH_AT: usize = 64 * 1024;

/// How far a reactor's buffer may grow past [`FLUSH_AT`] while another
/// reactor is writing, before this one waits for the output: with several
/// reactors, a reactor that found the output busy goes on reading instead
/// of sleeping on the lock (with one, the lock is always free).
pub const DEFER_UP_TO: usize = 1024 * 1024;

/// How long to wait before retrying an output that said `WouldBlock` (a
/// non-blocking pipe inherited from the parent).
const OUTPUT_RETRY: Duration = Duration::from_millis(1);

/// An error writing the transcript, as opposed to one of the server's own
/// (polling, the listener): the loop passes both up as `io::Error`, and
/// [`OutputError::of`] tells them apart, so the binary can say "stdout".
#[derive(Debug)]
pub struct OutputError(pub io::Error);

impl std::fmt::Display for OutputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for OutputError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl OutputError {
    /// Marks `e` as the output's, keeping its kind.
    pub fn wrap(e: io::Error) -> io::Error {
        if OutputError::of(&e).is_some() {
            return e;
        }
        io::Error::new(e.kind(), OutputError(e))
    }

    /// The output's error inside `e`, if `e` is one.
    pub fn of(e: &io::Error) -> Option<&io::Error> {
        e.get_ref()?.downcast_ref::<OutputError>().map(|o| &o.0)
    }
}

/// How the transcript is written (`--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// The chapter's lines: `Listening to:  ADDR`, `Connection from:  ADDR`,
    /// `<LEN:TEXT>`, `Closed connection:  ADDR`.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines: the same events, each
    /// with a timestamp and the client's address, and every frame's exact
    /// bytes.
    Json,
}

/// The line format a transcript writes, chosen once: frames cost one
/// branch per read block, not one per frame.
#[derive(Debug)]
enum Lines {
    /// `<LEN:TEXT>`.
    Text,
    /// `ADDR <LEN:TEXT>` (`--tag`).
    Tagged,
    /// JSON lines (`--format json`).
    Json(Box<JsonLines>),
}

/// One reactor's transcript writer.
#[derive(Debug)]
pub struct Transcript<'a, W: Write> {
    /// Where the transcript goes (stdout in the binary), shared by all
    /// reactors.
    sink: &'a Mutex<W>,
    /// Lines not yet written to `sink`.
    buf: Vec<u8>,
    /// When `buf` received its first unwritten byte.
    pending_since: Option<Instant>,
    /// Bytes written to `sink` so far.
    written: u64,
    /// Lines in `buf`.
    lines_pending: u64,
    /// Lines written to `sink` so far.
    lines_written: u64,
    /// Nanoseconds spent in writes to `sink` so far.
    write_ns: u64,
    /// Where the reactor publishes that a write is in flight (for a scrape
    /// while the output blocks).
    watch: Option<&'a crate::reactor::stats::Published>,
    /// Cuts blocks into text frame lines.
    framer: Framer,
    /// The line format.
    lines: Lines,
}

impl<'a, W: Write> Transcript<'a, W> {
    /// A transcript writing `format` lines to `sink`, cutting `max_read`-byte
    /// frames; text frames are escaped unless `raw` and tagged with the
    /// client when `tag` (JSON lines always carry the client, and `raw`
    /// means nothing to them).
    pub fn new(sink: &'a Mutex<W>, max_read: usize, raw: bool, tag: bool, format: Format) -> Transcript<'a, W> {
        let lines = match format {
            Format::Json => Lines::Json(Box::new(JsonLines::new(max_read))),
            Format::Text if tag => Lines::Tagged,
            Format::Text => Lines::Text,
        };
        Transcript {
            sink,
            // Grows (once) to what the threshold plus one read window's
            // lines take: about 400 KiB for text, more for escaped bytes.
            buf: Vec::with_capacity(FLUSH_AT * 3),
            pending_since: None,
            written: 0,
            lines_pending: 0,
            lines_written: 0,
            write_ns: 0,
            watch: None,
            framer: Framer::new(max_read, raw),
            lines,
        }
    }

    /// Publishes each write's start (and the bytes it carries) in `slot`
    /// before the write, so that a reader sees how long the output has
    /// been blocked.
    pub fn watch(&mut self, slot: &'a crate::reactor::stats::Published) {
        self.watch = Some(slot);
    }

    /// Lines written to the sink so far.
    pub fn lines_written(&self) -> u64 {
        self.lines_written
    }

    /// Nanoseconds spent writing to the sink so far.
    pub fn write_ns(&self) -> u64 {
        self.write_ns
    }

    /// Reads the wall clock for the events that follow, if the format
    /// prints it (JSON lines do; text lines cost nothing here). The reactor
    /// calls this once per wakeup.
    #[inline]
    pub fn read_clock(&mut self) {
        if let Lines::Json(json) = &mut self.lines {
            json.set_now(SystemTime::now());
        }
    }

    /// Sets the wall-clock time of the events that follow (JSON lines
    /// carry it), as [`Transcript::read_clock`] does with the clock's.
    #[inline]
    pub fn set_now(&mut self, now: SystemTime) {
        if let Lines::Json(json) = &mut self.lines {
            json.set_now(now);
        }
    }

    /// Bytes per frame.
    pub fn max_read(&self) -> usize {
        self.framer.max_read()
    }

    /// `Listening to:  ADDR`.
    pub fn listening(&mut self, addr: SocketAddr) {
        self.lines_pending += 1;
        match &mut self.lines {
            Lines::Json(json) => json.listening(&mut self.buf, addr),
            _ => self.addr_line("Listening to:  ", addr),
        }
    }

    /// `Connection from:  ADDR`.
    pub fn connected(&mut self, peer: SocketAddr) {
        self.lines_pending += 1;
        match &mut self.lines {
            Lines::Json(json) => json.connected(&mut self.buf, peer),
            _ => self.addr_line("Connection from:  ", peer),
        }
    }

    /// `Closed connection:  ADDR`.
    pub fn closed(&mut self, peer: SocketAddr) {
        self.lines_pending += 1;
        match &mut self.lines {
            Lines::Json(json) => json.closed(&mut self.buf, peer),
            _ => self.addr_line("Closed connection:  ", peer),
        }
    }

    /// The frame lines of `block`, bytes that one read from `peer`
    /// returned. Returns the number of frames.
    #[inline]
    pub fn frames(&mut self, peer: SocketAddr, block: &[u8]) -> u64 {
        let frames = self.frame_lines(peer, block);
        self.lines_pending += frames;
        frames
    }

    /// The frame lines of `block`, in the format chosen.
    #[inline]
    fn frame_lines(&mut self, peer: SocketAddr, block: &[u8]) -> u64 {
        match &mut self.lines {
            Lines::Text => self.framer.frame_block(&mut self.buf, &[], block),
            Lines::Tagged => {
                let mut tag_buf = [0u8; 64];
                let tag = format_tag(&mut tag_buf, peer);
                self.framer.frame_block(&mut self.buf, tag, block)
            }
            Lines::Json(json) => json.frame_block(&mut self.buf, peer, block),
        }
    }

    /// Appends `label` and the address, then a newline.
    fn addr_line(&mut self, label: &str, addr: SocketAddr) {
        let mut line = String::with_capacity(64);
        // Writing to a String cannot fail.
        let _ = write!(line, "{label}{addr}");
        self.buf.extend_from_slice(line.as_bytes());
        self.buf.push(b'\n');
    }

    /// The lines not yet written.
    pub fn pending_bytes(&self) -> &[u8] {
        &self.buf
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

    /// Writes the buffer if it has grown past [`FLUSH_AT`]. While another
    /// reactor holds the output and the buffer is under [`DEFER_UP_TO`],
    /// the write waits for a later call instead of the reactor sleeping on
    /// the lock: it goes on reading, and the lines go out in a larger write.
    #[inline]
    pub fn flush_if_full(&mut self) -> io::Result<()> {
        if self.buf.len() < FLUSH_AT {
            return Ok(());
        }
        let sink: &'a Mutex<W> = self.sink;
        let guard = if self.buf.len() < DEFER_UP_TO {
            match sink.try_lock() {
                Ok(guard) => guard,
                Err(TryLockError::WouldBlock) => return Ok(()),
                Err(TryLockError::Poisoned(_)) => return Err(OutputError::wrap(poisoned())),
            }
        } else {
            sink.lock().map_err(|_| OutputError::wrap(poisoned()))?
        };
        self.write_out(guard).map_err(OutputError::wrap)
    }

    /// Writes everything buffered to the sink and flushes the sink. An
    /// error is marked as the output's (see [`OutputError`]).
    pub fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let sink: &'a Mutex<W> = self.sink;
        let guard = sink.lock().map_err(|_| OutputError::wrap(poisoned()))?;
        self.write_out(guard).map_err(OutputError::wrap)
    }

    /// Writes the whole buffer while `sink`'s lock is held: another
    /// reactor's lines come before or after these, never inside them.
    fn write_out(&mut self, mut sink: MutexGuard<'_, W>) -> io::Result<()> {
        let started = crate::reactor::shutdown::monotonic_ns();
        if let Some(slot) = self.watch {
            slot.writing(started, self.buf.len() as u64);
        }
        // A forced exit (a second signal) waits for this batch if it can.
        crate::reactor::shutdown::batch_started();
        let result = self.write_batch(&mut sink);
        crate::reactor::shutdown::batch_done();
        self.write_ns += crate::reactor::shutdown::monotonic_ns().saturating_sub(started);
        if let Some(slot) = self.watch {
            slot.writing(0, self.buf.len() as u64);
        }
        result
    }

    /// Writes the whole buffer to `sink` (the lock held).
    fn write_batch(&mut self, sink: &mut W) -> io::Result<()> {
        let mut done = 0;
        while done < self.buf.len() {
            match sink.write(&self.buf[done..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    done += n;
                    // A forced exit waits only for the line in flight.
                    crate::reactor::shutdown::exit_after_line(&self.buf[done..], |line| sink.write(line));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(OUTPUT_RETRY),
                Err(e) => {
                    self.buf.drain(..done);
                    return Err(e);
                }
            }
        }
        self.written += done as u64;
        self.lines_written += std::mem::take(&mut self.lines_pending);
        self.buf.clear();
        self.pending_since = None;
        sink.flush()
    }
}

/// The `Listening to:  ADDR` line (or the JSON `listening` event, stamped
/// now) in `format`: the first line of a transcript, for a process that
/// writes it without a reactor (the supervisor of `--workers`).
pub fn listening_line(format: Format, addr: SocketAddr) -> Vec<u8> {
    let sink = Mutex::new(Vec::new());
    let mut transcript = Transcript::new(&sink, crate::protocol::MAX_READ, false, false, format);
    transcript.read_clock();
    transcript.listening(addr);
    std::mem::take(&mut transcript.buf)
}

/// Writes a batch of whole lines to `out`, all of it: a write that would
/// block (a non-blocking stdout, as some process managers hand out) waits
/// until `out` takes bytes. A forced exit (a second signal) waits for the
/// line in flight only.
pub fn write_all_waiting(out: &mut std::fs::File, mut bytes: &[u8]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    crate::reactor::shutdown::batch_started();
    let result = loop {
        if bytes.is_empty() {
            break Ok(());
        }
        match out.write(bytes) {
            Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                bytes = &bytes[n..];
                crate::reactor::shutdown::exit_after_line(bytes, |line| out.write(line));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut pfd = libc::pollfd {
                    fd: out.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: poll reads and writes one pollfd through a pointer
                // to a live local. An error (EINTR) only means: try again.
                unsafe { libc::poll(&mut pfd, 1, -1) };
            }
            Err(e) => break Err(e),
        }
    };
    crate::reactor::shutdown::batch_done();
    result
}

/// The output's lock after a reactor panicked while holding it.
fn poisoned() -> io::Error {
    io::Error::other("another reactor failed while writing the transcript")
}

/// Formats `ADDR ` into `buf`, for `--tag`.
fn format_tag(buf: &mut [u8; 64], peer: SocketAddr) -> &[u8] {
    let mut cursor = io::Cursor::new(&mut buf[..]);
    // The longest address with a scope id is 55 bytes, so this fits.
    let _ = write!(cursor, "{peer} ");
    let len = cursor.position() as usize;
    &buf[..len]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_until_flushed() {
        let sink = Mutex::new(Vec::new());
        let mut t = Transcript::new(&sink, 25, false, false, Format::Text);
        t.connected("127.0.0.1:9".parse().expect("addr"));
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
        assert_eq!(*sink.lock().expect("lock"), b"Connection from:  127.0.0.1:9\n");
    }

    #[test]
    fn a_busy_output_defers_the_write_until_the_bound() {
        let sink = Mutex::new(Vec::new());
        let mut t = Transcript::new(&sink, 25, false, false, Format::Text);
        // Past FLUSH_AT and half way to DEFER_UP_TO.
        let frames = vec![b'x'; 25 * (FLUSH_AT / 31 + 1)];
        while t.pending() < DEFER_UP_TO / 2 {
            t.frames("127.0.0.1:9".parse().expect("addr"), &frames);
        }
        assert!(t.pending() < DEFER_UP_TO);
        std::thread::scope(|s| {
            // Another reactor is writing: the lines wait, the call returns.
            // (Code that waited for the lock instead would write only after
            // the holder gives up, and fail the check.)
            let (locked_tx, locked_rx) = std::sync::mpsc::channel();
            let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
            let sink = &sink;
            s.spawn(move || {
                let _busy = sink.lock().expect("lock");
                locked_tx.send(()).expect("send");
                let _ = done_rx.recv_timeout(Duration::from_secs(10));
            });
            locked_rx.recv().expect("locked");
            t.flush_if_full().expect("deferred");
            assert_eq!(t.written(), 0);
            assert!(t.pending() >= FLUSH_AT);
            let _ = done_tx.send(());
        });
        // The output is free again: the next call writes everything.
        let first = t.pending();
        t.flush_if_full().expect("written");
        assert_eq!((t.written(), t.pending()), (first as u64, 0));
        assert_eq!(sink.lock().expect("lock").len(), first);

        // Past DEFER_UP_TO the reactor waits for the output instead: the
        // call returns only once it has written, whenever the lock frees.
        while t.pending() < DEFER_UP_TO {
            t.frames("127.0.0.1:9".parse().expect("addr"), &frames);
        }
        let second = t.pending();
        let busy = sink.lock().expect("lock");
        let written = std::thread::scope(|s| {
            let (tx, rx) = std::sync::mpsc::channel();
            s.spawn(move || {
                t.flush_if_full().expect("written");
                tx.send(t.written()).expect("send");
            });
            // While the lock is held the call must not return (code that
            // deferred would return here with nothing written).
            assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
            drop(busy);
            rx.recv().expect("written")
        });
        assert_eq!(written, (first + second) as u64);
        assert_eq!(sink.lock().expect("lock").len(), first + second);
    }

    #[test]
    fn a_nonblocking_output_that_is_full_is_waited_for() {
        use std::io::Read;
        use std::os::fd::{AsRawFd, OwnedFd};
        let (mut reader, writer) = std::io::pipe().expect("pipe");
        let mut out = std::fs::File::from(OwnedFd::from(writer));
        // SAFETY: F_GETFL/F_SETFL on a pipe this test owns.
        unsafe {
            let fd = out.as_raw_fd();
            libc::fcntl(fd, libc::F_SETFL, libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK);
        }
        // Four times what a pipe holds: the writes must wait, not fail.
        let data: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let read = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut chunk = [0u8; 4096];
            while got.len() < expected.len() {
                std::thread::sleep(Duration::from_micros(200));
                let n = reader.read(&mut chunk).expect("read");
                got.extend_from_slice(&chunk[..n]);
            }
            got
        });
        write_all_waiting(&mut out, &data).expect("written whole");
        assert_eq!(read.join().expect("reader"), data);
    }

    #[test]
    fn tags_fit() {
        let mut buf = [0u8; 64];
        let v6: SocketAddr = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535"
            .parse()
            .expect("addr");
        let tag = format_tag(&mut buf, v6);
        assert_eq!(tag, format!("{v6} ").as_bytes());
    }

    #[test]
    fn tagged_frames() {
        let sink = Mutex::new(Vec::new());
        let mut t = Transcript::new(&sink, 3, false, true, Format::Text);
        assert_eq!(t.frames("127.0.0.1:1".parse().expect("addr"), b"abcd"), 2);
        assert_eq!(t.pending_bytes(), b"127.0.0.1:1 <3:abc>\n127.0.0.1:1 <1:d>\n");
    }

    #[test]
    fn json_lines_carry_every_event() {
        let sink = Mutex::new(Vec::new());
        // `raw` and `tag` change nothing in JSON.
        let mut t = Transcript::new(&sink, 3, true, true, Format::Json);
        let at = std::time::UNIX_EPOCH + Duration::from_micros(1_795_637_703_123_456);
        t.set_now(at);
        let server: SocketAddr = "127.0.0.1:50000".parse().expect("addr");
        let peer: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        t.listening(server);
        t.connected(peer);
        assert_eq!(t.frames(peer, b"ab\ncd"), 2);
        t.closed(peer);
        t.flush().expect("flush to a Vec");
        let out = String::from_utf8(sink.lock().expect("lock").clone()).expect("UTF-8");
        let events: Vec<(json::EventKind, SocketAddr, Vec<u8>)> = out
            .lines()
            .map(|l| json::parse_line(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .inspect(|e| assert_eq!(e.ts, at))
            .map(|e| (e.kind, e.addr, e.bytes))
            .collect();
        use json::EventKind::*;
        assert_eq!(
            events,
            [
                (Listening, server, vec![]),
                (Connect, peer, vec![]),
                (Frame, peer, b"ab\n".to_vec()),
                (Frame, peer, b"cd".to_vec()),
                (Close, peer, vec![]),
            ]
        );
    }
}
