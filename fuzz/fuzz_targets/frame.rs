//! Fuzzes framing + escaping: for any bytes, any frame size and any split
//! into reads, every frame is one line of at most max-read bytes, no raw
//! control byte reaches the output, unescaping gives the input back, and
//! each frame's TEXT is its bytes escaped exactly as the Unicode Character
//! Database says (ICU4X's `icu_properties`, a source independent of the
//! server's generated table). Every 3 bytes of the input also name a code
//! point that is escaped on its own, so the whole code space is reached
//! without the fuzzer having to build valid UTF-8.
//!
//! cargo fuzz run frame            (needs cargo-fuzz; see README)

#![no_main]

use icu_properties::props::{DefaultIgnorableCodePoint, GeneralCategory as Gc};
use icu_properties::{CodePointMapData, CodePointSetData};
use libfuzzer_sys::fuzz_target;
use simple_tcp_server::output::text::{Framer, escape, parse_frame_line, unescape};

/// Whether SPEC's escaping hides `c`, by ICU4X's data: a control, format,
/// surrogate, private-use, unassigned or separator character (but U+0020),
/// or a default-ignorable code point.
fn hidden_per_icu(c: char) -> bool {
    let hidden_category = match CodePointMapData::<Gc>::new().get(c) {
        Gc::Control | Gc::Format | Gc::Surrogate | Gc::PrivateUse | Gc::Unassigned => true,
        Gc::LineSeparator | Gc::ParagraphSeparator => true,
        Gc::SpaceSeparator => c != ' ',
        _ => false,
    };
    hidden_category || CodePointSetData::new::<DefaultIgnorableCodePoint>().contains(c)
}

/// Appends `\xNN` for each byte.
fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    for b in bytes {
        out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
    }
}

/// SPEC's escaping written the obvious way, with ICU4X deciding which
/// characters are hidden.
fn escape_per_icu(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in text.utf8_chunks() {
        for c in chunk.valid().chars() {
            let mut utf8 = [0; 4];
            let utf8 = c.encode_utf8(&mut utf8).as_bytes();
            match c {
                '\\' => out.extend_from_slice(b"\\\\"),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                '\t' => out.extend_from_slice(b"\\t"),
                c if hidden_per_icu(c) => push_hex(&mut out, utf8),
                _ => out.extend_from_slice(utf8),
            }
        }
        push_hex(&mut out, chunk.invalid());
    }
    out
}

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
        assert_eq!(
            frame.text,
            &escape_per_icu(&text)[..],
            "escaped otherwise than ICU says"
        );
        rebuilt.extend_from_slice(&text);
    }
    assert_eq!(rebuilt, data);
    // Each 3 bytes, little-endian, as a code point (all of them reachable).
    for w in data.chunks_exact(3) {
        let code = u32::from_le_bytes([w[0], w[1], w[2], 0]) % (u32::from(char::MAX) + 1);
        if let Some(c) = char::from_u32(code) {
            let utf8 = c.encode_utf8(&mut [0; 4]).as_bytes().to_vec();
            assert_eq!(
                escape(&utf8),
                escape_per_icu(&utf8),
                "U+{code:04X} escaped otherwise than ICU says"
            );
        }
    }
});
