//! Properties of framing and escaping, for any input and any way the
//! kernel might split it into reads: the transcript unescapes to exactly the
//! input, every frame is at most max-read bytes, every frame is one line.

use proptest::prelude::*;
use simple_tcp_server::output::text::{Framer, escape, parse_frame_line, unescape};

/// Frames `data` as reads of the sizes in `splits` (cycled) would deliver it.
fn transcript(framer: &Framer, tag: &[u8], data: &[u8], splits: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut pos = 0;
    for &n in splits.iter().cycle() {
        if pos >= data.len() {
            break;
        }
        let end = (pos + n).min(data.len());
        framer.frame_block(&mut out, tag, &data[pos..end]);
        pos = end;
    }
    out
}

fn bytes_with_text() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..3000),
        // Mostly text, the common case, with a sprinkle of anything.
        "[ -~é世🦀\\\\\n\r\t\u{1b}\u{9b}\u{202e}]{0,800}".prop_map(String::into_bytes),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn unescaped_transcript_is_the_input(
        data in bytes_with_text(),
        max_read in prop_oneof![Just(25usize), 1usize..600],
        splits in prop::collection::vec(1usize..5000, 1..8),
        tagged in any::<bool>(),
    ) {
        let framer = Framer::new(max_read, false);
        let tag: &[u8] = if tagged { b"[::1]:50000 " } else { b"" };
        let out = transcript(&framer, tag, &data, &splits);
        prop_assert!(out.is_empty() || out.ends_with(b"\n"));
        let mut rebuilt = Vec::new();
        for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            // One frame per line, no raw control byte in it.
            prop_assert!(line.iter().all(|&b| b >= 0x20 && b != 0x7f), "raw control byte in {:?}", line);
            let frame = parse_frame_line(line).expect("every line is a frame line");
            prop_assert_eq!(frame.tag.is_some(), tagged);
            let text = unescape(frame.text).expect("valid escapes");
            prop_assert_eq!(text.len(), frame.len);
            prop_assert!(frame.len >= 1 && frame.len <= max_read);
            rebuilt.extend_from_slice(&text);
        }
        prop_assert_eq!(rebuilt, data);
    }

    #[test]
    fn frames_are_cut_as_reads_of_max_read_bytes_would_cut_them(
        data in prop::collection::vec(any::<u8>(), 0..3000),
        max_read in 1usize..100,
        splits in prop::collection::vec(1usize..500, 1..8),
    ) {
        let framer = Framer::new(max_read, false);
        let out = transcript(&framer, b"", &data, &splits);
        let lens: Vec<usize> = out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| parse_frame_line(l).expect("frame").len)
            .collect();
        // Each read of n bytes gives n / max_read full frames and one
        // remainder, in order.
        let mut expected = Vec::new();
        let mut pos = 0;
        for &n in splits.iter().cycle() {
            if pos >= data.len() {
                break;
            }
            let take = n.min(data.len() - pos);
            expected.extend(std::iter::repeat_n(max_read, take / max_read));
            if take % max_read > 0 {
                expected.push(take % max_read);
            }
            pos += take;
        }
        prop_assert_eq!(lens, expected);
    }

    #[test]
    fn raw_frames_carry_the_bytes_unchanged(
        data in prop::collection::vec(any::<u8>(), 0..3000),
        max_read in 1usize..100,
    ) {
        let framer = Framer::new(max_read, true);
        let mut out = Vec::new();
        framer.frame_block(&mut out, b"", &data);
        // Walk the lines by their lengths (raw TEXT may hold newlines).
        let mut rest = &out[..];
        let mut rebuilt = Vec::new();
        while !rest.is_empty() {
            let colon = rest.iter().position(|&b| b == b':').expect("colon");
            let len: usize = std::str::from_utf8(&rest[1..colon]).expect("digits").parse().expect("LEN");
            prop_assert!(len <= max_read);
            rebuilt.extend_from_slice(&rest[colon + 1..colon + 1 + len]);
            prop_assert_eq!(&rest[colon + 1 + len..colon + 3 + len], b">\n");
            rest = &rest[colon + 3 + len..];
        }
        prop_assert_eq!(rebuilt, data);
    }

    #[test]
    fn escape_round_trips(data in bytes_with_text()) {
        prop_assert_eq!(unescape(&escape(&data)).expect("valid escapes"), data);
    }
}
