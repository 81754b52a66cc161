//! The open-file limit: raised at start (as Go's runtime does since 1.19),
//! and the connection cap derived from it.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Descriptors kept back from the connection cap for the listener, the
/// poller, stdio, the signal pipe and logs. Redis keeps the same 32.
pub const RESERVED_FDS: u64 = 32;

/// The process's open-file limit as (soft, hard).
pub fn nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through a pointer to a live local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
    Ok((lim.rlim_cur as u64, lim.rlim_max as u64))
}

/// Sets the soft open-file limit to `soft` (the hard limit stays).
pub fn set_soft_nofile_limit(soft: u64) -> io::Result<()> {
    let (_, hard) = nofile_limit()?;
    let lim = libc::rlimit {
        rlim_cur: soft.min(hard) as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    // SAFETY: setrlimit reads one rlimit through a pointer to a live local.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Raises the soft open-file limit to the hard limit; returns the new soft
/// limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let (soft, hard) = nofile_limit()?;
    if soft < hard {
        set_soft_nofile_limit(hard)?;
    }
    Ok(nofile_limit()?.0)
}

/// The default connection cap for a soft open-file limit: all of it but
/// [`RESERVED_FDS`], and at least one.
pub fn max_connections_for(soft_limit: u64) -> usize {
    usize::try_from(soft_limit.saturating_sub(RESERVED_FDS).max(1)).unwrap_or(usize::MAX)
}

/// The default connection cap for this process's current soft limit.
pub fn default_max_connections() -> usize {
    match nofile_limit() {
        Ok((soft, _)) => max_connections_for(soft),
        Err(_) => max_connections_for(1024),
    }
}

/// The most descriptor slots [`grow_fd_table`] makes room for ahead of
/// need: 65,536 (half a MiB of the kernel's table). Past it the table
/// grows as descriptors are opened, each doubling a rarer, smaller cost.
pub const GROW_FD_TABLE_MAX: u64 = 65_536;

/// Makes this process's descriptor table hold `slots` descriptors now
/// (bounded by the soft open-file limit and [`GROW_FD_TABLE_MAX`]), by
/// duplicating `any` to the highest of them and closing the copy.
///
/// Call it while the process runs one thread. The kernel doubles the
/// table as descriptors are opened, and while the table is shared by
/// threads each doubling first waits for an RCU grace period
/// (`expand_fdtable`): milliseconds in which the thread that accepts is
/// stopped, at every doubling from 64 slots up (five on the way to 2,000
/// connections). A process with one thread grows its table without the
/// wait, so a server that will run threads (`--threads`, `--metrics`, the
/// reload thread of `--access-file`) grows it first. The table is kernel
/// memory, 8 bytes a slot (rounded up to a power of two), taken whether
/// or not the connections come.
pub fn grow_fd_table(any: BorrowedFd<'_>, slots: u64) -> io::Result<u64> {
    let soft = nofile_limit()?.0;
    let slots = slots.min(soft).min(GROW_FD_TABLE_MAX);
    let Ok(highest) = libc::c_int::try_from(slots.saturating_sub(1)) else {
        return Ok(0);
    };
    if highest <= any.as_raw_fd() {
        return Ok(slots);
    }
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) reads the descriptor `any` borrows
    // (open for the whole call) and returns a new one, or -1.
    let copy = unsafe { libc::fcntl(any.as_raw_fd(), libc::F_DUPFD_CLOEXEC, highest) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `copy` was just returned by fcntl and belongs to nothing
    // else; dropping it closes it.
    drop(unsafe { OwnedFd::from_raw_fd(copy) });
    Ok(slots)
}

/// The size of this process's descriptor table, in slots (`FDSize` of
/// `/proc/self/status`), if `/proc` says.
pub fn fd_table_size() -> Option<u64> {
    fd_table_size_of("self")
}

/// The size of process `pid`'s descriptor table (`"self"` for this one).
pub fn fd_table_size_of(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("FDSize:"))?
        .trim()
        .parse()
        .ok()
}

/// How many more files the machine lets all processes open together:
/// `fs.file-max` less those open now (`fs.file-nr`), if `/proc` says.
pub fn machine_files_free() -> Option<u64> {
    let max: u64 = std::fs::read_to_string("/proc/sys/fs/file-max")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let nr = std::fs::read_to_string("/proc/sys/fs/file-nr").ok()?;
    let open: u64 = nr.split_whitespace().next()?.parse().ok()?;
    Some(max.saturating_sub(open))
}

/// How many connections `processes` processes can hold, each under the
/// hard open-file limit `hard`, on a machine with `machine_free` files to
/// spare (each connection is one descriptor in the server).
pub fn reachable_connections(processes: u64, hard: u64, machine_free: Option<u64>) -> u64 {
    let per_process = hard.saturating_sub(RESERVED_FDS);
    let by_processes = per_process.saturating_mul(processes);
    machine_free.map_or(by_processes, |free| by_processes.min(free))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_keeps_a_reserve() {
        assert_eq!(max_connections_for(20000), 19968);
        assert_eq!(max_connections_for(64), 32);
        assert_eq!(max_connections_for(10), 1);
    }

    /// Held by the tests that set or read this process's open-file limit:
    /// the test harness runs them on threads of one process.
    static LIMIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn sets_and_raises_the_soft_limit() {
        let _limit = LIMIT.lock().unwrap_or_else(|e| e.into_inner());
        let (_, hard) = nofile_limit().expect("getrlimit");
        // What is set is what is read back; the hard limit stays.
        let lower = (hard / 2).clamp(1, 4096);
        set_soft_nofile_limit(lower).expect("setrlimit");
        assert_eq!(nofile_limit().expect("getrlimit"), (lower, hard));
        // Raising goes all the way to the hard limit, and says so.
        assert_eq!(raise_nofile_limit().expect("raise"), hard);
        assert_eq!(nofile_limit().expect("getrlimit"), (hard, hard));
        // The default cap follows the soft limit.
        assert_eq!(default_max_connections(), max_connections_for(hard));
    }

    #[test]
    fn grows_the_descriptor_table_ahead_of_need() {
        use std::os::fd::AsFd;
        let _limit = LIMIT.lock().unwrap_or_else(|e| e.into_inner());
        let (soft, _) = nofile_limit().expect("getrlimit");
        let want = soft.min(GROW_FD_TABLE_MAX).min(5000);
        let before = fd_table_size().expect("FDSize in /proc/self/status");
        let null = std::fs::File::open("/dev/null").expect("/dev/null");
        let grown = grow_fd_table(null.as_fd(), want).expect("grow");
        assert_eq!(grown, want);
        let after = fd_table_size().expect("FDSize");
        assert!(
            after >= want && after >= before,
            "FDSize {before} -> {after}, asked {want}"
        );
        // The copy that made the room is closed again.
        let highest = libc::c_int::try_from(want - 1).expect("fits");
        // SAFETY: F_GETFD only asks whether the descriptor is open.
        assert_eq!(unsafe { libc::fcntl(highest, libc::F_GETFD) }, -1);
        // Never past the soft limit or the bound.
        assert!(grow_fd_table(null.as_fd(), u64::MAX).expect("grow") <= soft.min(GROW_FD_TABLE_MAX));
    }
}
