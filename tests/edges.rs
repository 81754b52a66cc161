//! Edges that once broke (issue 9), each against the real binary: urgent
//! data, a shutdown stuck on a stdout nobody reads, lines held across a
//! coalescing pause, stdout and stderr on one closed pipe, an idle sweep
//! over a huge slab, a full disk as stdout.

mod util;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use util::{Captured, PATIENCE, ServerProcess, bin, connect_greeted, frames_of, send};

/// Waits until `cond` holds; fails the test (with `what`) after [`PATIENCE`].
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "waited {PATIENCE:?} for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The system call that process `pid`'s main thread is blocked in, from
/// `/proc/PID/syscall` (`None` while it runs).
fn blocked_in(pid: i32) -> Option<i64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// The state letter of process `pid` (`T` when stopped).
fn state(pid: i32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].trim_start().chars().next())
        .unwrap_or('?')
}

fn kill(pid: i32, signal: i32) {
    // SAFETY: kill has no memory effects; `pid` is a child of this test that
    // has not been reaped.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill({pid}, {signal})");
}

/// Stops process `pid` and waits until it is stopped.
fn stop(pid: i32) {
    kill(pid, libc::SIGSTOP);
    wait_until("the server to stop", || state(pid) == 'T');
}

/// Bytes `stream` has sent that the peer's kernel has not acknowledged.
fn unacked(stream: &TcpStream) -> usize {
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one c_int through a pointer to a
    // live local, on a descriptor `stream` owns.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    assert_eq!(rc, 0, "SIOCOUTQ");
    queued as usize
}

/// The bytes of every frame in an untagged transcript, in order.
fn printed(out: &[u8]) -> Vec<u8> {
    frames_of(out).into_iter().flat_map(|(_, _, bytes)| bytes).collect()
}

