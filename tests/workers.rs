//! `--workers N`: a supervisor and N worker processes behind one port. Every
//! line whole, every client's bytes exact, one `Listening to:` line, a
//! worker killed with SIGKILL replaced (its clients see their connections
//! closed, the others go on), also while another floods the transcript and
//! after the binary was removed, one cap over all workers, SIGTERM (or one
//! Ctrl-C to the process group) draining every worker into one summary.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use util::{
    Captured, PATIENCE, ServerProcess, assert_lines_whole, children, connect_greeted, random_clients, streams_by_client,
};

/// Waits until `parent` has `n` children; returns them.
fn wait_children(parent: i32, n: usize) -> Vec<i32> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let kids = children(parent);
        if kids.len() == n {
            return kids;
        }
        assert!(Instant::now() < deadline, "{} children, not {n}", kids.len());
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn four_workers_serve_many_clients_exactly() {
    let mut server = ServerProcess::start(&["--workers", "4", "--tag"]);
    let workers = wait_children(server.pid(), 4);
    assert_eq!(workers.len(), 4);
    let sent = random_clients(server.addr, 48, 7, 200_000, 30_000);
    server.wait_lines("Closed connection:  ", sent.len());
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(PATIENCE);
    assert!(status.success(), "{status}\n{}", server.context());
    let out = server.stdout.bytes();
    assert_lines_whole(&out);
    let streams = streams_by_client(&out);
    for (me, data) in &sent {
        assert!(
            streams.get(me) == Some(data),
            "{me}: bytes lost, changed or out of order"
        );
    }
    let stderr = server.stderr.text();
    let total: usize = sent.iter().map(|(_, d)| d.len()).sum();
    assert!(
        stderr.contains(&format!("summary: {} connections", sent.len())) && stderr.contains(&format!("{total} bytes")),
        "one summary adding up the workers\n{stderr}"
    );
    // More than one worker served (SO_REUSEPORT spreads the clients).
    let served = stderr
        .lines()
        .filter(|l| l.contains("worker") && l.contains("serving on"))
        .count();
    assert_eq!(served, 4, "{stderr}");
}

#[test]
fn a_killed_worker_is_replaced_and_only_its_clients_are_cut() {
    let server = ServerProcess::start(&["--workers", "4", "--tag", "--max-connections", "40"]);
    let workers = wait_children(server.pid(), 4);
    // Forty clients: the cap exactly.
    let mut clients: Vec<TcpStream> = (0..40).map(|_| connect_greeted(server.addr)).collect();
    server.wait_lines("Connection from:  ", 40);
    let mut over = TcpStream::connect(server.addr).expect("connect");
    over.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut line = Vec::new();
    let _ = over.read_to_end(&mut line);
    assert!(
        line.starts_with(b"ERR server full"),
        "the cap holds over all workers: {line:?}"
    );

    // SAFETY: kill has no memory effects; the worker is the server's child,
    // alive (waited for above).
    assert_eq!(unsafe { libc::kill(workers[0], libc::SIGKILL) }, 0);
    // A replacement starts on the same socket.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = children(server.pid());
        if now.len() == 4 && !now.contains(&workers[0]) {
            break;
        }
        assert!(Instant::now() < deadline, "the worker was not replaced: {now:?}");
        thread::sleep(Duration::from_millis(5));
    }
    // Its clients see their connections closed; find them by asking all.
    let mut cut = 0;
    let mut alive = Vec::new();
    for mut client in clients.drain(..) {
        client.set_nonblocking(false).expect("blocking");
        client
            .set_read_timeout(Some(Duration::from_millis(1)))
            .expect("timeout");
        let mut byte = [0u8; 1];
        // A killed worker's sockets are closed by the kernel at once.
        let gone = match client.read(&mut byte) {
            Ok(0) => true,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
            _ => false,
        };
        if gone {
            cut += 1;
        } else {
            alive.push(client);
        }
    }
    assert!(cut > 0, "no client was on the killed worker");
    let restarted = server
        .stderr
        .wait_for(PATIENCE, |err| util::contains(err, b"restarting it in"));
    assert!(restarted, "{}", server.context());
    // The survivors still talk; the slots of the cut ones are free again.
    for (i, client) in alive.iter_mut().enumerate() {
        client.set_read_timeout(Some(PATIENCE)).expect("timeout");
        client.write_all(format!("survivor {i:02}").as_bytes()).expect("send");
    }
    let all_heard = server.stdout.wait_for(PATIENCE, |out| {
        String::from_utf8_lossy(out).matches("<11:survivor ").count() == alive.len()
    });
    assert!(all_heard, "a survivor was not heard\n{}", server.context());
    let newcomers: Vec<TcpStream> = (0..cut).map(|_| connect_greeted(server.addr)).collect();
    assert_eq!(newcomers.len(), cut, "the dead worker's slots were given back");
    let out = server.stdout.bytes();
    assert_lines_whole(&out);
    drop(alive);
    drop(newcomers);
}

