//! Behind a real HAProxy (the Debian package `haproxy`), in TCP mode, with
//! two servers behind it: one fed with `send-proxy` (v1), one with
//! `send-proxy-v2`, both with PROXY health checks on. Clients connect from
//! 127.0.0.2, 127.0.0.3, ... and must appear in the servers' transcripts
//! under those addresses, with their exact bytes; the health checks must
//! not appear at all. HAProxy and the servers are stopped by PID.

mod util;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use util::{Captured, PATIENCE, Rng, ServerProcess, streams_by_client};

/// HAProxy in the foreground, killed (by PID) when dropped.
struct Haproxy {
    child: Child,
    stderr: Arc<Captured>,
    config: std::path::PathBuf,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

/// Starts HAProxy on `frontend`, balancing over `v1_server` (send-proxy)
/// and `v2_server` (send-proxy-v2).
fn start_haproxy(frontend: SocketAddr, v1_server: SocketAddr, v2_server: SocketAddr) -> Haproxy {
    // One file per HAProxy (the tests run at the same time): named by its
    // frontend's port too.
    let config = std::env::temp_dir().join(format!(
        "simple_tcp_server-haproxy-{}-{}.cfg",
        std::process::id(),
        frontend.port()
    ));
    std::fs::write(
        &config,
        format!(
            "global\n    maxconn 256\n\
             defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\
             frontend fe\n    bind {frontend}\n    default_backend be\n\
             backend be\n    balance roundrobin\n\
             \x20   server v1 {v1_server} send-proxy check inter 100ms check-send-proxy\n\
             \x20   server v2 {v2_server} send-proxy-v2 check inter 100ms check-send-proxy\n"
        ),
    )
    .expect("write the HAProxy config");
    let mut child = Command::new(util::find_program("haproxy").expect("haproxy is installed"))
        .arg("-f")
        .arg(&config)
        .arg("-db")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start haproxy");
    let stderr = Captured::spawn(child.stderr.take().expect("stderr"));
    Haproxy { child, stderr, config }
}

/// Connects from `source` to `target`.
fn connect_from(source: IpAddr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect(&target.into())?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(PATIENCE))?;
    Ok(stream)
}

