//! The web keys at the top of the file: `listen`, `public_url`, the bearer tokens
//! (`admin_token`, `metrics_token`) and the proxies whose `X-Forwarded-For` counts
//! (`trusted_proxies`).

use std::net::{IpAddr, SocketAddr};

use super::{ConfigError, Env};

/// `POSTBOTE_LISTEN` or `listen`; default `127.0.0.1:8080`.
pub(super) fn listen(env: &Env<'_>, from_file: Option<String>) -> Result<SocketAddr, ConfigError> {
    match env.pick("POSTBOTE_LISTEN", "listen", from_file) {
        Some(v) => v.parse(|v| {
            v.parse::<SocketAddr>()
                .map_err(|e| format!("{e}: expected an address like 127.0.0.1:8080"))
        }),
        None => Ok(SocketAddr::from(([127, 0, 0, 1], 8080))),
    }
}

/// `POSTBOTE_PUBLIC_URL` or `public_url`: an http(s) URL with a host, stored
/// without a trailing slash.
pub(super) fn public_url(
    env: &Env<'_>,
    from_file: Option<String>,
) -> Result<Option<String>, ConfigError> {
    env.pick("POSTBOTE_PUBLIC_URL", "public_url", from_file)
        .map(|v| v.parse(parse_public_url))
        .transpose()
}

/// `POSTBOTE_ADMIN_TOKEN` or `admin_token`.
pub(super) fn admin_token(
    env: &Env<'_>,
    from_file: Option<String>,
) -> Result<Option<Secret>, ConfigError> {
    bearer_token(env, "POSTBOTE_ADMIN_TOKEN", "admin_token", from_file)
}

/// `POSTBOTE_METRICS_TOKEN` or `metrics_token`.
pub(super) fn metrics_token(
    env: &Env<'_>,
    from_file: Option<String>,
) -> Result<Option<Secret>, ConfigError> {
    bearer_token(env, "POSTBOTE_METRICS_TOKEN", "metrics_token", from_file)
}

/// A bearer token of at least 16 characters, when set.
fn bearer_token(
    env: &Env<'_>,
    var: &str,
    key: &str,
    from_file: Option<String>,
) -> Result<Option<Secret>, ConfigError> {
    let Some(token) = env.pick(var, key, from_file) else {
        return Ok(None);
    };
    if token.value.len() < 16 {
        return Err(ConfigError::new(
            token.key,
            "must be at least 16 characters",
        ));
    }
    Ok(Some(Secret::new(token.value)))
}

/// `trusted_proxies`: networks in CIDR notation; default loopback only.
pub(super) fn trusted_proxies(list: Option<Vec<String>>) -> Result<Vec<IpNetwork>, ConfigError> {
    match list {
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, v)| {
                IpNetwork::parse(v)
                    .map_err(|p| ConfigError::new(format!("trusted_proxies[{i}]"), p))
            })
            .collect(),
        None => Ok(["127.0.0.1/32", "::1/128"]
            .iter()
            .map(|n| IpNetwork::parse(n).expect("valid"))
            .collect()),
    }
}

/// An http(s) URL with a host, without its trailing slash.
fn parse_public_url(v: &str) -> Result<String, String> {
    let url =
        url::Url::parse(v).map_err(|e| format!("{e}: expected e.g. https://news.example.org"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err("must be an http:// or https:// URL with a host".into());
    }
    Ok(v.trim_end_matches('/').to_owned())
}

/// A secret from the configuration (a bearer token): its `Debug` shows none of it,
/// so a logged or printed configuration gives nothing away.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// An IP network in CIDR notation (`10.0.0.0/8`, `::1/128`), e.g. a trusted proxy's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNetwork {
    /// The first address of the network (host bits zero).
    addr: IpAddr,
    /// Leading bits that must match.
    prefix: u8,
}

impl IpNetwork {
    /// Parses `ADDRESS/PREFIX`, or a bare address (one host). IPv4-mapped IPv6
    /// networks (`::ffff:10.0.0.0/104`) become their IPv4 form.
    ///
    /// # Errors
    /// What is wrong, for a [`ConfigError`].
    pub fn parse(s: &str) -> Result<Self, String> {
        let hint = "expected a network like 10.0.0.0/8 or ::1/128";
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| format!("{s:?}: {hint}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix must be 0 to {max}"))?,
            None => max,
        };
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if prefix >= 96 && v6.to_ipv4_mapped().is_some() => (
                IpAddr::V4(v6.to_ipv4_mapped().expect("checked")),
                prefix - 96,
            ),
            other => (other, prefix),
        };
        let net = Self { addr, prefix };
        if net.masked(addr) != addr {
            return Err(format!(
                "{s:?} has bits set after the prefix: write the network's first address, or /{max} for one host"
            ));
        }
        Ok(net)
    }

    /// `ip` with the bits after this network's prefix cleared.
    fn masked(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(v4) & mask).into())
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        }
    }

    /// Whether `ip` (an IPv4-mapped IPv6 address counts as its IPv4 form) lies in
    /// this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && self.masked(ip) == self.addr
    }
}
