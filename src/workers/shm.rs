//! The memory a supervisor shares with its workers: a memory file
//! (`memfd`), sealed at its size, mapped by the supervisor and handed to
//! every worker as a descriptor.
//!
//! It holds, for each worker, the connections it has open (the cap counts
//! these: a worker takes a slot by adding one to its own count, then checks
//! the sum of all counts, so a worker that dies at any moment leaves only
//! its own count behind, which the supervisor clears when it reaps it), and
//! one [`Published`] slot per reactor, where the worker's reactors publish
//! their counters once per wakeup. So the supervisor knows what every
//! worker did, a dead one's up to its last wakeup; it keeps the counts of
//! each worker's ended processes here too (one more slot per worker), so
//! that its signal handlers can add everything up without a lock.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::reactor::stats::{Published, Summary};

/// One worker's own count, in a cache line of its own (two, for the
/// adjacent-line prefetcher): workers take and give back slots without
/// touching each other's lines.
#[derive(Debug, Default)]
#[repr(C, align(128))]
pub struct WorkerSlot {
    /// Connections the worker has open.
    pub open: AtomicU64,
}

/// The start of the memory: what it was made for, so that a worker given
/// memory of another shape refuses it instead of reading past its end.
#[derive(Debug, Default)]
#[repr(C, align(128))]
struct Header {
    magic: AtomicU64,
    workers: AtomicU64,
    reactors: AtomicU64,
    /// Odd while the supervisor moves a dead worker's counts to its retired
    /// slot (a reader that sees it odd, or changed, reads again).
    moving: AtomicU64,
}

/// The access rules the supervisor read (`--access-file`), for its workers
/// (which never read the file themselves: a restarted worker takes the
/// rules in force, whatever the file says by then): the file's text, under
/// a sequence number that is odd while the supervisor writes it.
#[derive(Debug)]
#[repr(C, align(128))]
struct RulesArea {
    seq: AtomicU64,
    len: AtomicU64,
    words: [AtomicU64; RULES_BYTES / 8],
}

/// The largest access file the supervisor passes on.
pub const RULES_BYTES: usize = 1 << 20;

/// [`Header::magic`]: "stcpshm" and a layout version.
const MAGIC: u64 = 0x7374_6370_7368_6d02;

/// The shared memory, mapped for the life of the process (never unmapped,
/// hence `'static`).
#[derive(Debug, Clone, Copy)]
pub struct Shm {
    /// One slot per worker.
    slots: &'static [WorkerSlot],
    /// `reactors` slots per worker, worker by worker.
    published: &'static [Published],
    /// One slot per worker: the counts of its processes that have ended
    /// (written by the supervisor only).
    retired: &'static [Published],
    /// The access rules in force.
    rules: &'static RulesArea,
    /// Reactors per worker (`--threads`).
    reactors: usize,
}

