//! Hostile clients: nothing lost, nothing forged, nobody starved.

mod util;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use util::{PATIENCE, Rng, ServerProcess, connect_greeted, frames_of, reset, send, streams_by_client};

/// 200 clients at once, a quarter of them resetting part-way through: a
/// client that closes has every byte it sent printed, in order; one that
/// resets has a prefix of what it sent printed (whatever the server read
/// before the reset: a reset discards what the kernel still held).
#[test]
fn among_200_clients_closing_ones_are_printed_whole_and_resetting_ones_as_a_prefix() {
    const CLIENTS: u64 = 200;
    let server = ServerProcess::start(&["--tag"]);
    let addr = server.addr;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|seed| {
            thread::spawn(move || {
                let mut rng = Rng::new(seed * 7 + 3);
                let len = rng.range(0, 64 * 1024);
                let data = rng.bytes(len);
                // A quarter reset part-way through.
                let resets = seed % 4 == 0;
                let stop_at = if resets { rng.range(0, data.len()) } else { data.len() };
                let mut client = connect_greeted(addr);
                let me = client.local_addr().expect("addr").to_string();
                let mut sent = 0;
                while sent < stop_at {
                    let n = rng.range(1, 5000).min(stop_at - sent);
                    send(&mut client, &data[sent..sent + n]);
                    sent += n;
                }
                if resets {
                    reset(client);
                } else {
                    client.shutdown(Shutdown::Write).expect("shutdown");
                    let mut rest = Vec::new();
                    client.read_to_end(&mut rest).expect("server closes");
                }
                (me, data[..sent].to_vec(), resets)
            })
        })
        .collect();
    let sent: Vec<(String, Vec<u8>, bool)> = clients.into_iter().map(|c| c.join().expect("client")).collect();
    server.wait_lines("Closed connection:", CLIENTS as usize);

    let streams = streams_by_client(&server.stdout.bytes());
    let mut reset_bytes = (0, 0);
    for (me, data, resets) in &sent {
        let got = streams.get(me).map(Vec::as_slice).unwrap_or_default();
        if *resets {
            // Whatever the server read before the reset is printed, in order.
            assert!(
                data.starts_with(got),
                "{me}: printed bytes are not a prefix of what it sent"
            );
            reset_bytes.0 += got.len();
            reset_bytes.1 += data.len();
        } else {
            assert!(
                got == &data[..],
                "{me}: sent {} bytes, {} printed",
                data.len(),
                got.len()
            );
        }
    }
    eprintln!(
        "reset clients: {} of {} bytes sent before the reset printed",
        reset_bytes.0, reset_bytes.1
    );
}

