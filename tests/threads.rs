//! `--threads N`: several reactors behind one transcript. Every line whole,
//! every client's bytes exact and in order, one global cap, one drain on
//! SIGTERM, and a blocked stdout blocking every reactor without loss.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use util::{
    PATIENCE, Rng, ServerProcess, assert_lines_whole, connect_greeted, frames_of, random_clients, streams_by_client,
};

/// How many reactors the tests run.
const THREADS: &str = "4";

#[test]
fn many_clients_on_four_reactors_keep_their_bytes_in_order() {
    let server = ServerProcess::start(&["--threads", THREADS, "--tag"]);
    assert_eq!(server.threads(), 4, "one thread per reactor");
    // Up to 256 KiB each in random writes: lines far longer than PIPE_BUF
    // in total, from every reactor at once.
    let sent = random_clients(server.addr, 64, 1, 256 * 1024, 20_000);
    server.wait_lines("Closed connection:  ", sent.len());
    let out = server.stdout.bytes();
    assert_lines_whole(&out);
    let streams = streams_by_client(&out);
    for (me, data) in &sent {
        let got = streams.get(me).map(Vec::as_slice).unwrap_or_default();
        assert!(
            got == data.as_slice(),
            "{me}: {} bytes sent, {} printed or out of order",
            data.len(),
            got.len()
        );
    }
    for (_, len, _) in frames_of(&out) {
        assert!(len <= 25);
    }
}

#[test]
fn the_cap_holds_across_reactors() {
    let mut server = ServerProcess::start(&["--threads", THREADS, "--max-connections", "10"]);
    // Connections from many source ports, so that SO_REUSEPORT spreads them
    // over all four reactors.
    let mut served = Vec::new();
    let mut turned_away = 0;
    for _ in 0..60 {
        let mut client = TcpStream::connect(server.addr).expect("connect");
        client.set_read_timeout(Some(PATIENCE)).expect("timeout");
        let mut first = [0u8; 10];
        client.read_exact(&mut first).expect("the server's first bytes");
        if &first == b"Let's GO!\n" {
            served.push(client);
        } else {
            assert_eq!(&first, b"ERR server");
            turned_away += 1;
        }
    }
    assert_eq!(served.len(), 10, "the cap is global, not per reactor");
    assert_eq!(turned_away, 50);
    server.wait_lines("Connection from:  ", 10);
    // The log line may come after the clients were told: wait for it, then
    // stop the server, so that every line it logged is in.
    let logged = server
        .stderr
        .wait_for(PATIENCE, |err| util::contains(err, b"server full"));
    assert!(logged, "the burst is logged\n{}", server.context());
    server.signal(libc::SIGTERM);
    drop(served);
    assert!(server.wait_exit(PATIENCE).success(), "{}", server.context());
    let stderr = server.stderr.text();
    assert_eq!(stderr.matches("server full").count(), 1, "one line per burst\n{stderr}");
    assert_eq!(util::count_lines(&server.stdout.bytes(), "Connection from:  "), 10);
}

#[test]
fn sigterm_drains_every_reactor() {
    let mut server = ServerProcess::start(&["--threads", THREADS, "--tag"]);
    let mut clients: Vec<TcpStream> = (0..40).map(|_| connect_greeted(server.addr)).collect();
    server.wait_lines("Connection from:  ", 40);
    // Stopped, the server reads nothing: what the clients send now is in
    // the kernel when SIGTERM comes, and must all be printed.
    server.signal(libc::SIGSTOP);
    let mut sent = Vec::new();
    for (i, client) in clients.iter_mut().enumerate() {
        let msg = format!("client {i} was here before the signal").repeat(i + 1);
        client.write_all(msg.as_bytes()).expect("send");
        sent.push((client.local_addr().expect("addr").to_string(), msg.into_bytes()));
    }
    for client in &clients {
        let deadline = Instant::now() + PATIENCE;
        while unacked(client) > 0 {
            assert!(Instant::now() < deadline, "the server's kernel never took the bytes");
            thread::sleep(Duration::from_millis(1));
        }
    }
    server.signal(libc::SIGTERM);
    server.signal(libc::SIGCONT);
    let status = server.wait_exit(PATIENCE);
    assert!(status.success(), "{status}\n{}", server.context());
    let out = server.stdout.bytes();
    assert_lines_whole(&out);
    let streams = streams_by_client(&out);
    for (me, msg) in &sent {
        assert_eq!(streams.get(me), Some(msg), "{me}: not all of it printed");
    }
    assert_eq!(util::count_lines(&out, "Closed connection:  "), 40);
    let stderr = server.stderr.text();
    assert!(
        stderr.contains("summary: 40 connections (40 open at stop"),
        "one summary for all\n{stderr}"
    );
}

/// Bytes `stream` has sent that the peer's kernel has not acknowledged.
fn unacked(stream: &TcpStream) -> usize {
    use std::os::fd::AsRawFd;
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one c_int through a pointer to a
    // live local, on a descriptor `stream` owns.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    assert_eq!(rc, 0, "SIOCOUTQ");
    queued as usize
}

/// The state of every thread of `pid` (R running, S sleeping, ...).
fn thread_syscalls(pid: u32) -> Vec<Option<i64>> {
    let mut calls = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let path = task.expect("task").path().join("syscall");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        calls.push(text.split_whitespace().next().and_then(|n| n.parse().ok()));
    }
    calls
}

