//! The channel → subscribers index, the node's broker subscriptions that
//! follow it, and the fan-out of publications and join/leave.
//!
//! Subscribers are found by channel name in a sharded map, never by scanning
//! connections. Each subscriber gets a clone of the publication's pre-encoded
//! bytes pushed into its bounded outbound queue; a publisher never waits on a
//! subscriber (a full queue closes that one connection with 4009). Only a
//! subscriber catching up on what it missed waits, for its own reader.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use tokio::sync::Notify;
use wsgate_protocol::{CloseCode, Encoding, ServerFrame};

use crate::broker::{
    shard_of, Broker, BrokerError, ClientInfo, ControlKind, HistoryPage, HistoryPolicy,
    NodeCommand, NodeSink,
};
use crate::channels::publication::{Filter, Publication, StreamPosition};
use crate::connection::outbound::{OutFrame, Outbound, Pushed};
use crate::metrics::Metrics;

/// How a subscriber wants publications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameFormat {
    /// `message` frames in the connection's encoding.
    Envelope(Encoding),
    /// Only `data`, as a raw JSON text frame (read-only streams).
    Raw,
    /// The publication itself ([`OutFrame::Publication`]), for a consumer
    /// in the server (a GraphQL subscription, resolved once for all its
    /// identical subscribers): not a delivery to a client, so not counted
    /// as one, and no join/leave.
    Publication,
}

/// Publications the broker is asked for at a time while a subscriber
/// catches up: a page never holds more than this many in memory, however
/// much was missed.
pub const BACKLOG_PAGE: usize = 64;

/// Publications that arrived while the subscriber was not live yet.
#[derive(Default)]
struct Pending {
    publications: Vec<Arc<Publication>>,
    bytes: usize,
    /// More arrived than `bytes` may hold (the queue limit): the buffer was
    /// emptied, and what it dropped is read from history again.
    overflowed: bool,
}

/// Why a subscription could not catch up without a gap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatchUpError {
    /// History no longer holds publications the subscriber still needs
    /// (evicted, expired, or another epoch) while it was reading slowly.
    #[error("publications needed to catch up have left history")]
    Gap,
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Where a catching-up subscriber reads what it missed: the channel's
/// history in the broker.
pub struct HistorySource<'a> {
    pub broker: &'a dyn Broker,
    pub channel: &'a str,
    pub history: HistoryPolicy,
}

/// One connection's subscription to one channel.
pub struct Subscriber {
    pub outbound: Arc<Outbound>,
    pub format: FrameFormat,
    pub filter: Option<Filter>,
    /// The connection this subscription belongs to, so join/leave about it
    /// (which may come from another node) is not sent to it. `None` from
    /// [`Subscriber::new`]: such a subscriber is told about itself.
    pub connection_id: Option<Arc<str>>,
    /// False while the subscribe reply (and any recovered backlog) is being
    /// sent; publications arriving meanwhile wait in `pending`.
    live: AtomicBool,
    /// `None` once live. Bounded by the queue limit: a backlog paced to a
    /// slow reader must not let live publications pile up without bound.
    pending: Mutex<Option<Pending>>,
    /// Set on unsubscribe so a late subscribe task sends nothing.
    closed: AtomicBool,
}

impl Subscriber {
    /// A subscriber that buffers until [`Subscriber::go_live`] or
    /// [`Subscriber::catch_up`].
    pub fn new(outbound: Arc<Outbound>, format: FrameFormat, filter: Option<Filter>) -> Arc<Self> {
        Arc::new(Subscriber::build(outbound, format, filter, None))
    }

    /// [`Subscriber::new`] for connection `connection_id`: join/leave about
    /// that connection is not sent to this subscriber.
    pub fn for_connection(
        outbound: Arc<Outbound>,
        format: FrameFormat,
        filter: Option<Filter>,
        connection_id: Arc<str>,
    ) -> Arc<Self> {
        Arc::new(Subscriber::build(
            outbound,
            format,
            filter,
            Some(connection_id),
        ))
    }

    fn build(
        outbound: Arc<Outbound>,
        format: FrameFormat,
        filter: Option<Filter>,
        connection_id: Option<Arc<str>>,
    ) -> Self {
        Subscriber {
            outbound,
            format,
            filter,
            connection_id,
            live: AtomicBool::new(false),
            pending: Mutex::new(Some(Pending::default())),
            closed: AtomicBool::new(false),
        }
    }

    fn frame(&self, p: &Arc<Publication>) -> OutFrame {
        match self.format {
            FrameFormat::Envelope(encoding) => OutFrame::Shared(p.frame(encoding).clone()),
            FrameFormat::Raw => OutFrame::Shared(p.raw_frame().clone()),
            FrameFormat::Publication => OutFrame::Publication(p.clone()),
        }
    }

    fn wants(&self, p: &Publication) -> bool {
        self.filter.as_ref().is_none_or(|f| p.matches(f))
    }

