//! SIGTERM while clients are sending: exit 0, everything received printed,
//! a summary on stderr that matches the transcript.

mod util;

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use util::{ServerProcess, connect_greeted, frames_of, streams_by_client};

/// The number before `word` in `text`: `12 frames` gives 12 for "frames".
fn number_before(text: &str, word: &str) -> u64 {
    let at = text
        .find(&format!(" {word}"))
        .unwrap_or_else(|| panic!("no {word:?} in {text:?}"));
    text[..at]
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a number")
}

#[test]
fn sigterm_while_clients_send_prints_everything_and_exits_zero() {
    let mut server = ServerProcess::start(&["--tag"]);
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..10)
        .map(|i| {
            let stop = Arc::clone(&stop);
            let mut client: TcpStream = connect_greeted(server.addr);
            thread::spawn(move || {
                let me = client.local_addr().expect("addr").to_string();
                let mut sent = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let msg = format!("client {i} message {n}\n");
                    if client.write_all(msg.as_bytes()).is_err() {
                        break;
                    }
                    sent.extend_from_slice(msg.as_bytes());
                    n += 1;
                    if n.is_multiple_of(64) {
                        thread::sleep(Duration::from_millis(1));
                    }
                }
                (me, sent)
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(10));
    stop.store(true, Ordering::Relaxed);
    assert!(status.success(), "exit status {status}\n{}", server.context());

    let out = server.stdout.bytes();
    let streams = streams_by_client(&out);
    let mut printed = 0u64;
    for sender in senders {
        let (me, sent) = sender.join().expect("sender");
        let got = streams.get(&me).cloned().unwrap_or_default();
        assert!(!got.is_empty(), "nothing printed for {me}");
        assert!(
            sent.starts_with(&got),
            "{me}: printed bytes are not what it sent, in order"
        );
        printed += got.len() as u64;
    }
    let stderr = server.stderr.text();
    let summary = stderr
        .lines()
        .find(|l| l.contains("summary:"))
        .unwrap_or_else(|| panic!("no summary\n{stderr}"));
    assert_eq!(number_before(summary, "bytes"), printed, "{summary}");
    assert_eq!(
        number_before(summary, "frames"),
        frames_of(&out).len() as u64,
        "{summary}"
    );
    assert_eq!(number_before(summary, "connections"), 10, "{summary}");
    assert_eq!(util::count_lines(&out, "Closed connection:"), 10);
    assert!(!stderr.contains("panicked"));
}

#[test]
fn sigint_stops_an_idle_server_cleanly() {
    let mut server = ServerProcess::start(&[]);
    server.signal(libc::SIGINT);
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{}", server.context());
    assert!(
        server.stderr.text().contains("summary: 0 connections"),
        "{}",
        server.context()
    );
}
