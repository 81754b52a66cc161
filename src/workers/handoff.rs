//! Handing connections over between processes, over a Unix socket pair per
//! worker (`SCM_RIGHTS`, with a few bytes saying what they are):
//!
//! - the supervisor accepts the clients queued on the listener of a worker
//!   that stopped, died or began to drain (the kernel had put them there
//!   before the supervisor steered new ones away), and passes them to a
//!   worker that serves ([`Handed::Queued`]), so that no client waits on a
//!   worker that cannot serve it;
//! - behind a proxy with `--max-per-source`, a worker that reads a PROXY
//!   header naming a client another worker counts passes the connection to
//!   the supervisor, which passes it on to that worker
//!   ([`Handed::Client`]), so that each client address is counted in one
//!   place.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Descriptors passed in one message at most.
pub const PER_MESSAGE: usize = 64;

/// A connected pair of `SOCK_SEQPACKET` Unix sockets, both non-blocking:
/// the supervisor's end and the worker's.
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into a live local array.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: two fresh descriptors nobody else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The control buffer for [`PER_MESSAGE`] descriptors, aligned for
/// `cmsghdr`.
#[repr(C, align(8))]
struct Control([u8; control_len()]);

/// Bytes of a control message carrying [`PER_MESSAGE`] descriptors.
const fn control_len() -> usize {
    // CMSG_SPACE(PER_MESSAGE * 4): the header (16 bytes on 64-bit Linux)
    // plus the descriptors, rounded up to 8.
    std::mem::size_of::<libc::cmsghdr>() + (PER_MESSAGE * std::mem::size_of::<RawFd>()).next_multiple_of(8)
}

/// What a message hands over.
#[derive(Debug, PartialEq, Eq)]
pub enum Handed {
    /// Clients just accepted (from another worker's listener), to serve
    /// from the start.
    Queued,
    /// One client whose PROXY header has been read, for worker `to` (its
    /// address is counted there): `client` is the address the header named.
    Client {
        /// The worker the client is for.
        to: usize,
        /// The client's address, from its header.
        client: std::net::SocketAddr,
    },
}

impl Handed {
    /// The bytes that say it.
    fn encode(&self) -> Vec<u8> {
        match self {
            Handed::Queued => vec![0],
            Handed::Client { to, client } => {
                let mut data = vec![1];
                data.extend_from_slice(&(*to as u32).to_le_bytes());
                let (ip, v6) = match client.ip().to_canonical() {
                    std::net::IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), 0),
                    std::net::IpAddr::V6(v6) => (v6.octets(), 1),
                };
                data.push(v6);
                data.extend_from_slice(&ip);
                data.extend_from_slice(&client.port().to_le_bytes());
                data
            }
        }
    }

    /// What `data` says, if it says anything.
    fn decode(data: &[u8]) -> Option<Handed> {
        match data {
            [0] => Some(Handed::Queued),
            [1, rest @ ..] if rest.len() == 4 + 1 + 16 + 2 => {
                let to = u32::from_le_bytes(rest[..4].try_into().ok()?) as usize;
                let octets: [u8; 16] = rest[5..21].try_into().ok()?;
                let v6 = std::net::Ipv6Addr::from(octets);
                let ip = match rest[4] {
                    0 => std::net::IpAddr::V4(v6.to_ipv4_mapped()?),
                    _ => std::net::IpAddr::V6(v6),
                };
                let port = u16::from_le_bytes(rest[21..23].try_into().ok()?);
                Some(Handed::Client {
                    to,
                    client: std::net::SocketAddr::new(ip, port),
                })
            }
            _ => None,
        }
    }
}

/// One message received: what it hands over, and the descriptors.
#[derive(Debug)]
pub struct Message {
    /// What they are.
    pub what: Handed,
    /// The connections.
    pub fds: Vec<OwnedFd>,
}