    fn push(&self, p: &Arc<Publication>) {
        // On overflow the queue requests close 4009 itself.
        self.outbound.push_published(self.frame(p), p.published_at);
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Option<Pending>> {
        // Every critical section leaves the buffer consistent (single moves).
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `p` (or keeps it until the subscriber is live) unless the
    /// filter excludes it; whether that was a delivery to a client.
    fn offer(&self, p: &Arc<Publication>) -> bool {
        if !self.wants(p) {
            return false;
        }
        let delivery = self.format != FrameFormat::Publication;
        if self.live.load(Ordering::Acquire) {
            self.push(p);
            return delivery;
        }
        let mut pending = self.lock_pending();
        match pending.as_mut() {
            Some(buffer) if buffer.overflowed => {}
            Some(buffer) => {
                let len = self.frame(p).len();
                if buffer.bytes + len > self.outbound.limit() {
                    // The catch-up reads these from history again.
                    *buffer = Pending {
                        overflowed: true,
                        ..Pending::default()
                    };
                } else {
                    buffer.bytes += len;
                    buffer.publications.push(p.clone());
                }
            }
            None => self.push(p),
        }
        delivery
    }

    /// Sends `reply`, then `backlog`, then whatever arrived meanwhile with an
    /// offset after `last_offset` — in that order, without duplicates — and
    /// switches to direct delivery, all at once. For small or empty backlogs
    /// (raw streams); a recovered backlog goes through
    /// [`Subscriber::catch_up`], which waits for the reader. Publications
    /// dropped by a pending buffer that overflowed cannot be recovered here:
    /// the connection is closed with 4009, as a slow consumer would be.
    pub fn go_live(
        &self,
        reply: Option<OutFrame>,
        backlog: &[Arc<Publication>],
        mut last_offset: u64,
    ) {
        let mut pending = self.lock_pending();
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        if let Some(reply) = reply {
            self.outbound.push(reply);
        }
        for p in backlog {
            if self.wants(p) {
                self.push(p);
            }
            last_offset = last_offset.max(p.offset);
        }
        let buffer = pending.take().unwrap_or_default();
        if buffer.overflowed {
            self.outbound.close(CloseCode::SlowConsumer);
        }
        // Filtered on arrival already.
        for p in buffer.publications {
            if p.offset > last_offset {
                self.push(&p);
                last_offset = p.offset;
            }
        }
        self.live.store(true, Ordering::Release);
    }

    /// Sends `reply`, then what `first` (a history page read after this
    /// subscriber was registered) and the rest of history hold up to
    /// `first`'s position, then whatever arrived meanwhile — in that order,
    /// without duplicates — and switches to direct delivery.
    ///
    /// Every frame waits for room in the outbound queue, and history is read
    /// [`BACKLOG_PAGE`] publications at a time, so a backlog of any size
    /// reaches a client that reads it, at the client's pace. If the pending
    /// buffer overflows meanwhile, what it dropped is read from history
    /// again, until the switch to live delivery loses nothing.
    ///
    /// `first` holds the publications after the subscriber's `recover`
    /// offset (or nothing, to start at its position); on a `Gap` or broker
    /// error the caller ends the subscription.
    pub async fn catch_up(
        &self,
        reply: OutFrame,
        first: HistoryPage,
        source: &HistorySource<'_>,
    ) -> Result<(), CatchUpError> {
        let budget = self.outbound.paced_budget();
        if self.is_closed() || self.outbound.push_paced(reply, budget).await != Pushed::Queued {
            return Ok(());
        }
        let epoch = first.position.epoch;
        let target = first.position.offset;
        // Without a backlog, start at the position. With one, right before
        // its first publication: where recovery was incomplete the reply
        // said so (`recovered: false`), and the rest follows without a gap.
        let mut last = match first.publications.first() {
            Some(p) => p.offset.saturating_sub(1),
            None => target,
        };
        if !self.send_paced(first.publications, &mut last, budget).await {
            return Ok(());
        }
        if last < target
            && !self
                .send_history(source, &epoch, &mut last, Some(target), budget)
                .await?
        {
            return Ok(());
        }
        loop {
            let buffered = {
                let mut pending = self.lock_pending();
                if self.is_closed() {
                    return Ok(());
                }
                match pending.as_mut() {
                    Some(buffer) if buffer.overflowed || !buffer.publications.is_empty() => {
                        std::mem::take(buffer)
                    }
                    _ => {
                        // Nothing buffered and nothing dropped: from here on
                        // `deliver` pushes directly, after everything sent.
                        *pending = None;
                        self.live.store(true, Ordering::Release);
                        return Ok(());
                    }
                }
            };
            let sent = if buffered.overflowed {
                // Publications were dropped since `last`; history has them,
                // and everything arriving from now on is buffered again.
                self.send_history(source, &epoch, &mut last, None, budget)
                    .await?
            } else {
                self.send_paced(buffered.publications, &mut last, budget)
                    .await
            };
            if !sent {
                return Ok(());
            }
        }
    }

    /// Pushes the publications after `last` that the filter wants, each
    /// once there is room, advancing `last`; false once there is no point
    /// going on (unsubscribed, or the connection is closing).
    async fn send_paced(
        &self,
        publications: Vec<Arc<Publication>>,
        last: &mut u64,
        budget: usize,
    ) -> bool {
        for p in publications {
            if p.offset <= *last {
                continue;
            }
            *last = p.offset;
            if !self.wants(&p) {
                continue;
            }
            if self.is_closed() {
                return false;
            }
            // No latency sample: a recovered publication's age says nothing
            // about fan-out.
            if self.outbound.push_paced(self.frame(&p), budget).await != Pushed::Queued {
                return false;
            }
        }
        !self.is_closed()
    }

    /// Reads history after `last` page by page and sends it paced, up to
    /// `until` or, without it, up to the stream's position when a page is
    /// read. A page that is not complete means publications after `last`
    /// left history before this reader got to them: a gap.
    async fn send_history(
        &self,
        source: &HistorySource<'_>,
        epoch: &Arc<str>,
        last: &mut u64,
        until: Option<u64>,
        budget: usize,
    ) -> Result<bool, CatchUpError> {
        loop {
            let since = StreamPosition {
                offset: *last,
                epoch: epoch.clone(),
            };
            let page = source
                .broker
                .history(source.channel, Some(&since), BACKLOG_PAGE, source.history)
                .await?;
            if !page.complete {
                return Err(CatchUpError::Gap);
            }
            let head = until.unwrap_or(page.position.offset);
            let empty = page.publications.is_empty();
            if !self.send_paced(page.publications, last, budget).await {
                return Ok(false);
            }
            // An empty complete page: nothing after `last` exists yet.
            if empty || *last >= head {
                return Ok(true);
            }
        }
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

type Shard = RwLock<HashMap<Arc<str>, Vec<Arc<Subscriber>>>>;

/// What the node last heard from the broker about one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeSubscription {
    Unsubscribed,
    Subscribed,
    /// A call failed or was abandoned half-way: the broker may be either
    /// way, so the next reconcile asks again (both calls are idempotent).
    Unknown,
}

#[derive(Debug, Clone, Copy)]
struct NodeState {
    subscription: NodeSubscription,
    /// A reconcile is talking to the broker about the channel; others wait
    /// for it rather than send calls that could overtake each other.
    busy: bool,
}

const IDLE: NodeState = NodeState {
    subscription: NodeSubscription::Unsubscribed,
    busy: false,
};

/// The node's broker subscriptions of one shard's channels. Only channels
/// subscribed, unknown or busy have an entry.
///
/// No lock is held across a broker call: the `busy` flag stands for one,
/// per channel (so a slow broker holds up only that channel), waiters sleep
/// on `settled`, and a reconcile dropped half-way still clears it ([`Busy`]).
#[derive(Default)]
struct NodeShard {
    channels: Mutex<HashMap<Arc<str>, NodeState>>,
    /// Woken whenever a reconcile of this shard ends; waiters for other
    /// channels of the shard just check again.
    settled: Notify,
}

impl NodeShard {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, NodeState>> {
        // Every critical section leaves the map consistent (single inserts
        // and updates), so a poisoned lock is still usable.
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Ends a reconcile's broker call, also when its future is dropped half-way:
/// records the outcome (`Unknown` unless told otherwise) and wakes waiters.
struct Busy<'a> {
    shard: &'a NodeShard,
    channel: &'a str,
    outcome: NodeSubscription,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        {
            let mut channels = self.shard.lock();
            if self.outcome == NodeSubscription::Unsubscribed {
                channels.remove(self.channel);
            } else if let Some(state) = channels.get_mut(self.channel) {
                *state = NodeState {
                    subscription: self.outcome,
                    busy: false,
                };
            }
        }
        self.shard.settled.notify_waiters();
    }
}

/// The node's channel → subscribers index. It is the node's [`NodeSink`]
/// sink, and it decides when the node subscribes to a channel at the broker:
/// while, and only while, the channel has a local subscriber.
///
/// # Node subscriptions
///
/// Use [`ChannelIndex::subscribe`] and [`ChannelIndex::unsubscribe`], or
/// their parts:
///
/// - after [`ChannelIndex::add`], every subscriber (not only the first)
///   awaits [`ChannelIndex::reconcile`] before it reads the channel's
///   position: only then does the node receive the channel, and a later
///   subscriber must wait for a subscribe the first one started;
/// - after [`ChannelIndex::remove`] returned true (that was the last local
///   subscriber), call `reconcile` — from a spawned task where the caller
///   cannot wait (`Drop`).
///
/// `reconcile` does not trust the caller's view of first or last: it
/// compares what the index holds *now* with what the broker was last told,
/// and one call per channel at a time talks to the broker. So when the last
/// subscriber leaves while a new one arrives, whichever reconcile runs last
/// sees the final index and the calls cannot overtake each other: the node
/// ends subscribed exactly when the channel has subscribers.
pub struct ChannelIndex {
    shards: Box<[Shard]>,
    node: Box<[NodeShard]>,
    metrics: Arc<Metrics>,
}

const SHARDS: usize = 64;

impl ChannelIndex {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        ChannelIndex {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            node: (0..SHARDS).map(|_| NodeShard::default()).collect(),
            metrics,
        }
    }

    fn shard(&self, channel: &str) -> &Shard {
        &self.shards[shard_of(channel, SHARDS)]
    }

    /// Registers `subscriber`; true when it is the channel's first local
    /// subscriber. The node receives the channel only after
    /// [`ChannelIndex::reconcile`].
    pub fn add(&self, channel: &str, subscriber: Arc<Subscriber>) -> bool {
        let mut shard = self
            .shard(channel)
            .write()
            .unwrap_or_else(|e| e.into_inner());
        match shard.get_mut(channel) {
            Some(list) => {
                list.push(subscriber);
                false
            }
            None => {
                shard.insert(channel.into(), vec![subscriber]);
                true
            }
        }
    }

    /// Closes `subscriber` and takes it out; true when it was there and was
    /// the channel's last local subscriber (then call
    /// [`ChannelIndex::reconcile`]). Removing twice is harmless.
    pub fn remove(&self, channel: &str, subscriber: &Arc<Subscriber>) -> bool {
        // Closed before the lock is taken: a `subscribe` that adds it after
        // this finds it closed and takes it out again.
        subscriber.close();
        let mut shard = self
            .shard(channel)
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let Some(list) = shard.get_mut(channel) else {
            return false;
        };
        list.retain(|s| !Arc::ptr_eq(s, subscriber));
        if list.is_empty() {
            shard.remove(channel);
            return true;
        }
        false
    }

    fn has_subscribers(&self, channel: &str) -> bool {
        self.shard(channel)
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(channel)
    }

    /// Makes the node's broker subscription to `channel` follow the index:
    /// subscribed when it has local subscribers, unsubscribed when not. Waits
    /// for a reconcile of the channel already under way, then checks again.
    /// On an error the node's subscription is unknown and the next
    /// reconcile asks the broker again; a subscriber that needed it should
    /// be removed (see [`ChannelIndex::subscribe`]).
    pub async fn reconcile(&self, broker: &dyn Broker, channel: &str) -> Result<(), BrokerError> {
        let node = &self.node[shard_of(channel, SHARDS)];
        let subscribe = loop {
            let notified = {
                let mut channels = node.lock();
                let state = channels.get(channel).copied().unwrap_or(IDLE);
                if !state.busy {
                    let wanted = self.has_subscribers(channel);
                    let want = if wanted {
                        NodeSubscription::Subscribed
                    } else {
                        NodeSubscription::Unsubscribed
                    };
                    if state.subscription == want {
                        return Ok(());
                    }
                    channels.insert(
                        channel.into(),
                        NodeState {
                            subscription: state.subscription,
                            busy: true,
                        },
                    );
                    break wanted;
                }
                // Created under the lock, so the reconcile that ends next
                // (it needs this lock first) wakes it.
                node.settled.notified()
            };
            notified.await;
        };
        let mut busy = Busy {
            shard: node,
            channel,
            outcome: NodeSubscription::Unknown,
        };
        if subscribe {
            broker.subscribe(channel).await?;
            busy.outcome = NodeSubscription::Subscribed;
        } else {
            broker.unsubscribe(channel).await?;
            busy.outcome = NodeSubscription::Unsubscribed;
        }
        Ok(())
    }

    /// Registers `subscriber` and returns once the node receives `channel`.
    /// On an error the subscriber is taken out again. A subscriber closed
    /// meanwhile (unsubscribed before this ran) is not left in the index.
    pub async fn subscribe(
        &self,
        broker: &dyn Broker,
        channel: &str,
        subscriber: Arc<Subscriber>,
    ) -> Result<(), BrokerError> {
        self.add(channel, subscriber.clone());
        if subscriber.is_closed() {
            // A `remove` that ran before the `add` did not find it.
            return self.unsubscribe(broker, channel, &subscriber).await;
        }
        if let Err(e) = self.reconcile(broker, channel).await {
            // Cleanup against a broker that just failed: its own error
            // adds nothing to `e`.
            let _ = self.unsubscribe(broker, channel, &subscriber).await;
            return Err(e);
        }
        Ok(())
    }

    /// Closes and removes `subscriber`; the last one out unsubscribes the
    /// node from `channel`.
    pub async fn unsubscribe(
        &self,
        broker: &dyn Broker,
        channel: &str,
        subscriber: &Arc<Subscriber>,
    ) -> Result<(), BrokerError> {
        if self.remove(channel, subscriber) {
            self.reconcile(broker, channel).await?;
        }
        Ok(())
    }

    /// Sends a control frame to the channel's envelope subscribers that
    /// `skip` does not exclude, encoded by `make` at most once per encoding.
    fn broadcast(
        &self,
        channel: &str,
        skip: impl Fn(&Subscriber) -> bool,
        make: impl Fn(Encoding) -> Bytes,
    ) {
        let shard = self
            .shard(channel)
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let Some(list) = shard.get(channel) else {
            return;
        };
        let mut json = None;
        let mut msgpack = None;
        for s in list {
            if skip(s) {
                continue;
            }
            let frame = match s.format {
                FrameFormat::Envelope(Encoding::Json) => {
                    OutFrame::Text(json.get_or_insert_with(|| make(Encoding::Json)).clone())
                }
                FrameFormat::Envelope(Encoding::Msgpack) => OutFrame::Binary(
                    msgpack
                        .get_or_insert_with(|| make(Encoding::Msgpack))
                        .clone(),
                ),
                FrameFormat::Raw | FrameFormat::Publication => continue,
            };
            s.outbound.push(frame);
        }
    }
}

impl NodeSink for ChannelIndex {
    fn on_publication(&self, publication: &Arc<Publication>) {
        let shard = self
            .shard(&publication.channel)
            .read()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(list) = shard.get(&*publication.channel) {
            let taken: u64 = list.iter().map(|s| u64::from(s.offer(publication))).sum();
            // One counter update per publication, not per delivery.
            self.metrics.deliveries.inc_by(taken);
        }
    }

    /// The `join`/`leave` frame to every
    /// local subscriber but those of the connection it is about (by id: the
    /// event may come from another node, where its outbound is unknown).
    fn on_control(&self, channel: &str, kind: ControlKind, client: &ClientInfo) {
        let payload = serde_json::json!({
            "channel": channel,
            "user": &*client.user,
            "connection_id": &*client.connection_id,
        });
        self.broadcast(
            channel,
            |s| s.connection_id.as_deref() == Some(&*client.connection_id),
            |encoding| ServerFrame::new(kind.as_str(), None, &payload).encode(encoding),
        );
    }

    /// Closes every local subscriber's connection with 4009, as a
    /// subscription that cannot catch up is: the client reconnects,
    /// resubscribes with `recover` and is told `recovered: false` if the
    /// missed publications are gone, instead of silently missing them.
    fn on_node_command(&self, _: &NodeCommand) {
        // Node commands are for the node's connections, not its channels:
        // `node::NodeRouter` sends them to the hub.
    }

    fn on_gap(&self, channel: &str) {
        let shard = self
            .shard(channel)
            .read()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(list) = shard.get(channel) {
            tracing::warn!(channel, subscribers = list.len(), "publications lost by the broker; closing the channel's subscribers (4009) to recover");
            for s in list {
                s.outbound.close(CloseCode::SlowConsumer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filtered_out_subscribers_get_nothing_and_are_not_counted() {
        let metrics = Arc::new(Metrics::register(&mut Default::default()));
        let index = ChannelIndex::new(metrics.clone());
        let all = Arc::new(Outbound::new(1 << 16));
        let critical_only = Arc::new(Outbound::new(1 << 16));
        let filter = Filter::Exact(json!({"severity": "critical"}).as_object().unwrap().clone());
        for (outbound, filter) in [(&all, None), (&critical_only, Some(filter))] {
            let s = Subscriber::new(outbound.clone(), FrameFormat::Raw, filter);
            s.go_live(None, &[], 0);
            index.add("events", s);
        }
        let data = json!({"severity": "info"});
        let p = Publication::new(
            "events".into(),
            1,
            "e".into(),
            Bytes::from(data.to_string()),
            data,
        );
        index.on_publication(&p);
        assert_eq!(all.take().0.len(), 1);
        assert!(critical_only.take().0.is_empty());
        assert_eq!(metrics.deliveries.get(), 1);
    }

    use crate::broker::MemoryBroker;

    const LIMIT: usize = 4096;

    struct Setup {
        index: Arc<ChannelIndex>,
        broker: Arc<MemoryBroker>,
        outbound: Arc<Outbound>,
        subscriber: Arc<Subscriber>,
        history: HistoryPolicy,
    }

    fn setup(history_size: usize) -> Setup {
        let metrics = Arc::new(Metrics::register(&mut Default::default()));
        let index = Arc::new(ChannelIndex::new(metrics));
        let broker = Arc::new(MemoryBroker::new(index.clone()));
        let outbound = Arc::new(Outbound::new(LIMIT));
        let subscriber = Subscriber::new(
            outbound.clone(),
            FrameFormat::Envelope(Encoding::Json),
            None,
        );
        let history = HistoryPolicy {
            size: history_size,
            ttl: std::time::Duration::ZERO,
        };
        Setup {
            index,
            broker,
            outbound,
            subscriber,
            history,
        }
    }

    impl Setup {
        /// Registers the subscriber as a session does, so the node
        /// receives the channel.
        async fn subscribe(&self) {
            self.index
                .subscribe(&*self.broker, "ch", self.subscriber.clone())
                .await
                .unwrap();
        }

        /// A publication whose frame is about 500 bytes: eight of them
        /// exceed the queue.
        async fn publish(&self, n: u64) {
            let data = json!({"n": n, "pad": "x".repeat(400)});
            self.broker
                .publish("ch", Bytes::from(data.to_string()), data, self.history)
                .await
                .unwrap();
        }

        /// Runs `catch_up` in a task, as the subscribe command does.
        fn spawn_catch_up(
            &self,
            first: HistoryPage,
        ) -> tokio::task::JoinHandle<Result<(), CatchUpError>> {
            let (subscriber, broker, history) =
                (self.subscriber.clone(), self.broker.clone(), self.history);
            tokio::spawn(async move {
                let source = HistorySource {
                    broker: &*broker,
                    channel: "ch",
                    history,
                };
                let reply = OutFrame::Text(Bytes::from_static(b"{\"type\":\"subscribed\"}"));
                subscriber.catch_up(reply, first, &source).await
            })
        }

        /// Drains the queue like a transport that reads slowly, until the
        /// task ends; the offsets of the messages, `0` for the reply.
        async fn read_until_done(
            &self,
            task: &tokio::task::JoinHandle<Result<(), CatchUpError>>,
            got: &mut Vec<u64>,
        ) {
            loop {
                let (frames, close) = self.outbound.take();
                assert_eq!(close, None, "never overflows");
                got.extend(frames.iter().map(offset_of));
                if task.is_finished() && !self.outbound.has_frames() {
                    return;
                }
                tokio::task::yield_now().await;
            }
        }
    }

    impl Setup {
        /// The first page of a recovery from offset 0 of the current epoch.
        async fn backlog_from_start(&self, limit: usize) -> HistoryPage {
            let now = self
                .broker
                .history("ch", None, 0, self.history)
                .await
                .unwrap();
            let since = StreamPosition {
                offset: 0,
                epoch: now.position.epoch,
            };
            self.broker
                .history("ch", Some(&since), limit, self.history)
                .await
                .unwrap()
        }
    }

    fn offset_of(f: &OutFrame) -> u64 {
        let OutFrame::Shared(f) = f else { return 0 };
        let v: serde_json::Value = serde_json::from_slice(f.bytes()).unwrap();
        v["payload"]["offset"].as_u64().unwrap()
    }

    #[tokio::test]
    async fn a_backlog_bigger_than_the_queue_is_paced_and_overflowed_pending_refetched() {
        let t = setup(100);
        for n in 1..=10 {
            t.publish(n).await;
        }
        t.subscribe().await;
        let first = t.backlog_from_start(4).await;
        assert!(first.complete);
        let task = t.spawn_catch_up(first);
        tokio::task::yield_now().await;
        assert!(!task.is_finished(), "waits for the reader");
        // Live publications meanwhile: more than the pending buffer holds.
        for n in 11..=30 {
            t.publish(n).await;
        }
        assert!(
            t.subscriber.lock_pending().as_ref().unwrap().overflowed,
            "the buffer gave up and will refetch"
        );
        let mut got = Vec::new();
        t.read_until_done(&task, &mut got).await;
        task.await.unwrap().unwrap();
        // Live now: the next publication goes straight to the queue.
        t.publish(31).await;
        got.extend(t.outbound.take().0.iter().map(offset_of));
        let expected: Vec<u64> = std::iter::once(0).chain(1..=31).collect();
        assert_eq!(got, expected, "reply, backlog, live: in order, once each");
    }

    #[tokio::test]
    async fn a_refetch_that_history_cannot_serve_is_a_gap() {
        let t = setup(5);
        t.subscribe().await;
        let first = t.broker.history("ch", None, 0, t.history).await.unwrap();
        // A queue already over the paced budget holds the reply back.
        t.outbound
            .push(OutFrame::Text(Bytes::from(vec![b' '; LIMIT / 2 + 1])));
        let task = t.spawn_catch_up(first);
        tokio::task::yield_now().await;
        for n in 1..=20 {
            t.publish(n).await;
        }
        let mut got = Vec::new();
        t.read_until_done(&task, &mut got).await;
        assert_eq!(task.await.unwrap(), Err(CatchUpError::Gap));
    }

    #[tokio::test]
    async fn catch_up_sends_nothing_after_unsubscribe() {
        let t = setup(100);
        for n in 1..=10 {
            t.publish(n).await;
        }
        t.subscribe().await;
        let first = t.backlog_from_start(BACKLOG_PAGE).await;
        let task = t.spawn_catch_up(first);
        tokio::task::yield_now().await;
        t.index.remove("ch", &t.subscriber);
        let mut got = Vec::new();
        t.read_until_done(&task, &mut got).await;
        task.await.unwrap().unwrap();
        assert!(got.len() < 11, "stopped early: {got:?}");
        t.publish(11).await;
        assert!(t.outbound.take().0.is_empty());
    }

    /// Node subscriptions and join/leave: the index against a broker whose
    /// subscribe/unsubscribe calls are recorded and slowed down, on paused
    /// time, so reconciles interleave the same way every run.
    mod node {
        use super::*;
        use crate::broker::{ClientInfo, ControlKind};
        use async_trait::async_trait;
        use serde_json::Value;
        use std::time::Duration;

        struct Slow {
            inner: MemoryBroker,
            calls: Mutex<Vec<&'static str>>,
            subscribe_takes: Duration,
            unsubscribe_takes: Duration,
            down: AtomicBool,
        }

        impl Slow {
            async fn call(&self, name: &'static str, takes: Duration) -> Result<(), BrokerError> {
                self.calls.lock().unwrap().push(name);
                tokio::time::sleep(takes).await;
                if self.down.load(Ordering::SeqCst) {
                    return Err(BrokerError::Unavailable("down".into()));
                }
                Ok(())
            }

            fn calls(&self) -> Vec<&'static str> {
                self.calls.lock().unwrap().clone()
            }
        }

        #[async_trait]
        impl Broker for Slow {
            async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
                self.call("subscribe", self.subscribe_takes).await?;
                self.inner.subscribe(channel).await
            }

            async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
                self.call("unsubscribe", self.unsubscribe_takes).await?;
                self.inner.unsubscribe(channel).await
            }

            async fn publish(
                &self,
                channel: &str,
                data: Bytes,
                value: Value,
                history: HistoryPolicy,
            ) -> Result<Arc<Publication>, BrokerError> {
                self.inner.publish(channel, data, value, history).await
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
                self.inner.publish_control(channel, kind, client).await
            }

            async fn to_all_nodes(&self, _: &NodeCommand) -> Result<(), BrokerError> {
                Ok(())
            }

            async fn ping(&self) -> Result<(), BrokerError> {
                Ok(())
            }
        }

        /// An index and a broker that takes `subscribe` and `unsubscribe`
        /// to answer.
        fn node(subscribe: u64, unsubscribe: u64) -> (Arc<ChannelIndex>, Arc<Slow>) {
            let metrics = Arc::new(Metrics::register(&mut Default::default()));
            let index = Arc::new(ChannelIndex::new(metrics));
            let broker = Arc::new(Slow {
                inner: MemoryBroker::new(index.clone()),
                calls: Mutex::default(),
                subscribe_takes: Duration::from_millis(subscribe),
                unsubscribe_takes: Duration::from_millis(unsubscribe),
                down: AtomicBool::new(false),
            });
            (index, broker)
        }

        fn live(connection_id: &str) -> (Arc<Outbound>, Arc<Subscriber>) {
            let outbound = Arc::new(Outbound::new(LIMIT));
            let s = Subscriber::for_connection(
                outbound.clone(),
                FrameFormat::Envelope(Encoding::Json),
                None,
                connection_id.into(),
            );
            s.go_live(None, &[], 0);
            (outbound, s)
        }

        async fn publish(broker: &Slow) {
            let data = serde_json::json!(1);
            broker
                .publish(
                    "ch",
                    Bytes::from(data.to_string()),
                    data,
                    HistoryPolicy::default(),
                )
                .await
                .unwrap();
        }

        fn state(index: &ChannelIndex, channel: &str) -> Option<NodeSubscription> {
            index.node[shard_of(channel, SHARDS)]
                .lock()
                .get(channel)
                .map(|s| s.subscription)
        }

        #[test]
        fn add_and_remove_tell_the_first_and_the_last() {
            let (index, _) = node(0, 0);
            let (_, a) = live("a");
            let (_, b) = live("b");
            assert!(index.add("ch", a.clone()), "first");
            assert!(!index.add("ch", b.clone()));
            assert!(!index.remove("ch", &a));
            assert!(!index.remove("ch", &a), "removed twice");
            assert!(index.remove("ch", &b), "last");
            assert!(!index.remove("ch", &b), "removed twice");
            assert!(a.is_closed() && b.is_closed());
        }

        #[tokio::test(start_paused = true)]
        async fn the_node_is_subscribed_while_the_channel_has_local_subscribers() {
            let (index, broker) = node(1, 1);
            let (qa, a) = live("a");
            let (qb, b) = live("b");
            index.subscribe(&*broker, "ch", a.clone()).await.unwrap();
            index.subscribe(&*broker, "ch", b.clone()).await.unwrap();
            assert_eq!(broker.calls(), ["subscribe"], "once for the node");
            publish(&broker).await;
            assert_eq!((qa.take().0.len(), qb.take().0.len()), (1, 1));
            index.unsubscribe(&*broker, "ch", &a).await.unwrap();
            assert_eq!(broker.calls(), ["subscribe"], "b is still here");
            index.unsubscribe(&*broker, "ch", &b).await.unwrap();
            assert_eq!(broker.calls(), ["subscribe", "unsubscribe"]);
            assert_eq!(state(&index, "ch"), None, "nothing kept for it");
            // Removing again asks nobody.
            index.unsubscribe(&*broker, "ch", &b).await.unwrap();
            assert_eq!(broker.calls().len(), 2);
        }

        #[tokio::test(start_paused = true)]
        async fn the_last_leaving_while_a_new_one_arrives_leaves_the_node_subscribed() {
            // The unsubscribe is slower than the subscribe: sent unordered,
            // it would land last and leave the newcomer with nothing.
            let (index, broker) = node(1, 20);
            let (_, a) = live("a");
            index.subscribe(&*broker, "ch", a.clone()).await.unwrap();
            let leaving = tokio::spawn({
                let (index, broker) = (index.clone(), broker.clone());
                async move { index.unsubscribe(&*broker, "ch", &a).await }
            });
            // Runs the leaver up to its broker call.
            tokio::task::yield_now().await;
            assert_eq!(broker.calls(), ["subscribe", "unsubscribe"]);
            let (qb, b) = live("b");
            index.subscribe(&*broker, "ch", b).await.unwrap();
            leaving.await.unwrap().unwrap();
            assert_eq!(broker.calls(), ["subscribe", "unsubscribe", "subscribe"]);
            assert_eq!(state(&index, "ch"), Some(NodeSubscription::Subscribed));
            publish(&broker).await;
            assert_eq!(qb.take().0.len(), 1, "the newcomer receives");
        }

        #[tokio::test(start_paused = true)]
        async fn leaving_during_the_first_subscribe_leaves_the_node_unsubscribed() {
            let (index, broker) = node(20, 1);
            let (_, a) = live("a");
            let joining = tokio::spawn({
                let (index, broker, a) = (index.clone(), broker.clone(), a.clone());
                async move { index.subscribe(&*broker, "ch", a).await }
            });
            tokio::task::yield_now().await;
            index.unsubscribe(&*broker, "ch", &a).await.unwrap();
            joining.await.unwrap().unwrap();
            assert_eq!(broker.calls(), ["subscribe", "unsubscribe"]);
            assert_eq!(state(&index, "ch"), None);
        }

        #[tokio::test(start_paused = true)]
        async fn a_failed_subscribe_takes_the_subscriber_out_and_the_next_one_retries() {
            let (index, broker) = node(1, 1);
            broker.down.store(true, Ordering::SeqCst);
            let (_, a) = live("a");
            let e = index.subscribe(&*broker, "ch", a.clone()).await;
            assert!(matches!(e, Err(BrokerError::Unavailable(_))));
            assert!(a.is_closed() && !index.has_subscribers("ch"));
            assert_eq!(state(&index, "ch"), Some(NodeSubscription::Unknown));
            broker.down.store(false, Ordering::SeqCst);
            let (qb, b) = live("b");
            index.subscribe(&*broker, "ch", b).await.unwrap();
            assert_eq!(broker.calls(), ["subscribe", "unsubscribe", "subscribe"]);
            publish(&broker).await;
            assert_eq!(qb.take().0.len(), 1);
        }

        #[tokio::test(start_paused = true)]
        async fn an_abandoned_broker_call_is_made_again() {
            let (index, broker) = node(1, 20);
            let (_, a) = live("a");
            index.subscribe(&*broker, "ch", a.clone()).await.unwrap();
            let leaving = tokio::spawn({
                let (index, broker) = (index.clone(), broker.clone());
                async move { index.unsubscribe(&*broker, "ch", &a).await }
            });
            tokio::task::yield_now().await;
            leaving.abort();
            assert!(leaving.await.unwrap_err().is_cancelled());
            // The broker may or may not have unsubscribed the node.
            assert_eq!(state(&index, "ch"), Some(NodeSubscription::Unknown));
            let (_, b) = live("b");
            index.subscribe(&*broker, "ch", b).await.unwrap();
            assert_eq!(broker.calls(), ["subscribe", "unsubscribe", "subscribe"]);
        }

        #[tokio::test(start_paused = true)]
        async fn a_subscriber_unsubscribed_before_it_subscribed_is_not_kept() {
            let (index, broker) = node(1, 1);
            let (_, a) = live("a");
            index.unsubscribe(&*broker, "ch", &a).await.unwrap();
            index.subscribe(&*broker, "ch", a).await.unwrap();
            assert!(!index.has_subscribers("ch"));
            assert!(broker.calls().is_empty());
        }

        #[tokio::test(start_paused = true)]
        async fn join_and_leave_skip_the_connection_they_are_about_and_encode_once() {
            let (index, broker) = node(0, 0);
            let (q1, s1) = live("c1");
            let (q2, s2) = live("c2");
            let q3 = Arc::new(Outbound::new(LIMIT));
            let s3 = Subscriber::for_connection(
                q3.clone(),
                FrameFormat::Envelope(Encoding::Msgpack),
                None,
                "c3".into(),
            );
            // Without a connection id it cannot be told apart: it hears
            // about everyone, itself included.
            let q4 = Arc::new(Outbound::new(LIMIT));
            let s4 = Subscriber::new(q4.clone(), FrameFormat::Envelope(Encoding::Json), None);
            let q5 = Arc::new(Outbound::new(LIMIT));
            let s5 = Subscriber::for_connection(q5.clone(), FrameFormat::Raw, None, "c5".into());
            for s in [s1, s2, s3, s4, s5] {
                index.subscribe(&*broker, "ch", s).await.unwrap();
            }
            let c1 = ClientInfo {
                user: "u1".into(),
                connection_id: "c1".into(),
            };
            broker
                .publish_control("ch", ControlKind::Join, &c1)
                .await
                .unwrap();
            let payload = serde_json::json!({"channel": "ch", "user": "u1", "connection_id": "c1"});
            let expected = ServerFrame::new("join", None, &payload).encode(Encoding::Json);
            assert!(q1.take().0.is_empty(), "not told about itself");
            assert!(q5.take().0.is_empty(), "raw streams get only data");
            let (OutFrame::Text(a), OutFrame::Text(b)) = (&q2.take().0[0], &q4.take().0[0]) else {
                panic!("JSON text frames")
            };
            assert_eq!(*a, expected);
            assert_eq!(a.as_ptr(), b.as_ptr(), "encoded once per encoding");
            let OutFrame::Binary(m) = &q3.take().0[0] else {
                panic!("a MessagePack binary frame")
            };
            assert_eq!(
                *m,
                ServerFrame::new("join", None, &payload).encode(Encoding::Msgpack)
            );
        }
    }
}
