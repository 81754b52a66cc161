//! Many clients at once on one thread.

mod util;

use std::io::Read;
use std::net::TcpStream;

use util::{PATIENCE, ServerProcess, send};

#[test]
fn two_thousand_clients_at_once_on_one_thread() {
    const CLIENTS: usize = 2000;
    let server = ServerProcess::start(&["--tag"]);
    let mut clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|i| TcpStream::connect(server.addr).unwrap_or_else(|e| panic!("connect #{i}: {e}")))
        .collect();
    for (i, client) in clients.iter_mut().enumerate() {
        client.set_read_timeout(Some(PATIENCE)).expect("timeout");
        let mut greeting = [0u8; 10];
        client
            .read_exact(&mut greeting)
            .unwrap_or_else(|e| panic!("greeting #{i}: {e}"));
        assert_eq!(&greeting, b"Let's GO!\n");
    }
    server.wait_lines("Connection from:", CLIENTS);
    for (i, client) in clients.iter_mut().enumerate() {
        send(client, format!("client {i} says hi").as_bytes());
    }
    server.wait_lines("127.0.0.1:", CLIENTS);
    assert_eq!(server.threads(), 1, "the server runs on one thread");

    let streams = util::streams_by_client(&server.stdout.bytes());
    for (i, client) in clients.iter().enumerate() {
        let me = client.local_addr().expect("addr").to_string();
        assert_eq!(
            streams.get(&me).map(Vec::as_slice),
            Some(format!("client {i} says hi").as_bytes()),
            "client {i} at {me}"
        );
    }
    drop(clients);
    server.wait_lines("Closed connection:", CLIENTS);
    assert_eq!(server.threads(), 1);
}
