//! Stopping: SIGTERM while clients are sending exits 0, with each client's
//! bytes printed in order and a summary on stderr that matches the
//! transcript; everything the kernel had queued when the signal came is
//! printed (the shutdown drain). A second signal exits at once, and
//! `--shutdown-timeout` bounds a drain that cannot finish.

mod util;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdout};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use util::{
    Captured, PATIENCE, ServerProcess, bin, connect_greeted, frames_of, streams_by_client, unacked, wait_until,
};

/// The number before `word` in `text`: `12 frames` gives 12 for "frames".
fn number_before(text: &str, word: &str) -> u64 {
    let at = text
        .find(&format!(" {word}"))
        .unwrap_or_else(|| panic!("no {word:?} in {text:?}"));
    text[..at]
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a number")
}

/// SIGTERM while 10 clients send: exit 0, each client's printed bytes a
/// non-empty prefix of what it sent, and a summary whose bytes, frames and
/// connections match the transcript.
#[test]
fn sigterm_while_clients_send_exits_zero_printing_a_prefix_of_each_stream_and_a_matching_summary() {
    let mut server = ServerProcess::start(&["--tag"]);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tags = Vec::new();
    let senders: Vec<_> = (0..10)
        .map(|i| {
            let stop = Arc::clone(&stop);
            let mut client: TcpStream = connect_greeted(server.addr);
            let me = client.local_addr().expect("addr").to_string();
            tags.push(me.clone());
            thread::spawn(move || {
                let mut sent = Vec::new();
                let mut n = 0u64;
                let started = std::time::Instant::now();
                // Bounded: stops when told, or after twice the patience.
                while !stop.load(Ordering::Relaxed) && started.elapsed() < PATIENCE * 2 {
                    let msg = format!("client {i} message {n}\n");
                    if client.write_all(msg.as_bytes()).is_err() {
                        break;
                    }
                    sent.extend_from_slice(msg.as_bytes());
                    n += 1;
                    if n.is_multiple_of(64) {
                        thread::sleep(Duration::from_millis(1));
                    }
                }
                (me, sent)
            })
        })
        .collect();
    // Every client has been read from before the signal.
    server.wait_frames_from(&tags);
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(PATIENCE);
    stop.store(true, Ordering::Relaxed);
    assert!(status.success(), "exit status {status}\n{}", server.context());

    let out = server.stdout.bytes();
    let streams = streams_by_client(&out);
    let mut printed = 0u64;
    for sender in senders {
        let (me, sent) = sender.join().expect("sender");
        let got = streams.get(&me).cloned().unwrap_or_default();
        assert!(!got.is_empty(), "nothing printed for {me}");
        assert!(
            sent.starts_with(&got),
            "{me}: printed bytes are not what it sent, in order"
        );
        printed += got.len() as u64;
    }
    let stderr = server.stderr.text();
    let summary = stderr
        .lines()
        .find(|l| l.contains("summary:"))
        .unwrap_or_else(|| panic!("no summary\n{stderr}"));
    assert_eq!(number_before(summary, "bytes"), printed, "{summary}");
    assert_eq!(
        number_before(summary, "frames"),
        frames_of(&out).len() as u64,
        "{summary}"
    );
    assert_eq!(number_before(summary, "connections"), 10, "{summary}");
    assert_eq!(util::count_lines(&out, "Closed connection:"), 10);
    assert!(!stderr.contains("panicked"));
}

#[test]
fn sigint_stops_an_idle_server_cleanly() {
    let mut server = ServerProcess::start(&[]);
    server.signal(libc::SIGINT);
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{}", server.context());
    assert!(
        server.stderr.text().contains("summary: 0 connections"),
        "{}",
        server.context()
    );
}

/// Readiness events the server takes per `epoll_wait` (`EVENTS_CAPACITY`
/// in src/reactor/mod.rs).
const EVENTS_PER_POLL: usize = 1024;

