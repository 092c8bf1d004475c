//! The `Broker` (node subscriptions, publications, join/leave, offsets,
//! history) and `Presence` interfaces, their in-process memory
//! implementations, and [`connect`], which builds them from `broker.url`. A
//! Redis implementation replaces them without touching connection code;
//! `broker::contract` (feature `contract`) holds the suite every
//! implementation must pass.

#[cfg(any(test, feature = "contract"))]
pub mod contract;
mod memory;

pub(crate) use memory::shard_of;
pub use memory::{MemoryBroker, MemoryPresence};

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use crate::channels::publication::{Publication, StreamPosition};

/// History settings of the channel's namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HistoryPolicy {
    pub size: usize,
    /// Zero: no age limit.
    pub ttl: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

/// A page of history.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    pub position: StreamPosition,
    /// Publications after `since` (or the newest ones), oldest first.
    pub publications: Vec<Arc<Publication>>,
    /// With `since`: whether every publication after it was still there
    /// (same epoch, nothing expired or evicted in between), whatever the
    /// `limit`: catching-up subscribers read history in small pages.
    pub complete: bool,
}

impl HistoryPage {
    /// The page a reader gets, from what a broker keeps of a channel:
    /// `kept`, oldest first, the newest ones up to `position`. With
    /// `since`: the publications after it, at most `limit`, and whether
    /// none was lost between it and them (same epoch, the first one needed
    /// still kept, an offset the stream has reached); without: the newest
    /// `limit`. One definition of recovery for every broker.
    pub fn select(
        position: StreamPosition,
        kept: &[Arc<Publication>],
        since: Option<&StreamPosition>,
        limit: usize,
    ) -> Self {
        let (publications, complete) = match since {
            Some(s) if s.epoch == position.epoch => {
                let after = kept
                    .iter()
                    .filter(|p| p.offset > s.offset)
                    .take(limit)
                    .cloned()
                    .collect();
                // `since` comes from the client: `u64::MAX` must not wrap.
                let first_needed = s.offset.saturating_add(1);
                let complete = s.offset >= position.offset
                    || kept.first().is_some_and(|p| p.offset <= first_needed);
                (after, complete && s.offset <= position.offset)
            }
            Some(_) => (Vec::new(), false),
            None => (kept[kept.len().saturating_sub(limit)..].to_vec(), true),
        };
        HistoryPage {
            position,
            publications,
            complete,
        }
    }
}

/// A join or leave: news about a client that every subscriber of the
/// channel, on every node, is told (the client itself excepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ControlKind {
    Join,
    Leave,
}

impl ControlKind {
    /// The frame type subscribers receive.
    pub fn as_str(self) -> &'static str {
        match self {
            ControlKind::Join => "join",
            ControlKind::Leave => "leave",
        }
    }
}

/// A node's sink: receives the publications and control events of the
/// channels the node subscribed to ([`Broker::subscribe`]), in order per
/// channel (the hub's fan-out).
pub trait NodeSink: Send + Sync + 'static {
    fn on_publication(&self, publication: &Arc<Publication>);

    /// `client` joined or left `channel` (on this node or another).
    fn on_control(&self, channel: &str, kind: ControlKind, client: &ClientInfo);

    /// A command for every node ([`Broker::to_all_nodes`]), this one
    /// included.
    fn on_node_command(&self, command: &NodeCommand);

    /// The node missed publications of `channel` that it cannot get back
    /// (a broker outage longer than the channel's history, or the broker
    /// lost the channel's stream): its subscribers must not go on as if
    /// nothing happened.
    fn on_gap(&self, channel: &str);
}

/// A command every node carries out for its own connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum NodeCommand {
    /// Close every connection of `user` with 4003
    /// (`POST /api/users/{user}/disconnect`).
    Disconnect { user: String },
    /// Stop `user`'s run `run_id` if it executes here (`stop_agent` sent
    /// to another node).
    StopRun { user: String, run_id: String },
}

