//! tcp_client against the real server and small local peers.

mod peers;
mod util;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use peers::accept_within;
use simple_tcp_server::client::{LINE_PROMPT, NAME_PROMPT};
use util::{Captured, ChildProcess, PATIENCE, ServerProcess, closed_port};

/// The frame lines the server prints for one message.
fn frame_lines(message: &str) -> String {
    message
        .as_bytes()
        .chunks(25)
        .map(|c| format!("<{}:{}>\n", c.len(), String::from_utf8_lossy(c)))
        .collect()
}

/// The chapter's session, typed through a pipe: each line reaches the
/// server as `NAME says: LINE`, `Q` exits 0, stdout carries only what the
/// server sent, and the prompts go to stderr.
#[test]
fn a_chat_through_a_pipe_sends_each_line_and_keeps_the_prompts_off_stdout() {
    let server = ServerProcess::start(&[]);
    let port = server.addr.port().to_string();
    let mut client = ChildProcess::start("tcp_client", &["127.0.0.1", &port]);
    client.type_line("wong\r\n");
    let lines = ["123", "12313", "a line that is longer than twenty-five bytes"];
    for line in lines {
        client.type_line(&format!("{line}\n"));
        // One line at a time, so TCP does not merge two messages.
        server.wait_text(&frame_lines(&format!("wong says: {line}")));
    }
    client.type_line("Q\n");
    let status = client.wait_exit(PATIENCE);
    assert!(status.success(), "{}", client.context());
    // stdout is not a terminal: it carries what the server said and nothing
    // else; the prompts went to stderr.
    assert_eq!(client.stdout.text(), "Let's GO!\n", "{}", client.context());
    let prompts = format!("{NAME_PROMPT}\n{}", format!("{LINE_PROMPT}\n").repeat(lines.len() + 1));
    assert_eq!(client.stderr.text(), prompts, "{}", client.context());
    server.wait_lines("Closed connection:", 1);
}

#[test]
fn no_prompts_drops_them() {
    let server = ServerProcess::start(&[]);
    let port = server.addr.port().to_string();
    let mut client = ChildProcess::start("tcp_client", &["--no-prompts", "127.0.0.1", &port]);
    client.type_line("wong\nhi\nQ\n");
    assert!(client.wait_exit(PATIENCE).success(), "{}", client.context());
    server.wait_text("<13:wong says: hi>\n");
    assert_eq!(client.stdout.text(), "Let's GO!\n", "{}", client.context());
    assert_eq!(client.stderr.text(), "", "{}", client.context());
}

#[test]
fn end_of_input_quits_cleanly() {
    let server = ServerProcess::start(&[]);
    let port = server.addr.port().to_string();
    let mut client = ChildProcess::start("tcp_client", &["--name", "pipe", "127.0.0.1", &port]);
    client.type_line("hello\n");
    client.close_stdin();
    assert!(client.wait_exit(PATIENCE).success(), "{}", client.context());
    server.wait_text("<16:pipe says: hello>\n");
    server.wait_lines("Closed connection:", 1);
    assert!(!client.stdout.text().contains(NAME_PROMPT), "--name skips the question");
}

#[test]
fn newline_option_ends_messages_with_a_newline() {
    let server = ServerProcess::start(&[]);
    let port = server.addr.port().to_string();
    let mut client = ChildProcess::start("tcp_client", &["--name", "n", "--newline", "127.0.0.1", &port]);
    client.type_line("hi\nQ\n");
    assert!(client.wait_exit(PATIENCE).success(), "{}", client.context());
    server.wait_text("<11:n says: hi\\n>\n");
}

