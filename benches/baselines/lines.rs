//! The framing path of every design that is not the reactor: a
//! connection's own read block and line buffer ([`ConnBuffers`], pooled
//! across connections) and the library's `Framer` run over each read a
//! [`FRAME_WINDOW`] at a time, as the reactor frames ([`Lines`]).
//!
//! Shared by the bench designs (benches/baselines/mod.rs) and by the
//! standalone tokio server (examples/tokio_server.rs, which includes this
//! file with `#[path]`), so that the baseline measured in criterion and the
//! one measured from another process frame the same way.

#![allow(dead_code)]

use std::io::{self, Write};
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut, Range};
use std::ptr::NonNull;
use std::sync::Mutex;

use simple_tcp_server::output::FLUSH_AT;
use simple_tcp_server::output::text::Framer;
use simple_tcp_server::protocol::MAX_READ;

/// Bytes per read in every design: the reactor's read block, rounded down
/// to whole frames as the reactor rounds it.
pub const READ_LEN: usize = (simple_tcp_server::config::DEFAULT_READ_BUFFER / MAX_READ) * MAX_READ;

/// Bytes of a read block framed at a time before the lines are handed on,
/// as the reactor frames (`FRAME_WINDOW` in src/reactor/mod.rs, rounded
/// down to whole frames): the window and its lines stay in a 1 MiB L2 cache.
pub const FRAME_WINDOW: usize = (256 * 1024 / MAX_READ) * MAX_READ;

/// Room for the threshold plus a window's lines, as the reactor's
/// transcript buffer starts (it grows on the first full window, and keeps
/// its size).
pub const OUT_CAPACITY: usize = FLUSH_AT * 3;

/// A zero-filled anonymous mapping: the kernel supplies zero pages on first
/// touch, so a pooled read block costs only the pages a connection's reads
/// reach (`calloc` may instead hand out a reused heap chunk and zero all of
/// it, which for 1,000 pooled 2 MiB blocks would be 2 GB of memory).
pub struct Mapped {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: `Mapped` owns its mapping exclusively, as a `Box<[u8]>` owns its
// allocation; moving it to another thread moves that ownership.
unsafe impl Send for Mapped {}

impl Mapped {
    /// A fresh mapping of `len` zero bytes.
    pub fn new(len: usize) -> io::Result<Mapped> {
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
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mapped { ptr, len })
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
pub struct ConnBuffers {
    read: Mapped,
    out: Vec<u8>,
}

/// Buffers of connections that have closed, for the next ones.
static POOL: Mutex<Vec<ConnBuffers>> = Mutex::new(Vec::new());

impl ConnBuffers {
    fn new() -> io::Result<ConnBuffers> {
        Ok(ConnBuffers {
            read: Mapped::new(READ_LEN)?,
            out: Vec::with_capacity(OUT_CAPACITY),
        })
    }

    /// Puts buffers for `n` connections in the pool (outside the clock).
    pub fn fill_pool(n: usize) -> io::Result<()> {
        let mut pool = POOL.lock().map_err(|_| io::Error::other("buffer pool poisoned"))?;
        while pool.len() < n {
            pool.push(ConnBuffers::new()?);
        }
        Ok(())
    }

    /// Puts buffers for `n` connections in the pool and writes every page
    /// of them, so that no connection's read or lines fault a page in (the
    /// reactor touches its buffers at start the same way).
    pub fn prefault_pool(n: usize) -> io::Result<()> {
        let mut pool = POOL.lock().map_err(|_| io::Error::other("buffer pool poisoned"))?;
        while pool.len() < n {
            let mut buffers = ConnBuffers::new()?;
            buffers.read.fill(0);
            let capacity = buffers.out.capacity();
            buffers.out.resize(capacity, 0);
            buffers.out.clear();
            pool.push(buffers);
        }
        Ok(())
    }

    /// Buffers for a new connection: from the pool, or new if it is empty.
    fn take() -> io::Result<ConnBuffers> {
        match POOL.lock().ok().and_then(|mut pool| pool.pop()) {
            Some(buffers) => Ok(buffers),
            None => ConnBuffers::new(),
        }
    }

    /// Gives the buffers back for the next connection.
    fn give_back(mut self) {
        self.out.clear();
        if let Ok(mut pool) = POOL.lock() {
            pool.push(self);
        }
    }
}

/// The parts of a read of `n` bytes that are framed one at a time.
pub fn windows(n: usize) -> impl Iterator<Item = Range<usize>> {
    (0..n)
        .step_by(FRAME_WINDOW)
        .map(move |at| at..(at + FRAME_WINDOW).min(n))
}

/// One connection's side of the framing path: its buffers and its framer.
pub struct Lines {
    framer: Framer,
    buffers: ConnBuffers,
}

impl Lines {
    /// Buffers for a new connection, from the pool.
    pub fn new() -> io::Result<Lines> {
        Ok(Lines {
            framer: Framer::new(MAX_READ, false),
            buffers: ConnBuffers::take()?,
        })
    }

    /// Where the next read goes.
    pub fn read_buf(&mut self) -> &mut [u8] {
        &mut self.buffers.read
    }

    /// `LABEL  ADDR` as a line.
    pub fn addr_line(&mut self, label: &str, addr: SocketAddr) {
        let _ = writeln!(self.buffers.out, "{label}{addr}");
    }

    /// Frames `part` of the read block (at most a [`FRAME_WINDOW`], see
    /// [`windows`]) into the lines.
    pub fn frame(&mut self, part: Range<usize>) {
        let ConnBuffers { read, out } = &mut self.buffers;
        self.framer.frame_block(out, b"", &read[part]);
    }

    /// Whether the lines have passed [`FLUSH_AT`] and should be handed on.
    pub fn is_batch(&self) -> bool {
        self.buffers.out.len() >= FLUSH_AT
    }

    /// The lines framed so far (whole lines), to hand on: whoever takes
    /// them leaves the buffer empty.
    pub fn out(&mut self) -> &mut Vec<u8> {
        &mut self.buffers.out
    }

    /// Frames the `n` bytes just read, a window at a time, handing the
    /// lines to `hand` (which leaves them empty) whenever they pass
    /// [`FLUSH_AT`]. After a short read (the socket is drained and the
    /// thread or task is about to wait), the rest is handed on too, as the
    /// reactor writes before it blocks.
    pub fn frame_read(&mut self, n: usize, mut hand: impl FnMut(&mut Vec<u8>)) {
        for part in windows(n) {
            self.frame(part);
            if self.is_batch() {
                hand(&mut self.buffers.out);
            }
        }
        if n < READ_LEN && !self.buffers.out.is_empty() {
            hand(&mut self.buffers.out);
        }
    }

    /// The connection is done (its lines handed on): its buffers go back.
    pub fn finish(self) {
        self.buffers.give_back();
    }
}
