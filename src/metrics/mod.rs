//! `--metrics ADDR`: the operator's view, as Prometheus scrapes it.
//!
//! A thread of its own (never a reactor) serves `GET /metrics` (see
//! [`http`]) in the Prometheus text exposition format. Each scrape takes a
//! [`Snapshot`] from a [`Source`]: the counters the reactors publish once
//! per wakeup (one process, `--threads`), or those every worker publishes in
//! the memory its supervisor shares with it (`--workers`), dead workers'
//! counts included. Nothing is added to the data path: a scrape only reads
//! what is published anyway, so it answers while the reactors are blocked on
//! stdout, and says for how long they have been.

pub mod http;

use std::time::Duration;

use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};

use crate::reactor::Summary;

/// What a scrape reports, read at one moment.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Every counter, over all reactors and workers (ended ones included).
    pub totals: Summary,
    /// Connections open, by (worker, reactor): worker `None` for a server
    /// on its own.
    pub open: Vec<(Option<usize>, usize, u64)>,
    /// The connection cap.
    pub max_connections: u64,
    /// Transcript bytes buffered, not yet written.
    pub backlog: u64,
    /// How long the oldest write to stdout in flight has been going (zero:
    /// none).
    pub blocked_for: Duration,
    /// `--workers`: what the supervisor knows of its workers.
    pub workers: Option<WorkerCounts>,
    /// How the server runs: `threads` reactors per process, `processes`
    /// worker processes (1 without `--workers`).
    pub threads: usize,
    /// Worker processes (1 without `--workers`).
    pub processes: usize,
}

/// What the supervisor of `--workers` adds to a snapshot.
#[derive(Debug, Default, Clone, Copy)]
pub struct WorkerCounts {
    /// Workers running now.
    pub live: u64,
    /// Workers restarted since the start (after a death or their own stop).
    pub restarts: u64,
}

/// Where a scrape's numbers come from.
pub trait Source: Send + Sync + 'static {
    /// The numbers now.
    fn snapshot(&self) -> Snapshot;
}

/// The metric name prefix.
const PREFIX: &str = "simple_tcp_server_";

/// One sample: its labels and value.
type Sample<'a> = (Vec<(&'a str, String)>, f64);

/// A metric family of `kind` with `samples`.
fn family(name: &str, help: &str, kind: MetricType, samples: Vec<Sample<'_>>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(format!("{PREFIX}{name}"));
    f.set_help(help.to_string());
    f.set_field_type(kind);
    for (labels, value) in samples {
        let mut m = Metric::default();
        m.set_label(
            labels
                .into_iter()
                .map(|(k, v)| {
                    let mut pair = LabelPair::default();
                    pair.set_name(k.to_string());
                    pair.set_value(v);
                    pair
                })
                .collect(),
        );
        if kind == MetricType::COUNTER {
            let mut c = Counter::default();
            c.set_value(value);
            m.set_counter(c);
        } else {
            let mut g = Gauge::default();
            g.set_value(value);
            m.set_gauge(g);
        }
        f.mut_metric().push(m);
    }
    f
}

/// A counter without labels.
fn counter(name: &str, help: &str, value: u64) -> MetricFamily {
    family(name, help, MetricType::COUNTER, vec![(Vec::new(), value as f64)])
}

/// A gauge without labels.
fn gauge(name: &str, help: &str, value: f64) -> MetricFamily {
    family(name, help, MetricType::GAUGE, vec![(Vec::new(), value)])
}

/// A counter with one sample per `(label value, count)`.
fn by(name: &str, help: &str, label: &str, values: &[(&str, u64)]) -> MetricFamily {
    family(
        name,
        help,
        MetricType::COUNTER,
        values
            .iter()
            .map(|(v, n)| (vec![(label, v.to_string())], *n as f64))
            .collect(),
    )
}

