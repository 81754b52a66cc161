//! Reference loops for the load measurements: what the
//! kernel alone costs, measured in the same session as `simple_tcp_server`,
//! with the server's own I/O method, so that "server against loop" compares
//! like with like.
//!
//! ```text
//! cargo run --release --example reference_server -- MODE [HOST] [PORT]
//! ```
//!
//! Every mode is a bare mio loop over a slab holding only the socket and two
//! flags; every mode greets with `Let's GO!\n` so `tcp_load` drives it
//! exactly as it drives the server, and prints `Listening to:  ADDR` to
//! stderr. Every mode does I/O as the server does (src/reactor/mod.rs):
//!
//! - reads of `config::DEFAULT_READ_BUFFER` bytes rounded down to whole
//!   25-byte frames, into one buffer;
//! - a short read counts as drained unless the peer has closed (then it
//!   reads on to end of file); `WouldBlock` ends a drain, `Interrupted` is
//!   retried;
//! - a per-wakeup read budget of `config::DEFAULT_READ_BUDGET` per
//!   connection in whole frames (no read asks for more than it leaves), with
//!   a run queue for connections cut off by it, and an accept budget of 256
//!   per pass;
//! - output (where there is any) written when it passes 64 KiB
//!   (`output::FLUSH_AT`), checked every 256 KiB framing window, and before
//!   the loop blocks.
//!
//! The modes:
//!
//! - `bare`: prints nothing: the kernel's TCP work and the loop, nothing
//!   else.
//! - `write-limit`: for each read, writes as many filler bytes to stdout as
//!   the server's frames would take (n + 6 per 25-byte frame, one less for
//!   a short frame of 1 to 9 bytes): the kernel's read and write work with
//!   no formatting at all.
//! - `write-limit-json`: `write-limit` with `--format json`'s line sizes:
//!   n + 82 + the peer address's length in filler bytes per 25-byte frame
//!   (a `{"ts":...,"event":"frame","peer":...,"len":25,"text":...}` line,
//!   122 bytes for `127.0.0.1:PPPPP`; one less for a short frame of 1 to 9
//!   bytes), checked every 64 KiB framing window as the server checks JSON
//!   lines: what a JSON flood would reach, with these reads and writes, if
//!   encoding cost nothing.
//! - `bare-coalesce`, `write-limit-coalesce`: the same, plus the server's
//!   `--coalesce` pause (its default window, `config::DEFAULT_COALESCE`),
//!   with the server's rule exactly: after a wakeup that found fewer events
//!   than the event buffer holds, read less than 16 KiB, left no work
//!   queued, and followed another such wakeup within two windows, with no
//!   connection accepted or closed in the last ten windows, write what is
//!   owed, sleep one window, then poll without waiting.
//!
//! They stop on SIGINT/SIGTERM. Not a product: no error handling beyond
//! closing a connection that fails.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token};
use simple_tcp_server::config::{DEFAULT_COALESCE, DEFAULT_READ_BUDGET, DEFAULT_READ_BUFFER};
use simple_tcp_server::output::FLUSH_AT;
use slab::Slab;

const LISTENER: Token = Token(usize::MAX);
const SIGNALS: Token = Token(usize::MAX - 1);
/// Frame bytes and per-frame overhead of `<25:...>\n`.
const FRAME: usize = 25;
const OVERHEAD: usize = 6;
/// A JSON frame line's bytes beside the frame and the peer address:
/// `{"ts":"` (7), the timestamp (27), `","event":"frame","peer":"` (26),
/// `","len":` (8), `25` (2), `,"text":"` (9) and `"}\n` (3).
const JSON_OVERHEAD: usize = 82;
/// The longest address `Display` writes (`[v6%scope]:port`).
const MAX_ADDR_LEN: usize = 64;
/// The server's read block: its default read size in whole frames.
const READ_LEN: usize = DEFAULT_READ_BUFFER / FRAME * FRAME;
/// The server's framing window (`FRAME_WINDOW` in src/reactor/mod.rs, in
/// whole frames): output is checked against the threshold after each.
const FRAME_WINDOW: usize = 256 * 1024 / FRAME * FRAME;
/// The server's framing window for JSON lines (a quarter).
const JSON_FRAME_WINDOW: usize = 64 * 1024 / FRAME * FRAME;
/// The server's event buffer (`EVENTS_CAPACITY`).
const EVENTS_CAPACITY: usize = 1024;
/// The server's accept budget per pass (`ACCEPT_BUDGET`).
const ACCEPT_BUDGET: usize = 256;
/// The server's coalescing rule (`COALESCE_MAX_BYTES`,
/// `CHURN_QUIET_WINDOWS`): a wakeup that read this much is bulk, and the
/// loop does not pause for this many windows after a connection came or went.
const COALESCE_MAX_BYTES: usize = 16 * 1024;
const CHURN_QUIET_WINDOWS: u32 = 10;

