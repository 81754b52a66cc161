//! Fuzzes the PROXY protocol header parser (`proxy_header::parse`), which
//! the server runs on every peek at a connection until it gives a verdict.
//! For any bytes: no panic; a whole header's length is within the input
//! and its verdict depends on its bytes alone; every shorter prefix of it
//! is `Incomplete`; a prefix that is refused stays refused whatever follows
//! it. A header naming a client must also be one that `ppp` (a lenient
//! parser of the same spec) reads the same addresses from, and a TCP4 one
//! must be exactly how the spec writes those addresses (no other spelling
//! is accepted).
//!
//! cargo fuzz run proxy_header     (needs cargo-fuzz; see README)

#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use simple_tcp_server::proxy_header::{MAX_HEADER, Parsed, parse};

/// The prefixes of `input` to check: all of them for short inputs, a
/// sample of longer ones (the parser is linear, checking every prefix of a
/// 4 KiB input would be quadratic).
fn cuts(len: usize) -> impl Iterator<Item = usize> {
    let step = if len <= 512 { 1 } else { len / 256 };
    (0..len.min(512))
        .chain((512..len).step_by(step.max(1)))
        .chain(len.saturating_sub(4)..len)
}

/// The client and server `ppp` reads from `header`, if it reads a TCP
/// client from it.
fn ppp_endpoints(header: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    match ppp::HeaderResult::parse(header) {
        ppp::HeaderResult::V1(Ok(h)) => match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => Some((
                (a.source_address, a.source_port).into(),
                (a.destination_address, a.destination_port).into(),
            )),
            ppp::v1::Addresses::Tcp6(a) => Some((
                (a.source_address, a.source_port).into(),
                (a.destination_address, a.destination_port).into(),
            )),
            ppp::v1::Addresses::Unknown => None,
        },
        ppp::HeaderResult::V2(Ok(h)) => match h.addresses {
            ppp::v2::Addresses::IPv4(a) => Some((
                (a.source_address, a.source_port).into(),
                (a.destination_address, a.destination_port).into(),
            )),
            ppp::v2::Addresses::IPv6(a) => Some((
                (a.source_address, a.source_port).into(),
                (a.destination_address, a.destination_port).into(),
            )),
            _ => None,
        },
        _ => None,
    }
}

fuzz_target!(|input: &[u8]| {
    let whole = parse(input);
    let decided_at = match &whole {
        Parsed::Proxy { len, .. } | Parsed::Local { len } => {
            let len = *len;
            assert!(len > 0 && len <= input.len() && len <= MAX_HEADER, "len {len}");
            assert_eq!(parse(&input[..len]), whole, "the header alone");
            Some(len)
        }
        Parsed::Incomplete => {
            assert!(input.len() < MAX_HEADER, "still incomplete after {} bytes", input.len());
            None
        }
        Parsed::Invalid(why) => {
            assert!(!why.is_empty());
            assert!(why.bytes().all(|b| (0x20..0x7f).contains(&b)), "raw bytes in {why:?}");
            None
        }
    };
    for cut in cuts(input.len()) {
        match (parse(&input[..cut]), decided_at) {
            (Parsed::Incomplete, _) => {}
            // A prefix of a whole header is never judged.
            (early, Some(len)) if cut < len => panic!("{early:?} at {cut} of a header of {len} bytes"),
            // Refused stays refused.
            (Parsed::Invalid(why), _) => {
                assert!(
                    matches!(whole, Parsed::Invalid(_)),
                    "refused at {cut} ({why}), then {whole:?}"
                )
            }
            // A whole header is the same whatever follows it.
            (header, _) => assert_eq!(header, whole, "at {cut}"),
        }
    }
    if let Parsed::Proxy { client, server, len } = whole {
        let header = &input[..len];
        assert_eq!(ppp_endpoints(header), Some((client, server)), "ppp reads otherwise");
        if header.starts_with(b"PROXY TCP4 ") {
            let spelled = format!(
                "PROXY TCP4 {} {} {} {}\r\n",
                client.ip(),
                server.ip(),
                client.port(),
                server.port()
            );
            assert_eq!(header, spelled.as_bytes(), "another spelling accepted");
        }
    }
});
