//! JSON lines (`--format json`): the transcript for log pipelines, one JSON
//! object per line, and the reader that takes such a line apart again
//! ([`parse_line`], for tests and tools).
//!
//! The events are the text format's, with the same frames:
//!
//! ```text
//! {"ts":"2026-11-25T20:15:03.123456Z","event":"listening","addr":"127.0.0.1:50000"}
//! {"ts":"2026-11-25T20:15:04.000012Z","event":"connect","peer":"127.0.0.1:44581"}
//! {"ts":"2026-11-25T20:15:05.104512Z","event":"frame","peer":"127.0.0.1:44581","len":14,"text":"wong says: 123"}
//! {"ts":"2026-11-25T20:15:05.104512Z","event":"frame","peer":"127.0.0.1:44581","len":3,"b64":"/wAB"}
//! {"ts":"2026-11-25T20:15:06.500000Z","event":"close","peer":"127.0.0.1:44581"}
//! ```
//!
//! - `ts`: when the reactor woke up to handle the event, RFC 3339 in UTC
//!   with microseconds (the wall clock is read once per wakeup, so the
//!   frames of one read share it).
//! - `event`: `listening`, `connect`, `frame` or `close`.
//! - `addr` (for `listening`): the address the server listens on; `peer`
//!   (every other event): the client's address.
//! - `len` (frames): the frame's byte count, as LEN in the text format.
//! - `text` or `b64` (frames, exactly one of them): the frame's exact bytes.
//!   A frame that is valid UTF-8 is a JSON string in `text`, which decodes to
//!   exactly those bytes. Any other frame is in `b64`, standard base64
//!   (RFC 4648, with padding). Frames are cut exactly as in the text format,
//!   so a multi-byte character that a frame boundary cuts makes both frames
//!   `b64`: to rebuild a client's stream, concatenate the decoded bytes of
//!   its frames.
//!
//! The strings are escaped beyond what RFC 8259 requires, so that a
//! terminal showing the JSON cannot be driven by a client: `"`, `\`, `\n`,
//! `\r`, `\t` as those escapes, every other ASCII control and DEL as
//! `\u00XX`, and every character the text format escapes (C1 controls,
//! format characters such as bidi overrides, U+2028/U+2029 and the other
//! separators but the space, private-use, unassigned and default-ignorable
//! code points) as `\uXXXX` (a surrogate pair above U+FFFF). Printable
//! characters stay as they are.
//!
//! `--raw` has no meaning here (the binary refuses it with `--format json`);
//! `--tag` changes nothing (`peer` is always there).
//!
//! The hot path is [`JsonLines::frame_block`] on printable ASCII: the start
//! of a line (timestamp, event, peer, `"len":25,"text":"`) is built once per
//! read block and per client, then each full frame is that start, the
//! frame's bytes and `"}` and a newline, copied into a reused buffer; the
//! same vectorisable scan as the text format's decides which frames need
//! escaping.

use std::fmt;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::lines::{self, Escapes};
use super::text::{is_hidden_code, push_decimal, utf8_char_at};

/// Bytes of a timestamp: `2026-11-25T20:15:03.123456Z`.
pub const TS_LEN: usize = 27;

/// Bytes scanned per step when looking for a byte that needs escaping: the
/// text format's width (wide enough for the compiler to use vector compares).
const SCAN_CHUNK: usize = 64;

/// The default frame size, whose lines get a fixed-size copy.
const DEFAULT_FRAME: usize = crate::protocol::MAX_READ;

/// What ends a frame line (the closing quote of `text` or `b64`).
const FRAME_END: &[u8; 3] = b"\"}\n";
/// Starts a frame's bytes as a JSON string.
const TEXT_KEY: &[u8] = b",\"text\":\"";
/// Starts a frame's bytes in base64.
const B64_KEY: &[u8] = b",\"b64\":\"";

/// The latest time a timestamp can spell, in microseconds since the Unix
/// epoch: 9999-12-31T23:59:59.999999Z (RFC 3339 years have four digits).
const MAX_MICROS: u64 = 253_402_300_799_999_999;
/// Microseconds per second.
const MICROS: u64 = 1_000_000;
/// Seconds per day (UTC, no leap seconds, as Unix time counts).
const DAY_SECS: u64 = 86_400;

/// Writes one reactor's events as JSON lines.
#[derive(Debug, Clone)]
pub struct JsonLines {
    /// Bytes per frame (`--max-read`).
    max_read: usize,
    /// The wall clock at the reactor's last wakeup, in microseconds since
    /// the Unix epoch.
    now_us: u64,
    /// The time `ts` spells (`u64::MAX` before the first).
    ts_us: u64,
    /// The formatted timestamp, reformatted only when the microseconds change.
    ts: [u8; TS_LEN],
    /// The start of a frame line of `head_for`, up to and including
    /// `"len":` (its first `head_len` bytes), then `MAX_READ,"text":"`: the
    /// start of every full printable frame's line.
    head: Vec<u8>,
    /// Bytes of `head` up to `"len":`.
    head_len: usize,
    /// The peer and the time `head` was built for.
    head_for: Option<(SocketAddr, u64)>,
    /// How default-size lines are written on this CPU.
    lines: lines::Kind,
}

impl JsonLines {
    /// A writer cutting `max_read`-byte frames (at least 1), with the clock
    /// read now.
    pub fn new(max_read: usize) -> JsonLines {
        let mut lines = JsonLines {
            max_read: max_read.max(1),
            now_us: 0,
            ts_us: u64::MAX,
            ts: [b'0'; TS_LEN],
            head: Vec::with_capacity(128),
            head_len: 0,
            head_for: None,
            lines: lines::Kind::detect(),
        };
        lines.set_now(SystemTime::now());
        lines
    }

