//! The latency probe: a few clients send numbered messages at a paced rate
//! and watch the server's transcript (a file it appends to) for their
//! lines; the time from a message's write to its line showing in the file
//! is its send-to-print latency. It measures the server's own output, not
//! a reply, so it sees every queue on the way: the client's socket, the
//! reactor, the output buffer, a supervisor's pass-through, the file.
//!
//! The probe reads the file whenever it has nothing to send, and sleeps
//! `poll` when it found nothing new: a latency is late by at most that
//! (plus the probe's own scheduling). A file truncated under the probe is
//! read again from its start if the probe sees it shorter than where it
//! was reading (lines written past that point before it looks are not
//! found, and count as missing).

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use super::pace::Schedule;

/// Bytes of a probe message: `probe NNNNNNNN SSSSSSSSSS`, one frame.
const MESSAGE_LEN: usize = 25;
/// Bytes read from the transcript at once.
const READ_CHUNK: usize = 1 << 20;
/// Connecting and reading the greeting, per client.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Once every message was found, the transcript is read this much longer,
/// so that a line printed twice is seen twice.
const AFTER_ALL: Duration = Duration::from_millis(200);
/// How far past `--secs` the probe may run to send what is due before it
/// gives up (the rate was out of reach): more than a stall of its own
/// scheduling on a busy machine.
const PACE_GRACE: Duration = Duration::from_secs(1);
/// Longest refusal line (`ERR ...`) read and shown.
const REFUSAL_MAX: usize = 256;

/// What the probe is told.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// The server.
    pub target: SocketAddr,
    /// The file the server's transcript goes to.
    pub transcript: PathBuf,
    /// Probe clients, used in turn.
    pub clients: usize,
    /// Probe messages per second, over all its clients.
    pub rate: u64,
    /// How long to send.
    pub secs: Duration,
    /// How long after the last message the probe waits for lines still
    /// missing; a message not printed by then counts as missing.
    pub wait: Duration,
    /// How long the probe sleeps when the transcript had nothing new.
    pub poll: Duration,
    /// Bytes of greeting per client (0 for a server that sends none).
    pub greeting_len: usize,
}

/// What the probe saw.
#[derive(Debug, Clone, Default)]
pub struct ProbeReport {
    /// Probe clients.
    pub clients: usize,
    /// Messages written.
    pub sent: u64,
    /// Messages whose line was found in the transcript.
    pub printed: u64,
    /// Messages sent but never found whole (within `wait` of the last
    /// one): not printed, or printed in two frames because they queued up
    /// behind others and one of the server's reads ended inside them
    /// (which a probe at its usual few messages a second never sees).
    pub missing: u64,
    /// Lines found more than once (every extra one counts).
    pub duplicates: u64,
    /// Messages whose write came back cut short (it stalled for the
    /// probe's 10 s write timeout part way, or a signal came) and whose
    /// line was not found whole: the server may have framed them in two.
    /// Neither printed nor missing; the run is not clean.
    pub split: u64,
    /// Send-to-print latencies of the printed messages, milliseconds:
    /// median, 99th and 99.9th percentile (nearest rank), largest.
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
    /// See `p50_ms`.
    pub p999_ms: f64,
    /// See `p50_ms`.
    pub max_ms: f64,
    /// Every message printed exactly once.
    pub ok: bool,
    /// Why not, when not.
    pub reason: Option<String>,
}

