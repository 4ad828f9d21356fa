//! Client addresses: which address a request comes from (`REMOTE_ADDR`, or
//! `X-Forwarded-For` only behind a trusted proxy) and the hashed client key that stands for
//! it everywhere else. The raw address lives only in memory inside this module's callers and
//! is never written to disk or to the log; only `sha256(ip_salt, address)` leaves here.

use sha2::{Digest, Sha256};
use std::net::IpAddr;

/// One trusted proxy entry: an address or a CIDR range.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let full = usize::from(bits / 8);
    if a[..full] != b[..full] {
        return false;
    }
    let rest = bits % 8;
    rest == 0 || (a[full] ^ b[full]) >> (8 - rest) == 0
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) are the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The configured trusted proxies.
#[derive(Debug, Clone, Default)]
pub struct ProxyList(Vec<Cidr>);

impl ProxyList {
    /// Parses entries such as `127.0.0.1`, `10.0.0.0/8` or `::1`.
    pub fn parse(entries: &[String]) -> Result<ProxyList, String> {
        let mut out = Vec::new();
        for e in entries {
            let (addr, bits) = match e.split_once('/') {
                Some((a, b)) => (a, Some(b)),
                None => (e.as_str(), None),
            };
            let net: IpAddr = addr
                .trim()
                .parse()
                .map_err(|_| format!("`{e}` is not an IP address or CIDR range"))?;
            let net = canonical(net);
            let max = if net.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                None => max,
                Some(b) => b
                    .trim()
                    .parse::<u8>()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or_else(|| format!("`{e}` has a bad prefix length"))?,
            };
            out.push(Cidr { net, bits });
        }
        Ok(ProxyList(out))
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client address of a request: the direct peer, unless that peer is a trusted
    /// proxy; then the right-most address in `X-Forwarded-For` that is not itself a
    /// trusted proxy. Headers from untrusted peers are ignored, so they cannot be spoofed.
    pub fn client_addr(&self, remote_addr: &str, forwarded_for: Option<&str>) -> Option<IpAddr> {
        let peer: IpAddr = canonical(remote_addr.trim().parse().ok()?);
        if !self.trusts(peer) {
            return Some(peer);
        }
        let Some(header) = forwarded_for else {
            return Some(peer);
        };
        let mut last = peer;
        for hop in header.rsplit(',') {
            let Ok(ip) = hop.trim().parse::<IpAddr>() else {
                // Garbage in the chain: stop at the last address we could trust.
                return Some(last);
            };
            let ip = canonical(ip);
            if !self.trusts(ip) {
                return Some(ip);
            }
            last = ip;
        }
        Some(last)
    }
}

/// The rate-limit identity of an address: IPv4 as is, IPv6 by its /64 prefix, because one
/// IPv6 subscriber usually holds a whole /64 and could otherwise rotate through it.
fn identity(ip: IpAddr) -> String {
    match canonical(ip) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// `sha256(ip_salt, address)` as lower-case hex: the only form in which a client is ever
/// stored or logged. A request without a usable address gets one shared key, so that a
/// misconfigured server still rate-limits (and the operator sees the warning).
pub fn client_key(ip_salt: &str, addr: Option<IpAddr>) -> String {
    let who = match addr {
        Some(ip) => identity(ip),
        None => {
            tracing::warn!(
                "request without a usable REMOTE_ADDR: all such requests share one rate-limit key"
            );
            "unknown".to_string()
        }
    };
    let mut h = Sha256::new();
    h.update(b"formwarden-client\0");
    h.update(ip_salt.as_bytes());
    h.update(b"\0");
    h.update(who.as_bytes());
    crate::random::hex(&h.finalize())
}

/// True when `host` is a loopback name or address (plain SMTP is only allowed there).
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| canonical(ip).is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(e: &[&str]) -> ProxyList {
        ProxyList::parse(&e.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("valid")
    }

    #[test]
    fn forwarded_for_is_ignored_from_untrusted_peers() {
        let l = list(&["10.0.0.0/8"]);
        let ip = l.client_addr("203.0.113.9", Some("1.2.3.4"));
        assert_eq!(ip, "203.0.113.9".parse().ok());
    }

    #[test]
    fn rightmost_untrusted_hop_is_the_client() {
        let l = list(&["10.0.0.0/8", "127.0.0.1"]);
        let ip = l.client_addr("127.0.0.1", Some("6.6.6.6, 198.51.100.7, 10.1.2.3"));
        assert_eq!(ip, "198.51.100.7".parse().ok());
    }

    #[test]
    fn ipv6_clients_share_a_key_per_64() {
        let a = client_key("s", "2001:db8:1:2::1".parse().ok());
        let b = client_key("s", "2001:db8:1:2:ffff::9".parse().ok());
        let c = client_key("s", "2001:db8:1:3::1".parse().ok());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            client_key("s", "::ffff:1.2.3.4".parse().ok()),
            client_key("s", "1.2.3.4".parse().ok())
        );
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn bad_entries_are_refused() {
        assert!(ProxyList::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(ProxyList::parse(&["example.com".into()]).is_err());
        assert!(
            is_loopback_host("127.0.0.1")
                && is_loopback_host("[::1]")
                && !is_loopback_host("10.0.0.1")
        );
    }
}