    /// Bytes per frame.
    pub fn max_read(&self) -> usize {
        self.max_read
    }

    /// Sets the time of the events that follow (the reactor calls this once
    /// per wakeup). Cheap: the timestamp is formatted when a line needs it.
    #[inline]
    pub fn set_now(&mut self, now: SystemTime) {
        self.now_us = micros_since_epoch(now);
    }

    /// Formats the timestamp if the time has changed since it was last
    /// formatted.
    #[inline]
    fn refresh_ts(&mut self) {
        if self.ts_us != self.now_us {
            format_ts(self.now_us, &mut self.ts);
            self.ts_us = self.now_us;
        }
    }

    /// `{"ts":...,"event":"listening","addr":ADDR}`.
    pub fn listening(&mut self, out: &mut Vec<u8>, addr: SocketAddr) {
        self.event_line(out, "listening", "addr", addr);
    }

    /// `{"ts":...,"event":"connect","peer":PEER}`.
    pub fn connected(&mut self, out: &mut Vec<u8>, peer: SocketAddr) {
        self.event_line(out, "connect", "peer", peer);
    }

    /// `{"ts":...,"event":"close","peer":PEER}`.
    pub fn closed(&mut self, out: &mut Vec<u8>, peer: SocketAddr) {
        self.event_line(out, "close", "peer", peer);
    }

    fn event_line(&mut self, out: &mut Vec<u8>, event: &str, key: &str, addr: SocketAddr) {
        self.refresh_ts();
        out.extend_from_slice(b"{\"ts\":\"");
        out.extend_from_slice(&self.ts);
        out.extend_from_slice(b"\",\"event\":\"");
        out.extend_from_slice(event.as_bytes());
        out.extend_from_slice(b"\",\"");
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":\"");
        push_addr(out, addr);
        out.extend_from_slice(b"\"}\n");
    }

    /// Builds `head` for frames of `peer` now, unless it is built already.
    #[inline]
    fn prepare_head(&mut self, peer: SocketAddr) {
        if self.head_for == Some((peer, self.now_us)) {
            return;
        }
        self.refresh_ts();
        let head = &mut self.head;
        head.clear();
        head.extend_from_slice(b"{\"ts\":\"");
        head.extend_from_slice(&self.ts);
        head.extend_from_slice(b"\",\"event\":\"frame\",\"peer\":\"");
        push_addr(head, peer);
        head.extend_from_slice(b"\",\"len\":");
        self.head_len = head.len();
        push_decimal(head, self.max_read);
        head.extend_from_slice(TEXT_KEY);
        self.head_for = Some((peer, self.now_us));
    }

    /// Appends to `out` the frame lines for `block`, bytes that one read
    /// from `peer` returned, cut as the text format cuts them. Returns the
    /// number of frames.
    pub fn frame_block(&mut self, out: &mut Vec<u8>, peer: SocketAddr, block: &[u8]) -> u64 {
        if block.is_empty() {
            return 0;
        }
        self.prepare_head(peer);
        let m = self.max_read;
        let mut rest = block;
        // (A head too long for the fast path, which no address makes today,
        // goes the general way: `plain` would take no frame of it.)
        if m == DEFAULT_FRAME && self.head.len() <= super::lines::MAX_HEAD {
            // The fast path: whole plain lines, one frame at a time; it
            // stops at a frame with a byte to escape. Such frames are
            // written here, one after another while they come, and the fast
            // path resumes at the next plain one. The last few frames are
            // left to the general path below.
            'fast: loop {
                let done = self.lines.plain(out, rest, &self.head, FRAME_END, Escapes::Json);
                rest = &rest[done * DEFAULT_FRAME..];
                loop {
                    if rest.len() < self.lines.min_len() {
                        break 'fast;
                    }
                    let (frame, after) = rest.split_at(DEFAULT_FRAME);
                    if frame.iter().all(|&b| is_plain(b)) {
                        continue 'fast;
                    }
                    self.push_frame(out, frame);
                    rest = after;
                }
            }
        }
        while !rest.is_empty() {
            match first_to_escape(rest) {
                None => {
                    self.emit_plain(out, rest);
                    break;
                }
                Some(at) => {
                    // Everything before the frame holding `at` is plain.
                    let start = at - at % m;
                    self.emit_plain(out, &rest[..start]);
                    let end = (start + m).min(rest.len());
                    self.push_frame(out, &rest[start..end]);
                    rest = &rest[end..];
                }
            }
        }
        block.len().div_ceil(m) as u64
    }

    /// Frames `seg`, whose bytes all stay as they are in a JSON string.
    fn emit_plain(&self, out: &mut Vec<u8>, seg: &[u8]) {
        let m = self.max_read;
        let full = seg.len() / m;
        if full > 0 {
            let texts = &seg[..full * m];
            if m == DEFAULT_FRAME {
                // A constant frame size: the compiler copies each frame
                // with fixed-size moves instead of a memcpy call.
                fill_full_lines(out, &self.head, DEFAULT_FRAME, texts);
            } else {
                fill_full_lines(out, &self.head, m, texts);
            }
        }
        let rem = &seg[full * m..];
        if !rem.is_empty() {
            out.extend_from_slice(&self.head[..self.head_len]);
            push_decimal(out, rem.len());
            out.extend_from_slice(TEXT_KEY);
            out.extend_from_slice(rem);
            out.extend_from_slice(FRAME_END);
        }
    }

    /// One frame line for a frame that needs escaping: `text` when it is
    /// valid UTF-8, else `b64`.
    #[inline]
    fn push_frame(&self, out: &mut Vec<u8>, frame: &[u8]) {
        out.extend_from_slice(&self.head[..self.head_len]);
        push_decimal(out, frame.len());
        let start = out.len();
        out.extend_from_slice(TEXT_KEY);
        if !push_json_text(out, frame) {
            out.truncate(start);
            out.extend_from_slice(B64_KEY);
            push_base64(out, frame);
        }
        out.extend_from_slice(FRAME_END);
    }
}