/// Whether process-directed signal `signal` is pending for `pid`.
fn pending(pid: i32, signal: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("ShdPnd:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .unwrap_or(0);
    mask & (1 << (signal - 1)) != 0
}

#[test]
fn urgent_data_does_not_stall_a_connection() {
    let server = ServerProcess::start(&[]);
    let mut client = connect_greeted(server.addr);
    server.wait_lines("Connection from:  ", 1);
    // While the server is stopped, the kernel queues all three sends, and
    // Linux will end the server's read at the urgent mark.
    stop(server.pid());
    send(&mut client, b"hello");
    // SAFETY: send reads one byte from a live buffer on a descriptor
    // `client` owns.
    let sent = unsafe { libc::send(client.as_raw_fd(), b"!".as_ptr().cast(), 1, libc::MSG_OOB) };
    assert_eq!(sent, 1, "send MSG_OOB");
    send(&mut client, b"world");
    wait_until("the server's kernel to take all 11 bytes", || unacked(&client) == 0);
    kill(server.pid(), libc::SIGCONT);
    // No new data comes: everything must be printed from this one wakeup,
    // the urgent byte too, where it was sent.
    let whole = server.stdout.wait_for(PATIENCE, |out| printed(out) == b"hello!world");
    assert!(whole, "urgent data stalled the connection\n{}", server.context());
}

/// A server whose stdout is a pipe that the test reads only the first line
/// of, then never again.
struct Unread {
    child: Child,
    _stdout: ChildStdout,
    addr: SocketAddr,
    stderr: Arc<Captured>,
}

impl Unread {
    fn start(args: &[&str]) -> Unread {
        let (child, stdout, stderr, addr) = util::start_unread(std::path::Path::new(bin("simple_tcp_server")), args);
        Unread {
            child,
            _stdout: stdout,
            addr,
            stderr,
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends far more than the pipe holds and waits until the server is
    /// blocked writing its transcript.
    fn block_stdout(&self) -> TcpStream {
        let client = connect_greeted(self.addr);
        let mut writer = client.try_clone().expect("clone");
        // Blocks once the server stops reading; ends with an error when the
        // server is gone.
        std::thread::spawn(move || {
            let chunk = vec![b'x'; 1 << 16];
            for _ in 0..128 {
                if std::io::Write::write_all(&mut writer, &chunk).is_err() {
                    break;
                }
            }
        });
        let pid = self.pid();
        wait_until("the server to block writing stdout", || {
            blocked_in(pid) == Some(libc::SYS_write)
        });
        client
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.stderr.wait_for(Duration::from_secs(5), |_| false);
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not exit within {PATIENCE:?}\n--- stderr:\n{}",
                self.stderr.text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Unread {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_second_signal_exits_at_once_while_stdout_is_blocked() {
    for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let mut server = Unread::start(&[]);
        let _client = server.block_stdout();
        kill(server.pid(), signal);
        // Two signals sent before the first is delivered are one; and one
        // that comes within the same-signal window of the first's delivery
        // is taken for the first delivered twice (to a process and its
        // group, as `timeout` does). The window starts when the server's
        // handler runs, which on a loaded machine can be well after the
        // kill: it is timed from the delivery seen here, with a margin.
        let pid = server.pid();
        wait_until("the first signal to be delivered", || !pending(pid, signal));
        let delivered = Instant::now();
        let window = simple_tcp_server::reactor::shutdown::SAME_SIGNAL_WINDOW;
        wait_until("the same-signal window to pass", || delivered.elapsed() > window * 2);
        kill(server.pid(), signal);
        let status = server.wait_exit();
        assert_eq!(status.code(), Some(128 + signal), "{name}\n{}", server.stderr.text());
        let stderr = server.stderr.text();
        assert!(
            stderr.contains(&format!("simple_tcp_server: second {name}: exiting at once")),
            "{stderr}"
        );
    }
}

#[test]
fn the_shutdown_timeout_bounds_a_stuck_drain() {
    let mut server = Unread::start(&["--shutdown-timeout", "300ms"]);
    let _client = server.block_stdout();
    kill(server.pid(), libc::SIGTERM);
    let status = server.wait_exit();
    let stderr = server.stderr.text();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "simple_tcp_server: the drain took longer than --shutdown-timeout 300ms; \
             exiting with 1 connection not finished"
        ),
        "{stderr}"
    );
}

#[test]
fn a_closed_pipe_for_stdout_and_stderr_is_exit_1_not_a_panic() {
    // `simple_tcp_server 2>&1 | head -1`, then a client sends.
    let (mut reader, writer) = std::io::pipe().expect("pipe");
    let mut child = Command::new(bin("simple_tcp_server"))
        .args(["127.0.0.1", "0"])
        .env("RUST_LOG", "info")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(writer.try_clone().expect("clone the pipe"))
        .stderr(writer)
        .spawn()
        .expect("start simple_tcp_server");
    // Read until the Listening line (log lines come first), then close.
    let mut seen = Vec::new();
    let addr: SocketAddr = loop {
        let mut chunk = [0u8; 512];
        let n = reader.read(&mut chunk).expect("read");
        assert!(
            n > 0,
            "the server exited before listening: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&seen);
        if let Some(addr) = text
            .lines()
            .filter(|_| text.ends_with('\n'))
            .find_map(|l| l.strip_prefix("Listening to:  "))
        {
            break addr.parse().expect("address");
        }
    };
    drop(reader);
    let mut client = connect_greeted(addr);
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server kept running with its stdout closed");
        }
        // Keep giving it lines to write: a test running beside this one may
        // hold a copy of the pipe's read end for a moment (between its own
        // fork and exec), and a write then still succeeds.
        let _ = std::io::Write::write_all(&mut client, b"into the void");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(status.code(), Some(1), "a panic exits 101");
}

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
        if !matches!(blocked_in(pid), Some(n) if n == libc::SYS_clock_nanosleep || n == libc::SYS_nanosleep) {
            continue;
        }
        stop(pid);
        if !matches!(blocked_in(pid), Some(n) if n == libc::SYS_clock_nanosleep || n == libc::SYS_nanosleep) {
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

#[test]
fn the_idle_sweep_costs_nothing_without_clients() {
    // A slab reserved for a million and a sweep step every millisecond:
    // the sweep once walked the whole capacity on every step.
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

#[test]
fn a_full_disk_as_stdout_is_named() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let out = Command::new(bin("simple_tcp_server"))
        .args(["127.0.0.1", "0"])
        .stdin(Stdio::null())
        .stdout(full)
        .stderr(Stdio::piped())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("simple_tcp_server: cannot write the transcript to stdout: No space left on device"),
        "{stderr}"
    );
}