#[test]
fn a_blocked_stdout_blocks_every_reactor_and_loses_nothing() {
    let (mut child, mut stdout, _stderr, addr) = util::start_unread(
        std::path::Path::new(util::bin("simple_tcp_server")),
        &["--threads", THREADS, "--tag"],
    );
    let pid = child.id();
    // Sixty-four clients (so that SO_REUSEPORT leaves no reactor without
    // one: 4 x (3/4)^64, about 4e-8), 512 KiB each: far more than the pipe
    // holds.
    let senders: Vec<_> = (0..64u64)
        .map(|i| {
            thread::spawn(move || {
                let mut client = connect_greeted(addr);
                let me = client.local_addr().expect("addr").to_string();
                let data = Rng::new(100 + i).bytes(512 << 10);
                client.write_all(&data).expect("send");
                // Done: wait for the server to have read it all and close.
                client.shutdown(std::net::Shutdown::Write).expect("shutdown");
                let mut rest = Vec::new();
                client.read_to_end(&mut rest).expect("read to the close");
                (me, data)
            })
        })
        .collect();
    // Nobody reads: every reactor ends up waiting, in write or for the lock.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let calls = thread_syscalls(pid);
        let blocked = calls
            .iter()
            .filter(|c| matches!(c, Some(n) if *n == libc::SYS_write || *n == libc::SYS_futex))
            .count();
        if calls.len() == 4 && blocked == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "reactors not all blocked: {calls:?}");
        thread::sleep(Duration::from_millis(5));
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    // Now read everything; the clients finish and close.
    let reader = thread::spawn(move || {
        let mut out = Vec::new();
        stdout.read_to_end(&mut out).expect("read");
        out
    });
    let sent: Vec<(String, Vec<u8>)> = senders.into_iter().map(|s| s.join().expect("sender")).collect();
    // SAFETY: kill has no memory effects; `pid` is our unreaped child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
    let out = reader.join().expect("reader");
    assert_lines_whole(&out);
    let streams = streams_by_client(&out);
    for (me, data) in &sent {
        assert!(streams.get(me) == Some(data), "{me}: bytes lost or out of order");
    }
    // The server held on to no more than its buffers while blocked: 32 MiB
    // were waiting to be printed, none of it queued inside the server.
    assert!(rss_kb < 48 * 1024, "RSS {rss_kb} kB while stdout was blocked");
}

/// The clients each reactor serves, from the last `--stats` line that
/// says `active` open after `accepted` accepted and `closed` closed, once
/// there is one.
fn per_reactor(server: &ServerProcess, active: usize, accepted: usize, closed: usize) -> Vec<usize> {
    let want = format!("stats: active {active} accepted {accepted} closed {closed} ");
    let last = |err: &[u8]| {
        String::from_utf8_lossy(err)
            .lines()
            .rev()
            .find(|l| l.contains(&want) && l.contains(" | per reactor "))
            .map(str::to_owned)
    };
    assert!(
        server.stderr.wait_for(PATIENCE, |err| last(err).is_some()),
        "no stats line like {want:?}\n{}",
        server.context()
    );
    let line = last(&server.stderr.bytes()).unwrap_or_default();
    let counts: Vec<usize> = line
        .split(" | per reactor ")
        .nth(1)
        .unwrap_or_default()
        .split(' ')
        .map(|n| n.parse().expect("a count"))
        .collect();
    assert_eq!(counts.iter().sum::<usize>(), active, "{line}");
    counts
}

#[test]
fn clients_are_spread_evenly_over_the_reactors() {
    // The kernel's SO_REUSEPORT hash alone splits 200 clients over four
    // reactors unevenly (40 to 60 each is typical); a reactor that accepts
    // a client while another serves two fewer hands it over, so each serves
    // 50, give or take that gap. The counts are what each reactor has open.
    let server = ServerProcess::start(&["--threads", THREADS, "--stats", "100ms"]);
    for round in 0..2 {
        let clients: Vec<TcpStream> = (0..200).map(|_| connect_greeted(server.addr)).collect();
        server.wait_lines("Connection from:  ", 200 * (round + 1));
        let counts = per_reactor(&server, 200, 200 * (round + 1), 200 * round);
        assert_eq!(counts.len(), 4, "{counts:?}");
        let (lo, hi) = (counts.iter().min().copied(), counts.iter().max().copied());
        assert!(
            hi.zip(lo).is_some_and(|(hi, lo)| hi - lo <= 2),
            "round {round}: uneven: {counts:?}"
        );
        // Every client was greeted and is served: each one's bytes come
        // back in the transcript, whichever reactor took it over.
        for (i, mut c) in clients.into_iter().enumerate() {
            c.write_all(format!("r{round} c {i:03}").as_bytes()).expect("send");
        }
        for i in 0..200 {
            server.wait_text(&format!("<8:r{round} c {i:03}>\n"));
        }
        // All gone: every reactor is back at zero, and the next round's
        // spread shows that the counts behind the choice came back too.
        server.wait_lines("Closed connection:  ", 200 * (round + 1));
        let all = 200 * (round + 1);
        assert_eq!(per_reactor(&server, 0, all, all), [0, 0, 0, 0]);
    }
}
