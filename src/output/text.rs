//! Frames: cutting the bytes of a connection into `<LEN:TEXT>` lines, the
//! escaping that keeps every frame on one line, and the inverse (parsing and
//! unescaping a transcript) that tests and tools use to check it.
//!
//! A frame is what one `max_read`-byte `read` of the stream would return.
//! The server reads far bigger blocks and cuts each into full frames plus one
//! remainder, which gives byte-identical output with a fraction of the system
//! calls.
//!
//! Escaping (the default): printable ASCII and printable UTF-8 characters are
//! copied; `\` becomes `\\`; newline, carriage return and tab become `\n`,
//! `\r`, `\t`; every other byte is written as `\xNN`: ASCII controls, ESC,
//! NUL, DEL, invalid or overlong UTF-8 (byte by byte), and each byte of every
//! character that shows nothing or can drive a terminal or reorder text. Those
//! are the code points that the Unicode Character Database calls
//! - a control (Cc: C0 and C1, U+009B is a one-byte CSI on some terminals),
//!   format (Cf: bidi controls, zero-width characters, tag characters,
//!   prepended concatenation marks such as U+0600), surrogate (Cs, which valid
//!   UTF-8 never carries anyway), private-use (Co) or unassigned (Cn,
//!   noncharacters included) character;
//! - a separator (Zl U+2028, Zp U+2029, and Zs except U+0020);
//! - a Default_Ignorable_Code_Point (variation selectors, the Hangul fillers
//!   U+115F, U+1160, U+3164, U+FFA0, U+034F, ...).
//!
//! Separators, a decision: SPEC says "separator", so all of Z is escaped but
//! the ASCII space. Zl and Zp end a line in some viewers. The space separators
//! (U+00A0, U+1680, U+2000-U+200A, U+202F, U+205F, U+3000) look like a space
//! but are not one: an operator reading or copying the line, or a script
//! matching `' '`, takes them for U+0020, which is the confusion the escaping
//! exists to prevent. The cost: text that means them (a French no-break space
//! before `!`, an ideographic space in Japanese) shows `\xc2\xa0` or
//! `\xe3\x80\x80`, still readable and exact.
//!
//! The set is [`HIDDEN`], a range table generated from the UCD by a script
//! the repo keeps (its Unicode version is
//! [`UNICODE_VERSION`](super::unicode_table::UNICODE_VERSION)); tests check
//! every code point against ICU4X's `icu_properties`, an independent
//! derivation of the same properties. Printable ASCII never reaches the table.
//! LEN counts the raw bytes. In raw mode TEXT is the bytes unchanged.
//!
//! The hot path is [`Framer::frame_block`] on printable text at the default
//! frame size: one pass in which each 25-byte frame is loaded once into a
//! vector register, checked for bytes to escape with three vector compares,
//! and stored as a whole `<25:TEXT>\n` line (see [`super::lines`]); a frame that
//! holds a byte to escape, and any other frame size or a tag, go through a
//! vectorisable scan and fixed-length copies. No per-byte branch, no
//! allocation.

use std::fmt;

use super::lines::{self, Escapes};
use super::unicode_table::HIDDEN;

/// What ends every frame line.
const LINE_END: &[u8; 2] = b">\n";

/// Bytes scanned per step when looking for a byte that needs escaping: wide
/// enough for the compiler to turn the inner loop into unrolled vector
/// compares (64 scans about 4x faster than 32 here).
const SCAN_CHUNK: usize = 64;

/// The default frame size, whose lines get a fast path.
const DEFAULT_FRAME: usize = crate::protocol::MAX_READ;
/// `<25:`, the start of every full default frame.
const DEFAULT_PREFIX: &[u8; 4] = b"<25:";
const _: () = assert!(DEFAULT_FRAME == 25, "DEFAULT_PREFIX spells the default frame size");
/// A full default line without its tag: `<25:` + 25 bytes + `>\n`.
const DEFAULT_LINE: usize = DEFAULT_PREFIX.len() + DEFAULT_FRAME + LINE_END.len();

/// The longest tag and `<25:` that the fast path takes (a tag is an
/// address and a space: at most about 70 bytes).
const MAX_TAGGED_HEAD: usize = 128;

/// Cuts blocks of a connection's bytes into frame lines.
#[derive(Debug, Clone)]
pub struct Framer {
    /// Bytes per frame (`--max-read`).
    max_read: usize,
    /// `--raw`: copy TEXT unchanged instead of escaping it.
    raw: bool,
    /// `<MAX_READ:`, the start of every full frame, formatted once.
    full_prefix: Vec<u8>,
    /// How default-size lines are written on this CPU.
    lines: lines::Kind,
}

impl Framer {
    /// A framer cutting `max_read`-byte frames (at least 1), escaping unless
    /// `raw`.
    pub fn new(max_read: usize, raw: bool) -> Framer {
        let max_read = max_read.max(1);
        let mut full_prefix = Vec::with_capacity(24);
        push_prefix(&mut full_prefix, max_read);
        Framer {
            max_read,
            raw,
            full_prefix,
            lines: lines::Kind::detect(),
        }
    }