#[test]
fn sigterm_drains_every_worker_into_one_summary() {
    let mut server = ServerProcess::start(&["--workers", "4", "--tag"]);
    wait_children(server.pid(), 4);
    let mut sent = Vec::new();
    let mut clients = Vec::new();
    for i in 0..32 {
        let mut client = connect_greeted(server.addr);
        let msg = format!("message {i} sent before the signal").repeat(i + 1);
        client.write_all(msg.as_bytes()).expect("send");
        sent.push((client.local_addr().expect("addr").to_string(), msg.into_bytes()));
        clients.push(client);
    }
    // Everything sent is in the workers' kernel before the signal.
    for client in &clients {
        let deadline = Instant::now() + PATIENCE;
        while util::unacked(client) > 0 {
            assert!(Instant::now() < deadline, "the bytes never left");
            thread::sleep(Duration::from_millis(1));
        }
    }
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(PATIENCE);
    assert!(status.success(), "{status}\n{}", server.context());
    let out = server.stdout.bytes();
    assert_lines_whole(&out);
    let streams = streams_by_client(&out);
    for (me, msg) in &sent {
        assert_eq!(streams.get(me), Some(msg), "{me}");
    }
    assert_eq!(util::count_lines(&out, "Closed connection:  "), 32);
    let stderr = server.stderr.text();
    assert!(stderr.contains("summary: 32 connections (32 open at stop"), "{stderr}");
    // The workers are gone with it.
    assert!(children(server.pid()).is_empty());
}

#[test]
fn killing_a_worker_mid_stream_splits_no_line() {
    let mut server = ServerProcess::start(&["--workers", "2", "--tag"]);
    let workers = wait_children(server.pid(), 2);
    // Clients on both workers stream until told to stop (32 of them, so
    // that SO_REUSEPORT leaves neither worker without one: 2 x 2^-32).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let streams: Vec<_> = (0..32)
        .map(|i| {
            let stop = std::sync::Arc::clone(&stop);
            let mut client = connect_greeted(server.addr);
            thread::spawn(move || {
                let block: Vec<u8> = format!("client {i} streams lines\n")
                    .bytes()
                    .cycle()
                    .take(64 * 1024)
                    .collect();
                let mut sent = 0usize;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) && sent < 64 << 20 {
                    if client.write_all(&block).is_err() {
                        break;
                    }
                    sent += block.len();
                }
            })
        })
        .collect();
    // Mid-stream: the transcript is flowing from both workers.
    let flowing = server.stdout.wait_for(PATIENCE, |out| out.len() > 4 << 20);
    assert!(flowing, "{}", server.context());
    // SAFETY: kill has no memory effects; the worker is the server's child.
    assert_eq!(unsafe { libc::kill(workers[1], libc::SIGKILL) }, 0);
    let replaced = server
        .stderr
        .wait_for(PATIENCE, |err| util::contains(err, b"restarting it in"));
    assert!(replaced, "{}", server.context());
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for s in streams {
        s.join().expect("streamer");
    }
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(PATIENCE);
    assert!(status.success(), "{status}");
    assert_lines_whole(&server.stdout.bytes());
}

#[test]
fn gnu_timeout_drains_rather_than_killing() {
    // `timeout` sends its signal to the command and then to the process
    // group: one SIGTERM, delivered twice within microseconds. It must be
    // taken for one (drain), not for the second of two (exit at once).
    if !util::have_program(
        "timeout",
        "sudo apt-get install -y coreutils",
        "gnu_timeout_drains_rather_than_killing",
    ) {
        return;
    }
    for args in [&["--workers", "2"][..], &[][..]] {
        for _ in 0..2 {
            let out = std::process::Command::new("timeout")
                .args(["2", util::bin("simple_tcp_server"), "127.0.0.1", "0"])
                .args(args)
                .env("RUST_LOG", "info")
                .stdin(std::process::Stdio::null())
                .output()
                .expect("run timeout");
            let stderr = String::from_utf8_lossy(&out.stderr);
            // timeout says 124 when it had to signal; the server drained.
            assert_eq!(out.status.code(), Some(124), "{args:?}\n{stderr}");
            assert!(
                stderr.contains("summary: 0 connections"),
                "{args:?}: no drain\n{stderr}"
            );
            assert!(
                !stderr.contains("second SIGTERM"),
                "{args:?}: one signal taken for two\n{stderr}"
            );
        }
    }
}

/// Waits until the supervisor has said `n` times that a worker is ready.
fn wait_ready(server: &ServerProcess, n: usize) {
    let ok = server.stderr.wait_for(PATIENCE, |err| {
        String::from_utf8_lossy(err).matches(" is ready (pid ").count() >= n
    });
    assert!(ok, "{n} workers never ready\n{}", server.context());
}

/// The PID of worker `id` as the supervisor first started it (the
/// children's order in /proc need not be the workers').
fn worker_pid(server: &ServerProcess, id: usize) -> i32 {
    let prefix = format!("worker {id} started (pid ");
    let mut pid = None;
    let ok = server.stderr.wait_for(PATIENCE, |err| {
        let text = String::from_utf8_lossy(err);
        pid = text
            .split(prefix.as_str())
            .nth(1)
            .and_then(|rest| rest.split(')').next()?.parse().ok());
        pid.is_some()
    });
    assert!(ok, "worker {id} never started\n{}", server.context());
    pid.unwrap_or_default()
}

/// Waits until `n` workers have said that they serve (each logs it just
/// before it tells the supervisor it is ready; any build of the server
/// logs it, so a test that waits for it runs against an older build too).
fn wait_serving(server: &ServerProcess, n: usize) {
    // The supervisor says a worker is ready once new clients go to it.
    let ok = server.stderr.wait_for(PATIENCE, |err| {
        let err = String::from_utf8_lossy(err);
        err.matches("] serving on ").count() >= n && err.matches(" is ready (pid ").count() >= n
    });
    assert!(ok, "{n} workers never served\n{}", server.context());
}