/// Waits until `server` (logging at debug level) has taken `n` health
/// checks of `haproxy` for the proxy's own connections.
fn wait_for_checks(server: &ServerProcess, haproxy: &mut Haproxy, n: usize) {
    let deadline = Instant::now() + PATIENCE;
    let quiet = |err: &[u8]| {
        String::from_utf8_lossy(err)
            .matches("PROXY header for the proxy itself")
            .count()
    };
    while quiet(&server.stderr.bytes()) < n {
        if let Ok(Some(status)) = haproxy.child.try_wait() {
            panic!("haproxy exited ({status}):\n{}", haproxy.stderr.text());
        }
        assert!(
            Instant::now() < deadline,
            "fewer than {n} health checks taken for the proxy's own\n{}\n--- haproxy:\n{}",
            server.context(),
            haproxy.stderr.text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn clients_behind_haproxy_keep_their_addresses_and_bytes() {
    if !util::have_program(
        "haproxy",
        "sudo apt-get install -y haproxy",
        "clients_behind_haproxy_keep_their_addresses_and_bytes",
    ) {
        return;
    }
    let debug = [("RUST_LOG", "debug")];
    let v1 = ServerProcess::start_with_env(&["--proxy-protocol", "--tag"], &debug);
    let v2 = ServerProcess::start_with_env(&["--proxy-protocol", "--tag"], &debug);
    let frontend: SocketAddr = format!("127.0.0.1:{}", util::free_port()).parse().expect("address");
    let mut haproxy = start_haproxy(frontend, v1.addr, v2.addr);
    // HAProxy binds its frontend before it starts checking: it is up once
    // both servers have been health-checked (quietly).
    for server in [&v1, &v2] {
        wait_for_checks(server, &mut haproxy, 1);
    }

    let mut rng = Rng::new(13);
    let mut sent = Vec::new();
    for i in 0..8u8 {
        let source = IpAddr::from([127, 0, 0, 2 + i]);
        let mut client = connect_from(source, frontend).expect("connect through haproxy");
        let mut greeting = [0u8; 10];
        client.read_exact(&mut greeting).expect("the greeting, through haproxy");
        assert_eq!(&greeting, b"Let's GO!\n");
        let len = rng.range(1, 3000);
        let mut bytes = rng.bytes(len);
        bytes.extend_from_slice(format!(" client {i}").as_bytes());
        client.write_all(&bytes).expect("send");
        let me = client.local_addr().expect("addr");
        assert_eq!(me.ip(), source);
        drop(client);
        sent.push((me.to_string(), bytes));
    }
    for (me, _) in &sent {
        let closed = format!("Closed connection:  {me}\n");
        let deadline = Instant::now() + PATIENCE;
        while !util::contains(&v1.stdout.bytes(), closed.as_bytes())
            && !util::contains(&v2.stdout.bytes(), closed.as_bytes())
        {
            assert!(
                Instant::now() < deadline,
                "{me} never closed\n{}\n{}",
                v1.context(),
                v2.context()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let v1_streams = streams_by_client(&v1.stdout.bytes());
    let v2_streams = streams_by_client(&v2.stdout.bytes());
    let mut served = [0, 0];
    for (me, bytes) in &sent {
        let got = match (v1_streams.get(me), v2_streams.get(me)) {
            (Some(got), None) => {
                served[0] += 1;
                got
            }
            (None, Some(got)) => {
                served[1] += 1;
                got
            }
            other => panic!("{me} should be in exactly one transcript: {other:?}"),
        };
        assert!(got == bytes, "{me}: bytes differ through haproxy");
    }
    assert!(
        served[0] > 0 && served[1] > 0,
        "round robin over both servers: {served:?}"
    );
    // HAProxy's own connections (the checks) are never printed as clients:
    // each transcript announces exactly the clients it served.
    for (server, count) in [(&v1, served[0]), (&v2, served[1])] {
        let out = server.stdout.bytes();
        assert_eq!(
            util::count_lines(&out, "Connection from:  "),
            count,
            "{}",
            server.context()
        );
        assert!(
            !util::contains(&out, b"Connection from:  127.0.0.1:"),
            "{}",
            server.context()
        );
    }
    drop(haproxy);
}

#[test]
fn haproxy_health_checks_to_a_dual_stack_listener_are_not_printed() {
    if !util::have_program(
        "haproxy",
        "sudo apt-get install -y haproxy",
        "haproxy_health_checks_to_a_dual_stack_listener_are_not_printed",
    ) {
        return;
    }
    // Servers on `::`, checked by HAProxy over IPv4: their peer is
    // [::ffff:127.0.0.1]:P, where the v1 check says "TCP4 127.0.0.1 ...".
    let debug = [("RUST_LOG", "debug")];
    let args: Vec<String> = ["::", "0", "--proxy-protocol", "--tag"].map(String::from).to_vec();
    let v1 = ServerProcess::start_raw(&args, None, &debug);
    let v2 = ServerProcess::start_raw(&args, None, &debug);
    let loopback = IpAddr::from([127, 0, 0, 1]);
    let frontend = SocketAddr::new(loopback, util::free_port());
    let mut haproxy = start_haproxy(
        frontend,
        SocketAddr::new(loopback, v1.addr.port()),
        SocketAddr::new(loopback, v2.addr.port()),
    );
    for server in [&v1, &v2] {
        wait_for_checks(server, &mut haproxy, 3);
    }
    // A client through HAProxy is still a client.
    let mut client = connect_from(IpAddr::from([127, 0, 0, 2]), frontend).expect("connect through haproxy");
    let mut greeting = [0u8; 10];
    client.read_exact(&mut greeting).expect("the greeting, through haproxy");
    client.write_all(b"hi").expect("send");
    let me = client.local_addr().expect("addr");
    drop(client);
    let closed = format!("Closed connection:  {me}\n");
    let deadline = Instant::now() + PATIENCE;
    while !util::contains(&v1.stdout.bytes(), closed.as_bytes())
        && !util::contains(&v2.stdout.bytes(), closed.as_bytes())
    {
        assert!(
            Instant::now() < deadline,
            "{me} never closed\n{}\n{}",
            v1.context(),
            v2.context()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let announced: usize = [&v1, &v2]
        .iter()
        .map(|server| util::count_lines(&server.stdout.bytes(), "Connection from:  "))
        .sum();
    assert_eq!(announced, 1, "only the client\n{}\n{}", v1.context(), v2.context());
    for server in [&v1, &v2] {
        assert!(
            !util::contains(&server.stdout.bytes(), b"127.0.0.1"),
            "{}",
            server.context()
        );
    }
    drop(haproxy);
}
