//! The reference loops of examples/reference_server.rs, which the load
//! measurements (scripts/load_bench.py) put beside the server, write what
//! the server writes: `write-limit` as many bytes as the text format's frame
//! lines, `write-limit-json` as many as `--format json`'s frame lines, for
//! the same clients sending the same bytes. A loop that wrote less would
//! make every ratio against it flatter the server's limit.
//!
//! `cargo test` builds the examples before it runs the tests; a run of this
//! file alone needs `cargo build --release --examples` first.

mod util;

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitStatus;

use simple_tcp_server::output::json::{EventKind, parse_line};
use simple_tcp_server::output::text::parse_frame_line;
use util::{ChildProcess, PATIENCE, ServerProcess, bin, connect_greeted, listening_addr, read_until_closed};

/// What each client sends, in one write, then closes: whole 25-byte frames
/// and short last frames of 10 to 24 bytes and of 1 to 9 (whose length has
/// one digit). One write of less than 16 KiB reaches the other side whole,
/// so the server and the loop read it in one piece and cut the same frames.
const PAYLOADS: [usize; 6] = [25 * 40, 25 * 400 + 13, 25 * 3 + 24, 10, 25 * 3 + 5, 1];

fn payload(len: usize, seed: usize) -> Vec<u8> {
    const PLAIN: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..len).map(|i| PLAIN[(i * 7 + seed) % PLAIN.len()]).collect()
}

/// Sends the payloads, one client each, and returns once the other side
/// has closed every connection: it has read all of them.
fn send_all(addr: SocketAddr) {
    let clients: Vec<TcpStream> = PAYLOADS
        .iter()
        .enumerate()
        .map(|(seed, &len)| {
            let mut stream = connect_greeted(addr);
            stream.write_all(&payload(len, seed)).expect("send");
            stream.shutdown(Shutdown::Write).expect("shutdown");
            stream
        })
        .collect();
    for mut stream in clients {
        assert!(
            read_until_closed(&mut stream).is_empty(),
            "nothing but the greeting comes back"
        );
    }
}

/// The bytes of the server's frame lines for the payloads, newlines
/// included.
fn server_frame_bytes(args: &[&str], is_frame: fn(&[u8]) -> bool) -> usize {
    let server = ServerProcess::start(args);
    send_all(server.addr);
    if !args.contains(&"json") {
        server.wait_lines("Closed connection:  ", PAYLOADS.len());
    } else {
        // Every close event is written after its connection's frames.
        let done = server.stdout.wait_for(PATIENCE, |out| {
            out.split(|&b| b == b'\n')
                .filter(|l| std::str::from_utf8(l).is_ok_and(|l| l.contains("\"event\":\"close\"")))
                .count()
                == PAYLOADS.len()
        });
        assert!(done, "waited for the close events\n{}", server.context());
    }
    let out = server.stdout.bytes();
    let lines: Vec<&[u8]> = out.split(|&b| b == b'\n').filter(|l| is_frame(l)).collect();
    let expected_frames: usize = PAYLOADS.iter().map(|n| n.div_ceil(25)).sum();
    assert_eq!(lines.len(), expected_frames, "{}", server.context());
    lines.iter().map(|l| l.len() + 1).sum()
}

/// The example's binary, which `cargo test` builds with the tests (a run of
/// one test file does not): refused when missing or older than its source.
fn reference_server() -> PathBuf {
    let release = PathBuf::from(bin("simple_tcp_server"));
    let path = release
        .parent()
        .expect("target directory")
        .join("examples")
        .join("reference_server");
    let rebuild = "run `cargo build --release --examples` (a whole `cargo test` builds the examples)";
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}: {rebuild}", path.display()));
    // Its source, and the library's (its constants come from there).
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut sources = vec![root.join("examples").join("reference_server.rs")];
    let mut dirs = vec![root.join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("src directory").flatten() {
            let p = entry.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                sources.push(p);
            }
        }
    }
    for source in sources {
        let written = std::fs::metadata(&source).and_then(|m| m.modified()).expect("source");
        assert!(
            built >= written,
            "{} is older than {}: {rebuild}",
            path.display(),
            source.display()
        );
    }
    path
}

