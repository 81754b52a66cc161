//! Who may connect, changed while the server runs: `--access-file` reread
//! on SIGHUP (held clients stay, new ones meet the new rules, a file that
//! does not parse changes nothing), in one process and under `--workers`;
//! and `--max-per-source`, per client address (behind a proxy, the address
//! the header names), in one process and under `--workers`.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use util::{PATIENCE, ServerProcess, TempFile};

/// What the server sends a new client before it closes it or waits for
/// it: the greeting, an `ERR` line, or nothing (closed without a word).
fn first_words(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\n") {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => got.push(byte[0]),
            // Held open without a word: neither greeted nor closed.
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                panic!("no greeting and no close within {PATIENCE:?} (read {got:?})")
            }
            Err(_) => break,
        }
    }
    got
}

/// Sends SIGHUP and waits until every process that serves has read the
/// access file (`n` lines saying so, counting from `before`).
fn reload(server: &ServerProcess, n: usize, said: &str) {
    let before = server.stderr.text().matches(said).count();
    server.signal(libc::SIGHUP);
    let ok = server.stderr.wait_for(PATIENCE, |err| {
        String::from_utf8_lossy(err).matches(said).count() >= before + n
    });
    assert!(ok, "waited for {n} x {said:?}\n{}", server.context());
}

#[test]
fn a_reload_that_denies_held_clients_keeps_them_and_refuses_newcomers() {
    for (args, processes) in [(&[][..], 1), (&["--workers", "2"][..], 2)] {
        let file = TempFile::new(&format!("access-{processes}"), "# everyone\n");
        let mut all: Vec<&str> = vec!["--tag", "--access-file", file.path()];
        all.extend_from_slice(args);
        let server = ServerProcess::start(&all);
        if processes > 1 {
            let ok = server.stderr.wait_for(PATIENCE, |err| {
                String::from_utf8_lossy(err).matches(" is ready (pid ").count() >= processes
            });
            assert!(ok, "{}", server.context());
        }
        // A thousand clients from 127.0.0.2, held.
        let mut held: Vec<TcpStream> = (0..1000)
            .map(|_| util::connect_from("127.0.0.2", server.addr))
            .collect();
        for client in held.iter_mut() {
            assert_eq!(first_words(client), b"Let's GO!\n");
        }
        // Their network is denied from now on.
        file.write("allow 127.0.0.0/8\ndeny 127.0.0.2/31  # the held ones' network\n");
        // One process reads the file; workers take the rules their
        // supervisor read, each saying so.
        let taken = if processes == 1 {
            "SIGHUP: access rules read again"
        } else {
            "SIGHUP: access rules taken from the supervisor"
        };
        reload(&server, processes, taken);
        // A newcomer from it is closed without a word.
        let mut newcomer = util::connect_from("127.0.0.3", server.addr);
        assert_eq!(
            first_words(&mut newcomer),
            b"",
            "{args:?}: a denied newcomer is not greeted"
        );
        // Another network is still welcome.
        let mut other = util::connect_from("127.0.0.4", server.addr);
        assert_eq!(first_words(&mut other), b"Let's GO!\n", "{args:?}");
        // The held thousand are all still served.
        for (i, client) in held.iter_mut().enumerate() {
            client
                .write_all(format!("held {i:04}").as_bytes())
                .expect("a held client sends");
        }
        let heard = server.stdout.wait_for(PATIENCE, |out| {
            String::from_utf8_lossy(out).matches("<9:held ").count() == 1000
        });
        assert!(heard, "{args:?}: not every held client was heard\n{}", server.context());
        // A file that does not parse changes nothing, and says why.
        file.write("deny 127.0.0.999\n");
        // The one process that reads the file says why it keeps the rules.
        reload(&server, 1, "the rules in force stay");
        let mut still_denied = util::connect_from("127.0.0.3", server.addr);
        assert_eq!(first_words(&mut still_denied), b"", "{args:?}");
        let mut still_welcome = util::connect_from("127.0.0.4", server.addr);
        assert_eq!(first_words(&mut still_welcome), b"Let's GO!\n", "{args:?}");
    }
}

#[test]
fn a_restarted_worker_takes_the_rules_in_force_not_the_file() {
    let file = TempFile::new("access-restart", "deny 127.0.0.9\n");
    let server = ServerProcess::start(&["--workers", "2", "--access-file", file.path()]);
    let ok = server.stderr.wait_for(PATIENCE, |err| {
        String::from_utf8_lossy(err).matches(" is ready (pid ").count() >= 2
    });
    assert!(ok, "{}", server.context());
    // A bad edit, read on SIGHUP: refused, the rules stay.
    file.write("deny 127.0.0.999\n");
    reload(&server, 1, "the rules in force stay");
    // A good edit, not read (no SIGHUP): not in force either.
    file.write("deny 127.0.0.4\n");
    // Workers restart (killed): each takes the rules in force from the
    // supervisor, not the file as it is now.
    for round in 1..=2 {
        let victim = util::children(server.pid())[0];
        // SAFETY: kill has no memory effects; the worker is the server's child.
        assert_eq!(unsafe { libc::kill(victim, libc::SIGKILL) }, 0);
        let ok = server.stderr.wait_for(PATIENCE, |err| {
            String::from_utf8_lossy(err).matches(" is ready (pid ").count() >= 2 + round
        });
        assert!(
            ok,
            "round {round}: a restarted worker is not ready\n{}",
            server.context()
        );
    }
    // Every worker (the kernel spreads the connections over both): .9
    // denied, .4 welcome.
    for _ in 0..8 {
        let mut denied = util::connect_from("127.0.0.9", server.addr);
        assert_eq!(first_words(&mut denied), b"", "{}", server.context());
        let mut welcome = util::connect_from("127.0.0.4", server.addr);
        assert_eq!(first_words(&mut welcome), b"Let's GO!\n", "{}", server.context());
    }
    assert!(
        !server.stderr.text().contains("cannot get going"),
        "{}",
        server.context()
    );
}

