//! Framing: every byte comes back, in order, cut into frames of at most
//! `--max-read` bytes exactly as consecutive reads of that size would cut it.

mod util;

use std::net::{Shutdown, TcpStream};
use std::thread;

use util::{Rng, ServerProcess, connect_greeted, frames_of, send, streams_by_client};

/// Several clients at once send random streams (0 to 100 KiB, random write
/// sizes); each client's frames, unescaped, concatenate to what it sent.
fn random_streams_come_back_whole(max_read: usize) {
    let max = max_read.to_string();
    let server = ServerProcess::start(&["--tag", "--max-read", &max]);
    let clients: Vec<_> = (0..8u64)
        .map(|seed| {
            let addr = server.addr;
            thread::spawn(move || {
                let mut rng = Rng::new(seed + 1 + max_read as u64 * 100);
                let len = if seed == 0 { 0 } else { rng.range(1, 100 * 1024) };
                let data = rng.bytes(len);
                let mut client = connect_greeted(addr);
                let mut sent = 0;
                while sent < data.len() {
                    let n = rng.range(1, 9000).min(data.len() - sent);
                    send(&mut client, &data[sent..sent + n]);
                    sent += n;
                    if rng.range(0, 3) == 0 {
                        thread::sleep(std::time::Duration::from_micros(200));
                    }
                }
                let me = client.local_addr().expect("addr").to_string();
                client.shutdown(Shutdown::Write).expect("shutdown");
                (me, data, client)
            })
        })
        .collect();
    let sent: Vec<(String, Vec<u8>, TcpStream)> = clients.into_iter().map(|c| c.join().expect("client")).collect();
    server.wait_lines("Closed connection:", sent.len());

    let out = server.stdout.bytes();
    for (_, len, _) in frames_of(&out) {
        assert!(
            len >= 1 && len <= max_read,
            "frame of {len} bytes with --max-read {max_read}"
        );
    }
    let streams = streams_by_client(&out);
    for (addr, data, _) in &sent {
        let got = streams.get(addr).map(Vec::as_slice).unwrap_or_default();
        assert!(
            got == &data[..],
            "client {addr}: sent {} bytes, transcript has {}",
            data.len(),
            got.len()
        );
    }
}

#[test]
fn random_streams_come_back_whole_25() {
    random_streams_come_back_whole(25);
}

#[test]
fn random_streams_come_back_whole_512() {
    random_streams_come_back_whole(512);
}

/// A block that arrives whole is cut into full frames and one remainder, the
/// way consecutive `max_read`-byte reads would cut it.
fn blocks_cut_into_full_frames_and_a_remainder(max_read: usize) {
    let max = max_read.to_string();
    let server = ServerProcess::start(&["--max-read", &max]);
    let mut client = connect_greeted(server.addr);
    let mut rng = Rng::new(max_read as u64);
    let mut expected_frames = 0;
    for _ in 0..40 {
        // Printable so the test can count bytes in the transcript directly.
        let len = rng.range(1, 4000);
        let block: Vec<u8> = (0..len).map(|_| b'a' + (rng.next() % 26) as u8).collect();
        let before = server.stdout.bytes().len();
        send(&mut client, &block);
        // Wait until the whole block is printed before sending the next, so
        // each block arrives whole.
        let full = len / max_read;
        let rem = len % max_read;
        expected_frames += full + usize::from(rem > 0);
        let ok = server.stdout.wait_for(util::PATIENCE, |out| {
            frames_of(&out[before..]).iter().map(|f| f.1).sum::<usize>() == len
        });
        assert!(ok, "block of {len} not printed\n{}", server.context());
        let out = server.stdout.bytes();
        let lens: Vec<usize> = frames_of(&out[before..]).iter().map(|f| f.1).collect();
        let mut want = vec![max_read; full];
        if rem > 0 {
            want.push(rem);
        }
        assert_eq!(lens, want, "block of {len} bytes");
        let text: Vec<u8> = frames_of(&out[before..]).into_iter().flat_map(|f| f.2).collect();
        assert_eq!(text, block);
    }
    assert_eq!(frames_of(&server.stdout.bytes()).len(), expected_frames);
}

#[test]
fn blocks_cut_into_full_frames_and_a_remainder_25() {
    blocks_cut_into_full_frames_and_a_remainder(25);
}

#[test]
fn blocks_cut_into_full_frames_and_a_remainder_512() {
    blocks_cut_into_full_frames_and_a_remainder(512);
}
