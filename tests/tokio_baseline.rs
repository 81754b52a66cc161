//! The tokio baseline with a writer thread (benches/baselines/tokio_writer.rs,
//! the bench design `tokio_multi_thread_writer` and examples/tokio_server.rs)
//! serves what the server serves, so that comparing them compares designs:
//! the greeting, every client's bytes exact and in order as escaped 25-byte
//! frames in whole lines, `Connection from` and `Closed connection` lines; a
//! stop ends open connections after what they sent is written; a sink that
//! fails stops the server instead of dropping lines.

#[path = "../benches/baselines/lines.rs"]
mod lines;
#[path = "../benches/baselines/tokio_writer.rs"]
mod tokio_writer;
mod util;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::{Arc, Mutex};
use std::thread;

use util::{Rng, connect_greeted, frames_of, wait_until};

/// A sink the test can read while the server writes to it.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Shared {
    fn bytes(&self) -> Vec<u8> {
        self.0.lock().expect("sink").clone()
    }

    fn has_line(&self, line: &str) -> bool {
        let out = self.bytes();
        out.split(|&b| b == b'\n').any(|l| l == line.as_bytes())
    }
}

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().expect("sink").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The baseline on 127.0.0.1, port 0, writing to `sink`, run on a thread.
struct Running {
    addr: SocketAddr,
    stopper: tokio_writer::Stopper,
    thread: thread::JoinHandle<io::Result<()>>,
}

fn start(sink: impl Write + Send + 'static) -> Running {
    let listener = simple_tcp_server::listen::listen("127.0.0.1:0".parse().expect("addr"), 1024).expect("listen");
    let server = tokio_writer::Server::new(listener, sink, 4).expect("server");
    let addr = server.local_addr();
    let stopper = server.stopper();
    let thread = thread::spawn(move || server.run());
    Running { addr, stopper, thread }
}

impl Running {
    fn stop(self) -> io::Result<()> {
        self.stopper.stop();
        self.thread.join().expect("server thread")
    }
}

/// Every line is one of the transcript's four kinds, whole.
fn assert_lines_whole(out: &[u8]) {
    assert!(
        out.is_empty() || out.ends_with(b"\n"),
        "the transcript ends inside a line"
    );
    for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let ok = line.starts_with(b"Connection from:  ")
            || line.starts_with(b"Closed connection:  ")
            || simple_tcp_server::output::text::parse_frame_line(line).is_some();
        assert!(ok, "not a whole line: {:?}", String::from_utf8_lossy(line));
    }
}

#[test]
fn one_client_after_another_gets_every_byte_framed_in_order() {
    let sink = Shared::default();
    let server = start(sink.clone());
    let mut rng = Rng::new(12);
    // Sizes around the framing window and the read block, and hostile
    // bytes (escaped as the server escapes them).
    for len in [1, 24, 25, 26, 1000, 256 * 1024 + 7, 3 * 1024 * 1024] {
        let before = sink.bytes().len();
        let mut client = connect_greeted(server.addr);
        let me = client.local_addr().expect("addr");
        let data = rng.bytes(len);
        client.write_all(&data).expect("send");
        client.shutdown(Shutdown::Write).expect("shutdown");
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).expect("the server closes");
        wait_until("the Closed line", || {
            sink.has_line(&format!("Closed connection:  {me}"))
        });
        let out = sink.bytes()[before..].to_vec();
        assert_lines_whole(&out);
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with(&format!("Connection from:  {me}\n")),
            "{len} bytes: {text:.200}"
        );
        let frames = frames_of(&out);
        assert!(
            frames.iter().all(|(_, n, _)| (1..=25).contains(n)),
            "{len} bytes: frames of 1 to 25"
        );
        let got: Vec<u8> = frames.into_iter().flat_map(|(_, _, bytes)| bytes).collect();
        assert!(got == data, "{len} bytes sent, {} printed, or not in order", got.len());
    }
    server.stop().expect("run");
}

#[test]
fn many_clients_at_once_print_whole_lines_and_all_their_bytes() {
    let sink = Shared::default();
    let server = start(sink.clone());
    let addr = server.addr;
    let clients: Vec<_> = (0..32u64)
        .map(|i| {
            thread::spawn(move || {
                let mut rng = Rng::new(i + 100);
                let mut client = connect_greeted(addr);
                let me = client.local_addr().expect("addr");
                let len = rng.range(1, 512 * 1024);
                client.write_all(&rng.bytes(len)).expect("send");
                client.shutdown(Shutdown::Write).expect("shutdown");
                let mut rest = Vec::new();
                client.read_to_end(&mut rest).expect("the server closes");
                (me, len)
            })
        })
        .collect();
    let sent: Vec<(SocketAddr, usize)> = clients.into_iter().map(|c| c.join().expect("client")).collect();
    for (me, _) in &sent {
        wait_until("every Closed line", || {
            sink.has_line(&format!("Closed connection:  {me}"))
        });
    }
    server.stop().expect("run");
    let out = sink.bytes();
    assert_lines_whole(&out);
    let printed: usize = frames_of(&out).iter().map(|(_, n, _)| n).sum();
    assert_eq!(printed, sent.iter().map(|(_, n)| n).sum::<usize>());
    assert_eq!(util::count_lines(&out, "Connection from:  "), sent.len());
}

#[test]
fn a_stop_ends_open_connections_after_writing_what_they_sent() {
    let sink = Shared::default();
    let server = start(sink.clone());
    let mut client = connect_greeted(server.addr);
    let me = client.local_addr().expect("addr");
    client.write_all(b"wong says: still here").expect("send");
    wait_until("the frame", || sink.has_line("<21:wong says: still here>"));
    server.stop().expect("run");
    // The server closed the connection, and said so, after the frame.
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).expect("the server closes");
    let out = String::from_utf8(sink.bytes()).expect("text");
    assert_eq!(
        out,
        format!("Connection from:  {me}\n<21:wong says: still here>\nClosed connection:  {me}\n")
    );
}

/// A sink that can no longer be written (a closed pipe).
struct Broken;

impl Write for Broken {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::ErrorKind::BrokenPipe.into())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_sink_that_fails_stops_the_server() {
    let server = start(Broken);
    let mut client = connect_greeted(server.addr);
    client.write_all(b"wong says: nobody hears this").expect("send");
    // No stop asked for: the writer's failure stops the server by itself.
    wait_until("the server to stop", || server.thread.is_finished());
    let err = server
        .thread
        .join()
        .expect("server thread")
        .expect_err("a failed sink is an error");
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).expect("the server closes");
}
