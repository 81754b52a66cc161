//! `--format json` on the real binary: every line of the transcript parses,
//! with `jq` (the Debian package) and with the crate's own reader; every
//! byte a client sends comes back exactly (all 256 byte values in many write
//! splits, random bytes from several clients at once); frames are cut
//! exactly as the text format cuts them.
//!
//! Without `jq` the jq checks are skipped with one note saying how to
//! install it, unless `CI` is set: then the tests fail.

mod util;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use simple_tcp_server::output::json::{Event, EventKind, parse_line};
use util::{ChildProcess, PATIENCE, Rng, ServerProcess, connect_greeted, contains, frames_of, have_program, send};

/// How to get `jq` on Debian and Ubuntu.
const JQ_INSTALL: &str = "apt-get install -y jq";
/// What is skipped without `jq`.
const JQ_SKIPPED: &str = "the jq checks of tests/json.rs";

/// How far a timestamp may be from the test's own clock: wide enough for a
/// slow machine, narrow enough to catch a wrong epoch or a local time.
const CLOCK_SLACK: Duration = Duration::from_secs(300);

/// Every line of a JSON transcript, parsed by the crate's reader.
fn events(out: &[u8]) -> Vec<Event> {
    let text = std::str::from_utf8(out).expect("a JSON transcript is UTF-8");
    assert!(text.is_empty() || text.ends_with('\n'), "a partial last line");
    text.lines()
        .map(|l| parse_line(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Complete lines of `out` that report `kind`. The raw `"event":"frame"`
/// can only be the field: a `"` inside a frame's text is escaped.
fn count_events(out: &[u8], kind: EventKind) -> usize {
    let needle = format!("\"event\":\"{}\"", kind.name());
    let Some(end) = out.iter().rposition(|&b| b == b'\n') else {
        return 0;
    };
    out[..end]
        .split(|&b| b == b'\n')
        .filter(|l| contains(l, needle.as_bytes()))
        .count()
}

/// Waits until the transcript holds `n` events of `kind`.
fn wait_events(server: &ServerProcess, kind: EventKind, n: usize) {
    let ok = server.stdout.wait_for(PATIENCE, |out| count_events(out, kind) >= n);
    assert!(ok, "waited for {n} {} events\n{}", kind.name(), server.context());
}

/// Runs `jq ARGS` on `input`.
fn jq(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new("jq")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start jq");
    let mut stdin = child.stdin.take().expect("jq stdin");
    let input = input.to_vec();
    // Fed from a thread: jq writes while it reads.
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().expect("run jq");
    feeder.join().expect("feeder thread").expect("write to jq");
    output
}

/// The fields of every line, as jq sees them: exactly the documented
/// keys, a timestamp of the documented form, and for a frame exactly one
/// of `text` (whose UTF-8 length is `len`) and `b64` (of the length
/// standard base64 gives `len` bytes).
const JQ_SHAPE: &str = r#"all(.[];
  (.ts | test("^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{6}Z$"))
  and (if .event == "listening" then keys == ["addr", "event", "ts"]
       elif .event == "connect" or .event == "close" then keys == ["event", "peer", "ts"]
       elif .event == "frame" then
         (.len >= 1) and
         (if has("text") then keys == ["event", "len", "peer", "text", "ts"] and (.text | utf8bytelength) == .len
          else keys == ["b64", "event", "len", "peer", "ts"] and (.b64 | length) == ((.len + 2) / 3 | floor) * 4
          end)
       else false end))"#;

/// Checks a JSON transcript with jq, if it is installed: every line is one
/// JSON object, of the documented shape, and jq reads each timestamp as
/// the second the crate's reader reads. Returns whether jq ran.
fn check_with_jq(out: &[u8], events: &[Event]) -> bool {
    if !have_program("jq", JQ_INSTALL, JQ_SKIPPED) {
        return false;
    }
    let lines = out.iter().filter(|&&b| b == b'\n').count();
    assert_eq!(lines, events.len());

    let compact = jq(&["-c", "."], out);
    assert!(
        compact.status.success(),
        "jq: {}",
        String::from_utf8_lossy(&compact.stderr)
    );
    let objects = compact.stdout.iter().filter(|&&b| b == b'\n').count();
    assert_eq!(objects, lines, "jq read {objects} values from {lines} lines");

    let shape = jq(&["-se", JQ_SHAPE], out);
    assert!(
        shape.status.success(),
        "a line jq finds out of shape: {}{}",
        String::from_utf8_lossy(&shape.stdout),
        String::from_utf8_lossy(&shape.stderr)
    );

    let seconds = jq(&["-r", r#".ts | sub("\\.[0-9]{6}Z$"; "Z") | fromdateiso8601"#], out);
    assert!(
        seconds.status.success(),
        "jq: {}",
        String::from_utf8_lossy(&seconds.stderr)
    );
    let seconds: Vec<u64> = String::from_utf8(seconds.stdout)
        .expect("numbers")
        .lines()
        .map(|l| l.parse().unwrap_or_else(|e| panic!("jq gave {l:?}: {e}")))
        .collect();
    let ours: Vec<u64> = events
        .iter()
        .map(|e| e.ts.duration_since(UNIX_EPOCH).expect("after the epoch").as_secs())
        .collect();
    assert_eq!(seconds, ours, "jq and the crate read the timestamps differently");
    true
}

/// The `text` frames of `peer`, decoded and concatenated by jq.
fn jq_text_of(out: &[u8], peer: SocketAddr) -> Vec<u8> {
    let filter = r#"select(.event == "frame" and .peer == $peer and has("text")) | .text"#;
    let got = jq(&["-j", "--arg", "peer", &peer.to_string(), filter], out);
    assert!(got.status.success(), "jq: {}", String::from_utf8_lossy(&got.stderr));
    got.stdout
}

/// Asserts that every timestamp is near the test's clock.
fn assert_recent(events: &[Event], started: SystemTime) {
    let until = SystemTime::now() + CLOCK_SLACK;
    for e in events {
        assert!(
            e.ts + CLOCK_SLACK >= started && e.ts <= until,
            "timestamp {:?} far from the test's clock",
            e.ts
        );
    }
}

fn nodelay(stream: &TcpStream) {
    stream.set_nodelay(true).expect("TCP_NODELAY");
}

/// One client sends bytes 0..=255 six times over, in writes of 256, 1, 7,
/// 25, 100 and random sizes, each write waited for until its frames are
/// printed (so each is one read block), to a JSON server and to a text
/// server. Both must print exactly the frames each write cut into
/// `max_read`-byte pieces gives, and JSON must keep every byte.
fn all_byte_values_round_trip(max_read: usize) {
    let started = SystemTime::now();
    let all: Vec<u8> = (0..=255u8).collect();
    let mut rng = Rng::new(13);
    let mut writes: Vec<&[u8]> = Vec::new();
    for split in [256, 1, 7, 25, 100, 0] {
        let mut rest = &all[..];
        while !rest.is_empty() {
            let n = if split == 0 { rng.range(1, 60) } else { split }.min(rest.len());
            writes.push(&rest[..n]);
            rest = &rest[n..];
        }
    }
    let expected: Vec<Vec<u8>> = writes
        .iter()
        .flat_map(|w| w.chunks(max_read).map(<[u8]>::to_vec))
        .collect();

    let m = max_read.to_string();
    let json = ServerProcess::start(&["--format", "json", "--max-read", &m]);
    let text = ServerProcess::start(&["--max-read", &m]);
    let mut to_json = connect_greeted(json.addr);
    let mut to_text = connect_greeted(text.addr);
    nodelay(&to_json);
    nodelay(&to_text);
    let peer = to_json.local_addr().expect("local addr");
    let mut frames = 0;
    for w in &writes {
        frames += w.len().div_ceil(max_read);
        send(&mut to_json, w);
        send(&mut to_text, w);
        wait_events(&json, EventKind::Frame, frames);
        text.wait_lines("<", frames);
    }
    to_json.shutdown(Shutdown::Write).expect("shutdown");
    to_text.shutdown(Shutdown::Write).expect("shutdown");
    wait_events(&json, EventKind::Close, 1);
    text.wait_lines("Closed connection:", 1);

    let out = json.stdout.bytes();
    let evs = events(&out);
    let kinds: Vec<EventKind> = evs.iter().map(|e| e.kind).collect();
    let mut want_kinds = vec![EventKind::Listening, EventKind::Connect];
    want_kinds.extend(std::iter::repeat_n(EventKind::Frame, expected.len()));
    want_kinds.push(EventKind::Close);
    assert_eq!(kinds, want_kinds, "\n{}", json.context());
    assert_eq!(evs[0].addr, json.addr);
    assert!(evs[1..].iter().all(|e| e.addr == peer), "every event names the client");
    assert_recent(&evs, started);

    let json_frames: Vec<Vec<u8>> = evs[2..evs.len() - 1].iter().map(|e| e.bytes.clone()).collect();
    assert_eq!(json_frames, expected, "the JSON cut\n{}", json.context());
    let text_frames: Vec<Vec<u8>> = frames_of(&text.stdout.bytes()).into_iter().map(|f| f.2).collect();
    assert_eq!(text_frames, expected, "the text cut\n{}", text.context());
    assert_eq!(json_frames.concat(), all.repeat(6));

    // `text` exactly for the frames that are valid UTF-8.
    let lines: Vec<&[u8]> = out.split(|&b| b == b'\n').skip(2).take(expected.len()).collect();
    for (line, frame) in lines.iter().zip(&expected) {
        let value: serde_json::Value = serde_json::from_slice(line).expect("JSON");
        assert_eq!(
            value.get("text").is_some(),
            std::str::from_utf8(frame).is_ok(),
            "{}",
            String::from_utf8_lossy(line)
        );
    }

    if check_with_jq(&out, &evs) {
        let utf8: Vec<u8> = expected
            .iter()
            .filter(|f| std::str::from_utf8(f).is_ok())
            .flatten()
            .copied()
            .collect();
        assert_eq!(
            jq_text_of(&out, peer),
            utf8,
            "jq decodes the text frames to other bytes"
        );
    }
}

#[test]
fn all_byte_values_round_trip_in_any_write_split() {
    all_byte_values_round_trip(simple_tcp_server::protocol::MAX_READ);
}

#[test]
fn all_byte_values_round_trip_with_small_frames() {
    all_byte_values_round_trip(3);
}

/// `n` bytes of what a hostile or merely international client sends:
/// printable runs, quotes and backslashes, multi-byte and hidden
/// characters, controls, and random bytes.
fn mixed_bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    let pieces: [&[u8]; 9] = [
        b"wong says: the quick brown fox jumps over the lazy dog ",
        b"\"quoted\" and \\back\\slashed ",
        "héllo 世界 🦀 ".as_bytes(),
        "\u{202e}\u{2028}\u{e0041}\u{9b}".as_bytes(),
        b"\x1b[2J\r\n\t\x00\x7f",
        b"{\"ts\":\"forged\",\"event\":\"close\"}\n",
        b"\xff\xfe\xc3",
        b"0123456789012345678901234567890123456789012345678901234567890123456789",
        b"",
    ];
    let mut out = Vec::with_capacity(n + 128);
    while out.len() < n {
        match rng.range(0, 3) {
            0 => {
                let len = rng.range(1, 40);
                out.extend(rng.bytes(len));
            }
            _ => out.extend_from_slice(pieces[rng.range(0, pieces.len() - 1)]),
        }
    }
    out.truncate(n);
    out
}

#[test]
fn random_bytes_from_several_clients_round_trip() {
    /// Clients sending at once, over two reactors.
    const CLIENTS: u64 = 6;
    /// Bytes each sends.
    const BYTES: usize = 64 * 1024;
    let started = SystemTime::now();
    let server = ServerProcess::start(&["--format", "json", "--threads", "2"]);
    let addr = server.addr;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            std::thread::spawn(move || {
                let mut rng = Rng::new(100 + i);
                let data = mixed_bytes(&mut rng, BYTES);
                let mut stream = connect_greeted(addr);
                let peer = stream.local_addr().expect("local addr");
                let mut rest = &data[..];
                while !rest.is_empty() {
                    let n = rng.range(1, 5000).min(rest.len());
                    send(&mut stream, &rest[..n]);
                    rest = &rest[n..];
                }
                stream.shutdown(Shutdown::Write).expect("shutdown");
                // The server closes once it has printed everything.
                let mut tail = Vec::new();
                stream.read_to_end(&mut tail).expect("read to EOF");
                (peer, data)
            })
        })
        .collect();
    let sent: HashMap<SocketAddr, Vec<u8>> = clients.into_iter().map(|c| c.join().expect("client")).collect();
    wait_events(&server, EventKind::Close, CLIENTS as usize);

    let out = server.stdout.bytes();
    let evs = events(&out);
    assert_eq!(evs[0].kind, EventKind::Listening);
    assert_recent(&evs, started);
    // Each client: connect, its frames in order, close.
    let mut got: HashMap<SocketAddr, Vec<u8>> = HashMap::new();
    let mut closed = Vec::new();
    for e in &evs[1..] {
        match e.kind {
            EventKind::Listening => panic!("a second listening line"),
            EventKind::Connect => assert!(got.insert(e.addr, Vec::new()).is_none(), "{} connected twice", e.addr),
            EventKind::Frame => {
                assert!(!closed.contains(&e.addr), "a frame of {} after its close", e.addr);
                assert!((1..=simple_tcp_server::protocol::MAX_READ).contains(&e.bytes.len()));
                got.get_mut(&e.addr)
                    .unwrap_or_else(|| panic!("a frame of {} before its connect", e.addr))
                    .extend_from_slice(&e.bytes);
            }
            EventKind::Close => {
                assert!(got.contains_key(&e.addr), "{} closed before connecting", e.addr);
                closed.push(e.addr);
            }
        }
    }
    assert_eq!(closed.len(), CLIENTS as usize);
    assert_eq!(got.len(), sent.len());
    for (peer, data) in &sent {
        let back = got.get(peer).unwrap_or_else(|| panic!("nothing from {peer}"));
        let first_difference = back.iter().zip(data).position(|(a, b)| a != b);
        assert!(
            back == data,
            "{peer}: sent {} bytes, got {} back, first difference at {first_difference:?}",
            data.len(),
            back.len()
        );
    }
    check_with_jq(&out, &evs);
}

#[test]
fn tag_changes_nothing_in_json() {
    let server = ServerProcess::start(&["--format", "json", "--tag"]);
    let mut client = connect_greeted(server.addr);
    let peer = client.local_addr().expect("local addr");
    send(&mut client, b"wong says: 123");
    wait_events(&server, EventKind::Frame, 1);
    let out = server.stdout.text();
    let line = out.lines().nth(2).expect("a frame line");
    let ts = &line[7..7 + 27];
    assert_eq!(
        line,
        format!(r#"{{"ts":"{ts}","event":"frame","peer":"{peer}","len":14,"text":"wong says: 123"}}"#)
    );
}

#[test]
fn raw_with_json_is_a_usage_error() {
    for (args, says) in [
        (
            &["127.0.0.1", "0", "--format", "json", "--raw"][..],
            "--raw has no meaning with --format json",
        ),
        (
            &["127.0.0.1", "0", "--format", "yaml"][..],
            "invalid value 'yaml' for '--format <FORMAT>'",
        ),
    ] {
        let mut server = ChildProcess::start("simple_tcp_server", args);
        let status = server.wait_exit(PATIENCE);
        let stderr = server.stderr.text();
        assert_eq!(status.code(), Some(2), "{args:?}\n{}", server.context());
        assert!(stderr.starts_with("error: ") && stderr.contains(says), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(server.stdout.text().is_empty());
    }
}

#[test]
fn under_workers_every_line_is_json_from_the_first() {
    let mut server = ServerProcess::start(&["--format", "json", "--workers", "2"]);
    let mut clients: Vec<TcpStream> = (0..8).map(|_| connect_greeted(server.addr)).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        send(client, format!("worker's client {i}").as_bytes());
    }
    drop(clients);
    wait_events(&server, EventKind::Close, 8);
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(PATIENCE).success(), "{}", server.context());
    let out = server.stdout.bytes();
    let evs = events(&out);
    assert_eq!(evs[0].kind, EventKind::Listening, "{}", server.context());
    assert_eq!(evs[0].addr, server.addr);
    assert_eq!(count_events(&out, EventKind::Listening), 1);
    assert_eq!(count_events(&out, EventKind::Frame), 8);
    check_with_jq(&out, &evs);
}