/// Appends one line per `m`-byte frame of `texts` (a whole number of
/// frames, all plain): `head`, the frame, `"}` and a newline, written
/// straight into the spare capacity (no zero-filling first).
#[inline(always)]
fn fill_full_lines(out: &mut Vec<u8>, head: &[u8], m: usize, texts: &[u8]) {
    let line = head.len() + m + FRAME_END.len();
    let total = texts.len() / m * line;
    out.reserve(total);
    let start = out.len();
    let spare = &mut out.spare_capacity_mut()[..total];
    for (dst, text) in spare.chunks_exact_mut(line).zip(texts.chunks_exact(m)) {
        let (head_dst, rest) = dst.split_at_mut(head.len());
        let (text_dst, end_dst) = rest.split_at_mut(m);
        head_dst.write_copy_of_slice(head);
        text_dst.write_copy_of_slice(text);
        end_dst.write_copy_of_slice(FRAME_END);
    }
    // SAFETY: the loop wrote all `total` bytes after the old length: `texts`
    // yields exactly `texts.len() / m` chunks of `m` bytes (the caller passes
    // whole frames), `spare` holds exactly as many lines of `line` bytes, and
    // each line is written whole (`head.len() + m + 3` bytes). `reserve` made
    // the capacity.
    unsafe { out.set_len(start + total) };
}

/// Appends the address as `Display` spells it (`1.2.3.4:5`,
/// `[::1%2]:5`): no character of it needs escaping in JSON.
fn push_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{addr}");
}

/// True for a byte copied as it is into a JSON string: printable ASCII other
/// than `"` and `\`.
#[inline]
fn is_plain(b: u8) -> bool {
    b.wrapping_sub(0x20) < 0x5F && b != b'\\' && b != b'"'
}

/// The index of the first byte that is not plain, if any (the text format's
/// scan, with `"` added).
fn first_to_escape(bytes: &[u8]) -> Option<usize> {
    let mut chunks = bytes.chunks_exact(SCAN_CHUNK);
    let mut base = 0;
    for chunk in &mut chunks {
        // No early exit and no short-circuit inside the chunk, so this
        // compiles to vector compares.
        let bad = chunk.iter().fold(0u8, |acc, &b| {
            acc | u8::from(b.wrapping_sub(0x20) >= 0x5F) | u8::from(b == b'\\') | u8::from(b == b'"')
        });
        if bad != 0 {
            return chunk.iter().position(|&b| !is_plain(b)).map(|i| base + i);
        }
        base += SCAN_CHUNK;
    }
    chunks.remainder().iter().position(|&b| !is_plain(b)).map(|i| base + i)
}

/// Appends `bytes` as the inside of a JSON string (see the module docs for
/// what is escaped) and returns true, if they are valid UTF-8; returns false
/// at the first invalid byte, having appended part of them (the caller
/// truncates).
fn push_json_text(out: &mut Vec<u8>, bytes: &[u8]) -> bool {
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if is_plain(b) {
            i += 1;
            continue;
        }
        if b >= 0x80 {
            let Some((c, width)) = utf8_char_at(bytes, i) else {
                return false;
            };
            if is_hidden_code(c) {
                out.extend_from_slice(&bytes[copied..i]);
                push_unicode_escape(out, c);
                copied = i + width;
            }
            i += width;
            continue;
        }
        out.extend_from_slice(&bytes[copied..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => push_u16_escape(out, u16::from(b)),
        }
        i += 1;
        copied = i;
    }
    out.extend_from_slice(&bytes[copied..]);
    true
}

/// The inside of a JSON string for `text` (see the module docs), as a new
/// string: `escape_json("a\"b")` is `a\"b`.
pub fn escape_json(text: &str) -> String {
    let mut out = Vec::with_capacity(text.len() + 2);
    // Always true: `text` is a str.
    let valid = push_json_text(&mut out, text.as_bytes());
    debug_assert!(valid);
    String::from_utf8(out).unwrap_or_default()
}

/// Appends `\uXXXX` for code point `c`, as a surrogate pair above U+FFFF.
fn push_unicode_escape(out: &mut Vec<u8>, c: u32) {
    match u16::try_from(c) {
        Ok(unit) => push_u16_escape(out, unit),
        Err(_) => {
            let v = c - 0x1_0000;
            // The pair's halves: 10 bits each, plus the surrogate bases.
            push_u16_escape(out, 0xD800 | (v >> 10) as u16);
            push_u16_escape(out, 0xDC00 | (v & 0x3FF) as u16);
        }
    }
}

/// Appends `\u` and four lowercase hex digits.
fn push_u16_escape(out: &mut Vec<u8>, unit: u16) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(&[
        b'\\',
        b'u',
        HEX[usize::from(unit >> 12)],
        HEX[usize::from(unit >> 8 & 0xF)],
        HEX[usize::from(unit >> 4 & 0xF)],
        HEX[usize::from(unit & 0xF)],
    ]);
}

/// The standard base64 alphabet (RFC 4648, section 4).
const B64_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Appends `bytes` in standard base64, with padding.
pub fn push_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    let sextet = |n: u32, shift: u32| B64_ALPHABET[(n >> shift & 0x3F) as usize];
    let mut chunks = bytes.chunks_exact(3);
    for c in &mut chunks {
        let n = u32::from(c[0]) << 16 | u32::from(c[1]) << 8 | u32::from(c[2]);
        out.extend_from_slice(&[sextet(n, 18), sextet(n, 12), sextet(n, 6), sextet(n, 0)]);
    }
    match *chunks.remainder() {
        [a] => {
            let n = u32::from(a) << 16;
            out.extend_from_slice(&[sextet(n, 18), sextet(n, 12), b'=', b'=']);
        }
        [a, b] => {
            let n = u32::from(a) << 16 | u32::from(b) << 8;
            out.extend_from_slice(&[sextet(n, 18), sextet(n, 12), sextet(n, 6), b'=']);
        }
        _ => {}
    }
}

