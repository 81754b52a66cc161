//! The library entry point, run in-process as the benches run it: the same
//! reactor the binary runs, with a test-owned sink and stop handle.

mod util;

use std::io::Read;
use std::net::{Shutdown, TcpStream};

use simple_tcp_server::Config;
use util::{InProcess, contains, send};

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
