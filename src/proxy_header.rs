//! The PROXY protocol header (HAProxy's `proxy-protocol.txt`, v1 text and
//! v2 binary), read as strictly as the spec words it: [`parse`] takes the
//! bytes at the start of a connection and says whether they are a whole
//! header, the start of one, or something no more bytes can make a header.
//!
//! The reactor peeks at a connection until [`parse`] gives a verdict (see
//! `reactor/proxy.rs`). Two properties make that safe, and the fuzz target
//! `proxy_header` checks them: a verdict on a whole header depends on its
//! bytes alone (never on what follows it), and bytes that are refused stay
//! refused whatever follows them, so a header is judged the moment it is
//! whole, and junk the moment it can no longer be the start of a header.
//!
//! v1 is one line, `PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n` with exactly one
//! space between fields, at most 107 bytes: IPv4 addresses are four decimal
//! numbers without leading zeros, IPv6 addresses are in RFC 4291 text form
//! (which includes `::ffff:127.0.0.1`, as HAProxy writes an IPv4 client of a
//! dual-stack frontend), ports are decimal 0 to 65535 without a sign or
//! leading zeros. `PROXY UNKNOWN` may be followed by anything up to the
//! CRLF, which is ignored. A CR not followed by LF, or an LF without a CR,
//! ends nothing: it is refused at once.
//!
//! v2 is the 12-byte signature, version 2, the command (`LOCAL` or
//! `PROXY`), the family/protocol byte, a 16-bit length and that many bytes:
//! the addresses, then type-length-value fields that must fill the rest
//! exactly. Only `PROXY` over TCP (`0x11`, `0x21`) names a client;
//! datagrams are refused (this server serves TCP); an unspecified family or
//! transport, or a UNIX socket, means the connection's own addresses, as
//! does `LOCAL`, whose block is ignored as the spec says.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The longest header accepted, in bytes. A v1 header is at most
/// [`V1_MAX`] bytes; a v2 header is 16 bytes and its block (12 or 36 bytes
/// of addresses for IPv4/IPv6, plus whatever TLVs the proxy adds, which
/// HAProxy keeps far below this). A v2 header announcing more is refused as
/// soon as its length is read.
pub const MAX_HEADER: usize = 4096;

/// The longest v1 header, CRLF included (the spec's 107 bytes).
pub const V1_MAX: usize = 107;

/// What the bytes at the start of a connection say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole header yet, and nothing wrong so far: wait for more.
    Incomplete,
    /// A whole header naming a TCP client.
    Proxy {
        /// The client: the header's source address and port.
        client: SocketAddr,
        /// The header's destination address and port: where the client
        /// connected (the proxy's frontend), or, when the header names the
        /// connection it came on, this end of it.
        server: SocketAddr,
        /// The header's length in bytes: what follows it is the client's.
        len: usize,
    },
    /// A whole header for a connection of the proxy's own, to be served
    /// under the connection's own addresses: v2 `LOCAL` (HAProxy's v2
    /// health checks), v1 `UNKNOWN`, or v2 `PROXY` with an unspecified
    /// family or transport, or a UNIX socket.
    Local {
        /// The header's length in bytes.
        len: usize,
    },
    /// Not a PROXY header, and no bytes that follow can make it one: what
    /// is wrong, for the log (the offending bytes escaped).
    Invalid(String),
}

/// The v1 header starts so.
const V1_PREFIX: &[u8] = b"PROXY ";

/// The v2 header starts so.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// The fixed part of a v2 header: signature, version/command,
/// family/protocol, length.
const V2_FIXED: usize = 16;

/// Parses the start of a connection, `bytes` (everything received so far).
pub fn parse(bytes: &[u8]) -> Parsed {
    match bytes.first() {
        None => Parsed::Incomplete,
        Some(b'P') => v1(bytes),
        Some(b'\r') => v2(bytes),
        Some(_) => Parsed::Invalid(format!(
            "not a PROXY header: starts \"{}\"",
            shown(&bytes[..bytes.len().min(16)])
        )),
    }
}

