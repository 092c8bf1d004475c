//! The `Broker` (node subscriptions, publications, join/leave, offsets,
//! history) and `Presence` interfaces, their in-process memory
//! implementations, and [`connect`], which builds them from `broker.url`. A
//! Redis implementation replaces them without touching connection code;
//! `core::contract` (feature `contract`) holds the suite every
//! implementation must pass.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

use crate::publication::{Publication, StreamPosition};

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
pub trait Deliver: Send + Sync + 'static {
    fn deliver(&self, publication: &Arc<Publication>);

    /// `client` joined or left `channel` (on this node or another).
    fn deliver_control(&self, channel: &str, kind: ControlKind, client: &ClientInfo);
}

/// What every node shares: publications with offsets and history, and
/// join/leave. A node receives, through the [`Deliver`] sink it was built
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

    /// Answers when the broker is reachable (`/ready`).
    async fn ping(&self) -> Result<(), BrokerError>;
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

fn new_epoch() -> Arc<str> {
    // 8 random hex characters: enough to tell two lifetimes of a stream apart.
    let id = uuid::Uuid::new_v4();
    id.simple().to_string()[..8].into()
}

#[derive(Default)]
struct Shard {
    streams: HashMap<Arc<str>, Stream>,
    /// Channels the node subscribed to: only these reach the sink. Kept
    /// apart from `streams` so a subscription alone costs no history state.
    subscribed: HashSet<Arc<str>>,
}

struct Stream {
    name: Arc<str>,
    offset: u64,
    epoch: Arc<str>,
    kept: VecDeque<Arc<Publication>>,
}

impl Stream {
    fn new(name: Arc<str>, epoch: Arc<str>) -> Self {
        Stream {
            name,
            offset: 0,
            epoch,
            kept: VecDeque::new(),
        }
    }

    fn position(&self) -> StreamPosition {
        StreamPosition {
            offset: self.offset,
            epoch: self.epoch.clone(),
        }
    }

    fn expire(&mut self, history: HistoryPolicy, now: Instant) {
        while self.kept.len() > history.size {
            self.kept.pop_front();
        }
        if !history.ttl.is_zero() {
            while self
                .kept
                .front()
                .is_some_and(|p| now.duration_since(p.published_at) > history.ttl)
            {
                self.kept.pop_front();
            }
        }
    }
}

/// In-process broker: one node. History lives in memory and its epoch
/// changes on restart, so clients know recovery is impossible.
pub struct MemoryBroker {
    /// One epoch for every channel of this broker's lifetime: a restart
    /// loses all memory history at once, and a channel nobody published to
    /// needs no state to answer with a stable position.
    epoch: Arc<str>,
    // Sharded by channel hash so publishers to different channels rarely
    // contend. Each shard's lock is also held while delivering, which keeps
    // per-channel delivery in offset order.
    shards: Box<[Mutex<Shard>]>,
    deliver: Arc<dyn Deliver>,
    /// Delivers channels the node did not subscribe to as well; see
    /// [`MemoryBroker::every_channel`].
    every_channel: bool,
}

const SHARDS: usize = 32;

pub(crate) fn shard_of(channel: &str, n: usize) -> usize {
    // FNV-1a: fast, stable and good enough to spread channel names.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in channel.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    (h as usize) % n
}

