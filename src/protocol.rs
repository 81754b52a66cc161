//! The chapter's protocol: what simple_tcp_server.go and client.go agree
//! on, and what this server keeps as its defaults.

/// The port the chapter's programs use.
pub const DEFAULT_PORT: u16 = 50000;

/// The host the server listens on when none is given.
pub const DEFAULT_HOST: &str = "localhost";

/// Bytes per frame: simple_tcp_server.go reads into a 25-byte buffer.
pub const MAX_READ: usize = 25;

/// What simple_tcp_server.go writes to every new client.
pub const GREETING: &[u8] = b"Let's GO!\n";
