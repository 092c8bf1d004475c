//! The registry of open connections on this node: enforces the global and
//! per-user connection caps and lets the server API and shutdown reach
//! connections.
//!
//! A slot is reserved during the handshake ([`Hub::admit`]), before the
//! upgrade, so the caps are decided with the HTTP status the SPEC asks for.
//! The returned [`Admission`] travels with the connection task and frees the
//! slot when dropped, whichever way the connection ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use wsgate_protocol::CloseCode;

use crate::broker::UserConnections;
use crate::connection::outbound::Outbound;

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    #[error("the user already has the maximum number of connections open")]
    UserLimit,
    #[error("the server has reached its connection limit")]
    ServerFull,
    /// [`Hub::admit_pending`] past its own cap.
    #[error("too many connections are waiting to name their user")]
    PendingLimit,
}

/// The user of slots reserved by [`Hub::admit_pending`]: a `sub` is never
/// empty (the verifier refuses one), so no user's slots are mixed in.
const PENDING: &str = "";

struct Slot {
    seq: u64,
    /// Set once the upgrade completed and the connection has a queue.
    outbound: Option<Arc<Outbound>>,
}

#[derive(Default)]
struct Registry {
    users: HashMap<Arc<str>, Vec<Slot>>,
    total: usize,
}

pub struct Hub {
    // One lock: it is taken once per connect/disconnect and per server API
    // call, never per message, so contention is not a concern here.
    registry: Mutex<Registry>,
    /// Every node's count, with several nodes (set once the broker is up).
    cluster: OnceLock<Arc<dyn UserConnections>>,
    next_seq: AtomicU64,
    max_connections: usize,
    max_per_user: usize,
    /// Slots of [`Hub::admit_pending`] at once: a tenth of
    /// `max_connections`, so clients that show no token (yet) cannot take
    /// the whole server from those that did.
    max_pending: usize,
}

/// Snapshot for `/ws/stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct HubStats {
    pub connections: usize,
    pub users: usize,
}