impl Shm {
    /// Creates the memory for `workers` workers of `reactors` reactors
    /// each, all zero, and the sealed memory file that carries it to them.
    pub fn create(workers: usize, reactors: usize) -> io::Result<(Shm, OwnedFd)> {
        let len = Shm::bytes(workers, reactors)?;
        // SAFETY: memfd_create reads a NUL-terminated name from a static
        // string; the descriptor it returns is ours alone.
        let fd = unsafe {
            libc::memfd_create(
                c"simple_tcp_server-shared".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let file = std::fs::File::from(fd);
        file.set_len(len as u64)?;
        let fd = OwnedFd::from(file);
        // Nobody (a worker, or anyone it runs) can shrink the file under the
        // supervisor's mapping, which would make the supervisor fault on it.
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: F_ADD_SEALS on a memfd we own; no pointers.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let shm = Shm::map(&fd, workers, reactors)?;
        shm.header().magic.store(MAGIC, Ordering::Relaxed);
        shm.header().workers.store(workers as u64, Ordering::Relaxed);
        shm.header().reactors.store(reactors as u64, Ordering::Relaxed);
        Ok((shm, fd))
    }

    /// Maps the memory made for `workers` workers of `reactors` reactors
    /// from the memory file `fd` (a worker's side). Memory of another size
    /// or shape, or a file that could still shrink, is refused.
    pub fn open(fd: &OwnedFd, workers: usize, reactors: usize) -> io::Result<Shm> {
        let mismatch = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the shared memory does not match: {what}"),
            )
        };
        let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstat writes one stat through a pointer to a live local.
        if unsafe { libc::fstat(fd.as_raw_fd(), stat.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fstat succeeded, so it initialised `stat`.
        let size = unsafe { stat.assume_init() }.st_size;
        if usize::try_from(size).ok() != Some(Shm::bytes(workers, reactors)?) {
            return Err(mismatch("its size"));
        }
        // SAFETY: F_GET_SEALS on a descriptor we own; no pointers.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            return Err(mismatch("it is not sealed against shrinking"));
        }
        let shm = Shm::map(fd, workers, reactors)?;
        let header = shm.header();
        if header.magic.load(Ordering::Relaxed) != MAGIC
            || header.workers.load(Ordering::Relaxed) != workers as u64
            || header.reactors.load(Ordering::Relaxed) != reactors as u64
        {
            return Err(mismatch("its header"));
        }
        Ok(shm)
    }

    /// The memory's length for `workers` workers of `reactors` reactors.
    fn bytes(workers: usize, reactors: usize) -> io::Result<usize> {
        // One published slot per reactor, and one more per worker for its
        // retired counts.
        let published = workers
            .checked_mul(reactors)
            .filter(|&n| n > 0)
            .and_then(|n| n.checked_add(workers));
        published
            .and_then(|n| n.checked_mul(std::mem::size_of::<Published>()))
            .and_then(|p| p.checked_add(std::mem::size_of::<Header>()))
            .and_then(|p| p.checked_add(workers * std::mem::size_of::<WorkerSlot>()))
            .and_then(|p| p.checked_add(std::mem::size_of::<RulesArea>()))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no workers, or far too many"))
    }

    fn map(fd: &OwnedFd, workers: usize, reactors: usize) -> io::Result<Shm> {
        let len = Shm::bytes(workers, reactors)?;
        // SAFETY: a fresh shared mapping of `len` bytes of a file exactly
        // that long (checked, and sealed so it cannot shrink); the kernel
        // picks the (page-aligned) address.
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
        let base = ptr.cast::<u8>();
        let header = std::mem::size_of::<Header>();
        let slots_len = workers * std::mem::size_of::<WorkerSlot>();
        // SAFETY: the mapping is `len` bytes: a header, `workers` slots,
        // `workers * (reactors + 1)` published slots and the rules area, each
        // a multiple of 128
        // bytes, so each part starts 128-aligned after the page-aligned
        // base. It is readable and writable, never unmapped (it lives as
        // long as the process), and only ever accessed through atomics,
        // here and in the other processes that map it; any bytes are valid
        // atomics.
        let (slots, published) = unsafe {
            (
                std::slice::from_raw_parts(base.add(header).cast::<WorkerSlot>(), workers),
                std::slice::from_raw_parts(
                    base.add(header + slots_len).cast::<Published>(),
                    workers * reactors + workers,
                ),
            )
        };
        let (published, retired) = published.split_at(workers * reactors);
        let rules_at = header + slots_len + (workers * reactors + workers) * std::mem::size_of::<Published>();
        // SAFETY: the rules area is the mapping's last part, 128-aligned
        // after the parts before it (each a multiple of 128 bytes), inside
        // the `len` bytes mapped; only atomics are in it.
        let rules = unsafe { &*base.add(rules_at).cast::<RulesArea>() };
        Ok(Shm {
            slots,
            published,
            retired,
            rules,
            reactors,
        })
    }

    fn header(&self) -> &'static Header {
        // SAFETY: the header sits right before the slots, in the same
        // mapping, 128-aligned (see `map`).
        unsafe {
            &*self
                .slots
                .as_ptr()
                .cast::<u8>()
                .sub(std::mem::size_of::<Header>())
                .cast::<Header>()
        }
    }