impl MemoryBroker {
    /// A broker that delivers only the channels the node subscribed to, as
    /// the contract says.
    pub fn new(deliver: Arc<dyn Deliver>) -> Self {
        MemoryBroker {
            epoch: new_epoch(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            deliver,
            every_channel: false,
        }
    }

    /// Transitional: a broker that delivers every channel, subscribed or
    /// not — what the memory broker did before node subscriptions. For a
    /// node whose callers add subscribers to its `ChannelIndex` without
    /// `ChannelIndex::reconcile`; one node loses nothing by it (its index
    /// drops channels nobody here subscribed to). Remove once every caller
    /// reconciles.
    pub fn every_channel(deliver: Arc<dyn Deliver>) -> Self {
        MemoryBroker {
            every_channel: true,
            ..MemoryBroker::new(deliver)
        }
    }

    fn shard(&self, channel: &str) -> std::sync::MutexGuard<'_, Shard> {
        // Every critical section leaves the shard consistent (single
        // inserts and removals), so a poisoned lock is still usable.
        self.shards[shard_of(channel, SHARDS)]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn delivers(&self, shard: &Shard, channel: &str) -> bool {
        self.every_channel || shard.subscribed.contains(channel)
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let mut shard = self.shard(channel);
        if !shard.subscribed.contains(channel) {
            shard.subscribed.insert(channel.into());
        }
        Ok(())
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        self.shard(channel).subscribed.remove(channel);
        Ok(())
    }

    async fn publish(
        &self,
        channel: &str,
        data: Bytes,
        value: Value,
        history: HistoryPolicy,
    ) -> Result<Arc<Publication>, BrokerError> {
        let mut shard = self.shard(channel);
        let delivers = self.delivers(&shard, channel);
        if !shard.streams.contains_key(channel) {
            let name: Arc<str> = channel.into();
            shard
                .streams
                .insert(name.clone(), Stream::new(name, self.epoch.clone()));
        }
        let stream = shard.streams.get_mut(channel).expect("inserted above");
        stream.offset += 1;
        let publication = Publication::new(
            stream.name.clone(),
            stream.offset,
            stream.epoch.clone(),
            data,
            value,
        );
        if history.size > 0 {
            stream.kept.push_back(publication.clone());
            stream.expire(history, publication.published_at);
        }
        // Delivered under the shard lock: the next publication of this
        // channel cannot overtake this one.
        if delivers {
            self.deliver.deliver(&publication);
        }
        Ok(publication)
    }

    async fn publish_control(
        &self,
        channel: &str,
        kind: ControlKind,
        client: &ClientInfo,
    ) -> Result<(), BrokerError> {
        let shard = self.shard(channel);
        // Under the shard lock too: in order with the channel's
        // publications.
        if self.delivers(&shard, channel) {
            self.deliver.deliver_control(channel, kind, client);
        }
        Ok(())
    }

    async fn history(
        &self,
        channel: &str,
        since: Option<&StreamPosition>,
        limit: usize,
        history: HistoryPolicy,
    ) -> Result<HistoryPage, BrokerError> {
        let mut shard = self.shard(channel);
        let Some(stream) = shard.streams.get_mut(channel) else {
            // A channel nobody published to yet: position 0. Nothing is
            // stored, so subscribing to many names costs no memory.
            let position = StreamPosition {
                offset: 0,
                epoch: self.epoch.clone(),
            };
            let complete = since.is_none_or(|s| s.offset == 0 && s.epoch == position.epoch);
            return Ok(HistoryPage {
                position,
                publications: vec![],
                complete,
            });
        };
        stream.expire(history, Instant::now());
        let position = stream.position();
        let (publications, complete) = match since {
            Some(s) if *s.epoch == *stream.epoch => {
                let after: Vec<_> = stream
                    .kept
                    .iter()
                    .filter(|p| p.offset > s.offset)
                    .take(limit)
                    .cloned()
                    .collect();
                // Complete when nothing between `since` and the first kept
                // publication was lost.
                // `since` comes from the client: `u64::MAX` must not wrap.
                let first_needed = s.offset.saturating_add(1);
                let complete = s.offset >= stream.offset
                    || stream
                        .kept
                        .front()
                        .is_some_and(|p| p.offset <= first_needed);
                (after, complete && s.offset <= stream.offset)
            }
            Some(_) => (Vec::new(), false),
            None => {
                let skip = stream.kept.len().saturating_sub(limit);
                (stream.kept.iter().skip(skip).cloned().collect(), true)
            }
        };
        Ok(HistoryPage {
            position,
            publications,
            complete,
        })
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        Ok(())
    }
}

/// In-process presence.
#[derive(Default)]
pub struct MemoryPresence {
    channels: Mutex<HashMap<String, Vec<ClientInfo>>>,
}

#[async_trait]
impl Presence for MemoryPresence {
    async fn add(&self, channel: &str, client: ClientInfo) -> Result<(), BrokerError> {
        let mut map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let list = map.entry(channel.to_string()).or_default();
        if !list.iter().any(|c| c.connection_id == client.connection_id) {
            list.push(client);
        }
        Ok(())
    }