#[test]
fn refused_connection_says_so_and_exits_1() {
    let closed = closed_port();
    let port = closed.port.to_string();
    let mut client = ChildProcess::start("tcp_client", &["127.0.0.1", &port]);
    let status = client.wait_exit(PATIENCE);
    assert_eq!(status.code(), Some(1), "{}", client.context());
    let stderr = client.stderr.text();
    assert!(
        stderr.starts_with(&format!(
            "tcp_client: Error dialing tcp 127.0.0.1:{port}: connection refused"
        )),
        "{stderr}"
    );
    // The hint is for our server's port (50000), not any port.
    assert!(!stderr.contains("is the server running?"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn unresolvable_host_says_so() {
    let mut client = ChildProcess::start("tcp_client", &["no-such-host.invalid", "50000"]);
    assert_eq!(client.wait_exit(PATIENCE).code(), Some(1));
    assert!(
        client
            .stderr
            .text()
            .starts_with("tcp_client: cannot resolve no-such-host.invalid:50000"),
        "{}",
        client.context()
    );
}

#[test]
fn wait_retries_until_the_server_starts() {
    let closed = closed_port();
    let port = closed.port;
    let port_arg = port.to_string();
    let mut client = ChildProcess::start(
        "tcp_client",
        &["--wait", "20s", "--name", "early", "127.0.0.1", &port_arg],
    );
    client.type_line("made it\nQ\n");
    // The client has been refused at least once: it sleeps between retries.
    let pid = client.child.id() as i32;
    util::wait_until("the client to back off after a refused connect", || {
        let call = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        let number = call.split_whitespace().next().unwrap_or_default().to_string();
        number == libc::SYS_clock_nanosleep.to_string() || number == libc::SYS_nanosleep.to_string()
    });
    drop(closed);
    let server = ServerProcess::start_on_port(port, &[]);
    assert!(client.wait_exit(PATIENCE).success(), "{}", client.context());
    server.wait_text("<19:early says: made it>\n");
    assert!(client.stdout.text().starts_with("Let's GO!\n"), "{}", client.context());
}

#[test]
fn server_killed_mid_session_is_reported() {
    let mut server = ServerProcess::start(&[]);
    let port = server.addr.port().to_string();
    let mut client = ChildProcess::start("tcp_client", &["--name", "wong", "127.0.0.1", &port]);
    client.type_line("first\n");
    server.wait_text("<16:wong says: first>\n");
    assert!(
        client
            .stderr
            .wait_for(PATIENCE, |o| util::count_lines(o, LINE_PROMPT) == 2)
    );
    server.signal(libc::SIGKILL);
    server.wait_exit(PATIENCE);
    // The user has not typed anything: the client notices on its own.
    let status = client.wait_exit(PATIENCE);
    assert!(!status.success(), "{}", client.context());
    let stderr = client.stderr.text();
    assert!(
        stderr.ends_with(&format!(
            "{LINE_PROMPT}\ntcp_client: the server closed the connection\n"
        )) || stderr.ends_with(&format!("{LINE_PROMPT}\ntcp_client: the server reset the connection\n")),
        "{}",
        client.context()
    );
}

#[test]
fn dial_reports_tcp4_tcp6_udp_and_failures() {
    let v4 = TcpListener::bind("127.0.0.1:0").expect("bind v4");
    let v6 = TcpListener::bind("[::1]:0").expect("bind v6");
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    let v4_addr = v4.local_addr().expect("addr").to_string();
    let v6_addr = v6.local_addr().expect("addr").to_string();
    let udp_addr = udp.local_addr().expect("addr").to_string();

    let run = |args: &[&str]| {
        let mut dial = ChildProcess::start("tcp_client", args);
        let status = dial.wait_exit(PATIENCE);
        (status, dial.stdout.text(), dial.stderr.text())
    };
    let (status, out, err) = run(&["dial", "tcp", &v4_addr, &v6_addr]);
    assert!(status.success(), "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with("Connection is made with 127.0.0.1:")
            && lines[0].ends_with(&format!(" -> {v4_addr} (tcp)")),
        "{out}"
    );
    assert!(
        lines[1].starts_with("Connection is made with [::1]:") && lines[1].ends_with(&format!(" -> {v6_addr} (tcp)")),
        "{out}"
    );

    let (status, out, _) = run(&["dial", "tcp6", &v6_addr]);
    assert!(
        status.success() && out.ends_with(&format!(" -> {v6_addr} (tcp6)\n")),
        "{out}"
    );
    let (status, out, _) = run(&["dial", "udp", &udp_addr]);
    assert!(
        status.success() && out.ends_with(&format!(" -> {udp_addr} (udp)\n")),
        "{out}"
    );
    let (status, out, _) = run(&["dial", &v4_addr]);
    assert!(status.success() && out.ends_with("(tcp)\n"), "{out}");

    let closed_port = closed_port();
    let closed = format!("127.0.0.1:{}", closed_port.port);
    let (status, _, err) = run(&["dial", &closed]);
    assert_eq!(status.code(), Some(1));
    assert!(
        err.starts_with(&format!("error connecting to {closed}: connection refused\n")),
        "{err}"
    );
    let (status, _, err) = run(&["dial", "tcp4", &v6_addr]);
    assert_eq!(status.code(), Some(1));
    assert!(
        err.starts_with(&format!("error connecting to {v6_addr}: no suitable address found")),
        "{err}"
    );
}

#[test]
fn get_prints_the_raw_response() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut response = b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n".to_vec();
    response.extend((0..10_000u32).map(|i| (i * 7 % 256) as u8));
    let body = response.clone();
    let responder = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.ends_with(b"\r\n\r\n") {
            let n = conn.read(&mut buf).expect("read request");
            assert!(n > 0, "request ended early");
            request.extend_from_slice(&buf[..n]);
        }
        conn.write_all(&body).expect("respond");
        String::from_utf8(request).expect("request is text")
    });
    let target = addr.to_string();
    let mut get = ChildProcess::start("tcp_client", &["get", &target, "/some/path"]);
    assert!(get.wait_exit(PATIENCE).success(), "{}", get.context());
    assert!(get.stdout.bytes() == response, "response bytes differ");
    let request = responder.join().expect("responder");
    assert_eq!(
        request,
        format!("GET /some/path HTTP/1.0\r\nHost: {target}\r\nConnection: close\r\n\r\n")
    );
}

