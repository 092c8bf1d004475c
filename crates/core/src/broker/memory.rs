//! The in-process broker and presence: one node, history in memory. Its
//! epoch changes on restart, so clients know recovery is impossible.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::Value;
use tokio::time::Instant;

use super::{
    Broker, BrokerError, ClientInfo, ControlKind, HistoryPage, HistoryPolicy, NodeCommand,
    NodeSink, Presence,
};
use crate::channels::publication::{Publication, StreamPosition};

fn new_epoch() -> Arc<str> {
    // 8 random hex characters: enough to tell two lifetimes of a stream apart.
    let id = uuid::Uuid::new_v4();
    id.simple().to_string()[..8].into()
}

#[derive(Default)]
struct Shard {
    logs: HashMap<Arc<str>, ChannelLog>,
    /// Channels the node subscribed to: only these reach the sink. Kept
    /// apart from `streams` so a subscription alone costs no history state.
    subscribed: HashSet<Arc<str>>,
    /// When the shard's histories are next expired as a whole (see
    /// [`Shard::sweep`]).
    next_sweep: Option<Instant>,
}

/// How often each shard expires the histories of all its channels.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Shard {
    /// Expires every channel's history once per [`SWEEP_EVERY`]. A
    /// channel's own `publish` and `history` expire it too, but a channel
    /// nobody touches again (a finished run's `thread:<id>`) would keep its
    /// publications forever: the soak found 45 KiB kept per agent run.
    /// Amortized over publications so that the broker needs no task of its
    /// own; O(channels in the shard) once a second.
    fn sweep(&mut self, now: Instant) {
        if self.next_sweep.is_some_and(|at| now < at) {
            return;
        }
        self.next_sweep = Some(now + SWEEP_EVERY);
        for log in self.logs.values_mut() {
            log.expire(log.policy, now);
        }
    }
}

struct ChannelLog {
    name: Arc<str>,
    offset: u64,
    epoch: Arc<str>,
    kept: VecDeque<Arc<Publication>>,
    /// The namespace's history policy as of the last publication, for the
    /// sweep.
    policy: HistoryPolicy,
}

impl ChannelLog {
    fn new(name: Arc<str>, epoch: Arc<str>) -> Self {
        ChannelLog {
            name,
            offset: 0,
            epoch,
            kept: VecDeque::new(),
            policy: HistoryPolicy::default(),
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
        if self.kept.is_empty() && self.kept.capacity() > 0 {
            // An emptied deque keeps its buffer: give it back, so that an
            // idle channel costs its name and position only.
            self.kept = VecDeque::new();
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
    sink: Arc<dyn NodeSink>,
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
    pub fn new(sink: Arc<dyn NodeSink>) -> Self {
        MemoryBroker {
            epoch: new_epoch(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            sink,
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
        shard.subscribed.contains(channel)
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
        if !shard.logs.contains_key(channel) {
            let name: Arc<str> = channel.into();
            shard
                .logs
                .insert(name.clone(), ChannelLog::new(name, self.epoch.clone()));
        }
        let stream = shard.logs.get_mut(channel).expect("inserted above");
        stream.offset += 1;
        let publication = Publication::new(
            stream.name.clone(),
            stream.offset,
            stream.epoch.clone(),
            data,
            value,
        );
        stream.policy = history;
        if history.size > 0 {
            stream.kept.push_back(publication.clone());
            stream.expire(history, publication.published_at);
        }
        // Delivered under the shard lock: the next publication of this
        // channel cannot overtake this one.
        if delivers {
            self.sink.on_publication(&publication);
        }
        shard.sweep(publication.published_at);
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
            self.sink.on_control(channel, kind, client);
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
        let Some(stream) = shard.logs.get_mut(channel) else {
            // A channel nobody published to yet: position 0. Nothing is
            // stored, so subscribing to many names costs no memory.
            let position = StreamPosition {
                offset: 0,
                epoch: self.epoch.clone(),
            };
            return Ok(HistoryPage::select(position, &[], since, limit));
        };
        stream.expire(history, Instant::now());
        let position = stream.position();
        let kept = stream.kept.make_contiguous();
        Ok(HistoryPage::select(position, kept, since, limit))
    }

    async fn to_all_nodes(&self, command: &NodeCommand) -> Result<(), BrokerError> {
        // One node: this one.
        self.sink.on_node_command(command);
        Ok(())
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn forget(&self, channel: &str) -> Result<(), BrokerError> {
        self.shard(channel).logs.remove(channel);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::contract::Collected;
    use serde_json::json;

    /// A channel nobody touches again gives its expired publications back
    /// when any channel of its shard is published to: before the sweep, a
    /// finished run's history stayed for good (the soak's leak).
    #[tokio::test(start_paused = true)]
    async fn expired_history_of_untouched_channels_is_swept() {
        let broker = MemoryBroker::new(Arc::new(Collected::default()));
        let h = HistoryPolicy {
            size: 100,
            ttl: std::time::Duration::from_secs(5),
        };
        let idle = "thread:idle";
        let busy = (0..)
            .map(|i| format!("busy:{i}"))
            .find(|c| shard_of(c, SHARDS) == shard_of(idle, SHARDS))
            .unwrap();
        for i in 0..20 {
            broker
                .publish(idle, Bytes::new(), json!(i), h)
                .await
                .unwrap();
        }
        let kept = |b: &MemoryBroker| b.shard(idle).logs[idle].kept.capacity();
        assert!(kept(&broker) >= 20);
        tokio::time::sleep(std::time::Duration::from_secs(6)).await;
        broker
            .publish(&busy, Bytes::new(), json!(0), h)
            .await
            .unwrap();
        assert_eq!(kept(&broker), 0, "the idle channel's buffer is freed");
        // Its position stays: the next publication goes on from it.
        let p = broker
            .publish(idle, Bytes::new(), json!(20), h)
            .await
            .unwrap();
        assert_eq!(p.offset, 21);
    }
}
