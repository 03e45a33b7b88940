//! The client's IP address. The forwarding header (`X-Forwarded-For`, or RFC 7239 `Forwarded`,
//! whichever `server.client_ip_header` names) is believed only as far as it was appended by
//! proxies listed in `trusted_proxies`: walking its hops from the right, the first address that
//! is not a trusted proxy is the client. Anything a client writes into the header itself sits to
//! the left of that and is ignored.
//!
//! Every line of the header counts, joined in order: a proxy that appends a line of its own (as
//! HAProxy's `option forwardfor` does) must not leave the client's forged first line in charge.
//! A hop may carry a port (`203.0.113.7:41234`, `[2001:db8::1]:443`), which is dropped.
//!
//! A line is split into hops before anything is decoded: a byte a client put into its own hop (a
//! non-UTF-8 byte, say) makes that hop unreadable, and an unreadable hop stops the walk only when
//! the walk reaches it. Decoding the whole line first would let one such byte on the left make the
//! proxy's own hop on the right unreadable too, turning the proxy into the client.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use crate::config::ClientIpHeader;

/// The client address for a connection from `peer` whose request carries `lines` of the
/// forwarding header (their raw bytes, in the order they arrived).
pub(crate) fn client_ip<'a>(
    peer: Option<SocketAddr>,
    header: ClientIpHeader,
    lines: impl DoubleEndedIterator<Item = &'a [u8]>,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let peer_ip = peer.map(|p| canonical(p.ip()))?;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer_ip) {
        return Some(peer_ip);
    }
    let mut client = peer_ip;
    // From the last line's last hop backwards.
    for line in lines.rev() {
        for hop in line.rsplit(|b| *b == b',') {
            let parsed = std::str::from_utf8(hop).ok().and_then(|hop| match header {
                ClientIpHeader::XForwardedFor => parse_hop(hop.trim()),
                ClientIpHeader::Forwarded => forwarded_for(hop).and_then(parse_hop),
            });
            match parsed {
                Some(ip) => {
                    client = canonical(ip);
                    if !is_trusted(&client) {
                        return Some(client);
                    }
                }
                // A hop we cannot read (garbage, bytes that are not text, `unknown`, an
                // obfuscated name) means the chain can no longer be trusted beyond it.
                None => return Some(client),
            }
        }
    }
    Some(client)
}

/// An address with or without a port: `192.0.2.1`, `192.0.2.1:80`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:443`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = hop.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    hop.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .and_then(|h| h.parse::<std::net::Ipv6Addr>().ok())
        .map(IpAddr::V6)
}

/// The `for=` parameter of one `Forwarded` element (`for=192.0.2.60;proto=http;by=...`), its
/// quotes removed.
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then(|| value.trim().trim_matches('"'))
    })
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
    fn xff(peer_ip: &str, lines: &[&str], trusted: &[IpNet]) -> Option<IpAddr> {
        client_ip(
            peer(peer_ip),
            ClientIpHeader::XForwardedFor,
            lines.iter().map(|l| l.as_bytes()),
            trusted,
        )
    }

    #[test]
    fn untrusted_peer_header_is_ignored() {
        assert_eq!(xff("203.0.113.9", &["1.2.3.4"], &[]), ip("203.0.113.9"));
        assert_eq!(
            xff("203.0.113.9", &["1.2.3.4"], &nets(&["10.0.0.0/8"])),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn trusted_proxy_chain_yields_first_untrusted_from_the_right() {
        let trusted = nets(&["10.0.0.0/8"]);
        // The client forged "6.6.6.6"; the proxy appended the real peer 198.51.100.7.
        assert_eq!(
            xff("10.0.0.5", &["6.6.6.6, 198.51.100.7, 10.0.0.3"], &trusted),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn every_header_line_counts_in_order() {
        // HAProxy appends its own line after the client's forged one.
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            xff("10.0.0.5", &["6.6.6.6", "198.51.100.7"], &trusted),
            ip("198.51.100.7")
        );
        assert_eq!(
            xff(
                "10.0.0.5",
                &["6.6.6.6, 7.7.7.7", "198.51.100.7, 10.0.0.9"],
                &trusted
            ),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn ports_are_dropped() {
        let trusted = nets(&["10.0.0.0/8", "2001:db8:ffff::/48"]);
        assert_eq!(
            xff("10.0.0.5", &["203.0.113.7:41234"], &trusted),
            ip("203.0.113.7")
        );
        assert_eq!(
            xff("10.0.0.5", &["[2001:db8::1]:443"], &trusted),
            ip("2001:db8::1")
        );
        assert_eq!(
            xff("10.0.0.5", &["[2001:db8::1]"], &trusted),
            ip("2001:db8::1")
        );
        assert_eq!(
            xff(
                "10.0.0.5",
                &["198.51.100.1, [2001:db8:ffff::7]:80"],
                &trusted
            ),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn garbage_hop_stops_the_walk() {
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            xff("10.0.0.5", &["1.1.1.1, not-an-ip"], &trusted),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn forwarded_header_follows_the_same_rules() {
        let trusted = nets(&["10.0.0.0/8"]);
        let forwarded = |lines: &[&str]| {
            client_ip(
                peer("10.0.0.5"),
                ClientIpHeader::Forwarded,
                lines.iter().map(|l| l.as_bytes()),
                &trusted,
            )
        };
        assert_eq!(
            forwarded(&["for=6.6.6.6, for=198.51.100.7;proto=https"]),
            ip("198.51.100.7")
        );
        assert_eq!(
            forwarded(&["for=\"[2001:db8::1]:4711\";by=10.0.0.5"]),
            ip("2001:db8::1")
        );
        assert_eq!(forwarded(&["for=unknown"]), ip("10.0.0.5"));
        assert_eq!(
            forwarded(&["for=6.6.6.6", "For=198.51.100.8"]),
            ip("198.51.100.8")
        );
    }

    #[test]
    fn bytes_that_are_not_text_in_a_clients_hop_do_not_hide_the_proxys_hop() {
        let trusted = nets(&["10.0.0.0/8"]);
        let line: &[u8] = b"6.6.6.\xff6, 198.51.100.7";
        let walk = |header, lines: &[&[u8]]| {
            client_ip(peer("10.0.0.5"), header, lines.iter().copied(), &trusted)
        };
        assert_eq!(
            walk(ClientIpHeader::XForwardedFor, &[line]),
            ip("198.51.100.7")
        );
        assert_eq!(
            walk(
                ClientIpHeader::Forwarded,
                &[b"for=\xfe\xff, for=198.51.100.7;proto=https"]
            ),
            ip("198.51.100.7")
        );
        // Reaching the unreadable hop still stops the walk there.
        assert_eq!(
            walk(
                ClientIpHeader::XForwardedFor,
                &[b"198.51.100.7, 10.0.0.9\xff"]
            ),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn mapped_ipv4_is_canonical() {
        assert_eq!(xff("::ffff:192.0.2.1", &[], &[]), ip("192.0.2.1"));
    }
}
