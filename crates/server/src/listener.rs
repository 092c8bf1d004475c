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
//!   handshake limit, IPv6 by /64): beyond it the socket is closed at once,
//!   before any byte is read;
//! - counts against `limits.max_pending_connections`: at that cap the
//!   oldest connection with no request in progress is closed to make room;
//! - is closed at once on shutdown unless a request is being answered.
//!
//! Once upgraded to WebSocket a connection leaves these counts: from then
//! on heartbeats and the connection caps govern it.

use std::collections::{BTreeMap, HashMap};
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

use crate::transport::http_io::HttpIo;
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
    state: Mutex<PendingState>,
}

#[derive(Default)]
struct PendingState {
    per_ip: HashMap<IpAddr, usize>,
    /// Every counted connection by admission order (ids only grow). A
    /// connection is counted exactly while it is in here: an evicted one
    /// leaves at eviction, so its later drop does not count it twice.
    open: BTreeMap<u64, Admitted>,
    next_id: u64,
}

/// What eviction needs to know about, and do to, a pending connection.
struct Admitted {
    key: IpAddr,
    /// Requests being answered on it: one with a request in progress is
    /// never evicted.
    in_flight: Arc<AtomicUsize>,
    evict: CancellationToken,
}

/// A slot in [`Pending`], given back when the connection ends or upgrades.
struct PendingSlot {
    pending: Arc<Pending>,
    id: u64,
    in_flight: Arc<AtomicUsize>,
    /// Cancelled when a newer connection takes this one's place.
    evicted: CancellationToken,
}

/// Why a connection was not admitted.
#[derive(Debug, PartialEq)]
enum Refused {
    /// Its address holds `pending_connections_per_ip` already.
    PerIp,
    /// All `max_pending_connections` slots answer requests: none to free.
    Full,
}

impl Pending {
    /// Admits a connection from `key`. At the global cap the oldest
    /// connection with no request in progress (a silent socket, a head
    /// still dribbling in, an idle keep-alive) is closed to make room:
    /// refusing the newcomer instead would let a slow attacker on enough
    /// addresses hold the door shut until the header timeout, while a
    /// legitimate client sends its head in one packet and is never the
    /// oldest for long. Returns the slot and whether it evicted one.
    fn admit(
        self: &Arc<Self>,
        key: IpAddr,
        limits: &Limits,
    ) -> Result<(PendingSlot, bool), Refused> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.per_ip.get(&key).copied().unwrap_or(0) >= limits.pending_connections_per_ip {
            return Err(Refused::PerIp);
        }
        let mut evicted = false;
        if state.open.len() >= limits.max_pending_connections {
            let oldest_idle = state
                .open
                .iter()
                .find(|(_, a)| a.in_flight.load(Ordering::Relaxed) == 0)
                .map(|(id, _)| *id)
                .ok_or(Refused::Full)?;
            let victim = state.open.remove(&oldest_idle).expect("found above");
            state.release(victim.key);
            victim.evict.cancel();
            evicted = true;
        }
        let (id, in_flight, evict) = (state.next_id, Arc::default(), CancellationToken::new());
        state.next_id += 1;
        *state.per_ip.entry(key).or_insert(0) += 1;
        let admitted = Admitted {
            key,
            in_flight: Arc::clone(&in_flight),
            evict: evict.clone(),
        };
        state.open.insert(id, admitted);
        let slot = PendingSlot {
            pending: self.clone(),
            id,
            in_flight,
            evicted: evict,
        };
        Ok((slot, evicted))
    }
}

impl PendingState {
    fn release(&mut self, key: IpAddr) {
        if let Some(n) = self.per_ip.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&key);
            }
        }
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut state = self.pending.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(admitted) = state.open.remove(&self.id) {
            state.release(admitted.key);
        }
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

