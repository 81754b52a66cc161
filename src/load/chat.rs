//! Chat: R messages per second for T seconds (R x T in all), round robin
//! over the greeted connections; then every connection is half-closed, and
//! only messages on connections the server closed (having read them all)
//! count as acknowledged.
//!
//! Round robin spreads the rate evenly over everyone: with a million held
//! and 50,000 a second, each connection speaks every 20 s. Every message
//! carries an identifier (the generator process and its message number), so
//! that a run can check the transcript has each exactly once.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use mio::Events;

use super::pace::Schedule;
use super::{LoadError, Run, sample_process};

/// Bytes of every chat message: one frame of the server's default
/// `--max-read`, so that however the server's reads fall, each message is
/// one `<25:...>` line of its own.
pub const CHAT_MESSAGE_LEN: usize = 25;

/// A chat message's identifier: which generator process sent it (0 for a
/// lone process, 1 up under `--procs`) and its number there (0, 1, 2 ...
/// in the order sent, with no gaps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChatId {
    /// The generator process.
    pub proc_index: u16,
    /// The message's number within that process.
    pub seq: u64,
}

impl ChatId {
    /// The identifier in a frame's text (`c01234 says: 003.00000042`), if
    /// it is a chat message.
    pub fn parse(text: &[u8]) -> Option<ChatId> {
        let rest = text.strip_prefix(b"c")?;
        let at = rest.windows(7).position(|w| w == b" says: ")?;
        let digits = |b: &[u8]| !b.is_empty() && b.iter().all(u8::is_ascii_digit);
        if !digits(&rest[..at]) {
            return None;
        }
        let id = &rest[at + 7..];
        let dot = id.iter().position(|&b| b == b'.')?;
        let (proc_index, seq) = (&id[..dot], &id[dot + 1..]);
        if !digits(proc_index) || !digits(seq) {
            return None;
        }
        Some(ChatId {
            proc_index: std::str::from_utf8(proc_index).ok()?.parse().ok()?,
            seq: std::str::from_utf8(seq).ok()?.parse().ok()?,
        })
    }
}

/// The largest message number that keeps a message in one frame.
pub const CHAT_MAX_SEQ: u64 = 99_999_999;

/// Writes chat message `id`, sent on connection `key`, into `out`:
/// `c{key} says: {process}.{number}`, zero-padded to exactly
/// [`CHAT_MESSAGE_LEN`] bytes while the number has at most 8 digits (the
/// key is shown modulo 100,000: it is for the reader, not the check).
pub fn chat_message(out: &mut Vec<u8>, key: usize, id: ChatId) {
    out.clear();
    let _ = write!(out, "c{:05} says: {:03}.{:08}", key % 100_000, id.proc_index, id.seq);
}
/// How far past its `--secs` the paced phase may run to send what is due
/// before it gives up: the rate was out of reach.
pub(super) const PACE_GRACE: Duration = Duration::from_millis(100);
/// The paced loops look at the clock every this many writes or connects,
/// so that a rate out of reach cannot hold them past their end.
pub(super) const CLOCK_EVERY: u64 = 256;
/// Time for the server to read what is in flight before its CPU time is
/// sampled.
const SETTLE: Duration = Duration::from_millis(200);
/// How long after our half-close the server may go without closing any
/// connection; it closes each as soon as it has read the end of it.
pub(super) const CLOSE_WAIT: Duration = Duration::from_secs(5);

