//! Spreading clients evenly over the reactors.
//!
//! The kernel spreads new connections over `SO_REUSEPORT` listeners by a
//! hash of their addresses, which is even only on average: a hundred
//! clients on two reactors seldom split evenly (55/45 is common), and under
//! a bulk load the reactor with fewer clients runs out of work while the
//! other still has part of the run to go, on one core.
//! So every reactor counts the clients it serves, and one that accepts a
//! client while another serves [`GAP`] or more fewer hands it over: the
//! stream goes into that reactor's inbox and its eventfd wakes it, and it
//! serves the client from the start (access rules, PROXY header,
//! `Connection from`, greeting). A client is handed over at most once, before
//! a byte of it is read, so it still stays on one reactor for its life.
//!
//! A reactor that stops closes its inbox and serves what was in it; a
//! client handed to a closed inbox comes back to the reactor that accepted
//! it. With one reactor nothing is ever handed over.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use mio::net::TcpStream;

/// How many more clients than the least busy reactor a reactor must serve
/// before it hands a new one over: with 2, counts stay within about two of
/// each other, and a reactor never hands a client over only to be handed
/// one back.
pub(super) const GAP: usize = 2;

/// Added to a closed reactor's count, so that it is never the least busy.
const CLOSED: usize = usize::MAX / 4;

/// A client accepted by one reactor for another to serve.
pub(super) type Client = (TcpStream, SocketAddr);

/// One reactor's count and inbox, in cache lines of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Share {
    /// Clients this reactor serves or has been handed (plus [`CLOSED`] once
    /// it takes no more).
    count: AtomicUsize,
    /// Clients handed to it that it has not taken yet.
    inbox: Mutex<Inbox>,
}

#[derive(Debug, Default)]
struct Inbox {
    clients: Vec<Client>,
    closed: bool,
}

/// The reactors' counts and inboxes.
#[derive(Debug)]
pub(super) struct Balance {
    shares: Vec<Share>,
}

impl Balance {
    /// Counts for `reactors` reactors, all at zero.
    pub(super) fn new(reactors: usize) -> Balance {
        Balance {
            shares: (0..reactors.max(1)).map(|_| Share::default()).collect(),
        }
    }

    /// Which reactor serves a client that reactor `id` has just accepted:
    /// `id`, unless another serves [`GAP`] or more fewer. The client is
    /// counted there.
    #[inline]
    pub(super) fn place(&self, id: usize) -> usize {
        let mine = self.shares[id].count.load(Ordering::Relaxed);
        let (mut to, mut least) = (id, mine);
        for (other, share) in self.shares.iter().enumerate() {
            let count = share.count.load(Ordering::Relaxed);
            if count + GAP <= mine && count < least {
                (to, least) = (other, count);
            }
        }
        self.shares[to].count.fetch_add(1, Ordering::Relaxed);
        to
    }

    /// Reactor `id` no longer serves one of its clients.
    #[inline]
    pub(super) fn closed(&self, id: usize) {
        self.shares[id].count.fetch_sub(1, Ordering::Relaxed);
    }

    /// Puts `client`, which reactor `from` accepted and [`Balance::place`]
    /// gave to `to`, in `to`'s inbox; the caller then wakes `to`. If `to`
    /// takes no more clients, the client is counted back to `from` and
    /// returned, for `from` to serve.
    pub(super) fn hand_over(&self, from: usize, to: usize, client: Client) -> Result<(), Client> {
        {
            let mut inbox = self.shares[to].inbox.lock().unwrap_or_else(|e| e.into_inner());
            if !inbox.closed {
                inbox.clients.push(client);
                return Ok(());
            }
        }
        self.shares[to].count.fetch_sub(1, Ordering::Relaxed);
        self.shares[from].count.fetch_add(1, Ordering::Relaxed);
        Err(client)
    }

