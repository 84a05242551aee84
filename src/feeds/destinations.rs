//! Where a feed poll may connect (against server-side request forgery).
//!
//! The operator chose the feed's host: it may be anything, `127.0.0.1` or an
//! intranet name included, and every address it resolves to is used. Once a
//! redirect leaves that host, every address the poll connects to must be public:
//! not loopback, private (RFC 1918), link-local (169.254.0.0/16 with the cloud
//! metadata service, fe80::/10), unique-local (fc00::/7), unspecified, shared
//! (100.64.0.0/10), multicast, reserved, benchmarking or documentation space, also
//! when written as an IPv4-mapped, IPv4-compatible, NAT64 or 6to4 IPv6 address.
//! A feed that redirects anywhere else fails with an error saying so.
//!
//! The check is made on the addresses the connection actually goes to: an address
//! written in the redirect's URL is checked by the redirect policy, before any
//! connection is attempted; a host name is checked in the DNS resolver, which hands
//! the HTTP client only the addresses that pass, so a name resolving to 127.0.0.1
//! is refused as well, and no second look-up can swap the address afterwards.
//! Proxies from the environment (`HTTP_PROXY` …) are not used: through a proxy, the
//! address connected to would be the proxy's, and the check would see nothing.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::config::PollingSettings;

/// Redirects one poll follows at most.
const MAX_REDIRECTS: usize = 5;

/// Whether `ip` is an address on the public internet, where a redirect may lead.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                let [a, b] = hi.to_be_bytes();
                let [c, d] = lo.to_be_bytes();
                Ipv4Addr::new(a, b, c, d)
            };
            if v6.is_unspecified() || v6.is_loopback() {
                return false;
            }
            // ::a.b.c.d (IPv4-compatible, deprecated) and 64:ff9b::/96 (NAT64)
            // reach the IPv4 address in their last 32 bits; 2002::/16 (6to4) the one
            // in bits 16 to 47.
            if s[..6] == [0; 6] || (s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4]) {
                return is_public_v4(embedded(s[6], s[7]));
            }
            if s[0] == 0x2002 {
                return is_public_v4(embedded(s[1], s[2]));
            }
            !(v6.is_multicast()
                || v6.is_unique_local()
                || v6.is_unicast_link_local()
                || (s[0] & 0xffc0) == 0xfec0 // site-local, deprecated
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x0100 && s[1..4] == [0; 3])) // discard-only
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0 // "this network", 0.0.0.0 included
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || (a == 100 && (b & 0xc0) == 64) // shared address space (carrier-grade NAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b & 0xfe) == 18) // benchmarking
        || a >= 240) // reserved
}

/// Why a poll may not connect somewhere.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error(
        "the redirect to {0} leaves the feed's host for a non-public address (loopback, private, link-local …)"
    )]
    Address(IpAddr),
    #[error(
        "{host} resolves only to non-public addresses ({addresses}); a redirect left the feed's host, so they are refused"
    )]
    Name { host: String, addresses: String },
    #[error("{host} has no address")]
    NoAddress { host: String },
    #[error("more than {MAX_REDIRECTS} redirects")]
    TooMany,
}

/// Resolves host names for one poll: the feed's own host to whatever it resolves
/// to, any other host to its public addresses only.
struct Resolver {
    /// The host of the feed's configured URL (as the URL parser writes it).
    feed_host: Option<String>,
}

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let trusted = self
            .feed_host
            .as_deref()
            .is_some_and(|h| h.eq_ignore_ascii_case(&host));
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if all.is_empty() {
                return Err(Refused::NoAddress { host }.into());
            }
            if trusted {
                return Ok(Box::new(all.into_iter()) as reqwest::dns::Addrs);
            }
            let public: Vec<SocketAddr> =
                all.iter().copied().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                let addresses = all
                    .iter()
                    .map(|a| a.ip().to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(Refused::Name { host, addresses }.into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The redirect policy: at most [`MAX_REDIRECTS`]; an address written in the URL
/// must be public unless it is the feed's own host (names go through [`Resolver`]).
fn redirect(
    attempt: reqwest::redirect::Attempt<'_>,
    feed_host: Option<&str>,
) -> reqwest::redirect::Action {
    // `previous` starts with the feed's own URL, which is no redirect.
    if attempt.previous().len() > MAX_REDIRECTS {
        return attempt.error(Refused::TooMany);
    }
    let target = attempt.url();
    let own_host = target.host_str().is_some_and(|h| Some(h) == feed_host);
    let literal = match target.host() {
        Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        _ => None,
    };
    match literal {
        Some(ip) if !own_host && !is_public(ip) => attempt.error(Refused::Address(ip)),
        _ => attempt.follow(),
    }
}

/// The HTTP client for one poll of the feed at `feed_url`: the time limits of
/// `settings`, our user agent, no proxy, and the address rules of this module.
///
/// # Errors
/// When the TLS backend cannot be set up.
pub fn client(
    feed_url: &url::Url,
    settings: &PollingSettings,
    user_agent: &str,
) -> reqwest::Result<reqwest::Client> {
    let feed_host = feed_url.host_str().map(str::to_owned);
    let policy_host = feed_host.clone();
    reqwest::Client::builder()
        .user_agent(user_agent)
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
        .no_proxy()
        .dns_resolver(Arc::new(Resolver { feed_host }))
        .redirect(reqwest::redirect::Policy::custom(move |attempt| {
            redirect(attempt, policy_host.as_deref())
        }))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_addresses_on_the_public_internet_count_as_public() {
        for private in [
            "127.0.0.1",
            "127.8.9.10",
            "10.255.255.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "100.64.0.1",
            "100.127.255.255",
            "192.0.0.8",
            "198.18.0.1",
            "192.0.2.1",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:c0a8:0101::1",
            "100::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "93.184.215.14",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "::ffff:93.184.215.14",
            "2a00:1450:4001:80b::200e",
            "2606:4700::6810:84e5",
            "64:ff9b::808:808",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }
}
