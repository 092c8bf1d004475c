//! Audit lines for rejected handshakes, at most one per reason and address
//! per window: a client that floods refused requests must not turn each
//! one into a log line (267k pipelined rejections once filled the log
//! writer and froze the runtime). Every rejection is still counted in
//! `wsgate_handshake_rejections_total`; the line that ends a quiet spell
//! carries how many were left out before it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One line per (reason, address) per this long.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Most (reason, address) pairs remembered; past it the map is cleared,
/// which costs at most one extra line per pair, never memory.
const MAX_KEYS: usize = 10_000;

struct Seen {
    since: Instant,
    suppressed: u64,
}

#[derive(Default)]
pub struct RejectionLog {
    // A std Mutex: one map lookup per rejection, never held across an await.
    seen: Mutex<HashMap<(&'static str, IpAddr), Seen>>,
}

impl RejectionLog {
    /// Whether to write a line for this rejection now: `Some(n)` with the
    /// number of lines left out for the same key since the last one.
    pub fn admit(&self, reason: &'static str, ip: IpAddr, now: Instant) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = seen.get_mut(&(reason, ip)) {
            if now.duration_since(s.since) < WINDOW {
                s.suppressed += 1;
                return None;
            }
            let left_out = s.suppressed;
            *s = Seen {
                since: now,
                suppressed: 0,
            };
            return Some(left_out);
        }
        if seen.len() >= MAX_KEYS {
            seen.clear();
        }
        seen.insert(
            (reason, ip),
            Seen {
                since: now,
                suppressed: 0,
            },
        );
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_reason_and_address_per_window() {
        let log = RejectionLog::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!(log.admit("ip_rate", a, t0), Some(0));
        for _ in 0..1000 {
            assert_eq!(log.admit("ip_rate", a, t0 + Duration::from_secs(1)), None);
        }
        // Other reasons and addresses have their own windows.
        assert_eq!(log.admit("origin", a, t0), Some(0));
        assert_eq!(log.admit("ip_rate", b, t0), Some(0));
        // The next window's line says how many were left out.
        assert_eq!(log.admit("ip_rate", a, t0 + WINDOW), Some(1000));
        assert_eq!(log.admit("ip_rate", a, t0 + WINDOW), None);
    }
}
