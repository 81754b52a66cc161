//! The outcome of a run: what happened, counted only where the server
//! acknowledged it; the verdict (clean or not, and why); for a person, or
//! as one JSON line, which `--procs` reads back and adds up.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::ProcSample;
use super::json::{self, Value};

/// A chat server that uses this share of a core or more has no headroom
/// left: it is at its limit, not keeping up.
const BUSY_CORE: f64 = 0.95;

/// The outcome of a run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// hold, flood, chat or churn.
    pub mode: String,
    /// Connections asked for (churn: the held ones).
    pub conns: usize,
    /// Connections that connected and were greeted (churn: all of them).
    pub established: usize,
    /// Greetings received.
    pub greetings: usize,
    /// Hold and churn: held connections still open at the end of the run.
    pub held: usize,
    /// Failures by kind, one per connection.
    pub errors: BTreeMap<String, u64>,
    /// From the first connect to the last greeting, seconds.
    pub connect_secs: f64,
    /// From the first connect to the end of the run, seconds.
    pub elapsed_secs: f64,
    /// Payload bytes written.
    pub bytes_sent: u64,
    /// Flood and chat: payload bytes of the connections that the server
    /// closed after our half-close, so after reading every byte.
    pub bytes_acked: u64,
    /// Messages written (hold, chat and churn).
    pub messages: u64,
    /// Chat: messages on connections the server closed after reading all.
    pub messages_acked: u64,
    /// Flood: acknowledged MB/s (10^6 bytes) from first connect to last close.
    pub mb_per_sec: f64,
    /// Chat and churn: per second asked for.
    pub rate_target: u64,
    /// Chat and churn: messages or connections asked for in all (rate x secs).
    pub asked: u64,
    /// Chat: acknowledged messages per second; churn: completed connections
    /// per second.
    pub rate_achieved: f64,
    /// Chat: writes that found a connection's buffer full (the server fell
    /// behind); the message was not sent.
    pub blocked_writes: u64,
    /// Churn: short-lived connections started.
    pub churn_started: u64,
    /// Churn: short-lived connections completed (greeted, message sent,
    /// closed by the server after it printed the message).
    pub churned: u64,
    /// Churn: from the first short-lived connection to the last one's end
    /// (at least the --secs asked), seconds.
    pub churn_secs: f64,
    /// The server before the run (with `server_pid`).
    pub server_before: Option<ProcSample>,
    /// The server with all connections up (hold) or at the end (others).
    pub server_after: Option<ProcSample>,
    /// Chat: the server's CPU time per message, microseconds.
    pub cpu_us_per_msg: Option<f64>,
    /// Chat: the server's CPU use during the paced phase, in cores.
    pub server_cpu_util: Option<f64>,
    /// Chat: whether every message asked for was sent and acknowledged, no
    /// write blocked, and the server had headroom.
    pub kept_up: Option<bool>,
    /// Why the run stopped before its end (interrupted, `--timeout`, no
    /// greeting), if it did.
    pub stopped: Option<String>,
    /// The verdict: the run did all it was asked, and nothing failed.
    pub ok: bool,
    /// Why the run is not clean.
    pub reason: Option<String>,
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

    /// Counts one failure of `kind`.
    pub(super) fn fail(&mut self, kind: &str, n: u64) {
        if n > 0 {
            *self.errors.entry(kind.into()).or_default() += n;
        }
    }

    /// The reasons this run is not clean (none: it is).
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(stopped) = &self.stopped {
            problems.push(stopped.clone());
        }
        let errors = self.error_count();
        if errors > 0 {
            let list: Vec<String> = self.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
            problems.push(format!(
                "{errors} connection{} failed ({})",
                if errors == 1 { "" } else { "s" },
                list.join(", ")
            ));
        }
        match self.mode.as_str() {
            "chat" => problems.extend(self.chat_problems()),
            "churn" if self.churn_started < self.asked => problems.push(format!(
                "opened {} of the {} short-lived connections asked for: the rate was out of reach",
                self.churn_started, self.asked
            )),
            _ => {}
        }
        if problems.is_empty() && self.established < self.conns {
            problems.push(format!(
                "{} of {} connections established",
                self.established, self.conns
            ));
        }
        problems
    }

    fn chat_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let tried = self.messages + self.blocked_writes;
        if tried < self.asked {
            problems.push(format!(
                "sent {tried} of the {} messages asked for: the rate was out of reach",
                self.asked
            ));
        }
        if self.blocked_writes > 0 {
            problems.push(format!(
                "{} writes found a full buffer: the server fell behind",
                self.blocked_writes
            ));
        }
        if let Some(util) = self.server_cpu_util.filter(|u| *u >= BUSY_CORE) {
            problems.push(format!("the server used {:.0}% of a core: no headroom", util * 100.0));
        }
        problems
    }

    /// Decides the verdict (`ok`, `reason`, and for chat `kept_up`) from
    /// the counts.
    pub fn judge(&mut self) {
        let problems = self.problems();
        if self.mode == "chat" {
            self.kept_up = Some(problems.is_empty());
        }
        self.ok = problems.is_empty();
        self.reason = (!problems.is_empty()).then(|| problems.join("; "));
    }

    /// The reports of several generator processes as one: counts added,
    /// times the longest, the rate of the whole. Server samples are left
    /// to the caller (the processes do not take them), and so is the
    /// verdict ([`Report::judge`]).
    pub fn merge(parts: &[Report]) -> Report {
        let mut all = Report {
            mode: parts.first().map(|p| p.mode.clone()).unwrap_or_default(),
            ..Report::default()
        };
        for p in parts {
            all.conns += p.conns;
            all.established += p.established;
            all.greetings += p.greetings;
            all.held += p.held;
            for (kind, n) in &p.errors {
                all.fail(kind, *n);
            }
            all.connect_secs = all.connect_secs.max(p.connect_secs);
            all.elapsed_secs = all.elapsed_secs.max(p.elapsed_secs);
            all.bytes_sent += p.bytes_sent;
            all.bytes_acked += p.bytes_acked;
            all.messages += p.messages;
            all.messages_acked += p.messages_acked;
            all.rate_target += p.rate_target;
            all.asked += p.asked;
            all.rate_achieved += p.rate_achieved;
            all.blocked_writes += p.blocked_writes;
            all.churn_started += p.churn_started;
            all.churned += p.churned;
            all.churn_secs = all.churn_secs.max(p.churn_secs);
            if let Some(stopped) = &p.stopped
                && all.stopped.as_deref() != Some(stopped)
            {
                all.stopped = Some(match all.stopped.take() {
                    Some(before) => format!("{before}; {stopped}"),
                    None => stopped.clone(),
                });
            }
        }
        if all.elapsed_secs > 0.0 && all.mode == "flood" {
            all.mb_per_sec = all.bytes_acked as f64 / all.elapsed_secs / 1e6;
        }
        all
    }

    /// A few lines for a person, the verdict last.
    pub fn human(&self) -> String {
        let mut s = String::new();
        if self.mode == "churn" {
            let _ = writeln!(
                s,
                "churn: {} of {} held connections open at the end, {} established in all, {} greeted",
                self.held, self.conns, self.established, self.greetings
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
                    "sent {} bytes, {} acknowledged (their connection closed by the server after reading all) \
                     in {:.3} s: {:.1} MB/s",
                    self.bytes_sent, self.bytes_acked, self.elapsed_secs, self.mb_per_sec
                );
            }
            "churn" => {
                let _ = writeln!(
                    s,
                    "churned {} of {} connections asked ({} started) in {:.1} s ({:.0}/s of {}/s asked)",
                    self.churned, self.asked, self.churn_started, self.churn_secs, self.rate_achieved, self.rate_target
                );
            }
            "chat" => {
                let _ = writeln!(
                    s,
                    "sent {} of {} messages asked, {} acknowledged: {:.0}/s of {}/s asked, {} writes blocked",
                    self.messages,
                    self.asked,
                    self.messages_acked,
                    self.rate_achieved,
                    self.rate_target,
                    self.blocked_writes
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
                "server RSS: {} kB before, {} kB after{}; threads: {}{}",
                before.rss / 1024,
                after.rss / 1024,
                self.rss_per_conn()
                    .map(|b| format!(" ({b:.1} bytes per connection)"))
                    .unwrap_or_default(),
                after.threads,
                match after.processes {
                    1 => String::new(),
                    n => format!("; {n} processes (the server and its workers, all counted)"),
                }
            );
        }
        match (&self.reason, self.ok) {
            (_, true) => {
                let _ = writeln!(s, "verdict: clean");
            }
            (Some(reason), false) => {
                let _ = writeln!(s, "verdict: NOT CLEAN: {reason}");
            }
            (None, false) => {
                let _ = writeln!(s, "verdict: NOT CLEAN");
            }
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
        fn opt<T: ToString>(v: Option<T>) -> String {
            v.map_or("null".into(), |v| v.to_string())
        }
        let errors: Vec<String> = self
            .errors
            .iter()
            .map(|(k, v)| format!("{}:{v}", json::string(k)))
            .collect();
        let fields: [(&str, String); 32] = [
            ("mode", json::string(&self.mode)),
            ("ok", self.ok.to_string()),
            ("reason", opt(self.reason.as_deref().map(json::string))),
            ("conns", self.conns.to_string()),
            ("established", self.established.to_string()),
            ("greetings", self.greetings.to_string()),
            ("held", self.held.to_string()),
            ("errors", format!("{{{}}}", errors.join(","))),
            ("connect_secs", format!("{:.3}", self.connect_secs)),
            ("elapsed_secs", format!("{:.3}", self.elapsed_secs)),
            ("bytes_sent", self.bytes_sent.to_string()),
            ("bytes_acked", self.bytes_acked.to_string()),
            ("messages", self.messages.to_string()),
            ("messages_acked", self.messages_acked.to_string()),
            ("mb_per_sec", format!("{:.3}", self.mb_per_sec)),
            ("rate_target", self.rate_target.to_string()),
            ("asked", self.asked.to_string()),
            ("rate_achieved", format!("{:.1}", self.rate_achieved)),
            ("blocked_writes", self.blocked_writes.to_string()),
            ("churn_started", self.churn_started.to_string()),
            ("churned", self.churned.to_string()),
            ("churn_secs", format!("{:.3}", self.churn_secs)),
            ("server_rss_before", opt(self.server_before.map(|p| p.rss))),
            ("server_rss_after", opt(self.server_after.map(|p| p.rss))),
            ("rss_per_conn", num(self.rss_per_conn())),
            ("server_threads", opt(self.server_after.map(|p| p.threads))),
            ("server_processes", opt(self.server_after.map(|p| p.processes))),
            ("server_cpu_secs", num(self.server_cpu_secs())),
            ("cpu_us_per_msg", num(self.cpu_us_per_msg)),
            ("server_cpu_util", num(self.server_cpu_util)),
            ("kept_up", opt(self.kept_up)),
            ("stopped", opt(self.stopped.as_deref().map(json::string))),
        ];
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", body.join(","))
    }

    /// Reads back a generator process's [`Report::json`] line (everything
    /// but the server samples, which a generator process does not take).
    pub fn from_json(line: &str) -> Result<Report, String> {
        let v = json::parse(line)?;
        let u = |key: &str| -> Result<u64, String> {
            v.get(key)
                .and_then(Value::as_u64)
                .ok_or_else(|| format!("no whole number `{key}` in the report"))
        };
        let us = |key: &str| -> Result<usize, String> { usize::try_from(u(key)?).map_err(|e| e.to_string()) };
        let f = |key: &str| -> Result<f64, String> {
            v.get(key)
                .and_then(Value::as_f64)
                .ok_or_else(|| format!("no number `{key}` in the report"))
        };
        let s = |key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
        let mut errors = BTreeMap::new();
        if let Some(Value::Object(members)) = v.get("errors") {
            for (kind, n) in members {
                errors.insert(kind.clone(), n.as_u64().ok_or("an error count is not a number")?);
            }
        }
        Ok(Report {
            mode: s("mode").ok_or("no `mode` in the report")?,
            ok: v.get("ok").and_then(Value::as_bool).ok_or("no `ok` in the report")?,
            reason: s("reason"),
            conns: us("conns")?,
            established: us("established")?,
            greetings: us("greetings")?,
            held: us("held")?,
            errors,
            connect_secs: f("connect_secs")?,
            elapsed_secs: f("elapsed_secs")?,
            bytes_sent: u("bytes_sent")?,
            bytes_acked: u("bytes_acked")?,
            messages: u("messages")?,
            messages_acked: u("messages_acked")?,
            mb_per_sec: f("mb_per_sec")?,
            rate_target: u("rate_target")?,
            asked: u("asked")?,
            rate_achieved: f("rate_achieved")?,
            blocked_writes: u("blocked_writes")?,
            churn_started: u("churn_started")?,
            churned: u("churned")?,
            churn_secs: f("churn_secs")?,
            kept_up: v.get("kept_up").and_then(Value::as_bool),
            stopped: s("stopped"),
            ..Report::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_one_line_and_reads_back() {
        let mut r = Report {
            mode: "chat".into(),
            conns: 10,
            established: 10,
            greetings: 10,
            messages: 98,
            asked: 100,
            rate_target: 100,
            stopped: Some("interrupted by \"SIGINT\"".into()),
            ..Report::default()
        };
        r.fail("refused", 2);
        r.judge();
        let j = r.json();
        assert!(!j.contains('\n'));
        assert!(j.starts_with("{\"mode\":\"chat\",\"ok\":false,\"reason\":\"interrupted by \\\"SIGINT\\\"; "));
        assert!(j.contains("\"errors\":{\"refused\":2}"));
        let back = Report::from_json(&j).expect("reads back");
        assert_eq!(back.json(), j);
    }

    #[test]
    fn any_failure_is_not_clean() {
        let clean = || Report {
            mode: "hold".into(),
            conns: 3,
            established: 3,
            greetings: 3,
            ..Report::default()
        };
        let mut r = clean();
        r.judge();
        assert!(r.ok && r.reason.is_none());
        let mut r = clean();
        r.established = 2;
        r.fail("reset", 1);
        r.judge();
        assert_eq!(r.reason.as_deref(), Some("1 connection failed (reset 1)"));
        // A chat that was asked 100 messages and sent 99 did not keep up.
        let mut r = Report {
            mode: "chat".into(),
            asked: 100,
            messages: 99,
            ..Report::default()
        };
        r.judge();
        assert_eq!(r.kept_up, Some(false));
        assert!(r.reason.as_deref().is_some_and(|s| s.contains("out of reach")));
    }

    #[test]
    fn merged_reports_add_up() {
        let part = |established, refused| {
            let mut r = Report {
                mode: "flood".into(),
                conns: 4,
                established,
                bytes_sent: 400,
                bytes_acked: 100 * established as u64,
                elapsed_secs: 1.0 + established as f64,
                ..Report::default()
            };
            r.fail("refused", refused);
            r
        };
        let mut all = Report::merge(&[part(4, 0), part(3, 1)]);
        all.judge();
        assert_eq!((all.conns, all.established, all.bytes_acked), (8, 7, 700));
        assert_eq!(all.errors.get("refused"), Some(&1));
        assert_eq!(all.elapsed_secs, 5.0);
        assert!((all.mb_per_sec - 700.0 / 5.0 / 1e6).abs() < 1e-12);
        assert!(!all.ok);
    }
}
