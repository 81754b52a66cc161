//! Connections per second: each client connects, receives the greeting,
//! sends one message, closes its side and waits for the server to close.
//! Every design in [`Design::ALL`] but the 25-byte-read reactor (one
//! message is one read either way). Each design is set up and warmed up
//! before the clock (`Design::start`); stopping it is inside.

mod baselines;
mod stamp;

use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use baselines::Design;
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};

/// Client threads, each running its connections one after another.
const CLIENT_THREADS: usize = 8;
/// Connections per thread per iteration.
const PER_THREAD: usize = 64;
/// Loopback source addresses to rotate through, so that the clients'
/// TIME_WAIT sockets never exhaust the ephemeral ports.
const SOURCES: usize = 250;

/// How long each design sits idle, once, before it is measured.
const IDLE_CHECK: Duration = Duration::from_millis(200);

/// Next source address, shared by all client threads.
static NEXT_SOURCE: AtomicUsize = AtomicUsize::new(0);

fn one_connection(server: SocketAddr) {
    let n = NEXT_SOURCE.fetch_add(1, Ordering::Relaxed) % SOURCES;
    let source = SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(127, 0, 1 + (n / 250) as u8, 1 + (n % 250) as u8)),
        0,
    );
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    simple_tcp_server::load::bind_address_no_port(&socket).expect("IP_BIND_ADDRESS_NO_PORT");
    socket.bind(&source.into()).expect("bind source address");
    socket.connect(&server.into()).expect("connect");
    let mut stream: TcpStream = socket.into();
    let mut greeting = [0u8; 10];
    stream.read_exact(&mut greeting).expect("greeting");
    assert_eq!(&greeting, simple_tcp_server::protocol::GREETING);
    stream.write_all(b"wong says: hello").expect("send");
    stream.shutdown(Shutdown::Write).expect("shutdown");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("server closes");
}

fn connections(design: Design) -> Duration {
    let server = design.start(CLIENT_THREADS);
    let addr = server.addr;
    let started = Instant::now();
    thread::scope(|s| {
        for _ in 0..CLIENT_THREADS {
            s.spawn(|| (0..PER_THREAD).for_each(|_| one_connection(addr)));
        }
    });
    server.stop();
    started.elapsed()
}

fn bench(c: &mut Criterion) {
    let designs: Vec<Design> = Design::ALL.into_iter().filter(|d| *d != Design::Reactor25).collect();
    for &design in &designs {
        design.assert_idle_is_quiet(IDLE_CHECK);
    }
    let mut group = c.benchmark_group("accept");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    let per_iteration = CLIENT_THREADS * PER_THREAD;
    group.throughput(Throughput::Elements(per_iteration as u64));
    for design in designs {
        let ran = Cell::new(false);
        group.bench_function(BenchmarkId::new(design.name(), per_iteration), |b| {
            ran.set(true);
            b.iter_custom(|iters| (0..iters).map(|_| connections(design)).sum())
        });
        stamp::record("accept", &format!("{}/{per_iteration}", design.name()), ran.get());
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