/// Clients that each send 64 KiB blocks until `stop` is set or the server
/// goes away; they return how many bytes went out.
fn flooders(addr: std::net::SocketAddr, n: usize, stop: &Arc<AtomicBool>) -> Vec<thread::JoinHandle<usize>> {
    // All greeted first: once they flood, a blocked output greets nobody.
    let clients: Vec<TcpStream> = (0..n).map(|_| connect_greeted(addr)).collect();
    clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            let stop = Arc::clone(stop);
            thread::spawn(move || {
                let block: Vec<u8> = format!("flooder {i} says hello\n")
                    .bytes()
                    .cycle()
                    .take(64 * 1024)
                    .collect();
                let mut sent = 0;
                while !stop.load(Ordering::SeqCst) {
                    match client.write(&block) {
                        Ok(n) => sent += n,
                        Err(_) => break,
                    }
                }
                sent
            })
        })
        .collect()
}

#[test]
fn a_drain_that_outlives_the_timeout_exits_1_and_counts_the_unfinished_connections() {
    // Stdout is a pipe nobody reads: the drain cannot finish.
    let (mut child, _stdout, stderr, addr) = util::start_unread(
        std::path::Path::new(util::bin("simple_tcp_server")),
        &["--workers", "2", "--shutdown-timeout", "2s"],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let clients = flooders(addr, 8, &stop);
    let pid = child.id() as i32;
    util::wait_until("the supervisor blocked on stdout", || util::blocked_writing_stdout(pid));
    // SAFETY: kill has no memory effects; the child is ours, unreaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit\n{}", stderr.text());
        thread::sleep(Duration::from_millis(5));
    };
    stop.store(true, Ordering::SeqCst);
    clients.into_iter().for_each(|c| drop(c.join()));
    stderr.wait_for(Duration::from_secs(5), |_| false);
    let err = stderr.text();
    assert_eq!(status.code(), Some(1), "the drain did not finish: exit 1\n{err}");
    // How many of the eight a worker finished before its own timeout
    // depends on the room in its pipe; the supervisor counts what the
    // workers say they left, and all eight in its summary.
    let unfinished = |line: &str| -> Option<usize> {
        let (_, rest) = line.split_once("exiting with ")?;
        rest.split_once(" connection")?.0.parse().ok()
    };
    let supervisor = err
        .lines()
        .find(|l| l.contains("the workers' drain took longer"))
        .unwrap_or_else(|| panic!("the supervisor says nothing\n{err}"));
    let total = unfinished(supervisor).expect("a count");
    let by_workers: usize = err
        .lines()
        .filter(|l| l.contains("the drain took longer than --shutdown-timeout 2s"))
        .filter_map(unfinished)
        .sum();
    assert!((1..=8).contains(&total), "{err}");
    assert_eq!(total, by_workers, "{err}");
    assert!(
        supervisor.contains(&format!(
            "exiting with {total} connections not finished; summary so far: 8 connections"
        )),
        "{err}"
    );
}

#[test]
fn a_worker_that_ends_its_drain_unfinished_is_named_counted_and_makes_the_exit_1() {
    let mut server = ServerProcess::start(&["--workers", "2", "--shutdown-timeout", "1s"]);
    let workers = wait_children(server.pid(), 2);
    wait_serving(&server, 2);
    let stop = Arc::new(AtomicBool::new(false));
    let clients = flooders(server.addr, 8, &stop);
    server.wait_lines("Connection from:  ", 8);
    // Stdout stops being read: the workers' drains cannot finish in time.
    server.stdout.pause();
    util::wait_until("the supervisor blocked on stdout", || {
        util::blocked_writing_stdout(server.pid())
    });
    server.signal(libc::SIGTERM);
    // The workers give up after their --shutdown-timeout; then stdout is
    // read again, well within the supervisor's second of grace.
    util::wait_until("both workers ended", || {
        workers.iter().all(|&w| util::process_state(w) == 'Z')
    });
    server.stdout.resume();
    let status = server.wait_exit(PATIENCE);
    stop.store(true, Ordering::SeqCst);
    let sent: usize = clients.into_iter().map(|c| c.join().expect("client")).sum();
    let err = server.stderr.text();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("the drain did not finish: 8 connections not finished"),
        "{err}"
    );
    // Each worker that had clients is named with its open connections (the
    // kernel may have put all eight on one of them); together, all eight.
    let named: Vec<(i32, u64)> = err
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("exited with status 1 before finishing its drain, "))
        .map(|l| {
            let pid = l.split("(pid ").nth(1).and_then(|r| r.split(')').next()?.parse().ok());
            let open = l
                .split("before finishing its drain, ")
                .nth(1)
                .and_then(|r| r.split(' ').next()?.parse().ok());
            (pid.unwrap_or_default(), open.unwrap_or_default())
        })
        .collect();
    assert!(!named.is_empty(), "{err}");
    assert!(named.iter().all(|(pid, _)| workers.contains(pid)), "{named:?}\n{err}");
    assert_eq!(named.iter().map(|(_, open)| open).sum::<u64>(), 8, "{named:?}\n{err}");
    // The summary adds up what each worker did, up to its last wakeup.
    let summary = err.lines().find(|l| l.contains("summary: ")).expect("a summary");
    assert!(summary.contains("summary: 8 connections (8 open at stop"), "{summary}");
    let bytes: usize = summary
        .split(" frames, ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|b| b.parse().ok())
        .expect("bytes in the summary");
    assert!(bytes > 0 && bytes <= sent, "{bytes} of {sent}: {summary}");
    assert_lines_whole(&server.stdout.bytes());
}

