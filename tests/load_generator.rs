//! tcp_load against the real server, each mode at small scale, 5,000
//! connections held by a separate process, `--procs`, and against
//! hostile servers: a run that is not clean says so and exits 1.

mod peers;
mod util;

use std::process::{Command, Output, Stdio};

use peers::{Behaviour, Peer};
use util::{ChildProcess, PATIENCE, ServerProcess};

/// Runs tcp_load with `args` against `server`, returns its JSON line.
fn tcp_load(server: &ServerProcess, args: &[&str]) -> String {
    let port = server.addr.port().to_string();
    let pid = server.pid().to_string();
    let out = Command::new(util::bin("tcp_load"))
        .args(["--port", &port, "--server-pid", &pid, "--json", "--timeout", "60s"])
        .args(args)
        .output()
        .expect("run tcp_load");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "tcp_load {args:?} failed\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.context()
    );
    assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout}");
    stdout
}

/// A number field of the JSON line.
fn field(json: &str, name: &str) -> f64 {
    let key = format!("\"{name}\":");
    let at = json.find(&key).unwrap_or_else(|| panic!("no {name} in {json}")) + key.len();
    let rest = &json[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a number in {json}"))
}

#[test]
fn hold_5000_connections_from_another_process() {
    let server = ServerProcess::start(&[]);
    let json = tcp_load(&server, &["hold", "--conns", "5000", "--hold", "0s"]);
    assert_eq!(field(&json, "established"), 5000.0, "{json}");
    assert_eq!(field(&json, "greetings"), 5000.0, "{json}");
    assert!(json.contains("\"errors\":{}"), "{json}");
    assert_eq!(field(&json, "server_threads"), 1.0, "{json}");
    // Memory per connection: the server's RSS growth from before the
    // connections to all 5,000 held (tcp_load reads /proc/PID/status), at
    // most the 96 bytes the design promises (32 for the slab entry; the
    // kernel's socket buffers are not process memory).
    let per_conn = field(&json, "rss_per_conn");
    assert!(
        per_conn <= 96.0,
        "{per_conn} bytes of server memory per connection\n{json}"
    );
    // Every message printed: "client N says hello" is 18 to 23 bytes.
    server.wait_lines("Closed connection:", 5000);
    let out = server.stdout.bytes();
    assert_eq!(util::count_lines(&out, "Connection from:"), 5000);
    let frames = util::frames_of(&out);
    assert_eq!(frames.len(), 5000);
    assert!(
        frames
            .iter()
            .all(|(_, _, text)| text.starts_with(b"client ") && text.ends_with(b" says hello"))
    );
    assert_eq!(server.threads(), 1);
}

#[test]
fn measures_a_server_with_four_reactors_as_one_process() {
    // `--threads 4`: tcp_load's --server-pid samples are the process's,
    // so its threads are all four reactors and its memory all of theirs.
    let server = ServerProcess::start(&["--threads", "4"]);
    let json = tcp_load(&server, &["hold", "--conns", "400", "--hold", "0s"]);
    assert_eq!(field(&json, "established"), 400.0, "{json}");
    assert_eq!(field(&json, "greetings"), 400.0, "{json}");
    assert_eq!(field(&json, "server_threads"), 4.0, "{json}");
    assert_eq!(server.threads(), 4, "{json}");
    assert!(
        field(&json, "server_rss_after") >= field(&json, "server_rss_before"),
        "{json}"
    );
    server.wait_lines("Closed connection:", 400);
    // And under flood, where the reactor threads do the work.
    let json = tcp_load(
        &server,
        &["flood", "--conns", "16", "--bytes", "64kB", "--write-size", "16000"],
    );
    assert_eq!(field(&json, "bytes_acked"), 16.0 * 64_000.0, "{json}");
    assert_eq!(field(&json, "server_threads"), 4.0, "{json}");
}

#[test]
fn measures_a_supervisor_with_its_workers() {
    // `--workers 2`: the supervisor holds no connection; its workers do.
    // The samples are of the whole process tree.
    let server = ServerProcess::start(&["--workers", "2"]);
    let ready = server.stderr.wait_for(util::PATIENCE, |err| {
        String::from_utf8_lossy(err).matches(" is ready (pid ").count() == 2
    });
    assert!(ready, "{}", server.context());
    let json = tcp_load(&server, &["hold", "--conns", "2000", "--hold", "0s"]);
    assert_eq!(field(&json, "greetings"), 2000.0, "{json}");
    assert_eq!(field(&json, "server_processes"), 3.0, "{json}");
    assert_eq!(field(&json, "server_threads"), 3.0, "{json}");
    // The workers' growth, not the idle supervisor's few bytes. With only
    // 1,000 connections a worker, whole pages and each worker's slab
    // doubling weigh on the figure (100 B has been seen), so the bound here
    // is loose; the 96-byte promise is asserted in one process at 5,000
    // above and measured at 19,000 and at a million.
    let per_conn = field(&json, "rss_per_conn");
    assert!(
        (8.0..=256.0).contains(&per_conn),
        "{per_conn} bytes per connection\n{json}"
    );
}

#[test]
fn flood_streams_every_byte_through() {
    let mut server = ServerProcess::start(&[]);
    let json = tcp_load(
        &server,
        &["flood", "--conns", "8", "--bytes", "200kB", "--write-size", "7000"],
    );
    assert_eq!(field(&json, "bytes_sent"), 1_600_000.0, "{json}");
    // The rate is the payload over the run's time (elapsed_secs is rounded
    // to the millisecond and taken a moment after the rate's clock stops).
    let floor = 1.6 / (field(&json, "elapsed_secs") + 0.0005);
    assert!(field(&json, "mb_per_sec") >= floor * 0.999, "{json}");
    assert!(json.contains("\"errors\":{}"), "{json}");
    // The server printed exactly what was sent, then closed each connection.
    server.wait_lines("Closed connection:", 8);
    let frames = util::frames_of(&server.stdout.bytes());
    assert_eq!(frames.iter().map(|f| f.1).sum::<usize>(), 1_600_000);
    assert!(frames.iter().all(|f| f.1 <= 25));
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(PATIENCE).success());
}

