//! Ingest throughput: clients stream `NAME says: LINE` text and close; the
//! time ends when the server has framed and written every byte (it has
//! closed every connection, then stops and flushes). Every design in
//! [`Design::ALL`] (the reactor on one thread and on two, a thread per
//! connection, a tokio task per connection on the one-thread and
//! multi-thread runtimes, the latter also with one writer thread and with
//! direct writes from its workers' buffers, the reactor reading literally
//! 25 bytes per system call) at 1, 64 and 1,000 clients.
//!
//! Each design is started, set up and warmed up before the clock starts
//! (`Design::start`, see benches/baselines/mod.rs); stopping it, with its
//! final write, is inside the clock for all.
//!
//! The clients are the library's load generator (`tcp_load flood`) on a
//! thread of this process: one thread, non-blocking, 256 KiB writes. It
//! shares the machine's cores with the server, whatever the design.

mod baselines;
mod stamp;

use std::cell::Cell;
use std::time::{Duration, Instant};

use baselines::Design;
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use simple_tcp_server::load::{self, LoadConfig, Mode};

/// Bytes in flight per iteration, whatever the client count: 32 MiB.
const TOTAL: u64 = 32 << 20;

/// The 25-byte-read reactor makes 40 times more system calls per byte; it
/// gets a sixteenth of the payload so the run stays short (throughput is
/// per byte either way).
const SLOW_SHARE: u64 = 16;

/// How long each design sits idle, once, before it is measured: long enough
/// for a spinning loop to show in the process's CPU time.
const IDLE_CHECK: Duration = Duration::from_millis(200);

/// Streams `per_client` bytes from each of `clients` connections to `design`.
fn ingest(design: Design, clients: usize, per_client: u64) -> Duration {
    let server = design.start(clients);
    let config = LoadConfig {
        target: server.addr,
        sources: load::default_sources(server.addr, 8),
        mode: Mode::Flood {
            conns: clients,
            bytes: per_client,
            write_size: 256 * 1024,
        },
        in_flight: 512,
        greeting_len: simple_tcp_server::protocol::GREETING.len(),
        server_pid: None,
        timeout: Duration::from_secs(120),
        progress: false,
        stop_on_signals: false,
        coordinated: false,
        announce: false,
        proc_index: 0,
    };
    let started = Instant::now();
    let report = load::run(config).expect("flood");
    server.stop();
    let elapsed = started.elapsed();
    assert!(
        report.errors.is_empty(),
        "{} at {clients} clients: {:?}",
        design.name(),
        report.errors
    );
    assert_eq!(report.bytes_sent, per_client * clients as u64);
    elapsed
}

fn bench(c: &mut Criterion) {
    for design in Design::ALL {
        design.assert_idle_is_quiet(IDLE_CHECK);
    }
    let mut group = c.benchmark_group("ingest");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    for clients in [1usize, 64, 1000] {
        for design in Design::ALL {
            let total = if design == Design::Reactor25 {
                TOTAL / SLOW_SHARE
            } else {
                TOTAL
            };
            let per_client = total / clients as u64;
            group.throughput(Throughput::Bytes(per_client * clients as u64));
            let ran = Cell::new(false);
            group.bench_with_input(BenchmarkId::new(design.name(), clients), &clients, |b, &clients| {
                ran.set(true);
                b.iter_custom(|iters| (0..iters).map(|_| ingest(design, clients, per_client)).sum())
            });
            stamp::record("ingest", &format!("{}/{clients}", design.name()), ran.get());
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
