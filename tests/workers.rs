//! `--workers N`: a supervisor and N worker processes behind one port. Every
//! line whole, every client's bytes exact, one `Listening to:` line, a
//! worker killed with SIGKILL replaced (its clients see their connections
//! closed, the others go on), one cap over all workers, SIGTERM draining
//! every worker into one summary.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use util::{PATIENCE, ServerProcess, assert_lines_whole, children, connect_greeted, random_clients, streams_by_client};

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
