//! Test helpers: start the real `simple_tcp_server` binary on port 0, read
//! the address it prints, collect its stdout and stderr, and kill it when the
//! test is done. Failures print the server's output for context.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use simple_tcp_server::output::text::{parse_frame_line, unescape};

/// Generous bound for anything a test waits for; a healthy run takes far less.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The path of one of this crate's binaries. `SIMPLE_TCP_SERVER_BIN` names
/// another build of the server to run the tests against (an older one, to
/// see a test fail where the code it guards is missing).
pub fn bin(name: &str) -> &'static str {
    static OTHER_SERVER: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    match name {
        "simple_tcp_server" => OTHER_SERVER
            .get_or_init(|| std::env::var("SIMPLE_TCP_SERVER_BIN").ok())
            .as_deref()
            .unwrap_or(env!("CARGO_BIN_EXE_simple_tcp_server")),
        "tcp_client" => env!("CARGO_BIN_EXE_tcp_client"),
        "tcp_load" => env!("CARGO_BIN_EXE_tcp_load"),
        other => panic!("unknown binary {other}"),
    }
}

/// Makes a child started by a test die with the test's thread (SIGKILL),
/// so that a test that fails, or is killed, leaves no process behind.
pub fn die_with_the_test(command: &mut Command) {
    // SAFETY: between fork and exec the closure calls only prctl, which is
    // async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Raises this test process's soft open-file limit to the hard limit (once):
/// some tests hold thousands of client sockets, and a CI machine's soft limit
/// may be the usual 1024.
pub fn raise_fd_limit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = simple_tcp_server::limits::raise_nofile_limit();
    });
}

/// Bytes a child wrote to one of its pipes, filled by a reader thread.
#[derive(Default)]
pub struct Captured {
    state: Mutex<(Vec<u8>, bool)>,
    changed: Condvar,
    /// While true, the reader thread stops reading (the pipe fills up and
    /// the child blocks writing to it).
    paused: Mutex<bool>,
    resumed: Condvar,
}

impl Captured {
    /// Collects what `pipe` gives, on a thread, until end of file.
    pub fn spawn(mut pipe: impl Read + Send + 'static) -> Arc<Captured> {
        let captured = Arc::new(Captured::default());
        let sink = Arc::clone(&captured);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                {
                    let mut paused = sink.paused.lock().expect("pause lock");
                    while *paused {
                        paused = sink.resumed.wait(paused).expect("pause lock");
                    }
                }
                let n = pipe.read(&mut buf).unwrap_or(0);
                let mut state = sink.state.lock().expect("capture lock");
                if n == 0 {
                    state.1 = true;
                } else {
                    state.0.extend_from_slice(&buf[..n]);
                }
                sink.changed.notify_all();
                if n == 0 {
                    break;
                }
            }
        });
        captured
    }

    /// Stops reading the pipe (after the read in progress, if any).
    pub fn pause(&self) {
        *self.paused.lock().expect("pause lock") = true;
    }

    /// Reads the pipe again.
    pub fn resume(&self) {
        *self.paused.lock().expect("pause lock") = false;
        self.resumed.notify_all();
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.state.lock().expect("capture lock").0.clone()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }

    /// Waits until `pred` holds for the bytes so far, or the pipe closes, or
    /// `timeout` passes. Returns whether `pred` held.
    pub fn wait_for(&self, timeout: Duration, mut pred: impl FnMut(&[u8]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock().expect("capture lock");
        loop {
            if pred(&state.0) {
                return true;
            }
            let now = Instant::now();
            if state.1 || now >= deadline {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .expect("capture lock")
                .0;
        }
    }
}

/// A reader that takes at most `chunk` bytes per `pause`: a slow but
/// steady consumer of a pipe.
pub struct Throttled<R> {
    inner: R,
    chunk: usize,
    pause: Duration,
}

impl<R: Read> Throttled<R> {
    pub fn new(inner: R, chunk: usize, pause: Duration) -> Throttled<R> {
        Throttled { inner, chunk, pause }
    }
}

impl<R: Read> Read for Throttled<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        std::thread::sleep(self.pause);
        let n = buf.len().min(self.chunk);
        self.inner.read(&mut buf[..n])
    }
}