    /// The clients handed to reactor `id` since it last looked.
    pub(super) fn take(&self, id: usize) -> Vec<Client> {
        let mut inbox = self.shares[id].inbox.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut inbox.clients)
    }

    /// Reactor `id` takes no more clients (it is stopping, or has ended):
    /// returns those handed to it that it has not taken. Later calls
    /// return nothing.
    pub(super) fn close(&self, id: usize) -> Vec<Client> {
        let mut inbox = self.shares[id].inbox.lock().unwrap_or_else(|e| e.into_inner());
        if !inbox.closed {
            inbox.closed = true;
            self.shares[id].count.fetch_add(CLOSED, Ordering::Relaxed);
        }
        std::mem::take(&mut inbox.clients)
    }

    /// How many clients each reactor serves or has been handed (a stopped
    /// reactor's count is its clients still open).
    #[cfg(test)]
    fn counts(&self) -> impl Iterator<Item = usize> + '_ {
        self.shares.iter().map(|s| {
            let count = s.count.load(Ordering::Relaxed);
            if count >= CLOSED { count - CLOSED } else { count }
        })
    }

    /// Reactors.
    pub(super) fn len(&self) -> usize {
        self.shares.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> (Client, std::net::TcpListener, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let here = std::net::TcpStream::connect(addr).expect("connect");
        let peer = here.local_addr().expect("addr");
        let (there, _) = listener.accept().expect("accept");
        ((TcpStream::from_std(there), peer), listener, here)
    }

    #[test]
    fn one_reactor_keeps_every_client() {
        let b = Balance::new(1);
        for _ in 0..10 {
            assert_eq!(b.place(0), 0);
        }
        assert_eq!(b.counts().collect::<Vec<_>>(), [10]);
        b.closed(0);
        assert_eq!(b.counts().collect::<Vec<_>>(), [9]);
    }

    #[test]
    fn a_reactor_keeps_clients_until_another_has_gap_fewer() {
        let b = Balance::new(3);
        // Reactor 0 gets everything the kernel sends it: it keeps clients
        // while no other has GAP fewer, else hands them to the least busy.
        let placed: Vec<usize> = (0..9).map(|_| b.place(0)).collect();
        assert_eq!(placed, [0, 0, 1, 2, 0, 1, 2, 0, 1]);
        assert_eq!(b.counts().collect::<Vec<_>>(), [4, 3, 2]);
        // Whatever order the kernel's hash delivers, counts stay within GAP.
        for i in 0..300 {
            b.place([0, 0, 1, 0, 0, 2][i % 6]);
            let counts: Vec<usize> = b.counts().collect();
            let (lo, hi) = (counts.iter().min().unwrap_or(&0), counts.iter().max().unwrap_or(&0));
            assert!(hi - lo <= GAP, "{counts:?}");
        }
        // Closes make room: the reactor that lost clients is chosen.
        for _ in 0..4 {
            b.closed(1);
        }
        let before: Vec<usize> = b.counts().collect();
        assert_eq!(b.place(0), 1, "{before:?}");
    }

    #[test]
    fn a_closed_reactor_gets_no_clients_and_returns_them() {
        let b = Balance::new(2);
        assert_eq!([b.place(0), b.place(0), b.place(0)], [0, 0, 1]);
        let (c, _l, _h) = client();
        let peer = c.1;
        b.hand_over(0, 1, c).expect("open inbox");
        // Closing returns what was handed over and not taken, once.
        let left = b.close(1);
        assert_eq!(left.iter().map(|c| c.1).collect::<Vec<_>>(), [peer]);
        assert!(b.close(1).is_empty());
        // A closed reactor is never chosen again...
        for _ in 0..5 {
            assert_eq!(b.place(0), 0);
        }
        assert_eq!(b.counts().collect::<Vec<_>>(), [7, 1]);
        // ...and a client placed there just before it closed comes back to
        // the reactor that accepted it, counted there.
        let (c, _l, _h) = client();
        let peer = c.1;
        let back = b.hand_over(0, 1, c).expect_err("closed inbox");
        assert_eq!(back.1, peer);
        assert_eq!(b.counts().collect::<Vec<_>>(), [8, 0]);
    }

    #[test]
    fn take_empties_the_inbox() {
        let b = Balance::new(2);
        let (c, _l, _h) = client();
        b.place(0);
        b.place(0);
        assert_eq!(b.place(0), 1);
        b.hand_over(0, 1, c).expect("open inbox");
        assert_eq!(b.take(1).len(), 1);
        assert!(b.take(1).is_empty());
        assert_eq!(b.len(), 2);
    }
}
