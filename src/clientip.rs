//! Client IP resolution and trusted-proxy CIDRs. Called from `request_filter` (through
//! [`crate::gateway::admit`]) once per request; the result is used for routing keys, forwarded
//! headers and (later) IP policies, rate limits and audit.
//!
//! `X-Forwarded-For` is believed only when the TCP peer is a trusted proxy, and then only up to
//! the rightmost address that is *not* a trusted proxy: everything left of it was written by
//! the client and can be forged.

use std::net::IpAddr;

/// One CIDR block such as `10.0.0.0/8` or `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| format!("invalid CIDR {s:?}: {ip:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("invalid CIDR {s:?}: prefix must be 0..={max}"))?,
        };
        let cidr = Cidr { addr, prefix };
        if cidr.network() != addr {
            return Err(format!(
                "invalid CIDR {s:?}: host bits set (did you mean {}/{prefix}?)",
                cidr.network()
            ));
        }
        Ok(cidr)
    }

    fn mask_bits(&self) -> u128 {
        let width = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.prefix == 0 {
            0
        } else {
            (u128::MAX << (width - self.prefix as u32)) & (u128::MAX >> (128 - width))
        }
    }

    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) & self.mask_bits() as u32).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) & self.mask_bits()).into()),
        }
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                (u32::from(a) & self.mask_bits() as u32) == u32::from(n)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => (u128::from(a) & self.mask_bits()) == u128::from(n),
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) are treated as the IPv4 address, so a dual
/// stack listener cannot be used to slip past an IPv4 CIDR.
pub fn canonical(ip: &IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(*v6)),
        v4 => *v4,
    }
}

#[derive(Debug, Clone, Default)]
pub struct CidrSet(Vec<Cidr>);

impl CidrSet {
    pub fn new(cidrs: Vec<Cidr>) -> Self {
        CidrSet(cidrs)
    }
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Resolve the client IP from the TCP peer and the `X-Forwarded-For` values (all header
/// instances, in order). Returns the client IP and whether the peer is a trusted proxy.
pub fn resolve<'a>(
    peer: IpAddr,
    trusted: &CidrSet,
    xff: impl Iterator<Item = &'a [u8]>,
) -> (IpAddr, bool) {
    let peer = canonical(&peer);
    if !trusted.contains(&peer) {
        return (peer, false);
    }
    let mut hops: Vec<&[u8]> = Vec::new();
    for v in xff {
        hops.extend(v.split(|&c| c == b','));
    }
    (walk(peer, trusted, &hops), true)
}

/// Like [`resolve`], for RFC 7239 `Forwarded` values: the `for=` parameter of each element is
/// a hop. Elements without `for=`, or with an obfuscated identifier (`for=unknown`,
/// `for=_hidden`), end the walk like garbage in `X-Forwarded-For` does.
pub fn resolve_forwarded<'a>(
    peer: IpAddr,
    trusted: &CidrSet,
    values: impl Iterator<Item = &'a [u8]>,
) -> (IpAddr, bool) {
    let peer = canonical(&peer);
    if !trusted.contains(&peer) {
        return (peer, false);
    }
    let mut hops: Vec<&[u8]> = Vec::new();
    for v in values {
        for element in v.split(|&c| c == b',') {
            hops.push(forwarded_for(element).unwrap_or(b"-"));
        }
    }
    (walk(peer, trusted, &hops), true)
}

/// The node of an element's `for=` parameter, unquoted, with IPv6 brackets removed when there
/// is no port (`"[2001:db8::1]"` → `2001:db8::1`; `"[::1]:80"` stays a socket address).
fn forwarded_for(element: &[u8]) -> Option<&[u8]> {
    for pair in element.split(|&c| c == b';') {
        let pair = pair.trim_ascii();
        if pair.len() > 4 && pair[..4].eq_ignore_ascii_case(b"for=") {
            let mut v = &pair[4..];
            if v.len() >= 2 && v[0] == b'"' && v[v.len() - 1] == b'"' {
                v = &v[1..v.len() - 1];
            }
            if v.len() >= 2 && v[0] == b'[' && v[v.len() - 1] == b']' {
                v = &v[1..v.len() - 1];
            }
            return Some(v);
        }
    }
    None
}

