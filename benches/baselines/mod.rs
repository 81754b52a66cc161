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
//!   per core; the accept loop runs in `block_on`, as under `#[tokio::main]`);
//! - `TokioMultiWriter`: the same on the multi-thread runtime, but the
//!   tasks hand whole-line batches to one writer thread through a bounded
//!   channel instead of writing the sink themselves, as a user who picked
//!   tokio would so that a slow stdout does not block the workers
//!   ([`tokio_writer`], also run standalone by examples/tokio_server.rs);
//! - `TokioMultiDirect`: the same runtime, the tasks writing whole lines to
//!   the sink themselves under a lock, as the reactors do, from buffers
//!   that belong to the runtime's worker threads (touched as each starts)
//!   instead of to the tasks ([`tokio_direct`], also standalone).
//!
//! The reactor itself is started through the library's entry point
//! (`Server::from_listeners` + `run`), exactly as the binary runs it: on
//! one thread with one listener, and on two threads (`Config::threads`)
//! with a listener each on `SO_REUSEPORT` (`listen::listen_many`), as
//! `--threads 2` binds.
//!
//! What every design shares:
//!
//! - **Setup outside the clock.** [`Design::start`] binds the listener,
//!   builds the runtime (and its workers, and the writer thread), fills the
//!   buffer pools for the expected number of connections, and serves a
//!   warm-up connection ([`WARM_UP`] bytes: greeting, read, framing, write,
//!   close) before it returns (the two-thread reactor: one per reactor, see
//!   [`warm_up_reactors`]), so the loops, runtime and buffers are running
//!   and touched before the bench starts its clock. Stopping (and the final
//!   write) is inside the clock for every design.
//! - **Reads and framing.** Reads of [`READ_LEN`] bytes (the reactor's read
//!   block); a block is framed [`lines::FRAME_WINDOW`] bytes at a time with the
//!   library's `Framer`, and the lines are written (or handed to the
//!   writer) once they pass [`FLUSH_AT`], while they are still in the
//!   cache, as the reactor does ([`lines`]).
//! - **Buffers.** A reactor has one read block and one output buffer for
//!   all its connections. A thread or task needs its own; they come from a
//!   pool kept across connections and iterations ([`lines::ConnBuffers`]),
//!   so after the warm-up no design allocates or zeroes a buffer in the
//!   clock. (That flatters the baselines a little: a real
//!   thread-per-connection server allocates per connection. Pages of
//!   pooled buffers that no connection has used yet are still touched for
//!   the first time in the clock, as a new connection's would be.) The
//!   writer design's batches are swapped with spares from a pool filled the
//!   same way.
//!
//! What differs, by design: a thread or task frames into its own buffer and
//! hands the lines to one shared, locked sink ([`SharedSink`]), because
//! framing under the lock would serialise the threads; so lines of fewer
//! than [`FLUSH_AT`] bytes are copied once more into the shared buffer,
//! where the reactor frames straight into its output buffer. The shared
//! buffer is written when it passes [`FLUSH_AT`] and at stop (the reactor
//! also writes before its loop blocks: more writes, not fewer). The writer
//! thread gathers small batches the same way, and writes whenever its queue
//! is empty.
//!
//! These live with the benchmarks, not in the product.

#![allow(dead_code)]

pub mod lines;
pub mod tokio_direct;
pub mod tokio_writer;

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use simple_tcp_server::output::FLUSH_AT;
use simple_tcp_server::protocol::{GREETING, MAX_READ};
use simple_tcp_server::{Config, Server};

use lines::{ConnBuffers, Lines, OUT_CAPACITY, READ_LEN};

/// Bytes the warm-up connection sends: a whole read block, so that a read
/// block's worth of every buffer has been used once before the clock.
pub const WARM_UP: usize = READ_LEN;

/// How long the warm-up waits for the server's greeting and close.
const WARM_UP_PATIENCE: Duration = Duration::from_secs(60);

/// An idle server must not use more than this share of a core (the check
/// that caught the thread-per-connection baseline spinning on a
/// non-blocking accept: it used all of one).
const IDLE_CPU_SHARE: f64 = 0.1;

/// The most warm-up connections [`warm_up_reactors`] makes: with the
/// kernel's `SO_REUSEPORT` hash, each reaches a given one of two reactors
/// with even odds, so 64 miss one only by a fault.
const MAX_WARM_UPS: usize = 64;