    /// Every worker's slot.
    pub fn slots(&self) -> &'static [WorkerSlot] {
        self.slots
    }

    /// Worker `id`'s open connections.
    pub fn open_of(&self, id: usize) -> u64 {
        self.slots[id].open.load(Ordering::SeqCst)
    }

    /// Puts the access rules' text (an access file the supervisor read and
    /// found good) where the workers read it.
    pub fn set_rules(&self, text: &[u8]) -> io::Result<()> {
        if text.len() > RULES_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("an access file of more than {RULES_BYTES} bytes"),
            ));
        }
        let area = self.rules;
        area.seq.fetch_add(1, Ordering::SeqCst);
        for (i, chunk) in text.chunks(8).enumerate() {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            area.words[i].store(u64::from_le_bytes(word), Ordering::Relaxed);
        }
        area.len.store(text.len() as u64, Ordering::Relaxed);
        area.seq.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// The access rules' text the supervisor last put (empty: none).
    pub fn rules(&self) -> Vec<u8> {
        let area = self.rules;
        loop {
            let before = area.seq.load(Ordering::SeqCst);
            if before % 2 == 1 {
                std::thread::yield_now();
                continue;
            }
            let len = (area.len.load(Ordering::Relaxed) as usize).min(RULES_BYTES);
            let mut text = Vec::with_capacity(len);
            for word in &area.words[..len.div_ceil(8)] {
                text.extend_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
            }
            text.truncate(len);
            if area.seq.load(Ordering::SeqCst) == before {
                return text;
            }
        }
    }

    /// Worker `id`'s reactors' slots.
    pub fn published(&self, id: usize) -> &'static [Published] {
        &self.published[id * self.reactors..(id + 1) * self.reactors]
    }

    /// Worker `id`'s counters as its reactors last published them, added
    /// up, and the connections they had open.
    pub fn counts(&self, id: usize) -> (Summary, u64) {
        let mut total = Summary::default();
        let mut active = 0;
        for p in self.published(id) {
            total.add(&p.load());
            active += p.active();
        }
        (total, active)
    }

    /// Worker `id`'s process is gone: its connections went with it (the
    /// kernel closed them), so its count and counters go back to zero for
    /// the process that replaces it, and the counters it published join its
    /// retired counts, with at least `open_at_stop` open at the stop. With
    /// `died`, the clients it served and had not closed (as far as it had
    /// published) count as lost with it. Returns what it had published.
    pub fn retire(&self, id: usize, died: bool, open_at_stop: u64) -> Summary {
        let moving = &self.header().moving;
        moving.fetch_add(1, Ordering::SeqCst);
        let (mut counts, _) = self.counts(id);
        self.slots[id].open.store(0, Ordering::SeqCst);
        for p in self.published(id) {
            p.clear();
        }
        let published = counts;
        if died {
            counts.lost += counts.accepted.saturating_sub(counts.closed);
        }
        counts.open_at_stop = counts.open_at_stop.max(open_at_stop);
        let mut retired = self.retired[id].load();
        retired.add(&counts);
        self.retired[id].store(&retired, 0);
        moving.fetch_add(1, Ordering::SeqCst);
        published
    }

    /// The counts of worker `id`'s processes that have ended.
    pub fn retired(&self, id: usize) -> Summary {
        self.retired[id].load()
    }

    /// Every worker's counts, ended processes and running ones, added up,
    /// and the connections open now, read while no dead worker's counts are
    /// being moved (so that no counter seems to go back).
    pub fn totals(&self) -> (Summary, u64) {
        let moving = &self.header().moving;
        loop {
            let before = moving.load(Ordering::SeqCst);
            if before % 2 == 1 {
                std::thread::yield_now();
                continue;
            }
            let totals = self.totals_now();
            if moving.load(Ordering::SeqCst) == before {
                return totals;
            }
        }
    }

    /// [`Shm::totals`] as they are this moment, maybe in the middle of a
    /// move. Async-signal-safe (atomic loads only): for a signal handler,
    /// which must not wait for the thread it interrupted.
    pub fn totals_now(&self) -> (Summary, u64) {
        let mut total = Summary::default();
        for id in 0..self.slots.len() {
            total.add(&self.retired(id));
            total.add(&self.counts(id).0);
        }
        let open = self.slots.iter().map(|s| s.open.load(Ordering::Relaxed)).sum();
        (total, open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_shared_through_the_memory_file() {
        let (supervisor, fd) = Shm::create(3, 2).expect("create");
        let worker = Shm::open(&fd, 3, 2).expect("open");
        worker.slots()[2].open.fetch_add(5, Ordering::SeqCst);
        let stats = Summary {
            accepted: 9,
            bytes: 100,
            ..Summary::default()
        };
        worker.published(2)[0].store(&stats, 3);
        worker.published(2)[1].store(&stats, 2);
        assert_eq!(supervisor.open_of(2), 5);
        assert_eq!(supervisor.open_of(0), 0);
        let (total, active) = supervisor.counts(2);
        assert_eq!((total.accepted, total.bytes, active), (18, 200, 5));
        assert_eq!(supervisor.counts(1), (Summary::default(), 0));
        assert_eq!(supervisor.totals().0.bytes, 200);
        assert_eq!(supervisor.retire(2, true, 0).accepted, 18);
        assert_eq!((worker.open_of(2), worker.counts(2)), (0, (Summary::default(), 0)));
        let retired = supervisor.retired(2);
        // Served and not closed, as published: lost with it.
        assert_eq!((retired.accepted, retired.lost), (18, 18));
        // Retired counts add up over the worker's processes.
        worker.published(2)[0].store(&stats, 1);
        supervisor.retire(2, false, 0);
        assert_eq!(supervisor.retired(2).accepted, 27);
        assert_eq!(supervisor.totals(), (supervisor.retired(2), 0));
        // The access rules go from the supervisor to the workers whole.
        assert_eq!(worker.rules(), b"");
        let text = b"allow 10.0.0.0/8\ndeny 10.9.0.0/16\n# 37 bytes and more\n";
        supervisor.set_rules(text).expect("rules");
        assert_eq!(worker.rules(), text);
        supervisor.set_rules(b"deny ::1\n").expect("rules");
        assert_eq!(worker.rules(), b"deny ::1\n");
        assert!(supervisor.set_rules(&vec![b'#'; RULES_BYTES + 1]).is_err());
        assert!(Shm::open(&fd, 4, 2).is_err(), "a mismatched worker count is refused");
        assert!(Shm::open(&fd, 3, 1).is_err(), "a mismatched reactor count is refused");
    }

    /// Worker `id`'s share of `shm`, with the cap checked at every take.
    fn share(shm: &Shm, id: usize) -> crate::config::WorkerShare {
        crate::config::WorkerShare {
            open: shm.slots(),
            id,
            cap_binding: true,
            published: shm.published(id),
            handoff: None,
        }
    }

    #[test]
    fn the_cap_holds_across_workers() {
        let (shm, _fd) = Shm::create(2, 1).expect("create");
        let (a, b) = (share(&shm, 0), share(&shm, 1));
        assert!(a.take(3) && b.take(3) && a.take(3));
        assert!(!b.take(3) && !a.take(3), "the cap counts every worker");
        b.release();
        assert!(a.take(3));
        assert_eq!((shm.open_of(0), shm.open_of(1)), (3, 0));
    }

    #[test]
    fn workers_killed_at_any_moment_leak_no_slot() {
        // Worker processes take and give back slots as fast as they can and
        // are killed wherever they are, in the middle of a take or a
        // release too; once the supervisor has retired them, every slot is
        // free again. (A count over all workers that a worker updates
        // beside its own would keep what a death tore.)
        const CAP: usize = 8;
        let (shm, _fd) = Shm::create(3, 1).expect("create");
        for round in 0..20u32 {
            let mut pids = Vec::new();
            for id in 0..3 {
                let mine = share(&shm, id);
                // SAFETY: the child only touches atomics in the shared
                // mapping and never returns (no allocation, no lock: fine
                // after fork in a threaded process).
                let pid = unsafe { libc::fork() };
                assert!(pid >= 0, "fork");
                if pid == 0 {
                    loop {
                        if mine.take(CAP) {
                            mine.release();
                        }
                    }
                }
                pids.push(pid);
            }
            // Let them run a varying while, then kill them wherever they are.
            std::thread::sleep(std::time::Duration::from_micros(500 + 97 * u64::from(round)));
            for (id, &pid) in pids.iter().enumerate() {
                // SAFETY: kill and waitpid on this test's own child.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    let mut status = 0;
                    assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
                }
                shm.retire(id, true, 0);
            }
            let taker = share(&shm, 0);
            assert!((0..CAP).all(|_| taker.take(CAP)), "round {round}: a slot leaked");
            assert!(!taker.take(CAP));
            shm.retire(0, true, 0);
        }
    }

    #[test]
    fn the_memory_file_cannot_be_shrunk_or_grown() {
        let (_shm, fd) = Shm::create(2, 1).expect("create");
        let file = std::fs::File::from(fd.try_clone().expect("dup"));
        let len = file.metadata().expect("stat").len();
        let shrink = file.set_len(len / 2).expect_err("a sealed file cannot shrink");
        assert_eq!(shrink.raw_os_error(), Some(libc::EPERM));
        let grow = file.set_len(len * 2).expect_err("a sealed file cannot grow");
        assert_eq!(grow.raw_os_error(), Some(libc::EPERM));
        // Nor can the seals be taken off.
        // SAFETY: F_ADD_SEALS on a descriptor we own; no pointers.
        let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_WRITE) };
        assert_eq!(rc, -1);
    }

    #[test]
    fn an_unsealed_file_is_refused() {
        // SAFETY: memfd_create reads a static NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"t".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create");
        // SAFETY: a fresh descriptor nobody else owns.
        let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.set_len(Shm::bytes(1, 1).expect("bytes") as u64).expect("size");
        assert!(Shm::open(&OwnedFd::from(file), 1, 1).is_err());
    }
}