/// Walk hops right to left while they are trusted proxies; the first untrusted one is the
/// client.
fn walk(peer: IpAddr, trusted: &CidrSet, hops: &[&[u8]]) -> IpAddr {
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            // Garbage in the chain: stop believing it; the last trusted hop is the client.
            break;
        };
        client = ip;
        if !trusted.contains(&ip) {
            break;
        }
    }
    client
}

fn parse_hop(hop: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(hop).ok()?.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(&ip));
    }
    // Some proxies append a port: "1.2.3.4:5678" or "[::1]:5678".
    s.parse::<std::net::SocketAddr>()
        .ok()
        .map(|sa| canonical(&sa.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> CidrSet {
        CidrSet::new(v.iter().map(|s| Cidr::parse(s).unwrap()).collect())
    }

    #[test]
    fn cidr_parse_and_contains() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains(&"10.1.2.3".parse().unwrap()));
        assert!(!c.contains(&"11.0.0.1".parse().unwrap()));
        assert!(c.contains(&"::ffff:10.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains(&"1.2.3.4".parse().unwrap()));
        assert!(Cidr::parse("::1/128")
            .unwrap()
            .contains(&"::1".parse().unwrap()));
        assert!(Cidr::parse("127.0.0.1")
            .unwrap()
            .contains(&"127.0.0.1".parse().unwrap()));
        for bad in [
            "10.0.0.0/33",
            "10.0.0.1/8",
            "foo/8",
            "10.0.0.0/x",
            "::1/129",
            "",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn xff_from_untrusted_peer_is_ignored() {
        let t = set(&["10.0.0.0/8"]);
        let (ip, trusted) = resolve(
            "1.2.3.4".parse().unwrap(),
            &t,
            [&b"9.9.9.9"[..]].into_iter(),
        );
        assert_eq!(ip.to_string(), "1.2.3.4");
        assert!(!trusted);
    }

    #[test]
    fn forwarded_header() {
        let t = set(&["10.0.0.0/8"]);
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let one = |v: &'static [u8]| resolve_forwarded(peer, &t, [v].into_iter()).0.to_string();
        assert_eq!(
            one(b"for=192.0.2.60;proto=http;by=203.0.113.43"),
            "192.0.2.60"
        );
        assert_eq!(
            one(b"for=6.6.6.6, For=\"[2001:db8:cafe::17]:4711\", for=10.0.0.3"),
            "2001:db8:cafe::17"
        );
        assert_eq!(one(b"for=\"[2001:db8::1]\""), "2001:db8::1");
        assert_eq!(one(b"for=1.2.3.4:80"), "1.2.3.4");
        // obfuscated or missing node: stop at the last trusted hop
        assert_eq!(one(b"for=7.7.7.7, for=unknown, for=10.0.0.9"), "10.0.0.9");
        assert_eq!(one(b"for=7.7.7.7, proto=https"), "10.0.0.1");
        // untrusted peer: header ignored
        let (ip, trusted) = resolve_forwarded(
            "1.2.3.4".parse().unwrap(),
            &t,
            [&b"for=9.9.9.9"[..]].into_iter(),
        );
        assert_eq!((ip.to_string(), trusted), ("1.2.3.4".to_string(), false));
    }

    #[test]
    fn rightmost_untrusted_hop_wins() {
        let t = set(&["10.0.0.0/8"]);
        let xff = [&b"6.6.6.6, 5.5.5.5"[..], &b"10.0.0.2"[..]];
        let (ip, trusted) = resolve("10.0.0.1".parse().unwrap(), &t, xff.into_iter());
        assert_eq!(ip.to_string(), "5.5.5.5");
        assert!(trusted);
        // all trusted → leftmost
        let (ip, _) = resolve(
            "10.0.0.1".parse().unwrap(),
            &t,
            [&b"10.0.0.5, 10.0.0.4"[..]].into_iter(),
        );
        assert_eq!(ip.to_string(), "10.0.0.5");
        // garbage stops the walk at the last trusted hop
        let (ip, _) = resolve(
            "10.0.0.1".parse().unwrap(),
            &t,
            [&b"7.7.7.7, junk, 10.0.0.9"[..]].into_iter(),
        );
        assert_eq!(ip.to_string(), "10.0.0.9");
        // no header → the peer
        let (ip, _) = resolve("10.0.0.1".parse().unwrap(), &t, std::iter::empty());
        assert_eq!(ip.to_string(), "10.0.0.1");
    }
}