impl ProbeReport {
    /// One JSON line.
    pub fn json(&self) -> String {
        let reason = match &self.reason {
            Some(r) => format!("\"{}\"", r.replace('\\', "\\\\").replace('"', "\\\"")),
            None => "null".into(),
        };
        // No latency without a printed message: null, not 0.
        let ms = |v: f64| {
            if self.printed > 0 {
                format!("{v:.3}")
            } else {
                "null".into()
            }
        };
        format!(
            "{{\"mode\":\"probe\",\"clients\":{},\"sent\":{},\"printed\":{},\"missing\":{},\"duplicates\":{},\
             \"split\":{},\"p50_ms\":{},\"p99_ms\":{},\"p999_ms\":{},\"max_ms\":{},\"ok\":{},\"reason\":{}}}",
            self.clients,
            self.sent,
            self.printed,
            self.missing,
            self.duplicates,
            self.split,
            ms(self.p50_ms),
            ms(self.p99_ms),
            ms(self.p999_ms),
            ms(self.max_ms),
            self.ok,
            reason
        )
    }

    /// For a person.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "probe: {} messages from {} clients, {} printed, {} missing, {} printed twice, {} split",
            self.sent, self.clients, self.printed, self.missing, self.duplicates, self.split
        );
        if self.printed > 0 {
            let _ = writeln!(
                s,
                "send-to-print latency: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
                self.p50_ms, self.p99_ms, self.p999_ms, self.max_ms
            );
        } else {
            s.push_str("send-to-print latency: none (no message was printed)\n");
        }
        match &self.reason {
            None => s.push_str("verdict: clean\n"),
            Some(why) => {
                let _ = writeln!(s, "verdict: NOT clean: {why}");
            }
        }
        s
    }
}

/// The value at quantile `q` of `sorted` (nearest rank); 0 when empty.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Finds `needle` in `hay` from `from`.
fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let first = *needle.first()?;
    let mut at = from;
    while at + needle.len() <= hay.len() {
        let i = at + hay[at..hay.len() + 1 - needle.len()].iter().position(|&b| b == first)?;
        if &hay[i..i + needle.len()] == needle {
            return Some(i);
        }
        at = i + 1;
    }
    None
}

/// The probe's messages found in complete lines: frames that are one whole
/// probe message, `<25:` + `key` (`probe NNNNNNNN `) + ten digits + `>`.
fn numbers_after(lines: &[u8], key: &[u8], mut found: impl FnMut(u64)) {
    let mut at = 0;
    while let Some(i) = find(lines, key, at) {
        let digits = &lines[i + key.len()..];
        let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
        if n == MESSAGE_LEN - key.len()
            && i >= 4
            && &lines[i - 4..i] == b"<25:"
            && digits.get(n) == Some(&b'>')
            && let Some(seq) = std::str::from_utf8(&digits[..n]).ok().and_then(|d| d.parse().ok())
        {
            found(seq);
        }
        at = i + key.len();
    }
}

/// Reads a greeting of `len` bytes from the server at `target`. A server
/// that turns the client away (a greeting of 3 bytes or more that begins
/// `ERR`: the line is read to its end) or closes early is an error that
/// says so.
fn read_greeting(stream: &mut TcpStream, len: usize, target: SocketAddr) -> io::Result<()> {
    let mut buf = vec![0; len.max(REFUSAL_MAX)];
    let mut got = 0;
    let refused = |bytes: &[u8]| len >= 3 && bytes.starts_with(b"ERR");
    while got < len || (refused(&buf[..got]) && got < REFUSAL_MAX && !buf[..got].contains(&b'\n')) {
        let want = if refused(&buf[..got]) { REFUSAL_MAX } else { len };
        match stream.read(&mut buf[got..want]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // The refusal read so far says enough.
            Err(_) if refused(&buf[..got]) => break,
            Err(e) => return Err(io::Error::new(e.kind(), format!("no greeting from {target}: {e}"))),
        }
    }
    if refused(&buf[..got]) {
        let text = String::from_utf8_lossy(&buf[..got]);
        let line = text.lines().next().unwrap_or_default();
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("the server at {target} turned the probe away: {line}"),
        ));
    }
    if got < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("no greeting from {target}: it closed after {got} of {len} bytes"),
        ));
    }
    Ok(())
}

