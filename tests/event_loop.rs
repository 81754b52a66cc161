//! The poll loop between events: what it has read is written before it
//! pauses to let events gather (`--coalesce`), and the idle sweep
//! (`--idle-timeout`) does not wake a server that has no clients, however
//! large its slab.

mod util;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use util::{PATIENCE, ServerProcess, connect_greeted, frames_of, process_state, send, unacked, wait_until};

/// The system call that process `pid`'s main thread is blocked in, from
/// `/proc/PID/syscall` (`None` while it runs).
fn blocked_in(pid: i32) -> Option<i64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

fn kill(pid: i32, signal: i32) {
    // SAFETY: kill has no memory effects; `pid` is a child of this test that
    // has not been reaped.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill({pid}, {signal})");
}

/// Stops process `pid` and waits until it is stopped.
fn stop(pid: i32) {
    kill(pid, libc::SIGSTOP);
    wait_until("the server to stop", || process_state(pid) == 'T');
}

/// The bytes of every frame in an untagged transcript, in order.
fn printed(out: &[u8]) -> Vec<u8> {
    frames_of(out).into_iter().flat_map(|(_, _, bytes)| bytes).collect()
}

/// Whether process `pid` is asleep in a pause (`nanosleep`).
fn pausing(pid: i32) -> bool {
    matches!(blocked_in(pid), Some(n) if n == libc::SYS_clock_nanosleep || n == libc::SYS_nanosleep)
}

/// With `--coalesce`, the loop sleeps between polls under chat load; every
/// line for what it has read is written before it goes to sleep, never
/// held through the pause. Checked three times, each with the server
/// stopped inside a pause.
#[test]
fn lines_are_written_before_a_coalescing_pause() {
    // A window long enough that the server is almost always asleep in it.
    let server = ServerProcess::start(&["--coalesce", "200ms"]);
    let pid = server.pid();
    let mut client = connect_greeted(server.addr);
    let client_addr = client.local_addr().expect("addr");
    let mut sent = 0usize;
    let deadline = Instant::now() + PATIENCE;
    let mut checked = 0;
    while checked < 3 {
        assert!(Instant::now() < deadline, "never saw the server pause to coalesce");
        // A steady stream of small messages, as in a chat.
        send(&mut client, format!("msg{sent:07}").as_bytes());
        sent += 10;
        std::thread::sleep(Duration::from_millis(2));
        if !pausing(pid) {
            continue;
        }
        stop(pid);
        if !pausing(pid) {
            kill(pid, libc::SIGCONT);
            continue;
        }
        // Stopped inside a pause. Whatever it has read must be written.
        wait_until("the client's bytes to reach the server's kernel", || {
            unacked(&client) == 0
        });
        let unread = receive_queue(server.addr, client_addr);
        let read = sent - unread;
        let written = server
            .stdout
            .wait_for(Duration::from_secs(10), |out| printed(out).len() >= read);
        assert!(
            written,
            "asleep with lines held: read {read} bytes, printed {}\n{}",
            printed(&server.stdout.bytes()).len(),
            server.context()
        );
        kill(pid, libc::SIGCONT);
        checked += 1;
    }
}

/// The receive queue of the server's socket for the connection from
/// `client`, from `/proc/net/tcp`.
fn receive_queue(server: SocketAddr, client: SocketAddr) -> usize {
    fn hex(addr: SocketAddr) -> String {
        let SocketAddr::V4(a) = addr else { panic!("IPv4 only") };
        format!("{:08X}:{:04X}", u32::from_le_bytes(a.ip().octets()), a.port())
    }
    let (local, remote) = (hex(server), hex(client));
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() > 4 && fields[1] == local && fields[2] == remote {
            let (_, rx) = fields[4].split_once(':').expect("tx:rx");
            return usize::from_str_radix(rx, 16).expect("rx_queue");
        }
    }
    panic!("no socket {local} -> {remote} in /proc/net/tcp");
}

/// Voluntary context switches of process `pid`: how often it went to sleep.
fn sleeps(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("voluntary_ctxt_switches")
}

/// A slab reserved for a million connections and `--idle-timeout 10ms`,
/// whose sweep takes a step every millisecond while there are clients:
/// with none, the loop does not wake for the sweep (at most 5 wakeups in
/// 300 ms, not one per step), whatever the slab's size. With a client, it
/// sweeps, and closes the idle one.
#[test]
fn the_idle_sweep_leaves_a_server_without_clients_asleep() {
    let server = ServerProcess::start(&["--max-connections", "1000000", "--idle-timeout", "10ms"]);
    let pid = server.pid();
    let before = sleeps(pid);
    // The time the loop is given to show what it does unasked.
    std::thread::sleep(Duration::from_millis(300));
    let woke = sleeps(pid) - before;
    assert!(
        woke <= 5,
        "the loop woke {woke} times with no client\n{}",
        server.context()
    );
    // With a client, it sweeps, and closes the idle one.
    let _client = connect_greeted(server.addr);
    server.wait_lines("Closed connection:  ", 1);
}