/// Sends `fds` (at most [`PER_MESSAGE`]) as `what` in one message on
/// `socket`. The receiver gets copies; the caller still closes its own.
pub fn send(socket: &impl AsRawFd, fds: &[RawFd], what: &Handed) -> io::Result<()> {
    if fds.is_empty() || fds.len() > PER_MESSAGE {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "1 to 64 descriptors"));
    }
    let mut control = Control([0; control_len()]);
    let data_len = std::mem::size_of_val(fds) as u32;
    let mut bytes = what.encode();
    let mut iov = libc::iovec {
        iov_base: bytes.as_mut_ptr().cast(),
        iov_len: bytes.len(),
    };
    // SAFETY: an all-zero msghdr is valid; the fields are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a length.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(data_len) } as _;
    // SAFETY: `msg` points at `control`, which has room for one header and
    // `data_len` bytes of data (CMSG_SPACE of it, checked against the
    // buffer's length), so the header and its data are inside the buffer.
    unsafe {
        if msg.msg_controllen as usize > control.0.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "control buffer too small"));
        }
        let header = libc::CMSG_FIRSTHDR(&msg);
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = libc::CMSG_LEN(data_len) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(header).cast::<RawFd>(), fds.len());
    }
    loop {
        // SAFETY: sendmsg reads the message built above, whose pointers
        // point at live locals.
        let n = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Receives the messages waiting on `socket` into `out`, until it would
/// block. `Ok(false)` when the other end has closed. A message that says
/// nothing known has its descriptors closed.
pub fn receive(socket: &impl AsRawFd, out: &mut Vec<Message>) -> io::Result<bool> {
    loop {
        let mut control = Control([0; control_len()]);
        let mut bytes = [0u8; 64];
        let mut iov = libc::iovec {
            iov_base: bytes.as_mut_ptr().cast(),
            iov_len: bytes.len(),
        };
        // SAFETY: an all-zero msghdr is valid; the fields are set below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.0.as_mut_ptr().cast();
        msg.msg_controllen = control.0.len() as _;
        // SAFETY: recvmsg writes at most `bytes.len()` bytes into `bytes` and
        // at most `msg_controllen` bytes into `control`, both live locals.
        let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(true),
                _ => return Err(e),
            }
        }
        if n == 0 {
            return Ok(false);
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            // Out of descriptors: the kernel closed what did not fit.
            log::warn!("clients handed over were lost: no descriptor left to receive them");
        }
        let mut fds = Vec::new();
        // SAFETY: the kernel filled `msg`'s control part; the CMSG macros
        // walk it within `msg_controllen`, and every descriptor in an
        // SCM_RIGHTS message is a fresh one of this process's, ours to own.
        unsafe {
            let mut header = libc::CMSG_FIRSTHDR(&msg);
            while !header.is_null() {
                if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(header).cast::<RawFd>();
                    let bytes = (*header).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    for i in 0..bytes / std::mem::size_of::<RawFd>() {
                        fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                    }
                }
                header = libc::CMSG_NXTHDR(&msg, header);
            }
        }
        match Handed::decode(&bytes[..n as usize]) {
            Some(what) => out.push(Message { what, fds }),
            None => log::warn!("a handed-over message that says nothing known: its connections are closed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn an_ipv4_client_round_trips_as_ipv4() {
        for client in ["10.1.2.3:80", "[::ffff:10.1.2.3]:80", "[::1]:9"] {
            let client: std::net::SocketAddr = client.parse().expect("addr");
            let what = Handed::Client { to: 3, client };
            let back = Handed::decode(&what.encode()).expect("decoded");
            let canonical = std::net::SocketAddr::new(client.ip().to_canonical(), client.port());
            assert_eq!(
                back,
                Handed::Client {
                    to: 3,
                    client: canonical
                }
            );
        }
        assert_eq!(Handed::decode(&[9]), None);
        assert_eq!(Handed::decode(&[1, 2]), None);
    }

    #[test]
    fn connections_cross_to_the_other_end_and_still_work() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut clients = Vec::new();
        let mut accepted = Vec::new();
        for _ in 0..PER_MESSAGE + 3 {
            clients.push(std::net::TcpStream::connect(addr).expect("connect"));
            accepted.push(listener.accept().expect("accept").0);
        }
        let (supervisor, worker) = pair().expect("pair");
        let raw: Vec<RawFd> = accepted.iter().map(AsRawFd::as_raw_fd).collect();
        let client: std::net::SocketAddr = "[2001:db8::7]:4321".parse().expect("addr");
        send(&supervisor, &raw[..PER_MESSAGE], &Handed::Queued).expect("send");
        send(&supervisor, &raw[PER_MESSAGE..PER_MESSAGE + 2], &Handed::Queued).expect("send");
        send(&supervisor, &raw[PER_MESSAGE + 2..], &Handed::Client { to: 7, client }).expect("send");
        assert!(send(&supervisor, &[], &Handed::Queued).is_err());
        drop(accepted);
        let mut messages = Vec::new();
        assert!(receive(&worker, &mut messages).expect("receive"));
        let whats: Vec<&Handed> = messages.iter().map(|m| &m.what).collect();
        assert_eq!(
            whats,
            [&Handed::Queued, &Handed::Queued, &Handed::Client { to: 7, client }]
        );
        let got: Vec<OwnedFd> = messages.into_iter().flat_map(|m| m.fds).collect();
        assert_eq!(got.len(), PER_MESSAGE + 3);
        // The copies are the connections: what one end writes, the client
        // reads, in order.
        for (i, (fd, client)) in got.into_iter().zip(&mut clients).enumerate() {
            let mut stream = std::net::TcpStream::from(fd);
            stream.write_all(format!("hello {i}\n").as_bytes()).expect("write");
            drop(stream);
            let mut text = String::new();
            client.read_to_string(&mut text).expect("read");
            assert_eq!(text, format!("hello {i}\n"));
        }
        drop(supervisor);
        assert!(!receive(&worker, &mut Vec::new()).expect("receive"), "the end");
    }
}