/// `127.0.0.1 0 ARGS...`
fn local(args: &[&str]) -> Vec<String> {
    let mut full: Vec<String> = vec!["127.0.0.1".into(), "0".into()];
    full.extend(args.iter().map(|s| s.to_string()));
    full
}

/// A running server binary.
pub struct ServerProcess {
    child: Child,
    /// The address from the `Listening to:` line.
    pub addr: SocketAddr,
    pub stdout: Arc<Captured>,
    pub stderr: Arc<Captured>,
    args: Vec<String>,
}

impl ServerProcess {
    /// Starts `simple_tcp_server 127.0.0.1 0 ARGS...`.
    pub fn start(args: &[&str]) -> ServerProcess {
        ServerProcess::start_with_limit(args, None)
    }

    /// Starts the server with its open-file limit (soft and hard) set to
    /// `nofile`, if given.
    pub fn start_with_limit(args: &[&str], nofile: Option<u64>) -> ServerProcess {
        ServerProcess::start_raw(&local(args), nofile, &[])
    }

    /// Starts the server with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> ServerProcess {
        ServerProcess::start_raw(&local(args), None, env)
    }

    /// Starts the server on a given port of 127.0.0.1.
    pub fn start_on_port(port: u16, args: &[&str]) -> ServerProcess {
        let mut full: Vec<String> = vec!["127.0.0.1".into(), port.to_string()];
        full.extend(args.iter().map(|s| s.to_string()));
        ServerProcess::start_raw(&full, None, &[])
    }

    /// Starts `simple_tcp_server 127.0.0.1 0 ARGS...` with its stdout read
    /// at most `chunk` bytes per `pause`.
    pub fn start_throttled(args: &[&str], chunk: usize, pause: Duration) -> ServerProcess {
        ServerProcess::launch(&local(args), None, &[], Some((chunk, pause)))
    }

    /// Starts the server with exactly `args`.
    pub fn start_raw(args: &[String], nofile: Option<u64>, env: &[(&str, &str)]) -> ServerProcess {
        ServerProcess::launch(args, nofile, env, None)
    }

    fn launch(
        args: &[String],
        nofile: Option<u64>,
        env: &[(&str, &str)],
        throttle: Option<(usize, Duration)>,
    ) -> ServerProcess {
        raise_fd_limit();
        let mut cmd = Command::new(bin("simple_tcp_server"));
        cmd.args(args)
            .env(
                "RUST_LOG",
                std::env::var("SERVER_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_the_test(&mut cmd);
        if let Some(limit) = nofile {
            // SAFETY: between fork and exec only async-signal-safe calls are
            // allowed; setrlimit is one, and the closure touches no locks.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: limit as libc::rlim_t,
                        rlim_max: limit as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("start simple_tcp_server");
        let pipe = child.stdout.take().expect("stdout pipe");
        let stdout = match throttle {
            Some((chunk, pause)) => Captured::spawn(Throttled::new(pipe, chunk, pause)),
            None => Captured::spawn(pipe),
        };
        let stderr = Captured::spawn(child.stderr.take().expect("stderr pipe"));
        let mut server = ServerProcess {
            child,
            addr: "0.0.0.0:0".parse().expect("placeholder address"),
            stdout,
            stderr,
            args: args.to_vec(),
        };
        // The text line, or the JSON line of `--format json`.
        let started = server.stdout.wait_for(PATIENCE, |out| {
            (out.starts_with(b"Listening to:  ") || out.starts_with(b"{")) && out.contains(&b'\n')
        });
        assert!(started, "server did not start\n{}", server.context());
        let text = server.stdout.text();
        let line = text.lines().next().unwrap_or_default();
        server.addr = listening_addr(line).unwrap_or_else(|e| panic!("bad address line {line:?}: {e}"));
        server
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The server's arguments, stdout and stderr, for failure messages.
    pub fn context(&self) -> String {
        let out = self.stdout.text();
        let tail: String = if out.len() > 4000 {
            format!("...{}", &out[out.len() - 4000..])
        } else {
            out
        };
        format!(
            "--- server args: {:?}\n--- stdout (tail):\n{}\n--- stderr:\n{}",
            self.args,
            tail,
            self.stderr.text()
        )
    }

    /// Waits until the transcript holds at least `n` lines starting with
    /// `prefix`; panics with context if it does not within [`PATIENCE`].
    pub fn wait_lines(&self, prefix: &str, n: usize) {
        let ok = self.stdout.wait_for(PATIENCE, |out| count_lines(out, prefix) >= n);
        assert!(ok, "waited for {n} lines starting {prefix:?}\n{}", self.context());
    }

    /// Waits until the `--tag` transcript holds a frame line from each of
    /// the client addresses `tags` (each new line looked at once, by its tag
    /// alone: the transcript may be growing at 100 MB/s).
    pub fn wait_frames_from(&self, tags: &[String]) {
        let mut missing: std::collections::HashSet<Vec<u8>> = tags.iter().map(|t| t.as_bytes().to_vec()).collect();
        let mut scanned = 0;
        let ok = self.stdout.wait_for(PATIENCE, |out| {
            let end = out.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            for line in out[scanned.min(end)..end].split(|&b| b == b'\n') {
                if missing.is_empty() {
                    break;
                }
                if let Some(space) = line.iter().position(|&b| b == b' ')
                    && line.get(space + 1) == Some(&b'<')
                {
                    missing.remove(&line[..space]);
                }
            }
            scanned = end;
            missing.is_empty()
        });
        let missing: Vec<String> = missing
            .iter()
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .collect();
        assert!(ok, "no frame yet from {missing:?}\n{}", self.context());
    }

    /// Waits until the transcript holds `needle`.
    pub fn wait_text(&self, needle: &str) {
        let ok = self.stdout.wait_for(PATIENCE, |out| contains(out, needle.as_bytes()));
        assert!(ok, "waited for {needle:?}\n{}", self.context());
    }

    /// Sends a signal to the server.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory effects; the pid is our own child, which
        // is not reaped before `wait_exit`, so it cannot have been reused.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.pid());
    }

    /// Waits for the server to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the reader threads see end of file.
                self.stdout.wait_for(Duration::from_secs(5), |_| false);
                self.stderr.wait_for(Duration::from_secs(5), |_| false);
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit within {timeout:?}\n{}",
                self.context()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the server is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Threads in the server process, from /proc.
    pub fn threads(&self) -> usize {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("read /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("Threads line")
    }

    /// CPU time (user + system) the server has used, from /proc.
    pub fn cpu_time(&self) -> Duration {
        cpu_time(self.pid())
    }

    /// Open descriptors of the server, from /proc.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for `child` to exit, at most `timeout`, then for its output pipes
/// to reach end of file; panics with `context` if it does not exit.
fn wait_child(child: &mut Child, stdout: &Captured, stderr: &Captured, timeout: Duration, context: &str) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            stdout.wait_for(Duration::from_secs(5), |_| false);
            stderr.wait_for(Duration::from_secs(5), |_| false);
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "process did not exit within {timeout:?}\n{context}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Starts `program` (a build of the server) on 127.0.0.1 port 0 with
/// `args` and `RUST_LOG=info`, with stderr collected and stdout a pipe that
/// nobody reads past the first line: for tests of what the server does
/// while its stdout is blocked, or that read stdout themselves. Returns the
/// child, its stdout, its stderr and the address it listens on.
pub fn start_unread(
    program: &std::path::Path,
    args: &[&str],
) -> (Child, std::process::ChildStdout, Arc<Captured>, SocketAddr) {
    raise_fd_limit();
    let mut child = Command::new(program)
        .args(["127.0.0.1", "0"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the server");
    let mut stdout = child.stdout.take().expect("stdout");
    let stderr = Captured::spawn(child.stderr.take().expect("stderr"));
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while byte[0] != b'\n' {
        stdout.read_exact(&mut byte).expect("read the first line");
        line.push(byte[0]);
    }
    let text = String::from_utf8(line).expect("UTF-8");
    let addr = listening_addr(text.trim_end()).unwrap_or_else(|e| panic!("not a Listening line: {text:?}: {e}"));
    (child, stdout, stderr, addr)
}

/// Every line of a text transcript is one of its kinds, whole, and there
/// is one `Listening to:` line, the first.
pub fn assert_lines_whole(out: &[u8]) {
    assert!(out.ends_with(b"\n"), "the transcript ends inside a line");
    for (i, line) in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()).enumerate() {
        let ok = (i == 0 && line.starts_with(b"Listening to:  "))
            || line.starts_with(b"Connection from:  ")
            || line.starts_with(b"Closed connection:  ")
            || parse_frame_line(line).is_some();
        assert!(ok, "line {i} is not whole: {:?}", String::from_utf8_lossy(line));
    }
}

/// `count` clients at once, each on its own thread: connects to `addr`,
/// reads the greeting, sends 1 to `max_len` random bytes (seeded by
/// `seed` and its number) in random writes of up to `max_write`, and
/// returns its address (as the transcript's tags spell it) and its bytes.
pub fn random_clients(
    addr: SocketAddr,
    count: u64,
    seed: u64,
    max_len: usize,
    max_write: usize,
) -> Vec<(String, Vec<u8>)> {
    let clients: Vec<_> = (0..count)
        .map(|i| {
            std::thread::spawn(move || {
                let mut rng = Rng::new(seed + i);
                let mut client = connect_greeted(addr);
                let me = client.local_addr().expect("addr").to_string();
                let len = rng.range(1, max_len);
                let data = rng.bytes(len);
                let mut at = 0;
                while at < data.len() {
                    let n = rng.range(1, max_write).min(data.len() - at);
                    client.write_all(&data[at..at + n]).expect("send");
                    at += n;
                }
                (me, data)
            })
        })
        .collect();
    clients.into_iter().map(|c| c.join().expect("client")).collect()
}

/// Everything the server sends until it closes (a reset counts as a
/// close): empty for a client closed without a greeting.
pub fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// The address of the first transcript line: `Listening to:  ADDR`, or a
/// JSON `listening` event.
pub fn listening_addr(line: &str) -> Result<SocketAddr, String> {
    if let Some(addr) = line.strip_prefix("Listening to:  ") {
        return addr.parse().map_err(|e| format!("{e}"));
    }
    let event = simple_tcp_server::output::json::parse_line(line).map_err(|e| e.to_string())?;
    if event.kind != simple_tcp_server::output::json::EventKind::Listening {
        return Err("not a listening event".into());
    }
    Ok(event.addr)
}

/// Where the program `name` is: on the PATH, or in `/usr/sbin` or `/sbin`
/// (where Debian installs `haproxy`, outside a non-root user's PATH).
pub fn find_program(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(std::path::PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|file| std::fs::metadata(file).is_ok_and(|m| m.is_file()))
}

/// Whether the program `name` is installed ([`find_program`]), for
/// tests that check against a real program. When it does not: with `CI`
/// set in the environment, panics (CI must not skip silently); otherwise
/// prints once per test binary, straight to stderr (past the test
/// harness's capture), which checks are skipped and the command that
/// installs the program, and returns false.
pub fn have_program(name: &str, install: &str, skipped: &str) -> bool {
    static NOTED: Mutex<Vec<String>> = Mutex::new(Vec::new());
    if find_program(name).is_some() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "`{name}` is not installed, and CI must run the checks that need it ({skipped}): `{install}`"
    );
    let mut noted = NOTED.lock().unwrap_or_else(|e| e.into_inner());
    if !noted.iter().any(|n| n == name) {
        noted.push(name.to_string());
        let _ = writeln!(
            std::io::stderr(),
            "note: `{name}` is not installed: skipping {skipped}. Install it with `{install}`."
        );
    }
    false
}

/// Closes `stream` with a reset (SO_LINGER 0) instead of a FIN.
pub fn reset(stream: TcpStream) {
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER");
    drop(stream);
}

/// A port on 127.0.0.1 that nothing listens on (it was free a moment ago;
/// [`closed_port`] keeps it so).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// A port on 127.0.0.1 that refuses connections for as long as this lives:
/// bound, not listening, without `SO_REUSEADDR`, so that no other socket
/// (another test's server, another process) can take it meanwhile.
pub struct ClosedPort {
    _socket: socket2::Socket,
    pub port: u16,
}

pub fn closed_port() -> ClosedPort {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
    socket.bind(&any.into()).expect("bind");
    let port = socket
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("an IP address")
        .port();
    ClosedPort { _socket: socket, port }
}

/// A child process with captured output, killed on drop.
pub struct ChildProcess {
    pub child: Child,
    pub stdin: Option<std::process::ChildStdin>,
    pub stdout: Arc<Captured>,
    pub stderr: Arc<Captured>,
}

impl ChildProcess {
    /// Starts one of this crate's binaries with piped stdio.
    pub fn start(name: &str, args: &[&str]) -> ChildProcess {
        ChildProcess::start_env(name, args, &[])
    }

    /// Starts one of this crate's binaries with piped stdio and extra
    /// environment variables.
    pub fn start_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> ChildProcess {
        ChildProcess::start_program(std::path::Path::new(bin(name)), args, env)
    }

    /// Starts `program` with piped stdio and extra environment variables.
    pub fn start_program(program: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> ChildProcess {
        let name = program.display();
        let mut command = Command::new(program);
        die_with_the_test(&mut command);
        let mut child = command
            .args(args)
            .env("RUST_BACKTRACE", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let stdout = Captured::spawn(child.stdout.take().expect("stdout pipe"));
        let stderr = Captured::spawn(child.stderr.take().expect("stderr pipe"));
        let stdin = child.stdin.take();
        ChildProcess {
            child,
            stdin,
            stdout,
            stderr,
        }
    }

    /// Sends `signal` to the child.
    pub fn signal(&self, signal: i32) {
        let pid = self.child.id() as i32;
        // SAFETY: kill has no memory effects; the pid is our own child, which
        // is not reaped before `wait_exit` (or drop), so it cannot have been
        // reused.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal})");
    }

    /// Writes to the child's stdin.
    pub fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(line.as_bytes()).expect("write stdin");
        stdin.flush().expect("flush stdin");
    }

    /// Closes the child's stdin (end of input).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for the child to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let context = self.context();
        wait_child(&mut self.child, &self.stdout, &self.stderr, timeout, &context)
    }

    pub fn context(&self) -> String {
        format!(
            "--- stdout:\n{}\n--- stderr:\n{}",
            self.stdout.text(),
            self.stderr.text()
        )
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time (user + system) of process `pid`.
pub fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

pub fn count_lines(out: &[u8], prefix: &str) -> usize {
    out.split(|&b| b == b'\n')
        .filter(|l| l.starts_with(prefix.as_bytes()))
        .count()
}

/// A client connected from the loopback address `source` (the port is
/// chosen at connect, for this server: a bind alone would take one of the
/// few ports a bind may have, which the TIME-WAITs of earlier runs soon
/// use up), with the tests' read timeout.
pub fn connect_from(source: &str, server: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    simple_tcp_server::load::bind_address_no_port(&socket).expect("IP_BIND_ADDRESS_NO_PORT");
    socket
        .bind(&format!("{source}:0").parse::<SocketAddr>().expect("addr").into())
        .expect("bind the source");
    socket.connect(&server.into()).expect("connect");
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    stream
}

/// Connects a client and reads the greeting (asserting it is the default one).
pub fn connect_greeted(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).expect("read timeout");
    let mut greeting = [0u8; 10];
    stream.read_exact(&mut greeting).expect("read greeting");
    assert_eq!(&greeting, b"Let's GO!\n");
    stream
}

/// Writes all of `data`.
pub fn send(stream: &mut TcpStream, data: &[u8]) {
    stream.write_all(data).expect("send");
}

/// One frame line, parsed: (tag, LEN, raw bytes).
pub fn frames_of(out: &[u8]) -> Vec<(Option<String>, usize, Vec<u8>)> {
    out.split(|&b| b == b'\n')
        .filter_map(parse_frame_line)
        .map(|f| {
            let bytes =
                unescape(f.text).unwrap_or_else(|e| panic!("bad escape in {:?}: {e}", String::from_utf8_lossy(f.text)));
            assert_eq!(
                bytes.len(),
                f.len,
                "LEN does not match TEXT in {:?}",
                String::from_utf8_lossy(f.text)
            );
            (f.tag.map(str::to_string), f.len, bytes)
        })
        .collect()
}

/// Every client's bytes, rebuilt from a `--tag` transcript, keyed by address.
pub fn streams_by_client(out: &[u8]) -> HashMap<String, Vec<u8>> {
    let mut streams: HashMap<String, Vec<u8>> = HashMap::new();
    for (tag, _, bytes) in frames_of(out) {
        let tag = tag.expect("transcript run with --tag");
        streams.entry(tag).or_default().extend_from_slice(&bytes);
    }
    streams
}

/// A small deterministic generator (xorshift64*), so tests need no crate.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// An output sink shared with the test, for servers run in-process.
#[derive(Clone, Default)]
pub struct SharedSink(pub Arc<Captured>);

impl Write for SharedSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut state = self.0.state.lock().expect("sink lock");
        state.0.extend_from_slice(buf);
        self.0.changed.notify_all();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A library server running on a thread of the test process.
pub struct InProcess {
    pub addr: SocketAddr,
    pub out: Arc<Captured>,
    stopper: simple_tcp_server::Stopper,
    thread: Option<std::thread::JoinHandle<std::io::Result<simple_tcp_server::Summary>>>,
}

impl InProcess {
    /// Runs `simple_tcp_server::Server` with `config` on 127.0.0.1, port 0.
    pub fn start(config: simple_tcp_server::Config) -> InProcess {
        raise_fd_limit();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut server = simple_tcp_server::Server::from_listener(listener, config).expect("server");
        let addr = server.local_addr();
        let stopper = server.stopper().expect("stopper");
        let sink = SharedSink::default();
        let out = Arc::clone(&sink.0);
        let thread = std::thread::spawn(move || server.run(sink));
        InProcess {
            addr,
            out,
            stopper,
            thread: Some(thread),
        }
    }

    /// Stops the server and returns its summary.
    pub fn stop(mut self) -> simple_tcp_server::Summary {
        self.stopper.stop().expect("stop");
        let thread = self.thread.take().expect("running");
        thread.join().expect("server thread").expect("server run")
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.stopper.stop();
            let _ = thread.join();
        }
    }
}

/// Bytes in `stream`'s send queue that the peer's kernel has not yet
/// acknowledged (`SIOCOUTQ`, alias `TIOCOUTQ`): 0 means everything written
/// is in the peer's receive queue (or already read), whether or not the
/// peer process runs.
pub fn unacked(stream: &TcpStream) -> usize {
    use std::os::fd::AsRawFd;
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one c_int through a pointer to a live local, on
    // a descriptor that `stream` owns for the whole call.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    assert_eq!(rc, 0, "SIOCOUTQ: {}", std::io::Error::last_os_error());
    usize::try_from(queued).unwrap_or(0)
}

/// The state letter of process `pid` in /proc (`T` when stopped).
pub fn process_state(pid: i32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    stat[stat.rfind(')').expect("stat format") + 2..]
        .chars()
        .next()
        .expect("state")
}

/// Waits until `cond` holds, checking every few milliseconds; panics with
/// `what` if it does not within [`PATIENCE`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "waited {PATIENCE:?} for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether process `pid` is blocked in `write` on its stdout (from
/// /proc/PID/syscall: the system call number and its descriptor, which may
/// be a duplicate of descriptor 1).
pub fn blocked_writing_stdout(pid: i32) -> bool {
    let call = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
    let mut fields = call.split_whitespace();
    if fields.next() != Some(libc::SYS_write.to_string().as_str()) {
        return false;
    }
    let Some(fd) = fields
        .next()
        .and_then(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16).ok())
    else {
        return false;
    };
    let target = |fd: u64| std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok();
    target(fd).is_some() && target(fd) == target(1)
}

/// Whether `signal` is pending for process `pid` (not yet delivered).
pub fn signal_pending(pid: i32, signal: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .filter_map(|l| l.strip_prefix("SigPnd:").or_else(|| l.strip_prefix("ShdPnd:")))
        .filter_map(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .any(|mask| mask & (1 << (signal - 1)) != 0)
}

/// The PIDs of `parent`'s children, from /proc.
pub fn children(parent: i32) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let ppid: i32 = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        if ppid == parent {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

/// A file of the test's own (named by `name` and this process), removed
/// when dropped.
pub struct TempFile(std::path::PathBuf);

impl TempFile {
    pub fn new(name: &str, text: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!("simple_tcp_server-{name}-{}", std::process::id()));
        std::fs::write(&path, text).expect("write the file");
        TempFile(path)
    }

    pub fn write(&self, text: &str) {
        std::fs::write(&self.0, text).expect("write the file");
    }

    pub fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