/// The metric families of `s`, as a scrape reports them.
pub fn families(s: &Snapshot) -> Vec<MetricFamily> {
    let t = &s.totals;
    let mode = match (s.workers.is_some(), s.threads) {
        (true, _) => "workers",
        (false, 1) => "single",
        (false, _) => "threads",
    };
    let mut out = vec![
        family(
            "build_info",
            "The server's version and how it runs (always 1).",
            MetricType::GAUGE,
            vec![(
                vec![
                    ("version", env!("CARGO_PKG_VERSION").to_string()),
                    ("mode", mode.to_string()),
                    ("threads", s.threads.to_string()),
                    ("workers", s.processes.to_string()),
                ],
                1.0,
            )],
        ),
        family(
            "connections_open",
            "Connections open now, by reactor (and worker): clients, and connections still sending their PROXY header.",
            MetricType::GAUGE,
            s.open
                .iter()
                .map(|&(worker, reactor, n)| {
                    let mut labels = Vec::new();
                    if let Some(w) = worker {
                        labels.push(("worker", w.to_string()));
                    }
                    labels.push(("reactor", reactor.to_string()));
                    (labels, n as f64)
                })
                .collect(),
        ),
        gauge(
            "connections_max",
            "The cap on open connections (--max-connections).",
            s.max_connections as f64,
        ),
        counter(
            "connections_accepted_total",
            "Clients accepted and served (greeted).",
            t.accepted,
        ),
        by(
            "connections_closed_total",
            "Served connections closed, by why.",
            "reason",
            &[
                ("eof", t.closed_eof),
                ("reset", t.closed_reset),
                ("error", t.closed_error),
                ("idle", t.closed_idle),
                ("shutdown", t.closed_shutdown),
                ("worker_died", t.lost),
            ],
        ),
        by(
            "clients_refused_total",
            "Clients closed without being served, by why.",
            "reason",
            &[
                ("full", t.rejected),
                ("denied", t.denied),
                ("per_source", t.refused_per_source),
                ("proxy_untrusted", t.proxy_untrusted),
                ("proxy_invalid", t.proxy_invalid),
                ("proxy_timeout", t.proxy_timeout),
            ],
        ),
        counter(
            "received_bytes_total",
            "Bytes received from clients and printed.",
            t.bytes,
        ),
        counter("frames_received_total", "Frames received and printed.", t.frames),
        counter(
            "transcript_bytes_total",
            "Transcript bytes written to stdout.",
            t.out_bytes,
        ),
        counter(
            "transcript_lines_total",
            "Transcript lines written to stdout.",
            t.out_lines,
        ),
        gauge(
            "transcript_backlog_bytes",
            "Transcript bytes printed but not yet written to stdout.",
            s.backlog as f64,
        ),
        family(
            "stdout_write_seconds_total",
            "Time spent writing the transcript to stdout (most of it blocked, when stdout is slow).",
            MetricType::COUNTER,
            vec![(Vec::new(), t.out_write_ns as f64 / 1e9)],
        ),
        gauge(
            "stdout_blocked_seconds",
            "How long the write to stdout in flight has been going (0: none).",
            s.blocked_for.as_secs_f64(),
        ),
        counter(
            "accept_errors_total",
            "Accepts that failed (a client gone before it was accepted, no descriptors, ...).",
            t.accept_errors,
        ),
        counter(
            "accept_pauses_total",
            "Pauses of accepting for want of descriptors or memory.",
            t.accept_pauses,
        ),
    ];
    if let Some(w) = s.workers {
        out.push(gauge("workers_live", "Worker processes running.", w.live as f64));
        out.push(counter(
            "worker_restarts_total",
            "Worker processes started again after a death (or a stop of their own).",
            w.restarts,
        ));
    }
    out
}

/// The families of `s` in the Prometheus text exposition format.
pub fn encode(s: &Snapshot) -> Vec<u8> {
    use prometheus::Encoder as _;
    let mut body = Vec::with_capacity(4096);
    // Encoding into a Vec cannot fail: the families are well formed.
    let _ = prometheus::TextEncoder::new().encode(&families(s), &mut body);
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_named_as_prometheus_wants() {
        let s = Snapshot {
            open: vec![(None, 0, 3), (None, 1, 4)],
            threads: 2,
            processes: 1,
            workers: Some(WorkerCounts::default()),
            ..Snapshot::default()
        };
        for f in families(&s) {
            let name = f.name();
            assert!(name.starts_with(PREFIX), "{name}");
            assert_eq!(
                f.get_field_type() == MetricType::COUNTER,
                name.ends_with("_total"),
                "{name}: counters and only counters end in _total"
            );
            assert!(!f.help().is_empty(), "{name}");
        }
        let text = String::from_utf8(encode(&s)).expect("UTF-8");
        assert!(
            text.contains("simple_tcp_server_connections_open{reactor=\"1\"} 4\n"),
            "{text}"
        );
        assert!(text.contains("simple_tcp_server_build_info{"), "{text}");
    }
}