#[test]
fn a_fast_client_does_not_starve_a_slow_one_or_new_ones() {
    /// The fast client stops after this much if it is not told to first
    /// (a fair server prints the slow client's message long before).
    const FLOOD_CAP: u64 = 8 << 30;
    let server = ServerProcess::start(&["--tag"]);
    let stop = Arc::new(AtomicBool::new(false));
    let streamed = Arc::new(AtomicU64::new(0));
    let mut fast = connect_greeted(server.addr);
    let fast_addr = fast.local_addr().expect("addr").to_string();
    let streamer = {
        let stop = Arc::clone(&stop);
        let streamed = Arc::clone(&streamed);
        thread::spawn(move || {
            let block: Vec<u8> = b"fast says: ".iter().copied().cycle().take(256 * 1024).collect();
            let started = Instant::now();
            // Bounded in bytes and time; normally stopped long before.
            while !stop.load(Ordering::SeqCst)
                && streamed.load(Ordering::SeqCst) < FLOOD_CAP
                && started.elapsed() < PATIENCE * 4
            {
                if fast.write_all(&block).is_err() {
                    break;
                }
                streamed.fetch_add(block.len() as u64, Ordering::SeqCst);
            }
            fast.shutdown(Shutdown::Write).expect("shutdown");
            let mut rest = Vec::new();
            let _ = fast.read_to_end(&mut rest);
        })
    };
    util::wait_until("the fast client to stream 8 MiB", || {
        streamed.load(Ordering::SeqCst) >= 8 << 20
    });
    let mut slow = connect_greeted(server.addr);
    let slow_addr = slow.local_addr().expect("addr").to_string();
    send(&mut slow, b"short message");
    server.wait_text(&format!("{slow_addr} <13:short message>\n"));
    // New clients are greeted while the stream goes on.
    let newcomers: Vec<TcpStream> = (0..5).map(|_| connect_greeted(server.addr)).collect();
    stop.store(true, Ordering::SeqCst);
    streamer.join().expect("streamer");
    server.wait_text(&format!("Closed connection:  {fast_addr}\n"));
    // The order of the lines, not a time: the slow client's message and the
    // newcomers' connections were printed while the fast client's stream
    // was still being printed, not after it.
    let out = server.stdout.text();
    let last_fast_frame = out.rfind(&format!("\n{fast_addr} <")).expect("fast client's frames");
    let short_at = out
        .find(&format!("\n{slow_addr} <13:short message>"))
        .expect("short message");
    assert!(
        short_at < last_fast_frame,
        "the slow client's message was printed after the fast client's last frame ({} MB streamed)",
        streamed.load(Ordering::SeqCst) / 1_000_000
    );
    for newcomer in &newcomers {
        let line = format!("\nConnection from:  {}\n", newcomer.local_addr().expect("addr"));
        assert!(
            out.find(&line).expect("newcomer accepted") < last_fast_frame,
            "{line:?} came after the fast client's last frame"
        );
    }
    eprintln!(
        "the fast client streamed {} MB",
        streamed.load(Ordering::SeqCst) / 1_000_000
    );
}

