//! Who may connect, and who may say who is connecting: `--allow` and
//! `--deny` (checked right after accept, or against the client's address
//! from the PROXY header when the server sits behind a proxy), and
//! `--proxy-from` (the peers trusted to send a PROXY header).

use std::net::IpAddr;

use ipnet::IpNet;

/// The `--allow` and `--deny` rules.
#[derive(Debug, Clone, Default)]
pub(super) struct Access {
    /// When not empty, only these may connect.
    allow: Vec<IpNet>,
    /// These may not, whatever `allow` says.
    deny: Vec<IpNet>,
}

impl Access {
    pub(super) fn new(allow: Vec<IpNet>, deny: Vec<IpNet>) -> Access {
        Access {
            allow: allow.into_iter().map(canonical).collect(),
            deny: deny.into_iter().map(canonical).collect(),
        }
    }

    /// Whether any rule is set (else every check is skipped).
    pub(super) fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Whether a client from `ip` may connect: not denied, and allowed when
    /// there is an allow list.
    pub(super) fn permits(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        !contains(&self.deny, ip) && (self.allow.is_empty() || contains(&self.allow, ip))
    }
}

/// Whether `ip` (an IPv4-mapped IPv6 address counts as its IPv4 address)
/// lies in one of `nets` (the same goes for them).
pub(super) fn contains(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    nets.iter().any(|net| canonical(*net).contains(&ip))
}

/// A network of IPv4-mapped IPv6 addresses (`::ffff:10.0.0.0/104`, as a
/// dual-stack listener reports IPv4 clients) as the IPv4 network it is;
/// any other network as it is.
pub(super) fn canonical(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().expect("CIDR")).collect()
    }

    #[test]
    fn deny_wins_and_allow_lists_are_closed() {
        let open = Access::default();
        assert!(open.is_open());
        assert!(open.permits("203.0.113.9".parse().expect("ip")));

        let access = Access::new(nets(&["10.0.0.0/8", "::1/128"]), nets(&["10.9.0.0/16"]));
        assert!(!access.is_open());
        assert!(access.permits("10.1.2.3".parse().expect("ip")));
        assert!(!access.permits("10.9.2.3".parse().expect("ip")), "deny wins");
        assert!(
            !access.permits("192.168.1.1".parse().expect("ip")),
            "not on the allow list"
        );
        assert!(access.permits("::1".parse().expect("ip")));
        // A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d.
        assert!(access.permits("::ffff:10.1.2.3".parse().expect("ip")));
        assert!(!access.permits("::ffff:10.9.2.3".parse().expect("ip")));

        // Rules written as IPv4-mapped addresses mean those IPv4 clients.
        let mapped = Access::new(Vec::new(), nets(&["::ffff:127.0.0.1/128", "::ffff:10.0.0.0/104"]));
        assert!(!mapped.permits("127.0.0.1".parse().expect("ip")));
        assert!(!mapped.permits("::ffff:127.0.0.1".parse().expect("ip")));
        assert!(!mapped.permits("10.200.0.1".parse().expect("ip")));
        assert!(mapped.permits("127.0.0.2".parse().expect("ip")));
        assert!(contains(
            &nets(&["::ffff:127.0.0.0/104"]),
            "127.0.0.9".parse().expect("ip")
        ));

        let deny_only = Access::new(Vec::new(), nets(&["127.0.0.2/32"]));
        assert!(deny_only.permits("127.0.0.1".parse().expect("ip")));
        assert!(!deny_only.permits("127.0.0.2".parse().expect("ip")));
    }
}