#[test]
fn a_nonblocking_stdout_is_waited_for_and_every_byte_arrives() {
    // A pipe whose write end is non-blocking, as some process managers
    // hand out, read slowly.
    let (reader, writer) = std::io::pipe().expect("pipe");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&writer);
    // SAFETY: F_GETFL/F_SETFL on a pipe this test owns.
    unsafe { libc::fcntl(fd, libc::F_SETFL, libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK) };
    let mut command = std::process::Command::new(util::bin("simple_tcp_server"));
    command
        .args(["127.0.0.1", "0", "--workers", "2", "--tag"])
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(writer)
        .stderr(std::process::Stdio::piped());
    util::die_with_the_test(&mut command);
    let mut child = command.spawn().expect("start");
    let stderr = util::Captured::spawn(child.stderr.take().expect("stderr"));
    // About 3 MB/s.
    let slow = util::Captured::spawn(util::Throttled::new(reader, 32 * 1024, Duration::from_millis(10)));
    assert!(slow.wait_for(PATIENCE, |out| out.contains(&b'\n')), "{}", stderr.text());
    let first = slow.text();
    let addr = util::listening_addr(first.lines().next().unwrap_or_default()).expect("Listening line");
    let sent = random_clients(addr, 16, 11, 400_000, 64 * 1024);
    let ok = slow.wait_for(PATIENCE, |out| {
        util::count_lines(out, "Closed connection:  ") == sent.len()
    });
    assert!(ok, "not every client was printed\n{}", stderr.text());
    // SAFETY: kill has no memory effects; the child is ours, unreaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().expect("wait");
    slow.wait_for(Duration::from_secs(5), |_| false);
    assert!(status.success(), "{status}\n{}", stderr.text());
    let out = slow.bytes();
    assert_lines_whole(&out);
    let streams = streams_by_client(&out);
    for (me, data) in &sent {
        assert!(streams.get(me) == Some(data), "{me}: bytes lost or changed");
    }
}

#[test]
fn after_the_first_signal_new_clients_are_refused() {
    let mut server = ServerProcess::start(&["--workers", "2", "--shutdown-timeout", "30s"]);
    wait_children(server.pid(), 2);
    wait_serving(&server, 2);
    // A drain that lasts: clients flood and stdout is not read.
    let stop = Arc::new(AtomicBool::new(false));
    let clients = flooders(server.addr, 4, &stop);
    server.stdout.pause();
    util::wait_until("the supervisor blocked on stdout", || {
        util::blocked_writing_stdout(server.pid())
    });
    server.signal(libc::SIGTERM);
    let noted = server
        .stderr
        .wait_for(PATIENCE, |err| util::contains(err, b"SIGTERM: stopping"));
    assert!(noted, "{}", server.context());
    // While the drain runs, nobody takes new clients: refused at once,
    // not accepted by the kernel and reset later.
    for _ in 0..20 {
        match TcpStream::connect(server.addr) {
            Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}"),
            Ok(mut late) => {
                late.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
                let mut byte = [0u8; 1];
                panic!(
                    "a client connected during the drain (then read {:?})\n{}",
                    late.read(&mut byte),
                    server.context()
                );
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    server.stdout.resume();
    server.wait_exit(PATIENCE);
    clients.into_iter().for_each(|c| drop(c.join()));
}

#[test]
fn a_worker_killed_again_and_again_is_restarted_and_the_others_serve_on() {
    let server = ServerProcess::start(&["--workers", "3", "--tag"]);
    wait_ready(&server, 3);
    let mut clients: Vec<TcpStream> = (0..30).map(|_| connect_greeted(server.addr)).collect();
    server.wait_lines("Connection from:  ", 30);
    // Worker 1, each time right after it is ready again: six deaths, more
    // than any count of quick exits, none of them before being ready.
    for round in 0..6 {
        let pid = ready_pid(&server, 1, round);
        // SAFETY: kill has no memory effects; the worker is the server's
        // child, ready (so alive) a moment ago.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        let restarted = server.stderr.wait_for(PATIENCE, |err| {
            util::contains(err, format!("(pid {pid}) was killed by SIGKILL").as_bytes())
        });
        assert!(restarted, "{}", server.context());
    }
    ready_pid(&server, 1, 6);
    // The supervisor serves on, with all three workers, and the clients of
    // the others never noticed.
    let survivors: Vec<&mut TcpStream> = clients.iter_mut().filter(|c| !was_cut(c)).collect();
    let alive = survivors.len();
    assert!((1..30).contains(&alive), "{alive} of 30 survived\n{}", server.context());
    for (i, client) in survivors.into_iter().enumerate() {
        client
            .write_all(format!("still here {i:02}").as_bytes())
            .expect("a survivor sends");
    }
    let heard = server.stdout.wait_for(PATIENCE, |out| {
        String::from_utf8_lossy(out).matches("<13:still here ").count() == alive
    });
    assert!(heard, "{}", server.context());
    assert_eq!(children(server.pid()).len(), 3);
    assert!(
        !server.stderr.text().contains("cannot get going"),
        "{}",
        server.context()
    );
    for _ in 0..12 {
        connect_greeted(server.addr);
    }
}