/// The accept queue's length. tokio's `TcpListener::bind` asks for 128,
/// and a burst of 500 simultaneous connects overflowed it 129 times (the
/// kernel's `ListenOverflows`), each a SYN retransmitted 1–3 s later. The
/// kernel caps this at `net.core.somaxconn` (4096 by default since 5.4).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` with [`LISTEN_BACKLOG`] and `SO_REUSEADDR` (a restart must
/// not wait for the old sockets' TIME_WAIT).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
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
        let slot = match pending.admit(ip_key(peer.ip()), &limits) {
            Ok((slot, evicted)) => {
                if evicted {
                    metrics.rejection("pending_evicted");
                }
                slot
            }
            Err(_) => {
                // Dropping the socket closes it before any byte is read:
                // the cheapest answer to a flood of connections that never
                // finish.
                metrics.rejection("pending_connections");
                continue;
            }
        };
        // Frames are small and latency matters more than packet count: no
        // Nagle delay between the 101 response and the `connected` frame,
        // or between a reply and the client's next command.
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY not set");
        }
        let in_flight = slot.in_flight.clone();
        let (io, switch) = HttpIo::new(tcp);
        let service = {
            let (app, in_flight) = (app.clone(), in_flight.clone());
            hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                req.extensions_mut().insert(switch.clone());
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
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let evicted = slot.evicted.clone();
            let _slot = slot;
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                // A newer connection took this one's place: it had no
                // request in progress, so closing it cuts no response.
                _ = evicted.cancelled() => return,
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
        let (a1, _) = pending.admit(a, &limits).unwrap();
        let _a2 = pending.admit(a, &limits).unwrap();
        assert_eq!(pending.admit(a, &limits).err(), Some(Refused::PerIp));
        let (b1, evicted) = pending.admit(b, &limits).unwrap();
        assert!(!evicted);
        drop(a1);
        let (_b2, evicted) = pending.admit(b, &limits).unwrap();
        assert!(!evicted, "a slot given back is reused, nobody evicted");
        assert!(!b1.evicted.is_cancelled());
    }

    #[tokio::test]
    async fn the_accept_queue_holds_a_burst_of_connects() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        // Nobody accepts: every connect must still complete from the
        // queue. With tokio's default backlog (128) the rest would wait
        // for a SYN retransmit, a second or more.
        let connects = (0..600).map(|_| {
            tokio::time::timeout(
                Duration::from_millis(800),
                tokio::net::TcpStream::connect(addr),
            )
        });
        let results = futures_util::future::join_all(connects).await;
        let done = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
        assert_eq!(done, 600, "connects completed without an accept");
    }

    #[test]
    fn at_the_global_cap_the_oldest_idle_connection_makes_room() {
        let limits = Limits {
            pending_connections_per_ip: 10,
            max_pending_connections: 3,
            ..Limits::default()
        };
        let pending = Arc::new(Pending::default());
        let ip = |i: u8| IpAddr::from([10, 0, 0, i]);
        let (first, _) = pending.admit(ip(1), &limits).unwrap();
        let (second, _) = pending.admit(ip(2), &limits).unwrap();
        let (third, _) = pending.admit(ip(3), &limits).unwrap();
        // The oldest is answering a request: the next oldest goes.
        first.in_flight.fetch_add(1, Ordering::Relaxed);
        let (fourth, evicted) = pending.admit(ip(4), &limits).unwrap();
        assert!(evicted);
        assert!(!first.evicted.is_cancelled());
        assert!(second.evicted.is_cancelled());
        // The evicted slot's drop does not give back a second slot.
        drop(second);
        let (_fifth, evicted) = pending.admit(ip(5), &limits).unwrap();
        assert!(evicted && third.evicted.is_cancelled());
        // Every slot answering a request: the newcomer is refused.
        fourth.in_flight.fetch_add(1, Ordering::Relaxed);
        let state = pending.state.lock().unwrap();
        for a in state.open.values() {
            a.in_flight.store(1, Ordering::Relaxed);
        }
        drop(state);
        assert_eq!(pending.admit(ip(6), &limits).err(), Some(Refused::Full));
        // Per-address counts follow evictions: 10.0.0.2 and .3 hold none.
        let state = pending.state.lock().unwrap();
        assert_eq!(state.open.len(), 3);
        assert_eq!(state.per_ip.get(&ip(2)), None);
        assert_eq!(state.per_ip.get(&ip(3)), None);
    }
}
