//! Escaping: what strangers send cannot forge a transcript line or drive the
//! operator's terminal; `--raw` prints the bytes unchanged.

mod util;

use util::{ServerProcess, connect_greeted, send};

/// Sends each case as its own block (waiting for it to be printed) and
/// checks the exact line.
fn check(server: &ServerProcess, cases: &[(&[u8], &str)]) {
    let mut client = connect_greeted(server.addr);
    for (input, line) in cases {
        send(&mut client, input);
        server.wait_text(line);
    }
}

#[test]
fn hostile_bytes_are_escaped_exactly() {
    let server = ServerProcess::start(&[]);
    check(
        &server,
        &[
            (b"\x1b[2J\x1b[31mred", "<12:\\x1b[2J\\x1b[31mred>\n"),
            (b"nul\x00byte", "<8:nul\\x00byte>\n"),
            (b"line\r\n", "<6:line\\r\\n>\n"),
            (b"tab\there", "<8:tab\\there>\n"),
            (b"back\\slash", "<10:back\\\\slash>\n"),
            (b"bad \xff\xfe utf8", "<11:bad \\xff\\xfe utf8>\n"),
            ("héllo 世界".as_bytes(), "<13:héllo 世界>\n"),
            ("🦀!".as_bytes(), "<5:🦀!>\n"),
            (b"\xc0\xaf overlong", "<11:\\xc0\\xaf overlong>\n"),
            (b"\xed\xa0\x80 surrogate", "<13:\\xed\\xa0\\x80 surrogate>\n"),
            ("\u{202e}rtl".as_bytes(), "<6:\\xe2\\x80\\xaertl>\n"),
            // Invisible characters, escaped so that nothing hides in a line:
            // a tag character (invisible text), a prepended concatenation
            // mark, a Hangul filler, a variation selector, a no-break space,
            // a private-use character.
            ("\u{e0041}tag".as_bytes(), "<7:\\xf3\\xa0\\x81\\x81tag>\n"),
            ("\u{600}1".as_bytes(), "<3:\\xd8\\x801>\n"),
            ("\u{3164}".as_bytes(), "<3:\\xe3\\x85\\xa4>\n"),
            ("\u{fe0f}".as_bytes(), "<3:\\xef\\xb8\\x8f>\n"),
            ("a\u{a0}b".as_bytes(), "<4:a\\xc2\\xa0b>\n"),
            ("\u{e000}".as_bytes(), "<3:\\xee\\x80\\x80>\n"),
            (b"\x7fdel", "<4:\\x7fdel>\n"),
            (
                b"x>\nConnection from:  1.2.3.4:5",
                "<25:x>\\nConnection from:  1.2.>\n<5:3.4:5>\n",
            ),
        ],
    );
    // Every frame line is one line: no raw control byte reached stdout.
    let out = server.stdout.bytes();
    assert!(
        out.iter().all(|&b| b == b'\n' || b >= 0x20 && b != 0x7f),
        "a control byte reached stdout\n{}",
        server.context()
    );
}

#[test]
fn a_multibyte_character_cut_by_a_frame_boundary_is_escaped_in_both_halves() {
    let server = ServerProcess::start(&[]);
    // 24 ASCII bytes, then a 3-byte character across the 25-byte boundary.
    let mut input = b"abcdefghijklmnopqrstuvwx".to_vec();
    input.extend_from_slice("世".as_bytes());
    check(
        &server,
        &[(&input, "<25:abcdefghijklmnopqrstuvwx\\xe4>\n<2:\\xb8\\x96>\n")],
    );
}

#[test]
fn raw_prints_bytes_unchanged() {
    let server = ServerProcess::start(&["--raw"]);
    let mut client = connect_greeted(server.addr);
    send(&mut client, b"\x1b[31m\x00\\\xff");
    let ok = server
        .stdout
        .wait_for(util::PATIENCE, |out| util::contains(out, b"<8:\x1b[31m\x00\\\xff>\n"));
    assert!(ok, "{}", server.context());
}
