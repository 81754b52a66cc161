//! Steering new clients to the workers that can serve them.
//!
//! Each worker has its own listener in one `SO_REUSEPORT` group, and the
//! kernel picks the listener a new connection joins. Its own pick is a
//! hash of the addresses over every listener in the group, including the
//! listener of a worker that is dead (waiting out its restart), stopped
//! (SIGSTOP) or draining: clients queued there would wait for it. So the
//! supervisor attaches a classic BPF program to the group
//! (`SO_ATTACH_REUSEPORT_CBPF`) that hashes the client's address and port
//! over the listeners of the workers that are serving, and attaches a new
//! one whenever that set changes. The hash spreads clients as evenly as the
//! kernel's own, so no worker passes its share of the descriptors.
//!
//! The program reads the client's address and port from the packet's IP
//! and TCP headers (IPv4 with any header length, IPv6 without extension
//! headers, which a TCP SYN does not carry); `socks[i]` in the group is the
//! `i`-th listener bound, which the supervisor binds in worker order.

use std::io;
use std::os::fd::AsRawFd;

/// `SO_ATTACH_REUSEPORT_CBPF` (Linux 4.5).
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

/// The largest group a program can steer: two instructions per listener,
/// within the kernel's 4096-instruction limit for classic BPF.
pub const MAX_LISTENERS: usize = 2000;

/// One classic BPF instruction.
fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt: 0, jf: 0, k }
}

