//! Properties of framing and escaping, for any input and any way the
//! kernel might split it into reads: the transcript unescapes to exactly the
//! input, every frame is at most max-read bytes, every frame is one line,
//! and every character is escaped exactly when an independent source of the
//! Unicode Character Database (ICU4X's `icu_properties`) says it is hidden.

use icu_properties::props::{DefaultIgnorableCodePoint, GeneralCategory as Gc};
use icu_properties::{CodePointMapData, CodePointSetData};
use proptest::prelude::*;
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

/// `\xNN` for each byte.
fn hex(bytes: &[u8]) -> Vec<u8> {
    bytes.iter().flat_map(|b| format!("\\x{b:02x}").into_bytes()).collect()
}

/// SPEC's escaping written the obvious way, with ICU4X deciding which
/// characters are hidden.
fn escape_per_icu(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in text.utf8_chunks() {
        for c in chunk.valid().chars() {
            let utf8 = c.encode_utf8(&mut [0; 4]).as_bytes().to_vec();
            match c {
                '\\' => out.extend_from_slice(b"\\\\"),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                '\t' => out.extend_from_slice(b"\\t"),
                c if hidden_per_icu(c) => out.extend(hex(&utf8)),
                _ => out.extend(utf8),
            }
        }
        out.extend(hex(chunk.invalid()));
    }
    out
}

/// Every code point, through the public `escape`: a range missing from the
/// table (or one too many, or a Unicode version that differs) fails here.
#[test]
fn every_character_is_escaped_exactly_when_icu_says_it_is_hidden() {
    let mut differ = Vec::new();
    for c in (0..=u32::from(char::MAX)).filter_map(char::from_u32) {
        let utf8 = c.encode_utf8(&mut [0; 4]).as_bytes().to_vec();
        if escape(&utf8) != escape_per_icu(&utf8) {
            differ.push(format!("U+{:04X}", u32::from(c)));
        }
    }
    assert!(
        differ.is_empty(),
        "{} code points escaped otherwise than ICU says, first: {:?}",
        differ.len(),
        &differ[..differ.len().min(20)]
    );
}

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
        // Characters from all of Unicode, hidden ones often.
        prop::collection::vec(any_char(), 0..200).prop_map(|cs| cs.into_iter().collect::<String>().into_bytes()),
    ]
}

/// A character from anywhere in Unicode, or from the sets of invisible ones
/// the transcript escapes (tags, format characters, variation selectors,
/// spaces and fillers).
fn any_char() -> impl Strategy<Value = char> {
    prop_oneof![
        any::<char>(),
        prop::char::range('\u{e0000}', '\u{e01ef}'),
        prop::char::range('\u{0600}', '\u{0605}'),
        prop::char::range('\u{fe00}', '\u{fe0f}'),
        prop::char::range('\u{2000}', '\u{206f}'),
        prop::sample::select(vec![
            '\u{a0}',
            '\u{115f}',
            '\u{3164}',
            '\u{ffa0}',
            '\u{1d173}',
            '\u{1bca0}',
            '\u{13430}'
        ]),
        prop::char::range('a', 'z'),
        prop::char::range('\u{4e00}', '\u{9fff}'),
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

proptest! {
    // Fewer cases: the exhaustive test above covers every character; this
    // one covers them in frames, and is slow in a debug build.
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// In the transcript, each frame's TEXT is its bytes escaped as ICU's
    /// data says, characters cut by a frame boundary included.
    #[test]
    fn frames_are_escaped_as_icu_says(
        data in bytes_with_text(),
        max_read in prop_oneof![Just(25usize), 1usize..600],
        splits in prop::collection::vec(1usize..5000, 1..8),
    ) {
        let framer = Framer::new(max_read, false);
        let out = transcript(&framer, b"", &data, &splits);
        for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let frame = parse_frame_line(line).expect("every line is a frame line");
            let raw = unescape(frame.text).expect("valid escapes");
            prop_assert_eq!(frame.text, &escape_per_icu(&raw)[..], "raw {:?}", raw);
        }
    }
}
