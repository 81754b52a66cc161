//! The designs a user would pick instead of the reactor, serving the same
//! protocol (greeting, 25-byte frames cut from reads as large as the
//! reactor's by the library's
//! `Framer`, `Connection from` / `<LEN:TEXT>` / `Closed connection` lines)
//! into the same kind of sink (a buffered writer on a file), so that a
//! comparison measures the concurrency design alone:
//!
//! - `Threads`: a thread per connection on `std::net`, the chapter's
//!   goroutine-per-client design in Rust; frames go to a shared, locked,
//!   buffered sink, as Go's prints go to a locked stdout.
//! - `TokioCurrent` / `TokioMulti`: a task per connection on tokio, on its
//!   one-thread runtime and on its default multi-thread runtime.
//!
//! The reactor itself is started through the library's entry point
//! (`Server::from_listener` + `run`), exactly as the binary runs it.
//!
//! These live with the benchmarks, not in the product.

#![allow(dead_code)]

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use simple_tcp_server::output::text::Framer;
use simple_tcp_server::{Config, GREETING, MAX_READ, Server};

/// Bytes per read in every design: the reactor's read block, rounded down
/// to whole frames as the reactor rounds it.
pub const READ_LEN: usize = (simple_tcp_server::config::DEFAULT_READ_BUFFER / MAX_READ) * MAX_READ;

/// Buffer of the shared sink, as large as the reactor's flush threshold.
const SINK_BUFFER: usize = 256 * 1024;

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
    /// /dev/null through a real file descriptor.
    pub fn start(self) -> RunningServer {
        // The backlog the binary uses (std would give 128): a burst of 1,000
        // connects must not overflow the accept queue of any design.
        let listener = simple_tcp_server::listen::listen("127.0.0.1:0".parse().expect("address"), 1024)
            .expect("listen on 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let sink = File::create("/dev/null").expect("open /dev/null");
        match self {
            Design::Reactor => reactor(listener, sink, Config::default()),
            Design::Reactor25 => reactor(
                listener,
                sink,
                Config {
                    read_buffer: MAX_READ,
                    ..Config::default()
                },
            ),
            Design::Threads => threads(listener, addr, sink),
            Design::TokioCurrent => tokio_tasks(listener, sink, false),
            Design::TokioMulti => tokio_tasks(listener, sink, true),
        }
    }
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

/// A connection's own read buffer in the thread and task designs: it starts
/// at 64 KiB and doubles whenever a read fills it, up to the reactor's read
/// size, so that a busy connection reads as much per call as the reactor
/// does while an idle one does not pay for (and zero) megabytes.
struct ReadBuffer(Vec<u8>);

impl ReadBuffer {
    const FIRST: usize = 64 * 1024;

    fn new() -> ReadBuffer {
        ReadBuffer(vec![0; Self::FIRST.min(READ_LEN)])
    }

    /// Where the next read goes.
    fn space(&mut self) -> &mut [u8] {
        &mut self.0
    }

    /// The buffer after a read of `n` bytes; grows it if the read filled it.
    fn filled(&mut self, n: usize) -> &[u8] {
        if n == self.0.len() && n < READ_LEN {
            // Keep the bytes just read; make room for bigger reads next time.
            let grown = (n * 2).min(READ_LEN);
            self.0.resize(grown, 0);
        }
        &self.0
    }
}

type SharedSink = Arc<Mutex<BufWriter<File>>>;

fn emit(sink: &SharedSink, bytes: &[u8]) {
    if let Ok(mut sink) = sink.lock() {
        let _ = sink.write_all(bytes);
    }
}

/// The thread-per-connection server: blocking accept, one thread each.
fn threads(listener: TcpListener, addr: SocketAddr, sink: File) -> RunningServer {
    let sink: SharedSink = Arc::new(Mutex::new(BufWriter::with_capacity(SINK_BUFFER, sink)));
    let stopping = Arc::new(AtomicBool::new(false));
    let acceptor = {
        let sink = Arc::clone(&sink);
        let stopping = Arc::clone(&stopping);
        thread::spawn(move || {
            let mut handles: Vec<JoinHandle<()>> = Vec::new();
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let sink = Arc::clone(&sink);
                handles.push(thread::spawn(move || serve_blocking(stream, &sink)));
            }
            for handle in handles {
                let _ = handle.join();
            }
            if let Ok(mut sink) = sink.lock() {
                let _ = sink.flush();
            }
        })
    };
    RunningServer {
        addr,
        stop: Box::new(move || {
            stopping.store(true, Ordering::SeqCst);
            // Wake the blocking accept.
            let _ = TcpStream::connect(addr);
            acceptor.join().expect("acceptor thread");
        }),
    }
}

fn serve_blocking(mut stream: TcpStream, sink: &SharedSink) {
    let Ok(peer) = stream.peer_addr() else { return };
    emit(sink, format!("Connection from:  {peer}\n").as_bytes());
    let _ = stream.write_all(GREETING);
    let framer = Framer::new(MAX_READ, false);
    let mut buf = ReadBuffer::new();
    let mut out = Vec::new();
    loop {
        match stream.read(buf.space()) {
            Ok(0) => break,
            Ok(n) => {
                out.clear();
                framer.frame_block(&mut out, b"", &buf.filled(n)[..n]);
                emit(sink, &out);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    emit(sink, format!("Closed connection:  {peer}\n").as_bytes());
}

/// The task-per-connection server on tokio.
fn tokio_tasks(listener: TcpListener, sink: File, multi_thread: bool) -> RunningServer {
    let addr = listener.local_addr().expect("local addr");
    listener.set_nonblocking(true).expect("nonblocking");
    let sink: SharedSink = Arc::new(Mutex::new(BufWriter::with_capacity(SINK_BUFFER, sink)));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = thread::spawn(move || {
        let runtime = if multi_thread {
            tokio::runtime::Builder::new_multi_thread().enable_io().build()
        } else {
            tokio::runtime::Builder::new_current_thread().enable_io().build()
        }
        .expect("tokio runtime");
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
            if let Ok(mut sink) = sink.lock() {
                let _ = sink.flush();
            }
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

async fn serve_task(mut stream: tokio::net::TcpStream, peer: SocketAddr, sink: SharedSink) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    emit(&sink, format!("Connection from:  {peer}\n").as_bytes());
    let _ = stream.write_all(GREETING).await;
    let framer = Framer::new(MAX_READ, false);
    let mut buf = ReadBuffer::new();
    let mut out = Vec::new();
    loop {
        match stream.read(buf.space()).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.clear();
                framer.frame_block(&mut out, b"", &buf.filled(n)[..n]);
                emit(&sink, &out);
            }
        }
    }
    emit(&sink, format!("Closed connection:  {peer}\n").as_bytes());
}