#[test]
fn chat_paces_messages_and_reports_cpu() {
    let server = ServerProcess::start(&["--tag"]);
    let json = tcp_load(&server, &["chat", "--conns", "50", "--rate", "100", "--secs", "1s"]);
    // R per second for T seconds is exactly R x T (not one short: 98.9/s).
    let messages = field(&json, "messages");
    assert_eq!(messages, 100.0, "{json}");
    assert_eq!(field(&json, "messages_acked"), 100.0, "{json}");
    // The achieved rate is a measurement of time (a loaded machine can wake
    // the generator late for its last message): never above the target.
    let achieved = field(&json, "rate_achieved");
    assert!(achieved > 0.0 && achieved <= 100.0, "{json}");
    // CPU per message and CPU use are one measurement: per message times
    // messages per second is the share of a core (to the JSON's rounding).
    let (per_msg, util, rate) = (
        field(&json, "cpu_us_per_msg"),
        field(&json, "server_cpu_util"),
        field(&json, "rate_achieved"),
    );
    assert!(
        (per_msg * rate / 1e6 - util).abs() <= 0.002 + util * 0.01,
        "{per_msg} us per message at {rate}/s is not {util} of a core\n{json}"
    );
    assert!(json.contains("\"kept_up\":true"), "{json}");
    // Every message the generator wrote is in the transcript.
    let wanted = messages as usize;
    let ok = server.stdout.wait_for(PATIENCE, |out| {
        util::frames_of(out)
            .iter()
            .filter(|f| f.2.windows(6).any(|w| w == b" says:"))
            .count()
            >= wanted
    });
    assert!(ok, "{json}\n{}", server.context());
}

