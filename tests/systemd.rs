//! As a systemd service: the unit files in `contrib/` pass
//! `systemd-analyze verify`, and the server takes its listener from
//! `systemd-socket-activate` (socket activation, as systemd passes it), with
//! several reactors, and says READY=1 and STOPPING=1 on `$NOTIFY_SOCKET`.
//! Both programs are in Debian's `systemd` package.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use util::{Captured, PATIENCE};

#[test]
fn the_unit_files_pass_systemd_analyze_verify() {
    if !util::have_program(
        "systemd-analyze",
        "sudo apt-get install -y systemd",
        "the_unit_files_pass_systemd_analyze_verify",
    ) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("simple_tcp_server-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("unit dir");
    let contrib = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib");
    let service = std::fs::read_to_string(format!("{contrib}/simple_tcp_server.service")).expect("service unit");
    assert!(service.contains("ExecStart=/usr/local/bin/simple_tcp_server"));
    // verify checks that ExecStart's program exists: point it at this build.
    let service = service.replace("/usr/local/bin/simple_tcp_server", util::bin("simple_tcp_server"));
    std::fs::write(dir.join("simple_tcp_server.service"), service).expect("write");
    std::fs::copy(
        format!("{contrib}/simple_tcp_server.socket"),
        dir.join("simple_tcp_server.socket"),
    )
    .expect("copy socket unit");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.join("simple_tcp_server.socket"))
        .arg(dir.join("simple_tcp_server.service"))
        .output()
        .expect("run systemd-analyze");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify failed:\n{stderr}");
    assert!(stderr.trim().is_empty(), "systemd-analyze verify complained:\n{stderr}");
}

#[test]
fn socket_activation_and_readiness() {
    activated_and_ready("socket_activation_and_readiness", &["--threads", "2"], "on 2 threads");
}

/// The supervisor says READY=1 once, when its workers run (not before it
/// has started them), then STOPPING=1.
#[test]
fn socket_activation_and_readiness_with_workers() {
    activated_and_ready(
        "socket_activation_and_readiness_with_workers",
        &["--workers", "2"],
        "supervising 2 workers",
    );
}