#[derive(Clone, Copy)]
struct Mode {
    /// Write filler bytes for the frames (`write-limit`).
    output: bool,
    /// JSON line sizes and window (`write-limit-json`).
    json: bool,
    /// The coalescing window; zero for none.
    coalesce: Duration,
}

impl Mode {
    fn parse(name: &str) -> Option<Mode> {
        let (output, json, coalesce) = match name {
            "bare" => (false, false, false),
            "bare-coalesce" => (false, false, true),
            "write-limit" => (true, false, false),
            "write-limit-json" => (true, true, false),
            "write-limit-coalesce" => (true, false, true),
            _ => return None,
        };
        Some(Mode {
            output,
            json,
            coalesce: if coalesce { DEFAULT_COALESCE } else { Duration::ZERO },
        })
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(mode) = args.first().and_then(|m| Mode::parse(m)) else {
        eprintln!(
            "usage: reference_server bare|bare-coalesce|write-limit|write-limit-json|write-limit-coalesce [HOST] [PORT]"
        );
        return ExitCode::from(2);
    };
    let host = args.get(1).map(String::as_str).unwrap_or("127.0.0.1");
    let port: u16 = match args.get(2).map(|p| p.parse()) {
        None => 50000,
        Some(Ok(p)) => p,
        Some(Err(_)) => {
            eprintln!("reference_server: bad port");
            return ExitCode::from(2);
        }
    };
    match run(mode, host, port) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("reference_server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A connection: the socket, the server's two read flags and the filler
/// bytes per frame.
struct Conn {
    stream: TcpStream,
    /// Filler bytes per frame beside the frame's own (fits in the padding).
    overhead: u8,
    /// The peer has closed (a short read no longer means drained).
    peer_closed: bool,
    /// In the run queue.
    queued: bool,
}

struct Loop {
    mode: Mode,
    listener: TcpListener,
    conns: Slab<Conn>,
    run_queue: VecDeque<usize>,
    /// The last accept pass stopped at its budget.
    accept_ready: bool,
    buf: Vec<u8>,
    /// Filler bytes owed to stdout.
    pending: usize,
    filler: Vec<u8>,
    out: File,
    /// Coalescing state, as the server keeps it.
    gathered: bool,
    wake_bytes: usize,
    last_small_wake: Option<Instant>,
    last_churn: Option<Instant>,
    now: Instant,
}

fn run(mode: Mode, host: &str, port: u16) -> io::Result<()> {
    simple_tcp_server::limits::raise_nofile_limit()?;
    let addr: SocketAddr = simple_tcp_server::listen::resolve(host, port)?[0];
    let mut listener = TcpListener::from_std(simple_tcp_server::listen::listen(addr, 1024)?);
    let mut poll = Poll::new()?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut signals = signal_hook_mio::v1_0::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])?;
    poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
    eprintln!("Listening to:  {}", listener.local_addr()?);

    // Straight to the descriptor, as the server writes: std's stdout is
    // line-buffered and would scan every block for newlines.
    let out = File::from(std::os::fd::AsFd::as_fd(&io::stdout()).try_clone_to_owned()?);
    let mut state = Loop {
        mode,
        listener,
        conns: Slab::new(),
        run_queue: VecDeque::new(),
        accept_ready: false,
        buf: vec![0u8; READ_LEN],
        pending: 0,
        // The most owed at once: just under the threshold plus one window's
        // frames.
        filler: if !mode.output {
            Vec::new()
        } else if mode.json {
            vec![
                b'.';
                FLUSH_AT + JSON_FRAME_WINDOW + JSON_FRAME_WINDOW.div_ceil(FRAME) * (JSON_OVERHEAD + MAX_ADDR_LEN)
            ]
        } else {
            vec![b'.'; FLUSH_AT + FRAME_WINDOW + FRAME_WINDOW.div_ceil(FRAME) * OVERHEAD]
        },
        out,
        gathered: false,
        wake_bytes: 0,
        last_small_wake: None,
        last_churn: None,
        now: Instant::now(),
    };
    let mut events = Events::with_capacity(EVENTS_CAPACITY);
    loop {
        // Before blocking: write what is owed (the server's flush lag is 0).
        state.write_pending()?;
        let timeout = (state.busy() || state.gathered).then_some(Duration::ZERO);
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        state.now = Instant::now();
        let registry = poll.registry();
        let mut woken = 0;
        for event in events.iter() {
            woken += 1;
            match event.token() {
                LISTENER => state.accept(registry)?,
                SIGNALS => return state.write_pending(),
                Token(key) => state.connection_event(key, event),
            }
        }
        state.after_events(registry)?;
        state.coalesce(woken)?;
    }
}

impl Loop {
    /// Work is queued that must not wait for an event.
    fn busy(&self) -> bool {
        !self.run_queue.is_empty() || self.accept_ready
    }

