//! `--proxy-protocol`, `--proxy-from`, `--proxy-timeout`, `--allow` and
//! `--deny` against the real binary, with headers written by the `ppp`
//! crate's builder (v2) and by hand (v1), whole and split byte by byte. The
//! real HAProxy is in `tests/haproxy.rs`.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use util::{PATIENCE, ServerProcess, read_until_closed, streams_by_client};

/// A v2 PROXY header for a TCP connection from `client` to `server` (an
/// IPv6 client is given the IPv6 loopback as its server: a header holds
/// one family).
fn v2(client: &str, server: SocketAddr) -> Vec<u8> {
    let client: SocketAddr = client.parse().expect("address");
    let server = same_family(client, server);
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (client, server),
    )
    .build()
    .expect("v2 header")
}

/// A v2 `LOCAL` header, as HAProxy's health checks send.
fn v2_local(server: SocketAddr) -> Vec<u8> {
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Local,
        ppp::v2::Protocol::Stream,
        (server, server),
    )
    .build()
    .expect("v2 header")
}

/// A v1 PROXY header.
fn v1(client: &str, server: SocketAddr) -> Vec<u8> {
    let client: SocketAddr = client.parse().expect("address");
    let server = same_family(client, server);
    let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        client.ip(),
        server.ip(),
        client.port(),
        server.port()
    )
    .into_bytes()
}

/// `server`, or the IPv6 loopback on its port for an IPv6 `client`.
fn same_family(client: SocketAddr, server: SocketAddr) -> SocketAddr {
    if client.is_ipv6() {
        SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), server.port())
    } else {
        server
    }
}

/// Reads exactly the greeting.
fn greeted(stream: &mut TcpStream) {
    let mut greeting = [0u8; 10];
    stream.read_exact(&mut greeting).expect("greeting");
    assert_eq!(&greeting, b"Let's GO!\n");
}

#[test]
fn clients_behind_a_proxy_appear_under_their_own_addresses() {
    let server = ServerProcess::start(&["--proxy-protocol", "--tag"]);
    let addr = server.addr;
    let cases: Vec<(String, Vec<u8>, bool)> = vec![
        ("10.1.2.3:4444".into(), v1("10.1.2.3:4444", addr), false),
        ("10.1.2.4:4445".into(), v1("10.1.2.4:4445", addr), true),
        ("192.0.2.7:7000".into(), v2("192.0.2.7:7000", addr), false),
        ("192.0.2.8:7001".into(), v2("192.0.2.8:7001", addr), true),
        ("[2001:db8::9]:8000".into(), v2("[2001:db8::9]:8000", addr), true),
        ("[2001:db8::a]:8001".into(), v1("[2001:db8::a]:8001", addr), false),
    ];
    for (client, header, split) in &cases {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
        let message = format!("hello from {client}, \x1b[31mexactly\n");
        if *split {
            // The header split byte by byte, each its own segment: the
            // server waits without reading ahead.
            for byte in header {
                stream.write_all(&[*byte]).expect("send");
                std::thread::sleep(Duration::from_millis(1));
            }
            greeted(&mut stream);
            stream.write_all(message.as_bytes()).expect("send");
        } else {
            // Header and data in one segment: the data is the client's.
            let mut all = header.clone();
            all.extend_from_slice(message.as_bytes());
            stream.write_all(&all).expect("send");
            greeted(&mut stream);
        }
        drop(stream);
        server.wait_text(&format!("Closed connection:  {client}\n"));
    }
    let out = server.stdout.bytes();
    let streams = streams_by_client(&out);
    for (client, _, _) in &cases {
        assert!(
            util::contains(&out, format!("Connection from:  {client}\n").as_bytes()),
            "{client}\n{}",
            server.context()
        );
        let expected = format!("hello from {client}, \x1b[31mexactly\n");
        assert_eq!(
            streams.get(client).map(Vec::as_slice),
            Some(expected.as_bytes()),
            "{client}"
        );
    }
    // The proxy's own address never appears.
    let text = String::from_utf8_lossy(&out);
    assert!(!text.contains("Connection from:  127.0.0.1"), "{text}");
}

