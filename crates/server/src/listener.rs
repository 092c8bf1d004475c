//! The accept loop: HTTP/1.1 connections served by hyper with a timer, so a
//! client that never completes a request cannot keep a socket (and a file
//! descriptor) for ever.
//!
//! `axum::serve` has no timer, so hyper's header-read timeout never fires
//! there; a few hundred half-sent requests exhausted the open-files limit.
//! Here every connection that has not been upgraded yet:
//! - must send a complete request head within `limits.header_timeout_secs`
//!   (hyper restarts the same timer after every response, so it also bounds
//!   how long a keep-alive connection may sit idle between requests);
//! - counts against `limits.pending_connections_per_ip` (keyed like the
//!   handshake limit, IPv6 by /64) and `limits.max_pending_connections`;
//!   beyond them the socket is closed at once, before any byte is read;
//! - is closed at once on shutdown unless a request is being answered.
//!
//! Once upgraded to WebSocket a connection leaves these counts: from then
//! on heartbeats and the connection caps govern it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;
use wsgate_core::limits::Limits;
use wsgate_core::metrics::Metrics;

/// The key of per-address limits: IPv4 addresses as they are, IPv6 by
/// their /64 prefix (one subscriber's allocation: rotating addresses inside
/// it must not dodge a limit), IPv4-mapped IPv6 as the IPv4 address.
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

/// Connections not upgraded yet, per address key and in all.
#[derive(Default)]
struct Pending {
    // A std Mutex: a map update per accept and per close, never held
    // across an await.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    total: AtomicUsize,
}

/// A slot in [`Pending`], given back when the connection ends or upgrades.
struct PendingSlot {
    pending: Arc<Pending>,
    key: IpAddr,
}

impl Pending {
    fn admit(self: &Arc<Self>, key: IpAddr, limits: &Limits) -> Option<PendingSlot> {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if self.total.load(Ordering::Relaxed) >= limits.max_pending_connections {
            return None;
        }
        let n = per_ip.entry(key).or_insert(0);
        if *n >= limits.pending_connections_per_ip {
            return None;
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Some(PendingSlot {
            pending: self.clone(),
            key,
        })
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut per_ip = self
            .pending
            .per_ip
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per_ip.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.key);
            }
        }
        self.pending.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts requests being answered on one connection, so shutdown knows
/// whether closing it would cut a response.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        InFlight(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long to pause accepting after an error such as `EMFILE`: retrying
/// at once would spin on the same error.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts and serves until `shutdown` is cancelled; the connection tasks
/// are on `tracker` so the caller can wait for them.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let pending = Arc::new(Pending::default());
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(limits.header_timeout_secs))
        .keep_alive(true);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Some(slot) = pending.admit(ip_key(peer.ip()), &limits) else {
            // Dropping the socket closes it before any byte is read: the
            // cheapest answer to a flood of connections that never finish.
            metrics.rejection("pending_connections");
            continue;
        };
        // Frames are small and latency matters more than packet count: no
        // Nagle delay between the 101 response and the `connected` frame,
        // or between a reply and the client's next command.
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY not set");
        }
        let in_flight = Arc::new(AtomicUsize::new(0));
        let service = {
            let (app, in_flight) = (app.clone(), in_flight.clone());
            hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                let guard = InFlight::enter(&in_flight);
                let mut app = app.clone();
                async move {
                    let resp = app.call(req.map(Body::new)).await;
                    drop(guard);
                    Ok::<_, Infallible>(resp.unwrap_or_else(|e| match e {}))
                }
            })
        };
        let conn = http
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _slot = slot;
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = shutdown.cancelled() => {}
            }
            // Shutdown: a connection with no request being answered (idle
            // keep-alive, a head still arriving) closes now; one answering
            // a request finishes it, within the caller's grace period.
            if in_flight.load(Ordering::Relaxed) == 0 {
                return;
            }
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_is_keyed_by_its_64_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
        assert_eq!(ip_key(a), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(ip_key(mapped), "10.1.2.3".parse::<IpAddr>().unwrap());
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(ip_key(v4), v4);
    }

    #[test]
    fn pending_slots_are_capped_per_key_and_given_back() {
        let limits = Limits {
            pending_connections_per_ip: 2,
            max_pending_connections: 3,
            ..Limits::default()
        };
        let pending = Arc::new(Pending::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = pending.admit(a, &limits).unwrap();
        let _a2 = pending.admit(a, &limits).unwrap();
        assert!(pending.admit(a, &limits).is_none(), "per-address cap");
        let _b1 = pending.admit(b, &limits).unwrap();
        assert!(pending.admit(b, &limits).is_none(), "global cap");
        drop(a1);
        assert!(pending.admit(b, &limits).is_some(), "slot given back");
    }
}
