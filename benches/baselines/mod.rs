//! The designs a user would pick instead of the reactor, serving the same
//! protocol (greeting, 25-byte frames, `Connection from` / `<LEN:TEXT>` /
//! `Closed connection` lines) into the same kind of sink (a file on
//! /dev/null), set up the same way and framing the same way, so that a
//! comparison measures the concurrency design alone:
//!
//! - `Threads`: a thread per connection on `std::net`, the chapter's
//!   goroutine-per-client design in Rust, with a blocking listener;
//! - `TokioCurrent` / `TokioMulti`: a task per connection on tokio, on its
//!   one-thread runtime and on its default multi-thread runtime (one worker
//!   per core; the accept loop runs in `block_on`, as under `#[tokio::main]`).
//!
//! The reactor itself is started through the library's entry point
//! (`Server::from_listener` + `run`), exactly as the binary runs it.
//!
//! What every design shares:
//!
//! - **Setup outside the clock.** [`Design::start`] binds the listener,
//!   builds the runtime (and its workers), fills the buffer pool for the
//!   expected number of connections, and serves one warm-up connection
//!   ([`WARM_UP`] bytes: greeting, read, framing, write, close) before it
//!   returns, so the loop, runtime and buffers are running and touched
//!   before the bench starts its clock. Stopping (and the final write) is
//!   inside the clock for every design.
//! - **Reads and framing.** Reads of [`READ_LEN`] bytes (the reactor's read
//!   block); a block is framed [`FRAME_WINDOW`] bytes at a time with the
//!   library's `Framer`, and the lines are written once they pass
//!   [`FLUSH_AT`], while they are still in the cache, as the reactor does.
//! - **Buffers.** The reactor has one read block and one output buffer for
//!   all its connections. A thread or task needs its own; they come from a
//!   pool kept across connections and iterations ([`ConnBuffers`]), so after
//!   the warm-up no design allocates, zeroes or first-touches a buffer in
//!   the clock. (That flatters the baselines a little: a real
//!   thread-per-connection server allocates per connection.)
//!
//! What differs, by design: a thread or task frames into its own buffer and
//! hands the lines to one shared, locked sink ([`SharedSink`]), because
//! framing under the lock would serialise the threads; so lines of fewer
//! than [`FLUSH_AT`] bytes are copied once more into the shared buffer,
//! where the reactor frames straight into its output buffer. The shared
//! buffer is written when it passes [`FLUSH_AT`] and at stop (the reactor
//! also writes before its loop blocks: more writes, not fewer).
//!
//! These live with the benchmarks, not in the product.

#![allow(dead_code)]

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use simple_tcp_server::output::FLUSH_AT;
use simple_tcp_server::output::text::Framer;
use simple_tcp_server::{Config, GREETING, MAX_READ, Server};

/// Bytes per read in every design: the reactor's read block, rounded down
/// to whole frames as the reactor rounds it.
pub const READ_LEN: usize = (simple_tcp_server::config::DEFAULT_READ_BUFFER / MAX_READ) * MAX_READ;

/// Bytes of a read block framed at a time before the lines are written, as
/// the reactor frames (`FRAME_WINDOW` in src/reactor/mod.rs, rounded down to
/// whole frames): the window and its lines stay in a 1 MiB L2 cache.
pub const FRAME_WINDOW: usize = (256 * 1024 / MAX_READ) * MAX_READ;

/// Room for the threshold plus a window's lines, as the reactor's
/// transcript buffer starts (it grows on the first full window, and keeps
/// its size).
const OUT_CAPACITY: usize = FLUSH_AT * 3;

/// Bytes the warm-up connection sends: a whole read block, so that a read
/// block's worth of every buffer has been used once before the clock.
pub const WARM_UP: usize = READ_LEN;

/// How long the warm-up waits for the server's greeting and close.
const WARM_UP_PATIENCE: Duration = Duration::from_secs(60);

/// An idle server must not use more than this share of a core (the check
/// that caught the thread-per-connection baseline spinning on a
/// non-blocking accept: it used all of one).
const IDLE_CPU_SHARE: f64 = 0.1;

/// The designs under comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Design {
    /// The library's reactor, as the binary runs it.
    Reactor,
    /// The reactor reading literally 25 bytes per system call.
    Reactor25,
    /// A thread per connection (the Go design).
    Threads,
    /// A task per connection on tokio's current-thread runtime.
    TokioCurrent,
    /// A task per connection on tokio's multi-thread runtime (all cores).
    TokioMulti,
}

impl Design {
    /// Every design, in the order of the tables and charts. A new design
    /// (say, the reactor on N threads) goes here, in [`Design::name`] and in
    /// [`Design::start`]; `scripts/bench_chart.py` gives its name a label.
    pub const ALL: [Design; 5] = [
        Design::Reactor,
        Design::Threads,
        Design::TokioCurrent,
        Design::TokioMulti,
        Design::Reactor25,
    ];