#[test]
fn churn_opens_and_closes_connections_beside_held_ones() {
    let server = ServerProcess::start(&[]);
    let json = tcp_load(&server, &["churn", "--hold", "20", "--rate", "10", "--secs", "1s"]);
    // R per second for T seconds is exactly R x T (not one short: 9).
    let churned = field(&json, "churned");
    assert_eq!(churned, 10.0, "{json}");
    assert_eq!(field(&json, "churn_started"), 10.0, "{json}");
    assert_eq!(field(&json, "held"), 20.0, "{json}");
    assert!(json.contains("\"errors\":{}"), "{json}");
    // Every short-lived connection's message was printed before it closed,
    // and the held ones were closed when tcp_load exited.
    server.wait_lines("Closed connection:", 20 + churned as usize);
    let frames = util::frames_of(&server.stdout.bytes());
    let byes = frames.iter().filter(|f| f.2.ends_with(b" says bye")).count();
    assert_eq!(byes as f64, churned);
}

#[test]
fn bad_arguments_and_own_descriptor_limit_are_clear_errors() {
    let run = |args: &[&str]| {
        Command::new(util::bin("tcp_load"))
            .args(args)
            .output()
            .expect("run tcp_load")
    };
    let out = run(&["hold", "--conns", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a positive number"));
    let out = run(&["flood", "--conns", "1", "--bytes", "lots"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["hold", "--conns", "1000000"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("tcp_load: 1000000 connections need more file descriptors"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));
}

/// Runs tcp_load with `args` (no `--json` added), returns its output.
fn run_load(args: &[&str]) -> Output {
    Command::new(util::bin("tcp_load"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run tcp_load")
}

/// Asserts a run that is not clean: exit 1, one JSON line with
/// `"ok":false` and a reason containing `why`. Returns the line.
fn not_clean(out: &Output, why: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout}\n{stderr}");
    assert!(stdout.starts_with("{\"mode\":"), "{stdout}");
    assert!(stdout.contains("\"ok\":false"), "{stdout}");
    let reason_at = stdout
        .find("\"reason\":\"")
        .unwrap_or_else(|| panic!("no reason in {stdout}"));
    assert!(stdout[reason_at..].contains(why), "reason without {why:?}: {stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stdout
}

// tcp_load's numbers feed the README and every target: a run that is not
// clean must never look like one, and what a run reports must be what
// happened.

#[test]
fn refused_connections_make_a_run_not_clean() {
    let closed = util::closed_port();
    let port = closed.port.to_string();
    let out = run_load(&["--port", &port, "--json", "hold", "--conns", "3", "--hold", "0s"]);
    let json = not_clean(&out, "3 connections failed (refused 3)");
    assert!(json.contains("\"errors\":{\"refused\":3}"), "{json}");
}

#[test]
fn announce_says_how_many_are_up_when_some_were_turned_away() {
    // Four of six fit under the cap: the line must not say "all", alone
    // or added up over generator processes.
    let server = ServerProcess::start(&["--max-connections", "4"]);
    let port = server.addr.port().to_string();
    for procs in ["1", "2"] {
        let args = ["--port", &port, "--procs", procs, "--announce", "--json", "chat"];
        let out = run_load(&[&args[..], &["--conns", "6", "--rate", "10", "--secs", "1s"]].concat());
        not_clean(&out, "2 connections failed (server full 2)");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("tcp_load: 4 of 6 connections are up\n"),
            "--procs {procs}: {stderr}"
        );
        assert!(!stderr.contains("all 6"), "--procs {procs}: {stderr}");
    }
    // A flood connection that is done before the last one is up still
    // counts as up.
    let server = ServerProcess::start(&[]);
    let port = server.addr.port().to_string();
    for procs in ["1", "2"] {
        let args = ["--port", &port, "--procs", procs, "--announce", "--json", "flood"];
        let out = run_load(&[&args[..], &["--conns", "300", "--bytes", "25"]].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "--procs {procs}: {stderr}");
        assert!(
            stderr.contains("tcp_load: all 300 connections are up\n"),
            "--procs {procs}: {stderr}"
        );
    }
}

#[test]
fn chat_against_a_server_that_resets_is_not_kept_up() {
    // The server reads 300 bytes of each connection (about 16 messages),
    // then resets it: the server died for these clients.
    let peer = Peer::start(Behaviour::resets_after(300));
    let port = peer.addr.port().to_string();
    let out = run_load(&[
        "--port",
        &port,
        "--json",
        "--timeout",
        "60s",
        "chat",
        "--conns",
        "4",
        "--rate",
        "400",
        "--secs",
        "1s",
    ]);
    let json = not_clean(&out, "connections failed");
    assert!(json.contains("\"kept_up\":false"), "{json}");
    assert!(peer.resets() > 0);
    assert!(field(&json, "messages_acked") == 0.0, "{json}");
}

#[test]
fn flood_counts_only_bytes_the_server_acknowledged() {
    let peer = Peer::start(Behaviour::resets_after(100_000));
    let port = peer.addr.port().to_string();
    let out = run_load(&[
        "--port",
        &port,
        "--json",
        "--timeout",
        "60s",
        "flood",
        "--conns",
        "2",
        "--bytes",
        "20MB",
    ]);
    let json = not_clean(&out, "connections failed");
    assert_eq!(field(&json, "bytes_acked"), 0.0, "{json}");
    assert_eq!(field(&json, "mb_per_sec"), 0.0, "{json}");
    assert!(field(&json, "bytes_sent") >= 200_000.0, "{json}");
}

#[test]
fn flood_into_a_server_that_never_reads_is_cut_off_and_counts_nothing() {
    // 50 MB cannot fit in the socket buffers: the flood cannot finish.
    let peer = Peer::start(Behaviour::never_reads());
    let port = peer.addr.port().to_string();
    let mut load = ChildProcess::start(
        "tcp_load",
        &[
            "--port",
            &port,
            "--json",
            "--timeout",
            "2s",
            "flood",
            "--conns",
            "1",
            "--bytes",
            "50MB",
        ],
    );
    assert_eq!(load.wait_exit(PATIENCE).code(), Some(1), "{}", load.context());
    let json = load.stdout.text();
    assert!(json.contains("the run did not finish within --timeout 2s"), "{json}");
    assert!(json.contains("\"errors\":{\"timeout\":1}"), "{json}");
    assert_eq!(field(&json, "bytes_acked"), 0.0, "{json}");
    assert_eq!(field(&json, "mb_per_sec"), 0.0, "{json}");
    assert_eq!(peer.accepted(), 1);
}

#[test]
fn timeout_bounds_the_whole_run() {
    let server = ServerProcess::start(&[]);
    let port = server.addr.port().to_string();
    let mut load = ChildProcess::start(
        "tcp_load",
        &[
            "--port",
            &port,
            "--json",
            "--timeout",
            "1s",
            "hold",
            "--conns",
            "2",
            "--hold",
            "60s",
        ],
    );
    let status = load.wait_exit(PATIENCE);
    assert_eq!(status.code(), Some(1), "{}", load.context());
    let json = load.stdout.text();
    assert!(json.contains("the run did not finish within --timeout 1s"), "{json}");
    assert_eq!(field(&json, "established"), 2.0, "{json}");
}

#[test]
fn a_rate_out_of_reach_stops_at_secs_and_says_so() {
    let server = ServerProcess::start(&[]);
    let port = server.addr.port().to_string();
    for mode in [
        // (A chat asks at most 99,999,999 of one process: message numbers
        // have 8 digits.)
        &["chat", "--conns", "10", "--rate", "99000000", "--secs", "1s"][..],
        &["churn", "--rate", "1000000000000", "--secs", "1s"],
    ] {
        let mut args = vec!["--port", &port, "--json", "--quiet", "--timeout", "100s"];
        args.extend_from_slice(mode);
        let mut load = ChildProcess::start("tcp_load", &args);
        let status = load.wait_exit(PATIENCE);
        assert_eq!(status.code(), Some(1), "{mode:?}\n{}", load.context());
        let json = load.stdout.text();
        assert!(json.contains("the rate was out of reach"), "{json}");
        assert!(
            !json.contains("did not finish"),
            "stopped by its --secs, not --timeout: {json}"
        );
    }
}

#[test]
fn a_server_that_never_greets_is_named_in_one_line() {
    let peer = Peer::start(Behaviour::never_greets());
    let port = peer.addr.port().to_string();
    let mut load = ChildProcess::start(
        "tcp_load",
        &["--port", &port, "--json", "--timeout", "100s", "hold", "--conns", "3"],
    );
    assert_eq!(load.wait_exit(PATIENCE).code(), Some(1), "{}", load.context());
    let json = load.stdout.text();
    assert!(
        json.contains(
            "3 connections were established but no greeting came in 3 s: for a server run with \
             --no-greeting, pass --greeting-len 0"
        ),
        "{json}"
    );
    assert!(json.contains("\"errors\":{\"no greeting\":3}"), "{json}");

    // A --greeting-len longer than the greeting.
    let server = ServerProcess::start(&[]);
    let port = server.addr.port().to_string();
    let mut load = ChildProcess::start(
        "tcp_load",
        &[
            "--port",
            &port,
            "--json",
            "--timeout",
            "100s",
            "--greeting-len",
            "20",
            "hold",
            "--conns",
            "2",
        ],
    );
    assert_eq!(load.wait_exit(PATIENCE).code(), Some(1), "{}", load.context());
    let json = load.stdout.text();
    assert!(
        json.contains("greetings stopped at 10 bytes, fewer than --greeting-len 20: pass --greeting-len 10"),
        "{json}"
    );
}

#[test]
fn churn_counts_what_happened() {
    // Held connections the server turns away are not held.
    let server = ServerProcess::start(&["--max-connections", "5"]);
    let port = server.addr.port().to_string();
    let out = run_load(&[
        "--port",
        &port,
        "--json",
        "--timeout",
        "60s",
        "churn",
        "--hold",
        "8",
        "--rate",
        "2",
        "--secs",
        "1s",
    ]);
    let json = not_clean(&out, "server full");
    assert_eq!(field(&json, "held"), 5.0, "{json}");

    // Short-lived connections the server never closes are errors.
    let peer = Peer::start(Behaviour::never_closes());
    let port = peer.addr.port().to_string();
    let out = run_load(&[
        "--port",
        &port,
        "--json",
        "--timeout",
        "60s",
        "churn",
        "--rate",
        "5",
        "--secs",
        "1s",
    ]);
    let json = not_clean(&out, "not closed by server 5");
    assert_eq!(field(&json, "churned"), 0.0, "{json}");
    assert_eq!(field(&json, "churn_started"), 5.0, "{json}");
}

#[test]
fn huge_durations_and_missing_processes_are_usage_errors() {
    for args in [
        &["--timeout", "10000000000000000000s", "hold", "--conns", "1"][..],
        &["chat", "--conns", "1", "--rate", "1", "--secs", "99999999h"],
        &["hold", "--conns", "1", "--hold", "400d"],
    ] {
        let out = run_load(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // 200,000,001 messages over two processes: the average share fits the
    // message numbers (0 to 99,999,999), the larger one (100,000,001)
    // does not.
    let args = "--procs 2 chat --conns 2 --rate 200000001 --secs 1s";
    let out = run_load(&args.split(' ').collect::<Vec<_>>());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("gives a process 100000001 messages, more than the 100000000"),
        "{stderr}"
    );
    // Exactly 100,000,000 in one process fit (numbers 0 to 99,999,999):
    // not a usage error, the run goes ahead (and meets a closed port).
    let closed = util::closed_port();
    let args = format!("--port {} chat --conns 1 --rate 100000000 --secs 1s", closed.port);
    let out = run_load(&args.split(' ').collect::<Vec<_>>());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // No process has this id (pid_max is at most 2^22).
    let out = run_load(&["--server-pid", "2147483647", "hold", "--conns", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no process with PID 2147483647 is running"), "{stderr}");
}

#[test]
fn a_closed_stdout_loses_the_report_not_the_verdict() {
    // `tcp_load --json ... | true`
    let server = ServerProcess::start(&[]);
    let port = server.addr.port().to_string();
    for (port, code) in [(port.as_str(), 0), ("1", 1)] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = Command::new(util::bin("tcp_load"))
            .args(["--port", port, "--json", "hold", "--conns", "2", "--hold", "0s"])
            .env("RUST_BACKTRACE", "1")
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_eq!(out.status.code(), Some(code), "{stderr}");
    }
}

/// Waits for `n` "says hello" frames in `server`'s transcript.
fn wait_hellos(server: &ServerProcess, n: usize) {
    let ok = server.stdout.wait_for(PATIENCE, |out| {
        util::frames_of(out)
            .iter()
            .filter(|f| f.2.ends_with(b" says hello"))
            .count()
            >= n
    });
    assert!(ok, "waited for {n} messages\n{}", server.context());
}

#[test]
fn ctrl_c_prints_the_partial_summary() {
    let server = ServerProcess::start(&[]);
    let port = server.addr.port().to_string();
    let mut load = ChildProcess::start(
        "tcp_load",
        &["--port", &port, "--json", "hold", "--conns", "20", "--hold", "60s"],
    );
    wait_hellos(&server, 20);
    // SAFETY: kill has no memory effects; the pid is our own child, which is
    // not reaped before `wait_exit`.
    assert_eq!(unsafe { libc::kill(load.child.id() as i32, libc::SIGINT) }, 0);
    assert_eq!(load.wait_exit(PATIENCE).code(), Some(1), "{}", load.context());
    let json = load.stdout.text();
    assert!(json.contains("\"stopped\":\"interrupted by SIGINT\""), "{json}");
    assert_eq!(field(&json, "established"), 20.0, "{json}");
}

#[test]
fn procs_hold_600_connections_from_3_processes_over_their_own_sources() {
    let server = ServerProcess::start(&[]);
    let json = tcp_load(&server, &["--procs", "3", "hold", "--conns", "600", "--hold", "0s"]);
    assert_eq!(field(&json, "established"), 600.0, "{json}");
    assert_eq!(field(&json, "greetings"), 600.0, "{json}");
    assert!(json.contains("\"ok\":true") && json.contains("\"errors\":{}"), "{json}");
    assert!(field(&json, "rss_per_conn") > 0.0, "{json}");
    assert_eq!(field(&json, "server_threads"), 1.0, "{json}");
    server.wait_lines("Connection from:", 600);
    // 200 connections from each process's block of source addresses.
    let out = server.stdout.text();
    for block in 1..=3 {
        let from = out
            .lines()
            .filter(|l| l.starts_with(&format!("Connection from:  127.{block}.0.")))
            .count();
        assert_eq!(from, 200, "from 127.{block}.0.x\n{out}");
    }
}

#[test]
fn procs_add_up_failures_and_refuse_remote_targets() {
    let closed = util::closed_port();
    let port = closed.port.to_string();
    let out = run_load(&[
        "--port", &port, "--json", "--procs", "2", "hold", "--conns", "5", "--hold", "0s",
    ]);
    let json = not_clean(&out, "5 connections failed (refused 5)");
    assert_eq!(field(&json, "conns"), 5.0, "{json}");

    let out = run_load(&["--host", "192.0.2.1", "--procs", "2", "hold", "--conns", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("needs a loopback IPv4 target"), "{stderr}");
}

#[test]
fn procs_pass_sigterm_on_and_report_what_they_did() {
    let server = ServerProcess::start(&[]);
    let port = server.addr.port().to_string();
    let mut load = ChildProcess::start(
        "tcp_load",
        &[
            "--port", &port, "--json", "--procs", "2", "hold", "--conns", "40", "--hold", "60s",
        ],
    );
    wait_hellos(&server, 40);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(load.child.id() as i32, libc::SIGTERM) }, 0);
    assert_eq!(load.wait_exit(PATIENCE).code(), Some(1), "{}", load.context());
    let json = load.stdout.text();
    assert!(json.contains("interrupted by SIGTERM"), "{json}");
    assert_eq!(field(&json, "established"), 40.0, "{json}");
    server.wait_lines("Closed connection:", 40);
}

#[test]
fn procs_die_with_their_parent() {
    let server = ServerProcess::start(&[]);
    let port = server.addr.port().to_string();
    let mut load = ChildProcess::start(
        "tcp_load",
        &[
            "--port", &port, "--json", "--procs", "2", "hold", "--conns", "40", "--hold", "60s",
        ],
    );
    wait_hellos(&server, 40);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(load.child.id() as i32, libc::SIGKILL) }, 0);
    load.wait_exit(PATIENCE);
    // The generator processes went with it: the server sees every
    // connection close.
    server.wait_lines("Closed connection:", 40);
}
