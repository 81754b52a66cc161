//! Connection management: the cap, idle timeout, keepalive and stats.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use util::{PATIENCE, ServerProcess, connect_greeted, send};

/// Everything the server sends until it closes (or `PATIENCE` passes).
fn read_all(stream: &mut TcpStream) -> Vec<u8> {
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    got
}

#[test]
fn at_the_cap_new_clients_get_one_line_and_are_closed() {
    let server = ServerProcess::start(&["--max-connections", "10"]);
    let mut served = Vec::new();
    for _ in 0..10 {
        served.push(connect_greeted(server.addr));
    }
    server.wait_lines("Connection from:", 10);
    for _ in 0..40 {
        let mut client = TcpStream::connect(server.addr).expect("connect");
        let got = read_all(&mut client);
        assert_eq!(got, b"ERR server full, try again later\n");
    }
    // The ten are still served.
    for (i, client) in served.iter_mut().enumerate() {
        send(client, format!("still here {i}").as_bytes());
    }
    server.wait_lines("<12:still here", 10);
    let out = server.stdout.bytes();
    assert_eq!(util::count_lines(&out, "Connection from:"), 10);
    // Logged once for the burst, not once per client (the line is written
    // at the first refusal; stderr is read by another thread: wait for it).
    let logged = server
        .stderr
        .wait_for(PATIENCE, |err| util::contains(err, b"server full"));
    assert!(logged, "{}", server.context());
    let stderr = server.stderr.text();
    assert_eq!(stderr.matches("server full").count(), 1, "{stderr}");

    // Room again: a client that leaves makes room for one more.
    drop(served.pop());
    server.wait_lines("Closed connection:", 1);
    let mut next = connect_greeted(server.addr);
    send(&mut next, b"made it");
    server.wait_text("<7:made it>\n");
    drop(served);
    drop(next);
    server.wait_lines("Closed connection:", 11);
}

#[test]
fn idle_clients_are_closed_and_busy_ones_kept() {
    /// The busy client sends 40 times per timeout: it is closed only if
    /// this test's thread stalls for the whole timeout.
    const TIMEOUT: Duration = Duration::from_secs(2);
    const BUSY_EVERY: Duration = Duration::from_millis(50);
    let server = ServerProcess::start(&["--tag", "--idle-timeout", "2s"]);
    let mut idle = connect_greeted(server.addr);
    let idle_addr = idle.local_addr().expect("addr");
    let mut busy = connect_greeted(server.addr);
    let busy_addr = busy.local_addr().expect("addr");
    send(&mut idle, b"one message, then silence");
    // The busy client keeps sending until the idle one is closed, and then
    // for another half timeout (two sweep periods).
    let started = Instant::now();
    let mut sent = 0;
    let mut idle_closed_at = None;
    while idle_closed_at.is_none_or(|t: Instant| t.elapsed() < TIMEOUT / 2) {
        assert!(
            started.elapsed() < PATIENCE,
            "idle client never closed\n{}",
            server.context()
        );
        send(&mut busy, b"x");
        sent += 1;
        std::thread::sleep(BUSY_EVERY);
        if idle_closed_at.is_none()
            && util::contains(
                &server.stdout.bytes(),
                format!("Closed connection:  {idle_addr}\n").as_bytes(),
            )
        {
            idle_closed_at = Some(Instant::now());
        }
    }
    // The idle client saw the server close; what it sent was printed first.
    assert_eq!(read_all(&mut idle), b"", "only EOF after the greeting");
    let out = server.stdout.text();
    let frame_at = out
        .find("<25:one message, then silence>")
        .expect("idle client's message printed");
    assert!(
        frame_at
            < out
                .find(&format!("Closed connection:  {idle_addr}"))
                .expect("closed line")
    );
    assert!(
        !out.contains(&format!("Closed connection:  {busy_addr}")),
        "busy client was closed\n{out}"
    );
    // Every byte the busy client sent is printed: it was served, not just
    // left open.
    let busy_tag = busy_addr.to_string();
    let ok = server.stdout.wait_for(PATIENCE, |out| {
        util::streams_by_client(out).get(&busy_tag).map_or(0, Vec::len) == sent
    });
    assert!(ok, "the busy client sent {sent} bytes\n{}", server.context());
    let logged = server
        .stderr
        .wait_for(PATIENCE, |err| util::contains(err, b"--idle-timeout"));
    assert!(logged, "{}", server.context());
}

/// The `tr` (timer) field of the server side of a connection in
/// /proc/net/tcp: 2 is the keepalive timer.
fn server_side_timer(server_port: u16, client_port: u16) -> Option<u32> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let port = |field: &str| u16::from_str_radix(field.rsplit(':').next().unwrap_or(""), 16).ok();
        if port(fields[1]) == Some(server_port) && port(fields[2]) == Some(client_port) {
            return fields[5]
                .split(':')
                .next()
                .and_then(|t| u32::from_str_radix(t, 16).ok());
        }
    }
    None
}

#[test]
fn keepalive_sets_the_keepalive_timer_on_accepted_sockets() {
    for (args, expected) in [(&["--keepalive", "30s"][..], 2), (&[][..], 0)] {
        let server = ServerProcess::start(args);
        let client = connect_greeted(server.addr);
        let client_port = client.local_addr().expect("addr").port();
        let timer = server_side_timer(server.addr.port(), client_port);
        assert_eq!(timer, Some(expected), "server args {args:?}");
    }
}

#[test]
fn stats_lines_are_logged_at_the_interval() {
    let server = ServerProcess::start(&["--stats", "100ms"]);
    let mut client = connect_greeted(server.addr);
    send(&mut client, b"counted");
    server.wait_text("<7:counted>\n");
    let ok = server.stderr.wait_for(PATIENCE, |err| {
        String::from_utf8_lossy(err)
            .lines()
            .any(|l| l.contains("stats: active 1 accepted 1 closed 0 rejected 0 bytes_in 7 frames 1"))
    });
    assert!(ok, "{}", server.context());
}

#[test]
fn a_client_over_the_cap_that_sends_at_once_still_gets_the_line() {
    let server = ServerProcess::start(&["--max-connections", "1"]);
    let _first = connect_greeted(server.addr);
    let mut second = TcpStream::connect(server.addr).expect("connect");
    // It may or may not be read before the server closes; either way the
    // client learns why it was turned away.
    match second.write_all(b"hello?") {
        Ok(()) => {}
        Err(e) => assert!(matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe)),
    }
    let got = read_all(&mut second);
    assert!(got.starts_with(b"ERR server full"), "{got:?}");
}
