//! Fuzzes framing + escaping: for any bytes, any frame size and any split
//! into reads, every frame is one line of at most max-read bytes, no raw
//! control byte reaches the output, and unescaping gives the input back.
//!
//! cargo fuzz run frame            (needs cargo-fuzz; see README)

#![no_main]

use libfuzzer_sys::fuzz_target;
use simple_tcp_server::output::text::{Framer, parse_frame_line, unescape};

fuzz_target!(|input: &[u8]| {
    // The first two bytes choose max-read and the read size; the rest is data.
    let [a, b, data @ ..] = input else { return };
    let max_read = usize::from(*a % 64) + 1;
    let read = usize::from(*b) * 8 + 1;
    let framer = Framer::new(if *a >= 192 { 25 } else { max_read }, false);
    let mut out = Vec::new();
    for chunk in data.chunks(read) {
        framer.frame_block(&mut out, b"", chunk);
    }
    let mut rebuilt = Vec::new();
    for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        assert!(line.iter().all(|&b| b >= 0x20 && b != 0x7f), "raw control byte");
        let frame = parse_frame_line(line).expect("every line is a frame");
        assert!(frame.len >= 1 && frame.len <= framer.max_read());
        let text = unescape(frame.text).expect("valid escapes");
        assert_eq!(text.len(), frame.len);
        rebuilt.extend_from_slice(&text);
    }
    assert_eq!(rebuilt, data);
});
