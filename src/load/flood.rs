//! Flood: every connection streams its bytes in large writes, half-closes,
//! and waits for the server to close.

use std::io::{self, Write};
use std::time::Instant;

use mio::Events;

use super::conn::Phase;
use super::{LoadError, Mode, POLL_TICK, Run, sample_process};

/// The text every connection sends: `NAME says: LINE`, repeated, no
/// delimiter, as client.go writes it. Printable, like real chat.
pub(super) fn payload(len: usize) -> Vec<u8> {
    let mut text = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while text.len() < len {
        let _ = write!(text, "wong says: line {i} of the flood ");
        i += 1;
    }
    text.truncate(len);
    text
}

impl Run {
    /// Flood: writes until the socket is full or the connection's bytes are
    /// all out, then half-closes.
    pub(super) fn on_writable(&mut self, key: usize) {
        let Mode::Flood { bytes, .. } = self.cfg.mode else {
            return;
        };
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.phase != Phase::Ready {
            return;
        }
        while conn.sent < bytes {
            let n = (bytes - conn.sent).min(self.payload.len() as u64) as usize;
            match conn.stream.write(&self.payload[..n]) {
                Ok(n) => {
                    conn.sent += n as u64;
                    self.report.bytes_sent += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // The bytes written on this connection are not
                    // acknowledged: they count in bytes_sent only.
                    self.lose(key, &e);
                    return;
                }
            }
        }
        // Everything is out: half-close and wait for the server's close.
        let _ = conn.stream.shutdown(std::net::Shutdown::Write);
        conn.phase = Phase::Draining;
    }

    /// Flood: waits until the server has closed every connection (or the
    /// run stops); MB/s counts the bytes of the connections it closed.
    pub(super) fn finish_flood(&mut self, conns: usize, events: &mut Events) -> Result<(), LoadError> {
        self.progress.set_position(0);
        while self.finished < conns && !self.stopping() {
            self.poll_events(events, POLL_TICK)?;
            self.progress.set_position(self.finished as u64);
        }
        let left = self.conns.len();
        let kind = self.stop_kind();
        self.report.fail(kind, left as u64);
        let end = self.last_close.unwrap_or_else(Instant::now);
        let secs = end.duration_since(self.started).as_secs_f64();
        if secs > 0.0 {
            self.report.mb_per_sec = self.report.bytes_acked as f64 / secs / 1e6;
        }
        self.report.server_after = self.cfg.server_pid.and_then(|pid| sample_process(pid).ok());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_printable_chat_text() {
        let p = payload(1000);
        assert_eq!(p.len(), 1000);
        assert!(p.starts_with(b"wong says: line 0 of the flood wong says: line 1"));
        assert!(crate::output::text::is_plain_text(&p));
    }
}
