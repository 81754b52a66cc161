//! Process titles, as nginx sets them, so that `ps` and `top` tell the
//! supervisor of `--workers` from its workers: the command line (`ps -o
//! args`, `top -c`) reads `simple_tcp_server: worker 3`, and the 15-byte
//! name (`ps -o comm`, plain `top`) `stcp worker 3`.
//!
//! The command line is the memory that held the program's arguments when
//! it started (the kernel shows that range as `/proc/PID/cmdline`): the
//! title is written over it, cut to its length, the rest zeroed. Call
//! [`set`] once the arguments have been read: `std::env::args` reads that
//! same memory.

use std::io;

/// Sets the process's command line to `title` (cut to the room the
/// original arguments had) and its name to `name` (cut to 15 bytes).
pub fn set(title: &str, name: &str) -> io::Result<()> {
    let mut short = [0u8; 16];
    let n = name.len().min(15);
    short[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes
    // from a live local.
    if unsafe { libc::prctl(libc::PR_SET_NAME, short.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (start, end) = argument_area()?;
    let room = end.saturating_sub(start);
    if room < 2 {
        return Ok(());
    }
    let len = title.len().min(room - 1);
    // SAFETY: [start, end) is this process's argument memory, as the kernel
    // reports it: mapped and writable (the top of the main thread's stack).
    // Nothing holds a Rust reference to it (std keeps only the raw `argv`
    // pointers, and copies when asked for the arguments). The last byte
    // stays NUL, so the kernel shows exactly this range.
    unsafe {
        let area = std::slice::from_raw_parts_mut(start as *mut u8, room);
        area[..len].copy_from_slice(&title.as_bytes()[..len]);
        area[len..].fill(0);
    }
    Ok(())
}

/// Where the arguments live: `arg_start` and `arg_end` of
/// `/proc/self/stat` (fields 48 and 49).
fn argument_area() -> io::Result<(usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // The name (field 2) may hold spaces and parentheses: count from its end.
    let rest = stat
        .rfind(')')
        .map(|at| &stat[at + 2..])
        .ok_or_else(|| io::Error::other("unexpected /proc/self/stat"))?;
    let field = |n: usize| -> io::Result<usize> {
        rest.split_whitespace()
            .nth(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other("no argument range in /proc/self/stat"))
    };
    Ok((field(48)?, field(49)?))
}