    /// Bytes per frame.
    pub fn max_read(&self) -> usize {
        self.max_read
    }

    /// Whether TEXT is copied unchanged.
    pub fn is_raw(&self) -> bool {
        self.raw
    }

    /// Appends to `out` the frame lines for `block`, bytes that one read
    /// returned, each line starting with `tag` (empty, or the client's address
    /// and a space). Returns the number of frames.
    pub fn frame_block(&self, out: &mut Vec<u8>, tag: &[u8], block: &[u8]) -> u64 {
        let m = self.max_read;
        let frames = block.len().div_ceil(m) as u64;
        let mut rest = block;
        // The head of a full default line: the tag, then `<25:`.
        let mut head_buf = [0u8; MAX_TAGGED_HEAD];
        let head_len = tag.len() + DEFAULT_PREFIX.len();
        if m == DEFAULT_FRAME && head_len <= MAX_TAGGED_HEAD {
            head_buf[..tag.len()].copy_from_slice(tag);
            head_buf[tag.len()..head_len].copy_from_slice(DEFAULT_PREFIX);
            let head = &head_buf[..head_len];
            // The fast path: whole plain lines, one frame at a time; it
            // stops at a frame with a byte to escape. Such frames are
            // escaped here, one after another while they come (text that is
            // not ASCII has one in every frame), and the fast path resumes
            // at the next plain one. The last few frames are left to the
            // general path below.
            let escapes = if self.raw { Escapes::None } else { Escapes::Text };
            'fast: loop {
                let done = self.lines.plain(out, rest, head, LINE_END, escapes);
                rest = &rest[done * DEFAULT_FRAME..];
                loop {
                    if rest.len() < self.lines.min_len() {
                        break 'fast;
                    }
                    let (frame, after) = rest.split_at(DEFAULT_FRAME);
                    if frame.iter().all(|&b| is_plain(b)) {
                        continue 'fast;
                    }
                    out.extend_from_slice(head);
                    escape_into(out, frame);
                    out.extend_from_slice(LINE_END);
                    rest = after;
                }
            }
        }
        if self.raw {
            self.emit_plain(out, tag, rest);
            return frames;
        }
        while !rest.is_empty() {
            match first_to_escape(rest) {
                None => {
                    self.emit_plain(out, tag, rest);
                    break;
                }
                Some(at) => {
                    // Everything before the frame holding `at` is plain.
                    let start = at - at % m;
                    self.emit_plain(out, tag, &rest[..start]);
                    let end = (start + m).min(rest.len());
                    let frame = &rest[start..end];
                    out.extend_from_slice(tag);
                    push_prefix(out, frame.len());
                    escape_into(out, frame);
                    out.extend_from_slice(LINE_END);
                    rest = &rest[end..];
                }
            }
        }
        frames
    }

    /// Frames `seg` copying TEXT unchanged: full frames are lines of one
    /// fixed length, written into space reserved once.
    fn emit_plain(&self, out: &mut Vec<u8>, tag: &[u8], seg: &[u8]) {
        let m = self.max_read;
        let full = seg.len() / m;
        if full > 0 && m == DEFAULT_FRAME {
            // The default: every full line is the tag and the same 31 bytes,
            // copied with fixed-size moves instead of memcpy calls.
            let texts = seg.chunks_exact(DEFAULT_FRAME);
            let start = out.len();
            if tag.is_empty() {
                // Constant line length: the loop is all fixed-size moves,
                // straight into the spare capacity (no zero-filling first:
                // that pass cost 3% of the server's CPU at one client).
                let total = full * DEFAULT_LINE;
                out.reserve(total);
                let spare = &mut out.spare_capacity_mut()[..total];
                for (line, text) in spare.chunks_exact_mut(DEFAULT_LINE).zip(texts) {
                    let (prefix_dst, rest) = line.split_at_mut(DEFAULT_PREFIX.len());
                    let (text_dst, end_dst) = rest.split_at_mut(DEFAULT_FRAME);
                    prefix_dst.write_copy_of_slice(DEFAULT_PREFIX);
                    text_dst.write_copy_of_slice(text);
                    end_dst.write_copy_of_slice(LINE_END);
                }
                // SAFETY: the loop wrote all `total` bytes after the old
                // length: `texts` yields exactly `full` chunks of 25 bytes
                // (`full` is `seg.len() / 25`), `spare` holds exactly `full`
                // lines of 31 bytes, and each line is written whole
                // (4 + 25 + 2 bytes). `reserve` made the capacity.
                unsafe { out.set_len(start + total) };
            } else {
                let line = tag.len() + DEFAULT_LINE;
                out.resize(start + full * line, 0);
                for (line, text) in out[start..].chunks_exact_mut(line).zip(texts) {
                    let (tag_dst, fixed) = line.split_at_mut(tag.len());
                    tag_dst.copy_from_slice(tag);
                    fill_default_line(fixed, text);
                }
            }
        } else if full > 0 {
            let p = self.full_prefix.len();
            let t = tag.len();
            let line = t + p + m + LINE_END.len();
            let start = out.len();
            out.resize(start + full * line, 0);
            let dst = &mut out[start..];
            for (line_buf, text) in dst.chunks_exact_mut(line).zip(seg.chunks_exact(m)) {
                let (tag_dst, rest) = line_buf.split_at_mut(t);
                let (prefix_dst, rest) = rest.split_at_mut(p);
                let (text_dst, end_dst) = rest.split_at_mut(m);
                tag_dst.copy_from_slice(tag);
                prefix_dst.copy_from_slice(&self.full_prefix);
                text_dst.copy_from_slice(text);
                end_dst.copy_from_slice(LINE_END);
            }
        }
        let rem = &seg[full * m..];
        if !rem.is_empty() {
            out.extend_from_slice(tag);
            push_prefix(out, rem.len());
            out.extend_from_slice(rem);
            out.extend_from_slice(LINE_END);
        }
    }
}

