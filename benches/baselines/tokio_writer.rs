//! A task per connection on tokio's multi-thread runtime whose tasks never
//! write the transcript themselves: what a user who picked tokio would
//! build so that a slow stdout does not block the runtime's workers. Each
//! task frames its reads into its own buffer (the framing path of
//! [`super::lines`]) and sends whole-line batches through a bounded
//! channel (`tokio::sync::mpsc`, awaited: a full queue suspends the task,
//! not the worker) to ONE writer thread, which writes them to the sink.
//!
//! The writer gathers what is queued: a batch of [`FLUSH_AT`] bytes or more
//! is written as it is, smaller ones are copied into its buffer, and the
//! buffer is written when it passes [`FLUSH_AT`] and whenever the queue is
//! empty (before the thread waits, as the reactor writes before it blocks).
//! Batches travel as `Vec`s swapped with spares from a pool that the writer
//! refills, so nothing is allocated per batch once the pool is full.
//!
//! Shared by the bench design `tokio_multi_thread_writer`
//! (benches/baselines/mod.rs) and the standalone server
//! examples/tokio_server.rs (which includes this file with `#[path]`).

#![allow(dead_code)]

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use simple_tcp_server::output::FLUSH_AT;
use simple_tcp_server::protocol::GREETING;
use tokio::sync::{mpsc, watch};

use super::lines::{Lines, OUT_CAPACITY, READ_LEN, windows};

/// Batches queued for the writer at most: enough for every worker to have
/// several in flight while the writer writes one, few enough that the
/// queue holds a few MiB of lines (each batch is at most its buffer's
/// capacity, a window's lines plus [`FLUSH_AT`]).
pub const QUEUE: usize = 64;

/// How long the accept loop pauses after a failed accept (a shortage of
/// descriptors repeats at once otherwise): it runs on the `block_on` thread,
/// so the pause holds back accepting only, never a worker.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Emptied batch buffers, for the tasks to swap their lines with.
struct Spares(Mutex<Vec<Vec<u8>>>);

impl Spares {
    fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .ok()
            .and_then(|mut spares| spares.pop())
            .unwrap_or_else(|| Vec::with_capacity(OUT_CAPACITY))
    }

    fn give_back(&self, mut batch: Vec<u8>) {
        batch.clear();
        if let Ok(mut spares) = self.0.lock() {
            spares.push(batch);
        }
    }
}

/// A task's way to the writer thread.
#[derive(Clone)]
struct Batches {
    tx: mpsc::Sender<Vec<u8>>,
    spares: Arc<Spares>,
}

impl Batches {
    /// Sends the lines in `out` (whole lines) to the writer, leaving `out`
    /// an empty spare. `Err` when the writer has stopped.
    async fn send(&self, out: &mut Vec<u8>) -> Result<(), ()> {
        if out.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(out, self.spares.take());
        self.tx.send(batch).await.map_err(|_| ())
    }
}

/// Stops a running [`Server`] from another thread.
#[derive(Clone)]
pub struct Stopper(Arc<watch::Sender<bool>>);

impl Stopper {
    /// Stops accepting; each connection ends at its next wait for data
    /// (what it has received is framed and written first), then the writer
    /// writes what is queued and `run` returns.
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}

/// The server, built and ready: runtime, workers and writer thread running.
pub struct Server {
    runtime: tokio::runtime::Runtime,
    listener: std::net::TcpListener,
    addr: SocketAddr,
    batches: Batches,
    writer: JoinHandle<io::Result<()>>,
    stop: Arc<watch::Sender<bool>>,
    stopped: watch::Receiver<bool>,
}