/// Starts reference loop `mode` on port 0: the child and its address
/// (from `Listening to:` on stderr).
fn start_loop(mode: &str) -> (ChildProcess, SocketAddr) {
    let child = ChildProcess::start_program(&reference_server(), &[mode, "127.0.0.1", "0"], &[]);
    let started = child.stderr.wait_for(PATIENCE, |err| err.contains(&b'\n'));
    assert!(started, "reference_server {mode} did not start\n{}", child.context());
    let text = child.stderr.text();
    let line = text.lines().next().unwrap_or_default();
    let addr = listening_addr(line).unwrap_or_else(|e| panic!("bad address line {line:?}: {e}"));
    (child, addr)
}

/// Stops a loop by PID (it writes what it owes as it stops): how it exited
/// and how many bytes it wrote in all.
fn stop_loop(mut child: ChildProcess) -> (ExitStatus, usize) {
    child.signal(libc::SIGTERM);
    // Waits for the pipes to close too: everything is in.
    let status = child.wait_exit(PATIENCE);
    (status, child.stdout.bytes().len())
}

/// The bytes loop `mode` writes for the payloads, once it has read and
/// closed every connection.
fn loop_bytes(mode: &str) -> usize {
    let (child, addr) = start_loop(mode);
    send_all(addr);
    stop_loop(child).1
}

fn is_text_frame(line: &[u8]) -> bool {
    parse_frame_line(line).is_some()
}

fn is_json_frame(line: &[u8]) -> bool {
    std::str::from_utf8(line).is_ok_and(|l| parse_line(l).is_ok_and(|e| e.kind == EventKind::Frame))
}

#[test]
fn write_limit_writes_as_much_as_the_text_format() {
    let server = server_frame_bytes(&[], is_text_frame);
    let total: usize = PAYLOADS.iter().sum();
    assert!(server > total, "frame lines are longer than their frames");
    assert_eq!(loop_bytes("write-limit"), server);
}

#[test]
fn write_limit_json_writes_as_much_as_json_lines() {
    let server = server_frame_bytes(&["--format", "json"], is_json_frame);
    let text = server_frame_bytes(&[], is_text_frame);
    assert!(server > 3 * text, "JSON lines are about four times text lines");
    assert_eq!(loop_bytes("write-limit-json"), server);
}

/// One client sends 3 MB: the loop writes while it reads (past the 64 KiB
/// threshold, window by window), and writes every frame's line. A read may
/// end inside a frame, where the loop, as the server, cuts a short frame;
/// the reads are not the server's, so the total is bounded, not exact: at
/// least one line per whole frame, and at most one more per 1,000.
fn floods_past_the_threshold(mode: &str, overhead: usize) {
    const BIG: usize = 25 * 120_000;
    let (child, addr) = start_loop(mode);
    let mut stream = connect_greeted(addr);
    let peer_len = stream.local_addr().expect("local address").to_string().len();
    let per_frame = overhead + if mode == "write-limit-json" { peer_len } else { 0 };
    stream.write_all(&payload(BIG, 0)).expect("send");
    stream.shutdown(Shutdown::Write).expect("shutdown");
    assert!(read_until_closed(&mut stream).is_empty());
    let (status, wrote) = stop_loop(child);
    assert!(status.success(), "reference_server {mode}: {status}");
    let least = BIG + BIG / 25 * per_frame;
    let most = least + BIG / 25 / 1000 * (per_frame + 25);
    assert!(
        (least..=most).contains(&wrote),
        "{mode} wrote {wrote} bytes, expected {least}..={most}"
    );
}

#[test]
fn write_limit_floods_past_the_threshold() {
    floods_past_the_threshold("write-limit", 6);
}

#[test]
fn write_limit_json_floods_past_the_threshold() {
    floods_past_the_threshold("write-limit-json", 82);
}

#[test]
fn bare_writes_nothing() {
    assert_eq!(loop_bytes("bare"), 0);
}
