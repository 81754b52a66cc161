//! tcp_client against the real server and small local peers.

mod util;

use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};

use simple_tcp_server::client::{LINE_PROMPT, NAME_PROMPT};
use util::{ChildProcess, PATIENCE, ServerProcess, closed_port};

/// The frame lines the server prints for one message.
fn frame_lines(message: &str) -> String {
    message
        .as_bytes()
        .chunks(25)
        .map(|c| format!("<{}:{}>\n", c.len(), String::from_utf8_lossy(c)))
        .collect()
}

#[test]
fn scripted_chat_through_a_pipe() {
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
    let expected = format!(
        "Let's GO!\n{NAME_PROMPT}\n{}",
        format!("{LINE_PROMPT}\n").repeat(lines.len() + 1)
    );
    assert_eq!(client.stdout.text(), expected, "{}", client.context());
    server.wait_lines("Closed connection:", 1);
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
    assert!(stderr.contains("is the server running?"), "{stderr}");
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
            .stdout
            .wait_for(PATIENCE, |o| util::count_lines(o, LINE_PROMPT) == 2)
    );
    server.signal(libc::SIGKILL);
    server.wait_exit(PATIENCE);
    // The user has not typed anything: the client notices on its own.
    let status = client.wait_exit(PATIENCE);
    assert!(!status.success(), "{}", client.context());
    let stderr = client.stderr.text();
    assert!(
        stderr == "tcp_client: the server closed the connection\n"
            || stderr == "tcp_client: the server reset the connection\n",
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