/// The drain at shutdown (`FIONREAD` on every connection): bytes that
/// reached the server's kernel before it acted on SIGTERM are printed even
/// when no readiness event for them was handled. The loop is held by a full
/// stdout pipe rather than SIGSTOP: a stopped process runs its signal
/// handler only when continued, after every arrival while it was stopped,
/// so those arrivals' events come first and the drain is never needed;
/// blocked in `write`, it runs the handler at once, and what arrives after
/// queues behind the signal.
#[test]
fn bytes_queued_when_the_server_acts_on_sigterm_are_all_printed() {
    // More clients than one poll returns events for: the server acts on the
    // signal after the poll that returns it, and what the clients after
    // that poll's events have queued only the drain at shutdown reads.
    const CLIENTS: usize = EVENTS_PER_POLL + 100;
    let mut server = ServerProcess::start(&["--tag"]);
    let pid = server.pid();
    let mut clients: Vec<(TcpStream, String)> = (0..CLIENTS)
        .map(|_| {
            let c = connect_greeted(server.addr);
            let me = c.local_addr().expect("addr").to_string();
            (c, me)
        })
        .collect();
    server.wait_lines("Connection from:", CLIENTS);

    // Hold the loop: nobody reads the transcript, and one client sends
    // enough that the server blocks writing it.
    server.stdout.pause();
    let mut filler = connect_greeted(server.addr);
    let text: Vec<u8> = b"filler says: fill the pipe "
        .iter()
        .copied()
        .cycle()
        .take(1 << 20)
        .collect();
    util::send(&mut filler, &text);
    wait_until("the server to block writing its transcript", || {
        util::blocked_writing_stdout(pid)
    });

    // Bytes queued before the signal, from every other client.
    let mut rng = util::Rng::new(10);
    let mut sent: Vec<Vec<u8>> = Vec::new();
    for (i, (client, _)) in clients.iter_mut().enumerate() {
        let data = if i % 2 == 0 {
            let len = rng.range(1, 2000);
            rng.bytes(len)
        } else {
            Vec::new()
        };
        util::send(client, &data);
        sent.push(data);
    }
    // SIGTERM: its handler runs at once (the write is restarted after it),
    // so the signal is queued for the loop behind those bytes' events.
    server.signal(libc::SIGTERM);
    wait_until("the SIGTERM handler to run", || {
        !util::signal_pending(pid, libc::SIGTERM) && util::blocked_writing_stdout(pid)
    });
    // Bytes queued after the signal, before the server acts on it: their
    // events queue behind the signal's, and the last ones behind the first
    // poll's worth of events.
    for ((client, _), data) in clients.iter_mut().zip(&mut sent) {
        let len = rng.range(1, 2000);
        let more = rng.bytes(len);
        util::send(client, &more);
        data.extend_from_slice(&more);
    }
    for (client, me) in &clients {
        wait_until(&format!("{me}'s bytes to reach the server's kernel"), || {
            unacked(client) == 0
        });
    }

    server.stdout.resume();
    let status = server.wait_exit(PATIENCE);
    assert!(status.success(), "exit status {status}\n{}", server.context());
    let streams = streams_by_client(&server.stdout.bytes());
    let mut short = Vec::new();
    for ((_, me), data) in clients.iter().zip(&sent) {
        let got = streams.get(me).map(Vec::as_slice).unwrap_or_default();
        if got != &data[..] {
            short.push(format!("{me}: {} of {} bytes", got.len(), data.len()));
        }
    }
    assert!(
        short.is_empty(),
        "{} of {CLIENTS} clients' bytes queued before the server stopped are not all printed: {:?}",
        short.len(),
        &short[..short.len().min(5)]
    );
}

#[test]
fn a_second_signal_exits_at_once_without_cutting_a_line_when_stdout_takes_bytes() {
    // One-byte frames: what the kernel holds at the signal takes seconds to
    // print, so the second signal comes while the drain writes.
    for args in [
        &["--tag", "--max-read", "1"][..],
        &["--tag", "--max-read", "1", "--workers", "2"][..],
    ] {
        for round in 0..3 {
            // Stdout read steadily, at about 64 MB/s.
            let mut server = ServerProcess::start_throttled(args, 64 * 1024, Duration::from_millis(1));
            let stop = Arc::new(AtomicBool::new(false));
            let clients: Vec<TcpStream> = (0..8).map(|_| connect_greeted(server.addr)).collect();
            let floods: Vec<_> = clients
                .into_iter()
                .map(|mut client| {
                    let stop = Arc::clone(&stop);
                    thread::spawn(move || {
                        let block = b"a line of a flood, cut into frames anywhere\n".repeat(1500);
                        while !stop.load(Ordering::SeqCst) && client.write_all(&block).is_ok() {}
                    })
                })
                .collect();
            // Mid-flood.
            assert!(
                server.stdout.wait_for(PATIENCE, |out| out.len() > 8 << 20),
                "{}",
                server.context()
            );
            server.signal(libc::SIGTERM);
            let first = std::time::Instant::now();
            let noted = server
                .stderr
                .wait_for(PATIENCE, |err| util::contains(err, b"signal 15: stopping"));
            assert!(noted, "{}", server.context());
            // A repeat within the same-signal window is the first one
            // delivered twice: the second must come after it.
            let window = simple_tcp_server::reactor::shutdown::SAME_SIGNAL_WINDOW * 2;
            wait_until("the same-signal window to pass", || first.elapsed() > window);
            server.signal(libc::SIGTERM);
            let status = server.wait_exit(PATIENCE);
            stop.store(true, Ordering::SeqCst);
            floods.into_iter().for_each(|f| drop(f.join()));
            assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{args:?} round {round}");
            let out = server.stdout.bytes();
            assert!(out.ends_with(b"\n"), "{args:?} round {round}: the last line was cut");
            util::assert_lines_whole(&out);
        }
    }
}

fn kill(pid: i32, signal: i32) {
    // SAFETY: kill has no memory effects; `pid` is a child of this test that
    // has not been reaped.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill({pid}, {signal})");
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
            util::blocked_writing_stdout(pid)
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

/// A drain blocked on a stdout nobody reads does not hold a second SIGTERM
/// or SIGINT: the server exits at once, with 128 + the signal, and says so.
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
        wait_until("the first signal to be delivered", || {
            !util::signal_pending(pid, signal)
        });
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

/// `--shutdown-timeout` bounds a drain blocked on a stdout nobody reads:
/// the server exits 1 when it passes, and says how many connections were
/// not finished.
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