impl Server {
    /// Builds the runtime (one worker per core), starts the writer thread
    /// on `sink`, and puts `spares` batch buffers in the pool, every page
    /// written (a bench fills it for its connections and the queue, so that
    /// none is allocated or faulted in the clock; more are made when it
    /// runs dry).
    pub fn new<W: Write + Send + 'static>(
        listener: std::net::TcpListener,
        sink: W,
        spares: usize,
    ) -> io::Result<Server> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_io().build()?;
        // Written once, so that no batch faults a page in later.
        let spares = Arc::new(Spares(Mutex::new(
            (0..spares)
                .map(|_| {
                    let mut batch = vec![0u8; OUT_CAPACITY];
                    batch.fill(1);
                    batch.clear();
                    batch
                })
                .collect(),
        )));
        let (tx, rx) = mpsc::channel(QUEUE);
        // Subscribed now, so that a stop that comes before `run` is seen.
        let (stop, stopped) = watch::channel(false);
        let stop = Arc::new(stop);
        let writer = {
            let spares = Arc::clone(&spares);
            let stop = Stopper(Arc::clone(&stop));
            thread::Builder::new().name("writer".into()).spawn(move || {
                let result = write_batches(rx, &spares, sink);
                if result.is_err() {
                    // Nothing can be printed any more: stop serving.
                    stop.stop();
                }
                result
            })?
        };
        Ok(Server {
            runtime,
            listener,
            addr,
            batches: Batches { tx, spares },
            writer,
            stop,
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

    /// Accepts and serves on the calling thread (`block_on`, as under
    /// `#[tokio::main]`) until stopped; returns once every connection has
    /// ended and the writer has written everything: `Err` if the sink
    /// failed.
    pub fn run(self) -> io::Result<()> {
        let Server {
            runtime,
            listener,
            batches,
            writer,
            stop: _stop,
            stopped,
            ..
        } = self;
        let served = runtime.block_on(accept_loop(listener, batches, stopped));
        // Every sender is gone now: the writer writes what is queued and ends.
        drop(runtime);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the writer thread panicked")));
        served.and(written)
    }
}

async fn accept_loop(
    listener: std::net::TcpListener,
    batches: Batches,
    mut stopped: watch::Receiver<bool>,
) -> io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let mut tasks = tokio::task::JoinSet::new();
    // Only a stop is ever sent: a change (or a stopper gone) means stop.
    if !*stopped.borrow_and_update() {
        loop {
            tokio::select! {
                _ = stopped.changed() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        tasks.spawn(serve(stream, peer, batches.clone(), stopped.clone()));
                    }
                    Err(_) => std::thread::sleep(ACCEPT_BACKOFF),
                },
            }
            // Forget the tasks that have ended.
            while tasks.try_join_next().is_some() {}
        }
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn serve(mut stream: tokio::net::TcpStream, peer: SocketAddr, out: Batches, mut stopped: watch::Receiver<bool>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // No buffers (no memory): this client is turned away.
    let Ok(mut lines) = Lines::new() else { return };
    lines.addr_line("Connection from:  ", peer);
    let _ = stream.write_all(GREETING).await;
    'connection: loop {
        // Data first: a stop ends the connection only when it has nothing
        // more to read.
        let read = tokio::select! {
            biased;
            read = stream.read(lines.read_buf()) => read,
            _ = stopped.changed() => break,
        };
        // tokio treats a short read as drained on Linux, as the reactor does.
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for part in windows(n) {
            lines.frame(part);
            if lines.is_batch() && out.send(lines.out()).await.is_err() {
                break 'connection;
            }
        }
        if n < READ_LEN && out.send(lines.out()).await.is_err() {
            break;
        }
    }
    drop(stream);
    lines.addr_line("Closed connection:  ", peer);
    let _ = out.send(lines.out()).await;
    lines.finish();
}

/// The writer thread: batches from the queue to `sink` until every sender
/// is gone, then what is left, and a flush.
fn write_batches<W: Write>(mut rx: mpsc::Receiver<Vec<u8>>, spares: &Spares, mut sink: W) -> io::Result<()> {
    let mut buf = Vec::with_capacity(OUT_CAPACITY);
    while let Some(batch) = rx.blocking_recv() {
        take_batch(&mut buf, batch, spares, &mut sink)?;
        while let Ok(batch) = rx.try_recv() {
            take_batch(&mut buf, batch, spares, &mut sink)?;
        }
        // The queue is empty: write what is buffered before waiting.
        if !buf.is_empty() {
            sink.write_all(&buf)?;
            buf.clear();
        }
    }
    sink.flush()
}

/// Writes `batch` (after what is buffered) if it is big; else buffers it,
/// writing the buffer once it passes [`FLUSH_AT`]. The batch's buffer goes
/// back to the spares either way.
fn take_batch<W: Write>(buf: &mut Vec<u8>, batch: Vec<u8>, spares: &Spares, sink: &mut W) -> io::Result<()> {
    let written = if batch.len() >= FLUSH_AT {
        let mut result = Ok(());
        if !buf.is_empty() {
            result = sink.write_all(buf);
            buf.clear();
        }
        result.and_then(|()| sink.write_all(&batch))
    } else {
        buf.extend_from_slice(&batch);
        let mut result = Ok(());
        if buf.len() >= FLUSH_AT {
            result = sink.write_all(buf);
            buf.clear();
        }
        result
    };
    spares.give_back(batch);
    written
}