/// Writes `<25:TEXT>\n` into a line of [`DEFAULT_LINE`] bytes.
#[inline(always)]
fn fill_default_line(line: &mut [u8], text: &[u8]) {
    let (prefix_dst, rest) = line.split_at_mut(DEFAULT_PREFIX.len());
    let (text_dst, end_dst) = rest.split_at_mut(DEFAULT_FRAME);
    prefix_dst.copy_from_slice(DEFAULT_PREFIX);
    text_dst.copy_from_slice(text);
    end_dst.copy_from_slice(LINE_END);
}

/// Appends `<LEN:`.
fn push_prefix(out: &mut Vec<u8>, len: usize) {
    out.push(b'<');
    push_decimal(out, len);
    out.push(b':');
}

/// Appends `n` in decimal, without going through `fmt`.
pub fn push_decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// True for a byte copied as it is: printable ASCII other than `\`.
#[inline]
fn is_plain(b: u8) -> bool {
    // One compare for "below space or above tilde", one for the backslash.
    b.wrapping_sub(0x20) < 0x5F && b != b'\\'
}

/// The index of the first byte that is not plain ASCII, if any.
fn first_to_escape(bytes: &[u8]) -> Option<usize> {
    let mut chunks = bytes.chunks_exact(SCAN_CHUNK);
    let mut base = 0;
    for chunk in &mut chunks {
        // No early exit and no short-circuit inside the chunk, so this
        // compiles to vector compares.
        let bad = chunk.iter().fold(0u8, |acc, &b| {
            acc | u8::from(b.wrapping_sub(0x20) >= 0x5F) | u8::from(b == b'\\')
        });
        if bad != 0 {
            return chunk.iter().position(|&b| !is_plain(b)).map(|i| base + i);
        }
        base += SCAN_CHUNK;
    }
    chunks.remainder().iter().position(|&b| !is_plain(b)).map(|i| base + i)
}

/// True when every byte of `bytes` is printed as it is.
pub fn is_plain_text(bytes: &[u8]) -> bool {
    first_to_escape(bytes).is_none()
}

/// True for a code point that valid UTF-8 may carry but that is escaped:
/// one in [`HIDDEN`] (see the module docs). Three loads from [`HIDDEN_INDEX`].
#[inline]
pub(crate) fn is_hidden_code(c: u32) -> bool {
    let c = c as usize;
    // Beyond U+10FFFF is no character; callers never pass one.
    let Some(&row) = HIDDEN_INDEX.blocks.get(c >> BLOCK_BITS) else {
        return true;
    };
    let leaf = HIDDEN_INDEX.rows[usize::from(row)][(c >> LEAF_BITS) & (LEAVES_PER_BLOCK - 1)];
    HIDDEN_INDEX.leaves[usize::from(leaf)] >> (c & LEAF_MASK) & 1 != 0
}

/// Code points per leaf of [`HIDDEN_INDEX`] (log2): one `u64` bitmap.
const LEAF_BITS: usize = 6;
/// The bit of a code point within its leaf.
const LEAF_MASK: usize = (1 << LEAF_BITS) - 1;
/// Code points per block of [`HIDDEN_INDEX`] (log2): 4096, so that the
/// block numbers of all of Unicode fit a small array and whole blocks share
/// one row (e.g. the CJK ideographs, the private-use planes).
const BLOCK_BITS: usize = 12;
/// Leaves per block.
const LEAVES_PER_BLOCK: usize = 1 << (BLOCK_BITS - LEAF_BITS);
/// Blocks covering U+0000..=U+10FFFF.
const BLOCKS: usize = (char::MAX as usize >> BLOCK_BITS) + 1;

/// [`HIDDEN`] as a two-level bitmap trie, built at compile time: block
/// number -> row of leaf numbers -> 64-bit leaf. Identical leaves and rows
/// are stored once (about 300 leaves and 30 rows, 7 KB), so the lookup costs
/// three loads where a binary search of the 750 ranges costs ten dependent
/// steps per non-ASCII character.
struct HiddenIndex<const ROWS: usize, const LEAVES: usize> {
    /// Row number of each block.
    blocks: [u8; BLOCKS],
    /// Leaf number of each leaf of a block.
    rows: [[u16; LEAVES_PER_BLOCK]; ROWS],
    /// Bit `c % 64` set when code point `c` is hidden.
    leaves: [u64; LEAVES],
}

