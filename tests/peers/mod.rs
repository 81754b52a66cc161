//! Small hostile servers for the tests of `tcp_client` and `tcp_load`, each
//! on threads of the test process, on 127.0.0.1 port 0: one that never
//! reads, one that never greets, one that resets after N bytes, one that
//! never closes. (The trickling and split-UTF-8 servers are scripted in the
//! tests that use them.) Every connection is shut down when the peer is
//! dropped, so no thread outlives its test for long.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Accepts one connection on `listener`, or panics after `timeout`.
pub fn accept_within(listener: &TcpListener, timeout: Duration) -> TcpStream {
    listener.set_nonblocking(true).expect("nonblocking listener");
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).expect("blocking stream");
                return stream;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "no connection within {timeout:?}");
                thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// What the peer does with what a client sends.
#[derive(Debug, Clone, Copy)]
pub enum Reads {
    /// Nothing: the client's writes fill the buffers and block.
    Never,
    /// Reads everything, until the client closes its side.
    All,
    /// Reads this many bytes from each connection, then resets it.
    ResetAfter(u64),
}

/// How a hostile peer behaves on every connection.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// Written on connect (`None`: never greets).
    pub greeting: Option<&'static [u8]>,
    /// What it does with the client's bytes.
    pub reads: Reads,
    /// Closes a connection once the client has closed its side (as our
    /// server does); otherwise keeps it open until the peer is dropped.
    pub close_at_eof: bool,
}

impl Behaviour {
    /// Greets like our server, never reads.
    pub fn never_reads() -> Behaviour {
        Behaviour {
            greeting: Some(b"Let's GO!\n"),
            reads: Reads::Never,
            close_at_eof: false,
        }
    }

    /// Reads like our server, never greets.
    pub fn never_greets() -> Behaviour {
        Behaviour {
            greeting: None,
            reads: Reads::All,
            close_at_eof: true,
        }
    }

    /// Greets, reads `n` bytes of each connection, then resets it.
    pub fn resets_after(n: u64) -> Behaviour {
        Behaviour {
            greeting: Some(b"Let's GO!\n"),
            reads: Reads::ResetAfter(n),
            close_at_eof: true,
        }
    }

    /// Greets and reads like our server, but never closes.
    pub fn never_closes() -> Behaviour {
        Behaviour {
            greeting: Some(b"Let's GO!\n"),
            reads: Reads::All,
            close_at_eof: false,
        }
    }
}

/// A running hostile peer.
pub struct Peer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// A handle on every connection, to shut them all down on drop.
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accepted: Arc<AtomicUsize>,
    received: Arc<AtomicU64>,
    resets: Arc<AtomicUsize>,
}

impl Peer {
    /// Starts a peer that treats every connection as `behaviour` says.
    pub fn start(behaviour: Behaviour) -> Peer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind peer");
        let addr = listener.local_addr().expect("peer addr");
        let peer = Peer {
            addr,
            stop: Arc::default(),
            conns: Arc::default(),
            accepted: Arc::default(),
            received: Arc::default(),
            resets: Arc::default(),
        };
        let (stop, conns, accepted, received, resets) = (
            Arc::clone(&peer.stop),
            Arc::clone(&peer.conns),
            Arc::clone(&peer.accepted),
            Arc::clone(&peer.received),
            Arc::clone(&peer.resets),
        );
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                accepted.fetch_add(1, Ordering::SeqCst);
                if let Ok(handle) = stream.try_clone() {
                    conns.lock().expect("conns").push(handle);
                }
                if let Some(greeting) = behaviour.greeting {
                    let _ = stream.write_all(greeting);
                }
                let (behaviour, conns, received, resets) = (
                    behaviour.clone(),
                    Arc::clone(&conns),
                    Arc::clone(&received),
                    Arc::clone(&resets),
                );
                thread::spawn(move || serve(stream, &behaviour, &conns, &received, &resets));
            }
        });
        peer
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Bytes read from all connections so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    /// Connections reset so far.
    pub fn resets(&self) -> usize {
        self.resets.load(Ordering::SeqCst)
    }
}

fn serve(
    mut stream: TcpStream,
    behaviour: &Behaviour,
    conns: &Mutex<Vec<TcpStream>>,
    received: &AtomicU64,
    resets: &AtomicUsize,
) {
    let limit = match behaviour.reads {
        // Held in `conns` until the peer is dropped.
        Reads::Never => return,
        Reads::All => u64::MAX,
        Reads::ResetAfter(n) => n,
    };
    let mut buf = [0u8; 64 * 1024];
    let mut got = 0u64;
    while got < limit {
        let want = buf.len().min(usize::try_from(limit - got).unwrap_or(usize::MAX));
        match stream.read(&mut buf[..want]) {
            Ok(0) | Err(_) => {
                if behaviour.close_at_eof {
                    let _ = stream.shutdown(Shutdown::Both);
                    // The handle in `conns` keeps the socket: shut it down,
                    // which sends the FIN now.
                    drop_handle(conns, &stream);
                }
                return;
            }
            Ok(n) => {
                got += n as u64;
                received.fetch_add(n as u64, Ordering::SeqCst);
            }
        }
    }
    // Reset: SO_LINGER 0, and close every handle on the socket.
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER");
    drop_handle(conns, &stream);
    drop(stream);
    resets.fetch_add(1, Ordering::SeqCst);
}

/// Forgets the shared handle on `stream`'s socket.
fn drop_handle(conns: &Mutex<Vec<TcpStream>>, stream: &TcpStream) {
    let Ok(local) = stream.peer_addr() else { return };
    if let Ok(mut conns) = conns.lock() {
        conns.retain(|c| c.peer_addr().ok() != Some(local));
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
        if let Ok(conns) = self.conns.lock() {
            for c in conns.iter() {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }
}
