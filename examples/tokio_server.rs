//! The tokio baseline as a server of its own, for load runs from another
//! process (`scripts/load_bench.py --scenario cores`, `tcp_load`): what a
//! user who picked tokio would write instead of `simple_tcp_server
//! --threads N`.
//!
//! ```text
//! cargo run --release --example tokio_server -- [--design writer|direct] [--prefault N] [HOST] [PORT]
//! ```
//!
//! tokio's multi-thread runtime (one worker per core), a task per
//! connection, the greeting `Let's GO!\n`, and the server's framing: reads
//! of `config::DEFAULT_READ_BUFFER` rounded down to whole 25-byte frames,
//! cut by the library's `Framer` in 256 KiB windows. The transcript is the
//! server's: `Listening to:  ADDR` first, then `Connection from:  ADDR`, the
//! `<LEN:TEXT>` lines and `Closed connection:  ADDR` on stdout. Two designs
//! a tokio user would write:
//!
//! - `writer` (the default): the tasks never write stdout themselves: each
//!   reads into its own buffers (from a pool kept across connections) and
//!   sends whole-line batches through a bounded queue to one writer thread,
//!   so a slow stdout never blocks a worker (it fills the queue, and the
//!   tasks wait). `--prefault N` fills the pool for N connections before it
//!   listens and touches every page, as the reactor touches its buffers, so
//!   that no page faults while clients send. The bench design
//!   `tokio_multi_thread_writer` (benches/baselines/tokio_writer.rs).
//! - `direct`: the tasks write whole lines to stdout themselves, under a
//!   lock, as the reactors do, from buffers that belong to the runtime's
//!   worker threads (touched when each starts), not to the tasks. The bench
//!   design `tokio_multi_thread_direct` (benches/baselines/tokio_direct.rs).
//!
//! The files are included here with `#[path]`, so the criterion bench and
//! the load runs measure the same code. SIGINT or
//! SIGTERM: stop accepting, end each connection once it has nothing more
//! to read, write everything, exit 0; a second signal exits at once. Not a
//! product: no options, no `--tag`, no cap.

#[path = "../benches/baselines/lines.rs"]
mod lines;
#[path = "../benches/baselines/tokio_direct.rs"]
mod tokio_direct;
#[path = "../benches/baselines/tokio_writer.rs"]
mod tokio_writer;

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::process::ExitCode;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

const USAGE: &str = "usage: tokio_server [--design writer|direct] [--prefault N] [HOST] [PORT]";

/// Which tokio server.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Design {
    Writer,
    Direct,
}

fn main() -> ExitCode {
    let mut design = Design::Writer;
    let mut prefault = 0usize;
    let mut positional = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--design" => match args.next().as_deref() {
                Some("writer") => design = Design::Writer,
                Some("direct") => design = Design::Direct,
                _ => {
                    eprintln!("{USAGE}");
                    return ExitCode::from(2);
                }
            },
            "--prefault" => match args.next().map(|n| n.parse::<usize>()) {
                Some(Ok(n)) => prefault = n,
                _ => {
                    eprintln!("{USAGE}");
                    return ExitCode::from(2);
                }
            },
            _ if arg.starts_with('-') || positional.len() == 2 => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
            _ => positional.push(arg),
        }
    }
    if prefault > 0 && design == Design::Direct {
        eprintln!(
            "tokio_server: --prefault is for --design writer (direct's buffers are the workers', always touched)"
        );
        return ExitCode::from(2);
    }
    let host = positional
        .first()
        .map(String::as_str)
        .unwrap_or(simple_tcp_server::protocol::DEFAULT_HOST);
    let port = match positional.get(1).map(|p| p.parse::<u16>()) {
        None => simple_tcp_server::protocol::DEFAULT_PORT,
        Some(Ok(port)) => port,
        Some(Err(_)) => {
            eprintln!("tokio_server: bad port {:?}", positional[1]);
            return ExitCode::from(2);
        }
    };
    match run(host, port, design, prefault) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokio_server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Stops the server (from the signal thread).
type Stop = Box<dyn Fn() + Send>;
/// Serves until stopped.
type Serve = Box<dyn FnOnce() -> io::Result<()>>;

fn run(host: &str, port: u16, design: Design, prefault: usize) -> io::Result<()> {
    // As the server does: thousands of clients need thousands of descriptors.
    simple_tcp_server::limits::raise_nofile_limit()?;
    let addr = simple_tcp_server::listen::resolve(host, port)?[0];
    let listener = simple_tcp_server::listen::listen(addr, simple_tcp_server::config::DEFAULT_BACKLOG)?;
    // As the server does before its threads start: the descriptor table
    // grows now, not a doubling at a time behind an RCU grace period once
    // the runtime's threads share it.
    simple_tcp_server::limits::grow_fd_table(listener.as_fd(), u64::MAX)?;
    // Straight to the stdout descriptor, as the server writes: whole-line
    // batches, without std's line buffering.
    let stdout = std::fs::File::from(io::stdout().as_fd().try_clone_to_owned()?);
    let (local, stop, serve): (_, Stop, Serve) = match design {
        Design::Writer => {
            lines::ConnBuffers::prefault_pool(prefault)?;
            let server = tokio_writer::Server::new(listener, stdout, tokio_writer::QUEUE + 1 + prefault)?;
            let stopper = server.stopper();
            (
                server.local_addr(),
                Box::new(move || stopper.stop()),
                Box::new(move || server.run()),
            )
        }
        Design::Direct => {
            let server = tokio_direct::Server::new(listener, stdout)?;
            let stopper = server.stopper();
            (
                server.local_addr(),
                Box::new(move || stopper.stop()),
                Box::new(move || server.run()),
            )
        }
    };
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        let mut signals = signals.forever();
        if signals.next().is_some() {
            stop();
        }
        if let Some(signal) = signals.next() {
            // A second signal: no more waiting.
            std::process::exit(128 + signal);
        }
    })?;
    // Before any connection is accepted (the servers print nothing before).
    let mut out = io::stdout().lock();
    writeln!(out, "Listening to:  {local}")?;
    out.flush()?;
    drop(out);
    serve()
}
