//! The open-connection counts the workers share, so that one
//! `--max-connections` holds across processes: a memory file (`memfd`) of
//! one counter for all the workers and one per worker, mapped shared by the
//! supervisor and handed to every worker as a descriptor. A worker counts
//! each connection in both; when a worker dies without closing its
//! connections (the kernel closes them), the supervisor takes its own
//! counter back off the total.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::AtomicUsize;

/// The shared counters: `[all, worker 0, worker 1, ...]`, mapped for the
/// life of the process (never unmapped, hence `'static`).
#[derive(Debug, Clone, Copy)]
pub struct Counters {
    slots: &'static [AtomicUsize],
}

impl Counters {
    /// Creates counters for `workers` workers, all zero, and the memory
    /// file that carries them to the workers.
    pub fn create(workers: usize) -> io::Result<(Counters, OwnedFd)> {
        // SAFETY: memfd_create reads a NUL-terminated name from a static
        // string; the descriptor it returns is ours alone.
        let fd = unsafe { libc::memfd_create(c"simple_tcp_server-counters".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let len = Counters::bytes(workers);
        let file = std::fs::File::from(fd);
        file.set_len(len as u64)?;
        let fd = OwnedFd::from(file);
        Ok((Counters::map(&fd, workers)?, fd))
    }

    /// Maps counters for `workers` workers from the memory file `fd` (a
    /// worker's side).
    pub fn open(fd: &OwnedFd, workers: usize) -> io::Result<Counters> {
        let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstat writes one stat through a pointer to a live local.
        if unsafe { libc::fstat(fd.as_raw_fd(), stat.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fstat succeeded, so it initialised `stat`.
        let size = unsafe { stat.assume_init() }.st_size;
        if usize::try_from(size).ok() != Some(Counters::bytes(workers)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the shared counters do not match the number of workers",
            ));
        }
        Counters::map(fd, workers)
    }

    fn bytes(workers: usize) -> usize {
        (1 + workers) * std::mem::size_of::<AtomicUsize>()
    }

    fn map(fd: &OwnedFd, workers: usize) -> io::Result<Counters> {
        let len = Counters::bytes(workers);
        // SAFETY: a fresh shared mapping of `len` bytes of a file at least
        // that long; the kernel picks the (page-aligned) address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the mapping is `len` bytes, page-aligned (so aligned for
        // AtomicUsize), readable and writable, never unmapped (it lives as
        // long as the process), and only ever accessed through atomics,
        // here and in the other processes that map it; the file's bytes are
        // valid `AtomicUsize`s whatever they hold.
        let slots = unsafe { std::slice::from_raw_parts(ptr.cast::<AtomicUsize>(), 1 + workers) };
        Ok(Counters { slots })
    }

    /// Connections open in all workers together.
    pub fn all(&self) -> &'static AtomicUsize {
        &self.slots[0]
    }

    /// Worker `id`'s own count.
    pub fn worker(&self, id: usize) -> &'static AtomicUsize {
        &self.slots[1 + id]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn counters_are_shared_through_the_memory_file() {
        let (supervisor, fd) = Counters::create(3).expect("create");
        let worker = Counters::open(&fd, 3).expect("open");
        worker.all().fetch_add(5, Ordering::SeqCst);
        worker.worker(2).fetch_add(5, Ordering::SeqCst);
        assert_eq!(supervisor.all().load(Ordering::SeqCst), 5);
        assert_eq!(supervisor.worker(2).load(Ordering::SeqCst), 5);
        assert_eq!(supervisor.worker(0).load(Ordering::SeqCst), 0);
        assert!(Counters::open(&fd, 4).is_err(), "a mismatched worker count is refused");
    }
}