impl Run {
    /// The paced phase, and the server's CPU time over it.
    pub(super) fn chat(
        &mut self,
        rate: u64,
        secs: Duration,
        tick: Duration,
        events: &mut Events,
    ) -> Result<(), LoadError> {
        let schedule = Schedule::new(rate, secs);
        self.report.rate_target = rate;
        self.report.asked = schedule.total;
        let before = self.cfg.server_pid.and_then(|pid| sample_process(pid).ok());
        let start = Instant::now();
        let end = start + secs;
        let give_up = end + PACE_GRACE;
        let mut cursor = 0usize;
        let mut tried = 0u64;
        let mut message = Vec::with_capacity(64);
        self.progress.set_length(secs.as_secs().max(1));
        self.progress.set_position(0);
        'paced: while !self.stopping() {
            let due = schedule.due(start.elapsed());
            let mut writes = 0u64;
            while tried < due && !self.ready.is_empty() {
                writes += 1;
                if writes.is_multiple_of(CLOCK_EVERY) && Instant::now() >= give_up {
                    break 'paced;
                }
                cursor = (cursor + 1) % self.ready.len();
                let key = self.ready[cursor];
                let Some(conn) = self.conns.get_mut(key) else {
                    self.ready.swap_remove(cursor);
                    continue;
                };
                tried += 1;
                let id = ChatId {
                    proc_index: self.cfg.proc_index,
                    seq: self.report.messages,
                };
                chat_message(&mut message, key, id);
                match conn.stream.write(&message) {
                    // Part of a message: the rest would shift every later
                    // frame on this connection, so it is given up (and
                    // the run is not clean).
                    Ok(w) if w < message.len() => {
                        self.report.bytes_sent += w as u64;
                        self.lose_kind(key, "short write");
                    }
                    Ok(w) => {
                        conn.sent += w as u64;
                        conn.messages += 1;
                        self.report.messages += 1;
                        self.report.bytes_sent += w as u64;
                    }
                    // Not sent: the server has not read what came before.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.report.blocked_writes += 1,
                    Err(e) => self.lose(key, &e),
                }
            }
            let now = Instant::now();
            if tried >= schedule.total || self.ready.is_empty() || now >= give_up {
                break;
            }
            self.progress.set_position(now.duration_since(start).as_secs());
            let wait = tick.min(end.saturating_duration_since(now));
            self.poll_events(events, wait)?;
        }
        self.paced_secs = start.elapsed().max(secs).as_secs_f64();
        let elapsed = start.elapsed().as_secs_f64();
        // Let the server drain what is in flight before sampling its CPU.
        self.settle(Instant::now() + SETTLE, events)?;
        let after = self.cfg.server_pid.and_then(|pid| sample_process(pid).ok());
        if let (Some(b), Some(a)) = (before, after) {
            let cpu = a.cpu_secs - b.cpu_secs;
            if self.report.messages > 0 {
                self.report.cpu_us_per_msg = Some(cpu * 1e6 / self.report.messages as f64);
            }
            self.report.server_cpu_util = Some(cpu / elapsed);
        }
        self.report.server_after = after;
        Ok(())
    }

    /// After the paced phase: half-closes every connection and waits for
    /// the server to close each, which it does once it has read everything;
    /// the achieved rate counts those messages only.
    pub(super) fn chat_acknowledged(&mut self, events: &mut Events) -> Result<(), LoadError> {
        self.close_and_wait(CLOSE_WAIT, events)?;
        if self.paced_secs > 0.0 {
            self.report.rate_achieved = self.report.messages_acked as f64 / self.paced_secs;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_is_one_frame_and_reads_back_as_its_identifier() {
        let mut out = Vec::new();
        for (key, proc_index, seq) in [(0, 0, 0), (17_999, 55, 321_000), (123_456, 254, 99_999_999)] {
            let id = ChatId { proc_index, seq };
            chat_message(&mut out, key, id);
            assert_eq!(out.len(), CHAT_MESSAGE_LEN, "{}", String::from_utf8_lossy(&out));
            assert_eq!(ChatId::parse(&out), Some(id));
        }
        chat_message(&mut out, 7, ChatId { proc_index: 3, seq: 42 });
        assert_eq!(out, b"c00007 says: 003.00000042");
        for text in [
            &b"wong says: 123"[..],
            b"c1 says: 3",
            b"c1 says: .4",
            b"cx says: 1.2",
            b"c1 says: 1.2x",
            b"",
        ] {
            assert_eq!(ChatId::parse(text), None, "{}", String::from_utf8_lossy(text));
        }
    }
}
