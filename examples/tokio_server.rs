//! The tokio baseline as a server of its own, for load runs from another
//! process (`scripts/load_bench.py --scenario cores`, `tcp_load`): what a
//! user who picked tokio would write instead of `simple_tcp_server
//! --threads N`.
//!
//! ```text
//! cargo run --release --example tokio_server -- [HOST] [PORT]
//! ```
//!
//! tokio's multi-thread runtime (one worker per core), a task per
//! connection, the greeting `Let's GO!\n`, and the server's framing: reads
//! of `config::DEFAULT_READ_BUFFER` rounded down to whole 25-byte frames,
//! cut by the library's `Framer` in 256 KiB windows. The tasks never write
//! stdout themselves: they send whole-line batches through a bounded queue
//! to one writer thread, so a slow stdout never blocks a worker (it fills
//! the queue, and the tasks wait). The transcript is the server's:
//! `Listening to:  ADDR` first, then `Connection from:  ADDR`, the
//! `<LEN:TEXT>` lines and `Closed connection:  ADDR` on stdout.
//!
//! The server itself is the bench design `tokio_multi_thread_writer`
//! (benches/baselines/tokio_writer.rs and lines.rs, included here), so the
//! criterion bench and the load runs measure the same code. SIGINT or
//! SIGTERM: stop accepting, end each connection once it has nothing more
//! to read, write everything, exit 0; a second signal exits at once. Not a
//! product: no options, no `--tag`, no cap.

#[path = "../benches/baselines/lines.rs"]
mod lines;
#[path = "../benches/baselines/tokio_writer.rs"]
mod tokio_writer;

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::process::ExitCode;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() > 2 || args.iter().any(|a| a.starts_with('-')) {
        eprintln!("usage: tokio_server [HOST] [PORT]");
        return ExitCode::from(2);
    }
    let host = args
        .first()
        .map(String::as_str)
        .unwrap_or(simple_tcp_server::protocol::DEFAULT_HOST);
    let port = match args.get(1).map(|p| p.parse::<u16>()) {
        None => simple_tcp_server::protocol::DEFAULT_PORT,
        Some(Ok(port)) => port,
        Some(Err(_)) => {
            eprintln!("tokio_server: bad port {:?}", args[1]);
            return ExitCode::from(2);
        }
    };
    match run(host, port) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokio_server: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(host: &str, port: u16) -> io::Result<()> {
    // As the server does: thousands of clients need thousands of descriptors.
    simple_tcp_server::limits::raise_nofile_limit()?;
    let addr = simple_tcp_server::listen::resolve(host, port)?[0];
    let listener = simple_tcp_server::listen::listen(addr, simple_tcp_server::config::DEFAULT_BACKLOG)?;
    // The writer writes straight to the stdout descriptor, as the server
    // does: whole-line batches, without std's line buffering.
    let stdout = std::fs::File::from(io::stdout().as_fd().try_clone_to_owned()?);
    let server = tokio_writer::Server::new(listener, stdout, tokio_writer::QUEUE + 1)?;
    let stopper = server.stopper();
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        let mut signals = signals.forever();
        if signals.next().is_some() {
            stopper.stop();
        }
        if let Some(signal) = signals.next() {
            // A second signal: no more waiting.
            std::process::exit(128 + signal);
        }
    })?;
    // Before any connection is accepted (the writer prints nothing before).
    let mut out = io::stdout().lock();
    writeln!(out, "Listening to:  {}", server.local_addr())?;
    out.flush()?;
    drop(out);
    server.run()
}
