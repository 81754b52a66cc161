//! socket.go's raw HTTP GET.

use std::io::{self, Read, Write};

use super::{ClientError, READ_CHUNK, RetryPolicy, dial, split_host_port, write_with_retry};

/// socket.go, done right: an HTTP/1.0 GET of `path` with a Host header;
/// the raw response is copied to `out` in 4096-byte reads until the server
/// closes. Returns the bytes copied.
pub fn http_get(target: &str, path: &str, policy: &RetryPolicy, out: &mut impl Write) -> Result<u64, ClientError> {
    let (host, port) = split_host_port(target, 80).map_err(|e| ClientError::Resolve {
        target: target.to_string(),
        err: io::Error::new(io::ErrorKind::InvalidInput, e),
    })?;
    let mut stream = dial(&host, port, policy)?;
    stream
        .set_read_timeout(Some(policy.timeout))
        .map_err(ClientError::Connection)?;
    stream
        .set_write_timeout(Some(policy.timeout))
        .map_err(ClientError::Connection)?;
    let host_header = if port == 80 {
        host.clone()
    } else if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host_header}\r\nConnection: close\r\n\r\n");
    write_with_retry(&mut stream, request.as_bytes(), policy)?;
    let mut buf = [0u8; READ_CHUNK];
    let mut total = 0u64;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.write_all(&buf[..n]).map_err(ClientError::Local)?;
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ClientError::Connection(e)),
        }
    }
    out.flush().map_err(ClientError::Local)?;
    Ok(total)
}
