//! Clients that reset, half-close, never speak or send urgent data cost
//! only their own connection; every byte the server received is printed.

mod util;

use std::io::Read;
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;

use util::{PATIENCE, Rng, ServerProcess, connect_greeted, frames_of, reset, send, streams_by_client};

#[test]
fn reset_half_closed_and_silent_clients_do_not_disturb_the_others() {
    let server = ServerProcess::start(&["--tag"]);
    let mut normal = connect_greeted(server.addr);
    let normal_addr = normal.local_addr().expect("addr").to_string();
    send(&mut normal, b"before the trouble ");

    // Connects and never sends.
    let silent = connect_greeted(server.addr);

    // Resets mid-stream, after sending 50 kB.
    let mut rng = Rng::new(7);
    let reset_data = rng.bytes(50_000);
    let mut resetter = connect_greeted(server.addr);
    let reset_addr = resetter.local_addr().expect("addr").to_string();
    send(&mut resetter, &reset_data);
    reset(resetter);

    // Half-closes: sends, shuts its write side, and reads the server's EOF.
    let half_data = rng.bytes(30_000);
    let mut half = connect_greeted(server.addr);
    let half_addr = half.local_addr().expect("addr").to_string();
    send(&mut half, &half_data);
    half.shutdown(Shutdown::Write).expect("shutdown");
    let mut rest = Vec::new();
    half.read_to_end(&mut rest).expect("server closes after EOF");
    assert!(rest.is_empty());

    // Never greeted, resets at once.
    let quick = TcpStream::connect(server.addr).expect("connect");
    reset(quick);

    server.wait_lines("Closed connection:", 3);
    send(&mut normal, b"and after it");
    normal.shutdown(Shutdown::Write).expect("shutdown");
    server.wait_text(&format!("Closed connection:  {normal_addr}\n"));

    let streams = streams_by_client(&server.stdout.bytes());
    assert_eq!(
        streams.get(&normal_addr).map(Vec::as_slice),
        Some(&b"before the trouble and after it"[..])
    );
    assert!(
        streams.get(&half_addr).map(Vec::as_slice) == Some(&half_data[..]),
        "half-closed client's bytes"
    );
    // The reset client: whatever arrived before the reset is printed, in
    // order (on loopback that is all of it: the data is queued before the RST).
    let got = streams.get(&reset_addr).cloned().unwrap_or_default();
    assert!(reset_data.starts_with(&got), "reset client's bytes out of order");
    assert_eq!(got.len(), reset_data.len(), "bytes queued before the reset were lost");

    // The silent client is still connected and still served.
    let out = server.stdout.text();
    let silent_addr = silent.local_addr().expect("addr").to_string();
    assert!(!out.contains(&format!("Closed connection:  {silent_addr}")));
    let mut silent = silent;
    send(&mut silent, b"finally");
    server.wait_text(&format!("{silent_addr} <7:finally>\n"));
}

fn kill(pid: i32, signal: i32) {
    // SAFETY: kill has no memory effects; `pid` is a child of this test that
    // has not been reaped.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill({pid}, {signal})");
}

/// The bytes of every frame in an untagged transcript, in order.
fn printed(out: &[u8]) -> Vec<u8> {
    frames_of(out).into_iter().flat_map(|(_, _, bytes)| bytes).collect()
}

/// A client's urgent byte (`MSG_OOB`) ends the server's read at the urgent
/// mark on Linux; the server reads on past it in the same wakeup, and
/// prints the urgent byte in place, with the bytes around it.
#[test]
fn urgent_data_does_not_stall_a_connection() {
    let server = ServerProcess::start(&[]);
    let mut client = connect_greeted(server.addr);
    server.wait_lines("Connection from:  ", 1);
    // While the server is stopped, the kernel queues all three sends, and
    // Linux will end the server's read at the urgent mark.
    let pid = server.pid();
    kill(pid, libc::SIGSTOP);
    util::wait_until("the server to stop", || util::process_state(pid) == 'T');
    send(&mut client, b"hello");
    // SAFETY: send reads one byte from a live buffer on a descriptor
    // `client` owns.
    let sent = unsafe { libc::send(client.as_raw_fd(), b"!".as_ptr().cast(), 1, libc::MSG_OOB) };
    assert_eq!(sent, 1, "send MSG_OOB");
    send(&mut client, b"world");
    util::wait_until("the server's kernel to take all 11 bytes", || {
        util::unacked(&client) == 0
    });
    kill(pid, libc::SIGCONT);
    // No new data comes: everything must be printed from this one wakeup,
    // the urgent byte too, where it was sent.
    let whole = server.stdout.wait_for(PATIENCE, |out| printed(out) == b"hello!world");
    assert!(whole, "urgent data stalled the connection\n{}", server.context());
}
