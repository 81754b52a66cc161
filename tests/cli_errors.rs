//! Bad arguments, an unresolvable host, a port in use: a short error on
//! stderr, a non-zero exit, never a panic.

mod util;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs the server with `args`; one that is still running after
/// [`util::PATIENCE`] (it accepted arguments it should have refused) is
/// killed, and the test fails instead of hanging.
fn run(args: &[&str]) -> Output {
    let mut child = Command::new(util::bin("simple_tcp_server"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run simple_tcp_server");
    let deadline = Instant::now() + util::PATIENCE;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait");
            panic!(
                "{args:?} was still running after {:?} instead of failing\n{}",
                util::PATIENCE,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.wait_with_output().expect("collect output")
}

/// Asserts a clean failure, and returns stderr.
fn fails_cleanly(args: &[&str]) -> String {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{args:?} panicked:\n{stderr}"
    );
    assert!(
        out.stdout.is_empty() || !String::from_utf8_lossy(&out.stdout).contains("Listening"),
        "{args:?}"
    );
    assert!(stderr.lines().count() <= 8, "{args:?}: error too long:\n{stderr}");
    stderr
}

#[test]
fn bad_arguments_are_usage_errors() {
    for args in [
        &["--bogus"][..],
        &["localhost", "99999"],
        &["localhost", "http"],
        &["--max-read", "0"],
        &["--max-read", "lots"],
        &["--idle-timeout", "soon"],
        &["--keepalive", "10ms"],
        &["--greeting", "x", "--no-greeting"],
        &["a", "1", "extra"],
    ] {
        let stderr = fails_cleanly(args);
        assert!(stderr.starts_with("error:"), "{args:?}: {stderr}");
        assert_eq!(run(args).status.code(), Some(2), "{args:?}: clap's usage exit code");
    }
}

#[test]
fn every_duration_is_bounded_when_parsed() {
    // 1e19 seconds once got past the parser and panicked later, when a
    // deadline was computed (at start, at the first line, at the first client).
    for option in [
        "--idle-timeout",
        "--keepalive",
        "--stats",
        "--flush-lag",
        "--coalesce",
        "--shutdown-timeout",
    ] {
        let args = [option, "10000000000000000000s"];
        let stderr = fails_cleanly(&args);
        assert!(stderr.starts_with("error: invalid value"), "{args:?}: {stderr}");
        assert!(stderr.contains("must be"), "{args:?} does not say the bound: {stderr}");
        assert_eq!(run(&args).status.code(), Some(2), "{args:?}: clap's usage exit code");
    }
}

#[test]
fn unresolvable_host_is_one_line() {
    let stderr = fails_cleanly(&["no-such-host.invalid", "0"]);
    assert!(
        stderr.contains("simple_tcp_server: cannot resolve host `no-such-host.invalid`"),
        "{stderr}"
    );
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("simple_tcp_server:")).count(),
        1
    );
}

#[test]
fn port_in_use_is_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let stderr = fails_cleanly(&["127.0.0.1", &port]);
    assert!(
        stderr.contains(&format!(
            "simple_tcp_server: cannot listen on 127.0.0.1:{port}: Address already in use"
        )),
        "{stderr}"
    );
    // Another program listens there: the error says so.
    assert!(stderr.contains("(another program listens on it)"), "{stderr}");
}

#[test]
fn a_port_held_by_an_outgoing_connection_says_why_and_what_to_do() {
    // An outgoing connection holds a local port in the ephemeral range;
    // nothing listens on that port.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let outgoing = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let port = outgoing.local_addr().expect("addr").port();
    let Some((lo, hi)) = simple_tcp_server::listen::ephemeral_ports() else {
        return;
    };
    assert!((lo..=hi).contains(&port), "an outgoing port {port} outside {lo}-{hi}");
    let stderr = fails_cleanly(&["127.0.0.1", &port.to_string()]);
    assert!(
        stderr.contains("Address already in use (nothing listens on it, but port")
            && stderr.contains("choose a port outside the range, or wait a minute"),
        "{stderr}"
    );
}

#[test]
fn address_that_is_not_ours_is_one_line() {
    // 192.0.2.1 (TEST-NET-1) is not assigned to this machine.
    let stderr = fails_cleanly(&["192.0.2.1", "0"]);
    assert!(stderr.contains("cannot listen on 192.0.2.1:0"), "{stderr}");
}

#[test]
fn help_and_version_succeed() {
    let help = run(&["--help"]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for option in [
        "--max-read",
        "--greeting",
        "--no-greeting",
        "--raw",
        "--tag",
        "[HOST]",
        "[PORT]",
    ] {
        assert!(text.contains(option), "--help lacks {option}");
    }
    let version = run(&["--version"]);
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("simple_tcp_server "));
}

#[test]
fn each_program_describes_itself() {
    for (name, opening) in [
        ("simple_tcp_server", "The TCP server of \"The Way to Go\""),
        ("tcp_client", "The companion client of simple_tcp_server"),
        ("tcp_load", "Load generator for simple_tcp_server"),
    ] {
        let out = Command::new(util::bin(name))
            .arg("--help")
            .output()
            .expect("run --help");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name} --help");
        assert!(help.starts_with(opening), "{name} --help opens with:\n{help}");
    }
}
