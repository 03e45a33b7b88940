//! The client's IP address. `X-Forwarded-For` is believed only as far as it was appended by
//! proxies listed in `trusted_proxies`: walking from the right, the first address that is not a
//! trusted proxy is the client. Anything a client writes into the header itself sits to the left
//! of that and is ignored.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

pub fn client_ip(
    peer: Option<SocketAddr>,
    forwarded_for: Option<&str>,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let peer_ip = peer.map(|p| canonical(p.ip()))?;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer_ip) {
        return Some(peer_ip);
    }
    let Some(header) = forwarded_for else {
        return Some(peer_ip);
    };
    let mut client = peer_ip;
    for hop in header.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = canonical(ip);
                if !is_trusted(&client) {
                    return Some(client);
                }
            }
            // A malformed hop means the chain can no longer be trusted beyond it.
            Err(_) => return Some(client),
        }
    }
    Some(client)
}

/// IPv4-mapped IPv6 addresses are the IPv4 client they stand for.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }
    fn peer(ip: &str) -> Option<SocketAddr> {
        Some(SocketAddr::new(ip.parse().unwrap(), 40000))
    }
    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn untrusted_peer_header_is_ignored() {
        assert_eq!(
            client_ip(peer("203.0.113.9"), Some("1.2.3.4"), &[]),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(peer("203.0.113.9"), Some("1.2.3.4"), &nets(&["10.0.0.0/8"])),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn trusted_proxy_chain_yields_first_untrusted_from_the_right() {
        let trusted = nets(&["10.0.0.0/8"]);
        // The client forged "6.6.6.6"; the proxy appended the real peer 198.51.100.7.
        assert_eq!(
            client_ip(
                peer("10.0.0.5"),
                Some("6.6.6.6, 198.51.100.7, 10.0.0.3"),
                &trusted
            ),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn garbage_hop_stops_the_walk() {
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(peer("10.0.0.5"), Some("1.1.1.1, not-an-ip"), &trusted),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn mapped_ipv4_is_canonical() {
        assert_eq!(
            client_ip(peer("::ffff:192.0.2.1"), None, &[]),
            ip("192.0.2.1")
        );
    }
}