/// `bytes` for a log line: printable ASCII as it is, anything else escaped
/// (`\r`, `\x00`, ...). They come from strangers.
fn shown(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// Parses a v1 header (`bytes` starts with `P`).
fn v1(bytes: &[u8]) -> Parsed {
    // The line ends at its first CR or LF, which must be a CRLF.
    let end = bytes.iter().position(|&b| b == b'\r' || b == b'\n');
    let line = &bytes[..end.unwrap_or(bytes.len())];
    if line.len() > V1_MAX - 2 {
        // Too long, whatever follows; say what is wrong with it, if more.
        return Parsed::Invalid(match v1_line(line, false) {
            Err(why) => format!("v1: {why}"),
            Ok(_) => format!("v1: no CRLF in the first {V1_MAX} bytes"),
        });
    }
    let Some(end) = end else {
        // The line so far must be able to start a header.
        return match v1_line(line, false) {
            Ok(_) => Parsed::Incomplete,
            Err(why) => Parsed::Invalid(format!("v1: {why}")),
        };
    };
    if bytes[end] == b'\n' {
        return Parsed::Invalid("v1: the line ends with LF without CR".into());
    }
    match bytes.get(end + 1) {
        // The line is whole (its CR has come, and nothing else can follow
        // it): judged now, even while its LF is still on the way.
        None | Some(b'\n') => match v1_line(line, true) {
            Err(why) => Parsed::Invalid(format!("v1: {why}")),
            Ok(_) if bytes.len() == end + 1 => Parsed::Incomplete,
            Ok(Some((client, server))) => Parsed::Proxy {
                client,
                server,
                len: end + 2,
            },
            Ok(None) => Parsed::Local { len: end + 2 },
        },
        Some(&other) => Parsed::Invalid(format!("v1: CR followed by \"{}\", not LF", shown(&[other]))),
    }
}

/// The v1 families.
#[derive(Clone, Copy)]
enum Family {
    /// `TCP4`.
    Tcp4,
    /// `TCP6`.
    Tcp6,
}

/// The four fields after `TCP4`/`TCP6`, for messages.
const V1_FIELDS: [&str; 4] = [
    "source address",
    "destination address",
    "source port",
    "destination port",
];

/// The client and the server a header names.
type Endpoints = (SocketAddr, SocketAddr);

/// Checks a v1 line without its CRLF. `complete`: the line is whole, and
/// `Ok` gives the client and server (`None` for `UNKNOWN`); else `line` is
/// what has come so far, and `Ok` says only that it may still start a valid
/// header (the value is then `None`).
fn v1_line(line: &[u8], complete: bool) -> Result<Option<Endpoints>, String> {
    let Some(rest) = line.strip_prefix(V1_PREFIX) else {
        if !complete && V1_PREFIX.starts_with(line) {
            return Ok(None);
        }
        return Err(format!("not a PROXY header: starts \"{}\"", shown(line)));
    };
    let (protocol, fields) = match rest.iter().position(|&b| b == b' ') {
        Some(space) => (&rest[..space], Some(&rest[space + 1..])),
        None => (rest, None),
    };
    let family = match protocol {
        // The spec: the receiver ignores anything after UNKNOWN up to the
        // CRLF.
        b"UNKNOWN" => return Ok(None),
        b"TCP4" => Family::Tcp4,
        b"TCP6" => Family::Tcp6,
        _ if !complete
            && fields.is_none()
            && [&b"TCP4"[..], b"TCP6", b"UNKNOWN"]
                .iter()
                .any(|name| name.starts_with(protocol)) =>
        {
            return Ok(None);
        }
        _ => {
            return Err(format!(
                "unknown protocol \"{}\" (TCP4, TCP6 or UNKNOWN)",
                shown(protocol)
            ));
        }
    };
    let name = match family {
        Family::Tcp4 => "TCP4",
        Family::Tcp6 => "TCP6",
    };
    let Some(fields) = fields else {
        return if complete {
            Err(format!("{name} without addresses"))
        } else {
            Ok(None)
        };
    };
    let mut got: [&[u8]; 4] = [&[]; 4];
    let mut count = 0;
    let mut split = fields.split(|&b| b == b' ').peekable();
    while let Some(field) = split.next() {
        if count == got.len() {
            return Err(format!("text after the destination port: \"{}\"", shown(field)));
        }
        // Only the last field of an unfinished line may be unfinished.
        let partial = !complete && split.peek().is_none();
        let ok = match (count, family, partial) {
            (0 | 1, Family::Tcp4, false) => ipv4(field).is_some(),
            (0 | 1, Family::Tcp4, true) => ipv4_start(field),
            (0 | 1, Family::Tcp6, false) => ipv6(field).is_some(),
            (0 | 1, Family::Tcp6, true) => ipv6_start(field),
            (_, _, false) => port(field).is_some(),
            (_, _, true) => field.is_empty() || port(field).is_some(),
        };
        if !ok {
            return Err(if field.is_empty() {
                format!("empty {} after {name} (two spaces in a row?)", V1_FIELDS[count])
            } else {
                format!("bad {} \"{}\" for {name}", V1_FIELDS[count], shown(field))
            });
        }
        got[count] = field;
        count += 1;
    }
    if !complete {
        return Ok(None);
    }
    if count < got.len() {
        return Err(format!("{name} without its {}", V1_FIELDS[count]));
    }
    let address = |field: &[u8]| -> Option<IpAddr> {
        match family {
            Family::Tcp4 => ipv4(field).map(IpAddr::V4),
            Family::Tcp6 => ipv6(field).map(IpAddr::V6),
        }
    };
    // Every field was checked above.
    match (address(got[0]), address(got[1]), port(got[2]), port(got[3])) {
        (Some(src), Some(dst), Some(sport), Some(dport)) => {
            Ok(Some((SocketAddr::new(src, sport), SocketAddr::new(dst, dport))))
        }
        _ => Err(format!("bad addresses for {name}")),
    }
}

/// A decimal number of at most `max`, digits only, without a leading zero
/// (the spec forbids them, "to avoid any possible confusion with octal
/// numbers"); `None` for anything else, the empty string too.
fn decimal(digits: &[u8], max: u32) -> Option<u32> {
    if digits.is_empty() || (digits.len() > 1 && digits[0] == b'0') {
        return None;
    }
    digits.iter().try_fold(0u32, |value, &d| {
        let value = value * 10 + u32::from(d.checked_sub(b'0').filter(|d| *d <= 9)?);
        (value <= max).then_some(value)
    })
}

/// A v1 port: decimal, 0 to 65535.
fn port(text: &[u8]) -> Option<u16> {
    decimal(text, u32::from(u16::MAX)).and_then(|p| u16::try_from(p).ok())
}

/// A v1 IPv4 address: exactly four decimal numbers, 0 to 255, one dot
/// between each.
fn ipv4(text: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = text.split(|&b| b == b'.');
    for octet in &mut octets {
        *octet = u8::try_from(decimal(parts.next()?, 255)?).ok()?;
    }
    parts.next().is_none().then_some(Ipv4Addr::from(octets))
}

/// Whether `text` may start a v1 IPv4 address.
fn ipv4_start(text: &[u8]) -> bool {
    let mut parts = text.split(|&b| b == b'.').peekable();
    let mut count = 0;
    while let Some(part) = parts.next() {
        count += 1;
        // Every number but the last is whole; the last may be unfinished.
        let whole = parts.peek().is_some();
        if count > 4 || !((part.is_empty() && !whole) || decimal(part, 255).is_some()) {
            return false;
        }
    }
    true
}

/// The longest IPv6 address in text,
/// `ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`.
const IPV6_TEXT_MAX: usize = 45;

/// A v1 IPv6 address in RFC 4291 text form.
fn ipv6(text: &[u8]) -> Option<Ipv6Addr> {
    if text.len() > IPV6_TEXT_MAX {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// Whether `text` may start a v1 IPv6 address: its characters only.
fn ipv6_start(text: &[u8]) -> bool {
    text.len() <= IPV6_TEXT_MAX && text.iter().all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
}

/// Parses a v2 header (`bytes` starts with CR). Everything the fixed 16
/// bytes can refuse is refused as soon as they have come.
fn v2(bytes: &[u8]) -> Parsed {
    let signature = &bytes[..bytes.len().min(V2_SIGNATURE.len())];
    if !V2_SIGNATURE.starts_with(signature) {
        return Parsed::Invalid(format!("not a PROXY header: bad v2 signature \"{}\"", shown(signature)));
    }
    let local = match bytes.get(12) {
        Some(&version_command) => {
            if version_command >> 4 != 2 {
                return Parsed::Invalid(format!("v2: unsupported version {}", version_command >> 4));
            }
            match version_command & 0x0f {
                0 => true,
                1 => false,
                command => return Parsed::Invalid(format!("v2: unknown command {command:#x}")),
            }
        }
        None => return Parsed::Incomplete,
    };
    let Some(&family_protocol) = bytes.get(13) else {
        return Parsed::Incomplete;
    };
    let (family, protocol) = (family_protocol >> 4, family_protocol & 0x0f);
    if family > 3 || protocol > 2 {
        return Parsed::Invalid(format!("v2: unknown family/protocol byte {family_protocol:#04x}"));
    }
    if !local && protocol == 2 {
        let what = match family {
            1 | 2 => "a UDP client",
            3 => "a UNIX datagram client",
            _ => "a datagram client",
        };
        return Parsed::Invalid(format!(
            "v2: {what} (family/protocol byte {family_protocol:#04x}), not TCP"
        ));
    }
    let Some(&[high, low]) = bytes.get(14..16) else {
        return Parsed::Incomplete;
    };
    let block_len = usize::from(u16::from_be_bytes([high, low]));
    let len = V2_FIXED + block_len;
    if len > MAX_HEADER {
        return Parsed::Invalid(format!(
            "v2: a header of {len} bytes announced, more than the {MAX_HEADER} accepted"
        ));
    }
    // The addresses a PROXY header must carry (LOCAL's block is ignored, as
    // is the address information of an unspecified family or transport).
    let addresses = match (local, family_protocol) {
        (false, 0x11) => Some((12, "TCP over IPv4")),
        (false, 0x21) => Some((36, "TCP over IPv6")),
        (false, 0x31) => Some((216, "a UNIX stream")),
        _ => None,
    };
    if let Some((need, what)) = addresses
        && block_len < need
    {
        return Parsed::Invalid(format!(
            "v2: an address block of {block_len} bytes, too short for {what} ({need} bytes)"
        ));
    }
    let Some(block) = bytes.get(V2_FIXED..len) else {
        return Parsed::Incomplete;
    };
    let Some((need, _)) = addresses else {
        return Parsed::Local { len };
    };
    if let Err(why) = tlvs(&block[need..]) {
        return Parsed::Invalid(format!("v2: {why}"));
    }
    let ports = |at: usize| {
        (
            u16::from_be_bytes([block[at], block[at + 1]]),
            u16::from_be_bytes([block[at + 2], block[at + 3]]),
        )
    };
    let (client, server) = match family_protocol {
        0x11 => {
            let (sport, dport) = ports(8);
            let src: [u8; 4] = [block[0], block[1], block[2], block[3]];
            let dst: [u8; 4] = [block[4], block[5], block[6], block[7]];
            (
                SocketAddr::from((Ipv4Addr::from(src), sport)),
                SocketAddr::from((Ipv4Addr::from(dst), dport)),
            )
        }
        0x21 => {
            let (sport, dport) = ports(32);
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src.copy_from_slice(&block[..16]);
            dst.copy_from_slice(&block[16..32]);
            (
                SocketAddr::from((Ipv6Addr::from(src), sport)),
                SocketAddr::from((Ipv6Addr::from(dst), dport)),
            )
        }
        // A UNIX stream: the connection's own addresses.
        _ => return Parsed::Local { len },
    };
    Parsed::Proxy { client, server, len }
}

/// The v2 TLV that holds TLVs of its own (`PP2_TYPE_SSL`: a client byte and
/// a 4-byte verify result, then sub-TLVs).
const PP2_TYPE_SSL: u8 = 0x20;

/// Checks that `rest` (what follows the addresses of a v2 header) is a run
/// of TLVs, each a type byte, a 16-bit big-endian length and that many
/// bytes, filling it exactly.
fn tlvs(mut rest: &[u8]) -> Result<(), String> {
    while !rest.is_empty() {
        let [kind, high, low, tail @ ..] = rest else {
            return Err(format!("{} bytes after the last TLV, too few for another", rest.len()));
        };
        let n = usize::from(u16::from_be_bytes([*high, *low]));
        let Some(value) = tail.get(..n) else {
            return Err(format!(
                "TLV of type {kind:#04x} and {n} bytes runs past the end of the header ({} bytes left)",
                tail.len()
            ));
        };
        if *kind == PP2_TYPE_SSL {
            match value.get(5..) {
                Some(sub) => tlvs(sub).map_err(|why| format!("in the SSL TLV: {why}"))?,
                None => return Err(format!("an SSL TLV of {n} bytes, fewer than its 5 fixed ones")),
            }
        }
        rest = &tail[n..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use ppp::v2::{Builder, Command, Protocol, Type, Version};
    use proptest::prelude::*;

    /// An address, in a test.
    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("addr")
    }

    /// A v2 header built by `ppp` (an independent writer of the spec).
    fn v2(command: Command, client: &str, server: &str) -> Vec<u8> {
        Builder::with_addresses(Version::Two | command, Protocol::Stream, (addr(client), addr(server)))
            .build()
            .expect("a v2 header")
    }

    /// A v2 header by hand: version/command byte, family/protocol byte and
    /// block.
    fn v2_raw(version_command: u8, family_protocol: u8, block: &[u8]) -> Vec<u8> {
        let mut header = V2_SIGNATURE.to_vec();
        header.push(version_command);
        header.push(family_protocol);
        header.extend_from_slice(&u16::try_from(block.len()).expect("short block").to_be_bytes());
        header.extend_from_slice(block);
        header
    }

    /// An IPv4 address block: 192.0.2.1:1000 to 127.0.0.1:50000.
    const V4_BLOCK: [u8; 12] = [192, 0, 2, 1, 127, 0, 0, 1, 0x03, 0xe8, 0xc3, 0x50];

    /// What a TCP header naming 192.0.2.1:1000 (to 127.0.0.1:50000) of
    /// `len` bytes gives.
    fn v4_client(len: usize) -> Parsed {
        Parsed::Proxy {
            client: addr("192.0.2.1:1000"),
            server: addr("127.0.0.1:50000"),
            len,
        }
    }

    /// Whether `parsed` is `Invalid` with a message containing `needle`.
    fn invalid_with(parsed: &Parsed, needle: &str) -> bool {
        matches!(parsed, Parsed::Invalid(why) if why.contains(needle))
    }

    /// Valid headers of every kind, for the split and prefix properties.
    fn valid_headers() -> Vec<Vec<u8>> {
        let tlvs = Builder::with_addresses(
            Version::Two | Command::Proxy,
            Protocol::Stream,
            (addr("[2001:db8::7]:9"), addr("[::1]:50000")),
        )
        .write_tlv(Type::Authority, b"example.org")
        .expect("tlv")
        .write_tlv(Type::UniqueId, b"0123456789")
        .expect("tlv")
        .build()
        .expect("a v2 header");
        vec![
            b"PROXY TCP4 127.0.0.2 127.0.0.1 40000 50000\r\n".to_vec(),
            b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n".to_vec(),
            b"PROXY TCP4 0.0.0.0 10.0.0.1 0 1\r\n".to_vec(),
            b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
                .to_vec(),
            b"PROXY TCP6 ::ffff:127.0.0.2 ::ffff:127.0.0.1 39407 47100\r\n".to_vec(),
            b"PROXY TCP6 ::1 ::1 54804 47101\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
                .to_vec(),
            v2(Command::Proxy, "127.0.0.3:41000", "127.0.0.1:50000"),
            v2(Command::Proxy, "[2001:db8::7]:9", "[::1]:50000"),
            v2(Command::Local, "127.0.0.1:1", "127.0.0.1:2"),
            tlvs,
            // HAProxy 2.6's v2 health check, as captured.
            b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00".to_vec(),
            v2_raw(0x21, 0x31, &[b'x'; 216]),
            v2_raw(0x21, 0x11, &[&V4_BLOCK[..], &[0x04, 0, 0]].concat()),
        ]
    }

    /// The properties the reactor relies on, for any `input`: a whole
    /// header's verdict depends on its bytes alone, every shorter prefix of
    /// it is `Incomplete`, and a refused prefix stays refused.
    fn check_properties(input: &[u8]) {
        let whole = parse(input);
        if let Parsed::Proxy { len, .. } | Parsed::Local { len } = whole {
            assert!(len <= input.len(), "{input:?}");
            assert_eq!(parse(&input[..len]), whole, "{input:?}");
        }
        for cut in 0..input.len() {
            match parse(&input[..cut]) {
                Parsed::Incomplete => {}
                Parsed::Invalid(why) => {
                    assert!(
                        matches!(whole, Parsed::Invalid(_)),
                        "{input:?}: refused at {cut} ({why}), then {whole:?}"
                    );
                }
                header => assert_eq!(header, whole, "{input:?}: at {cut}"),
            }
        }
    }

    #[test]
    fn v1_headers_whole_and_split() {
        let header = b"PROXY TCP4 127.0.0.2 127.0.0.1 40000 50000\r\n";
        let mut stream = header.to_vec();
        stream.extend_from_slice(b"hello");
        let whole = Parsed::Proxy {
            client: addr("127.0.0.2:40000"),
            server: addr("127.0.0.1:50000"),
            len: header.len(),
        };
        assert_eq!(parse(&stream), whole);
        for cut in 1..header.len() {
            assert_eq!(parse(&header[..cut]), Parsed::Incomplete, "cut at {cut}");
        }
        assert_eq!(
            parse(b"PROXY TCP6 ::2 ::1 1 2\r\n"),
            Parsed::Proxy {
                client: addr("[::2]:1"),
                server: addr("[::1]:2"),
                len: 24
            }
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Parsed::Local { len: 15 });
    }

    #[test]
    fn v2_headers_whole_split_and_local() {
        let header = v2(Command::Proxy, "127.0.0.3:41000", "127.0.0.1:50000");
        let mut stream = header.clone();
        stream.extend_from_slice(b"data after");
        assert_eq!(
            parse(&stream),
            Parsed::Proxy {
                client: addr("127.0.0.3:41000"),
                server: addr("127.0.0.1:50000"),
                len: header.len()
            }
        );
        for cut in 1..header.len() {
            assert_eq!(parse(&header[..cut]), Parsed::Incomplete, "cut at {cut}");
        }
        let v6 = v2(Command::Proxy, "[2001:db8::7]:9", "[::1]:50000");
        assert_eq!(
            parse(&v6),
            Parsed::Proxy {
                client: addr("[2001:db8::7]:9"),
                server: addr("[::1]:50000"),
                len: v6.len()
            }
        );
        let local = v2(Command::Local, "127.0.0.1:1", "127.0.0.1:2");
        assert_eq!(parse(&local), Parsed::Local { len: local.len() });
        // HAProxy 2.6's health check with send-proxy-v2: LOCAL, AF_UNSPEC,
        // no block.
        assert_eq!(
            parse(b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00after"),
            Parsed::Local { len: 16 }
        );
    }

    #[test]
    fn anything_else_is_refused() {
        for junk in [&b"GET / HTTP/1.1\r\n"[..], b"hello\r\n", b"PROXY TCP4 1.2.3.4\r\n"] {
            assert!(matches!(parse(junk), Parsed::Invalid(_)), "{junk:?}");
        }
        // A line that never ends is refused once it is too long to be one.
        let endless = vec![b'P'; MAX_HEADER];
        assert!(matches!(parse(&endless), Parsed::Invalid(_)));
    }

    #[test]
    fn v1_ports_are_decimal_without_a_sign_or_leading_zeros() {
        for (port, ok) in [
            ("0", true),
            ("1", true),
            ("65535", true),
            ("+1", false),
            ("-1", false),
            ("01", false),
            ("00", false),
            ("65536", false),
            ("99999999999999999999", false),
            ("1a", false),
            ("0x10", false),
        ] {
            for header in [
                format!("PROXY TCP4 10.0.0.1 10.0.0.2 {port} 80\r\n"),
                format!("PROXY TCP4 10.0.0.1 10.0.0.2 80 {port}\r\n"),
            ] {
                let parsed = parse(header.as_bytes());
                if ok {
                    assert!(matches!(parsed, Parsed::Proxy { .. }), "{header:?}: {parsed:?}");
                } else {
                    assert!(
                        invalid_with(&parsed, &format!("port \"{port}\"")),
                        "{header:?}: {parsed:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn v1_unknown_ignores_everything_up_to_the_crlf() {
        for header in [
            &b"PROXY UNKNOWN\r\n"[..],
            b"PROXY UNKNOWN 10.0.0.1 10.0.0.2 1 2\r\n",
            b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
            b"PROXY UNKNOWN whatever \x00\xff it says\r\n",
        ] {
            let mut stream = header.to_vec();
            stream.extend_from_slice(b"data\r\n");
            assert_eq!(parse(&stream), Parsed::Local { len: header.len() }, "{header:?}");
        }
        assert!(invalid_with(&parse(b"PROXY UNKNOWNX\r\n"), "unknown protocol"));
        // The 107-byte limit holds for it too.
        let long = format!("PROXY UNKNOWN {}\r\n", "x".repeat(92));
        assert!(invalid_with(&parse(long.as_bytes()), "no CRLF in the first 107 bytes"));
    }

    #[test]
    fn v1_line_ends_other_than_crlf_are_refused_at_once() {
        let lone_cr = parse(b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\rX");
        assert!(invalid_with(&lone_cr, "CR followed by \"X\", not LF"), "{lone_cr:?}");
        let cr_cr = parse(b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\r\n");
        assert!(invalid_with(&cr_cr, "CR followed by \"\\r\""), "{cr_cr:?}");
        let lf = parse(b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\n");
        assert!(invalid_with(&lf, "LF without CR"), "{lf:?}");
        assert!(invalid_with(&parse(b"PROXY UNKNOWN\n"), "LF without CR"));
        assert!(invalid_with(&parse(b"PROXY\n"), "LF without CR"));
        // A CR ends the line: what is before it is judged at once, before
        // its LF comes.
        assert!(invalid_with(
            &parse(b"PROXY TCP4 10.0.0.1\r"),
            "without its destination address"
        ));
        assert_eq!(parse(b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r"), Parsed::Incomplete);
        assert_eq!(parse(b"PROXY UNKNOWN\r"), Parsed::Incomplete);
    }

    #[test]
    fn v1_fields_are_as_the_spec_writes_them() {
        for (header, needle) in [
            (&b"PROXY  TCP4 10.0.0.1 10.0.0.2 1 2\r\n"[..], "unknown protocol \"\""),
            (b"PROXY TCP4  10.0.0.1 10.0.0.2 1 2\r\n", "empty source address"),
            (b"PROXY TCP4 10.0.0.1  10.0.0.2 1 2\r\n", "empty destination address"),
            (b"PROXY TCP4 10.0.0.1 10.0.0.2 1  2\r\n", "empty destination port"),
            (
                b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2 \r\n",
                "text after the destination port",
            ),
            (
                b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2 3\r\n",
                "text after the destination port",
            ),
            (b"PROXY TCP4 10.0.0.1 10.0.0.2 1\r\n", "without its destination port"),
            (b"PROXY TCP4\r\n", "TCP4 without addresses"),
            (b"PROXY tcp4 10.0.0.1 10.0.0.2 1 2\r\n", "unknown protocol \"tcp4\""),
            (
                b"PROXY TCP4\t10.0.0.1 10.0.0.2 1 2\r\n",
                "unknown protocol \"TCP4\\t10.0.0.1\"",
            ),
            (
                b"PROXY TCP4 010.0.0.1 10.0.0.2 1 2\r\n",
                "bad source address \"010.0.0.1\"",
            ),
            (b"PROXY TCP4 10.0.0.256 10.0.0.2 1 2\r\n", "bad source address"),
            (b"PROXY TCP4 10.0.0 10.0.0.2 1 2\r\n", "bad source address \"10.0.0\""),
            (b"PROXY TCP4 10.0.0.1.5 10.0.0.2 1 2\r\n", "bad source address"),
            (
                b"PROXY TCP4 10.0.0.1 ::1 1 2\r\n",
                "bad destination address \"::1\" for TCP4",
            ),
            (
                b"PROXY TCP6 10.0.0.1 ::1 1 2\r\n",
                "bad source address \"10.0.0.1\" for TCP6",
            ),
            (b"PROXY TCP6 ::1%lo ::1 1 2\r\n", "bad source address"),
            (b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n", "bad source address"),
            (b"PROXY TCP6 ::00001 ::1 1 2\r\n", "bad source address"),
            (
                b"PROXY TCP4 10.0.0.\xc3\xa9 10.0.0.2 1 2\r\n",
                "bad source address \"10.0.0.\\xc3\\xa9\"",
            ),
        ] {
            let parsed = parse(header);
            assert!(
                invalid_with(&parsed, needle),
                "{:?}: {parsed:?}",
                header.escape_ascii().to_string()
            );
        }
        // IPv6 in RFC 4291 text form: upper case, compressed, with an IPv4
        // tail (HAProxy writes an IPv4 client of a dual-stack frontend so).
        assert_eq!(
            parse(b"PROXY TCP6 2001:DB8::A ::ffff:127.0.0.2 1 2\r\n"),
            Parsed::Proxy {
                client: addr("[2001:db8::a]:1"),
                server: addr("[::ffff:127.0.0.2]:2"),
                len: 45
            }
        );
        // The longest lines the spec lists are accepted; one more byte is not.
        let longest = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(longest.len(), 104);
        assert!(matches!(parse(longest), Parsed::Proxy { len: 104, .. }));
    }

    #[test]
    fn v1_junk_is_refused_without_waiting_for_the_line_end() {
        for start in [
            &b"PROXY TCP4 10.0.0.1 10.0.0.2 +"[..],
            b"PROXY TCP4 10.0.0.1 10.0.0.2 01",
            b"PROXY TCP4 10.0.0.1 10.0.0.2 65536",
            b"PROXY TCP5",
            b"PROXY  ",
            b"PROXY TCP4 1.2.3.4  ",
            b"PROXY TCP4 256",
            b"PROXY TCP4 1.2.3.4.",
            b"PROXY TCP4 1..",
            b"PROXY TCP4 ::1",
            b"PROXY TCP6 ::g",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 ",
            b"PROXY\t",
            b"PROXI",
            b"PROXY TCP4 1.2.3.4\x00",
        ] {
            // (Some of these would also be refused at the CRLF; none waits
            // for it, nor for --proxy-timeout.)
            let parsed = parse(start);
            assert!(
                matches!(parsed, Parsed::Invalid(_)),
                "{}: {parsed:?}",
                start.escape_ascii()
            );
        }
    }

    #[test]
    fn v2_family_and_protocol_bytes_decide_who_the_client_is() {
        let v6_block: Vec<u8> = [
            &[0x20, 0x01, 0x0d, 0xb8][..],
            &[0; 12],
            &[0; 15],
            &[1],
            &[0, 9, 0xc3, 0x50],
        ]
        .concat();
        // Only PROXY over TCP names a client.
        assert_eq!(parse(&v2_raw(0x21, 0x11, &V4_BLOCK)), v4_client(28));
        assert_eq!(
            parse(&v2_raw(0x21, 0x21, &v6_block)),
            Parsed::Proxy {
                client: addr("[2001:db8::]:9"),
                server: addr("[::1]:50000"),
                len: 52
            }
        );
        // An unspecified family or transport, or a UNIX socket: the
        // connection's own addresses.
        for (family_protocol, block) in [
            (0x00, &[][..]),
            (0x01, &[][..]),
            (0x10, &V4_BLOCK[..]),
            (0x20, &v6_block[..]),
            (0x30, &[0; 216][..]),
            (0x31, &[0; 216][..]),
        ] {
            let header = v2_raw(0x21, family_protocol, block);
            assert_eq!(
                parse(&header),
                Parsed::Local { len: header.len() },
                "{family_protocol:#04x}"
            );
        }
        // Datagrams are refused: this server serves TCP.
        for (family_protocol, block, what) in [
            (0x12, &V4_BLOCK[..], "a UDP client"),
            (0x22, &v6_block[..], "a UDP client"),
            (0x32, &[0; 216][..], "a UNIX datagram client"),
            (0x02, &[][..], "a datagram client"),
        ] {
            let parsed = parse(&v2_raw(0x21, family_protocol, block));
            assert!(invalid_with(&parsed, what), "{family_protocol:#04x}: {parsed:?}");
            // As soon as the byte has come.
            assert!(matches!(
                parse(&v2_raw(0x21, family_protocol, block)[..14]),
                Parsed::Invalid(_)
            ));
        }
        // Values the spec leaves unassigned are refused.
        for family_protocol in [0x41, 0x13, 0xf1, 0x1f] {
            let parsed = parse(&v2_raw(0x21, family_protocol, &V4_BLOCK)[..14]);
            assert!(
                invalid_with(&parsed, &format!("unknown family/protocol byte {family_protocol:#04x}")),
                "{parsed:?}"
            );
        }
        // LOCAL ignores the block, datagram or not.
        let local_udp = v2_raw(0x20, 0x12, &V4_BLOCK);
        assert_eq!(parse(&local_udp), Parsed::Local { len: 28 });
    }

    #[test]
    fn v2_tlvs_must_fit_the_header_exactly() {
        let with = |tlvs: &[u8]| v2_raw(0x21, 0x11, &[&V4_BLOCK[..], tlvs].concat());
        // Fitting TLVs: a NOOP of 2 bytes, an empty one, an SSL TLV with a
        // sub-TLV.
        let good = with(&[
            0x04, 0, 2, 0xaa, 0xbb, 0x04, 0, 0, 0x20, 0, 9, 1, 0, 0, 0, 0, 0x21, 0, 1, b'3',
        ]);
        assert_eq!(parse(&good), v4_client(good.len()));
        // A TLV whose length runs past the header.
        let parsed = parse(&with(&[0x04, 0, 5, 0xaa]));
        assert!(
            invalid_with(&parsed, "TLV of type 0x04 and 5 bytes runs past the end"),
            "{parsed:?}"
        );
        let parsed = parse(&with(&[0x04, 0xff, 0xff]));
        assert!(invalid_with(&parsed, "runs past the end"), "{parsed:?}");
        // Bytes left over, too few for a TLV.
        let parsed = parse(&with(&[0x04, 0, 0, 0x01, 0x00]));
        assert!(invalid_with(&parsed, "2 bytes after the last TLV"), "{parsed:?}");
        // An SSL TLV whose sub-TLV runs past it.
        let parsed = parse(&with(&[0x20, 0, 8, 1, 0, 0, 0, 0, 0x21, 0, 9]));
        assert!(invalid_with(&parsed, "in the SSL TLV"), "{parsed:?}");
        let parsed = parse(&with(&[0x20, 0, 2, 1, 0]));
        assert!(invalid_with(&parsed, "SSL TLV of 2 bytes"), "{parsed:?}");
        // ppp's builder writes TLVs that fit.
        let built = &valid_headers()[11];
        assert!(matches!(parse(built), Parsed::Proxy { .. }));
    }

    #[test]
    fn v2_lengths_are_judged_as_soon_as_they_come() {
        // Too short for the family's addresses: refused from the 16 fixed
        // bytes.
        let short = v2_raw(0x21, 0x11, &V4_BLOCK[..8]);
        let parsed = parse(&short[..16]);
        assert!(
            invalid_with(
                &parsed,
                "an address block of 8 bytes, too short for TCP over IPv4 (12 bytes)"
            ),
            "{parsed:?}"
        );
        let parsed = parse(&v2_raw(0x21, 0x21, &[0; 20]));
        assert!(
            invalid_with(&parsed, "too short for TCP over IPv6 (36 bytes)"),
            "{parsed:?}"
        );
        // More than is accepted: refused at once, not after 4 KiB.
        let mut huge = v2_raw(0x21, 0x11, &V4_BLOCK);
        huge[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
        let parsed = parse(&huge[..16]);
        assert!(invalid_with(&parsed, "a header of 65551 bytes announced"), "{parsed:?}");
        // The largest accepted.
        let largest = v2_raw(
            0x21,
            0x11,
            &[&V4_BLOCK[..], &[0x04], &(4096u16 - 31).to_be_bytes(), &[0; 4096 - 31]].concat(),
        );
        assert_eq!(largest.len(), MAX_HEADER);
        assert_eq!(parse(&largest), v4_client(MAX_HEADER));
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let mut v3 = v2(Command::Proxy, "127.0.0.3:41000", "127.0.0.1:50000");
        v3[12] = 0x31;
        for (bytes, message) in [
            (v3, "v2: unsupported version 3"),
            (v2_raw(0x22, 0x11, &V4_BLOCK), "v2: unknown command 0x2"),
            (
                b"\r\n\r\n\0\r\nQUIT\r".to_vec(),
                "bad v2 signature \"\\r\\n\\r\\n\\x00\\r\\nQUIT\\r\"",
            ),
            (
                b"GET / HTTP/1.1\r\n".to_vec(),
                "not a PROXY header: starts \"GET / HTTP/1.1\\r\\n\"",
            ),
            (
                b"PROXY TCP4 10.0.0.1 10.0.0.2 +1 2\r\n".to_vec(),
                "v1: bad source port \"+1\" for TCP4",
            ),
            (
                b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\n".to_vec(),
                "v1: the line ends with LF without CR",
            ),
            (
                b"POST / HTTP/1.1\r\n".to_vec(),
                "v1: not a PROXY header: starts \"POST / HTTP/1.1\"",
            ),
        ] {
            let parsed = parse(&bytes);
            assert!(invalid_with(&parsed, message), "{message}: {parsed:?}");
        }
    }

    #[test]
    fn every_cut_of_a_valid_header_is_incomplete() {
        for header in valid_headers() {
            let whole = parse(&header);
            assert!(
                matches!(whole, Parsed::Proxy { len, .. } | Parsed::Local { len } if len == header.len()),
                "{}: {whole:?}",
                header.escape_ascii()
            );
            for cut in 0..header.len() {
                assert_eq!(
                    parse(&header[..cut]),
                    Parsed::Incomplete,
                    "{} cut at {cut}",
                    header.escape_ascii()
                );
            }
            // What follows the header changes nothing.
            for after in [&b"x"[..], b"\r\n", b"PROXY UNKNOWN\r\n", &[0; 64]] {
                let mut stream = header.clone();
                stream.extend_from_slice(after);
                assert_eq!(parse(&stream), whole);
            }
            check_properties(&header);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Valid headers with a few bytes changed, cut short or followed by
        /// anything keep the properties the reactor relies on.
        #[test]
        fn verdicts_do_not_change_as_bytes_come(
            which in 0..15usize,
            changes in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            keep in any::<usize>(),
            after in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let headers = valid_headers();
            let mut input = headers[which % headers.len()].clone();
            for (at, byte) in changes {
                let at = at % input.len();
                input[at] = byte;
            }
            input.truncate(keep % (input.len() + 1));
            input.extend_from_slice(&after);
            check_properties(&input);
        }
    }
}