/// Whether `client`'s connection has been closed by the server's side (a
/// worker that died: the kernel closed its sockets as it died).
fn was_cut(client: &TcpStream) -> bool {
    client
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    let mut stream = client;
    match stream.read(&mut byte) {
        Ok(0) => true,
        Err(e) => e.kind() == ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

/// The PID of worker `id` once it is ready for the `(round + 1)`-th time.
fn ready_pid(server: &ServerProcess, id: usize, round: usize) -> i32 {
    let prefix = format!("worker {id} is ready (pid ");
    let mut pid = None;
    let ok = server.stderr.wait_for(PATIENCE, |err| {
        let text = String::from_utf8_lossy(err);
        pid = text
            .match_indices(&prefix)
            .nth(round)
            .and_then(|(at, _)| text[at + prefix.len()..].split(')').next()?.parse().ok());
        pid.is_some()
    });
    assert!(ok, "worker {id} not ready {} times\n{}", round + 1, server.context());
    pid.unwrap_or_default()
}

#[test]
fn a_stopped_or_dead_worker_strands_no_new_client() {
    let server = ServerProcess::start(&["--workers", "3"]);
    let workers = wait_children(server.pid(), 3);
    wait_serving(&server, 3);
    let greeted_within_a_second = |what: &str| {
        for i in 0..60 {
            let mut client = TcpStream::connect(server.addr).expect("connect");
            client.set_read_timeout(Some(Duration::from_secs(1))).expect("timeout");
            let mut greeting = [0u8; 10];
            if let Err(e) = client.read_exact(&mut greeting) {
                panic!(
                    "{what}: client {i} not greeted within a second: {e}\n{}",
                    server.context()
                );
            }
        }
    };
    // Clients come the moment the worker has stopped, before the
    // supervisor may have noticed: those the kernel queues for the stopped
    // worker are handed to the others.
    // SAFETY: kill has no memory effects; the worker is the server's child.
    assert_eq!(unsafe { libc::kill(workers[1], libc::SIGSTOP) }, 0);
    util::wait_until("the worker stopped", || util::process_state(workers[1]) == 'T');
    greeted_within_a_second("one of three workers stopped");
    let noticed = server
        .stderr
        .wait_for(PATIENCE, |err| util::contains(err, b"was stopped by SIGSTOP"));
    assert!(noticed, "{}", server.context());
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(workers[1], libc::SIGCONT) }, 0);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(workers[2], libc::SIGKILL) }, 0);
    util::wait_until("the worker died", || {
        std::fs::read_to_string(format!("/proc/{}/stat", workers[2])).is_err() || util::process_state(workers[2]) == 'Z'
    });
    greeted_within_a_second("one of three workers killed");
    let noticed = server
        .stderr
        .wait_for(PATIENCE, |err| util::contains(err, b"restarting it in"));
    assert!(noticed, "{}", server.context());
}

#[test]
fn a_killed_worker_is_named_and_its_counts_stay_in_the_summary_and_the_stats() {
    let mut server = ServerProcess::start(&["--workers", "2", "--tag", "--stats", "100ms"]);
    let workers = wait_children(server.pid(), 2);
    wait_serving(&server, 2);
    let mut clients: Vec<TcpStream> = (0..16).map(|_| connect_greeted(server.addr)).collect();
    let mut total = 0;
    for (i, client) in clients.iter_mut().enumerate() {
        let msg = format!("client {i} says hello").repeat(i + 1);
        client.write_all(msg.as_bytes()).expect("send");
        total += msg.len();
    }
    let printed = server.stdout.wait_for(PATIENCE, |out| {
        util::frames_of(out).iter().map(|(_, n, _)| n).sum::<usize>() == total
    });
    assert!(printed, "{}", server.context());
    // A --stats line after the bytes were printed counts them all.
    let counted = server.stderr.wait_for(PATIENCE, |err| {
        util::contains(
            err,
            format!("accepted 16 closed 0 rejected 0 bytes_in {total} ").as_bytes(),
        )
    });
    assert!(counted, "a total line for all workers\n{}", server.context());
    assert!(server.stderr.text().contains(" | per worker "), "{}", server.context());
    let worker0 = worker_pid(&server, 0);
    assert!(workers.contains(&worker0));
    // SAFETY: kill has no memory effects; the worker is the server's child.
    assert_eq!(unsafe { libc::kill(worker0, libc::SIGKILL) }, 0);
    let said = server.stderr.wait_for(PATIENCE, |err| {
        util::contains(
            err,
            format!("worker 0 (pid {worker0}) was killed by SIGKILL after").as_bytes(),
        )
    });
    assert!(said, "{}", server.context());
    // The kernel closed the dead worker's sockets when it died, before the
    // supervisor reaped it: its clients see the end at once, the others
    // see nothing.
    let cut = clients.iter().filter(|c| was_cut(c)).count();
    assert!(cut > 0, "no client was on the killed worker (16 clients, 2 workers)");
    assert!(
        server.stderr.text().contains(&format!(
            "; {cut} connection{} closed with it;",
            if cut == 1 { " was" } else { "s were" }
        )),
        "{}",
        server.context()
    );
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(PATIENCE);
    assert!(status.success(), "{status}\n{}", server.context());
    let err = server.stderr.text();
    let summary = err.lines().find(|l| l.contains("summary: ")).expect("a summary");
    assert!(
        summary.contains(&format!("summary: 16 connections ({} open at stop", 16 - cut))
            && summary.contains(&format!(" {total} bytes, {cut} lost with their worker")),
        "the dead worker's counts are in: {summary}"
    );
}

