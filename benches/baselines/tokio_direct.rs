//! A task per connection on tokio's multi-thread runtime whose tasks write
//! the transcript themselves, whole lines straight to the sink under a lock,
//! as the reactors do; and whose buffers belong to the runtime's worker
//! threads, not to the tasks: each worker has one read block and one line
//! buffer, allocated and touched (pre-faulted) when the worker starts, as a
//! reactor's are. The fastest task-per-connection server a tokio user could
//! write for this job, as far as we know: no per-connection buffer (so no
//! page faults and no memory per connection beyond tokio's own), no hop
//! through a channel, no copy into a shared buffer.
//!
//! A task reads through `AsyncRead::poll_read` into its worker's read block
//! inside one poll (`poll_fn`), frames what it read with the library's
//! `Framer` a window at a time, and writes the lines once they pass
//! [`FLUSH_AT`] and after a short read (the socket is drained: the task is
//! about to wait, as the reactor writes before it blocks). Nothing it holds
//! in the worker's buffers survives an `.await`, so the tasks that share a
//! worker never see each other's bytes. A short read counts as drained
//! (tokio clears the readiness on Linux), as the reactor counts it.
//!
//! The cost it accepts: a write to the sink blocks the worker that makes it
//! (the reactor's does too); a slow stdout holds every task of that worker.
//!
//! Shared by the bench design `tokio_multi_thread_direct`
//! (benches/baselines/mod.rs) and the standalone server
//! examples/tokio_server.rs (which includes this file with `#[path]`).

#![allow(dead_code)]

use std::cell::RefCell;
use std::future::poll_fn;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use simple_tcp_server::output::FLUSH_AT;
use simple_tcp_server::output::text::Framer;
use simple_tcp_server::protocol::{GREETING, MAX_READ};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;

use super::lines::{FRAME_WINDOW, READ_LEN, windows};

/// The line buffer a worker touches at start: a framing window's lines
/// (31 bytes per 25) on top of the threshold, as the reactor's grows to.
const OUT_PREFAULT: usize = FRAME_WINDOW / MAX_READ * (MAX_READ + 6) + FLUSH_AT;

/// How long the accept loop pauses after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// One worker thread's buffers.
struct WorkerBuffers {
    framer: Framer,
    read: Vec<u8>,
    out: Vec<u8>,
}

impl WorkerBuffers {
    /// Allocated and written once, so that no page of them faults later
    /// (filled with a byte that is not zero, so that no zeroed allocation
    /// leaves its pages untouched).
    fn new() -> WorkerBuffers {
        let read = vec![1u8; READ_LEN];
        let mut out = vec![1u8; OUT_PREFAULT];
        out.clear();
        WorkerBuffers {
            framer: Framer::new(MAX_READ, false),
            read,
            out,
        }
    }
}

thread_local! {
    /// The buffers of the worker this runs on (made at thread start).
    static BUFFERS: RefCell<Option<WorkerBuffers>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's buffers, making them if the thread has none.
fn with_buffers<R>(f: impl FnOnce(&mut WorkerBuffers) -> R) -> R {
    BUFFERS.with_borrow_mut(|b| f(b.get_or_insert_with(WorkerBuffers::new)))
}

/// The transcript, written whole lines at a time under its lock.
type Sink = Arc<Mutex<Box<dyn Write + Send>>>;

fn write_lines(sink: &Sink, out: &mut Vec<u8>) -> io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let result = match sink.lock() {
        Ok(mut file) => file.write_all(out),
        Err(_) => Err(io::Error::other("the sink's lock is poisoned")),
    };
    out.clear();
    result
}

/// Stops a running [`Server`] from another thread.
#[derive(Clone)]
pub struct Stopper(Arc<watch::Sender<bool>>);

impl Stopper {
    /// Stops accepting; each connection ends at its next wait for data
    /// (what it has received is framed and written first), then `run`
    /// returns.
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}

/// The server, built and ready: runtime and workers running, their buffers
/// touched.
pub struct Server {
    runtime: tokio::runtime::Runtime,
    listener: std::net::TcpListener,
    addr: SocketAddr,
    sink: Sink,
    stop: Arc<watch::Sender<bool>>,
    stopped: watch::Receiver<bool>,
}

