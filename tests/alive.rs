//! Connections held alive at small scale: a chat rate spread over a few
//! thousand held connections under `--workers`, every message printed
//! exactly once (by its identifier), the latency probe beside it, and
//! `scripts/alive.py` end to end.

mod util;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use simple_tcp_server::load::ChatId;
use util::{Captured, PATIENCE};

/// A file the server's transcript goes to, removed when the test ends.
struct TempFile(PathBuf);

impl TempFile {
    fn new(what: &str) -> TempFile {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        TempFile(std::env::temp_dir().join(format!("stcp-alive-{}-{what}-{n}.out", std::process::id())))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The server with its stdout to `transcript` (a file, as the probe needs).
struct FileServer {
    child: Child,
    stderr: Arc<Captured>,
    port: u16,
}

impl FileServer {
    fn start(transcript: &TempFile, args: &[&str], workers: usize) -> FileServer {
        let out = File::create(&transcript.0).expect("create the transcript file");
        let mut command = Command::new(util::bin("simple_tcp_server"));
        util::die_with_the_test(&mut command);
        let mut child = command
            .args(["127.0.0.1", "0"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the server");
        let stderr = Captured::spawn(child.stderr.take().expect("stderr pipe"));
        let deadline = Instant::now() + PATIENCE;
        let port = loop {
            let text = std::fs::read_to_string(&transcript.0).unwrap_or_default();
            if let Some(line) = text.lines().next()
                && let Ok(addr) = util::listening_addr(line)
            {
                break addr.port();
            }
            assert!(Instant::now() < deadline, "no Listening line\n{}", stderr.text());
            std::thread::sleep(Duration::from_millis(10));
        };
        // Under --workers, a worker's clients wait until it is ready.
        if workers > 1 {
            let ready = stderr.wait_for(PATIENCE, |err| {
                String::from_utf8_lossy(err).matches(" is ready").count() >= workers
            });
            assert!(ready, "workers not ready\n{}", stderr.text());
        }
        FileServer { child, stderr, port }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGTERM, and its exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: kill has no memory effects; the child is ours and not yet reaped.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the server") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not exit\n{}",
                self.stderr.text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn tcp_load(port: u16, args: &[&str]) -> Command {
    let mut command = Command::new(util::bin("tcp_load"));
    util::die_with_the_test(&mut command);
    command
        .args(["--port", &port.to_string(), "--json", "--quiet", "--timeout", "60s"])
        .args(args);
    command
}

/// A number field of a JSON line.
fn field(json: &str, name: &str) -> f64 {
    let key = format!("\"{name}\":");
    let at = json.find(&key).unwrap_or_else(|| panic!("no {name} in {json}")) + key.len();
    let rest = &json[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a number in {json}"))
}

fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// How many times each chat identifier is in the transcript.
fn chat_ids(transcript: &[u8]) -> BTreeMap<(u16, u64), usize> {
    let mut ids = BTreeMap::new();
    for (_, _, text) in util::frames_of(transcript) {
        if let Some(id) = ChatId::parse(&text) {
            *ids.entry((id.proc_index, id.seq)).or_insert(0) += 1;
        }
    }
    ids
}

#[test]
fn a_rate_spread_over_held_connections_prints_every_message_once_and_the_probe_times_them() {
    util::raise_fd_limit();
    let transcript = TempFile::new("chat");
    let server = FileServer::start(&transcript, &["--workers", "2"], 2);
    let pid = server.pid().to_string();
    // 3,000 held by two generator processes, 1,000 messages a second round
    // robin over all of them for 3 s: every connection speaks exactly once.
    let args = "--procs 2 --announce chat --conns 3000 --rate 1000 --secs 3s";
    let mut chat = tcp_load(server.port, &args.split(' ').collect::<Vec<_>>())
        .args(["--server-pid", &pid])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tcp_load chat");
    let chat_err = Captured::spawn(chat.stderr.take().expect("stderr pipe"));
    // The probe goes beside the chat once every connection is up.
    let up = chat_err.wait_for(PATIENCE, |err| {
        String::from_utf8_lossy(err).contains("tcp_load: all 3000 connections are up")
    });
    assert!(up, "{}", chat_err.text());
    let path = transcript.0.to_string_lossy().into_owned();
    let probe = tcp_load(
        server.port,
        &["probe", "--transcript", &path, "--rate", "100", "--secs", "1s"],
    )
    .output()
    .expect("run the probe");
    let chat = chat.wait_with_output().expect("wait for tcp_load chat");
    let (chat_json, probe_json) = (stdout_of(&chat), stdout_of(&probe));
    assert!(chat.status.success(), "{chat_json}\n{}", chat_err.text());
    assert!(
        probe.status.success(),
        "{probe_json}\n{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    assert!(server.stop().success());

    // The generator's report: all 3,000 sent, and acknowledged by the
    // server closing each connection after reading it all.
    assert_eq!(field(&chat_json, "messages"), 3000.0, "{chat_json}");
    assert_eq!(field(&chat_json, "messages_acked"), 3000.0, "{chat_json}");
    assert_eq!(field(&chat_json, "established"), 3000.0, "{chat_json}");

    // The transcript: every identifier each process sent (numbered from 0,
    // no gaps), exactly once, and nothing else.
    let out = std::fs::read(&transcript.0).expect("read the transcript");
    util::assert_lines_whole(&out);
    let ids = chat_ids(&out);
    let mut per_process: BTreeMap<u16, u64> = BTreeMap::new();
    for (&(proc_index, _), &count) in &ids {
        assert_eq!(count, 1, "a message printed {count} times");
        *per_process.entry(proc_index).or_insert(0) += 1;
    }
    assert_eq!(per_process.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
    for (&proc_index, &n) in &per_process {
        for seq in 0..n {
            assert!(
                ids.contains_key(&(proc_index, seq)),
                "process {proc_index} message {seq} missing"
            );
        }
    }
    assert_eq!(ids.len(), 3000);
    // Spread evenly: each of the 3,000 connections (a process and its
    // connection key, `cKKKKK`) sent exactly one.
    let mut per_connection: BTreeMap<(u16, Vec<u8>), usize> = BTreeMap::new();
    for (_, _, text) in util::frames_of(&out) {
        if let Some(id) = ChatId::parse(&text) {
            *per_connection.entry((id.proc_index, text[..6].to_vec())).or_insert(0) += 1;
        }
    }
    assert_eq!(per_connection.len(), 3000);
    assert!(per_connection.values().all(|&n| n == 1));

    // The probe: 100 messages, each found once, latencies in order.
    assert_eq!(field(&probe_json, "sent"), 100.0, "{probe_json}");
    assert_eq!(field(&probe_json, "printed"), 100.0, "{probe_json}");
    assert_eq!(field(&probe_json, "missing"), 0.0, "{probe_json}");
    assert_eq!(field(&probe_json, "duplicates"), 0.0, "{probe_json}");
    let (p50, p99, p999, max) = (
        field(&probe_json, "p50_ms"),
        field(&probe_json, "p99_ms"),
        field(&probe_json, "p999_ms"),
        field(&probe_json, "max_ms"),
    );
    assert!(p50 > 0.0 && p50 <= p99 && p99 <= p999 && p999 <= max, "{probe_json}");
    let probe_lines = util::frames_of(&out)
        .iter()
        .filter(|(_, len, text)| *len == 25 && text.starts_with(b"probe "))
        .count();
    assert_eq!(probe_lines, 100);
}

#[test]
fn a_probe_whose_lines_never_show_is_not_clean() {
    // The server prints to one file; the probe watches another, which
    // stays empty: every message is missing, and the probe says so.
    let printed = TempFile::new("printed");
    let watched = TempFile::new("watched");
    File::create(&watched.0).expect("create the watched file");
    let server = FileServer::start(&printed, &[], 1);
    let path = watched.0.to_string_lossy().into_owned();
    let args = [
        "probe",
        "--transcript",
        &path,
        "--rate",
        "20",
        "--secs",
        "500ms",
        "--wait",
        "300ms",
    ];
    let probe = tcp_load(server.port, &args).output().expect("run the probe");
    let json = stdout_of(&probe);
    assert_eq!(probe.status.code(), Some(1), "{json}");
    assert_eq!(field(&json, "sent"), 10.0, "{json}");
    assert_eq!(field(&json, "missing"), 10.0, "{json}");
    assert!(json.contains("\"ok\":false") && json.contains("not printed"), "{json}");
    assert!(json.contains("\"p50_ms\":null"), "no latency without a line: {json}");
    // They were printed, where the server prints (all of it, once it has
    // stopped).
    assert!(server.stop().success());
    let out = std::fs::read(&printed.0).expect("read the transcript");
    assert_eq!(
        util::frames_of(&out)
            .iter()
            .filter(|f| f.2.starts_with(b"probe "))
            .count(),
        10
    );

    // A transcript that is not there is a clear error.
    let args = ["probe", "--transcript", "/nonexistent/transcript", "--secs", "1s"];
    let missing = tcp_load(1, &args).output().expect("run the probe");
    let err = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot open /nonexistent/transcript"), "{err}");
    // Usage errors: the probe runs as one process, never spins, sends at
    // least one message; a chat message number must fit its 25 bytes.
    for args in [
        &["--procs", "2", "probe", "--transcript", &path, "--secs", "1s"][..],
        &["probe", "--transcript", &path, "--secs", "1s", "--poll", "0s"],
        &["probe", "--transcript", &path, "--secs", "1s", "--wait", "0s"],
        &["probe", "--transcript", &path, "--secs", "0s"],
        &["chat", "--conns", "1", "--rate", "100000000", "--secs", "2s"],
    ] {
        let run = tcp_load(1, args).output().expect("run tcp_load");
        let err = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn a_probe_that_cannot_measure_says_why_and_stops() {
    let printed = TempFile::new("printed");
    let server = FileServer::start(&printed, &["--max-connections", "2"], 1);
    let path = printed.0.to_string_lossy().into_owned();

    // A rate no machine reaches: the probe stops sending once --secs and
    // its grace are over, and says the rate was out of reach. (Its messages
    // queue up, so a read of the server's may end inside one and print it
    // in two frames: found, missing or cut short, each is counted once.)
    let rest = "--clients 1 --rate 100000000 --secs 1s --wait 2s";
    let args = [
        &["probe", "--transcript", &path][..],
        &rest.split(' ').collect::<Vec<_>>(),
    ]
    .concat();
    let probe = tcp_load(server.port, &args).output().expect("run the probe");
    let json = stdout_of(&probe);
    assert_eq!(probe.status.code(), Some(1), "{json}");
    assert!(json.contains("the rate was out of reach"), "{json}");
    let sent = field(&json, "sent");
    assert!(sent > 0.0 && sent < 100_000_000.0, "{json}");
    let counted = field(&json, "printed") + field(&json, "missing") + field(&json, "split");
    assert_eq!(counted, sent, "{json}");
    assert_eq!(field(&json, "duplicates"), 0.0, "{json}");

    // A server that turns the probe away: the line it sent, not a bare
    // broken pipe. Two held clients fill the cap (once the server has
    // closed the probe's own connection, which may take a moment).
    let mut held = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while held.len() < 2 {
        let mut client = std::net::TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
        let mut greeting = [0u8; 3];
        std::io::Read::read_exact(&mut client, &mut greeting).expect("a greeting");
        if &greeting != b"ERR" {
            held.push(client);
        } else {
            assert!(Instant::now() < deadline, "no room for two clients");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let args = ["probe", "--transcript", &path, "--secs", "1s"];
    let refused = tcp_load(server.port, &args).output().expect("run the probe");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(
        err.contains("turned the probe away: ERR server full, try again later\n"),
        "{err}"
    );
    drop(held);

    // A FIFO is no transcript to read on from (and opening one with no
    // writer would wait forever): a clear error, at once.
    let fifo = TempFile::new("fifo");
    let c_path = std::ffi::CString::new(fifo.0.to_string_lossy().as_bytes()).expect("a path");
    // SAFETY: mkfifo reads a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
    let fifo_path = fifo.0.to_string_lossy().into_owned();
    let args = ["probe", "--transcript", &fifo_path, "--secs", "1s"];
    let on_fifo = tcp_load(server.port, &args).output().expect("run the probe");
    let err = String::from_utf8_lossy(&on_fifo.stderr);
    assert_eq!(on_fifo.status.code(), Some(1), "{err}");
    assert!(err.contains("is not a regular file"), "{err}");
    assert!(server.stop().success());
}

/// Prints the fields the script test checks, `name=value` a line.
const FIELDS: &str = r#"
import json, sys
r = json.load(open(sys.argv[1]))
run = r["runs"][0]
for k in ("held", "sent", "acked", "printed_once", "printed_distinct", "processes_seen", "duplicates",
          "missing", "gaps", "errors", "server_exit"):
    print(f"{k}={run[k]}")
for k in ("sent", "printed", "missing", "duplicates", "p99_ms"):
    print(f"probe_{k}={run['probe'][k]}")
print(f"run_ok={run['ok']}")
print(f"ok={r['ok']}")
"#;

#[test]
fn the_alive_script_checks_every_message_and_reports_the_probe() {
    if !util::have_program(
        "python3",
        "apt-get install -y python3",
        "scripts/alive.py at small scale",
    ) {
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let out = TempFile::new("script-json");
    let path = out.0.to_string_lossy().into_owned();
    let bin_dir = std::path::Path::new(util::bin("tcp_load")).parent().expect("bin dir");
    // The generator at the server's niceness (0): on a loaded test machine,
    // nice 10 could starve it past its pacing grace.
    let args = "--runs 2000:200::0 --secs 3 --workers 2 --procs 2 --no-build --keep-free-fds 0 --keep-free-gib 0";
    let run = Command::new("python3")
        .arg(format!("{root}/scripts/alive.py"))
        .args(args.split(' '))
        .args(["--out", &path])
        .env("STCP_BIN_DIR", bin_dir)
        .output()
        .expect("run scripts/alive.py");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "{stderr}\n{}",
        String::from_utf8_lossy(&run.stdout)
    );
    // The run's own fields, read by a JSON parser.
    let fields = Command::new("python3")
        .args(["-c", FIELDS, &path])
        .output()
        .expect("read the script's JSON");
    let fields = String::from_utf8_lossy(&fields.stdout).into_owned();
    let got: BTreeMap<&str, &str> = fields.lines().filter_map(|l| l.split_once('=')).collect();
    let json = std::fs::read_to_string(&out.0).unwrap_or_default();
    // One run over 2,000 held: every message the generator sent printed
    // exactly once, from both its processes; every probe message found and
    // its latency reported; the server's exit clean; the whole run ok.
    assert_eq!(got.get("held"), Some(&"2000"), "{json}");
    let sent: u64 = got.get("sent").and_then(|s| s.parse().ok()).unwrap_or(0);
    assert!(sent > 0, "{json}");
    for (name, want) in [
        ("acked", sent.to_string()),
        ("printed_once", sent.to_string()),
        ("printed_distinct", sent.to_string()),
        ("processes_seen", "2".into()),
        ("duplicates", "0".into()),
        ("missing", "0".into()),
        ("gaps", "0".into()),
        ("errors", "0".into()),
        ("server_exit", "0".into()),
        ("probe_missing", "0".into()),
        ("probe_duplicates", "0".into()),
        ("run_ok", "True".into()),
        ("ok", "True".into()),
    ] {
        assert_eq!(got.get(name).copied(), Some(want.as_str()), "{name}\n{json}");
    }
    assert_eq!(got.get("probe_sent"), got.get("probe_printed"), "{json}");
    let p99: f64 = got.get("probe_p99_ms").and_then(|s| s.parse().ok()).unwrap_or(0.0);
    assert!(p99 > 0.0, "{json}");
}