/// Reads what was appended to `file` since the last read. A file found
/// shorter than where the reading is (truncated, and not yet written past
/// that point again) is read again from its start; the second value says
/// it was.
fn read_on(file: &mut File, buf: &mut [u8]) -> io::Result<(usize, bool)> {
    let n = file.read(buf)?;
    if n > 0 {
        return Ok((n, false));
    }
    let end = file.metadata()?.len();
    if file.stream_position()? <= end {
        return Ok((0, false));
    }
    file.seek(SeekFrom::Start(0))?;
    Ok((file.read(buf)?, true))
}

/// What the probe found, from how many times each message's line was seen
/// (`seen`, by number) and which messages' writes were cut short (`split`).
#[derive(Debug, PartialEq)]
struct Tally {
    /// Messages found at least once (cut short or not).
    printed: u64,
    /// Messages cut short and not found whole.
    unfound_split: u64,
    /// Extra sightings of a line.
    duplicates: u64,
}

fn tally(seen: &[u32], split: &[usize]) -> Tally {
    Tally {
        printed: seen.iter().filter(|&&c| c > 0).count() as u64,
        unfound_split: split
            .iter()
            .filter(|&&seq| seen.get(seq).is_some_and(|&c| c == 0))
            .count() as u64,
        duplicates: seen.iter().map(|&c| u64::from(c.saturating_sub(1))).sum(),
    }
}

