//! The latency probe: a few clients send numbered messages at a paced rate
//! and watch the server's transcript (a file it appends to) for their
//! lines; the time from a message's write to its line showing in the file
//! is its send-to-print latency. It measures the server's own output, not
//! a reply, so it sees every queue on the way: the client's socket, the
//! reactor, the output buffer, a supervisor's pass-through, the file.
//!
//! The probe reads the file whenever it has nothing to send, and sleeps
//! `poll` when it found nothing new: a latency is late by at most that
//! (plus the probe's own scheduling).

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
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
    /// Messages sent but never found (within `wait` of the last one).
    pub missing: u64,
    /// Lines found more than once (every extra one counts).
    pub duplicates: u64,
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
             \"p50_ms\":{},\"p99_ms\":{},\"p999_ms\":{},\"max_ms\":{},\"ok\":{},\"reason\":{}}}",
            self.clients,
            self.sent,
            self.printed,
            self.missing,
            self.duplicates,
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
            "probe: {} messages from {} clients, {} printed, {} missing, {} printed twice",
            self.sent, self.clients, self.printed, self.missing, self.duplicates
        );
        let _ = writeln!(
            s,
            "send-to-print latency: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            self.p50_ms, self.p99_ms, self.p999_ms, self.max_ms
        );
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
    let mut transcript =
        File::open(&cfg.transcript).map_err(|e| io::Error::new(e.kind(), format!("cannot open {path}: {e}")))?;
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
        let mut greeting = vec![0; cfg.greeting_len];
        stream
            .read_exact(&mut greeting)
            .map_err(|e| io::Error::new(e.kind(), format!("no greeting from {}: {e}", cfg.target)))?;
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
    let start = Instant::now();
    let mut last_sent = start;
    let mut all_found: Option<Instant> = None;
    loop {
        // Send what is due.
        let due = usize::try_from(schedule.due(start.elapsed())).unwrap_or(usize::MAX);
        while sent_at.len() < due && failed.is_none() {
            let seq = sent_at.len();
            message.clear();
            let _ = write!(message, "probe {nonce:08x} {seq:010}");
            let count = clients.len();
            let client = &mut clients[seq % count];
            let now = Instant::now();
            match client.write_all(&message) {
                Ok(()) => {
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
            let n = match transcript.read(&mut buf[kept..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io::Error::new(e.kind(), format!("cannot read {path}: {e}"))),
            };
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
        let all_sent = sent_at.len() >= total || failed.is_some();
        if all_sent && latencies.len() == sent_at.len() {
            let at = *all_found.get_or_insert_with(Instant::now);
            if at.elapsed() >= AFTER_ALL {
                break;
            }
        }
        if all_sent && latencies.len() < sent_at.len() && last_sent.elapsed() >= cfg.wait {
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
    let printed = seen.iter().filter(|&&c| c > 0).count() as u64;
    let duplicates: u64 = seen.iter().map(|&c| u64::from(c.saturating_sub(1))).sum();
    let mut report = ProbeReport {
        clients: clients.len(),
        sent,
        printed,
        missing: sent - printed,
        duplicates,
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
            "{} messages not printed within {:?} of the last",
            report.missing, cfg.wait
        ));
    }
    if report.duplicates > 0 {
        reasons.push(format!("{} lines printed twice", report.duplicates));
    }
    if sent < schedule.total && reasons.is_empty() {
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