/// A conditional jump: `jt`/`jf` instructions forward when true/false.
fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The program that hashes a new client over the listeners `targets` (by
/// their index in the group): its address and port, or with `by_address`
/// its address alone (all of one address's connections to one listener).
/// `targets` must not be empty.
pub fn program(targets: &[usize], by_address: bool) -> Vec<libc::sock_filter> {
    use libc::{
        BPF_A, BPF_ABS, BPF_ALU, BPF_B, BPF_H, BPF_IND, BPF_JA, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_LDX, BPF_MISC,
        BPF_MOD, BPF_MSH, BPF_MUL, BPF_RET, BPF_RSH, BPF_TAX, BPF_W, BPF_X, BPF_XOR,
    };
    // Loads relative to the network (IP) header.
    let net = |offset: u32| (libc::SKF_NET_OFF as u32).wrapping_add(offset);
    let mut p = vec![
        // A = IP version.
        stmt((BPF_LD | BPF_B | BPF_ABS) as u16, net(0)),
        stmt((BPF_ALU | BPF_RSH | BPF_K) as u16, 4),
        jump((BPF_JMP | BPF_JEQ | BPF_K) as u16, 6, 5, 0),
        // IPv4: X = header length; A = source port; X = A; A = source address.
        stmt((BPF_LDX | BPF_B | BPF_MSH) as u16, net(0)),
        stmt((BPF_LD | BPF_H | BPF_IND) as u16, net(0)),
        stmt((BPF_MISC | BPF_TAX) as u16, 0),
        stmt((BPF_LD | BPF_W | BPF_ABS) as u16, net(12)),
        stmt((BPF_JMP | BPF_JA) as u16, 3),
        // IPv6: A = source port; X = A; A = the source address's last word.
        stmt((BPF_LD | BPF_H | BPF_ABS) as u16, net(40)),
        stmt((BPF_MISC | BPF_TAX) as u16, 0),
        stmt((BPF_LD | BPF_W | BPF_ABS) as u16, net(20)),
        // A = ((A ^ X) * golden ratio) >> 16, mod the number of targets
        // (by address: A ^ 0).
        if by_address {
            stmt((BPF_ALU | BPF_XOR | BPF_K) as u16, 0)
        } else {
            stmt((BPF_ALU | BPF_XOR | BPF_X) as u16, 0)
        },
        stmt((BPF_ALU | BPF_MUL | BPF_K) as u16, 0x9E37_79B1),
        stmt((BPF_ALU | BPF_RSH | BPF_K) as u16, 16),
        stmt((BPF_ALU | BPF_MOD | BPF_K) as u16, targets.len() as u32),
    ];
    // A table: the i-th target for A == i.
    for (i, &target) in targets.iter().enumerate() {
        p.push(jump((BPF_JMP | BPF_JEQ | BPF_K) as u16, i as u32, 0, 1));
        p.push(stmt((BPF_RET | BPF_K) as u16, target as u32));
    }
    // Not reached (A < len); a load that fails also returns 0.
    p.push(stmt((BPF_RET | BPF_A) as u16, 0));
    p
}

/// Points the `SO_REUSEPORT` group of `listener` at the listeners
/// `targets` (indexes in the group, in the order they were bound), by each
/// client's address and port, or its address alone (`by_address`).
pub fn steer(listener: &impl AsRawFd, targets: &[usize], by_address: bool) -> io::Result<()> {
    if targets.is_empty() || targets.len() > MAX_LISTENERS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "steering needs 1 to 2000 listeners",
        ));
    }
    let mut code = program(targets, by_address);
    let prog = libc::sock_fprog {
        len: code.len() as u16,
        filter: code.as_mut_ptr(),
    };
    // SAFETY: setsockopt reads one sock_fprog, whose `filter` points to
    // `len` instructions that live until the call returns (the kernel
    // copies them).
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{SocketAddr, TcpListener, TcpStream};

    /// Connects `n` clients to `addr` and counts which of `listeners`
    /// accepted each.
    fn spread(listeners: &[TcpListener], addr: SocketAddr, n: usize) -> Vec<usize> {
        let mut counts = vec![0; listeners.len()];
        let mut clients = Vec::new();
        for _ in 0..n {
            clients.push(TcpStream::connect(addr).expect("connect"));
        }
        let mut found = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while found < n {
            assert!(std::time::Instant::now() < deadline, "only {found} of {n} accepted");
            for (i, l) in listeners.iter().enumerate() {
                while l.accept().is_ok() {
                    counts[i] += 1;
                    found += 1;
                }
            }
        }
        counts
    }

    fn group(addr: &str) -> Vec<TcpListener> {
        crate::listen::listen_many(addr.parse().expect("addr"), 1024, 4).expect("listen")
    }

    #[test]
    fn clients_go_only_to_the_listeners_steered_to_and_evenly() {
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let listeners = group(addr);
            let at = listeners[0].local_addr().expect("addr");
            // Unsteered, the kernel uses every listener.
            assert!(spread(&listeners, at, 400).iter().all(|&c| c > 0), "{addr}");
            steer(&listeners[0], &[0, 2, 3], false).expect("attach");
            let counts = spread(&listeners, at, 600);
            assert_eq!(counts[1], 0, "{addr}: {counts:?}");
            for i in [0, 2, 3] {
                // 200 each on average; a fair hash stays well inside this.
                assert!((120..=280).contains(&counts[i]), "{addr}: {counts:?}");
            }
            // A new program replaces the old one.
            steer(&listeners[3], &[1], false).expect("attach");
            assert_eq!(spread(&listeners, at, 50), [0, 50, 0, 0], "{addr}");
        }
    }

    #[test]
    fn ipv4_clients_of_a_dual_stack_group_are_steered_too() {
        let listeners = group("[::]:0");
        let port = listeners[0].local_addr().expect("addr").port();
        steer(&listeners[0], &[2], false).expect("attach");
        let at: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        assert_eq!(spread(&listeners, at, 30), [0, 0, 30, 0]);
    }

    #[test]
    fn by_address_every_connection_of_one_address_goes_to_one_listener() {
        let listeners = group("127.0.0.1:0");
        let at = listeners[0].local_addr().expect("addr");
        steer(&listeners[0], &[0, 1, 2, 3], true).expect("attach");
        // One address (127.0.0.1), many ports: one listener.
        let counts = spread(&listeners, at, 100);
        assert_eq!(counts.iter().filter(|&&c| c > 0).count(), 1, "{counts:?}");
        assert_eq!(counts.iter().sum::<usize>(), 100);
    }

    #[test]
    fn no_targets_is_refused() {
        let listeners = group("127.0.0.1:0");
        assert!(steer(&listeners[0], &[], false).is_err());
    }
}