    /// The name used in benchmark ids and charts.
    pub fn name(self) -> &'static str {
        match self {
            Design::Reactor => "reactor",
            Design::Reactor25 => "reactor_25B_reads",
            Design::Threads => "thread_per_conn",
            Design::TokioCurrent => "tokio_current_thread",
            Design::TokioMulti => "tokio_multi_thread",
        }
    }

    /// Starts the design on 127.0.0.1, port 0, writing its transcript to
    /// /dev/null through a real file descriptor, ready for `conns` clients:
    /// set up, warmed up by one connection, and running when this returns.
    pub fn start(self, conns: usize) -> RunningServer {
        prepare_process();
        // The backlog the binary uses (std would give 128): a burst of 1,000
        // connects must not overflow the accept queue of any design.
        let listener = simple_tcp_server::listen::listen("127.0.0.1:0".parse().expect("address"), 1024)
            .expect("listen on 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let sink = File::create("/dev/null").expect("open /dev/null");
        let server = match self {
            Design::Reactor => reactor(listener, sink, Config::default()),
            Design::Reactor25 => reactor(
                listener,
                sink,
                Config {
                    read_buffer: MAX_READ,
                    ..Config::default()
                },
            ),
            Design::Threads => {
                ConnBuffers::fill_pool(conns + 1);
                threads(listener, addr, sink)
            }
            Design::TokioCurrent => {
                ConnBuffers::fill_pool(conns + 1);
                tokio_tasks(listener, sink, false)
            }
            Design::TokioMulti => {
                ConnBuffers::fill_pool(conns + 1);
                tokio_tasks(listener, sink, true)
            }
        };
        warm_up(server.addr, self.warm_up_bytes());
        server
    }

    /// Bytes of the warm-up connection: a read block's worth, except for
    /// the 25-byte reader, which would take 80,000 reads for it.
    fn warm_up_bytes(self) -> usize {
        match self {
            Design::Reactor25 => 64 * 1024,
            _ => WARM_UP,
        }
    }

    /// Panics if the design, started and idle, uses more than
    /// [`IDLE_CPU_SHARE`] of a core over `window` (process CPU time from
    /// `getrusage`; nothing else runs in the bench process meanwhile).
    pub fn assert_idle_is_quiet(self, window: Duration) {
        let server = self.start(1);
        let before = process_cpu();
        let started = Instant::now();
        thread::sleep(window);
        let cpu = process_cpu() - before;
        let wall = started.elapsed();
        server.stop();
        eprintln!("{} idle: {cpu:?} of CPU in {wall:?}", self.name());
        assert!(
            cpu.as_secs_f64() <= wall.as_secs_f64() * IDLE_CPU_SHARE,
            "{} used {cpu:?} of CPU in {wall:?} while idle: it spins",
            self.name()
        );
    }
}

/// Once per bench process: the open-file limit raised as the binaries raise
/// it (1,000 clients and their 1,000 server sides need ~2,000 descriptors,
/// more than a default soft limit of 1024).
fn prepare_process() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        simple_tcp_server::limits::raise_nofile_limit().expect("raise the open-file limit");
    });
}

/// CPU time (user + system) of this process so far.
pub fn process_cpu() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one rusage through a pointer to a live,
    // zero-initialised local.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage: {}", io::Error::last_os_error());
    // SAFETY: zero-initialised and filled in by getrusage.
    let usage = unsafe { usage.assume_init() };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// One connection through the server before the clock: connect, greeting,
/// `bytes` of chat text, half-close, wait for the server's close.
fn warm_up(addr: SocketAddr, bytes: usize) {
    let mut stream = TcpStream::connect(addr).expect("warm-up connect");
    // A design that does not answer fails the bench instead of hanging it.
    stream.set_read_timeout(Some(WARM_UP_PATIENCE)).expect("read timeout");
    let mut greeting = [0u8; GREETING.len()];
    stream.read_exact(&mut greeting).expect("warm-up greeting");
    let text: Vec<u8> = b"wong says: warming up ".iter().copied().cycle().take(bytes).collect();
    stream.write_all(&text).expect("warm-up send");
    stream.shutdown(Shutdown::Write).expect("warm-up shutdown");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("warm-up: the server closes");
}

/// A server running in this process.
pub struct RunningServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Stops it, waits until every byte is written, returns.
    stop: Box<dyn FnOnce() + Send>,
}

impl RunningServer {
    /// Stops the server after it has written everything it received.
    pub fn stop(self) {
        (self.stop)()
    }
}

