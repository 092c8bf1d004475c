//! [`RedisBroker`]: publications, offsets, epochs and history in Redis, and
//! fan-out between nodes over pub/sub. One Lua script publishes (next
//! offset, history append and trim, `PUBLISH`) so offsets are assigned
//! once for every node; a node `SUBSCRIBE`s to a channel's pub/sub name
//! only while its `ChannelIndex` has subscribers for it.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::scripts::Script;
use fred::types::Value as RedisValue;
use serde_json::Value;
use tokio::task::JoinHandle;
use wsgate_core::broker::{
    Broker, BrokerError, ClientInfo, ControlKind, HistoryPage, HistoryPolicy, NodeSink,
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

pub struct RedisBroker {
    client: Client,
    subscriber: SubscriberClient,
    keys: Keys,
    publish: Script,
    history: Script,
    /// The pub/sub reader and the resubscriber, stopped with the broker.
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

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
        let mut messages = subscriber.message_rx();
        let reader_keys = keys.clone();
        let reader = tokio::spawn(async move {
            loop {
                match messages.recv().await {
                    Ok(m) => deliver(&reader_keys, &*sink, &m.channel, &m.value),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        // The node fell behind Redis by more than the
                        // buffer: those publications are lost to its
                        // subscribers, which catch up from history when
                        // they next see a gap.
                        tracing::error!(missed = n, "redis pub/sub reader fell behind");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        // After a reconnect, the node's channels are subscribed again.
        let resubscriber = subscriber.manage_subscriptions();
        RedisBroker {
            client,
            subscriber,
            keys,
            publish: Script::from_lua(PUBLISH),
            history: Script::from_lua(HISTORY),
            tasks: vec![reader, resubscriber],
        }
    }
}

/// Hands one pub/sub message to the node's sink.
fn deliver(keys: &Keys, sink: &dyn NodeSink, pubsub: &str, value: &RedisValue) {
    let Some(channel) = keys.channel_of(pubsub) else {
        return;
    };
    let Some(message) = value.as_bytes().and_then(wire::parse) else {
        tracing::warn!(channel, "unreadable message on a wsgate pub/sub channel");
        return;
    };
    match message {
        NodeMessage::Publication {
            offset,
            epoch,
            data,
        } => {
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
        NodeMessage::Control { kind, client } => sink.on_control(channel, kind, &client),
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        // SUBSCRIBE answers once Redis has registered it: from then on
        // nothing published is missed.
        within(self.subscriber.subscribe(self.keys.pubsub(channel))).await
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        within(self.subscriber.unsubscribe(self.keys.pubsub(channel))).await
    }

    async fn publish(
        &self,
        channel: &str,
        data: Bytes,
        value: Value,
        history: HistoryPolicy,
    ) -> Result<Arc<Publication>, BrokerError> {
        let keys = vec![self.keys.meta(channel), self.keys.history(channel)];
        let args: Vec<RedisValue> = vec![
            data.clone().into(),
            (history.size as i64).into(),
            (history.ttl.as_millis().min(i64::MAX as u128) as i64).into(),
            META_TTL_SECS.into(),
            self.keys.pubsub(channel).into(),
            new_epoch().into(),
        ];
        let (offset, epoch): (u64, String) =
            within(self.publish.evalsha_with_reload(&self.client, keys, args)).await?;
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
            if offset + (history.size as u64) <= top {
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
        let (publications, complete) = match since {
            Some(s) if s.epoch == position.epoch => {
                let first_needed = s.offset.saturating_add(1);
                let complete =
                    s.offset >= top || kept.first().is_some_and(|p| p.offset <= first_needed);
                let after: Vec<_> = kept
                    .into_iter()
                    .filter(|p| p.offset > s.offset)
                    .take(limit)
                    .collect();
                (after, complete && s.offset <= top)
            }
            Some(_) => (Vec::new(), false),
            None => {
                let skip = kept.len().saturating_sub(limit);
                (kept.into_iter().skip(skip).collect(), true)
            }
        };
        Ok(HistoryPage {
            position,
            publications,
            complete,
        })
    }

    async fn publish_control(
        &self,
        channel: &str,
        kind: ControlKind,
        client: &ClientInfo,
    ) -> Result<(), BrokerError> {
        let message = Bytes::from(wire::control(kind, client));
        let _: i64 = within(self.client.publish(self.keys.pubsub(channel), message)).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        let _: String = within(self.client.ping(None)).await?;
        Ok(())
    }
}