#[test]
fn a_thousand_dribbling_clients_cost_no_thread_and_little_cpu() {
    const DRIBBLERS: usize = 1000;
    const PERIOD: Duration = Duration::from_millis(300);
    const ROUND_TRIPS: u8 = 20;
    let server = ServerProcess::start(&["--tag"]);
    let mut dribblers: Vec<TcpStream> = (0..DRIBBLERS)
        .map(|_| {
            let c = TcpStream::connect(server.addr).expect("connect");
            c.set_nonblocking(true).expect("nonblocking");
            c
        })
        .collect();
    server.wait_lines("Connection from:", DRIBBLERS);
    let dribbler_addrs: std::collections::HashSet<String> = dribblers
        .iter()
        .map(|c| c.local_addr().expect("addr").to_string())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    // What the dribblers send: a lowercase letter, or, while `mark` holds
    // one, that uppercase letter (so the transcript shows which dribbles
    // were sent after a given moment).
    let mark = Arc::new(std::sync::atomic::AtomicU8::new(0));
    let dribbling = {
        let (stop, rounds, mark) = (Arc::clone(&stop), Arc::clone(&rounds), Arc::clone(&mark));
        thread::spawn(move || {
            let started = Instant::now();
            // One byte per client per period, spread over the period.
            while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(60) {
                for (i, c) in dribblers.iter_mut().enumerate() {
                    let byte = match mark.load(Ordering::SeqCst) {
                        0 => b'a' + (i % 26) as u8,
                        marked => marked,
                    };
                    let _ = c.write(&[byte]);
                    if i % 100 == 99 {
                        thread::sleep(PERIOD / 10);
                    }
                }
                rounds.fetch_add(1, Ordering::SeqCst);
            }
            dribblers
        })
    };
    util::wait_until("two rounds of dribbles", || rounds.load(Ordering::SeqCst) >= 2);
    let cpu_before = server.cpu_time();
    let wall = Instant::now();

    // A normal client's round trips: connect, greeting, one message printed.
    // Once its message is in the server's kernel, the dribblers send the
    // round trip's uppercase letter.
    let mut rtts = Vec::new();
    for i in 0..ROUND_TRIPS {
        let started = Instant::now();
        let mut normal = connect_greeted(server.addr);
        let me = normal.local_addr().expect("addr").to_string();
        let message = format!("round trip {i:02}");
        send(&mut normal, message.as_bytes());
        util::wait_until("the message to reach the server's kernel", || {
            util::unacked(&normal) == 0
        });
        mark.store(b'A' + i, Ordering::SeqCst);
        server.wait_text(&format!("{me} <13:{message}>\n"));
        mark.store(0, Ordering::SeqCst);
        rtts.push(started.elapsed());
    }
    let elapsed = wall.elapsed();
    let cpu = server.cpu_time() - cpu_before;
    assert_eq!(server.threads(), 1);
    stop.store(true, Ordering::SeqCst);
    let _dribblers = dribbling.join().expect("dribbler");

    // The normal client did not wait behind the dribblers: a server that
    // reads in readiness order prints a dribbler at most twice between the
    // message's arrival and the message (once from the wakeup in progress,
    // once ahead of it in the next), however long either side is delayed;
    // a dribbler printed a third time means the message waited a round.
    let out = server.stdout.bytes();
    let lines: Vec<&[u8]> = out.split(|&b| b == b'\n').collect();
    for i in 0..ROUND_TRIPS {
        let message = format!("<13:round trip {i:02}>");
        let end = lines
            .iter()
            .position(|l| l.ends_with(message.as_bytes()))
            .expect("message line");
        let mut marked: HashMap<&[u8], usize> = HashMap::new();
        for line in &lines[..end] {
            let Some(frame) = simple_tcp_server::output::text::parse_frame_line(line) else {
                continue;
            };
            if frame.tag.is_some_and(|t| dribbler_addrs.contains(t)) && frame.text.contains(&(b'A' + i)) {
                *marked
                    .entry(line.split(|&b| b == b' ').next().unwrap_or_default())
                    .or_default() += 1;
            }
        }
        let worst = marked.values().max().copied().unwrap_or(0);
        assert!(
            worst <= 2,
            "round trip {i}: a dribbler was printed {worst} times after the message arrived, before it \
             ({} dribblers at least once)",
            marked.len()
        );
    }
    rtts.sort();
    eprintln!(
        "round trips with {DRIBBLERS} dribblers: median {:?}, max {:?}; server CPU {:?} over {:?}",
        rtts[rtts.len() / 2],
        rtts[rtts.len() - 1],
        cpu,
        elapsed
    );
    // Little CPU: well under half a core (the dribbles are a few thousand
    // one-byte reads a second).
    assert!(
        cpu < elapsed / 2 + Duration::from_millis(100),
        "server used {cpu:?} in {elapsed:?}"
    );
}

#[test]
fn every_byte_value_and_forgery_attempts_stay_inside_their_frames() {
    let server = ServerProcess::start(&["--tag"]);
    let all: Vec<u8> = (0..=255u8).collect();
    let cases: Vec<Vec<u8>> = vec![
        all.clone(),
        all.iter().rev().copied().collect(),
        b"\x1b[2J\x1b[H\x1b]0;owned\x07\x1b[31mred\x1b[0m".to_vec(),
        b"x>\nConnection from:  6.6.6.6:666\n<5:fake!>\nClosed connection:  6.6.6.6:666\n".to_vec(),
        b"\r<3:abc>\rListening to:  1.2.3.4:5".to_vec(),
        b"\xc0\xaf\xe0\x80\xaf\xf0\x80\x80\xaf overlong".to_vec(),
        b"\xed\xa0\x80\xed\xbf\xbf lone surrogates".to_vec(),
        "\u{202e}\u{2066}\u{200b}\u{feff}\u{9b}31m bidi and friends"
            .as_bytes()
            .to_vec(),
    ];
    let mut sent: HashMap<String, Vec<u8>> = HashMap::new();
    for case in &cases {
        let mut client = connect_greeted(server.addr);
        let me = client.local_addr().expect("addr").to_string();
        send(&mut client, case);
        client.shutdown(Shutdown::Write).expect("shutdown");
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).expect("server closes");
        sent.insert(me, case.clone());
    }
    server.wait_lines("Closed connection:", cases.len());
    let out = server.stdout.bytes();
    // No raw control byte reached stdout; every line is a transcript line.
    assert!(
        out.iter().all(|&b| b == b'\n' || (b >= 0x20 && b != 0x7f)),
        "a control byte reached stdout"
    );
    let text = String::from_utf8(out.clone()).expect("the transcript is valid UTF-8");
    for line in text.lines() {
        let known = line.starts_with("Listening to:  ")
            || line.starts_with("Connection from:  127.0.0.1:")
            || line.starts_with("Closed connection:  127.0.0.1:")
            || simple_tcp_server::output::text::parse_frame_line(line.as_bytes())
                .is_some_and(|f| f.tag.is_some_and(|t| sent.contains_key(t)) && f.len <= 25 && f.len > 0);
        assert!(known, "forged or malformed line: {line:?}");
    }
    assert_eq!(util::count_lines(&out, "Connection from:"), cases.len());
    // And the unescaped frames are exactly what each client sent.
    assert_eq!(streams_by_client(&out), sent);
    assert!(frames_of(&out).iter().all(|f| f.1 <= 25));
}

