//! Failing tests from the second round of the hostile review (branch
//! `review`), against the supervisor of `--workers`: each shows a defect of
//! today's code and passes once it is fixed.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use util::{Captured, PATIENCE, children, connect_greeted};

/// Waits until `f` gives a value; fails the test after [`PATIENCE`].
fn wait_for_value<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(Instant::now() < deadline, "waited {PATIENCE:?} in vain");
        thread::sleep(Duration::from_millis(20));
    }
}

fn kill(pid: i32, signal: i32) {
    // SAFETY: kill has no memory effects; `pid` is a process this test
    // started (or its child, alive: just listed from /proc).
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill({pid}, {signal})");
}

/// A supervisor started from `program` with `args`, stdout piped to the
/// caller, stderr captured.
struct Supervisor {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Captured>,
}

impl Supervisor {
    fn start(program: &std::path::Path, args: &[&str]) -> (Supervisor, std::process::ChildStdout) {
        let (child, stdout, stderr, addr) = util::start_unread(program, args);
        let supervisor = Supervisor { child, addr, stderr };
        let pid = supervisor.pid();
        let started = supervisor.stderr.wait_for(PATIENCE, |err| {
            String::from_utf8_lossy(err).matches("serving on").count() >= 2
        });
        assert!(started, "{}", supervisor.stderr.text());
        assert_eq!(children(pid).len(), 2);
        (supervisor, stdout)
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An in-place upgrade (the package manager replaces or deletes the binary
/// the supervisor was started from): a worker that dies afterwards can
/// never be restarted, because the supervisor execs its own path again,
/// which is gone ("cannot start: No such file or directory", forever), and
/// the clients that the kernel hashes to that worker's SO_REUSEPORT
/// listener wait in its backlog for ever. nginx's master forks (no exec)
/// and is not hit; exec'ing `/proc/self/exe` (or an `O_PATH` descriptor of
/// the binary opened at start) would not be either.
#[test]
fn a_worker_is_restarted_after_the_binary_was_replaced() {
    let dir = std::env::temp_dir().join(format!("stsb-upgrade-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let program = dir.join("simple_tcp_server");
    std::fs::copy(util::bin("simple_tcp_server"), &program).expect("copy the binary");
    let (server, stdout) = Supervisor::start(&program, &["--workers", "2"]);
    let drain = thread::spawn(move || {
        let mut stdout = stdout;
        let mut sink = Vec::new();
        let _ = stdout.read_to_end(&mut sink);
    });
    // The upgrade: the file the supervisor runs is gone.
    std::fs::remove_file(&program).expect("remove the binary");
    let _ = std::fs::remove_dir(&dir);
    let workers = children(server.pid());
    kill(workers[0], libc::SIGKILL);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = children(server.pid());
        if now.len() == 2 && !now.contains(&workers[0]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dead worker was never replaced: {now:?}\n{}",
            server.stderr.text()
        );
        thread::sleep(Duration::from_millis(10));
    }
    // Every new client is served, whichever listener the kernel picks.
    for _ in 0..20 {
        drop(connect_greeted(server.addr));
    }
    drop(server);
    let _ = drain.join();
}

/// The supervisor reads a worker's pipe until it is empty before it looks
/// at anything else. When stdout is slower than a worker's transcript (a
/// log shipper, a terminal, a disk), a flooding worker's pipe never
/// empties, and for as long as the flood lasts the supervisor passes on no
/// other worker's lines, reaps no dead worker and restarts none. Here: one
/// worker floods through a slow stdout reader, the other is killed; it must
/// be restarted while the flood goes on (with a fair loop, within about its
/// 100 ms backoff; today, only after the flood has ended).
#[test]
fn a_flooding_worker_does_not_freeze_the_supervisor() {
    let (server, stdout) = Supervisor::start(
        std::path::Path::new(util::bin("simple_tcp_server")),
        &["--workers", "2"],
    );
    // A slow reader of the transcript: 64 KiB every 10 ms, about 6.5 MB/s.
    let reader = thread::spawn(move || {
        let mut stdout = stdout;
        let mut buf = vec![0u8; 64 * 1024];
        while matches!(stdout.read(&mut buf), Ok(n) if n > 0) {
            thread::sleep(Duration::from_millis(10));
        }
    });
    let workers = children(server.pid());
    // One client floods: at most 48 MiB, which the slow reader takes about
    // 9 s to pass (1.24 bytes of transcript per byte sent).
    let stop = Arc::new(AtomicBool::new(false));
    let flooding = Arc::new(AtomicBool::new(true));
    let flooder = {
        let (stop, flooding, addr) = (Arc::clone(&stop), Arc::clone(&flooding), server.addr);
        thread::spawn(move || {
            let mut client: TcpStream = connect_greeted(addr);
            let block = vec![b'f'; 64 * 1024];
            for _ in 0..768 {
                if stop.load(Ordering::SeqCst) || client.write_all(&block).is_err() {
                    break;
                }
            }
            flooding.store(false, Ordering::SeqCst);
        })
    };
    // The flooding worker is the one blocked writing its full pipe.
    let busy = wait_for_value(|| {
        let blocked: Vec<bool> = workers.iter().map(|&w| util::blocked_writing_stdout(w)).collect();
        match blocked[..] {
            [true, false] => Some(0),
            [false, true] => Some(1),
            _ => None,
        }
    });
    let idle = workers[1 - busy];
    assert!(
        flooding.load(Ordering::SeqCst),
        "the flood ended before the test could act"
    );
    let before_kill = server.stderr.text().matches("restarting it in").count();
    kill(idle, libc::SIGKILL);
    let restarted = server.stderr.wait_for(PATIENCE, |err| {
        String::from_utf8_lossy(err).matches("restarting it in").count() > before_kill
    });
    let still_flooding = flooding.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    assert!(restarted, "{}", server.stderr.text());
    assert!(
        still_flooding,
        "the dead worker was noticed only after the other worker's flood had ended\n{}",
        server.stderr.text()
    );
    let _ = flooder.join();
    drop(server);
    let _ = reader.join();
}
