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

/// The local address of process `pid`'s one TCP socket (from /proc: the
/// socket's inode in its descriptors, then that inode in /proc/net/tcp).
fn tcp_socket_of(pid: u32) -> Option<SocketAddr> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(target.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if !inodes.iter().any(|i| fields.get(9) == Some(&i.as_str())) {
            return None;
        }
        let (ip, port) = fields.get(1)?.split_once(':')?;
        let ip = u32::from_str_radix(ip, 16).ok()?;
        let port = u16::from_str_radix(port, 16).ok()?;
        // /proc writes the address's bytes as a number in the host's order.
        Some(SocketAddr::from((std::net::Ipv4Addr::from(ip.to_ne_bytes()), port)))
    })
}

/// TLS as production does it: HAProxy terminates TLS (`bind ... ssl crt`)
/// and hands each client over with `send-proxy-v2`; `openssl s_client`
/// talks TLS to HAProxy, gets the greeting, and its bytes appear in the
/// transcript under its own address, not HAProxy's.
#[test]
fn tls_terminated_by_haproxy_reaches_the_server_with_the_clients_address() {
    if !util::have_program(
        "haproxy",
        "sudo apt-get install -y haproxy",
        "tls_terminated_by_haproxy",
    ) || !util::have_program(
        "openssl",
        "sudo apt-get install -y openssl",
        "tls_terminated_by_haproxy",
    ) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("simple_tcp_server-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let (key, cert, both) = (dir.join("key.pem"), dir.join("cert.pem"), dir.join("site.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl req");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    // HAProxy wants the certificate and its key in one file.
    let pem = [std::fs::read(&cert).expect("cert"), std::fs::read(&key).expect("key")].concat();
    std::fs::write(&both, pem).expect("write the PEM");

    let server = ServerProcess::start(&["--proxy-protocol", "--tag"]);
    let frontend: SocketAddr = format!("127.0.0.1:{}", util::free_port()).parse().expect("address");
    let config = dir.join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n    maxconn 64\n\
             defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\
             frontend tls\n    bind {frontend} ssl crt {}\n    default_backend be\n\
             backend be\n    server s1 {} send-proxy-v2\n",
            both.display(),
            server.addr
        ),
    )
    .expect("write the HAProxy config");
    let mut haproxy = Command::new(util::find_program("haproxy").expect("haproxy"))
        .arg("-f")
        .arg(&config)
        .arg("-db")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start haproxy");
    let haproxy_log = Captured::spawn(haproxy.stderr.take().expect("stderr"));
    let _haproxy = Haproxy {
        child: haproxy,
        stderr: Arc::clone(&haproxy_log),
        config: config.clone(),
    };
    // HAProxy is up once its frontend takes connections.
    util::wait_until("HAProxy's frontend", || TcpStream::connect(frontend).is_ok());

    let mut client = Command::new("openssl")
        .args(["s_client", "-quiet", "-no_ign_eof", "-connect"])
        .arg(frontend.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start openssl s_client");
    let said = Captured::spawn(client.stdout.take().expect("stdout"));
    let greeted = said.wait_for(PATIENCE, |out| util::contains(out, b"Let's GO!\n"));
    assert!(
        greeted,
        "no greeting through TLS\n{}\n{}",
        server.context(),
        haproxy_log.text()
    );
    let me = tcp_socket_of(client.id()).expect("s_client's socket");
    let mut stdin = client.stdin.take().expect("stdin");
    stdin.write_all(b"hello over TLS\n").expect("type");
    let line = format!("{me} <15:hello over TLS\\n>\n");
    server.wait_text(&line);
    drop(stdin);
    let _ = client.wait();
    server.wait_text(&format!("Closed connection:  {me}\n"));
    let _ = std::fs::remove_dir_all(&dir);
}