/// A child process killed (and reaped) when the test ends, even by a panic.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `simple_tcp_server ARGS` with stdout piped to the test itself.
fn start_with_stdout(args: &[&str]) -> (std::process::Child, std::process::ChildStdout, SocketAddr) {
    let mut child = std::process::Command::new(util::bin("simple_tcp_server"))
        .args(["127.0.0.1", "0"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start server");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = Vec::new();
    let mut byte = [0u8; 1];
    while !first.ends_with(b"\n") {
        stdout.read_exact(&mut byte).expect("Listening line");
        first.push(byte[0]);
    }
    let line = String::from_utf8(first).expect("utf8");
    let addr = line.trim_end()["Listening to:  ".len()..].parse().expect("address");
    (child, stdout, addr)
}

#[test]
fn a_slow_reader_of_the_transcript_slows_clients_down_and_loses_nothing() {
    const TOTAL: usize = 64 << 20;
    let (child, mut stdout, addr) = start_with_stdout(&[]);
    let child = KillOnDrop(child);
    let done = Arc::new(AtomicBool::new(false));
    let sender = {
        let done = Arc::clone(&done);
        thread::spawn(move || {
            let mut client = connect_greeted(addr);
            let block: Vec<u8> = b"wong says: 123 ".iter().copied().cycle().take(1 << 20).collect();
            for _ in 0..TOTAL / block.len() {
                client.write_all(&block).expect("send");
            }
            client.shutdown(Shutdown::Write).expect("shutdown");
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).expect("server closes");
            done.store(true, Ordering::SeqCst);
        })
    };
    // Nobody reads the transcript: the server blocks on stdout, stops
    // reading, and the client's writes stall.
    let pid = child.0.id() as i32;
    util::wait_until("the server to block writing its transcript", || {
        util::blocked_writing_stdout(pid)
    });
    assert!(
        !done.load(Ordering::SeqCst),
        "64 MB went through with nobody reading the transcript"
    );
    let cpu_before = util::cpu_time(pid);
    thread::sleep(Duration::from_secs(1));
    assert!(
        !done.load(Ordering::SeqCst),
        "64 MB went through with nobody reading the transcript"
    );
    let cpu = util::cpu_time(pid) - cpu_before;
    assert!(
        cpu < Duration::from_millis(200),
        "server spun while blocked on stdout: {cpu:?}"
    );
    // Now read slowly at first, then at full speed: everything arrives.
    let mut transcript = Vec::new();
    let mut buf = vec![0u8; 4096];
    for _ in 0..50 {
        let n = stdout.read(&mut buf).expect("read transcript");
        transcript.extend_from_slice(&buf[..n]);
        thread::sleep(Duration::from_millis(5));
    }
    let deadline = Instant::now() + PATIENCE;
    let closed = |t: &[u8]| {
        let tail = &t[t.len().saturating_sub(64)..];
        t.ends_with(b"\n") && util::contains(tail, b"\nClosed connection:  ")
    };
    while !closed(&transcript) {
        assert!(Instant::now() < deadline, "transcript incomplete");
        let mut chunk = vec![0u8; 1 << 20];
        let n = stdout.read(&mut chunk).expect("read transcript");
        assert!(n > 0, "server exited early");
        transcript.extend_from_slice(&chunk[..n]);
    }
    sender.join().expect("sender");
    let printed: usize = frames_of(&transcript).iter().map(|f| f.1).sum();
    assert_eq!(printed, TOTAL);
    drop(child);
}

#[test]
fn a_closed_stdout_ends_the_server_with_one_clear_line() {
    let (child, stdout, addr) = start_with_stdout(&[]);
    let mut child = KillOnDrop(child);
    drop(stdout);
    let mut client = connect_greeted(addr);
    // Each message makes the server write to stdout, which fails with EPIPE
    // once no process holds the pipe's read end. (A process this test
    // harness forks for another test holds a copy of it until its exec, and
    // a write in that moment succeeds.)
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not stop within {PATIENCE:?} of its stdout closing"
        );
        let _ = client.write_all(b"anyone there?");
        thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    child
        .0
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("stderr");
    assert!(!status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let ours: Vec<&str> = stderr.lines().filter(|l| l.starts_with("simple_tcp_server:")).collect();
    assert_eq!(
        ours,
        ["simple_tcp_server: stdout was closed (broken pipe); stopping"],
        "{stderr}"
    );
}

/// SIGTERM while 100 clients stream: the server exits 0, each client's
/// printed bytes are a prefix of what it sent (in order, nothing forged or
/// skipped), and the summary counts exactly the bytes and frames printed
/// and the 100 connections. (That the prefix is everything the kernel had
/// received when the signal came is `tests/shutdown.rs`'s
/// `bytes_queued_when_the_server_acts_on_sigterm_are_all_printed`.)
#[test]
fn sigterm_with_100_streaming_clients_prints_a_prefix_of_each_stream_and_a_matching_summary() {
    let mut server = ServerProcess::start(&["--tag"]);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tags = Vec::new();
    let senders: Vec<_> = (0..100)
        .map(|i| {
            let stop = Arc::clone(&stop);
            let mut client = connect_greeted(server.addr);
            let me = client.local_addr().expect("addr").to_string();
            tags.push(me.clone());
            thread::spawn(move || {
                // About 1 MB/s each, 100 MB/s in all: enough that every
                // socket has data queued when the signal comes, little enough
                // for the test to check every byte. At most 512 KiB each
                // (half a second), so that a slow machine, whose server falls
                // behind, has at most 51 MB queued to drain and check; the
                // connection stays open until the server has exited.
                let block: Vec<u8> = format!("client {i} streams ").bytes().cycle().take(2048).collect();
                let mut sent = Vec::new();
                let started = Instant::now();
                while !stop.load(Ordering::SeqCst) && started.elapsed() < PATIENCE * 2 {
                    if sent.len() < 512 * 1024 {
                        match client.write(&block) {
                            Ok(n) => sent.extend_from_slice(&block[..n]),
                            Err(_) => break,
                        }
                    }
                    thread::sleep(Duration::from_millis(2));
                }
                (me, sent)
            })
        })
        .collect();
    // Every client has been read from before the signal.
    server.wait_frames_from(&tags);
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(PATIENCE);
    let took = signalled.elapsed();
    stop.store(true, Ordering::SeqCst);
    assert!(status.success(), "{}", server.context());
    let out = server.stdout.bytes();
    let streams = streams_by_client(&out);
    let mut printed = 0;
    for sender in senders {
        let (me, sent) = sender.join().expect("sender");
        let got = streams.get(&me).map(Vec::as_slice).unwrap_or_default();
        assert!(sent.starts_with(got), "{me}: printed bytes are not what it sent");
        printed += got.len();
    }
    let stderr = server.stderr.text();
    let summary = stderr.lines().find(|l| l.contains("summary:")).expect("summary");
    assert!(
        summary.contains(&format!(" {printed} bytes")),
        "{summary}: transcript has {printed}"
    );
    assert!(
        summary.contains(&format!(" {} frames", frames_of(&out).len())),
        "{summary}"
    );
    assert!(summary.contains("100 connections (100 open at stop"), "{summary}");
    eprintln!("exit {took:?} after SIGTERM, {printed} bytes printed");
}

/// Opens `n` connections without waiting for them (the burst).
fn burst(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .filter_map(|_| {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
            socket.set_nonblocking(true).ok()?;
            match socket.connect(&addr.into()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Err(_) => return None,
            }
            Some(socket.into())
        })
        .collect()
}

fn burst_then_normal_clients(args: &[&str], expect_in_log: &str) {
    let mut server = ServerProcess::start_with_limit(args, Some(128));
    let attempts = burst(server.addr, 2000);
    // The server has met the limit when it says so.
    let ok = server
        .stderr
        .wait_for(PATIENCE, |err| util::contains(err, expect_in_log.as_bytes()));
    assert!(ok, "never logged {expect_in_log:?}\n{}", server.context());
    let cpu_before = server.cpu_time();
    thread::sleep(Duration::from_secs(1));
    let cpu = server.cpu_time() - cpu_before;
    assert!(server.is_running(), "{}", server.context());
    assert!(
        cpu < Duration::from_millis(250),
        "server spun during the burst: {cpu:?}\n{}",
        server.context()
    );
    // One burst, one line, however many clients it turned away or retries
    // it made meanwhile.
    let stderr = server.stderr.text();
    assert_eq!(stderr.matches(expect_in_log).count(), 1, "one burst:\n{stderr}");
    drop(attempts);
    // Normal clients are served once the burst is gone (the server notices
    // its closed connections a moment later: until then a client may still
    // be turned away, and tries again).
    for i in 0..10 {
        let deadline = Instant::now() + PATIENCE;
        let mut client = loop {
            let mut client = TcpStream::connect(server.addr).expect("connect");
            client.set_read_timeout(Some(PATIENCE)).expect("timeout");
            let mut first = [0u8; 10];
            client.read_exact(&mut first).expect("the server's first bytes");
            if &first == b"Let's GO!\n" {
                break client;
            }
            assert_eq!(&first, b"ERR server", "neither a greeting nor the cap's line");
            assert!(
                Instant::now() < deadline,
                "never served after the burst\n{}",
                server.context()
            );
            thread::sleep(Duration::from_millis(10));
        };
        send(&mut client, format!("normal {i}").as_bytes());
        server.wait_text(&format!("<8:normal {i}>\n"));
    }
    assert!(server.is_running());
    // Closing the burst's 2,000 sockets can make a second, short burst of
    // its own (the backlog's closed connections), logged once more at most.
    let stderr = server.stderr.text();
    let mentions = stderr.matches(expect_in_log).count();
    assert!(
        mentions <= 2,
        "{mentions} log lines for the burst and its close:\n{stderr}"
    );
    assert!(stderr.lines().count() < 20, "log flooded:\n{stderr}");
}

#[test]
fn a_burst_over_the_cap_is_turned_away_and_logged_once() {
    burst_then_normal_clients(&[], "server full");
}

#[test]
fn a_burst_past_the_descriptor_limit_waits_and_is_logged_once() {
    burst_then_normal_clients(&["--max-connections", "10000"], "pausing accepts");
}

#[test]
fn clients_that_reset_before_their_greeting_cost_only_themselves() {
    let mut server = ServerProcess::start(&[]);
    // Each connects and resets at once: the greeting write may find the
    // connection gone.
    for _ in 0..200 {
        let c = TcpStream::connect(server.addr).expect("connect");
        reset(c);
    }
    server.wait_lines("Closed connection:", 200);
    let mut normal = connect_greeted(server.addr);
    send(&mut normal, b"fine");
    server.wait_text("<4:fine>\n");
    assert!(server.is_running());
    assert_eq!(util::count_lines(&server.stdout.bytes(), "Connection from:"), 201);
}