/// The designs under comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Design {
    /// The library's reactor, as the binary runs it.
    Reactor,
    /// The library's reactor on two threads (`--threads 2`).
    Reactor2,
    /// The reactor reading literally 25 bytes per system call.
    Reactor25,
    /// A thread per connection (the Go design).
    Threads,
    /// A task per connection on tokio's current-thread runtime.
    TokioCurrent,
    /// A task per connection on tokio's multi-thread runtime (all cores).
    TokioMulti,
    /// The same, the tasks handing their lines to one writer thread.
    TokioMultiWriter,
    /// The same, the tasks writing their lines themselves from their
    /// worker thread's buffers.
    TokioMultiDirect,
}

impl Design {
    /// Every design, in the order of the tables and charts. A new design
    /// goes here, in [`Design::name`] and in [`Design::start`];
    /// `scripts/bench_chart.py` gives its name a label.
    pub const ALL: [Design; 8] = [
        Design::Reactor,
        Design::Reactor2,
        Design::Threads,
        Design::TokioCurrent,
        Design::TokioMulti,
        Design::TokioMultiWriter,
        Design::TokioMultiDirect,
        Design::Reactor25,
    ];

    /// The name used in benchmark ids and charts.
    pub fn name(self) -> &'static str {
        match self {
            Design::Reactor => "reactor",
            Design::Reactor2 => "reactor_2_threads",
            Design::Reactor25 => "reactor_25B_reads",
            Design::Threads => "thread_per_conn",
            Design::TokioCurrent => "tokio_current_thread",
            Design::TokioMulti => "tokio_multi_thread",
            Design::TokioMultiWriter => "tokio_multi_thread_writer",
            Design::TokioMultiDirect => "tokio_multi_thread_direct",
        }
    }

    /// Starts the design on 127.0.0.1, port 0, writing its transcript to
    /// /dev/null through a real file descriptor, ready for `conns` clients:
    /// set up, warmed up, and running when this returns.
    pub fn start(self, conns: usize) -> RunningServer {
        prepare_process();
        // The backlog the binary uses (std would give 128): a burst of 1,000
        // connects must not overflow the accept queue of any design.
        let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
        let listen = || simple_tcp_server::listen::listen(any, 1024).expect("listen on 127.0.0.1:0");
        let sink = File::create("/dev/null").expect("open /dev/null");
        let fill_pool = || ConnBuffers::fill_pool(conns + 1).expect("buffers for the pool");
        let server = match self {
            Design::Reactor => reactor(vec![listen()], sink, Config::default()),
            Design::Reactor2 => reactor(
                simple_tcp_server::listen::listen_many(any, 1024, 2).expect("listen on 127.0.0.1:0"),
                sink,
                Config {
                    threads: 2,
                    ..Config::default()
                },
            ),
            Design::Reactor25 => reactor(
                vec![listen()],
                sink,
                Config {
                    read_buffer: MAX_READ,
                    ..Config::default()
                },
            ),
            Design::Threads => {
                fill_pool();
                let listener = listen();
                let addr = listener.local_addr().expect("local addr");
                threads(listener, addr, sink)
            }
            Design::TokioCurrent => {
                fill_pool();
                tokio_tasks(listen(), sink, false)
            }
            Design::TokioMulti => {
                fill_pool();
                tokio_tasks(listen(), sink, true)
            }
            Design::TokioMultiWriter => {
                fill_pool();
                // A spare batch buffer for every connection and every place
                // in the queue, and one for the batch being written.
                tokio_writer(listen(), sink, conns + 1 + tokio_writer::QUEUE + 1)
            }
            Design::TokioMultiDirect => tokio_direct(listen(), sink),
        };
        match self {
            Design::Reactor2 => warm_up_reactors(server.addr, 2, self.warm_up_bytes()),
            _ => warm_up(server.addr, self.warm_up_bytes()),
        }
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

/// Warm-up connections (as [`warm_up`]) until each of the `threads`
/// reactors has served one: the kernel's `SO_REUSEPORT` hash, not the
/// bench, picks the reactor of a connection, so the bench watches which
/// reactor threads (named `reactor-N`) wrote the lines of a warm-up
/// (`wchar` in /proc/self/task/TID/io). Where /proc does not say, it makes
/// `threads` warm-ups and says so.
fn warm_up_reactors(addr: SocketAddr, threads: usize, bytes: usize) {
    let Some(before) = reactor_writes() else {
        eprintln!("note: no per-thread I/O counts in /proc; {threads} warm-ups, which may miss a reactor");
        (0..threads).for_each(|_| warm_up(addr, bytes));
        return;
    };
    // Bytes of lines each reactor has written since `before`.
    let written = || -> Vec<u64> {
        reactor_writes()
            .unwrap_or_default()
            .into_iter()
            .map(|(tid, wchar)| wchar.saturating_sub(before.get(&tid).copied().unwrap_or(0)))
            .collect()
    };
    for done in 1..=MAX_WARM_UPS {
        warm_up(addr, bytes);
        // The lines are written just after the close the warm-up waited for.
        let deadline = Instant::now() + WARM_UP_PATIENCE;
        while written().iter().sum::<u64>() < (done * bytes) as u64 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
        if written().iter().filter(|&&w| w >= bytes as u64).count() >= threads {
            return;
        }
    }
    panic!("{MAX_WARM_UPS} warm-up connections did not reach all {threads} reactors");
}

/// Bytes written so far by each thread of this process named `reactor-N`,
/// by thread id; `None` if /proc has no per-thread I/O counts.
fn reactor_writes() -> Option<HashMap<u32, u64>> {
    let mut writes = HashMap::new();
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        // A thread that ended meanwhile has no files left: skip it.
        let Ok(name) = std::fs::read_to_string(task.path().join("comm")) else {
            continue;
        };
        if !name.starts_with("reactor-") {
            continue;
        }
        let Ok(io) = std::fs::read_to_string(task.path().join("io")) else {
            return None;
        };
        let wchar = io.lines().find_map(|l| l.strip_prefix("wchar:"))?.trim().parse().ok()?;
        writes.insert(tid, wchar);
    }
    Some(writes)
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

/// The library's reactor on `listeners` (one, or one per reactor), started
/// as the binary starts it; reactor 0 runs on a thread of its own here,
/// named as the library names the others, so that [`warm_up_reactors`]
/// finds them all.
fn reactor(listeners: Vec<TcpListener>, sink: File, config: Config) -> RunningServer {
    let mut server = Server::from_listeners(listeners, config).expect("server");
    let addr = server.local_addr();
    let stopper = server.stopper().expect("stopper");
    let thread = thread::Builder::new()
        .name("reactor-0".into())
        .spawn(move || server.run(sink))
        .expect("reactor thread");
    RunningServer {
        addr,
        stop: Box::new(move || {
            stopper.stop().expect("stop");
            thread.join().expect("reactor thread").expect("reactor run");
        }),
    }
}

/// The task-per-connection server on tokio with a writer thread
/// ([`tokio_writer`]); `spares` batch buffers are made before the clock.
fn tokio_writer(listener: TcpListener, sink: File, spares: usize) -> RunningServer {
    let server = tokio_writer::Server::new(listener, sink, spares).expect("tokio writer server");
    let addr = server.local_addr();
    let stopper = server.stopper();
    let thread = thread::spawn(move || server.run());
    RunningServer {
        addr,
        stop: Box::new(move || {
            stopper.stop();
            thread.join().expect("tokio thread").expect("tokio writer run");
        }),
    }
}

/// The task-per-connection server on tokio whose tasks write their lines
/// themselves ([`tokio_direct`]).
fn tokio_direct(listener: TcpListener, sink: File) -> RunningServer {
    let server = tokio_direct::Server::new(listener, sink).expect("tokio direct server");
    let addr = server.local_addr();
    let stopper = server.stopper();
    let thread = thread::spawn(move || server.run());
    RunningServer {
        addr,
        stop: Box::new(move || {
            stopper.stop();
            thread.join().expect("tokio thread").expect("tokio direct run");
        }),
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

    /// Takes whole lines from `out` (as [`SharedSink::put`]), leaving it
    /// empty.
    fn take(&self, out: &mut Vec<u8>) {
        if !out.is_empty() {
            self.put(out);
            out.clear();
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
    let mut lines = Lines::new().expect("buffers");
    lines.addr_line("Connection from:  ", peer);
    let _ = stream.write_all(GREETING);
    loop {
        match stream.read(lines.read_buf()) {
            Ok(0) => break,
            Ok(n) => lines.frame_read(n, |out| sink.take(out)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    lines.addr_line("Closed connection:  ", peer);
    sink.take(lines.out());
    lines.finish();
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
    let mut lines = Lines::new().expect("buffers");
    lines.addr_line("Connection from:  ", peer);
    let _ = stream.write_all(GREETING).await;
    loop {
        // tokio treats a short read as drained on Linux, as the reactor does.
        match stream.read(lines.read_buf()).await {
            Ok(0) | Err(_) => break,
            Ok(n) => lines.frame_read(n, |out| sink.take(out)),
        }
    }
    lines.addr_line("Closed connection:  ", peer);
    sink.take(lines.out());
    lines.finish();
}