    fn accept(&mut self, registry: &Registry) -> io::Result<()> {
        self.accept_ready = false;
        for _ in 0..ACCEPT_BUDGET {
            match self.listener.accept() {
                Ok((mut stream, peer)) => {
                    let entry = self.conns.vacant_entry();
                    registry.register(&mut stream, Token(entry.key()), Interest::READABLE)?;
                    let _ = stream.write(simple_tcp_server::protocol::GREETING);
                    let overhead = if self.mode.json {
                        JSON_OVERHEAD + peer.to_string().len().min(MAX_ADDR_LEN)
                    } else {
                        OVERHEAD
                    };
                    entry.insert(Conn {
                        stream,
                        overhead: overhead as u8,
                        peer_closed: false,
                        queued: false,
                    });
                    self.last_churn = Some(self.now);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(_) => return Ok(()),
            }
        }
        self.accept_ready = true;
        Ok(())
    }

    fn connection_event(&mut self, key: usize, event: &Event) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if event.is_read_closed() || event.is_error() {
            conn.peer_closed = true;
        }
        if (event.is_readable() || event.is_read_closed() || event.is_error()) && !conn.queued {
            self.read_ready(key);
        }
    }

    /// The run queue (one more budget each), then a paused accept pass.
    fn after_events(&mut self, registry: &Registry) -> io::Result<()> {
        for _ in 0..self.run_queue.len() {
            let Some(key) = self.run_queue.pop_front() else { break };
            match self.conns.get_mut(key) {
                Some(conn) if conn.queued => conn.queued = false,
                _ => continue,
            }
            self.read_ready(key);
        }
        if self.accept_ready {
            self.accept(registry)?;
        }
        Ok(())
    }

    /// Reads connection `key` until drained or out of budget, as the server
    /// does; closes it on end of file or error.
    fn read_ready(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let full = self.buf.len();
        let window = if self.mode.json {
            JSON_FRAME_WINDOW
        } else {
            FRAME_WINDOW
        };
        let overhead = usize::from(conn.overhead);
        // The budget in whole frames, as the server rounds it (down, at
        // least one); never ask for more than it leaves.
        let mut left = DEFAULT_READ_BUDGET.max(FRAME) / FRAME * FRAME;
        let close = loop {
            let want = left.min(full);
            match conn.stream.read(&mut self.buf[..want]) {
                Ok(0) => break true,
                Ok(n) => {
                    self.wake_bytes += n;
                    if self.mode.output {
                        for start in (0..n).step_by(window) {
                            let part = (n - start).min(window);
                            // A short last frame of 1 to 9 bytes spells
                            // its length with one digit, not two.
                            let one_digit = usize::from((1..10).contains(&(part % FRAME)));
                            self.pending += part + part.div_ceil(FRAME) * overhead - one_digit;
                            if self.pending >= FLUSH_AT {
                                // The transcript is stdout; a failure to
                                // write it shows in the measurement.
                                let _ = self.out.write_all(&self.filler[..self.pending]);
                                self.pending = 0;
                            }
                        }
                    }
                    if n < want && !conn.peer_closed {
                        break false;
                    }
                    left -= n;
                    if left == 0 {
                        conn.queued = true;
                        self.run_queue.push_back(key);
                        break false;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break true,
            }
        };
        if close {
            self.conns.remove(key);
            self.last_churn = Some(self.now);
        }
    }

    /// Writes the filler bytes owed.
    fn write_pending(&mut self) -> io::Result<()> {
        if self.pending > 0 {
            self.out.write_all(&self.filler[..self.pending])?;
            self.pending = 0;
        }
        Ok(())
    }

    /// The server's `Core::coalesce`, line for line.
    fn coalesce(&mut self, woken: usize) -> io::Result<()> {
        let window = self.mode.coalesce;
        let bulk = std::mem::take(&mut self.wake_bytes) >= COALESCE_MAX_BYTES;
        self.gathered = false;
        let small = woken > 0 && woken < EVENTS_CAPACITY && !bulk && !window.is_zero() && !self.busy();
        let previous = std::mem::replace(&mut self.last_small_wake, small.then_some(self.now));
        let steady = previous.is_some_and(|t| self.now.duration_since(t) <= window * 2);
        let churning = self
            .last_churn
            .is_some_and(|t| self.now.duration_since(t) <= window * CHURN_QUIET_WINDOWS);
        if small && steady && !churning {
            // Written before the pause, as the server writes what it read.
            self.write_pending()?;
            std::thread::sleep(window);
            self.gathered = true;
        }
        Ok(())
    }
}
