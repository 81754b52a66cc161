//! `--metrics`: a real Prometheus scrapes the endpoint and reads back what a
//! known workload did, exactly; `promtool` checks a scrape and the shipped
//! alert rules; hostile scrapers (slow, huge, many, not GET) cannot hurt the
//! server; a scrape answers while stdout is blocked; under `--workers` the
//! counts never go backwards across a worker's restart. Prometheus and
//! promtool come from Debian's `prometheus` package (with `CI=1` a missing
//! one fails the test instead of skipping it).

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use util::{PATIENCE, ServerProcess, connect_greeted};

/// How to get Prometheus and promtool on Debian and Ubuntu.
const INSTALL: &str = "sudo apt-get install -y prometheus";

/// `GET path` on `addr`: the status code and the body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics port");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("response");
    let text = String::from_utf8_lossy(&response).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    (code, body)
}

/// The value of the sample `name` (with its labels, as the text format
/// writes them) in a scrape.
fn sample(scrape: &str, name: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Waits until a scrape of `metrics` satisfies `ok`; returns it.
fn scrape_until(metrics: SocketAddr, what: &str, mut ok: impl FnMut(&str) -> bool) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (code, body) = get(metrics, "/metrics");
        assert_eq!(code, 200, "{body}");
        if ok(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "waited for {what}:\n{body}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A server with `--metrics` on a port of its own choosing (0), and the
/// address it says it serves them on.
fn start(args: &[&str]) -> (ServerProcess, SocketAddr) {
    let mut all = vec!["--metrics", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let server = ServerProcess::start(&all);
    let metrics = metrics_addr(&server.stderr);
    (server, metrics)
}

/// The address of the metrics endpoint, from the line that announces it.
fn metrics_addr(stderr: &util::Captured) -> SocketAddr {
    let mut addr = None;
    let said = stderr.wait_for(PATIENCE, |err| {
        let text = String::from_utf8_lossy(err);
        addr = text
            .split("metrics on http://")
            .nth(1)
            .and_then(|rest| rest.split("/metrics").next()?.parse().ok());
        addr.is_some()
    });
    assert!(said, "no metrics address announced\n{}", stderr.text());
    addr.unwrap_or_else(|| panic!("no metrics address"))
}

/// Everything `stream` gets until the server closes it.
fn read_all(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    got
}

/// A Prometheus server of the test's own, killed when dropped.
struct Prometheus {
    child: std::process::Child,
    dir: std::path::PathBuf,
    addr: SocketAddr,
    log: std::sync::Arc<util::Captured>,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second.
    fn start(target: SocketAddr) -> Prometheus {
        let dir = std::env::temp_dir().join(format!(
            "simple_tcp_server-prometheus-{}-{}",
            std::process::id(),
            target.port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory for Prometheus");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: stcp\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .expect("write the config");
        let addr: SocketAddr = format!("127.0.0.1:{}", util::free_port()).parse().expect("addr");
        let mut command = Command::new(util::find_program("prometheus").expect("prometheus"));
        command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        util::die_with_the_test(&mut command);
        let mut child = command.spawn().expect("start prometheus");
        let log = util::Captured::spawn(child.stderr.take().expect("stderr"));
        Prometheus { child, dir, addr, log }
    }

    /// The value Prometheus's query API gives for `query`, once it has one.
    fn query(&self, query: &str) -> Option<f64> {
        let encoded: String = query
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let mut stream = TcpStream::connect(self.addr).ok()?;
        stream.set_read_timeout(Some(PATIENCE)).ok()?;
        write!(
            stream,
            "GET /api/v1/query?query={encoded} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).ok()?;
        let text = String::from_utf8_lossy(&response);
        let (_, body) = text.split_once("\r\n\r\n")?;
        let json: serde_json::Value = serde_json::from_str(body).ok()?;
        json["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Waits until `query` gives `want`.
    fn wait_for(&self, query: &str, want: f64) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let got = self.query(query);
            if got == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus says {got:?} for {query}, not {want}\n{}",
                self.log.text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn prometheus_reads_back_exactly_what_a_known_workload_did() {
    if !util::have_program(
        "prometheus",
        INSTALL,
        "prometheus_reads_back_exactly_what_a_known_workload_did",
    ) {
        return;
    }
    let (server, metrics) = start(&["--max-connections", "3", "--deny", "127.0.0.9"]);
    let prometheus = Prometheus::start(metrics);
    // One denied (before the cap fills: the cap is checked first).
    let mut denied = util::connect_from("127.0.0.9", server.addr);
    assert_eq!(read_all(&mut denied), b"", "denied: no greeting");
    // Three served, each with a known message.
    let mut served = Vec::new();
    let mut bytes = 0;
    for i in 0..3 {
        let mut client = connect_greeted(server.addr);
        let msg = format!("message number {i}");
        client.write_all(msg.as_bytes()).expect("send");
        bytes += msg.len();
        served.push(client);
    }
    server.wait_lines("<", 3);
    // Two turned away at the cap.
    for _ in 0..2 {
        let mut over = TcpStream::connect(server.addr).expect("connect");
        over.set_read_timeout(Some(PATIENCE)).expect("timeout");
        assert!(read_all(&mut over).starts_with(b"ERR server full"));
    }
    let expected = [
        ("simple_tcp_server_connections_accepted_total", 3.0),
        ("sum(simple_tcp_server_connections_open)", 3.0),
        ("simple_tcp_server_connections_max", 3.0),
        ("simple_tcp_server_clients_refused_total{reason=\"full\"}", 2.0),
        ("simple_tcp_server_clients_refused_total{reason=\"denied\"}", 1.0),
        ("simple_tcp_server_received_bytes_total", bytes as f64),
        ("simple_tcp_server_frames_received_total", 3.0),
        ("simple_tcp_server_transcript_lines_total", 1.0 + 3.0 + 3.0),
        ("simple_tcp_server_connections_closed_total{reason=\"eof\"}", 0.0),
    ];
    for (query, want) in expected {
        prometheus.wait_for(query, want);
    }
    // The clients leave: closed by end of file, all three.
    drop(served);
    server.wait_lines("Closed connection:  ", 3);
    prometheus.wait_for("simple_tcp_server_connections_closed_total{reason=\"eof\"}", 3.0);
    prometheus.wait_for("sum(simple_tcp_server_connections_open)", 0.0);
    let transcript_bytes = server.stdout.bytes().len() as f64;
    prometheus.wait_for("simple_tcp_server_transcript_bytes_total", transcript_bytes);
}

#[test]
fn promtool_finds_nothing_wrong_with_a_scrape_or_the_alert_rules() {
    if !util::have_program(
        "promtool",
        INSTALL,
        "promtool_finds_nothing_wrong_with_a_scrape_or_the_alert_rules",
    ) {
        return;
    }
    let promtool = util::find_program("promtool").expect("promtool");
    for args in [&[][..], &["--workers", "2"][..], &["--threads", "2"][..]] {
        let (server, metrics) = start(args);
        let client = connect_greeted(server.addr);
        let scrape = scrape_until(metrics, "the client counted", |s| {
            sample(s, "simple_tcp_server_connections_accepted_total") == Some(1.0)
        });
        drop(client);
        let mut check = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run promtool");
        check
            .stdin
            .take()
            .expect("stdin")
            .write_all(scrape.as_bytes())
            .expect("feed promtool");
        let out = check.wait_with_output().expect("promtool");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.trim().is_empty(),
            "{args:?}: {said}\n{scrape}"
        );
    }
    let contrib = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/prometheus");
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts_test.yml"],
        vec!["check", "config", "prometheus.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(&args)
            .current_dir(contrib)
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn hostile_scrapers_neither_hold_the_endpoint_nor_touch_the_clients() {
    let (server, metrics) = start(&[]);
    let base_fds = server.open_fds();
    // A slowloris: half a request, then nothing. It is closed at the
    // endpoint's deadline (5 s), well before this read's own (15 s).
    let mut slow = TcpStream::connect(metrics).expect("connect");
    slow.write_all(b"GET /metr").expect("half a request");
    let slow_reader = std::thread::spawn(move || {
        slow.set_read_timeout(Some(Duration::from_secs(15))).expect("timeout");
        let mut byte = [0u8; 1];
        slow.read(&mut byte).map_err(|e| e.kind())
    });
    // A request line longer than the endpoint takes: told so.
    let mut long = TcpStream::connect(metrics).expect("connect");
    long.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let line = [b"GET /".as_slice(), &[b'a'; 9000]].concat();
    long.write_all(&line).expect("a long request line");
    let mut answer = Vec::new();
    let _ = long.read_to_end(&mut answer);
    assert!(
        answer.starts_with(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    // A megabyte of request line: nothing hangs.
    let mut huge = TcpStream::connect(metrics).expect("connect");
    huge.set_write_timeout(Some(PATIENCE)).expect("timeout");
    let _ = huge.write_all(&[b"GET /".as_slice(), &vec![b'a'; 1 << 20]].concat());
    drop(huge);
    // A thousand idle connections at once, held.
    let crowd: Vec<TcpStream> = (0..1000).filter_map(|_| TcpStream::connect(metrics).ok()).collect();
    // A real scraper still gets its answer while they are held...
    let (code, body) = get(metrics, "/metrics");
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("simple_tcp_server_connections_accepted_total 0\n"),
        "{body}"
    );
    // ...the server's own clients are served all the while...
    let mut client = connect_greeted(server.addr);
    client.write_all(b"served meanwhile").expect("send");
    server.wait_text("<16:served meanwhile>");
    // ...and the endpoint holds at most its 16 scrapers' descriptors.
    let held = server.open_fds();
    assert!(
        held <= base_fds + 16 + 2,
        "{held} descriptors, {base_fds} before: the crowd is not bounded"
    );
    drop(crowd);
    // Anything but GET or HEAD is 405; any other path 404.
    let mut post = TcpStream::connect(metrics).expect("connect");
    post.set_read_timeout(Some(PATIENCE)).expect("timeout");
    post.write_all(b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        .expect("send");
    let mut answer = Vec::new();
    let _ = post.read_to_end(&mut answer);
    assert!(answer.starts_with(b"HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, HEAD\r\n"));
    assert_eq!(get(metrics, "/").0, 404);
    // The slowloris was closed, not left to time out on its side. (The
    // endpoint may have closed it earlier still, making room for the crowd.)
    let slow = slow_reader.join().expect("the slow reader");
    assert!(
        matches!(slow, Ok(0) | Err(std::io::ErrorKind::ConnectionReset)),
        "the slowloris was not closed: {slow:?}"
    );
}

#[test]
fn a_scrape_answers_while_stdout_is_blocked_and_says_for_how_long() {
    let (mut child, _stdout, stderr, addr) = util::start_unread(
        std::path::Path::new(util::bin("simple_tcp_server")),
        &["--metrics", "127.0.0.1:0"],
    );
    let metrics = metrics_addr(&stderr);
    let mut flood = connect_greeted(addr);
    let writer = std::thread::spawn(move || {
        let block = vec![b'x'; 64 * 1024];
        while flood.write_all(&block).is_ok() {}
    });
    util::wait_until("the server blocked on stdout", || {
        util::blocked_writing_stdout(child.id() as i32)
    });
    let scrape = scrape_until(metrics, "stdout blocked for a while", |s| {
        sample(s, "simple_tcp_server_stdout_blocked_seconds").is_some_and(|b| b > 0.2)
    });
    assert!(
        sample(&scrape, "simple_tcp_server_transcript_backlog_bytes").is_some_and(|b| b > 0.0),
        "{scrape}"
    );
    let _ = child.kill();
    let _ = child.wait();
    let _ = writer.join();
}

#[test]
fn under_workers_no_count_goes_back_when_a_worker_is_killed() {
    let (server, metrics) = start(&["--workers", "3", "--tag"]);
    let ready = server.stderr.wait_for(PATIENCE, |err| {
        String::from_utf8_lossy(err).matches(" is ready (pid ").count() >= 3
    });
    assert!(ready, "{}", server.context());
    let mut clients: Vec<TcpStream> = (0..30).map(|_| connect_greeted(server.addr)).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        client
            .write_all(format!("before the kill {i:02}").as_bytes())
            .expect("send");
    }
    server.wait_lines("127.0.0.1:", 30);
    let before = scrape_until(metrics, "30 clients' bytes", |s| {
        sample(s, "simple_tcp_server_frames_received_total") == Some(30.0)
    });
    assert_eq!(sample(&before, "simple_tcp_server_workers_live"), Some(3.0), "{before}");
    // Every line printed is counted, the supervisor's own first line too:
    // `Listening to`, 30 `Connection from` and 30 frames.
    let printed = server.stdout.bytes().iter().filter(|&&b| b == b'\n').count();
    assert_eq!(printed, 61, "{}", server.context());
    scrape_until(metrics, "61 lines counted", |s| {
        sample(s, "simple_tcp_server_transcript_lines_total") == Some(61.0)
    });
    assert_eq!(sample(&before, "simple_tcp_server_worker_restarts_total"), Some(0.0));
    let victim = util::children(server.pid())[0];
    // SAFETY: kill has no memory effects; the worker is the server's child.
    assert_eq!(unsafe { libc::kill(victim, libc::SIGKILL) }, 0);
    let after = scrape_until(metrics, "the restart", |s| {
        sample(s, "simple_tcp_server_worker_restarts_total") == Some(1.0)
            && sample(s, "simple_tcp_server_workers_live") == Some(3.0)
    });
    // Every counter is at least what it was: the dead worker's counts stay.
    for line in before.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if !name.contains("_total") {
            continue;
        }
        let was: f64 = value.parse().expect("a number");
        let now = sample(&after, name).unwrap_or_else(|| panic!("{name} gone\n{after}"));
        assert!(now >= was, "{name}: {was} before, {now} after\n{after}");
    }
    let lost = sample(
        &after,
        "simple_tcp_server_connections_closed_total{reason=\"worker_died\"}",
    );
    assert!(lost.is_some_and(|n| n >= 1.0), "{after}");
}
