//! [`RedisBroker`]: publications, offsets, epochs and history in Redis, and
//! fan-out between nodes over pub/sub. One Lua script publishes (next
//! offset, history append and trim, `PUBLISH`) so offsets are assigned
//! once for every node; a node `SUBSCRIBE`s to a channel's pub/sub name
//! only while its `ChannelIndex` has subscribers for it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, KeysInterface, PubsubInterface};
use fred::types::scripts::Script;
use fred::types::Value as RedisValue;
use serde_json::Value;
use tokio::task::JoinHandle;
use wsgate_core::broker::{
    Broker, BrokerError, ClientInfo, ControlKind, HistoryPage, HistoryPolicy, NodeCommand, NodeSink,
};
use wsgate_core::channels::publication::{Publication, StreamPosition};

use crate::keys::Keys;
use crate::wire::{self, NodeMessage};
use crate::{within, META_TTL_SECS};

const PUBLISH: &str = include_str!("lua/publish.lua");
const HISTORY: &str = include_str!("lua/history.lua");

fn new_epoch() -> String {
    // 8 random hex characters, as the memory broker's.
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

/// What the broker and its pub/sub reader share.
struct Inner {
    client: Client,
    keys: Keys,
    publish: Script,
    history: Script,
    /// The last position the node delivered of each channel it is
    /// subscribed to: where it resumes after losing pub/sub messages.
    seen: Mutex<HashMap<String, StreamPosition>>,
    /// Subscribed to node commands (from then on fred re-subscribes after
    /// every reconnect).
    listening: AtomicBool,
}

pub struct RedisBroker {
    inner: Arc<Inner>,
    subscriber: SubscriberClient,
    /// The pub/sub reader, stopped with the broker.
    reader: JoinHandle<()>,
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// History with no size or age limit of its own: what Redis keeps.
const ALL_KEPT: HistoryPolicy = HistoryPolicy {
    size: usize::MAX,
    ttl: std::time::Duration::ZERO,
};

impl RedisBroker {
    /// A broker on connected (or connecting: commands wait for the
    /// connection, bounded by [`within`]) clients, delivering what its
    /// subscriptions receive into `sink`.
    pub fn new(
        client: Client,
        subscriber: SubscriberClient,
        keys: Keys,
        sink: Arc<dyn NodeSink>,
    ) -> Self {
        let inner = Arc::new(Inner {
            client,
            keys,
            publish: Script::from_lua(PUBLISH),
            history: Script::from_lua(HISTORY),
            seen: Mutex::new(HashMap::new()),
            listening: AtomicBool::new(false),
        });
        let reader = tokio::spawn(read(inner.clone(), subscriber.clone(), sink));
        // Every node listens for node commands from the start; tried until
        // Redis answers (then fred re-subscribes it after reconnects).
        let (listener, subscribed) = (subscriber.clone(), inner.clone());
        tokio::spawn(async move {
            let nodes = subscribed.keys.nodes();
            while let Err(e) = within(listener.subscribe(nodes.clone())).await {
                tracing::debug!(error = %e, "subscribing to node commands; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            subscribed.listening.store(true, Ordering::Release);
        });
        RedisBroker {
            inner,
            subscriber,
            reader,
        }
    }
}

impl Inner {
    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<String, StreamPosition>> {
        // Single inserts and removals: consistent even after a panic.
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands one pub/sub message to the node's sink, once: a publication
    /// the node already delivered (read from history after a reconnect,
    /// then arriving live) is dropped; one of another epoch means Redis
    /// lost the stream: a gap.
    fn deliver(&self, sink: &dyn NodeSink, pubsub: &str, value: &RedisValue) {
        let Some(channel) = self.keys.channel_of(pubsub) else {
            if pubsub == self.keys.nodes() {
                match value.as_bytes().map(serde_json::from_slice::<NodeCommand>) {
                    Some(Ok(command)) => sink.on_node_command(&command),
                    _ => tracing::warn!("unreadable node command"),
                }
            }
            return;
        };
        let Some(message) = value.as_bytes().and_then(wire::parse) else {
            tracing::warn!(channel, "unreadable message on a wsgate pub/sub channel");
            return;
        };
        let (offset, epoch, data) = match message {
            NodeMessage::Control { kind, client } => {
                return sink.on_control(channel, kind, &client);
            }
            NodeMessage::Publication {
                offset,
                epoch,
                data,
            } => (offset, epoch, data),
        };
        {
            let mut seen = self.seen();
            match seen.get_mut(channel) {
                Some(at) if *at.epoch != *epoch => {
                    seen.remove(channel);
                    drop(seen);
                    sink.on_gap(channel);
                    return;
                }
                Some(at) if offset <= at.offset => return,
                Some(at) => at.offset = offset,
                None => {
                    let at = StreamPosition {
                        offset,
                        epoch: epoch.into(),
                    };
                    seen.insert(channel.to_owned(), at);
                }
            }
        }
        let Ok(value) = serde_json::from_slice::<Value>(data) else {
            tracing::warn!(channel, "a publication whose data is not JSON");
            return;
        };
        let p = Publication::new(
            channel.into(),
            offset,
            epoch.into(),
            Bytes::copy_from_slice(data),
            value,
        );
        sink.on_publication(&p);
    }

    /// A page of `channel`'s history, as [`Broker::history`] answers.
    async fn history(
        &self,
        channel: &str,
        since: Option<&StreamPosition>,
        limit: usize,
        history: HistoryPolicy,
    ) -> Result<HistoryPage, BrokerError> {
        let keys = vec![self.keys.meta(channel), self.keys.history(channel)];
        let args: Vec<RedisValue> = vec![
            META_TTL_SECS.into(),
            new_epoch().into(),
            since.map_or(String::new(), |s| s.offset.to_string()).into(),
            (limit.min(i64::MAX as usize) as i64).into(),
        ];
        let out: Vec<RedisValue> =
            within(self.history.evalsha_with_reload(&self.client, keys, args)).await?;
        let bad = || BrokerError::Unavailable("redis: unexpected history reply".into());
        let top = out.first().and_then(RedisValue::as_u64).ok_or_else(bad)?;
        let epoch: Arc<str> = out
            .get(1)
            .and_then(RedisValue::as_str)
            .ok_or_else(bad)?
            .into();
        let now = out.get(2).and_then(RedisValue::as_i64).ok_or_else(bad)?;
        let ttl_ms = history.ttl.as_millis().min(i64::MAX as u128) as i64;
        // Oldest first, without what outlived the TTL or the size.
        let mut kept: Vec<Arc<Publication>> = Vec::with_capacity(out.len().saturating_sub(3));
        for entry in out.iter().skip(3).rev() {
            let Some((offset, millis, data)) = entry.as_bytes().and_then(wire::entry) else {
                tracing::warn!(channel, "unreadable history entry");
                continue;
            };
            if ttl_ms > 0 && now - millis > ttl_ms {
                continue;
            }
            if offset.saturating_add(history.size as u64) <= top {
                continue;
            }
            let Ok(value) = serde_json::from_slice::<Value>(data) else {
                continue;
            };
            kept.push(Publication::new(
                channel.into(),
                offset,
                epoch.clone(),
                Bytes::copy_from_slice(data),
                value,
            ));
        }
        let position = StreamPosition { offset: top, epoch };
        Ok(HistoryPage::select(position, &kept, since, limit))
    }

    /// After the pub/sub connection came back (or the reader fell behind):
    /// every channel the node follows is read from history since the last
    /// publication delivered, and what was missed is delivered in order;
    /// where history no longer has it, the sink is told of the gap.
    async fn resync(&self, sink: &dyn NodeSink, channels: Vec<String>) {
        for channel in channels {
            let Some(at) = self.seen().get(&channel).cloned() else {
                continue;
            };
            match self
                .history(&channel, Some(&at), usize::MAX, ALL_KEPT)
                .await
            {
                Ok(page) if page.complete => {
                    for p in page.publications {
                        {
                            let mut seen = self.seen();
                            let Some(now) = seen.get_mut(&channel) else {
                                break;
                            };
                            if p.offset <= now.offset {
                                continue;
                            }
                            now.offset = p.offset;
                        }
                        sink.on_publication(&p);
                    }
                }
                Ok(_) => {
                    self.seen().remove(&channel);
                    sink.on_gap(&channel);
                }
                Err(e) => {
                    // Redis went again: the next reconnect resyncs.
                    tracing::warn!(channel, error = %e, "resync after reconnect failed");
                    return;
                }
            }
        }
    }
}

/// The node's pub/sub reader: delivers messages in order; after a
/// reconnect, subscribes to every channel again and resyncs them.
async fn read(inner: Arc<Inner>, subscriber: SubscriberClient, sink: Arc<dyn NodeSink>) {
    use tokio::sync::broadcast::error::RecvError;
    let mut messages = subscriber.message_rx();
    let mut reconnects = subscriber.reconnect_rx();
    loop {
        let resync = tokio::select! {
            m = messages.recv() => match m {
                Ok(m) => {
                    inner.deliver(&*sink, &m.channel, &m.value);
                    false
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "redis pub/sub reader fell behind; resyncing from history");
                    true
                }
                Err(RecvError::Closed) => return,
            },
            r = reconnects.recv() => match r {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    if let Err(e) = subscriber.resubscribe_all().await {
                        tracing::warn!(error = %e.details(), "re-subscribing after a reconnect failed");
                    }
                    true
                }
                Err(RecvError::Closed) => return,
            },
        };
        if resync {
            let channels: Vec<String> = subscriber
                .tracked_channels()
                .iter()
                .filter_map(|c| inner.keys.channel_of(c).map(str::to_owned))
                .collect();
            // Channels no longer followed are forgotten here too.
            inner.seen().retain(|c, _| channels.contains(c));
            inner.resync(&*sink, channels).await;
        }
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        // SUBSCRIBE answers once Redis has registered it: from then on
        // nothing published is missed while the connection holds.
        within(self.subscriber.subscribe(self.inner.keys.pubsub(channel))).await?;
        // Where the node starts, so that what a lost connection drops can
        // be read again from history even before the first publication.
        let start = self.inner.history(channel, None, 0, ALL_KEPT).await?;
        self.inner
            .seen()
            .entry(channel.to_owned())
            .or_insert(start.position);
        Ok(())
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        within(self.subscriber.unsubscribe(self.inner.keys.pubsub(channel))).await?;
        self.inner.seen().remove(channel);
        Ok(())
    }

    async fn publish(
        &self,
        channel: &str,
        data: Bytes,
        value: Value,
        history: HistoryPolicy,
    ) -> Result<Arc<Publication>, BrokerError> {
        let keys = vec![
            self.inner.keys.meta(channel),
            self.inner.keys.history(channel),
        ];
        let args: Vec<RedisValue> = vec![
            data.clone().into(),
            (history.size as i64).into(),
            (history.ttl.as_millis().min(i64::MAX as u128) as i64).into(),
            META_TTL_SECS.into(),
            self.inner.keys.pubsub(channel).into(),
            new_epoch().into(),
        ];
        let (offset, epoch): (u64, String) = within(self.inner.publish.evalsha_with_reload(
            &self.inner.client,
            keys,
            args,
        ))
        .await?;
        Ok(Publication::new(
            channel.into(),
            offset,
            epoch.into(),
            data,
            value,
        ))
    }

    async fn history(
        &self,
        channel: &str,
        since: Option<&StreamPosition>,
        limit: usize,
        history: HistoryPolicy,
    ) -> Result<HistoryPage, BrokerError> {
        self.inner.history(channel, since, limit, history).await
    }

    async fn publish_control(
        &self,
        channel: &str,
        kind: ControlKind,
        client: &ClientInfo,
    ) -> Result<(), BrokerError> {
        let message = Bytes::from(wire::control(kind, client));
        let _: i64 = within(
            self.inner
                .client
                .publish(self.inner.keys.pubsub(channel), message),
        )
        .await?;
        Ok(())
    }

    async fn forget(&self, channel: &str) -> Result<(), BrokerError> {
        // Both keys carry the channel as hash tag: one slot, one command.
        let keys = vec![
            self.inner.keys.meta(channel),
            self.inner.keys.history(channel),
        ];
        let _: i64 = within(self.inner.client.del(keys)).await?;
        Ok(())
    }

    async fn to_all_nodes(&self, command: &NodeCommand) -> Result<(), BrokerError> {
        let message = Bytes::from(serde_json::to_vec(command).expect("a command serializes"));
        let _: i64 = within(self.inner.client.publish(self.inner.keys.nodes(), message)).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        // Ready means able to take node commands too.
        if !self.inner.listening.load(Ordering::Acquire) {
            return Err(BrokerError::Unavailable(
                "redis: not yet listening for node commands".into(),
            ));
        }
        let _: String = within(self.inner.client.ping(None)).await?;
        Ok(())
    }
}