fn reactor(listener: TcpListener, sink: File, config: Config) -> RunningServer {
    let mut server = Server::from_listener(listener, config).expect("server");
    let addr = server.local_addr();
    let stopper = server.stopper().expect("stopper");
    let thread = thread::spawn(move || server.run(sink));
    RunningServer {
        addr,
        stop: Box::new(move || {
            stopper.stop().expect("stop");
            thread.join().expect("reactor thread").expect("reactor run");
        }),
    }
}

/// A zero-filled anonymous mapping: the kernel supplies zero pages on first
/// touch, so a pooled read block costs only the pages a connection's reads
/// reach (`calloc` may instead hand out a reused heap chunk and zero all of
/// it, which for 1,000 pooled 2 MiB blocks would be 2 GB of memory).
struct Mapped {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: `Mapped` owns its mapping exclusively, as a `Box<[u8]>` owns its
// allocation; moving it to another thread moves that ownership.
unsafe impl Send for Mapped {}

impl Mapped {
    fn new(len: usize) -> Mapped {
        // SAFETY: a fresh private anonymous mapping with no address hint and
        // no descriptor; the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(
            ptr != libc::MAP_FAILED,
            "mmap of {len} bytes: {}",
            io::Error::last_os_error()
        );
        Mapped {
            ptr: NonNull::new(ptr.cast()).expect("mmap returned null"),
            len,
        }
    }
}

impl Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes, zero-initialised by
        // the kernel, alive as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for Mapped {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and writable; `&mut self` makes this the
        // only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` created; no reference to
        // it outlives `self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A thread's or task's own buffers: its read block and its lines.
struct ConnBuffers {
    read: Mapped,
    out: Vec<u8>,
}

/// Buffers of connections that have closed, for the next ones.
static POOL: Mutex<Vec<ConnBuffers>> = Mutex::new(Vec::new());

impl ConnBuffers {
    fn new() -> ConnBuffers {
        ConnBuffers {
            read: Mapped::new(READ_LEN),
            out: Vec::with_capacity(OUT_CAPACITY),
        }
    }

    /// Puts buffers for `n` connections in the pool (outside the clock).
    fn fill_pool(n: usize) {
        let mut pool = POOL.lock().expect("buffer pool");
        while pool.len() < n {
            pool.push(ConnBuffers::new());
        }
    }

    /// Buffers for a new connection: from the pool, or new if it is empty.
    fn take() -> ConnBuffers {
        POOL.lock()
            .ok()
            .and_then(|mut pool| pool.pop())
            .unwrap_or_else(ConnBuffers::new)
    }

    /// Gives the buffers back for the next connection.
    fn give_back(mut self) {
        self.out.clear();
        if let Ok(mut pool) = POOL.lock() {
            pool.push(self);
        }
    }
}

/// The transcript of the thread and task designs: one buffer shared by all
/// connections, written to the file when it passes [`FLUSH_AT`], as the
/// reactor's transcript is, and at stop. Locked, as Go's prints lock
/// stdout, so that lines of different connections never interleave.
struct SharedSink(Mutex<SinkState>);

struct SinkState {
    buf: Vec<u8>,
    file: File,
}

impl SharedSink {
    fn new(file: File) -> Arc<SharedSink> {
        Arc::new(SharedSink(Mutex::new(SinkState {
            buf: Vec::with_capacity(OUT_CAPACITY),
            file,
        })))
    }

    /// Takes whole lines: [`FLUSH_AT`] bytes or more go straight to the
    /// file, after what is buffered; less is buffered, and the buffer
    /// written once it passes [`FLUSH_AT`].
    fn put(&self, lines: &[u8]) {
        let Ok(mut state) = self.0.lock() else { return };
        let SinkState { buf, file } = &mut *state;
        if lines.len() >= FLUSH_AT {
            if !buf.is_empty() {
                let _ = file.write_all(buf);
                buf.clear();
            }
            let _ = file.write_all(lines);
        } else {
            buf.extend_from_slice(lines);
            if buf.len() >= FLUSH_AT {
                let _ = file.write_all(buf);
                buf.clear();
            }
        }
    }

    /// Writes what is buffered.
    fn flush(&self) {
        if let Ok(mut state) = self.0.lock() {
            let SinkState { buf, file } = &mut *state;
            let _ = file.write_all(buf);
            buf.clear();
        }
    }
}

/// One connection's side of the shared framing path.
struct Lines {
    framer: Framer,
    buffers: ConnBuffers,
}

impl Lines {
    fn new() -> Lines {
        Lines {
            framer: Framer::new(MAX_READ, false),
            buffers: ConnBuffers::take(),
        }
    }

    /// Where the next read goes.
    fn read_buf(&mut self) -> &mut [u8] {
        &mut self.buffers.read
    }

    /// `LABEL  ADDR` as a line.
    fn addr_line(&mut self, label: &str, addr: SocketAddr) {
        let _ = writeln!(self.buffers.out, "{label}{addr}");
    }

