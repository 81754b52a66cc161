//! The chapter's two-client session: the exact transcript, with the clients'
//! real addresses, and the greeting each client receives first.

mod util;

use std::io::Read;
use std::net::Shutdown;

use util::{ServerProcess, connect_greeted, send};

#[test]
fn two_clients_give_the_chapters_transcript() {
    let server = ServerProcess::start(&[]);
    let mut wong = connect_greeted(server.addr);
    let wong_addr = wong.local_addr().expect("local addr");
    server.wait_lines("Connection from:", 1);
    send(&mut wong, b"wong says: 123");
    server.wait_lines("<14:", 1);
    send(&mut wong, b"wong says: 12313");
    server.wait_lines("<16:", 1);

    let mut wong2 = connect_greeted(server.addr);
    let wong2_addr = wong2.local_addr().expect("local addr");
    server.wait_lines("Connection from:", 2);
    send(&mut wong2, b"wong2 says: wong2");
    server.wait_lines("<17:", 1);

    wong.shutdown(Shutdown::Write).expect("shutdown");
    // The server closes its side after printing; the client sees EOF.
    let mut rest = Vec::new();
    wong.read_to_end(&mut rest).expect("read to EOF");
    assert!(rest.is_empty());
    server.wait_lines("Closed connection:", 1);
    drop(wong2);
    server.wait_lines("Closed connection:", 2);

    let expected = format!(
        "Listening to:  {}\n\
         Connection from:  {wong_addr}\n\
         <14:wong says: 123>\n\
         <16:wong says: 12313>\n\
         Connection from:  {wong2_addr}\n\
         <17:wong2 says: wong2>\n\
         Closed connection:  {wong_addr}\n\
         Closed connection:  {wong2_addr}\n",
        server.addr
    );
    assert_eq!(server.stdout.text(), expected, "\n{}", server.context());
}

#[test]
fn tag_prefixes_frames_with_the_client_address() {
    let server = ServerProcess::start(&["--tag"]);
    let mut client = connect_greeted(server.addr);
    let addr = client.local_addr().expect("local addr");
    send(&mut client, b"wong says: 123");
    server.wait_text(&format!("{addr} <14:wong says: 123>\n"));
}

#[test]
fn greeting_can_be_changed_or_dropped() {
    let server = ServerProcess::start(&["--greeting", "hello there"]);
    let mut client = std::net::TcpStream::connect(server.addr).expect("connect");
    let mut greeting = [0u8; 12];
    client.read_exact(&mut greeting).expect("greeting");
    assert_eq!(&greeting, b"hello there\n");

    let server = ServerProcess::start(&["--no-greeting"]);
    let mut client = std::net::TcpStream::connect(server.addr).expect("connect");
    send(&mut client, b"hi");
    server.wait_text("<2:hi>\n");
    client.shutdown(Shutdown::Write).expect("shutdown");
    let mut got = Vec::new();
    client.read_to_end(&mut got).expect("read to EOF");
    assert!(got.is_empty(), "no greeting expected, got {got:?}");
}