    async fn remove(&self, channel: &str, connection_id: &str) -> Result<(), BrokerError> {
        let mut map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = map.get_mut(channel) {
            list.retain(|c| &*c.connection_id != connection_id);
            if list.is_empty() {
                map.remove(channel);
            }
        }
        Ok(())
    }

    async fn clients(&self, channel: &str) -> Result<Vec<ClientInfo>, BrokerError> {
        let map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        Ok(map.get(channel).cloned().unwrap_or_default())
    }
}

/// The node's broker and presence, as `broker.url` chose them.
pub struct Backend {
    pub broker: Arc<dyn Broker>,
    pub presence: Arc<dyn Presence>,
}

/// Why `broker.url` names no broker this build can run. The messages name
/// only a known scheme, never the URL: it may carry credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// A broker the contract is ready for but that is not written yet.
    #[error("{scheme}:// is not implemented yet; only \"memory\" is")]
    NotImplemented { scheme: &'static str },
    #[error("expected \"memory\" or redis://…")]
    Unsupported,
}

/// Builds the broker and presence `url` names (`broker.url`), delivering
/// into `deliver` (the node's `ChannelIndex`). Asynchronous because a
/// networked broker connects here.
pub async fn connect(url: &str, deliver: Arc<dyn Deliver>) -> Result<Backend, ConnectError> {
    if url == "memory" {
        return Ok(Backend {
            // Transitional (see `every_channel`): sessions do not reconcile
            // node subscriptions yet. Switch to `MemoryBroker::new` once
            // they do.
            broker: Arc::new(MemoryBroker::every_channel(deliver)),
            presence: Arc::new(MemoryPresence::default()),
        });
    }
    // Checked as prefixes, so nothing of the URL itself is echoed.
    for scheme in ["redis", "rediss"] {
        if url
            .strip_prefix(scheme)
            .is_some_and(|rest| rest.starts_with("://"))
        {
            return Err(ConnectError::NotImplemented { scheme });
        }
    }
    Err(ConnectError::Unsupported)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Collected;

    #[tokio::test]
    async fn the_transitional_memory_broker_delivers_every_channel() {
        let sink = Arc::new(Collected::default());
        let b = MemoryBroker::every_channel(sink.clone());
        let client = ClientInfo {
            user: "u".into(),
            connection_id: "c".into(),
        };
        b.publish(
            "ch",
            Bytes::from("1"),
            Value::from(1),
            HistoryPolicy::default(),
        )
        .await
        .unwrap();
        b.publish_control("ch", ControlKind::Leave, &client)
            .await
            .unwrap();
        assert_eq!(sink.log("ch"), ["1", "leave u c"], "never subscribed");
    }

    #[tokio::test]
    async fn the_broker_url_names_the_broker_without_echoing_itself() {
        let sink = || Arc::new(Collected::default());
        assert!(connect("memory", sink()).await.is_ok());
        for (url, scheme) in [
            ("redis://u:hunter2@h:6379/0", "redis"),
            ("rediss://h", "rediss"),
        ] {
            let Err(e) = connect(url, sink()).await else {
                panic!("{scheme} is not implemented")
            };
            assert_eq!(e, ConnectError::NotImplemented { scheme });
            assert_eq!(
                e.to_string(),
                format!("{scheme}:// is not implemented yet; only \"memory\" is")
            );
        }
        for url in ["", "Memory", "redis:/h", "nats://h"] {
            assert_eq!(
                connect(url, sink()).await.err(),
                Some(ConnectError::Unsupported),
                "{url}"
            );
        }
    }
}