#[test]
fn clients_queued_for_a_worker_that_stopped_are_handed_to_the_others() {
    let server = ServerProcess::start(&["--workers", "2"]);
    let workers = wait_children(server.pid(), 2);
    wait_serving(&server, 2);
    // The supervisor is held too, so that it cannot steer clients away
    // yet: the kernel queues about half of them for the stopped worker.
    let worker1 = worker_pid(&server, 1);
    assert!(workers.contains(&worker1));
    for pid in [server.pid(), worker1] {
        // SAFETY: kill has no memory effects; both are this test's
        // processes (the server and its child).
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        util::wait_until("stopped", || util::process_state(pid) == 'T');
    }
    let clients: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(server.addr).expect("connect"))
        .collect();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(server.pid(), libc::SIGCONT) }, 0);
    for (i, mut client) in clients.into_iter().enumerate() {
        client.set_read_timeout(Some(PATIENCE)).expect("timeout");
        let mut greeting = [0u8; 10];
        if let Err(e) = client.read_exact(&mut greeting) {
            panic!("client {i} not greeted: {e}\n{}", server.context());
        }
    }
    let said = server.stderr.wait_for(PATIENCE, |err| {
        util::contains(err, b"clients queued for worker 1 were handed to the others")
    });
    assert!(said, "{}", server.context());
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(worker1, libc::SIGCONT) }, 0);
}

#[test]
fn ps_tells_the_supervisor_from_its_workers() {
    let server = ServerProcess::start(&["--workers", "2"]);
    let mut workers = wait_children(server.pid(), 2);
    wait_ready(&server, 2);
    let proc_text = |pid: i32, what: &str| {
        let bytes = std::fs::read(format!("/proc/{pid}/{what}")).expect("read /proc");
        String::from_utf8_lossy(&bytes)
            .trim_end_matches(['\0', '\n'])
            .to_string()
    };
    assert!(
        proc_text(server.pid(), "cmdline").starts_with("simple_tcp_server: supervisor of 2 workers"),
        "{:?}",
        proc_text(server.pid(), "cmdline")
    );
    assert_eq!(proc_text(server.pid(), "comm"), "stcp supervisor");
    workers.sort_by_key(|&w| {
        let comm = proc_text(w, "comm");
        comm.clone()
    });
    for (id, &w) in workers.iter().enumerate() {
        assert_eq!(proc_text(w, "cmdline"), format!("simple_tcp_server: worker {id}"));
        assert_eq!(proc_text(w, "comm"), format!("stcp worker {id}"));
    }
}

#[test]
fn a_stop_while_a_worker_starts_is_a_clean_stop() {
    // SIGTERM the moment a worker has been started, before it can have set
    // up its handlers: it drains (it has nothing) instead of dying of the
    // signal, and the supervisor exits 0.
    for round in 0..5 {
        let mut server = ServerProcess::start(&["--workers", "2"]);
        let mut pid = None;
        let started = server.stderr.wait_for(PATIENCE, |err| {
            let text = String::from_utf8_lossy(err);
            pid = text
                .split("worker 1 started (pid ")
                .nth(1)
                .and_then(|rest| rest.split(')').next()?.parse::<i32>().ok());
            pid.is_some()
        });
        assert!(started, "{}", server.context());
        // The stop reaches the new worker at once (as a terminal's Ctrl-C
        // reaches the whole process group), and the supervisor.
        // SAFETY: kill has no memory effects; the worker is the server's
        // child, just started.
        unsafe { libc::kill(pid.unwrap_or_default(), libc::SIGTERM) };
        server.signal(libc::SIGTERM);
        let status = server.wait_exit(PATIENCE);
        assert!(status.success(), "round {round}: {status}\n{}", server.context());
        assert!(
            server.stderr.text().contains("summary: 0 connections"),
            "{}",
            server.context()
        );
    }
}

#[test]
fn clients_queued_while_no_worker_served_go_to_the_first_that_serves_again() {
    let server = ServerProcess::start(&["--workers", "2"]);
    let workers = wait_children(server.pid(), 2);
    wait_serving(&server, 2);
    // Both stopped: nobody can take the clients the kernel queues.
    for &w in &[workers[1], workers[0]] {
        // SAFETY: kill has no memory effects; the workers are the server's
        // children.
        assert_eq!(unsafe { libc::kill(w, libc::SIGSTOP) }, 0);
        util::wait_until("stopped", || util::process_state(w) == 'T');
    }
    let noticed = server.stderr.wait_for(PATIENCE, |err| {
        String::from_utf8_lossy(err).matches("was stopped by SIGSTOP").count() == 2
    });
    assert!(noticed, "{}", server.context());
    let clients: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(server.addr).expect("connect"))
        .collect();
    // Worker 0 comes back: every client is its, those queued for the still
    // stopped worker 1 included.
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(workers[0], libc::SIGCONT) }, 0);
    for (i, mut client) in clients.into_iter().enumerate() {
        client.set_read_timeout(Some(PATIENCE)).expect("timeout");
        let mut greeting = [0u8; 10];
        if let Err(e) = client.read_exact(&mut greeting) {
            panic!("client {i} not greeted: {e}\n{}", server.context());
        }
    }
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(workers[1], libc::SIGCONT) }, 0);
}