#[test]
fn a_file_caught_half_written_is_not_taken() {
    let file = TempFile::new("access-half", "deny 127.0.0.9\n");
    let server = ServerProcess::start(&["--access-file", file.path()]);
    // No newline at the end: a writer may be half way through.
    file.write("deny 127.0.0.9\ndeny 127.0.0");
    reload(&server, 1, "the rules in force stay");
    assert!(
        server.stderr.text().contains("the last line has no newline"),
        "{}",
        server.context()
    );
    let mut denied = util::connect_from("127.0.0.9", server.addr);
    assert_eq!(first_words(&mut denied), b"");
}

#[test]
fn an_access_file_that_does_not_parse_at_start_is_one_clear_error() {
    let file = TempFile::new("bad-access", "allow 10.0.0.0/8\npermit everyone\n");
    let out = std::process::Command::new(util::bin("simple_tcp_server"))
        .args(["127.0.0.1", "0", "--access-file", file.path()])
        .output()
        .expect("run the server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!(
            "simple_tcp_server: --access-file: {}: line 2: expected `allow CIDR` or `deny CIDR`, found `permit everyone`",
            file.path()
        )
    );
}

/// Three connections from one address under `--max-per-source 2`: two are
/// greeted, the third is told why and closed; another address is greeted;
/// once one of the two closes, the address may connect again.
///
/// The two first wait, within patience, for room: connections from the
/// same address that were just closed may not have been seen closed yet.
fn two_per_source(server: &ServerProcess, connect: &dyn Fn(&str) -> TcpStream) {
    let mut greeted = greeted_once_there_is_room(server, connect, 2);
    let mut third = connect("127.0.0.5");
    assert_eq!(
        first_words(&mut third),
        b"ERR too many connections from your address, try again later\n"
    );
    let mut other = connect("127.0.0.6");
    assert_eq!(first_words(&mut other), b"Let's GO!\n");
    drop(greeted.pop());
    // Room again once the server has seen it close.
    greeted_once_there_is_room(server, connect, 1);
}

/// `n` connections from 127.0.0.5, all greeted, tried again (within
/// patience) until the server has seen earlier ones from it close.
fn greeted_once_there_is_room(server: &ServerProcess, connect: &dyn Fn(&str) -> TcpStream, n: usize) -> Vec<TcpStream> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut streams: Vec<TcpStream> = (0..n).map(|_| connect("127.0.0.5")).collect();
        let words: Vec<Vec<u8>> = streams.iter_mut().map(first_words).collect();
        if words.iter().all(|w| w == b"Let's GO!\n") {
            return streams;
        }
        assert!(
            Instant::now() < deadline,
            "no room for {n}: {words:?}\n{}",
            server.context()
        );
        drop(streams);
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn max_per_source_caps_one_address_and_tells_it_why() {
    for args in [&[][..], &["--threads", "2"][..], &["--workers", "2"][..]] {
        let mut all = vec!["--max-per-source", "2"];
        all.extend_from_slice(args);
        let mut server = ServerProcess::start(&all);
        two_per_source(&server, &|source| util::connect_from(source, server.addr));
        let counted = server.stderr.wait_for(PATIENCE, |err| {
            util::contains(err, b"holds --max-per-source connections already")
        });
        assert!(counted, "{args:?}: logged\n{}", server.context());
        server.signal(libc::SIGTERM);
        assert!(server.wait_exit(PATIENCE).success());
        let err = server.stderr.text();
        let summary = err.lines().find(|l| l.contains("summary: ")).unwrap_or("");
        assert!(
            summary.contains(" over --max-per-source"),
            "{args:?}: the summary counts them\n{err}"
        );
        let out = server.stdout.text();
        // The refused third never appears as a client.
        assert_eq!(
            util::count_lines(out.as_bytes(), "Connection from:  127.0.0.5:"),
            3,
            "{args:?}: two, then one more once there was room\n{out}"
        );
    }
}

#[test]
fn behind_a_proxy_the_limit_counts_the_address_the_header_names() {
    // Under --workers too: every connection comes from the proxy, and the
    // worker that reads a header passes the client to the worker that
    // counts its address.
    for args in [
        &[][..],
        &["--workers", "2"][..],
        &["--workers", "3", "--threads", "2"][..],
    ] {
        let mut all = vec!["--proxy-protocol", "--max-per-source", "2"];
        all.extend_from_slice(args);
        let server = ServerProcess::start(&all);
        let port = server.addr.port();
        // v1 and v2 headers in turn, naming the clients.
        let turn = std::cell::Cell::new(0);
        let connect = |client: &str| {
            let mut stream = TcpStream::connect(server.addr).expect("connect");
            stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
            let me = stream.local_addr().expect("addr");
            let source: SocketAddr = format!("{client}:{}", me.port()).parse().expect("addr");
            turn.set(turn.get() + 1);
            let header = if turn.get() % 2 == 0 {
                format!("PROXY TCP4 {client} 127.0.0.1 {} {port}\r\n", me.port()).into_bytes()
            } else {
                ppp::v2::Builder::with_addresses(
                    ppp::v2::Version::Two | ppp::v2::Command::Proxy,
                    ppp::v2::Protocol::Stream,
                    (source, server.addr),
                )
                .build()
                .expect("a v2 header")
            };
            stream.write_all(&header).expect("header");
            stream
        };
        // Three rounds: the same addresses again once the last round's
        // connections are gone (every count given back).
        for _ in 0..3 {
            two_per_source(&server, &connect);
        }
    }
}