    /// Frames the `n` bytes just read, a window at a time, handing the lines
    /// to `sink` whenever they pass [`FLUSH_AT`]. After a short read (the
    /// socket is drained and the thread or task is about to wait), the rest
    /// goes to `sink` too, as the reactor writes before it blocks.
    fn frame_read(&mut self, n: usize, sink: &SharedSink) {
        let ConnBuffers { read, out } = &mut self.buffers;
        for part in read[..n].chunks(FRAME_WINDOW) {
            self.framer.frame_block(out, b"", part);
            if out.len() >= FLUSH_AT {
                sink.put(out);
                out.clear();
            }
        }
        if n < READ_LEN {
            self.hand_over(sink);
        }
    }

    /// Hands whatever lines are left to `sink`.
    fn hand_over(&mut self, sink: &SharedSink) {
        let out = &mut self.buffers.out;
        if !out.is_empty() {
            sink.put(out);
            out.clear();
        }
    }

    /// The connection is done: its last lines go out, its buffers back.
    fn finish(mut self, sink: &SharedSink) {
        self.hand_over(sink);
        self.buffers.give_back();
    }
}

/// The thread-per-connection server: blocking accept, one thread each.
fn threads(listener: TcpListener, addr: SocketAddr, sink: File) -> RunningServer {
    // `listen` made the socket non-blocking for the reactor; this design
    // blocks in accept (a non-blocking one spins on WouldBlock, burning a
    // core the clients need).
    listener.set_nonblocking(false).expect("blocking listener");
    let sink = SharedSink::new(sink);
    let stopping = Arc::new(AtomicBool::new(false));
    let acceptor = {
        let stopping = Arc::clone(&stopping);
        thread::spawn(move || {
            let mut handles: Vec<JoinHandle<()>> = Vec::new();
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    // The stop's own wake-up connection.
                    break;
                }
                // A failed accept is that client's problem (descriptors are
                // plentiful here: the limit was raised).
                let Ok(stream) = stream else { continue };
                let sink = Arc::clone(&sink);
                handles.push(thread::spawn(move || serve_blocking(stream, &sink)));
            }
            for handle in handles {
                let _ = handle.join();
            }
            sink.flush();
        })
    };
    RunningServer {
        addr,
        stop: Box::new(move || {
            stopping.store(true, Ordering::SeqCst);
            // Wake the blocking accept with a connection of our own.
            let _ = TcpStream::connect(addr);
            acceptor.join().expect("acceptor thread");
        }),
    }
}

fn serve_blocking(mut stream: TcpStream, sink: &SharedSink) {
    let Ok(peer) = stream.peer_addr() else { return };
    let mut lines = Lines::new();
    lines.addr_line("Connection from:  ", peer);
    let _ = stream.write_all(GREETING);
    loop {
        match stream.read(lines.read_buf()) {
            Ok(0) => break,
            Ok(n) => lines.frame_read(n, sink),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    lines.addr_line("Closed connection:  ", peer);
    lines.finish(sink);
}

/// The task-per-connection server on tokio. The runtime (and the
/// multi-thread runtime's workers) is built here, before `start` returns.
fn tokio_tasks(listener: TcpListener, sink: File, multi_thread: bool) -> RunningServer {
    let addr = listener.local_addr().expect("local addr");
    listener.set_nonblocking(true).expect("nonblocking");
    let runtime = if multi_thread {
        tokio::runtime::Builder::new_multi_thread().enable_io().build()
    } else {
        tokio::runtime::Builder::new_current_thread().enable_io().build()
    }
    .expect("tokio runtime");
    let sink = SharedSink::new(sink);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = thread::spawn(move || {
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            let mut tasks = tokio::task::JoinSet::new();
            let mut stop_rx = stop_rx;
            loop {
                tokio::select! {
                    _ = &mut stop_rx => break,
                    accepted = listener.accept() => {
                        if let Ok((stream, peer)) = accepted {
                            tasks.spawn(serve_task(stream, peer, Arc::clone(&sink)));
                        }
                    }
                }
            }
            while tasks.join_next().await.is_some() {}
            sink.flush();
        });
    });
    RunningServer {
        addr,
        stop: Box::new(move || {
            let _ = stop_tx.send(());
            thread.join().expect("tokio thread");
        }),
    }
}

async fn serve_task(mut stream: tokio::net::TcpStream, peer: SocketAddr, sink: Arc<SharedSink>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut lines = Lines::new();
    lines.addr_line("Connection from:  ", peer);
    let _ = stream.write_all(GREETING).await;
    loop {
        // tokio treats a short read as drained on Linux, as the reactor does.
        match stream.read(lines.read_buf()).await {
            Ok(0) | Err(_) => break,
            Ok(n) => lines.frame_read(n, &sink),
        }
    }
    lines.addr_line("Closed connection:  ", peer);
    lines.finish(&sink);
}