#[test]
fn get_refused_is_an_error() {
    let closed = closed_port();
    let target = format!("127.0.0.1:{}", closed.port);
    let mut get = ChildProcess::start("tcp_client", &["get", &target]);
    assert_eq!(get.wait_exit(PATIENCE).code(), Some(1));
    assert!(get.stderr.text().contains("connection refused"), "{}", get.context());
}

// tcp_client as a tool people can trust: bounded memory whatever the input
// and the server, input sent as bytes, text shown whole, durations and
// addresses checked as usage, and every wait bounded.

/// Peak resident memory of a process, from /proc.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}

#[test]
fn fast_input_into_a_server_that_never_reads_stays_bounded() {
    // A peer that greets, then reads nothing until told to.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port().to_string();
    let (drain_tx, drain_rx) = mpsc::channel::<()>();
    let peer = std::thread::spawn(move || {
        let mut conn = accept_within(&listener, PATIENCE);
        conn.write_all(b"Let's GO!\n").expect("greet");
        let _ = drain_rx.recv();
        let mut total = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n as u64,
            }
        }
    });
    let mut client = ChildProcess::start_env(
        "tcp_client",
        &["--name", "y", "127.0.0.1", &port],
        &[("RUST_LOG", "simple_tcp_server=debug")],
    );
    // 128 MiB of input, as fast as the pipe takes it.
    const LINE: usize = 1024;
    const LINES: u64 = 128 * 1024;
    let mut stdin = client.stdin.take().expect("stdin");
    let written = Arc::new(AtomicU64::new(0));
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let (close_tx, close_rx) = mpsc::channel::<()>();
    let progress = Arc::clone(&written);
    std::thread::spawn(move || {
        let mut line = vec![b'x'; LINE];
        line[LINE - 1] = b'\n';
        for _ in 0..LINES {
            if stdin.write_all(&line).is_err() {
                return;
            }
            progress.fetch_add(LINE as u64, Ordering::SeqCst);
        }
        let _ = done_tx.send(());
        let _ = close_rx.recv();
        drop(stdin);
    });
    // The client stops reading its input: a bounded queue is full.
    let paused = client.stderr.wait_for(PATIENCE, |e| {
        util::contains(e, b"input waits: the server is not reading")
    });
    assert!(
        paused,
        "the input never waited for the server ({} bytes taken)\n{}",
        written.load(Ordering::SeqCst),
        client.context()
    );
    assert!(written.load(Ordering::SeqCst) < (LINES * LINE as u64) / 2);
    // Now the server reads: everything goes through, in bounded memory.
    drain_tx.send(()).expect("drain");
    done_rx.recv_timeout(PATIENCE).expect("all input written");
    let peak = peak_rss(client.child.id());
    assert!(peak < 48 << 20, "client peak RSS {peak} bytes for 128 MiB of input");
    close_tx.send(()).expect("close");
    assert!(client.wait_exit(PATIENCE).success(), "{}", client.context());
    let total = peer.join().expect("peer");
    assert_eq!(total, LINES * ("y says: ".len() + LINE - 1) as u64);
}