/// The bytes of standard, padded base64 text; `None` unless `text` is
/// exactly what [`push_base64`] writes for them (length a multiple of 4,
/// padding only at the end, unused bits zero).
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let text = text.as_bytes();
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let value = |c: u8| B64_ALPHABET.iter().position(|&a| a == c).map(|v| v as u32);
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let quads = text.len() / 4;
    for (k, quad) in text.chunks_exact(4).enumerate() {
        let pad = match (quad[2], quad[3]) {
            (b'=', b'=') => 2,
            (_, b'=') => 1,
            _ => 0,
        };
        if pad > 0 && k + 1 != quads {
            return None;
        }
        let mut n = 0u32;
        for &c in &quad[..4 - pad] {
            n = n << 6 | value(c)?;
        }
        n <<= 6 * pad as u32;
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        // The bits past the last byte must be zero.
        if decoded[3 - pad..].iter().any(|&b| b != 0) {
            return None;
        }
        out.extend_from_slice(&decoded[..3 - pad]);
    }
    Some(out)
}

/// Microseconds since the Unix epoch, within what a timestamp can spell.
fn micros_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros().min(u128::from(MAX_MICROS)) as u64)
}

/// Days from 0000-03-01 to 1970-01-01 in the proleptic Gregorian calendar
/// (the algorithms below count from March, so that the leap day is last).
const EPOCH_SHIFT: u64 = 719_468;
/// Days in a 400-year cycle of the Gregorian calendar.
const ERA_DAYS: u64 = 146_097;

/// The (year, month, day) of day `days` since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + EPOCH_SHIFT;
    let era = z / ERA_DAYS;
    let doe = z % ERA_DAYS;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (era * 400 + yoe + u64::from(month <= 2), month, day)
}

/// Days since 1970-01-01 of (year, month, day), the inverse of
/// [`civil_from_days`]; `None` before the epoch. Does not check the day
/// against the month (the caller round-trips it).
fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    let y = if month <= 2 { year.checked_sub(1)? } else { year };
    let era = y / 400;
    let yoe = y % 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day.checked_sub(1)?;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * ERA_DAYS + doe).checked_sub(EPOCH_SHIFT)
}

/// Writes `YYYY-MM-DDTHH:MM:SS.ffffffZ` for `micros` since the epoch.
fn format_ts(micros: u64, out: &mut [u8; TS_LEN]) {
    let micros = micros.min(MAX_MICROS);
    let secs = micros / MICROS;
    let (year, month, day) = civil_from_days(secs / DAY_SECS);
    let of_day = secs % DAY_SECS;
    let mut put = |at: usize, width: usize, mut n: u64| {
        for k in (at..at + width).rev() {
            out[k] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, of_day / 3600);
    put(14, 2, of_day / 60 % 60);
    put(17, 2, of_day % 60);
    put(20, 6, micros % MICROS);
    for (at, sep) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (26, b'Z'),
    ] {
        out[at] = sep;
    }
}

/// The time a timestamp spells, if it is exactly in the form
/// [`format_ts`] writes (and a real date on or after the epoch).
fn parse_ts(text: &str) -> Option<SystemTime> {
    let t = text.as_bytes();
    if t.len() != TS_LEN {
        return None;
    }
    let separators = [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (26, b'Z'),
    ];
    if separators.iter().any(|&(at, sep)| t[at] != sep) {
        return None;
    }
    let num = |at: usize, width: usize| {
        t[at..at + width]
            .iter()
            .try_fold(0u64, |n, &d| d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0')))
    };
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second, micros) = (num(11, 2)?, num(14, 2)?, num(17, 2)?, num(20, 6)?);
    if !(1..=12).contains(&month) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let days = days_from_civil(year, month, day)?;
    // A day past the month's end comes back as another date.
    if civil_from_days(days) != (year, month, day) {
        return None;
    }
    let secs = days * DAY_SECS + hour * 3600 + minute * 60 + second;
    Some(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros))
}

/// What a JSON line reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// `listening`: the server listens on `addr`.
    Listening,
    /// `connect`: a client connected.
    Connect,
    /// `frame`: a client sent the bytes of one frame.
    Frame,
    /// `close`: a client's connection closed.
    Close,
}

impl EventKind {
    /// The `event` field's value.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Listening => "listening",
            EventKind::Connect => "connect",
            EventKind::Frame => "frame",
            EventKind::Close => "close",
        }
    }
}

/// One JSON line, taken apart by [`parse_line`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Which event.
    pub kind: EventKind,
    /// `ts`, to the microsecond.
    pub ts: SystemTime,
    /// `peer`, or for `listening`, `addr`.
    pub addr: SocketAddr,
    /// A frame's exact bytes (decoded from `text` or `b64`; their length is
    /// checked against `len`); empty for other events.
    pub bytes: Vec<u8>,
}

/// A line that is not one the JSON format writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