impl Hub {
    pub fn new(max_connections: usize, max_per_user: usize) -> Arc<Self> {
        Arc::new(Hub {
            registry: Mutex::new(Registry::default()),
            cluster: OnceLock::new(),
            next_seq: AtomicU64::new(1),
            max_connections,
            max_per_user,
            max_pending: (max_connections / 10).max(1),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        // Critical sections only move slots; a poisoned lock is consistent.
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves a connection slot for `user`.
    pub fn admit(self: &Arc<Self>, user: &Arc<str>) -> Result<Admission, AdmitError> {
        self.admit_as(user, true)
    }

    /// Reserves a slot for a connection whose user is not known yet (a
    /// GraphQL client that sends its token in `connection_init`): it counts
    /// against the global cap at once, and against its user's cap from
    /// [`Admission::identify`] on. Shutdown reaches it like any other.
    pub fn admit_pending(self: &Arc<Self>) -> Result<Admission, AdmitError> {
        self.admit_as(&Arc::from(PENDING), false)
    }

    fn admit_as(
        self: &Arc<Self>,
        user: &Arc<str>,
        per_user: bool,
    ) -> Result<Admission, AdmitError> {
        let mut reg = self.lock();
        if reg.total >= self.max_connections {
            return Err(AdmitError::ServerFull);
        }
        if !per_user
            && reg
                .users
                .get(user)
                .is_some_and(|s| s.len() >= self.max_pending)
        {
            return Err(AdmitError::PendingLimit);
        }
        // Most users hold one connection; start the list at exactly one slot.
        let slots = reg
            .users
            .entry(user.clone())
            .or_insert_with(|| Vec::with_capacity(1));
        if per_user && slots.len() >= self.max_per_user {
            if slots.is_empty() {
                reg.users.remove(user);
            }
            return Err(AdmitError::UserLimit);
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        // A UUID in its 32-digit form: with the `Arc`'s counters it fills a
        // 48-byte allocation where the hyphenated form needs 64.
        let connection_id: Arc<str> = uuid::Uuid::new_v4().simple().to_string().into();
        slots.push(Slot {
            seq,
            outbound: None,
        });
        reg.total += 1;
        Ok(Admission {
            hub: self.clone(),
            user: Mutex::new(user.clone()),
            seq,
            connection_id,
        })
    }

    /// With several nodes: the per-user cap counts every node's connections.
    pub fn count_across_nodes(&self, connections: Arc<dyn UserConnections>) {
        let _ = self.cluster.set(connections);
    }

    /// Checks an admitted connection against the per-user cap on every
    /// node. When the cluster's count cannot be reached the connection is
    /// let in (logged): a broker outage must not lock every user out, and
    /// each node's own cap still holds.
    pub async fn admit_across_nodes(&self, admission: &Admission) -> Result<(), AdmitError> {
        let Some(cluster) = self.cluster.get() else {
            return Ok(());
        };
        let user = admission.user();
        match cluster
            .admit(&user, &admission.connection_id, self.max_per_user)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(AdmitError::UserLimit),
            Err(e) => {
                tracing::warn!(error = %e, "per-user cap across nodes not checked");
                Ok(())
            }
        }
    }

    /// Asks every connection of `user` to close with `code`; returns how many.
    pub fn close_user(&self, user: &str, code: CloseCode) -> usize {
        let reg = self.lock();
        let Some(slots) = reg.users.get(user) else {
            return 0;
        };
        let mut n = 0;
        for outbound in slots.iter().filter_map(|s| s.outbound.as_ref()) {
            outbound.close(code);
            n += 1;
        }
        n
    }

    /// Asks every connection to close with `code` (shutdown).
    pub fn close_all(&self, code: CloseCode) -> usize {
        let reg = self.lock();
        let mut n = 0;
        for outbound in reg
            .users
            .values()
            .flatten()
            .filter_map(|s| s.outbound.as_ref())
        {
            outbound.close(code);
            n += 1;
        }
        n
    }

    pub fn stats(&self) -> HubStats {
        let reg = self.lock();
        HubStats {
            connections: reg.total,
            users: reg.users.len() - usize::from(reg.users.contains_key(PENDING)),
        }
    }

    /// Moves a pending slot to `user`, if `user` has room.
    fn identify(&self, seq: u64, user: &Arc<str>) -> Result<(), AdmitError> {
        let mut guard = self.lock();
        let reg = &mut *guard;
        if reg
            .users
            .get(user)
            .is_some_and(|s| s.len() >= self.max_per_user)
        {
            return Err(AdmitError::UserLimit);
        }
        let pending = reg.users.get_mut(PENDING);
        let Some(slot) = pending.and_then(|slots| {
            let i = slots.iter().position(|s| s.seq == seq)?;
            Some(slots.swap_remove(i))
        }) else {
            return Ok(());
        };
        if reg.users.get(PENDING).is_some_and(Vec::is_empty) {
            reg.users.remove(PENDING);
        }
        reg.users
            .entry(user.clone())
            .or_insert_with(|| Vec::with_capacity(1))
            .push(slot);
        Ok(())
    }

    fn release(&self, user: &Arc<str>, seq: u64) {
        let mut guard = self.lock();
        let reg = &mut *guard;
        if let Some(slots) = reg.users.get_mut(user) {
            if let Some(i) = slots.iter().position(|s| s.seq == seq) {
                slots.swap_remove(i);
                reg.total -= 1;
            }
            if slots.is_empty() {
                reg.users.remove(user);
            }
        }
    }

    fn attach(&self, user: &Arc<str>, seq: u64, outbound: Arc<Outbound>) {
        let mut reg = self.lock();
        if let Some(slot) = reg
            .users
            .get_mut(user)
            .and_then(|slots| slots.iter_mut().find(|s| s.seq == seq))
        {
            slot.outbound = Some(outbound);
        }
    }
}

/// A reserved connection slot; dropping it frees the slot.
pub struct Admission {
    hub: Arc<Hub>,
    /// Changes at most once, from pending to the user ([`Admission::identify`]).
    user: Mutex<Arc<str>>,
    seq: u64,
    connection_id: Arc<str>,
}

impl Admission {
    pub fn connection_id(&self) -> &Arc<str> {
        &self.connection_id
    }

    pub fn user(&self) -> Arc<str> {
        self.user.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Gives a slot from [`Hub::admit_pending`] its user, checking the
    /// user's cap on this node (the caller then asks
    /// [`Hub::admit_across_nodes`]). Refused, the slot stays pending.
    pub fn identify(&self, user: &Arc<str>) -> Result<(), AdmitError> {
        let mut current = self.user.lock().unwrap_or_else(|e| e.into_inner());
        if &**current != PENDING {
            return Ok(());
        }
        self.hub.identify(self.seq, user)?;
        *current = user.clone();
        Ok(())
    }

    /// Makes the connection reachable by [`Hub::close_user`] and
    /// [`Hub::close_all`].
    pub fn attach(&self, outbound: Arc<Outbound>) {
        self.hub.attach(&self.user(), self.seq, outbound);
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let user = self.user();
        self.hub.release(&user, self.seq);
        if &*user == PENDING {
            return;
        }
        if let (Some(cluster), Ok(runtime)) = (
            self.hub.cluster.get(),
            tokio::runtime::Handle::try_current(),
        ) {
            let (cluster, id) = (cluster.clone(), self.connection_id.clone());
            runtime.spawn(async move {
                // If it fails, the entry expires on its own.
                let _ = cluster.release(&user, &id).await;
            });
        }
    }
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("user", &self.user())
            .field("connection_id", &self.connection_id)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_user_and_global_caps() {
        let hub = Hub::new(3, 2);
        let a: Arc<str> = "a".into();
        let b: Arc<str> = "b".into();
        let a1 = hub.admit(&a).unwrap();
        let _a2 = hub.admit(&a).unwrap();
        assert_eq!(hub.admit(&a).unwrap_err(), AdmitError::UserLimit);
        let _b1 = hub.admit(&b).unwrap();
        assert_eq!(hub.admit(&b).unwrap_err(), AdmitError::ServerFull);
        drop(a1);
        assert_eq!(hub.stats().connections, 2);
        let _a3 = hub.admit(&a).unwrap();
    }

    #[test]
    fn a_pending_slot_counts_globally_then_against_its_user() {
        let hub = Hub::new(30, 1);
        let a: Arc<str> = "a".into();
        let p1 = hub.admit_pending().unwrap();
        let p2 = hub.admit_pending().unwrap();
        assert_eq!(
            hub.stats(),
            HubStats {
                connections: 2,
                users: 0
            }
        );
        let q = Arc::new(Outbound::new(100));
        p1.attach(q.clone());
        p1.identify(&a).unwrap();
        assert_eq!(p1.user(), a);
        assert_eq!(
            hub.stats(),
            HubStats {
                connections: 2,
                users: 1
            }
        );
        // `a` is at its cap: the second stays pending, still counted.
        assert_eq!(p2.identify(&a).unwrap_err(), AdmitError::UserLimit);
        assert_eq!(hub.stats().connections, 2);
        // A tenth of the cap may wait at once: p2 and two more.
        let _p3 = hub.admit_pending().unwrap();
        let _p4 = hub.admit_pending().unwrap();
        assert_eq!(hub.admit_pending().unwrap_err(), AdmitError::PendingLimit);
        // The identified slot kept its queue: the server API reaches it.
        assert_eq!(hub.close_user("a", CloseCode::Disconnected), 1);
        assert_eq!(q.take().1, Some(CloseCode::Disconnected));
        drop(p1);
        drop(p2);
        assert_eq!(
            hub.stats(),
            HubStats {
                connections: 2,
                users: 0
            }
        );
        // The global cap still counts pending slots: 30 in all.
        let users: Vec<Arc<str>> = (0..28).map(|i| format!("u{i}").into()).collect();
        let _held: Vec<_> = users.iter().map(|u| hub.admit(u).unwrap()).collect();
        assert_eq!(hub.admit(&a).unwrap_err(), AdmitError::ServerFull);
    }

    #[test]
    fn close_user_reaches_only_that_user() {
        let hub = Hub::new(10, 3);
        let a: Arc<str> = "a".into();
        let b: Arc<str> = "b".into();
        let qa = Arc::new(Outbound::new(100));
        let qb = Arc::new(Outbound::new(100));
        let ad = hub.admit(&a).unwrap();
        ad.attach(qa.clone());
        let bd = hub.admit(&b).unwrap();
        bd.attach(qb.clone());
        assert_eq!(hub.close_user("a", CloseCode::Disconnected), 1);
        assert_eq!(qa.take().1, Some(CloseCode::Disconnected));
        assert_eq!(qb.take().1, None);
        drop(ad);
        assert_eq!(hub.close_user("a", CloseCode::Disconnected), 0);
        assert_eq!(
            hub.stats(),
            HubStats {
                connections: 1,
                users: 1
            }
        );
    }
}