#[test]
fn input_is_sent_as_bytes_not_text() {
    let server = ServerProcess::start(&[]);
    let port = server.addr.port().to_string();
    let mut client = ChildProcess::start("tcp_client", &["--name", "w", "127.0.0.1", &port]);
    let stdin = client.stdin.as_mut().expect("stdin");
    stdin.write_all(b"caf\xe9 \xff\x00!\n").expect("write");
    server.wait_text("<16:w says: caf\\xe9 \\xff\\x00!>\n");
    client.close_stdin();
    assert!(client.wait_exit(PATIENCE).success(), "{}", client.context());
}

#[test]
fn server_text_split_inside_a_character_is_shown_whole_and_prompts_start_their_own_line() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port().to_string();
    // stdout and stderr into one pipe, as on a terminal.
    let (reader, writer) = std::io::pipe().expect("pipe");
    let mut child = Command::new(util::bin("tcp_client"))
        .args(["127.0.0.1", &port])
        .stdin(Stdio::piped())
        .stdout(writer.try_clone().expect("clone pipe"))
        .stderr(writer)
        .spawn()
        .expect("start tcp_client");
    let out = Captured::spawn(reader);
    let mut conn = accept_within(&listener, PATIENCE);
    // Half a greeting: the name prompt must not land inside it.
    conn.write_all(b"Let's G").expect("write");
    assert!(out.wait_for(PATIENCE, |o| util::contains(o, NAME_PROMPT.as_bytes())));
    // "é" is c3 a9: the first byte now, the second once the client has shown
    // what came before it.
    conn.write_all(b"O!\nh\xc3").expect("write");
    assert!(out.wait_for(PATIENCE, |o| o.ends_with(b"O!\nh") || o.ends_with(b"h\\xc3")));
    conn.write_all(b"\xa9llo w\xc3\xb6rld\n").expect("write");
    assert!(out.wait_for(PATIENCE, |o| o.ends_with(b"\n") && util::contains(o, b"llo")));
    drop(child.stdin.take());
    let status = child.wait().expect("wait");
    assert!(status.success());
    let text = out.text();
    let in_order = format!("Let's G\n{NAME_PROMPT}\nO!\nh\u{e9}llo w\u{f6}rld\n");
    // On a machine too slow to read the half greeting within the client's
    // greeting wait, the prompt comes first: still on its own line.
    let prompt_first = format!("{NAME_PROMPT}\nLet's GO!\nh\u{e9}llo w\u{f6}rld\n");
    assert!(text == in_order || text == prompt_first, "{text:?}");
}

