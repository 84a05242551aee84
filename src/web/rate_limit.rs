//! Per-client request limits, in memory: a fixed one-minute window per IP address.
//! (The per-address mail limit lives in the store, where it holds across instances.)

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);
/// Above this many tracked clients, finished windows are dropped.
const PRUNE_ABOVE: usize = 10_000;

/// Counts requests per client address.
#[derive(Debug)]
pub struct ClientLimiter {
    /// Requests allowed per window; 0 disables the limit.
    per_window: u32,
    /// Window start and count per client.
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl ClientLimiter {
    /// A limiter allowing `per_minute` requests per client and minute (0: unlimited).
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_window: per_minute,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a request; `Err(wait)` when the client is over its limit.
    ///
    /// # Errors
    /// How long the client has to wait.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        if self.per_window == 0 {
            return Ok(());
        }
        // An IPv4 client reaching a dual-stack socket shows as ::ffff:a.b.c.d: it is
        // that IPv4 address, not a member of the /64 all such clients share. An IPv6
        // client usually has a whole /64: counted as one.
        let ip = match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
            v4 => v4,
        };
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if windows.len() > PRUNE_ABOVE {
            windows.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
        }
        let entry = windows.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        if entry.1 >= self.per_window {
            return Err(WINDOW.saturating_sub(now.duration_since(entry.0)));
        }
        entry.1 += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_over_its_limit_is_told_to_wait() {
        let l = ClientLimiter::new(2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(l.check(ip).is_ok());
        assert!(l.check(ip).is_ok());
        let wait = l.check(ip).unwrap_err();
        assert!(wait <= WINDOW && wait > Duration::from_secs(50));
        assert!(l.check("192.0.2.2".parse().unwrap()).is_ok());
        let v6 = ClientLimiter::new(1);
        assert!(v6.check("2001:db8::1".parse().unwrap()).is_ok());
        assert!(
            v6.check("2001:db8::2".parse().unwrap()).is_err(),
            "the same /64"
        );
        assert!(
            v6.check("2001:db8:0:1::1".parse().unwrap()).is_ok(),
            "another /64"
        );
        let off = ClientLimiter::new(0);
        assert!((0..100).all(|_| off.check(ip).is_ok()));
    }

    #[test]
    fn an_ipv4_mapped_client_is_limited_together_with_its_ipv4_form() {
        let l = ClientLimiter::new(2);
        assert!(l.check("192.0.2.1".parse().unwrap()).is_ok());
        assert!(l.check("::ffff:192.0.2.1".parse().unwrap()).is_ok());
        assert!(l.check("::ffff:192.0.2.1".parse().unwrap()).is_err());
        assert!(l.check("192.0.2.1".parse().unwrap()).is_err());
        assert!(
            l.check("::ffff:192.0.2.2".parse().unwrap()).is_ok(),
            "another IPv4 client is not in the same bucket"
        );
        assert!(l.check("::ffff:192.0.2.3".parse().unwrap()).is_ok());
    }
}
