//! Running out of descriptors: the server neither exits nor spins; clients
//! wait in the backlog and are served as others leave.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use util::{PATIENCE, ServerProcess, TempFile};

/// Tries to read the greeting without blocking; true once it has arrived.
fn greeted(client: &mut TcpStream) -> bool {
    let mut greeting = [0u8; 10];
    match client.peek(&mut greeting) {
        Ok(10) => {
            client.read_exact(&mut greeting).expect("read greeting");
            assert_eq!(&greeting, b"Let's GO!\n");
            true
        }
        Ok(_) => false,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(e) => panic!("client failed while waiting: {e}"),
    }
}

#[test]
fn a_hard_limit_of_64_files_pauses_accepts_without_spinning() {
    const CLIENTS: usize = 200;
    // A cap above what 64 descriptors allow, so accept itself meets EMFILE.
    let mut server = ServerProcess::start_with_limit(&["--max-connections", "1000"], Some(64));
    let mut clients: Vec<Option<TcpStream>> = (0..CLIENTS)
        .map(|i| {
            let c = TcpStream::connect(server.addr).unwrap_or_else(|e| panic!("connect #{i}: {e}"));
            c.set_nonblocking(true).expect("nonblocking");
            Some(c)
        })
        .collect();

    // Phase 1: the server takes what its descriptors allow, then says it
    // pauses; until a client leaves, no descriptor frees up, so the clients
    // greeted by then are all it takes, and the transcript shows each.
    let ok = server
        .stderr
        .wait_for(PATIENCE, |err| util::contains(err, b"pausing accepts"));
    assert!(ok, "the server never ran out of descriptors\n{}", server.context());
    let mut served = [false; CLIENTS];
    util::wait_until("every accepted client to be greeted and printed", || {
        for (i, c) in clients.iter_mut().enumerate() {
            if !served[i] {
                served[i] = greeted(c.as_mut().expect("open"));
            }
        }
        let printed = util::count_lines(&server.stdout.bytes(), "Connection from:");
        printed > 0 && served.iter().filter(|&&s| s).count() == printed
    });
    let first_batch = served.iter().filter(|&&s| s).count();
    assert!(
        first_batch > 10 && first_batch < 64,
        "greeted {first_batch} with 64 files\n{}",
        server.context()
    );

    // While the rest wait, the server uses almost no CPU.
    let cpu_before = server.cpu_time();
    std::thread::sleep(Duration::from_secs(1));
    let cpu = server.cpu_time() - cpu_before;
    assert!(
        cpu < Duration::from_millis(200),
        "server spun: {cpu:?} of CPU in 1 s\n{}",
        server.context()
    );
    assert!(server.is_running(), "server exited\n{}", server.context());
    assert_eq!(
        util::count_lines(&server.stdout.bytes(), "Connection from:"),
        first_batch
    );

    // Phase 2: each served client sends one message and leaves; the waiting
    // ones are accepted as descriptors free up.
    let deadline = Instant::now() + PATIENCE;
    let mut done = 0;
    while done < CLIENTS {
        assert!(
            Instant::now() < deadline,
            "only {done} of {CLIENTS} served\n{}",
            server.context()
        );
        for (i, slot) in clients.iter_mut().enumerate() {
            let Some(c) = slot.as_mut() else { continue };
            if !served[i] {
                served[i] = greeted(c);
            }
            if served[i] {
                c.write_all(format!("client {i} was here").as_bytes()).expect("send");
                *slot = None;
                done += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    server.wait_lines("Closed connection:", CLIENTS);
    let out = server.stdout.bytes();
    for i in 0..CLIENTS {
        let line = format!("client {i} was here");
        assert!(
            util::contains(&out, line.as_bytes()),
            "missing {line:?}\n{}",
            server.context()
        );
    }
    assert!(server.is_running());
    // One shortage (it lasts until the backlog is empty, however many
    // clients come and go meanwhile), logged once, not once per retry.
    let warnings = server.stderr.text().matches("pausing accepts").count();
    assert_eq!(warnings, 1, "pause warnings\n{}", server.context());
}

/// The size of process `pid`'s descriptor table (`FDSize`), from /proc.
fn fd_table_size(pid: i32) -> u64 {
    simple_tcp_server::limits::fd_table_size_of(&pid.to_string())
        .unwrap_or_else(|| panic!("no FDSize for process {pid}"))
}

// Caps of 1,500 (a table of 2,048 slots) fit the open-file limits the rest
// of the suite needs.
const CAP: u64 = 1500;

#[test]
fn a_server_that_will_run_threads_grows_its_descriptor_table_before_they_start() {
    let access = TempFile::new("grown-table", "# everyone\n");
    let cap = CAP.to_string();
    // Grown before `Listening to:`, for the cap and the reserve of 32: a
    // power of two at least that, not the open-file limit's.
    for threads in [
        &["--threads", "2"][..],
        &["--metrics", "127.0.0.1:0"][..],
        &["--access-file", access.path()][..],
    ] {
        let mut args = vec!["--max-connections", &cap];
        args.extend_from_slice(threads);
        let server = ServerProcess::start(&args);
        let size = fd_table_size(server.pid());
        assert!((CAP + 32..2 * (CAP + 32)).contains(&size), "{args:?}: FDSize {size}");
    }
    // One thread grows its table without waiting: nothing is grown ahead.
    let server = ServerProcess::start(&["--max-connections", &cap]);
    let size = fd_table_size(server.pid());
    assert!(size < CAP + 32, "FDSize {size} of a one-thread server");
}

#[test]
fn the_descriptor_table_grows_before_the_metrics_thread_starts() {
    let server = ServerProcess::start_with_env(&["--metrics", "127.0.0.1:0"], &[("RUST_LOG", "debug")]);
    let said = server.stderr.wait_for(PATIENCE, |err| {
        String::from_utf8_lossy(err).contains("metrics on http://")
    });
    assert!(said, "no endpoint\n{}", server.context());
    let err = server.stderr.text();
    let grown = err.find("descriptor table grown to").expect("the table grown");
    let endpoint = err.find("metrics on http://").expect("the endpoint");
    assert!(grown < endpoint, "{err}");
}

#[test]
fn an_explicit_cap_past_the_open_file_limit_grows_the_table_only_to_the_limit() {
    let server = ServerProcess::start_with_limit(&["--threads", "2", "--max-connections", "5000"], Some(1024));
    let size = fd_table_size(server.pid());
    assert!((1024..2048).contains(&size), "FDSize {size} under a limit of 1024");
}

#[test]
fn workers_grow_their_tables_for_threads_and_the_supervisor_does_not() {
    let access = TempFile::new("grown-workers", "# everyone\n");
    let cap = CAP.to_string();
    for threads in [&["--threads", "2"][..], &["--access-file", access.path()][..]] {
        let mut args = vec!["--workers", "2", "--metrics", "127.0.0.1:0", "--max-connections", &cap];
        args.extend_from_slice(threads);
        let server = ServerProcess::start(&args);
        let deadline = Instant::now() + PATIENCE;
        loop {
            let sizes: Vec<u64> = util::children(server.pid())
                .iter()
                .filter_map(|pid| simple_tcp_server::limits::fd_table_size_of(&pid.to_string()))
                .collect();
            if sizes.len() == 2 && sizes.iter().all(|&size| (CAP + 32..2 * (CAP + 32)).contains(&size)) {
                break;
            }
            assert!(Instant::now() < deadline, "{args:?}: workers' FDSize {sizes:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
        // The supervisor holds no clients: its table is not grown, though
        // it runs the metrics thread.
        let size = fd_table_size(server.pid());
        assert!(size < CAP + 32, "{args:?}: the supervisor's FDSize {size}");
    }
}