#[test]
fn a_health_check_is_served_but_not_printed() {
    let server = ServerProcess::start(&["--proxy-protocol"]);
    let mut check = TcpStream::connect(server.addr).expect("connect");
    check.set_read_timeout(Some(PATIENCE)).expect("timeout");
    check.write_all(&v2_local(server.addr)).expect("send");
    greeted(&mut check);
    drop(check);
    // A real client after it: its lines come, the check's never did.
    let mut client = TcpStream::connect(server.addr).expect("connect");
    client.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut hello = v1("10.0.0.1:1", server.addr);
    hello.extend_from_slice(b"hi");
    client.write_all(&hello).expect("send");
    greeted(&mut client);
    drop(client);
    server.wait_text("Closed connection:  10.0.0.1:1\n");
    let out = server.stdout.text();
    assert_eq!(
        out.lines().skip(1).collect::<Vec<_>>(),
        [
            "Connection from:  10.0.0.1:1",
            "<2:hi>",
            "Closed connection:  10.0.0.1:1"
        ]
    );
}

#[test]
fn a_health_check_on_a_dual_stack_listener_is_not_printed() {
    // On `::`, an IPv4 peer is [::ffff:127.0.0.1]:P; HAProxy's v1 check
    // names its connection as "TCP4 127.0.0.1 127.0.0.1 P PORT".
    let server = ServerProcess::start_raw(&["::".into(), "0".into(), "--proxy-protocol".into()], None, &[]);
    let port = server.addr.port();
    for ip in [
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ] {
        let mut check = TcpStream::connect((ip, port)).expect("connect");
        check.set_read_timeout(Some(PATIENCE)).expect("timeout");
        let me = check.local_addr().expect("addr");
        let family = if ip.is_ipv4() { "TCP4" } else { "TCP6" };
        let header = format!("PROXY {family} {ip} {ip} {} {port}\r\n", me.port());
        check.write_all(header.as_bytes()).expect("send");
        greeted(&mut check);
        drop(check);
    }
    // A real client after them: its lines come, the checks' never did.
    let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    client.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut hello = format!("PROXY TCP4 10.0.0.1 127.0.0.1 1 {port}\r\n").into_bytes();
    hello.extend_from_slice(b"hi");
    client.write_all(&hello).expect("send");
    greeted(&mut client);
    drop(client);
    server.wait_text("Closed connection:  10.0.0.1:1\n");
    let out = server.stdout.text();
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            format!("Listening to:  [::]:{port}").as_str(),
            "Connection from:  10.0.0.1:1",
            "<2:hi>",
            "Closed connection:  10.0.0.1:1"
        ],
        "{}",
        server.context()
    );
}

/// A trusted proxy's own connection (`PROXY UNKNOWN`, v2 `LOCAL`, or a
/// header naming the connection itself) is not printed as a client: no
/// `Connection from` line, and no frames for the bytes that follow its
/// header either. Every frame in the transcript belongs to a client that a
/// `Connection from` line announced.
#[test]
fn a_proxys_own_connection_prints_no_frames_of_an_unannounced_client() {
    let server = ServerProcess::start(&["--proxy-protocol", "--tag"]);
    let mut local = TcpStream::connect(server.addr).expect("connect");
    local.set_read_timeout(Some(PATIENCE)).expect("timeout");
    local
        .write_all(b"PROXY UNKNOWN\r\nfrom nobody the transcript knows")
        .expect("send");
    let mut greeting = [0u8; 10];
    local.read_exact(&mut greeting).expect("greeting");
    drop(local);
    // A real client after it, to know that the first one's bytes are out.
    let mut client = TcpStream::connect(server.addr).expect("connect");
    client
        .write_all(b"PROXY TCP4 10.0.0.1 127.0.0.1 1 2\r\nhi")
        .expect("send");
    client.set_read_timeout(Some(PATIENCE)).expect("timeout");
    client.read_exact(&mut greeting).expect("greeting");
    drop(client);
    server.wait_text("Closed connection:  10.0.0.1:1\n");
    let out = server.stdout.bytes();
    let mut announced = std::collections::HashSet::new();
    for line in out.split(|&b| b == b'\n') {
        if let Some(peer) = line.strip_prefix(b"Connection from:  ") {
            announced.insert(peer.to_vec());
        } else if let Some(frame) = simple_tcp_server::output::text::parse_frame_line(line) {
            let tag = frame.tag.expect("--tag").as_bytes().to_vec();
            assert!(
                announced.contains(&tag),
                "a frame from {} that no `Connection from` line announced\n{}",
                String::from_utf8_lossy(&tag),
                server.context()
            );
        }
    }
}

