//! Clients that reset, half-close or never speak cost only their own
//! connection; every byte the server received is printed.

mod util;

use std::io::Read;
use std::net::{Shutdown, TcpStream};

use util::{Rng, ServerProcess, connect_greeted, reset, send, streams_by_client};

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
