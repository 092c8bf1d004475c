//! Shared resolution: identical subscriptions (same document, operation and
//! variables) are one execution, whose every result is resolved once,
//! serialized once and queued to each subscriber behind its own operation
//! id (the one part of a `next` frame that differs). So a channel's fan-out
//! through GraphQL costs one resolution per publication, not one per
//! subscriber — Hasura's multiplexing, for a push source.
//!
//! Sharing is sound because each subscriber was authorized on its own
//! before it joined (the probe, see `subscription`), and nothing a
//! subscription resolves depends on who reads it (`types::Publication`,
//! `types::ThreadEvent`). A subscription that replays history for one
//! subscriber (`since`) is never shared.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_graphql::Response;
use futures_util::stream::BoxStream;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use wsgate_core::metrics::Metrics;

use crate::pump::{Item, Pump, Recipient};
use crate::tap::TapCell;

/// Every shared execution of the server, by key.
pub(crate) struct Groups {
    map: Mutex<HashMap<String, Arc<Group>>>,
    next_member: AtomicU64,
    metrics: Arc<Metrics>,
}

struct Group {
    /// Copied on write: a join or leave copies the list of pointers, and
    /// the fan-out takes the current list without holding the lock while
    /// it queues to everyone.
    members: Mutex<Arc<Vec<Arc<Member>>>>,
    /// The execution's task, aborted when the last member leaves.
    task: Mutex<Option<AbortHandle>>,
    /// Cancelled when the execution has ended and its last frame is queued.
    ended: CancellationToken,
}

struct Member {
    token: u64,
    recipient: Recipient,
}

/// A subscriber's place in a group; leaving is dropping it.
pub(crate) struct Membership {
    groups: Arc<Groups>,
    group: Arc<Group>,
    key: String,
    token: u64,
}

impl Membership {
    /// Completes when the shared execution has ended.
    pub async fn ended(&self) {
        self.group.ended.cancelled().await
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a pointer swap, an insert or a removal.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Group {
    fn members(&self) -> Arc<Vec<Arc<Member>>> {
        lock(&self.members).clone()
    }
}

impl Groups {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Groups {
            map: Mutex::new(HashMap::new()),
            next_member: AtomicU64::new(1),
            metrics,
        })
    }

    /// Adds `recipient` to the execution of `key`, starting it with
    /// `start` when there is none.
    pub fn join(
        self: &Arc<Self>,
        key: String,
        recipient: Recipient,
        start: impl FnOnce() -> (BoxStream<'static, Response>, Arc<TapCell>),
    ) -> Membership {
        let token = self.next_member.fetch_add(1, Ordering::Relaxed);
        let member = Arc::new(Member { token, recipient });
        // Under the map's lock: an execution that ends takes itself out of
        // the map under it too, before it tells its members, so a member
        // either is told or finds no execution and starts one.
        let mut map = lock(&self.map);
        self.metrics.graphql_shared_subscribers.inc();
        let group = match map.get(&key) {
            Some(group) => {
                let mut members = lock(&group.members);
                let mut list = Vec::clone(&members);
                list.push(member);
                *members = Arc::new(list);
                drop(members);
                group.clone()
            }
            None => {
                let group = Arc::new(Group {
                    members: Mutex::new(Arc::new(vec![member])),
                    task: Mutex::new(None),
                    ended: CancellationToken::new(),
                });
                map.insert(key.clone(), group.clone());
                self.metrics.graphql_shared_executions.inc();
                let (responses, cell) = start();
                let run = Execution {
                    groups: self.clone(),
                    key: key.clone(),
                    group: group.clone(),
                };
                let task = tokio::spawn(run.execute(responses, cell));
                *lock(&group.task) = Some(task.abort_handle());
                group
            }
        };
        Membership {
            groups: self.clone(),
            group,
            key,
            token,
        }
    }

    /// Takes `group` out of the map if it is still the one there.
    fn unlist(&self, map: &mut HashMap<String, Arc<Group>>, key: &str, group: &Arc<Group>) {
        if map.get(key).is_some_and(|g| Arc::ptr_eq(g, group)) {
            map.remove(key);
            self.metrics.graphql_shared_executions.dec();
        }
    }

    fn leave(&self, group: &Arc<Group>, key: &str, token: u64) {
        let mut map = lock(&self.map);
        self.metrics.graphql_shared_subscribers.dec();
        let empty = {
            let mut members = lock(&group.members);
            let list: Vec<Arc<Member>> = members
                .iter()
                .filter(|m| m.token != token)
                .cloned()
                .collect();
            let empty = list.is_empty();
            *members = Arc::new(list);
            empty
        };
        if empty {
            if let Some(task) = lock(&group.task).take() {
                task.abort();
            }
            self.unlist(&mut map, key, group);
        }
    }
}

/// One shared execution's task. Dropped however it ends (done, aborted
/// when its last member left, or a panic), it leaves the map and lets its
/// members go.
struct Execution {
    groups: Arc<Groups>,
    key: String,
    group: Arc<Group>,
}

impl Execution {
    /// Every result to every member; then the end, to the members there
    /// are once nobody can join any more.
    async fn execute(self, responses: BoxStream<'static, Response>, cell: Arc<TapCell>) {
        let metrics = self.groups.metrics.clone();
        let mut pump = Pump::new(responses);
        let mut errored = false;
        while let Some(item) = pump.next(&cell, &metrics).await {
            let members = self.group.members();
            for m in members.iter() {
                m.recipient.send(&item);
            }
            match item {
                Item::Next(..) => {
                    metrics.deliveries.inc_by(members.len() as u64);
                }
                Item::Error(_) => errored = true,
            }
        }
        {
            let mut map = lock(&self.groups.map);
            self.groups.unlist(&mut map, &self.key, &self.group);
        }
        if !errored {
            let end = cell.ended();
            for m in self.group.members().iter() {
                m.recipient.end(end);
            }
        }
    }
}

impl Drop for Execution {
    fn drop(&mut self) {
        let mut map = lock(&self.groups.map);
        self.groups.unlist(&mut map, &self.key, &self.group);
        drop(map);
        self.group.ended.cancel();
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.groups.leave(&self.group, &self.key, self.token);
    }
}
