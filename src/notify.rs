//! systemd's readiness protocol (`sd_notify(3)`): `READY=1` once the server
//! serves, `STOPPING=1` when it begins to drain, as datagrams to the socket
//! named by `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket).
//! Nothing happens when the variable is unset (not under systemd).
//!
//! A notification never blocks the server: the datagram is sent without
//! waiting, and a full queue (a service manager that does not read it) is
//! a warning, not a stall.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use log::warn;

/// Tells the service manager that the server serves.
pub fn ready() {
    send("READY=1");
}

/// Tells the service manager that the server is stopping.
pub fn stopping() {
    send("STOPPING=1");
}

/// Sends `state`, warning (not failing) when it cannot.
fn send(state: &str) {
    if let Err(e) = notify(state) {
        warn!("cannot notify systemd ({state}): {e}");
    }
}

/// Sends `state` to `$NOTIFY_SOCKET` without blocking. `Ok(false)` when
/// the variable is unset.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(name) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let addr = socket_addr(name.as_bytes())?;
    let socket = UnixDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    match socket.send_to_addr(state.as_bytes(), &addr) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(io::Error::new(
            e.kind(),
            "the notification socket's queue is full; not waiting for it",
        )),
        Err(e) => Err(e),
    }
}

/// The address `$NOTIFY_SOCKET` names: a path, or `@name` for the
/// abstract socket `name`.
fn socket_addr(name: &[u8]) -> io::Result<SocketAddr> {
    match name {
        [b'@', abstract_name @ ..] => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(abstract_name)
        }
        [b'/', ..] => SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(name)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "NOTIFY_SOCKET={:?} is neither a path nor an abstract socket (@name)",
                String::from_utf8_lossy(name)
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_abstract_names_are_addresses() {
        use std::os::linux::net::SocketAddrExt;
        let path = socket_addr(b"/run/systemd/notify").expect("a path");
        assert_eq!(path.as_pathname(), Some(std::path::Path::new("/run/systemd/notify")));
        let abstract_addr = socket_addr(b"@stcp-notify").expect("an abstract name");
        assert_eq!(abstract_addr.as_abstract_name(), Some(&b"stcp-notify"[..]));
        assert!(socket_addr(b"vsock:2:1234").is_err());
        assert!(socket_addr(b"").is_err());
    }
}
