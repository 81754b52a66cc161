//! The transcript's destination failing under the server: stdout and stderr
//! on one pipe whose reader has gone, and a full disk as stdout. The server
//! stops with exit 1, never a panic, naming the cause where it can.

mod util;

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use util::{PATIENCE, bin, connect_greeted};

/// `simple_tcp_server 2>&1 | head -1`, then a client sends: writing the
/// transcript fails with a broken pipe, and so would any message about it
/// on stderr. The server exits 1 (a panic would exit 101).
#[test]
fn a_closed_pipe_for_stdout_and_stderr_is_exit_1_not_a_panic() {
    let (mut reader, writer) = std::io::pipe().expect("pipe");
    let mut child = Command::new(bin("simple_tcp_server"))
        .args(["127.0.0.1", "0"])
        .env("RUST_LOG", "info")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(writer.try_clone().expect("clone the pipe"))
        .stderr(writer)
        .spawn()
        .expect("start simple_tcp_server");
    // Read until the Listening line (log lines come first), then close.
    let mut seen = Vec::new();
    let addr: SocketAddr = loop {
        let mut chunk = [0u8; 512];
        let n = reader.read(&mut chunk).expect("read");
        assert!(
            n > 0,
            "the server exited before listening: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&seen);
        if let Some(addr) = text
            .lines()
            .filter(|_| text.ends_with('\n'))
            .find_map(|l| l.strip_prefix("Listening to:  "))
        {
            break addr.parse().expect("address");
        }
    };
    drop(reader);
    let mut client = connect_greeted(addr);
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server kept running with its stdout closed");
        }
        // Keep giving it lines to write: a test running beside this one may
        // hold a copy of the pipe's read end for a moment (between its own
        // fork and exec), and a write then still succeeds.
        let _ = std::io::Write::write_all(&mut client, b"into the void");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(status.code(), Some(1), "a panic exits 101");
}

/// A full disk as stdout (`/dev/full`): the transcript cannot be written,
/// and the server exits 1 saying so, with the system's reason.
#[test]
fn a_full_disk_as_stdout_is_named() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let out = Command::new(bin("simple_tcp_server"))
        .args(["127.0.0.1", "0"])
        .stdin(Stdio::null())
        .stdout(full)
        .stderr(Stdio::piped())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("simple_tcp_server: cannot write the transcript to stdout: No space left on device"),
        "{stderr}"
    );
}