#[test]
fn when_stdout_goes_away_the_workers_still_drain_and_the_summary_counts_them() {
    let mut command = std::process::Command::new(util::bin("simple_tcp_server"));
    command
        .args(["127.0.0.1", "0", "--workers", "2"])
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    util::die_with_the_test(&mut command);
    let mut child = command.spawn().expect("start");
    let stderr = util::Captured::spawn(child.stderr.take().expect("stderr"));
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = Vec::new();
    let mut byte = [0u8; 1];
    while byte[0] != b'\n' {
        stdout.read_exact(&mut byte).expect("the Listening line");
        first.push(byte[0]);
    }
    let addr = util::listening_addr(String::from_utf8_lossy(&first).trim_end()).expect("address");
    let ready = stderr.wait_for(PATIENCE, |err| {
        String::from_utf8_lossy(err).matches("] serving on ").count() >= 2
    });
    assert!(ready, "{}", stderr.text());
    let mut clients: Vec<TcpStream> = (0..6).map(|_| connect_greeted(addr)).collect();
    // Nobody reads stdout any more.
    drop(stdout);
    for client in clients.iter_mut() {
        client.write_all(b"after stdout went away").expect("send");
    }
    // Lines keep coming until the supervisor finds stdout gone (a child
    // that another test forks may hold the pipe's reading end for a
    // moment, until it execs, and take a write).
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit\n{}", stderr.text());
        let _ = clients[0].write_all(b"and again");
        thread::sleep(Duration::from_millis(5));
    };
    stderr.wait_for(Duration::from_secs(5), |_| false);
    let err = stderr.text();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("stdout was closed"), "{err}");
    // Every worker drained before the supervisor ended: their clients were
    // closed, and the summary counts all six.
    assert!(err.contains("summary: 6 connections"), "{err}");
    for client in clients.iter_mut() {
        client.set_read_timeout(Some(PATIENCE)).expect("timeout");
        let mut rest = Vec::new();
        assert!(client.read_to_end(&mut rest).is_ok() || rest.is_empty());
    }
}

/// `--workers N -- HOST PORT` (the positionals after `--`, as scripts
/// write them) starts workers that serve: the options the supervisor adds
/// for its workers go before the user's arguments, never after their `--`,
/// where a worker would take them for positionals. A client is greeted.
#[test]
fn workers_serve_when_the_positionals_follow_a_double_dash() {
    let server = ServerProcess::start_raw(
        &[
            "--workers".into(),
            "2".into(),
            "--".into(),
            "127.0.0.1".into(),
            "0".into(),
        ],
        None,
        &[],
    );
    let mut client = TcpStream::connect(server.addr).expect("connect");
    client.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut greeting = [0u8; 10];
    let greeted = client.read_exact(&mut greeting);
    assert!(
        greeted.is_ok() && &greeting == b"Let's GO!\n",
        "no greeting within 10 s: {greeted:?}\n{}",
        server.context()
    );
}

/// One Ctrl-C in a terminal is one SIGINT to every process of the
/// foreground process group: the supervisor and each worker. The supervisor
/// also forwards its SIGINT to every worker, so each worker gets it twice,
/// from the terminal and from the supervisor; it takes the two for one
/// Ctrl-C and drains (rather than exiting at once, 130, as for a second
/// Ctrl-C, its counts missing from the summary). systemd's default
/// KillMode=control-group does the same with SIGTERM. The two deliveries
/// race, so several rounds.
#[test]
fn one_ctrl_c_to_the_process_group_drains_every_worker() {
    util::raise_fd_limit();
    for round in 0..6 {
        let mut child = Command::new(util::bin("simple_tcp_server"))
            .args(["127.0.0.1", "0", "--workers", "4", "--tag"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, as a shell job is.
            .process_group(0)
            .spawn()
            .expect("start");
        let pid = child.id() as i32;
        let stdout = Captured::spawn(child.stdout.take().expect("stdout"));
        let stderr = Captured::spawn(child.stderr.take().expect("stderr"));
        let context = || {
            format!(
                "round {round}\n--- stdout:\n{}\n--- stderr:\n{}",
                stdout.text(),
                stderr.text()
            )
        };
        let started = stdout.wait_for(PATIENCE, |out| {
            out.starts_with(b"Listening to:  ") && out.contains(&b'\n')
        });
        assert!(started, "{}", context());
        let first = stdout.text();
        let addr: SocketAddr = first.lines().next().expect("a line")["Listening to:  ".len()..]
            .parse()
            .expect("address");
        let serving = stderr.wait_for(PATIENCE, |err| {
            String::from_utf8_lossy(err).matches("serving on").count() == 4
        });
        assert!(serving, "{}", context());
        let mut clients: Vec<TcpStream> = (0..8).map(|_| connect_greeted(addr)).collect();
        for (i, c) in clients.iter_mut().enumerate() {
            c.write_all(format!("client {i}").as_bytes()).expect("send");
        }
        let printed = stdout.wait_for(PATIENCE, |out| util::count_lines(out, "Connection from:  ") == 8);
        assert!(printed, "{}", context());
        // Ctrl-C: one SIGINT to the whole group.
        // SAFETY: kill has no memory effects; the group is our child's own.
        assert_eq!(unsafe { libc::kill(-pid, libc::SIGINT) }, 0);
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "did not stop\n{}", context());
            std::thread::sleep(Duration::from_millis(5));
        };
        stderr.wait_for(Duration::from_secs(5), |_| false);
        let err = stderr.text();
        assert!(status.success(), "{status}\n{}", context());
        assert!(
            !err.contains("second SIGINT") && !err.contains("without a summary"),
            "one Ctrl-C was taken for two: a worker exited without draining\n{}",
            context()
        );
        assert!(err.contains("summary: 8 connections"), "{}", context());
        drop(clients);
    }
}