fn activated_and_ready(test: &str, args: &[&str], log: &str) {
    if !util::have_program("systemd-socket-activate", "sudo apt-get install -y systemd", test) {
        return;
    }
    // A notify socket of our own, as systemd's would be.
    let notify_path = std::env::temp_dir().join(format!("simple_tcp_server-notify-{}-{test}", std::process::id()));
    let _ = std::fs::remove_file(&notify_path);
    let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
    notify.set_read_timeout(Some(PATIENCE)).expect("timeout");

    let port = util::free_port();
    let mut command = Command::new("systemd-socket-activate");
    util::die_with_the_test(&mut command);
    let child = command
        .arg("-l")
        .arg(format!("127.0.0.1:{port}"))
        // It gives the server a fresh environment, with only what -E adds.
        .arg("-E")
        .arg(format!("NOTIFY_SOCKET={}", notify_path.display()))
        .args(["-E", "RUST_LOG=info"])
        .arg(util::bin("simple_tcp_server"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start systemd-socket-activate");
    // Killed (by PID) when the test ends, however it ends.
    let mut child = Killed(child);
    let child = &mut child.0;
    let stdout = Captured::spawn(child.stdout.take().expect("stdout"));
    let stderr = Captured::spawn(child.stderr.take().expect("stderr"));
    let context = || format!("--- stdout:\n{}\n--- stderr:\n{}", stdout.text(), stderr.text());
    // The socket is open before the server runs; the first client starts it.
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    let deadline = Instant::now() + PATIENCE;
    let mut client = loop {
        match TcpStream::connect(addr) {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("systemd-socket-activate never listened: {e}\n{}", context()),
        }
    };
    client.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut greeting = [0u8; 10];
    client.read_exact(&mut greeting).expect("greeting");
    assert_eq!(&greeting, b"Let's GO!\n");
    client.write_all(b"activated by a socket").expect("send");
    drop(client);
    let printed = stdout.wait_for(PATIENCE, |out| util::contains(out, b"Closed connection:  127.0.0.1:"));
    assert!(printed, "{}", context());
    let out = stdout.text();
    assert!(
        out.starts_with(&format!("Listening to:  127.0.0.1:{port}\n")),
        "{}",
        context()
    );
    assert!(out.contains("<21:activated by a socket>\n"), "{}", context());
    // stderr is read by a thread of its own: wait for the lines.
    let said = stderr.wait_for(PATIENCE, |err| {
        util::contains(err, b"passed by the service manager") && util::contains(err, log.as_bytes())
    });
    assert!(said, "{}", context());

    let mut message = [0u8; 256];
    let n = notify.recv(&mut message).expect("READY=1 on the notify socket");
    assert_eq!(message[..n].trim_ascii(), b"READY=1", "{}", context());
    // systemd-socket-activate execs the server in place: this PID is it.
    // SAFETY: kill has no memory effects; the child is ours and not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let n = notify.recv(&mut message).expect("STOPPING=1 on the notify socket");
    assert_eq!(message[..n].trim_ascii(), b"STOPPING=1", "{}", context());
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the server did not stop\n{}", context());
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = std::fs::remove_file(&notify_path);
    assert!(status.success(), "{status}\n{}", context());
}

/// A child killed and reaped when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the server with `fd` (a socket of the test's) as descriptor 3 and
/// `LISTEN_FDS=1` naming it, as a service manager passes a socket.
fn run_with_passed_socket(fd: std::os::fd::RawFd, args: &[&str], notify: &std::path::Path) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new("sh");
    // LISTEN_PID must be the server's PID: the shell's, which exec keeps.
    command
        .arg("-c")
        .arg(r#"LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@""#)
        .arg(util::bin("simple_tcp_server"))
        .args(args)
        .env("RUST_LOG", "info")
        .env("NOTIFY_SOCKET", notify)
        .stdin(Stdio::null());
    // SAFETY: between fork and exec only dup2 and fcntl (async-signal-safe),
    // onto descriptor 3, from a descriptor the test keeps open.
    unsafe {
        command.pre_exec(move || {
            // dup2 onto itself keeps close-on-exec: clear it instead.
            let rc = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    util::die_with_the_test(&mut command);
    command.output().expect("run the server")
}

#[test]
fn a_passed_socket_that_is_not_listening_is_refused_before_readiness() {
    use std::os::fd::AsRawFd;
    // Bound, never listened on.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().expect("addr").into())
        .expect("bind");
    // A notify socket of our own: no READY=1 may come.
    let notify_path = std::env::temp_dir().join(format!("simple_tcp_server-notready-{}", std::process::id()));
    let _ = std::fs::remove_file(&notify_path);
    let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
    notify.set_nonblocking(true).expect("nonblocking");
    let out = run_with_passed_socket(socket.as_raw_fd(), &[], &notify_path);
    let mut message = [0u8; 64];
    let sent = notify.recv(&mut message);
    let _ = std::fs::remove_file(&notify_path);
    assert!(
        sent.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "nothing on the notify socket: {sent:?}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "no Listening line: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains("the passed socket is not listening"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");

    // A connection, as `systemd-socket-activate --accept` (Accept=yes) passes.
    if !util::have_program(
        "systemd-socket-activate",
        "sudo apt-get install -y systemd",
        "a_passed_socket_that_is_not_listening_is_refused_before_readiness",
    ) {
        return;
    }
    let port = util::free_port();
    let mut command = Command::new("systemd-socket-activate");
    util::die_with_the_test(&mut command);
    let child = command
        .args(["--accept", "-l", &format!("127.0.0.1:{port}"), "-E", "RUST_LOG=info"])
        .arg(util::bin("simple_tcp_server"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start systemd-socket-activate");
    let mut child = Killed(child);
    let stdout = Captured::spawn(child.0.stdout.take().expect("stdout"));
    let stderr = Captured::spawn(child.0.stderr.take().expect("stderr"));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    let deadline = Instant::now() + PATIENCE;
    let mut client = loop {
        match TcpStream::connect(addr) {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("systemd-socket-activate never listened: {e}\n{}", stderr.text()),
        }
    };
    client.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut got = Vec::new();
    let _ = client.read_to_end(&mut got);
    assert!(got.is_empty(), "no greeting from a server given a connection: {got:?}");
    let said = stderr.wait_for(PATIENCE, |err| {
        util::contains(err, b"the passed socket is not listening")
    });
    assert!(said, "{}", stderr.text());
    assert!(!stdout.text().contains("Listening to:"), "{}", stdout.text());
}

#[test]
fn readiness_reaches_an_abstract_notify_socket() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("simple_tcp_server-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
    let notify = UnixDatagram::bind_addr(&addr).expect("bind the abstract socket");
    notify.set_read_timeout(Some(PATIENCE)).expect("timeout");
    for args in [&[][..], &["--workers", "2"][..]] {
        let mut server = util::ServerProcess::start_with_env(args, &[("NOTIFY_SOCKET", &format!("@{name}"))]);
        let mut message = [0u8; 64];
        let n = notify.recv(&mut message).expect("READY=1");
        assert_eq!(&message[..n], b"READY=1", "{args:?}\n{}", server.context());
        server.signal(libc::SIGTERM);
        let n = notify.recv(&mut message).expect("STOPPING=1");
        assert_eq!(&message[..n], b"STOPPING=1", "{args:?}");
        assert!(server.wait_exit(PATIENCE).success(), "{args:?}\n{}", server.context());
    }
}

#[test]
fn a_notify_socket_that_nobody_reads_does_not_hold_the_start() {
    let path = std::env::temp_dir().join(format!("simple_tcp_server-full-notify-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let notify = UnixDatagram::bind(&path).expect("notify socket");
    // Its queue full, as a service manager that is not reading leaves it.
    let filler = UnixDatagram::unbound().expect("socket");
    filler.set_nonblocking(true).expect("nonblocking");
    let mut queued = 0;
    loop {
        match filler.send_to(b"FILLER=1", &path) {
            Ok(_) => queued += 1,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("filling the notify socket: {e}"),
        }
        assert!(queued < 1_000_000, "the queue never filled");
    }
    let path_text = path.display().to_string();
    for args in [&[][..], &["--workers", "2"][..]] {
        let mut server = util::ServerProcess::start_with_env(args, &[("NOTIFY_SOCKET", &path_text)]);
        let mut client = util::connect_greeted(server.addr);
        client.write_all(b"served").expect("send");
        drop(client);
        server.wait_lines("Closed connection:  ", 1);
        let warned = server
            .stderr
            .wait_for(PATIENCE, |err| util::contains(err, b"cannot notify systemd (READY=1)"));
        assert!(warned, "{}", server.context());
        server.signal(libc::SIGTERM);
        assert!(server.wait_exit(PATIENCE).success(), "{}", server.context());
    }
    drop(notify);
    let _ = std::fs::remove_file(&path);
}