#[test]
fn huge_durations_are_usage_errors_not_panics() {
    for args in [
        &["--wait", "10000000000000000000s", "127.0.0.1", "1"][..],
        &["--timeout", "10000000000000000000s", "127.0.0.1", "1"],
        &["dial", "--timeout", "99999999999h", "127.0.0.1:1"],
        &["get", "--timeout", "400d", "127.0.0.1:1"],
    ] {
        let out = Command::new(util::bin("tcp_client")).args(args).output().expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn dial_into_a_closed_pipe_stops_quietly() {
    // `tcp_client dial A B | head -c1`: the reader is gone before we write.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = Command::new(util::bin("tcp_client"))
        .args(["dial", &addr, &addr])
        .env("RUST_BACKTRACE", "1")
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

#[test]
fn get_timeout_says_timed_out_after_the_option() {
    // A server that accepts and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let target = listener.local_addr().expect("addr").to_string();
    let mut get = ChildProcess::start("tcp_client", &["get", "--timeout", "300ms", &target]);
    let _conn = accept_within(&listener, PATIENCE);
    assert_eq!(get.wait_exit(PATIENCE).code(), Some(1), "{}", get.context());
    assert_eq!(
        get.stderr.text(),
        "tcp_client: the GET timed out after 300ms (--timeout)\n",
        "{}",
        get.context()
    );
}

/// Reads an HTTP request head from `conn`.
fn read_request(conn: &mut TcpStream) -> String {
    conn.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.ends_with(b"\r\n\r\n") {
        let n = conn.read(&mut buf).expect("read request");
        assert!(n > 0, "request ended early: {:?}", String::from_utf8_lossy(&request));
        request.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(request).expect("request is text")
}

#[test]
fn get_timeout_bounds_the_whole_exchange_against_a_trickling_server() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let target = listener.local_addr().expect("addr").to_string();
    let mut get = ChildProcess::start("tcp_client", &["get", "--timeout", "1s", &target]);
    let mut conn = accept_within(&listener, PATIENCE);
    read_request(&mut conn);
    // One byte every 20 ms, for a minute at most: each read succeeds long
    // before a per-read timeout would fire.
    let trickle = std::thread::spawn(move || {
        let _ = conn.write_all(b"HTTP/1.0 200 OK\r\n\r\n");
        for _ in 0..3000 {
            if conn.write_all(b".").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    assert_eq!(get.wait_exit(PATIENCE).code(), Some(1), "{}", get.context());
    assert_eq!(
        get.stderr.text(),
        "tcp_client: the GET timed out after 1s (--timeout)\n"
    );
    assert!(get.stdout.text().starts_with("HTTP/1.0 200 OK\r\n\r\n."));
    drop(get);
    trickle.join().expect("trickle");
}

#[test]
fn get_ends_at_content_length_when_the_server_keeps_the_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let target = listener.local_addr().expect("addr").to_string();
    let mut get = ChildProcess::start("tcp_client", &["get", &target, "/x"]);
    let mut conn = accept_within(&listener, PATIENCE);
    read_request(&mut conn);
    let response = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    conn.write_all(response).expect("respond");
    // The connection stays open until the test ends.
    assert!(get.wait_exit(PATIENCE).success(), "{}", get.context());
    assert_eq!(get.stdout.bytes(), response);
    drop(conn);
}

#[test]
fn get_encodes_the_path_and_refuses_control_characters() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let target = listener.local_addr().expect("addr").to_string();
    let url = format!("http://{target}/a b/\u{e9}?q=1#frag");
    let mut get = ChildProcess::start("tcp_client", &["get", &url]);
    let mut conn = accept_within(&listener, PATIENCE);
    let request = read_request(&mut conn);
    assert_eq!(
        request,
        format!("GET /a%20b/%C3%A9?q=1 HTTP/1.0\r\nHost: {target}\r\nConnection: close\r\n\r\n")
    );
    drop(conn);
    assert!(get.wait_exit(PATIENCE).success(), "{}", get.context());

    for path in ["/a\r\nX-Injected: 1", "/a HTTP/1.0\r\n\r\nGET /second"] {
        let out = Command::new(util::bin("tcp_client"))
            .args(["get", &target, path])
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("the path contains a control character (\\r)"),
            "{stderr}"
        );
    }
    // Nothing was sent: no connection is waiting.
    listener.set_nonblocking(true).expect("nonblocking");
    assert!(listener.accept().is_err(), "a refused path still connected");
}

#[test]
fn chat_takes_host_and_port_as_one_argument() {
    let server = ServerProcess::start(&[]);
    let mut client = ChildProcess::start("tcp_client", &["--name", "one", &server.addr.to_string()]);
    client.type_line("hi\nQ\n");
    assert!(client.wait_exit(PATIENCE).success(), "{}", client.context());
    server.wait_text("<12:one says: hi>\n");

    let v6 = ServerProcess::start_raw(&["::1".into(), "0".into()], None, &[]);
    let target = v6.addr.to_string();
    assert!(target.starts_with("[::1]:"), "{target}");
    let mut client = ChildProcess::start("tcp_client", &["--name", "six", &target]);
    client.type_line("hi\nQ\n");
    assert!(client.wait_exit(PATIENCE).success(), "{}", client.context());
    v6.wait_text("<12:six says: hi>\n");
}

#[test]
fn address_mistakes_are_usage_errors_with_hints() {
    let run = |args: &[&str]| {
        let out = Command::new(util::bin("tcp_client")).args(args).output().expect("run");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = run(&["dial", "tcp5", "127.0.0.1:1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.starts_with("error: unknown network `tcp5`"), "{err}");
    let (code, err) = run(&["dial", "::1:5000"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("as `[::1]:5000`"), "{err}");
    let (code, err) = run(&["::1:5000"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("as `[::1]:5000`"), "{err}");
    let (code, err) = run(&["127.0.0.1:5000", "6000"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("has a port already"), "{err}");
}

/// `Q` ends the client by itself: against a peer that reads everything
/// and never closes its side, with stdin still open (so it is not the end
/// of input) and `--timeout 60s` (longer than the test waits, so the wait
/// after `Q` is not the timeout), the client exits 0 and the peer has the
/// message. How long the client waits for the server after `Q` is not
/// asserted; the test prints it.
#[test]
fn q_ends_the_client_while_the_server_keeps_the_connection_open() {
    // A peer that reads everything and never closes; a long --timeout must
    // not make the user wait after `Q`.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port().to_string();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let peer = std::thread::spawn(move || {
        let mut conn = accept_within(&listener, PATIENCE);
        conn.write_all(b"Let's GO!\n").expect("greet");
        let mut got = Vec::new();
        let _ = conn.read_to_end(&mut got);
        // Our side is still open: wait for the test to end.
        let _ = stop_rx.recv();
        got
    });
    let mut client = ChildProcess::start("tcp_client", &["--timeout", "60s", "--name", "n", "127.0.0.1", &port]);
    client.type_line("hi\n");
    let quit = std::time::Instant::now();
    client.type_line("Q\n");
    assert!(client.wait_exit(PATIENCE).success(), "{}", client.context());
    eprintln!("tcp_client exited {:?} after `Q`", quit.elapsed());
    drop(stop_tx);
    assert_eq!(peer.join().expect("peer"), b"n says: hi");
}

#[test]
fn timeout_bounds_the_whole_connect_retries_included() {
    // A listener whose backlog is full drops new handshakes: a connect to
    // it never completes.
    let listener = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    listener
        .bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().expect("addr").into())
        .expect("bind");
    listener.listen(0).expect("listen");
    let addr = listener.local_addr().expect("addr").as_socket().expect("inet");
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        socket.set_nonblocking(true).expect("nonblocking");
        let _ = socket.connect(&addr.into());
        fillers.push(socket);
    }
    let out = std::process::Command::new(util::bin("tcp_client"))
        .args(["--timeout", "1s", "--name", "n", "127.0.0.1", &addr.port().to_string()])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run tcp_client");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // One attempt used the whole second: no retry ran past it (each
    // attempt bounded by --timeout alone made four, 4 s and more).
    assert!(
        stderr.ends_with(&format!("Error dialing tcp {addr}: timed out after 1s (--timeout)\n")),
        "{stderr}"
    );
}
