//! `simple_tcp_server`: the TCP server of "The Way to Go" (chapter 15.1),
//! rebuilt as a single-threaded mio reactor that holds tens of thousands of
//! connections, frames what clients send into `<LEN:TEXT>` lines and never
//! lets a client forge a line of the transcript.
//!
//! # Layout
//!
//! - [`protocol`]: the chapter's constants: its port, host, frame size and
//!   greeting.
//! - [`config`]: everything the server can be told, with the defaults the
//!   binary uses.
//! - [`listen`]: resolving a host and binding a listener.
//! - [`reactor`]: the loop. [`reactor::Server`] owns the `mio::Poll`, the
//!   listener and the slab of connections; [`reactor::Server::run`] takes the
//!   output sink, so tests and benches drive the same code path as the
//!   binary. Its rooms: `accept` (accepting, backoff, the cap),
//!   `connection` (one client's 32 bytes), `sweep` (the idle timeout),
//!   `stats` (the summary and the `--stats` line).
//! - [`output`]: the buffered transcript sink and its flush policy;
//!   [`output::text`] cuts bytes into frames, escapes them, and has the
//!   inverse (parsing and unescaping transcript lines) for tests and tools;
//!   [`output::json`] writes the same events as JSON lines
//!   (`--format json`) and reads them back.
//! - [`proxy_header`]: the PROXY protocol header (v1 and v2) that
//!   `--proxy-protocol` expects, parsed strictly (the reactor's `proxy`
//!   room reads it off the connection).
//! - [`workers`]: `--workers N`, a supervisor process and N worker
//!   processes (each a whole server) past one process's descriptor cap: the
//!   shared port, the merged transcript, the shared cap, restarts.
//! - [`net_error`]: Go's `net.Error` classification (temporary, timeout,
//!   permanent) and what the accept loop does with each error.
//! - [`limits`]: the open-file limit, raised at start as Go does.
//! - [`metrics`]: `--metrics`, the Prometheus endpoint, on a thread of its
//!   own.
//! - [`notify`]: systemd's readiness notifications, never blocking.
//! - [`rules`]: `--access-file`, who may connect, reread on SIGHUP.
//! - [`title`]: process titles, so that `ps` tells the supervisor from its
//!   workers.
//! - [`client`]: the blocking companion client (`tcp_client`).
//! - [`load`]: the load generator behind `tcp_load`.
//! - [`duration`]: parsing `300ms`, `5s`, `2m` on the command line.
//!
//! The binaries in `src/bin/` only parse arguments, set up logging and call
//! into this library.

#![warn(missing_docs, rust_2018_idioms, unreachable_pub, clippy::undocumented_unsafe_blocks)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod client;
pub mod config;
pub mod duration;
pub mod limits;
pub mod listen;
pub mod load;
pub mod metrics;
pub mod net_error;
pub mod notify;
pub mod output;
pub mod protocol;
pub mod proxy_header;
pub mod reactor;
pub mod rules;
pub mod title;
pub mod workers;

pub use config::Config;
pub use reactor::{AccessRules, Server, Stopper, Summary};