/// What every node shares: publications with offsets and history, and
/// join/leave. A node receives, through the [`NodeSink`] sink it was built
/// with, only the channels it subscribed to — so with Redis a node listens
/// to the channels its connections use, not to every channel.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// From now on this node receives `channel`'s publications and control
    /// events: when this returns, nothing published later is missed.
    /// Subscribing twice is the same as once (no count is kept): the
    /// node's `ChannelIndex` decides when, see `ChannelIndex::reconcile`.
    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError>;

    /// This node stops receiving `channel`. Unsubscribing a channel that is
    /// not subscribed is not an error.
    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError>;

    /// Assigns the next offset, keeps history per `history`, and delivers
    /// to every node subscribed to `channel`. `data` is JSON text, `value`
    /// its parse.
    async fn publish(
        &self,
        channel: &str,
        data: Bytes,
        value: Value,
        history: HistoryPolicy,
    ) -> Result<Arc<Publication>, BrokerError>;

    /// Publications after `since` (all kept ones without it), at most
    /// `limit`, oldest first when `since` is given, else the newest `limit`.
    async fn history(
        &self,
        channel: &str,
        since: Option<&StreamPosition>,
        limit: usize,
        history: HistoryPolicy,
    ) -> Result<HistoryPage, BrokerError>;

    /// Tells every node subscribed to `channel` that `client` joined or
    /// left it, in order with the channel's publications. Sinks leave out
    /// the subscriptions of `client.connection_id` itself.
    async fn publish_control(
        &self,
        channel: &str,
        kind: ControlKind,
        client: &ClientInfo,
    ) -> Result<(), BrokerError>;

    /// Delivers `command` to every node's sink, this node's included.
    async fn to_all_nodes(&self, command: &NodeCommand) -> Result<(), BrokerError>;

    /// Answers when the broker is reachable (`/ready`).
    async fn ping(&self) -> Result<(), BrokerError>;

    /// Drops `channel`'s history and position for good: its name is never
    /// used again (a deleted thread's `thread:<id>`), so nothing of it
    /// should outlive it. The default keeps them (a broker whose streams
    /// expire on their own).
    async fn forget(&self, channel: &str) -> Result<(), BrokerError> {
        let _ = channel;
        Ok(())
    }
}

/// One client in a channel's presence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientInfo {
    pub user: Arc<str>,
    pub connection_id: Arc<str>,
}

#[async_trait]
pub trait Presence: Send + Sync + 'static {
    async fn add(&self, channel: &str, client: ClientInfo) -> Result<(), BrokerError>;
    async fn remove(&self, channel: &str, connection_id: &str) -> Result<(), BrokerError>;
    async fn clients(&self, channel: &str) -> Result<Vec<ClientInfo>, BrokerError>;
}

/// Each user's connections on every node, for the per-user cap across
/// nodes. Entries expire unless their node keeps them alive, so a crashed
/// node's connections stop counting within a bounded time.
#[async_trait]
pub trait UserConnections: Send + Sync + 'static {
    /// Counts `connection_id` for `user` unless the user already has `max`
    /// connections counted; whether it was counted.
    async fn admit(&self, user: &str, connection_id: &str, max: usize)
        -> Result<bool, BrokerError>;

    /// Stops counting `connection_id`.
    async fn release(&self, user: &str, connection_id: &str) -> Result<(), BrokerError>;
}

/// The node's broker and presence, as `broker.url` chose them, and the
/// cluster's connection count and runs when there is a cluster (one node
/// counts its own in its `Hub` and `Runs`).
pub struct Backend {
    pub broker: Arc<dyn Broker>,
    pub presence: Arc<dyn Presence>,
    pub connections: Option<Arc<dyn UserConnections>>,
    pub runs: Option<Arc<dyn crate::runs::RunRegistry>>,
}

/// Why `broker.url` names no broker core builds in. The message never
/// echoes the URL: it may carry credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("expected \"memory\" (redis:// is built by the server)")]
    Unsupported,
}

/// Builds the in-process broker and presence for `url` (`memory`),
/// delivering into `deliver` (the node's `ChannelIndex`).
pub async fn connect(url: &str, deliver: Arc<dyn NodeSink>) -> Result<Backend, ConnectError> {
    if url == "memory" {
        return Ok(Backend {
            broker: Arc::new(MemoryBroker::new(deliver)),
            presence: Arc::new(MemoryPresence::default()),
            connections: None,
            runs: None,
        });
    }
    Err(ConnectError::Unsupported)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::contract::Collected;

    #[tokio::test]
    async fn only_memory_is_built_in_and_the_url_is_never_echoed() {
        let sink = || Arc::new(Collected::default());
        assert!(connect("memory", sink()).await.is_ok());
        for url in ["", "Memory", "redis://u:hunter2@h:6379/0", "nats://h"] {
            let e = connect(url, sink()).await.err();
            assert_eq!(e, Some(ConnectError::Unsupported), "{url}");
            assert!(!e.unwrap().to_string().contains("hunter2"));
        }
    }
}
