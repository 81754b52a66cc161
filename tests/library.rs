//! The library entry point, run in-process as the benches run it: the same
//! reactor the binary runs, with a test-owned sink and stop handle.

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};

use simple_tcp_server::Config;
use util::{InProcess, PATIENCE, contains, send};

#[test]
fn a_greeting_larger_than_the_socket_buffers_is_finished_on_writable() {
    // 16 MiB is more than the kernel's largest send buffer (4 MiB here) plus
    // the client's receive buffer, so the first write is partial and the rest
    // goes out on WRITABLE events.
    let big = vec![b'g'; 16 << 20];
    let server = InProcess::start(Config {
        greeting: big.clone(),
        ..Config::default()
    });
    let mut slow = TcpStream::connect(server.addr).expect("connect");
    // Meanwhile another client is served normally.
    let mut other = TcpStream::connect(server.addr).expect("connect");
    send(&mut other, b"still served");
    assert!(
        server
            .out
            .wait_for(util::PATIENCE, |o| contains(o, b"<12:still served>\n"))
    );
    send(&mut slow, b"sent while greeted");
    assert!(
        server
            .out
            .wait_for(util::PATIENCE, |o| contains(o, b"<18:sent while greeted>\n"))
    );
    let mut got = vec![0u8; big.len()];
    slow.read_exact(&mut got).expect("the whole greeting");
    assert!(got == big);
    drop(other);
    slow.shutdown(Shutdown::Write).expect("shutdown");
    assert!(
        server
            .out
            .wait_for(util::PATIENCE, |o| util::count_lines(o, "Closed connection:") == 2)
    );
    let summary = server.stop();
    assert_eq!((summary.accepted, summary.bytes, summary.frames), (2, 30, 2));
}

/// The library's `Config` is public, `read_buffer` with it: a server whose
/// read buffer is smaller than the 4096-byte PROXY header limit reads a
/// PROXY header into the buffer it has, greets the client behind it, and
/// counts it, without panicking.
#[test]
fn a_small_read_buffer_behind_a_proxy_does_not_panic() {
    let server = InProcess::start(Config {
        read_buffer: 1000,
        proxy_protocol: true,
        proxy_from: simple_tcp_server::config::loopback_nets(),
        ..Config::default()
    });
    let mut client = TcpStream::connect(server.addr).expect("connect");
    client.set_read_timeout(Some(PATIENCE)).expect("timeout");
    client
        .write_all(b"PROXY TCP4 10.0.0.1 127.0.0.1 1 2\r\nhello")
        .expect("send");
    let mut greeting = [0u8; 10];
    let greeted = client.read_exact(&mut greeting);
    assert!(greeted.is_ok(), "no greeting: {greeted:?}");
    drop(client);
    let summary = server.stop();
    assert_eq!(summary.accepted, 1);
}