/// Writes one message; `false` when a write came back cut short (stalled
/// for the write timeout part way, or a signal) and the rest followed: the
/// server may frame such a message in two.
fn write_message(stream: &mut TcpStream, message: &[u8]) -> io::Result<bool> {
    loop {
        match stream.write(message) {
            Ok(n) if n == message.len() => return Ok(true),
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                stream.write_all(&message[n..])?;
                return Ok(false);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Runs the probe.
pub fn probe(cfg: &ProbeConfig) -> io::Result<ProbeReport> {
    // A nonce, so that lines of an earlier probe in the same file never count.
    let nonce = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32).rotate_left(16))
        .unwrap_or(0)
        ^ std::process::id();
    let key = format!("probe {nonce:08x} ").into_bytes();
    let path = cfg.transcript.display();
    // Only a regular file can be read from where it ends. Opened without
    // blocking, since opening a FIFO that has no writer would wait forever
    // (for a regular file the flag changes nothing), then checked.
    let mut transcript = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&cfg.transcript)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open {path}: {e}")))?;
    let meta = transcript
        .metadata()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot read {path}: {e}")))?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{path} is not a regular file: give the file the server's stdout is appended to"),
        ));
    }
    transcript
        .seek(SeekFrom::End(0))
        .map_err(|e| io::Error::new(e.kind(), format!("cannot read {path}: {e}")))?;
    let mut clients = Vec::with_capacity(cfg.clients);
    for _ in 0..cfg.clients.max(1) {
        let mut stream = TcpStream::connect_timeout(&cfg.target, CONNECT_TIMEOUT)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot connect to {}: {e}", cfg.target)))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
        stream.set_write_timeout(Some(CONNECT_TIMEOUT))?;
        read_greeting(&mut stream, cfg.greeting_len, cfg.target)?;
        clients.push(stream);
    }
    let schedule = Schedule::new(cfg.rate.max(1), cfg.secs);
    let total = usize::try_from(schedule.total).unwrap_or(usize::MAX);
    let mut sent_at: Vec<Instant> = Vec::with_capacity(total.min(1 << 20));
    let mut seen: Vec<u32> = Vec::with_capacity(total.min(1 << 20));
    let mut latencies: Vec<f64> = Vec::with_capacity(total.min(1 << 20));
    let mut buf = vec![0u8; READ_CHUNK];
    // Bytes of an unfinished last line kept at the front of `buf`.
    let mut kept = 0usize;
    let mut message = Vec::with_capacity(MESSAGE_LEN);
    let mut failed: Option<String> = None;
    // Sequence numbers of messages the socket took in two parts.
    let mut split: Vec<usize> = Vec::new();
    // Past this the rate was out of reach: the probe stops sending.
    let mut out_of_reach = false;
    let start = Instant::now();
    let give_up = start + cfg.secs + PACE_GRACE;
    let mut last_sent = start;
    let mut all_found: Option<Instant> = None;
    loop {
        // Send what is due.
        let due = usize::try_from(schedule.due(start.elapsed())).unwrap_or(usize::MAX);
        while sent_at.len() < due && failed.is_none() && !out_of_reach {
            let seq = sent_at.len();
            message.clear();
            let _ = write!(message, "probe {nonce:08x} {seq:010}");
            let count = clients.len();
            let client = &mut clients[seq % count];
            let now = Instant::now();
            if now >= give_up {
                out_of_reach = true;
                break;
            }
            match write_message(client, &message) {
                Ok(whole) => {
                    if !whole {
                        split.push(seq);
                    }
                    sent_at.push(now);
                    seen.push(0);
                    last_sent = now;
                }
                Err(e) => failed = Some(format!("a probe client could not send: {e}")),
            }
        }
        // Read what the server printed since.
        let mut new = false;
        loop {
            if kept == buf.len() {
                // A line longer than the buffer: no probe line; drop it.
                kept = 0;
            }
            let (n, rewound) = match read_on(&mut transcript, &mut buf[kept..]) {
                Ok(read) => read,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io::Error::new(e.kind(), format!("cannot read {path}: {e}"))),
            };
            if rewound {
                // What was kept of a line belongs to the file's old text.
                buf.copy_within(kept..kept + n, 0);
                kept = 0;
            }
            if n == 0 {
                break;
            }
            new = true;
            let now = Instant::now();
            let filled = kept + n;
            let whole = buf[..filled].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            numbers_after(&buf[..whole], &key, |seq| {
                if let Some(count) = usize::try_from(seq).ok().and_then(|s| seen.get_mut(s)) {
                    *count += 1;
                    if *count == 1 {
                        latencies.push(now.duration_since(sent_at[seq as usize]).as_secs_f64() * 1e3);
                    }
                }
            });
            buf.copy_within(whole..filled, 0);
            kept = filled - whole;
        }
        let all_sent = sent_at.len() >= total || failed.is_some() || out_of_reach;
        // Found, or cut short in the write and not found whole (yet); the
        // list of those cut short is nearly always empty.
        let unfound_split = split.iter().filter(|&&seq| seen[seq] == 0).count();
        let expected = sent_at.len() - unfound_split;
        if all_sent && latencies.len() >= expected {
            let at = *all_found.get_or_insert_with(Instant::now);
            if at.elapsed() >= AFTER_ALL {
                break;
            }
        }
        if all_sent && latencies.len() < expected && last_sent.elapsed() >= cfg.wait {
            break;
        }
        if !new {
            let next_due = if all_sent {
                cfg.poll
            } else {
                let at = Duration::from_nanos(
                    u64::try_from(sent_at.len() as u128 * 1_000_000_000 / u128::from(cfg.rate.max(1)))
                        .unwrap_or(u64::MAX),
                );
                at.saturating_sub(start.elapsed())
            };
            std::thread::sleep(cfg.poll.min(next_due));
        }
    }
    for client in &clients {
        let _ = client.shutdown(Shutdown::Write);
    }
    latencies.sort_by(f64::total_cmp);
    let sent = sent_at.len() as u64;
    let Tally {
        printed,
        unfound_split,
        duplicates,
    } = tally(&seen, &split);
    let mut report = ProbeReport {
        clients: clients.len(),
        sent,
        printed,
        missing: sent - printed - unfound_split,
        duplicates,
        split: unfound_split,
        p50_ms: quantile(&latencies, 0.5),
        p99_ms: quantile(&latencies, 0.99),
        p999_ms: quantile(&latencies, 0.999),
        max_ms: latencies.last().copied().unwrap_or(0.0),
        ok: false,
        reason: None,
    };
    let mut reasons = Vec::new();
    if let Some(why) = failed {
        reasons.push(why);
    }
    if report.missing > 0 {
        reasons.push(format!(
            "{} messages not found whole within {:?} of the last (not printed, or framed in two parts)",
            report.missing, cfg.wait
        ));
    }
    if report.duplicates > 0 {
        reasons.push(format!("{} lines printed twice", report.duplicates));
    }
    if report.split > 0 {
        reasons.push(format!(
            "{} messages whose write was cut short (a 10 s stall or a signal) were not found whole",
            report.split
        ));
    }
    if out_of_reach {
        reasons.push(format!(
            "the rate was out of reach: {sent} of {} messages sent by {:?} past --secs",
            schedule.total, PACE_GRACE
        ));
    } else if sent < schedule.total && reasons.is_empty() {
        reasons.push(format!("{sent} of {} messages sent", schedule.total));
    }
    report.ok = reasons.is_empty();
    report.reason = (!reasons.is_empty()).then(|| reasons.join("; "));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_cut_short_is_read_again_from_its_start() {
        let path = std::env::temp_dir().join(format!("stcp-probe-read-on-{}", std::process::id()));
        let mut writer = File::create(&path).unwrap();
        writer.write_all(b"0123456789\n").unwrap();
        let mut file = File::open(&path).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(read_on(&mut file, &mut buf).unwrap(), (11, false));
        assert_eq!(read_on(&mut file, &mut buf).unwrap(), (0, false));
        // Appended: read on from where it was.
        writer.write_all(b"ab\n").unwrap();
        assert_eq!(read_on(&mut file, &mut buf).unwrap(), (3, false));
        assert_eq!(&buf[..3], b"ab\n");
        // Truncated, then written from the start again (shorter than where
        // the reading is): the new text, from its start.
        writer.set_len(0).unwrap();
        writer.seek(SeekFrom::Start(0)).unwrap();
        writer.write_all(b"xyz\n").unwrap();
        assert_eq!(read_on(&mut file, &mut buf).unwrap(), (4, true));
        assert_eq!(&buf[..4], b"xyz\n");
        assert_eq!(read_on(&mut file, &mut buf).unwrap(), (0, false));
        drop(writer);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_message_cut_short_counts_as_printed_when_found_whole() {
        // Five sent: 0 printed twice, 1 missing, 2 cut short and found,
        // 3 cut short and not found, 4 printed.
        let seen = [2, 0, 1, 0, 1];
        let t = tally(&seen, &[2, 3]);
        assert_eq!(
            t,
            Tally {
                printed: 3,
                unfound_split: 1,
                duplicates: 1
            }
        );
        // Printed, cut short and not found, and missing add up to the sent.
        let missing = seen.len() as u64 - t.printed - t.unfound_split;
        assert_eq!(missing, 1);
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 500.0);
        assert_eq!(quantile(&v, 0.99), 990.0);
        assert_eq!(quantile(&v, 0.999), 999.0);
        assert_eq!(quantile(&v[..1], 0.999), 1.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn only_whole_frames_of_this_probe_count() {
        let key = b"probe 0000abcd ";
        let lines = b"<25:probe 0000abcd 0000000007>\n\
            127.0.0.1:5 <25:probe 0000abcd 0000000008>\n\
            <25:probe 0000ffff 0000000009>\n\
            <20:probe 0000abcd 00000>\n<5:00010>\n\
            <25:xxprobe 0000abcd 0000000011>\n";
        let mut got = Vec::new();
        numbers_after(lines, key, |n| got.push(n));
        // Not another probe's, not a message cut in two frames, not one
        // inside a longer frame.
        assert_eq!(got, vec![7, 8]);
        assert_eq!(find(b"abcabd", b"abd", 0), Some(3));
        assert_eq!(find(b"ab", b"abd", 0), None);
    }
}