/// The lookup index of [`HIDDEN`], exactly as large as it needs to be.
static HIDDEN_INDEX: HiddenIndex<{ HIDDEN_INDEX_SIZE.0 }, { HIDDEN_INDEX_SIZE.1 }> =
    build_hidden_index::<{ HIDDEN_INDEX_SIZE.0 }, { HIDDEN_INDEX_SIZE.1 }>().0;

/// (rows, leaves) of [`HIDDEN_INDEX`]: a first build with room to spare
/// counts them.
const HIDDEN_INDEX_SIZE: (usize, usize) = {
    let (_, rows, leaves) = build_hidden_index::<BLOCKS, 2048>();
    (rows, leaves)
};

/// Builds the index of [`HIDDEN`] with room for `ROWS` rows and `LEAVES`
/// leaves; returns it with the numbers of rows and leaves used. Fails the
/// build if [`HIDDEN`] is not sorted and disjoint or the room is short.
const fn build_hidden_index<const ROWS: usize, const LEAVES: usize>() -> (HiddenIndex<ROWS, LEAVES>, usize, usize) {
    let mut index = HiddenIndex {
        blocks: [0; BLOCKS],
        rows: [[0; LEAVES_PER_BLOCK]; ROWS],
        leaves: [0; LEAVES],
    };
    // Leaf 0 is all visible, leaf 1 all hidden: most leaves are one or the
    // other, and need no search.
    index.leaves[1] = u64::MAX;
    let mut leaves = 2;
    let mut rows = 0;
    let mut next_range = 0;
    let mut block = 0;
    while block < BLOCKS {
        let mut row = [0u16; LEAVES_PER_BLOCK];
        let mut k = 0;
        while k < LEAVES_PER_BLOCK {
            let first = ((block << BLOCK_BITS) + (k << LEAF_BITS)) as u32;
            let last = first + LEAF_MASK as u32;
            // Skip the ranges that end before this leaf.
            while next_range < HIDDEN.len() && HIDDEN[next_range].1 < first {
                next_range += 1;
            }
            let mut bits = 0u64;
            let mut r = next_range;
            while r < HIDDEN.len() && HIDDEN[r].0 <= last {
                let (lo, hi) = HIDDEN[r];
                assert!(
                    lo <= hi && (r == 0 || HIDDEN[r - 1].1 < lo),
                    "HIDDEN must be sorted and disjoint"
                );
                let from = lo.saturating_sub(first);
                let to = if hi < last { hi - first } else { LEAF_MASK as u32 };
                // Bits from..=to.
                bits |= (u64::MAX >> (LEAF_MASK as u32 - to)) & (u64::MAX << from);
                r += 1;
            }
            row[k] = match bits {
                0 => 0,
                u64::MAX => 1,
                _ => {
                    let mut id = 2;
                    while id < leaves && index.leaves[id] != bits {
                        id += 1;
                    }
                    if id == leaves {
                        assert!(leaves < LEAVES, "HIDDEN_INDEX needs more leaves");
                        assert!(id <= u16::MAX as usize, "a leaf number is a u16");
                        index.leaves[id] = bits;
                        leaves += 1;
                    }
                    id as u16
                }
            };
            k += 1;
        }
        let mut id = 0;
        while id < rows && !same_row(&index.rows[id], &row) {
            id += 1;
        }
        if id == rows {
            assert!(rows < ROWS, "HIDDEN_INDEX needs more rows");
            index.rows[id] = row;
            rows += 1;
        }
        assert!(id <= u8::MAX as usize, "a row number is a u8");
        index.blocks[block] = id as u8;
        block += 1;
    }
    (index, rows, leaves)
}

/// `a == b` for rows, in a `const fn`.
const fn same_row(a: &[u16; LEAVES_PER_BLOCK], b: &[u16; LEAVES_PER_BLOCK]) -> bool {
    let mut k = 0;
    while k < LEAVES_PER_BLOCK {
        if a[k] != b[k] {
            return false;
        }
        k += 1;
    }
    true
}

/// `\xNN` for every byte value, built at compile time.
const HEX_ESCAPES: [[u8; 4]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut table = [[0u8; 4]; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = [b'\\', b'x', HEX[b >> 4], HEX[b & 0xF]];
        b += 1;
    }
    table
};

/// Appends `\xNN`.
#[inline]
fn push_hex(out: &mut Vec<u8>, b: u8) {
    out.extend_from_slice(&HEX_ESCAPES[usize::from(b)]);
}

