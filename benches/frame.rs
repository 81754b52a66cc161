//! The framing + escaping hot path alone: bytes per second into a reused
//! buffer, for printable chat text and for hostile bytes, a framing window
//! at a time as the reactor (and every baseline) frames a read block, in the
//! text format and as JSON lines (`json_*`, the same inputs).

mod stamp;

use std::cell::Cell;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::SystemTime;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use simple_tcp_server::output::json::JsonLines;
use simple_tcp_server::output::text::Framer;

/// The reactor's framing window: 256 KiB rounded down to whole 25-byte
/// frames (the server reads up to 2 MiB at a time and frames it a window at
/// a time, writing the lines out in between).
const BLOCK: usize = (256 * 1024 / 25) * 25;

fn chat_text(len: usize) -> Vec<u8> {
    let mut text = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while text.len() < len {
        text.extend_from_slice(format!("wong says: line {i} of the chat ").as_bytes());
        i += 1;
    }
    text.truncate(len);
    text
}

fn hostile(len: usize) -> Vec<u8> {
    // Every byte value, ANSI sequences, broken UTF-8, newlines.
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn utf8_text(len: usize) -> Vec<u8> {
    "héllo wörld, 世界 says: ünïcödé ".repeat(len / 40).into_bytes()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame");
    let cases = [
        ("printable", chat_text(BLOCK), 25, false, &b""[..]),
        (
            "printable_tagged",
            chat_text(BLOCK),
            25,
            false,
            &b"127.0.0.1:44581 "[..],
        ),
        ("printable_512", chat_text(BLOCK), 512, false, &b""[..]),
        ("utf8_text", utf8_text(BLOCK), 25, false, &b""[..]),
        ("hostile", hostile(BLOCK), 25, false, &b""[..]),
        ("hostile_raw", hostile(BLOCK), 25, true, &b""[..]),
    ];
    for (name, data, max_read, raw, tag) in cases {
        group.throughput(Throughput::Bytes(data.len() as u64));
        let framer = Framer::new(max_read, raw);
        let mut out = Vec::with_capacity(BLOCK * 5);
        let ran = Cell::new(false);
        group.bench_function(name, |b| {
            ran.set(true);
            b.iter(|| {
                out.clear();
                framer.frame_block(&mut out, tag, black_box(&data));
                black_box(out.len())
            })
        });
        stamp::record("frame", name, ran.get());
    }
    // JSON lines: the wall clock changes for every block, as it does for
    // every wakeup of a flood, so each block builds its line head again.
    let peer: SocketAddr = "127.0.0.1:44581".parse().expect("address");
    let json_cases = [
        ("json_printable", chat_text(BLOCK), 25),
        ("json_printable_512", chat_text(BLOCK), 512),
        ("json_utf8_text", utf8_text(BLOCK), 25),
        ("json_hostile", hostile(BLOCK), 25),
    ];
    for (name, data, max_read) in json_cases {
        let mut lines = JsonLines::new(max_read);
        let mut out = Vec::with_capacity(BLOCK * 8);
        let ran = Cell::new(false);
        group.bench_function(name, |b| {
            ran.set(true);
            b.iter(|| {
                out.clear();
                lines.set_now(SystemTime::now());
                lines.frame_block(&mut out, peer, black_box(&data));
                black_box(out.len())
            })
        });
        stamp::record("frame", name, ran.get());
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
