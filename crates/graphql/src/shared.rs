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
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use wsgate_core::metrics::Metrics;

use crate::pump::{pump, Out, Recipient};
use crate::tap::TapCell;

/// Every shared execution of the server, by key.
pub(crate) struct Groups {
    map: Mutex<HashMap<String, Arc<Group>>>,
    next_member: AtomicU64,
    metrics: Arc<Metrics>,
}

struct Group {
    members: Mutex<Vec<Member>>,
    /// The execution's task, aborted when the last member leaves.
    task: Mutex<Option<AbortHandle>>,
}

struct Member {
    token: u64,
    recipient: Recipient,
    /// Fired when the execution ends (after its last frame is queued).
    ended: Option<oneshot::Sender<()>>,
}

/// A subscriber's place in a group; leaving is dropping it.
pub(crate) struct Membership {
    groups: Arc<Groups>,
    group: Arc<Group>,
    key: String,
    token: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a push, a removal or a take.
    m.lock().unwrap_or_else(|e| e.into_inner())
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
    /// `start` when there is none. The receiver fires when the execution
    /// has ended.
    pub fn join(
        self: &Arc<Self>,
        key: String,
        recipient: Recipient,
        start: impl FnOnce() -> (BoxStream<'static, Response>, Arc<TapCell>),
    ) -> (Membership, oneshot::Receiver<()>) {
        let token = self.next_member.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let member = Member {
            token,
            recipient,
            ended: Some(tx),
        };
        let mut map = lock(&self.map);
        self.metrics.graphql_shared_subscribers.inc();
        let group = match map.get(&key) {
            Some(group) => {
                lock(&group.members).push(member);
                group.clone()
            }
            None => {
                let group = Arc::new(Group {
                    members: Mutex::new(vec![member]),
                    task: Mutex::new(None),
                });
                map.insert(key.clone(), group.clone());
                self.metrics.graphql_shared_executions.inc();
                let (responses, cell) = start();
                let task =
                    tokio::spawn(
                        self.clone()
                            .execute(key.clone(), group.clone(), responses, cell),
                    );
                *lock(&group.task) = Some(task.abort_handle());
                group
            }
        };
        let membership = Membership {
            groups: self.clone(),
            group,
            key,
            token,
        };
        (membership, rx)
    }

    /// Takes `group` out of the map if it is still the one there; the
    /// caller holds the map's lock.
    fn unlist(&self, map: &mut HashMap<String, Arc<Group>>, key: &str, group: &Arc<Group>) {
        if map.get(key).is_some_and(|g| Arc::ptr_eq(g, group)) {
            map.remove(key);
            self.metrics.graphql_shared_executions.dec();
        }
    }

    /// Runs one shared execution: every result to every member.
    async fn execute(
        self: Arc<Self>,
        key: String,
        group: Arc<Group>,
        responses: BoxStream<'static, Response>,
        cell: Arc<TapCell>,
    ) {
        let metrics = self.metrics.clone();
        pump(responses, &cell, &metrics, |out| {
            let members = lock(&group.members);
            for m in members.iter() {
                m.recipient.send(&out);
            }
            if matches!(out, Out::Next(..)) {
                metrics.deliveries.inc_by(members.len() as u64);
            }
        })
        .await;
        // Out of the map first, so nobody joins an execution that ended;
        // then every member is told.
        self.unlist(&mut lock(&self.map), &key, &group);
        for m in lock(&group.members).iter_mut() {
            if let Some(tx) = m.ended.take() {
                let _ = tx.send(());
            }
        }
    }

    fn leave(&self, group: &Arc<Group>, key: &str, token: u64) {
        let mut map = lock(&self.map);
        self.metrics.graphql_shared_subscribers.dec();
        let empty = {
            let mut members = lock(&group.members);
            members.retain(|m| m.token != token);
            members.is_empty()
        };
        if empty {
            if let Some(task) = lock(&group.task).take() {
                task.abort();
            }
            self.unlist(&mut map, key, group);
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.groups.leave(&self.group, &self.key, self.token);
    }
}