impl Server {
    /// Builds the runtime (one worker per core, each making its buffers as
    /// it starts) around `sink`.
    pub fn new<W: Write + Send + 'static>(listener: std::net::TcpListener, sink: W) -> io::Result<Server> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_io()
            .on_thread_start(|| with_buffers(|_| ()))
            .build()?;
        let (stop, stopped) = watch::channel(false);
        Ok(Server {
            runtime,
            listener,
            addr,
            sink: Arc::new(Mutex::new(Box::new(sink))),
            stop: Arc::new(stop),
            stopped,
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle that stops the server.
    pub fn stopper(&self) -> Stopper {
        Stopper(Arc::clone(&self.stop))
    }

    /// Accepts and serves on the calling thread (`block_on`) until stopped;
    /// returns once every connection has ended and its lines are written:
    /// `Err` if the sink failed.
    pub fn run(self) -> io::Result<()> {
        let Server {
            runtime,
            listener,
            sink,
            stop: _stop,
            stopped,
            ..
        } = self;
        let served = runtime.block_on(accept_loop(listener, Arc::clone(&sink), stopped));
        drop(runtime);
        let flushed = match sink.lock() {
            Ok(mut file) => file.flush(),
            Err(_) => Err(io::Error::other("the sink's lock is poisoned")),
        };
        served.and(flushed)
    }
}

async fn accept_loop(
    listener: std::net::TcpListener,
    sink: Sink,
    mut stopped: watch::Receiver<bool>,
) -> io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let mut tasks = tokio::task::JoinSet::new();
    if !*stopped.borrow_and_update() {
        loop {
            tokio::select! {
                _ = stopped.changed() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        tasks.spawn(serve(stream, peer, Arc::clone(&sink), stopped.clone()));
                    }
                    Err(_) => std::thread::sleep(ACCEPT_BACKOFF),
                },
            }
            while tasks.try_join_next().is_some() {}
        }
    }
    drop(listener);
    let mut result = Ok(());
    while let Some(done) = tasks.join_next().await {
        if let Ok(Err(e)) = done {
            result = Err(e);
        }
    }
    result
}

/// What one read came to.
enum Read {
    /// A full read block: there may be more.
    More,
    /// A short read: the socket is drained, the lines are written.
    Drained,
    /// End of file or an error: the connection is over.
    Done,
}

async fn serve(
    mut stream: tokio::net::TcpStream,
    peer: SocketAddr,
    sink: Sink,
    mut stopped: watch::Receiver<bool>,
) -> io::Result<()> {
    with_buffers(|b| {
        let _ = writeln!(b.out, "Connection from:  {peer}");
        write_lines(&sink, &mut b.out)
    })?;
    let _ = stream.write_all(GREETING).await;
    loop {
        let read = poll_fn(|cx| {
            with_buffers(|b| {
                let mut buf = ReadBuf::new(&mut b.read);
                // Whatever ends the reading for now writes the lines first:
                // nothing stays in the worker's buffer when the task waits.
                match Pin::new(&mut stream).poll_read(cx, &mut buf) {
                    Poll::Pending => Poll::Ready(write_lines(&sink, &mut b.out).map(|()| None)),
                    Poll::Ready(Err(_)) => Poll::Ready(write_lines(&sink, &mut b.out).map(|()| Some(Read::Done))),
                    Poll::Ready(Ok(())) => {
                        let n = buf.filled().len();
                        if n == 0 {
                            return Poll::Ready(write_lines(&sink, &mut b.out).map(|()| Some(Read::Done)));
                        }
                        let WorkerBuffers { framer, read, out } = b;
                        for part in windows(n) {
                            framer.frame_block(out, b"", &read[part]);
                            if out.len() >= FLUSH_AT
                                && let Err(e) = write_lines(&sink, out)
                            {
                                return Poll::Ready(Err(e));
                            }
                        }
                        if n < READ_LEN {
                            Poll::Ready(write_lines(&sink, out).map(|()| Some(Read::Drained)))
                        } else {
                            Poll::Ready(Ok(Some(Read::More)))
                        }
                    }
                }
            })
        });
        // Pending is reported as `None` (the lines written), so that the
        // wait below can also watch for a stop; data comes first. After a
        // full read block the next read follows at once, in the same poll
        // of the task: the lines it left wait in the worker's buffer only
        // while the task runs.
        match read.await? {
            Some(Read::More) => continue,
            Some(Read::Drained) => {}
            Some(Read::Done) => break,
            None => {}
        }
        tokio::select! {
            biased;
            ready = stream.readable() => if ready.is_err() { break },
            _ = stopped.changed() => break,
        }
    }
    drop(stream);
    with_buffers(|b| {
        let _ = writeln!(b.out, "Closed connection:  {peer}");
        write_lines(&sink, &mut b.out)
    })
}