fn kill(pid: i32, signal: i32) {
    // SAFETY: kill has no memory effects; `pid` is a process this test
    // started (or its child, alive: just listed from /proc).
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill({pid}, {signal})");
}

/// A supervisor of two workers started from `program` with `args`, stdout
/// piped to the caller, stderr captured; killed when dropped.
struct Supervisor {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Captured>,
}

impl Supervisor {
    fn start(program: &std::path::Path, args: &[&str]) -> (Supervisor, std::process::ChildStdout) {
        let (child, stdout, stderr, addr) = util::start_unread(program, args);
        let supervisor = Supervisor { child, addr, stderr };
        let pid = supervisor.pid();
        let started = supervisor.stderr.wait_for(PATIENCE, |err| {
            String::from_utf8_lossy(err).matches("serving on").count() >= 2
        });
        assert!(started, "{}", supervisor.stderr.text());
        assert_eq!(children(pid).len(), 2);
        (supervisor, stdout)
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An in-place upgrade (the package manager replaces or deletes the binary
/// the supervisor was started from) does not stop the supervisor from
/// restarting a worker that dies afterwards: it starts workers from the
/// program it runs, not from the path it was started as, which may name
/// another file or none. (Otherwise the clients that the kernel hashes to
/// the dead worker's SO_REUSEPORT listener would wait in its backlog for
/// ever.) Here the binary is removed, then a worker killed: it is replaced,
/// and every new client is served.
#[test]
fn a_worker_is_restarted_after_the_binary_was_removed() {
    let dir = std::env::temp_dir().join(format!("stsb-upgrade-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let program = dir.join("simple_tcp_server");
    std::fs::copy(util::bin("simple_tcp_server"), &program).expect("copy the binary");
    let (server, stdout) = Supervisor::start(&program, &["--workers", "2"]);
    let drain = thread::spawn(move || {
        let mut stdout = stdout;
        let mut sink = Vec::new();
        let _ = stdout.read_to_end(&mut sink);
    });
    // The upgrade: the file the supervisor runs is gone.
    std::fs::remove_file(&program).expect("remove the binary");
    let _ = std::fs::remove_dir(&dir);
    let workers = children(server.pid());
    kill(workers[0], libc::SIGKILL);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = children(server.pid());
        if now.len() == 2 && !now.contains(&workers[0]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dead worker was never replaced: {now:?}\n{}",
            server.stderr.text()
        );
        thread::sleep(Duration::from_millis(10));
    }
    // Every new client is served, whichever listener the kernel picks.
    for _ in 0..20 {
        drop(connect_greeted(server.addr));
    }
    drop(server);
    let _ = drain.join();
}

/// The supervisor shares its attention fairly between the workers' pipes
/// and everything else: when stdout is slower than a worker's transcript
/// (a log shipper, a terminal, a disk), a flooding worker's pipe never
/// empties, and the supervisor must still pass on the other workers'
/// lines, reap dead workers and restart them meanwhile. Here one worker
/// floods through a slow stdout reader and the other is killed: it is
/// restarted while the flood goes on (within about its 100 ms backoff).
#[test]
fn a_flooding_worker_does_not_freeze_the_supervisor() {
    let (server, stdout) = Supervisor::start(
        std::path::Path::new(util::bin("simple_tcp_server")),
        &["--workers", "2"],
    );
    // A slow reader of the transcript: 64 KiB every 10 ms, about 6.5 MB/s.
    let reader = thread::spawn(move || {
        let mut stdout = stdout;
        let mut buf = vec![0u8; 64 * 1024];
        while matches!(stdout.read(&mut buf), Ok(n) if n > 0) {
            thread::sleep(Duration::from_millis(10));
        }
    });
    let workers = children(server.pid());
    // One client floods: at most 48 MiB, which the slow reader takes about
    // 9 s to pass (1.24 bytes of transcript per byte sent).
    let stop = Arc::new(AtomicBool::new(false));
    let flooding = Arc::new(AtomicBool::new(true));
    let flooder = {
        let (stop, flooding, addr) = (Arc::clone(&stop), Arc::clone(&flooding), server.addr);
        thread::spawn(move || {
            let mut client: TcpStream = connect_greeted(addr);
            let block = vec![b'f'; 64 * 1024];
            for _ in 0..768 {
                if stop.load(Ordering::SeqCst) || client.write_all(&block).is_err() {
                    break;
                }
            }
            flooding.store(false, Ordering::SeqCst);
        })
    };
    // The flooding worker is the one blocked writing its full pipe.
    let mut busy = 0;
    util::wait_until("one worker, and only one, blocked writing its transcript", || {
        let blocked: Vec<bool> = workers.iter().map(|&w| util::blocked_writing_stdout(w)).collect();
        match blocked[..] {
            [true, false] => busy = 0,
            [false, true] => busy = 1,
            _ => return false,
        }
        true
    });
    let idle = workers[1 - busy];
    assert!(
        flooding.load(Ordering::SeqCst),
        "the flood ended before the test could act"
    );
    let before_kill = server.stderr.text().matches("restarting it in").count();
    kill(idle, libc::SIGKILL);
    let restarted = server.stderr.wait_for(PATIENCE, |err| {
        String::from_utf8_lossy(err).matches("restarting it in").count() > before_kill
    });
    let still_flooding = flooding.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    assert!(restarted, "{}", server.stderr.text());
    assert!(
        still_flooding,
        "the dead worker was noticed only after the other worker's flood had ended\n{}",
        server.stderr.text()
    );
    let _ = flooder.join();
    drop(server);
    let _ = reader.join();
}