/// The character whose UTF-8 encoding starts at `text[i]` (a byte of 0x80
/// or more) and its width, if the sequence there is valid UTF-8 (the rules
/// of RFC 3629, as `std::str::from_utf8` applies them: no overlong forms, no
/// surrogates, nothing above U+10FFFF).
#[inline]
pub(crate) fn utf8_char_at(text: &[u8], i: usize) -> Option<(u32, usize)> {
    let b0 = text[i];
    let cont = |k: usize| {
        text.get(i + k)
            .copied()
            .filter(|b| b & 0xC0 == 0x80)
            .map(|b| u32::from(b & 0x3F))
    };
    let (width, second_ok): (usize, fn(u8) -> bool) = match b0 {
        0xC2..=0xDF => (2, |_| true),
        0xE0 => (3, |b| (0xA0..=0xBF).contains(&b)),
        0xE1..=0xEC | 0xEE..=0xEF => (3, |_| true),
        0xED => (3, |b| (0x80..=0x9F).contains(&b)),
        0xF0 => (4, |b| (0x90..=0xBF).contains(&b)),
        0xF1..=0xF3 => (4, |_| true),
        0xF4 => (4, |b| (0x80..=0x8F).contains(&b)),
        _ => return None,
    };
    if !second_ok(*text.get(i + 1)?) {
        return None;
    }
    let lead = u32::from(b0) & (0x7F >> width);
    let mut c = lead;
    for k in 1..width {
        c = c << 6 | cont(k)?;
    }
    Some((c, width))
}

/// Appends the escaped form of `text` (see the module docs). Runs of bytes
/// that stay as they are, printable non-ASCII characters included, are
/// copied in one go; each invalid byte becomes `\xNN` on its own.
pub fn escape_into(out: &mut Vec<u8>, text: &[u8]) {
    let mut copied = 0;
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        if is_plain(b) {
            i += 1;
            continue;
        }
        if b >= 0x80 {
            match utf8_char_at(text, i) {
                Some((c, width)) if !is_hidden_code(c) => {
                    // Printable: stays in the run.
                    i += width;
                    continue;
                }
                Some((_, width)) => {
                    out.extend_from_slice(&text[copied..i]);
                    for &byte in &text[i..i + width] {
                        push_hex(out, byte);
                    }
                    i += width;
                }
                None => {
                    out.extend_from_slice(&text[copied..i]);
                    push_hex(out, b);
                    i += 1;
                }
            }
            copied = i;
            continue;
        }
        out.extend_from_slice(&text[copied..i]);
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => push_hex(out, b),
        }
        i += 1;
        copied = i;
    }
    out.extend_from_slice(&text[copied..]);
}

/// The escaped form of `text`, as a new vector.
pub fn escape(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    escape_into(&mut out, text);
    out
}

/// A malformed escape sequence met by [`unescape`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnescapeError {
    /// Byte offset of the backslash that starts the bad sequence.
    pub offset: usize,
}

impl fmt::Display for UnescapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad escape sequence at byte {}", self.offset)
    }
}

impl std::error::Error for UnescapeError {}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The bytes a client sent, from the TEXT of an escaped frame.
pub fn unescape(text: &[u8]) -> Result<Vec<u8>, UnescapeError> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] != b'\\' {
            out.push(text[i]);
            i += 1;
            continue;
        }
        let bad = UnescapeError { offset: i };
        match text.get(i + 1) {
            Some(b'\\') => out.push(b'\\'),
            Some(b'n') => out.push(b'\n'),
            Some(b'r') => out.push(b'\r'),
            Some(b't') => out.push(b'\t'),
            Some(b'x') => {
                let hi = text.get(i + 2).copied().and_then(hex_value).ok_or(bad.clone())?;
                let lo = text.get(i + 3).copied().and_then(hex_value).ok_or(bad)?;
                out.push(hi << 4 | lo);
                i += 4;
                continue;
            }
            _ => return Err(bad),
        }
        i += 2;
    }
    Ok(out)
}

/// One frame line of a transcript, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameLine<'a> {
    /// The client's address, when the server ran with `--tag`.
    pub tag: Option<&'a str>,
    /// LEN: the frame's raw byte count.
    pub len: usize,
    /// TEXT as printed (escaped unless the server ran with `--raw`).
    pub text: &'a [u8],
}

