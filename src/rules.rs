//! `--access-file PATH`: who may connect, in a file the operator edits and
//! the server reads again on SIGHUP (as nginx and HAProxy reload), so that
//! the rules change without dropping anyone: established clients stay, new
//! ones meet the new rules.
//!
//! The format: one rule a line, `allow CIDR` or `deny CIDR` (a bare address
//! is a network of one), `#` to the end of a line is a comment, blank lines
//! are skipped. Deny wins over allow; with no allow rule (here or on the
//! command line), everyone not denied may connect:
//!
//! ```text
//! # the office and the VPN
//! allow 10.0.0.0/8
//! allow 2001:db8::/32
//! deny  10.66.0.0/16   # the lab
//! ```

use std::path::Path;

use ipnet::IpNet;

/// The rules of an access file: the networks allowed, the networks denied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// `allow` lines.
    pub allow: Vec<IpNet>,
    /// `deny` lines.
    pub deny: Vec<IpNet>,
}

impl Rules {
    /// These rules and `other`'s together.
    pub fn with(mut self, other: &Rules) -> Rules {
        self.allow.extend_from_slice(&other.allow);
        self.deny.extend_from_slice(&other.deny);
        self
    }
}

/// Parses a network in CIDR notation; a bare address is a network of one.
pub fn parse_net(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<std::net::IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("`{text}` is not a network like 10.0.0.0/8, 2001:db8::/32 or 127.0.0.1"))
}

/// Parses the text of an access file; the error names the line.
pub fn parse(text: &str) -> Result<Rules, String> {
    let mut rules = Rules::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let expected = || format!("line {}: expected `allow CIDR` or `deny CIDR`, found `{line}`", n + 1);
        let words: Vec<&str> = line.split_whitespace().collect();
        let [verb, net] = words[..] else {
            return Err(expected());
        };
        let list = match verb {
            "allow" => &mut rules.allow,
            "deny" => &mut rules.deny,
            _ => return Err(expected()),
        };
        list.push(parse_net(net).map_err(|e| format!("line {}: {e}", n + 1))?);
    }
    Ok(rules)
}

/// Reads and parses the access file at `path`.
pub fn load(path: &Path) -> Result<Rules, String> {
    let text = read_good(path)?;
    parse_bytes(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads the access file at `path` and checks that it parses; returns its
/// text. A file that does not end with a newline is refused: it may be
/// half written (to change the rules, write a new file and rename it into
/// place, which is atomic).
pub fn read_good(path: &Path) -> Result<Vec<u8>, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !text.is_empty() && !text.ends_with(b"\n") {
        return Err(format!(
            "{}: the last line has no newline: is the file still being written? (write a new file, then \
             rename it into place)",
            path.display()
        ));
    }
    parse_bytes(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text)
}

/// Parses the bytes of an access file (UTF-8).
pub fn parse_bytes(text: &[u8]) -> Result<Rules, String> {
    let text = std::str::from_utf8(text).map_err(|_| "not UTF-8 text".to_string())?;
    parse(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_comments_and_blank_lines() {
        let rules = parse("# header\n\nallow 10.0.0.0/8\n  deny 10.66.1.2/16 # the lab\nallow ::1\n").expect("rules");
        assert_eq!(
            rules,
            Rules {
                allow: vec!["10.0.0.0/8".parse().expect("net"), "::1/128".parse().expect("net")],
                deny: vec!["10.66.0.0/16".parse().expect("net")],
            }
        );
        assert_eq!(parse("").expect("empty"), Rules::default());
    }

    #[test]
    fn a_bad_line_is_named() {
        assert_eq!(
            parse("allow 10.0.0.0/8\npermit 1.2.3.4\n"),
            Err("line 2: expected `allow CIDR` or `deny CIDR`, found `permit 1.2.3.4`".into())
        );
        let e = parse("deny 300.1.1.1").expect_err("a bad address");
        assert!(e.starts_with("line 1: `300.1.1.1` is not a network"), "{e}");
        assert!(parse("allow 10.0.0.0/8 10.1.0.0/16").is_err(), "one network a line");
        assert!(parse("allow").is_err());
    }
}
