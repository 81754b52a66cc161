//! Reference loops for the load measurements (issue 4): what the kernel
//! alone costs, measured in the same session as `simple_tcp_server`.
//!
//! ```text
//! cargo run --release --example reference_server -- MODE [HOST] [PORT]
//! ```
//!
//! Both modes are a bare mio loop over a slab holding only the socket and
//! whether its greeting is out; both greet with `Let's GO!\n` so `tcp_load`
//! drives them exactly as it drives the server, and both print
//! `Listening to:  ADDR` to stderr.
//!
//! - `bare`: reads each readable socket to `WouldBlock` into one 64 KiB
//!   buffer and prints nothing: the kernel's TCP work and nothing else.
//! - `write-limit`: reads 64 KiB blocks and, for each read of n bytes,
//!   writes as many filler bytes to stdout as the server's frames would take
//!   (n + 6 per 25-byte frame), through a 64 KiB buffer: the kernel's read
//!   and write work with no formatting at all.
//!
//! They stop on SIGINT/SIGTERM. Not a product: no error handling beyond
//! closing a connection that fails.

use std::io::{self, BufWriter, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

const LISTENER: Token = Token(usize::MAX);
const SIGNALS: Token = Token(usize::MAX - 1);
/// Read block, as in the issue's reference loop.
const BLOCK: usize = 64 * 1024;
/// Frame bytes and per-frame overhead of `<25:...>\n`.
const FRAME: usize = 25;
const OVERHEAD: usize = 6;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Bare,
    WriteLimit,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = match args.first().map(String::as_str) {
        Some("bare") => Mode::Bare,
        Some("write-limit") => Mode::WriteLimit,
        _ => {
            eprintln!("usage: reference_server bare|write-limit [HOST] [PORT]");
            return ExitCode::from(2);
        }
    };
    let host = args.get(1).map(String::as_str).unwrap_or("127.0.0.1");
    let port: u16 = match args.get(2).map(|p| p.parse()) {
        None => 50000,
        Some(Ok(p)) => p,
        Some(Err(_)) => {
            eprintln!("reference_server: bad port");
            return ExitCode::from(2);
        }
    };
    match run(mode, host, port) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("reference_server: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(mode: Mode, host: &str, port: u16) -> io::Result<()> {
    simple_tcp_server::limits::raise_nofile_limit()?;
    let addr: SocketAddr = simple_tcp_server::listen::resolve(host, port)?[0];
    let mut listener = TcpListener::from_std(simple_tcp_server::listen::listen(addr, 1024)?);
    let mut poll = Poll::new()?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut signals = signal_hook_mio::v1_0::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])?;
    poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
    eprintln!("Listening to:  {}", listener.local_addr()?);

    // Straight to the descriptor, as the server writes: std's stdout is
    // line-buffered and would scan every block for newlines (that scan was
    // 16% of this loop's CPU before).
    let stdout = std::fs::File::from(std::os::fd::AsFd::as_fd(&io::stdout()).try_clone_to_owned()?);
    let mut out = BufWriter::with_capacity(BLOCK, stdout);
    let filler = vec![b'.'; BLOCK * 2];
    let mut buf = vec![0u8; BLOCK];
    let mut events = Events::with_capacity(1024);
    // The socket and whether its greeting is out: nothing else.
    let mut conns: Slab<(TcpStream, bool)> = Slab::new();
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for event in events.iter() {
            match event.token() {
                LISTENER => loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let entry = conns.vacant_entry();
                            poll.registry()
                                .register(&mut stream, Token(entry.key()), Interest::READABLE)?;
                            let greeted = stream.write(simple_tcp_server::GREETING).is_ok();
                            entry.insert((stream, greeted));
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => break,
                    }
                },
                SIGNALS => {
                    out.flush()?;
                    return Ok(());
                }
                Token(key) => {
                    let Some((stream, _)) = conns.get_mut(key) else {
                        continue;
                    };
                    let mut close = false;
                    loop {
                        match stream.read(&mut buf) {
                            Ok(0) => {
                                close = true;
                                break;
                            }
                            Ok(n) => {
                                if mode == Mode::WriteLimit {
                                    let bytes = n + n.div_ceil(FRAME) * OVERHEAD;
                                    out.write_all(&filler[..bytes])?;
                                }
                            }
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(e) if e.kind() == ErrorKind::Interrupted => {}
                            Err(_) => {
                                close = true;
                                break;
                            }
                        }
                    }
                    if close {
                        conns.remove(key);
                    }
                }
            }
        }
        if mode == Mode::WriteLimit {
            out.flush()?;
        }
    }
}