/// Parses one transcript line (without its newline) as a frame line:
/// `<LEN:TEXT>` or, with `--tag`, `ADDR <LEN:TEXT>`. `None` for any other
/// line, such as `Connection from:  ADDR`.
pub fn parse_frame_line(line: &[u8]) -> Option<FrameLine<'_>> {
    let (tag, body) = if line.first() == Some(&b'<') {
        (None, line)
    } else {
        let space = line.iter().position(|&b| b == b' ')?;
        let tag = std::str::from_utf8(&line[..space]).ok()?;
        (Some(tag), &line[space + 1..])
    };
    let body = body.strip_prefix(b"<")?.strip_suffix(b">")?;
    let colon = body.iter().position(|&b| b == b':')?;
    let digits = &body[..colon];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let len = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(FrameLine {
        tag,
        len,
        text: &body[colon + 1..],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frames(max_read: usize, raw: bool, tag: &[u8], block: &[u8]) -> String {
        let mut out = Vec::new();
        Framer::new(max_read, raw).frame_block(&mut out, tag, block);
        String::from_utf8(out).expect("test output is UTF-8")
    }

    #[test]
    fn cuts_full_frames_and_one_remainder() {
        let text = b"wong says: 123456789012345678901234567890";
        assert_eq!(
            frames(25, false, b"", text),
            "<25:wong says: 12345678901234>\n<16:5678901234567890>\n"
        );
        assert_eq!(frames(25, false, b"", b"wong says: 123"), "<14:wong says: 123>\n");
        assert_eq!(frames(25, false, b"", b""), "");
        assert_eq!(frames(4, false, b"", b"abcdefgh"), "<4:abcd>\n<4:efgh>\n");
    }

    #[test]
    fn tags_each_line() {
        assert_eq!(
            frames(3, false, b"127.0.0.1:1 ", b"abcd"),
            "127.0.0.1:1 <3:abc>\n127.0.0.1:1 <1:d>\n"
        );
    }

    #[test]
    fn counts_frames() {
        let mut out = Vec::new();
        let f = Framer::new(25, false);
        assert_eq!(f.frame_block(&mut out, b"", &[b'a'; 50]), 2);
        assert_eq!(f.frame_block(&mut out, b"", &[b'\n'; 51]), 3);
        assert_eq!(f.frame_block(&mut out, b"", &[]), 0);
    }

    #[test]
    fn escapes_controls_backslash_and_bad_utf8() {
        assert_eq!(escape(b"a\\b"), b"a\\\\b");
        assert_eq!(escape(b"\r\n\t"), b"\\r\\n\\t");
        assert_eq!(escape(b"\x1b[31m\x00"), b"\\x1b[31m\\x00");
        assert_eq!(escape(b"\xff\xfe"), b"\\xff\\xfe");
        // Overlong '/' and a lone surrogate are invalid UTF-8.
        assert_eq!(escape(b"\xc0\xaf"), b"\\xc0\\xaf");
        assert_eq!(escape(b"\xed\xa0\x80"), b"\\xed\\xa0\\x80");
        assert_eq!(escape("héllo 世界 🦀".as_bytes()), "héllo 世界 🦀".as_bytes());
        // C1 CSI and a bidi override are valid UTF-8 but hidden.
        assert_eq!(escape("\u{9b}".as_bytes()), b"\\xc2\\x9b");
        assert_eq!(escape("\u{202e}".as_bytes()), b"\\xe2\\x80\\xae");
        assert_eq!(escape(b"\x7f"), b"\\x7f");
    }

    #[test]
    fn a_frame_with_a_newline_stays_one_line() {
        let out = frames(25, false, b"", b"x>\nConnection from:  1.2.3.4:5\n");
        assert_eq!(out.matches('\n').count(), 2);
        assert!(out.starts_with("<25:x>\\nConnection from:  1.2.>\n<"), "{out}");
    }

    #[test]
    fn raw_copies_bytes() {
        assert_eq!(frames(25, true, b"", b"a\nb\x1b"), "<4:a\nb\x1b>\n");
    }

    /// Whether the escaping hides `c`, by the independent source: ICU4X's
    /// compiled Unicode data (the same Unicode version as [`HIDDEN`]).
    fn hidden_per_icu(c: char) -> bool {
        use icu_properties::props::{DefaultIgnorableCodePoint, GeneralCategory as Gc};
        use icu_properties::{CodePointMapData, CodePointSetData};
        let category = CodePointMapData::<Gc>::new().get(c);
        let hidden_category = match category {
            Gc::Control | Gc::Format | Gc::Surrogate | Gc::PrivateUse | Gc::Unassigned => true,
            Gc::LineSeparator | Gc::ParagraphSeparator => true,
            Gc::SpaceSeparator => c != ' ',
            _ => false,
        };
        hidden_category || CodePointSetData::new::<DefaultIgnorableCodePoint>().contains(c)
    }

    /// The escaping rules written the obvious way, on `utf8_chunks`.
    fn escape_reference(text: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in text.utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '\\' => out.extend_from_slice(b"\\\\"),
                    '\n' => out.extend_from_slice(b"\\n"),
                    '\r' => out.extend_from_slice(b"\\r"),
                    '\t' => out.extend_from_slice(b"\\t"),
                    c if (' '..='~').contains(&c) => out.push(c as u8),
                    c if c.is_ascii() || hidden_per_icu(c) => {
                        let mut utf8 = [0u8; 4];
                        for &b in c.encode_utf8(&mut utf8).as_bytes() {
                            out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
                        }
                    }
                    c => out.extend_from_slice(c.to_string().as_bytes()),
                }
            }
            for &b in chunk.invalid() {
                out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
            }
        }
        out
    }

    #[test]
    fn fast_escape_matches_the_reference() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let pieces: [&[u8]; 18] = [
            b"a",
            b"\\",
            b"\n",
            b"\x1b[",
            "é".as_bytes(),
            "世".as_bytes(),
            "🦀".as_bytes(),
            "\u{9b}".as_bytes(),
            "\u{202e}".as_bytes(),
            "\u{e0041}".as_bytes(),
            "\u{fe0f}".as_bytes(),
            "\u{a0}".as_bytes(),
            "\u{3164}".as_bytes(),
            "\u{378}".as_bytes(),
            b"\xed\xa0\x80",
            b"\xf4\x90\x80\x80",
            b"\xe4\xb8",
            b"\xf3\xa0\x81",
        ];
        for _ in 0..20_000 {
            let mut text = Vec::new();
            for _ in 0..(next() % 12) {
                match next() % 4 {
                    0 => text.push(next() as u8),
                    // Any code point at all.
                    1 => {
                        let c = char::from_u32((next() % 0x11_0000) as u32).unwrap_or('\u{fffd}');
                        text.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                    }
                    _ => text.extend_from_slice(pieces[(next() % pieces.len() as u64) as usize]),
                }
            }
            assert_eq!(escape(&text), escape_reference(&text), "{text:?}");
        }
        let all: Vec<u8> = (0..=255u8).collect();
        assert_eq!(escape(&all), escape_reference(&all));
    }

    /// Characters that, printed as raw bytes, would show nothing (tags,
    /// format and filler characters, variation selectors, invisible spaces,
    /// private use) are escaped; the ordinary ones stay as they are.
    #[test]
    fn escapes_invisible_characters_and_keeps_visible_ones() {
        let hidden = [
            '\u{e0001}', // LANGUAGE TAG
            '\u{e0020}', // TAG SPACE
            '\u{e0041}', // TAG LATIN CAPITAL LETTER A
            '\u{e007f}', // CANCEL TAG
            '\u{0600}',  // ARABIC NUMBER SIGN (prepended concatenation mark)
            '\u{0605}',
            '\u{06dd}',
            '\u{070f}',
            '\u{0890}',
            '\u{0891}',
            '\u{08e2}',
            '\u{110bd}',
            '\u{110cd}',
            '\u{13430}', // EGYPTIAN HIEROGLYPH VERTICAL JOINER
            '\u{1343f}',
            '\u{1bca0}', // SHORTHAND FORMAT LETTER OVERLAP
            '\u{1bca3}',
            '\u{1d173}', // MUSICAL SYMBOL BEGIN BEAM
            '\u{1d17a}',
            '\u{115f}', // HANGUL CHOSEONG FILLER
            '\u{1160}',
            '\u{3164}', // HANGUL FILLER
            '\u{ffa0}',
            '\u{fe0f}',  // VARIATION SELECTOR-16
            '\u{e0100}', // VARIATION SELECTOR-17
            '\u{180b}',  // MONGOLIAN FREE VARIATION SELECTOR ONE
            '\u{034f}',  // COMBINING GRAPHEME JOINER
            '\u{200b}',  // ZERO WIDTH SPACE
            '\u{2028}',  // LINE SEPARATOR
            '\u{2029}',  // PARAGRAPH SEPARATOR
            '\u{e000}',  // private use
            '\u{f0000}', // private use, plane 15
            '\u{0378}',  // unassigned
            '\u{ffff}',  // noncharacter
            '\u{00a0}',  // NO-BREAK SPACE
            '\u{3000}',  // IDEOGRAPHIC SPACE
            '\u{2003}',  // EM SPACE
            '\u{0085}',  // NEXT LINE (C1)
            '\u{feff}',  // ZERO WIDTH NO-BREAK SPACE
        ];
        for c in hidden {
            let utf8 = c.encode_utf8(&mut [0; 4]).as_bytes().to_vec();
            let want: String = utf8.iter().map(|b| format!("\\x{b:02x}")).collect();
            assert_eq!(escape(&utf8), want.as_bytes(), "U+{:04X}", u32::from(c));
        }
        for visible in ["é", "世", "🦀", "Ж", "ب", "한", "\u{300}", "\u{1f1fa}", " ", "~"] {
            assert_eq!(escape(visible.as_bytes()), visible.as_bytes(), "{visible:?}");
        }
    }

    /// The compile-time index says exactly what the range table says.
    #[test]
    fn the_index_matches_the_table() {
        let mut next = 0;
        for c in 0..=u32::from(char::MAX) {
            // The ranges are sorted: walk them along with `c`.
            while HIDDEN.get(next).is_some_and(|&(_, last)| last < c) {
                next += 1;
            }
            let in_table = HIDDEN.get(next).is_some_and(|&(first, _)| first <= c);
            assert_eq!(is_hidden_code(c), in_table, "U+{c:04X}");
        }
        assert!(HIDDEN.windows(2).all(|w| w[0].0 <= w[0].1 && w[0].1 + 1 < w[1].0));
    }

    /// Every code point, against the independent source: a range missing
    /// from the table (or one too many) fails here.
    #[test]
    fn every_code_point_is_hidden_exactly_when_icu_says_so() {
        for c in (0..=u32::from(char::MAX)).filter_map(char::from_u32) {
            assert_eq!(
                is_hidden_code(u32::from(c)),
                hidden_per_icu(c),
                "U+{:04X}",
                u32::from(c)
            );
        }
        // Surrogates are not chars; the table holds them as hidden too.
        assert!((0xD800..=0xDFFF).all(is_hidden_code));
    }

    #[test]
    fn unescape_inverts_escape() {
        let all: Vec<u8> = (0..=255u8).collect();
        assert_eq!(unescape(&escape(&all)), Ok(all));
        assert_eq!(unescape(b"\\q"), Err(UnescapeError { offset: 0 }));
        assert_eq!(unescape(b"ab\\x4"), Err(UnescapeError { offset: 2 }));
    }

    #[test]
    fn parses_frame_lines() {
        let line = parse_frame_line(b"<14:wong says: 123>").expect("a frame line");
        assert_eq!((line.tag, line.len, line.text), (None, 14, &b"wong says: 123"[..]));
        let line = parse_frame_line(b"[::1]:5 <3:a>b>").expect("a tagged frame line");
        assert_eq!((line.tag, line.len, line.text), (Some("[::1]:5"), 3, &b"a>b"[..]));
        assert_eq!(parse_frame_line(b"Connection from:  127.0.0.1:1"), None);
        assert_eq!(parse_frame_line(b"Listening to:  127.0.0.1:1"), None);
    }

    /// Framing as the format defines it, one frame at a time, with none of
    /// the fast paths: what every framer must print, byte for byte.
    fn frame_reference(max_read: usize, raw: bool, tag: &[u8], block: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for frame in block.chunks(max_read) {
            out.extend_from_slice(tag);
            out.extend_from_slice(format!("<{}:", frame.len()).as_bytes());
            if raw {
                out.extend_from_slice(frame);
            } else {
                out.extend_from_slice(&escape_reference(frame));
            }
            out.extend_from_slice(b">\n");
        }
        out
    }

    /// Every way this machine can write default lines (each is forced in
    /// turn, whatever `detect` would pick).
    fn every_line_kind() -> Vec<lines::Kind> {
        #[cfg(target_arch = "x86_64")]
        {
            let mut kinds = vec![lines::Kind::Sse2];
            if std::arch::is_x86_feature_detected!("avx2") {
                kinds.push(lines::Kind::Avx2);
            }
            kinds
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            vec![lines::Kind::None]
        }
    }

    /// Bytes that exercise the fast path's edges: runs of printable text
    /// with a byte to escape (a control, `\\`, a non-ASCII character, a
    /// broken sequence, the range ends 0x1F, 0x20, 0x7E, 0x7F) placed at
    /// chosen offsets, so that it falls on every lane of a frame, in the
    /// bytes a 32-byte load reads past its frame, and in the last frames.
    fn stream() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            4 => proptest::collection::vec(0x20u8..0x7F, 0..200),
            1 => proptest::sample::select(vec![
                &b"\\"[..], b"\n", b"\x1f", b" ", b"~", b"\x7f", b"\x80", b"\xff",
                "é".as_bytes(), "世".as_bytes(), "\u{200b}".as_bytes(), b"\xe4\xb8", b"\x1b[31m",
            ])
            .prop_map(|b| b.to_vec()),
            1 => proptest::collection::vec(any::<u8>(), 0..40),
        ];
        proptest::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        /// The fast paths print exactly what the format defines, for any
        /// stream, at the default frame size and others, tagged or not, raw
        /// or escaped, on every line writer this CPU has.
        #[test]
        fn framing_is_byte_identical_to_the_reference(
            block in stream(),
            max_read in prop_oneof![4 => Just(25usize), 1 => 1usize..64],
            tagged in any::<bool>(),
            raw in any::<bool>(),
        ) {
            let tag: &[u8] = if tagged { b"127.0.0.1:4 " } else { b"" };
            let want = frame_reference(max_read, raw, tag, &block);
            for kind in every_line_kind() {
                let mut f = Framer::new(max_read, raw);
                f.lines = kind;
                let mut out = b"before ".to_vec();
                let frames = f.frame_block(&mut out, tag, &block);
                prop_assert_eq!(&out[..7], b"before ");
                prop_assert_eq!(
                    String::from_utf8_lossy(&out[7..]),
                    String::from_utf8_lossy(&want),
                    "{:?}", kind
                );
                prop_assert_eq!(&out[7..], &want[..]);
                prop_assert_eq!(frames, block.len().div_ceil(max_read) as u64);
            }
        }
    }

    #[test]
    fn a_byte_to_escape_in_any_lane_is_escaped() {
        // 200 plain bytes with one byte to escape moved over every offset:
        // each lane of the frame, and the bytes past it that a wide load
        // also reads.
        for bad in [b'\\', b'\n', 0x1f, 0x7f, 0x80, 0xff] {
            for at in 0..200 {
                let mut block = vec![b'a'; 200];
                block[at] = bad;
                let want = frame_reference(25, false, b"", &block);
                for kind in every_line_kind() {
                    let mut f = Framer::new(25, false);
                    f.lines = kind;
                    let mut out = Vec::new();
                    f.frame_block(&mut out, b"", &block);
                    assert_eq!(out, want, "{kind:?}, byte {bad:#x} at {at}");
                }
            }
        }
    }

    #[test]
    fn mixed_block_matches_frame_by_frame() {
        let mut block = Vec::new();
        for i in 0..2000u32 {
            block.push(if i % 97 == 0 {
                (i % 256) as u8
            } else {
                b'a' + (i % 26) as u8
            });
        }
        for m in [1, 2, 25, 31, 512, 4096] {
            let f = Framer::new(m, false);
            let mut whole = Vec::new();
            f.frame_block(&mut whole, b"t ", &block);
            let mut one_by_one = Vec::new();
            for frame in block.chunks(m) {
                f.frame_block(&mut one_by_one, b"t ", frame);
            }
            assert_eq!(whole, one_by_one, "max_read {m}");
        }
    }
}