/// Parses one JSON transcript line (without its newline). Strict: the
/// object must hold exactly the fields the writer writes for its event,
/// with values of the right form (a real timestamp, a socket address, a
/// `len` equal to the decoded bytes' count).
pub fn parse_line(line: &str) -> Result<Event, ParseError> {
    use serde_json::Value;
    let err = |what: String| Err(ParseError(what));
    let value: Value = match serde_json::from_str(line) {
        Ok(value) => value,
        Err(e) => return err(format!("not JSON: {e}")),
    };
    let Value::Object(fields) = value else {
        return err("not a JSON object".into());
    };
    let string = |name: &str| match fields.get(name) {
        Some(Value::String(s)) => Ok(s.as_str()),
        Some(_) => Err(ParseError(format!("`{name}` is not a string"))),
        None => Err(ParseError(format!("no `{name}`"))),
    };
    let ts_text = string("ts")?;
    let Some(ts) = parse_ts(ts_text) else {
        return err(format!("bad timestamp {ts_text:?}"));
    };
    let kind = match string("event")? {
        "listening" => EventKind::Listening,
        "connect" => EventKind::Connect,
        "frame" => EventKind::Frame,
        "close" => EventKind::Close,
        other => return err(format!("unknown event {other:?}")),
    };
    let addr_key = if kind == EventKind::Listening { "addr" } else { "peer" };
    let addr_text = string(addr_key)?;
    let Ok(addr) = addr_text.parse::<SocketAddr>() else {
        return err(format!("bad `{addr_key}` {addr_text:?}"));
    };
    let mut known = vec!["ts", "event", addr_key];
    let mut bytes = Vec::new();
    if kind == EventKind::Frame {
        let Some(len) = fields.get("len").and_then(Value::as_u64) else {
            return err("a frame without a numeric `len`".into());
        };
        bytes = match (fields.get("text"), fields.get("b64")) {
            (Some(Value::String(text)), None) => {
                known.push("text");
                text.as_bytes().to_vec()
            }
            (None, Some(Value::String(b64))) => {
                known.push("b64");
                match decode_base64(b64) {
                    Some(bytes) => bytes,
                    None => return err(format!("bad base64 {b64:?}")),
                }
            }
            _ => return err("a frame needs exactly one of `text` and `b64`, a string".into()),
        };
        if bytes.len() as u64 != len {
            return err(format!("`len` is {len} but the frame holds {} bytes", bytes.len()));
        }
        known.push("len");
    }
    if let Some(extra) = fields.keys().find(|k| !known.contains(&k.as_str())) {
        return err(format!("unexpected field `{extra}` in a {} line", kind.name()));
    }
    Ok(Event { kind, ts, addr, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::text::{Framer, parse_frame_line, unescape};

    fn peer() -> SocketAddr {
        "127.0.0.1:44581".parse().expect("addr")
    }

    /// A fixed time: 2026-11-25T20:15:03.123456Z.
    fn fixed_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(1_795_637_703_123_456)
    }

    fn ts_of(micros: u64) -> String {
        let mut out = [0u8; TS_LEN];
        format_ts(micros, &mut out);
        String::from_utf8(out.to_vec()).expect("ASCII")
    }

    fn json_lines(max_read: usize, block: &[u8]) -> String {
        let mut lines = JsonLines::new(max_read);
        lines.set_now(fixed_time());
        let mut out = Vec::new();
        lines.frame_block(&mut out, peer(), block);
        String::from_utf8(out).expect("JSON lines are UTF-8")
    }

    #[test]
    fn writes_the_documented_lines() {
        let mut lines = JsonLines::new(25);
        lines.set_now(fixed_time());
        let mut out = Vec::new();
        lines.listening(&mut out, "127.0.0.1:50000".parse().expect("addr"));
        lines.connected(&mut out, peer());
        assert_eq!(lines.frame_block(&mut out, peer(), b"wong says: 123"), 1);
        assert_eq!(lines.frame_block(&mut out, peer(), b"\xff\x00\x01"), 1);
        lines.closed(&mut out, peer());
        let ts = "2026-11-25T20:15:03.123456Z";
        let want = format!(
            "{{\"ts\":\"{ts}\",\"event\":\"listening\",\"addr\":\"127.0.0.1:50000\"}}\n\
             {{\"ts\":\"{ts}\",\"event\":\"connect\",\"peer\":\"127.0.0.1:44581\"}}\n\
             {{\"ts\":\"{ts}\",\"event\":\"frame\",\"peer\":\"127.0.0.1:44581\",\"len\":14,\"text\":\"wong says: 123\"}}\n\
             {{\"ts\":\"{ts}\",\"event\":\"frame\",\"peer\":\"127.0.0.1:44581\",\"len\":3,\"b64\":\"/wAB\"}}\n\
             {{\"ts\":\"{ts}\",\"event\":\"close\",\"peer\":\"127.0.0.1:44581\"}}\n"
        );
        assert_eq!(String::from_utf8(out).expect("UTF-8"), want);
    }

    #[test]
    fn cuts_full_frames_and_one_remainder() {
        let out = json_lines(25, b"wong says: 123456789012345678901234567890");
        let texts: Vec<String> = out
            .lines()
            .map(|l| {
                let e = parse_line(l).expect("parses");
                String::from_utf8(e.bytes).expect("text")
            })
            .collect();
        assert_eq!(texts, ["wong says: 12345678901234", "5678901234567890"]);
        assert!(out.contains("\"len\":25,\"text\":\"wong says: 12345678901234\"}\n"));
        assert!(out.contains("\"len\":16,\"text\":\"5678901234567890\"}\n"));
        assert_eq!(json_lines(25, b""), "");
    }

    /// Heads of every length (short and long addresses, IPv6 with a
    /// scope) write the lines a plain builder writes, also after another
    /// peer's longer head.
    #[test]
    fn full_lines_are_exact_for_every_head_length() {
        let peers = [
            "[fe80::1]:7",
            "127.0.0.1:44581",
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535",
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
            "[::ffff:255.255.255.255%4294967295]:65535",
            "127.0.0.1:1",
            "[::1]:50000",
        ];
        let ts = "2026-11-25T20:15:03.123456Z";
        let mut lines = JsonLines::new(25);
        lines.set_now(fixed_time());
        for (i, peer) in peers.iter().enumerate() {
            let peer: SocketAddr = peer.parse().expect("addr");
            // Whole frames of plain text, then a remainder, in a buffer that
            // already holds a line.
            let block: Vec<u8> = (0..25 * (3 + i) + i).map(|j| b'a' + ((i + j) % 26) as u8).collect();
            let mut out = b"before\n".to_vec();
            assert_eq!(
                lines.frame_block(&mut out, peer, &block),
                block.len().div_ceil(25) as u64
            );
            let mut want = String::from("before\n");
            for frame in block.chunks(25) {
                let text = std::str::from_utf8(frame).expect("ASCII");
                want += &format!(
                    "{{\"ts\":\"{ts}\",\"event\":\"frame\",\"peer\":\"{peer}\",\"len\":{},\"text\":\"{text}\"}}\n",
                    frame.len()
                );
            }
            assert_eq!(String::from_utf8(out).expect("UTF-8"), want, "peer {peer}");
        }
    }

    /// Bytes that exercise the fast path's edges: printable runs with bytes
    /// to escape (`"`, `\\`, controls, non-ASCII, broken UTF-8) between.
    fn stream() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let piece = prop_oneof![
            4 => proptest::collection::vec(0x20u8..0x7F, 0..200),
            1 => proptest::sample::select(vec![
                &b"\""[..], b"\\", b"\n", b"\x1f", b" ", b"~", b"\x7f", b"\x80",
                "é".as_bytes(), "\u{200b}".as_bytes(), b"\xe4\xb8",
            ])
            .prop_map(|b| b.to_vec()),
            1 => proptest::collection::vec(any::<u8>(), 0..40),
        ];
        proptest::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, ..Default::default() })]

        /// The fast path writes exactly the lines that the general path
        /// (one frame at a time, byte by byte) writes, on every line writer
        /// this CPU has, and each line reads back as its frame.
        #[test]
        fn framing_is_byte_identical_to_the_general_path(block in stream(), v6 in proptest::prelude::any::<bool>()) {
            let peer: SocketAddr = if v6 { "[fe80::1%2]:7".parse().expect("addr") } else { peer() };
            let mut reference = JsonLines::new(25);
            reference.set_now(fixed_time());
            reference.prepare_head(peer);
            let mut want = Vec::new();
            for frame in block.chunks(25) {
                reference.push_frame(&mut want, frame);
            }
            let mut kinds = vec![lines::Kind::detect()];
            #[cfg(target_arch = "x86_64")]
            kinds.push(lines::Kind::Sse2);
            for kind in kinds {
                let mut lines = JsonLines::new(25);
                lines.lines = kind;
                lines.set_now(fixed_time());
                let mut out = Vec::new();
                proptest::prop_assert_eq!(lines.frame_block(&mut out, peer, &block), block.len().div_ceil(25) as u64);
                proptest::prop_assert_eq!(&out, &want, "{:?}", kind);
            }
            let text = String::from_utf8(want).expect("JSON lines are UTF-8");
            let back: Vec<u8> = text.lines().flat_map(|l| parse_line(l).expect("parses").bytes).collect();
            proptest::prop_assert_eq!(back, block);
        }
    }

    #[test]
    fn the_head_follows_the_peer_and_the_clock() {
        let mut lines = JsonLines::new(4);
        let mut out = Vec::new();
        lines.set_now(fixed_time());
        lines.frame_block(&mut out, peer(), b"abcdabcd");
        lines.frame_block(&mut out, "[::1]:7".parse().expect("addr"), b"abcd");
        lines.set_now(fixed_time() + Duration::from_micros(1));
        lines.frame_block(&mut out, "[::1]:7".parse().expect("addr"), b"ab");
        let events: Vec<Event> = String::from_utf8(out)
            .expect("UTF-8")
            .lines()
            .map(|l| parse_line(l).expect("parses"))
            .collect();
        let summary: Vec<(String, SystemTime, Vec<u8>)> = events
            .into_iter()
            .map(|e| (e.addr.to_string(), e.ts, e.bytes))
            .collect();
        let later = fixed_time() + Duration::from_micros(1);
        assert_eq!(
            summary,
            [
                ("127.0.0.1:44581".into(), fixed_time(), b"abcd".to_vec()),
                ("127.0.0.1:44581".into(), fixed_time(), b"abcd".to_vec()),
                ("[::1]:7".into(), fixed_time(), b"abcd".to_vec()),
                ("[::1]:7".into(), later, b"ab".to_vec()),
            ]
        );
    }

    #[test]
    fn escapes_json_and_terminal_controls() {
        assert_eq!(escape_json("wong says: 123"), "wong says: 123");
        assert_eq!(escape_json("a\"b\\c"), "a\\\"b\\\\c");
        assert_eq!(escape_json("\n\r\t"), "\\n\\r\\t");
        assert_eq!(
            escape_json("\x00\x08\x0c\x1b[31m\x1f\x7f"),
            "\\u0000\\u0008\\u000c\\u001b[31m\\u001f\\u007f"
        );
        // C1 CSI, NEL, a bidi override, the line and paragraph separators, a
        // no-break space, a zero-width space, BOM, a tag character (a
        // surrogate pair), private use.
        assert_eq!(escape_json("\u{9b}\u{85}\u{202e}"), "\\u009b\\u0085\\u202e");
        assert_eq!(escape_json("\u{2028}\u{2029}\u{a0}"), "\\u2028\\u2029\\u00a0");
        assert_eq!(escape_json("\u{200b}\u{feff}"), "\\u200b\\ufeff");
        assert_eq!(escape_json("\u{e0041}\u{f0000}"), "\\udb40\\udc41\\udb80\\udc00");
        // Printable characters stay.
        for visible in ["héllo 世界 🦀", "Ж ب 한", "\u{300}", "~ !#$%&'()*+,-./:;<=>?@[]^_`{|}"] {
            assert_eq!(escape_json(visible), visible);
        }
    }

    /// The characters the output may carry as they are: printable ASCII
    /// (not `"` or `\`) and what the text format leaves visible.
    fn may_appear_raw(c: char) -> bool {
        if c.is_ascii() {
            (' '..='~').contains(&c) && c != '"' && c != '\\'
        } else {
            !is_hidden_code(u32::from(c))
        }
    }

    /// Every code point, escaped, decodes (by serde_json, an independent
    /// JSON parser) to itself, and the escaped form carries no control or
    /// hidden character.
    #[test]
    fn every_code_point_round_trips_through_a_json_parser() {
        let all: String = (0..=u32::from(char::MAX)).filter_map(char::from_u32).collect();
        let escaped = escape_json(&all);
        // Escapes are printable ASCII themselves.
        let terminal_safe = |c: char| may_appear_raw(c) || c == '\\' || c == '"';
        assert!(escaped.chars().all(terminal_safe), "a raw control or hidden character");
        let decoded: String = serde_json::from_str(&format!("\"{escaped}\"")).expect("valid JSON");
        assert_eq!(decoded, all);
        // The text format's visible set, and nothing more, stays raw.
        for c in all.chars() {
            let one = escape_json(c.encode_utf8(&mut [0; 4]));
            assert_eq!(
                one == c.to_string(),
                may_appear_raw(c),
                "U+{:04X} as {one}",
                u32::from(c)
            );
        }
    }

    #[test]
    fn base64_matches_rfc_4648() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            let mut out = Vec::new();
            push_base64(&mut out, plain.as_bytes());
            assert_eq!(out, encoded.as_bytes(), "{plain:?}");
            assert_eq!(decode_base64(encoded).as_deref(), Some(plain.as_bytes()));
        }
        let mut out = Vec::new();
        push_base64(&mut out, &[0xFB, 0xFF, 0xBF]);
        assert_eq!(out, b"+/+/");
    }

    #[test]
    fn base64_round_trips_every_byte_and_length() {
        let all: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        for len in 0..all.len() {
            for start in [0, 1, 2] {
                let bytes = &all[start..(start + len).min(all.len())];
                let mut out = Vec::new();
                push_base64(&mut out, bytes);
                assert_eq!(out.len(), bytes.len().div_ceil(3) * 4);
                let text = std::str::from_utf8(&out).expect("ASCII");
                assert_eq!(decode_base64(text).as_deref(), Some(bytes));
            }
        }
    }

    #[test]
    fn base64_decoder_refuses_what_the_encoder_never_writes() {
        for bad in [
            "Zg=", "Zg", "Z===", "Zh==", "Zm9=", "Zg==Zg==", "Zm 9", "Zm9v\n", "Zm-_", "=Zm9",
        ] {
            assert_eq!(decode_base64(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn timestamps_are_rfc_3339_utc() {
        let cases = [
            (0, "1970-01-01T00:00:00.000000Z"),
            (1, "1970-01-01T00:00:00.000001Z"),
            (951_782_400_000_000, "2000-02-29T00:00:00.000000Z"),
            (951_868_799_999_999, "2000-02-29T23:59:59.999999Z"),
            (1_000_000_000_000_000, "2001-09-09T01:46:40.000000Z"),
            (1_795_637_703_123_456, "2026-11-25T20:15:03.123456Z"),
            (4_102_444_800_000_000, "2100-01-01T00:00:00.000000Z"),
            (4_107_456_000_000_000, "2100-02-28T00:00:00.000000Z"),
            (4_107_542_400_000_000, "2100-03-01T00:00:00.000000Z"),
            (MAX_MICROS, "9999-12-31T23:59:59.999999Z"),
            (u64::MAX, "9999-12-31T23:59:59.999999Z"),
        ];
        for (micros, text) in cases {
            assert_eq!(ts_of(micros), text, "{micros}");
            if micros <= MAX_MICROS {
                assert_eq!(parse_ts(text), Some(UNIX_EPOCH + Duration::from_micros(micros)));
            }
        }
        assert_eq!(micros_since_epoch(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }

    #[test]
    fn timestamps_round_trip_day_by_day() {
        // Every day from 1970 to past 2400, at a time of day that moves.
        for day in 0..160_000u64 {
            let micros = day * DAY_SECS * MICROS + (day * 7_919_999_999) % (DAY_SECS * MICROS);
            let text = ts_of(micros);
            assert_eq!(
                parse_ts(&text),
                Some(UNIX_EPOCH + Duration::from_micros(micros)),
                "{text}"
            );
        }
    }

    #[test]
    fn timestamp_parser_refuses_impossible_dates() {
        for bad in [
            "2026-02-29T00:00:00.000000Z",
            "2100-02-29T00:00:00.000000Z",
            "2026-04-31T00:00:00.000000Z",
            "2026-13-01T00:00:00.000000Z",
            "2026-00-01T00:00:00.000000Z",
            "2026-01-00T00:00:00.000000Z",
            "2026-01-01T24:00:00.000000Z",
            "2026-01-01T00:60:00.000000Z",
            "2026-01-01T00:00:60.000000Z",
            "1969-12-31T23:59:59.999999Z",
            "2026-01-01T00:00:00.000000",
            "2026-01-01T00:00:00Z",
            "2026-01-01 00:00:00.000000Z",
            "2026-01-01T00:00:00.00000aZ",
        ] {
            assert_eq!(parse_ts(bad), None, "{bad}");
        }
        assert!(parse_ts("2024-02-29T00:00:00.000000Z").is_some());
    }

    #[test]
    fn the_reader_takes_lines_apart() {
        let line = r#"{"ts":"2026-11-25T20:15:03.123456Z","event":"frame","peer":"[::1]:9","len":3,"b64":"/wAB"}"#;
        let event = parse_line(line).expect("parses");
        assert_eq!(
            event,
            Event {
                kind: EventKind::Frame,
                ts: fixed_time(),
                addr: "[::1]:9".parse().expect("addr"),
                bytes: vec![0xFF, 0, 1],
            }
        );
        let line =
            r#"{"ts":"2026-11-25T20:15:03.123456Z","event":"frame","peer":"[::1]:9","len":4,"text":"\u00e9\"a"}"#;
        assert_eq!(parse_line(line).expect("parses").bytes, "é\"a".as_bytes());
        let line = r#"{"ts":"2026-11-25T20:15:03.123456Z","event":"listening","addr":"127.0.0.1:1"}"#;
        assert_eq!(parse_line(line).expect("parses").kind, EventKind::Listening);
    }

    #[test]
    fn the_reader_refuses_other_lines() {
        let ts = "2026-11-25T20:15:03.123456Z";
        for bad in [
            String::new(),
            "<14:wong says: 123>".into(),
            "[1]".into(),
            format!(r#"{{"ts":"{ts}","event":"frame","peer":"1.2.3.4:5","len":2,"text":"abc"}}"#),
            format!(r#"{{"ts":"{ts}","event":"frame","peer":"1.2.3.4:5","len":1,"text":"a","b64":"YQ=="}}"#),
            format!(r#"{{"ts":"{ts}","event":"frame","peer":"1.2.3.4:5","text":"a"}}"#),
            format!(r#"{{"ts":"{ts}","event":"frame","peer":"1.2.3.4:5","len":1,"b64":"YQ="}}"#),
            format!(r#"{{"ts":"{ts}","event":"frame","peer":"1.2.3.4","len":1,"text":"a"}}"#),
            format!(r#"{{"ts":"{ts}","event":"connect","peer":"1.2.3.4:5","len":1}}"#),
            format!(r#"{{"ts":"{ts}","event":"connect","addr":"1.2.3.4:5"}}"#),
            format!(r#"{{"ts":"{ts}","event":"listening","peer":"1.2.3.4:5"}}"#),
            format!(r#"{{"ts":"{ts}","event":"hello","peer":"1.2.3.4:5"}}"#),
            r#"{"ts":"2026-11-25T20:15:03Z","event":"close","peer":"1.2.3.4:5"}"#.into(),
            format!(r#"{{"ts":"{ts}","event":"close","peer":"1.2.3.4:5"}} x"#),
        ] {
            assert!(parse_line(&bad).is_err(), "accepted {bad:?}");
        }
    }

    /// The frames of a JSON rendering of `block`, and of a text rendering
    /// (the independent parser and unescaper of the text format).
    fn cuts(max_read: usize, block: &[u8]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let json: Vec<Vec<u8>> = json_lines(max_read, block)
            .lines()
            .map(|l| {
                let e = parse_line(l).unwrap_or_else(|e| panic!("{l}: {e}"));
                assert_eq!(e.kind, EventKind::Frame);
                e.bytes
            })
            .collect();
        let mut text = Vec::new();
        Framer::new(max_read, false).frame_block(&mut text, b"", block);
        let text: Vec<Vec<u8>> = text
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| unescape(parse_frame_line(l).expect("a frame line").text).expect("unescapes"))
            .collect();
        (json, text)
    }

    #[test]
    fn cuts_as_the_text_format_and_keeps_every_byte() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let pieces: [&[u8]; 10] = [
            b"wong says: hello there, this is printable ",
            b"\"",
            b"\\",
            b"\n",
            b"\x1b[2J",
            "é世🦀".as_bytes(),
            "\u{202e}\u{2028}\u{e0041}".as_bytes(),
            b"\xff\xc3",
            b"\x00",
            b"\x7f",
        ];
        for round in 0..3000 {
            let mut block = Vec::new();
            for _ in 0..(next() % 40) {
                match next() % 3 {
                    0 => block.push(next() as u8),
                    _ => block.extend_from_slice(pieces[(next() % pieces.len() as u64) as usize]),
                }
            }
            let max_read = [1, 2, 3, 25, 25, 64, 512][round % 7];
            let (json, text) = cuts(max_read, &block);
            assert_eq!(json, text, "max_read {max_read}, block {block:?}");
            assert_eq!(json.concat(), block);
        }
        let all: Vec<u8> = (0..=255u8).collect();
        for max_read in [1, 7, 25, 256] {
            let (json, text) = cuts(max_read, &all);
            assert_eq!(json, text);
            assert_eq!(json.concat(), all);
        }
    }

    #[test]
    fn valid_utf8_frames_are_text_and_others_base64() {
        let out = json_lines(4, &[&b"a"[..], "é".as_bytes(), b"\x1bb\xffxyz"].concat());
        // "aé\x1b" is 4 bytes; "b" + 0xff + "xy" is invalid; "z" is plain.
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].ends_with(r#""len":4,"text":"aé\u001b"}"#), "{}", lines[0]);
        assert!(lines[1].ends_with(r#""len":4,"b64":"Yv94eQ=="}"#), "{}", lines[1]);
        assert!(lines[2].ends_with(r#""len":1,"text":"z"}"#), "{}", lines[2]);
        // A character cut by the frame boundary: both frames are base64.
        let out = json_lines(2, "a€".as_bytes());
        assert!(
            out.contains(r#""b64":"YeI="}"#) && out.contains(r#""b64":"gqw="}"#),
            "{out}"
        );
    }
}
