//! The outcome of a run: for a person, or as one JSON line.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::ProcSample;

/// The outcome of a run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// hold, flood or chat.
    pub mode: String,
    /// Connections asked for.
    pub conns: usize,
    /// Connections that connected and were greeted.
    pub established: usize,
    /// Greetings received.
    pub greetings: usize,
    /// Failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// From the first connect to the last greeting, seconds.
    pub connect_secs: f64,
    /// From the first connect to the end of the run, seconds.
    pub elapsed_secs: f64,
    /// Payload bytes written.
    pub bytes_sent: u64,
    /// Messages written (hold and chat).
    pub messages: u64,
    /// Flood: payload MB/s (10^6 bytes) from first connect to last close.
    pub mb_per_sec: f64,
    /// Chat: messages per second asked for and achieved.
    pub rate_target: u64,
    /// Chat: achieved messages per second.
    pub rate_achieved: f64,
    /// Chat: writes that found a connection's buffer full (the server fell
    /// behind).
    pub blocked_writes: u64,
    /// Churn: short-lived connections completed (greeted, message sent,
    /// closed by the server after it printed the message).
    pub churned: u64,
    /// The server before the run (with `server_pid`).
    pub server_before: Option<ProcSample>,
    /// The server with all connections up (hold) or at the end (others).
    pub server_after: Option<ProcSample>,
    /// Chat: the server's CPU time per message, microseconds.
    pub cpu_us_per_msg: Option<f64>,
    /// Chat: the server's CPU use during the paced phase, in cores.
    pub server_cpu_util: Option<f64>,
    /// Chat: whether the load generator held the rate and the server kept up.
    pub kept_up: Option<bool>,
}

impl Report {
    /// Server CPU time (user + system) between the two samples, seconds.
    pub fn server_cpu_secs(&self) -> Option<f64> {
        Some(self.server_after?.cpu_secs - self.server_before?.cpu_secs)
    }

    /// Hold: server RSS growth per established connection, bytes.
    pub fn rss_per_conn(&self) -> Option<f64> {
        if self.mode != "hold" {
            return None;
        }
        let (before, after) = (self.server_before?, self.server_after?);
        (self.established > 0).then(|| (after.rss as f64 - before.rss as f64) / self.established as f64)
    }

    /// Total errors.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// A few lines for a person.
    pub fn human(&self) -> String {
        let mut s = String::new();
        if self.mode == "churn" {
            let _ = writeln!(
                s,
                "churn: {} connections held, {} established in all, {} greeted",
                self.conns, self.established, self.greetings
            );
        } else {
            let _ = writeln!(
                s,
                "{}: {} of {} connections established, {} greeted, in {:.2} s",
                self.mode, self.established, self.conns, self.greetings, self.connect_secs
            );
        }
        if self.errors.is_empty() {
            let _ = writeln!(s, "errors: none");
        } else {
            let list: Vec<String> = self.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(s, "errors: {}", list.join(", "));
        }
        match self.mode.as_str() {
            "flood" => {
                let _ = writeln!(
                    s,
                    "sent {} bytes in {:.3} s: {:.1} MB/s",
                    self.bytes_sent, self.elapsed_secs, self.mb_per_sec
                );
            }
            "churn" => {
                let _ = writeln!(
                    s,
                    "churned {} connections in {:.1} s ({:.0}/s of {}/s asked) beside {} held",
                    self.churned,
                    self.elapsed_secs - self.connect_secs,
                    self.rate_achieved,
                    self.rate_target,
                    self.conns
                );
            }
            "chat" => {
                let _ = writeln!(
                    s,
                    "sent {} messages: {:.0}/s of {}/s asked, {} writes blocked",
                    self.messages, self.rate_achieved, self.rate_target, self.blocked_writes
                );
                if let (Some(us), Some(util)) = (self.cpu_us_per_msg, self.server_cpu_util) {
                    let _ = writeln!(s, "server CPU: {us:.2} us per message, {:.0}% of a core", util * 100.0);
                }
                if let Some(kept_up) = self.kept_up {
                    let _ = writeln!(s, "kept up: {}", if kept_up { "yes" } else { "no" });
                }
            }
            _ => {}
        }
        if let (Some(before), Some(after)) = (self.server_before, self.server_after) {
            let _ = writeln!(
                s,
                "server RSS: {} kB before, {} kB after{}; threads: {}",
                before.rss / 1024,
                after.rss / 1024,
                self.rss_per_conn()
                    .map(|b| format!(" ({b:.1} bytes per connection)"))
                    .unwrap_or_default(),
                after.threads
            );
        }
        s
    }

    /// One JSON object on one line.
    pub fn json(&self) -> String {
        fn num(v: Option<f64>) -> String {
            match v {
                Some(v) if v.is_finite() => format!("{v:.3}"),
                _ => "null".into(),
            }
        }
        let errors: Vec<String> = self
            .errors
            .iter()
            .map(|(k, v)| format!("\"{}\":{v}", k.replace(['"', '\\'], "_")))
            .collect();
        format!(
            concat!(
                "{{\"mode\":\"{}\",\"conns\":{},\"established\":{},\"greetings\":{},\"errors\":{{{}}},",
                "\"connect_secs\":{:.3},\"elapsed_secs\":{:.3},\"bytes_sent\":{},\"messages\":{},",
                "\"mb_per_sec\":{:.3},\"rate_target\":{},\"rate_achieved\":{:.1},\"blocked_writes\":{},\"churned\":{},",
                "\"server_rss_before\":{},\"server_rss_after\":{},\"rss_per_conn\":{},\"server_threads\":{},",
                "\"server_cpu_secs\":{},\"cpu_us_per_msg\":{},\"server_cpu_util\":{},\"kept_up\":{}}}"
            ),
            self.mode,
            self.conns,
            self.established,
            self.greetings,
            errors.join(","),
            self.connect_secs,
            self.elapsed_secs,
            self.bytes_sent,
            self.messages,
            self.mb_per_sec,
            self.rate_target,
            self.rate_achieved,
            self.blocked_writes,
            self.churned,
            self.server_before.map_or("null".into(), |p| p.rss.to_string()),
            self.server_after.map_or("null".into(), |p| p.rss.to_string()),
            num(self.rss_per_conn()),
            self.server_after.map_or("null".into(), |p| p.threads.to_string()),
            num(self.server_cpu_secs()),
            num(self.cpu_us_per_msg),
            num(self.server_cpu_util),
            self.kept_up.map_or("null".into(), |k| k.to_string()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_one_line() {
        let mut r = Report {
            mode: "hold".into(),
            ..Report::default()
        };
        r.errors.insert("refused".into(), 2);
        let j = r.json();
        assert!(!j.contains('\n'));
        assert!(j.starts_with("{\"mode\":\"hold\""));
        assert!(j.contains("\"errors\":{\"refused\":2}"));
    }
}