#[test]
fn a_denied_proxys_own_connections_get_no_greeting() {
    // The proxy (127.0.0.1) is trusted to send headers, but denied as a
    // client: its LOCAL and UNKNOWN connections are refused at the header.
    let mut server = ServerProcess::start(&["--proxy-protocol", "--deny", "127.0.0.1"]);
    for header in [b"PROXY UNKNOWN\r\n".to_vec(), v2_local(server.addr)] {
        let mut stream = TcpStream::connect(server.addr).expect("connect");
        stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
        stream.write_all(&header).expect("send");
        assert_eq!(read_until_closed(&mut stream), b"", "no greeting");
    }
    server.signal(libc::SIGTERM);
    server.wait_exit(PATIENCE);
    let out = server.stdout.text();
    assert_eq!(out.lines().count(), 1, "nothing but the Listening line:\n{out}");
}

#[test]
fn malformed_headers_are_refused_at_once() {
    // Refused the moment the bytes cannot become a header, long before
    // --proxy-timeout.
    let mut server = ServerProcess::start(&["--proxy-protocol", "--proxy-timeout", "60s"]);
    let udp = {
        let mut header = v2("192.0.2.1:1", server.addr);
        header[13] = 0x12;
        header
    };
    let cases: [(&[u8], &str); 5] = [
        (b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\rX", "CR followed by"),
        (b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\n", "LF without CR"),
        (b"PROXY TCP4 10.0.0.1 10.0.0.2 +1 2\r\n", "bad source port"),
        (b"PROXY TCP4 10.0.0.1 10.0.0.2 +", "bad source port"),
        (&udp, "a UDP client"),
    ];
    let started = std::time::Instant::now();
    for (header, _) in &cases {
        let mut stream = TcpStream::connect(server.addr).expect("connect");
        stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
        stream.write_all(header).expect("send");
        assert_eq!(read_until_closed(&mut stream), b"", "no greeting");
    }
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    server.signal(libc::SIGTERM);
    server.wait_exit(PATIENCE);
    assert_eq!(server.stdout.text().lines().count(), 1);
    // One line per burst: the first refusal says what was wrong with it.
    let stderr = server.stderr.text();
    assert!(stderr.contains(cases[0].1), "{stderr}");
}

#[test]
fn no_header_a_bad_header_or_an_untrusted_proxy_get_no_greeting() {
    let mut server = ServerProcess::start(&["--proxy-protocol", "--proxy-timeout", "200ms"]);
    // Malformed: an HTTP request where the header should be.
    let mut bad = TcpStream::connect(server.addr).expect("connect");
    bad.set_read_timeout(Some(PATIENCE)).expect("timeout");
    bad.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("send");
    assert_eq!(read_until_closed(&mut bad), b"", "no greeting for a bad header");
    // Missing: a client that sends nothing is closed at the timeout.
    let mut silent = TcpStream::connect(server.addr).expect("connect");
    silent.set_read_timeout(Some(PATIENCE)).expect("timeout");
    assert_eq!(read_until_closed(&mut silent), b"", "no greeting without a header");
    // Incomplete, then silent: closed at the timeout too.
    let mut partial = TcpStream::connect(server.addr).expect("connect");
    partial.set_read_timeout(Some(PATIENCE)).expect("timeout");
    partial.write_all(b"PROXY TCP4 10.0.0.1 ").expect("send");
    assert_eq!(read_until_closed(&mut partial), b"");
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(PATIENCE);
    assert!(status.success());
    let out = server.stdout.text();
    assert_eq!(out.lines().count(), 1, "nothing but the Listening line:\n{out}");
    let stderr = server.stderr.text();
    // Each cause counted as what it is: one bad header, two late ones.
    assert!(
        stderr.contains("1 without a valid PROXY header, 2 without a PROXY header in time"),
        "{stderr}"
    );
    assert!(
        stderr.contains("(--proxy-timeout)") || stderr.contains("not a PROXY header"),
        "{stderr}"
    );

    // A proxy that is not trusted: refused however good its header.
    let mut server = ServerProcess::start(&["--proxy-protocol", "--proxy-from", "10.0.0.0/8"]);
    for _ in 0..5 {
        let mut stream = TcpStream::connect(server.addr).expect("connect");
        stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
        let _ = stream.write_all(&v2("192.0.2.1:1", server.addr));
        assert_eq!(read_until_closed(&mut stream), b"");
    }
    server.signal(libc::SIGTERM);
    server.wait_exit(PATIENCE);
    let stderr = server.stderr.text();
    assert!(stderr.contains("5 not from a trusted proxy"), "{stderr}");
    assert!(!stderr.contains("without a valid PROXY header"), "{stderr}");
    assert_eq!(
        stderr.matches("not a trusted proxy").count(),
        1,
        "one line for the burst\n{stderr}"
    );
}

/// Behind `--proxy-protocol` with `--idle-timeout` shorter than
/// `--proxy-timeout`: a connection whose PROXY header is still incomplete
/// is not yet a client, so the idle sweep closes it without printing
/// anything. The transcript holds nothing but the `Listening to:` line.
#[test]
fn the_idle_sweep_never_prints_a_pending_proxy_header() {
    let mut server = ServerProcess::start(&["--proxy-protocol", "--idle-timeout", "100ms"]);
    let mut proxy = TcpStream::connect(server.addr).expect("connect");
    proxy.write_all(b"PROXY TCP4 10.0.0.1 ").expect("send half a header");
    // Closed at the idle timeout or the PROXY timeout (5 s), without a greeting.
    assert_eq!(read_until_closed(&mut proxy), b"");
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(PATIENCE);
    assert!(status.success(), "{status}\n{}", server.context());
    let out = server.stdout.text();
    assert_eq!(
        out.lines().count(),
        1,
        "nothing but the Listening line may be printed for a header that never came whole:\n{out}"
    );
}

#[test]
fn allow_and_deny_decide_who_is_greeted() {
    // Deny one address of the loopback network.
    let mut server = ServerProcess::start(&["--deny", "127.0.0.2"]);
    for _ in 0..3 {
        let mut denied = util::connect_from("127.0.0.2", server.addr);
        assert_eq!(read_until_closed(&mut denied), b"");
    }
    let mut allowed = util::connect_from("127.0.0.3", server.addr);
    greeted(&mut allowed);
    drop(allowed);
    server.wait_text("Closed connection:  127.0.0.3:");
    server.signal(libc::SIGTERM);
    server.wait_exit(PATIENCE);
    let out = server.stdout.text();
    assert!(!out.contains("127.0.0.2"), "{out}");
    let stderr = server.stderr.text();
    assert!(
        stderr.contains("summary: 1 connection (") && stderr.contains("3 denied"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("denied by --allow/--deny").count(), 1, "{stderr}");

    // An allow list: only its members, and deny still wins inside it.
    let server = ServerProcess::start(&["--allow", "127.0.0.0/30", "--deny", "127.0.0.2/32"]);
    for (source, served) in [
        ("127.0.0.1", true),
        ("127.0.0.2", false),
        ("127.0.0.3", true),
        ("127.0.0.9", false),
    ] {
        let mut stream = util::connect_from(source, server.addr);
        if served {
            greeted(&mut stream);
        } else {
            assert_eq!(read_until_closed(&mut stream), b"", "{source}");
        }
    }
}

/// `--deny ::ffff:127.0.0.1` on a dual-stack listener (`::`): the kernel
/// reports an IPv4 client as `::ffff:127.0.0.1`, and the transcript prints
/// it so. A rule written the same way denies that client: rules and client
/// addresses are compared in one form, so the client gets no greeting.
#[test]
fn a_deny_rule_written_as_an_ipv4_mapped_address_denies_that_client() {
    let server = ServerProcess::start_raw(
        &["::".into(), "0".into(), "--deny".into(), "::ffff:127.0.0.1".into()],
        None,
        &[],
    );
    let port = server.addr.port();
    let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connect over IPv4");
    let _ = client.write_all(b"let me in");
    client.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut first = [0u8; 64];
    let got = match client.read(&mut first) {
        Ok(n) => &first[..n],
        Err(e) if e.kind() == ErrorKind::ConnectionReset => &[][..],
        Err(e) => panic!("read: {e}"),
    };
    assert!(
        got.is_empty(),
        "the denied client was greeted: {:?}\n{}",
        String::from_utf8_lossy(got),
        server.context()
    );
}

#[test]
fn behind_a_proxy_the_rules_apply_to_the_client_from_the_header() {
    let mut server = ServerProcess::start(&["--proxy-protocol", "--deny", "10.9.0.0/16", "--stats", "50ms"]);
    let mut denied = TcpStream::connect(server.addr).expect("connect");
    denied.set_read_timeout(Some(PATIENCE)).expect("timeout");
    denied.write_all(&v1("10.9.1.1:5", server.addr)).expect("send");
    assert_eq!(read_until_closed(&mut denied), b"");
    let mut served = TcpStream::connect(server.addr).expect("connect");
    served.set_read_timeout(Some(PATIENCE)).expect("timeout");
    served.write_all(&v1("10.8.1.1:5", server.addr)).expect("send");
    greeted(&mut served);
    let ok = server
        .stderr
        .wait_for(PATIENCE, |err| String::from_utf8_lossy(err).contains("denied 1 "));
    assert!(ok, "the stats line counts the denial\n{}", server.context());
    drop(served);
    server.wait_text("Closed connection:  10.8.1.1:5\n");
    server.signal(libc::SIGTERM);
    server.wait_exit(PATIENCE);
    assert!(!server.stdout.text().contains("10.9.1.1"));
    let stderr = server.stderr.text();
    assert!(
        stderr.contains("10.9.1.1:5: denied") && stderr.contains("1 denied"),
        "{stderr}"
    );
}

/// `--threads 4` behind a proxy: 40 clients, v1 and v2 headers in turn,
/// each client's bytes printed under the address from its header.
#[test]
fn behind_a_proxy_four_reactors_print_each_clients_bytes_under_its_own_address() {
    let server = ServerProcess::start(&["--proxy-protocol", "--threads", "4", "--tag"]);
    let clients: Vec<String> = (0..40).map(|i| format!("198.51.100.{}:{}", i + 1, 1000 + i)).collect();
    for (i, client) in clients.iter().enumerate() {
        let mut stream = TcpStream::connect(server.addr).expect("connect");
        stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
        let mut bytes = if i % 2 == 0 {
            v1(client, server.addr)
        } else {
            v2(client, server.addr)
        };
        bytes.extend_from_slice(format!("message {i}").as_bytes());
        stream.write_all(&bytes).expect("send");
        greeted(&mut stream);
    }
    server.wait_lines("Closed connection:  198.51.100.", clients.len());
    let streams = streams_by_client(&server.stdout.bytes());
    for (i, client) in clients.iter().enumerate() {
        assert_eq!(
            streams.get(client),
            Some(&format!("message {i}").into_bytes()),
            "{client}"
        );
    }
}
