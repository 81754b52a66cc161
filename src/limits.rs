//! The open-file limit: raised at start (as Go's runtime does since 1.19),
//! and the connection cap derived from it.

use std::io;

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

    #[test]
    fn sets_and_raises_the_soft_limit() {
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
}
