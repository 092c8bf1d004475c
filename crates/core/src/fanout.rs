//! The channel → subscribers index and the fan-out of publications.
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
use wsgate_protocol::{CloseCode, Encoding};

use crate::broker::{shard_of, Broker, BrokerError, Deliver, HistoryPage, HistoryPolicy};
use crate::metrics::Metrics;
use crate::outbound::{OutFrame, Outbound, Pushed};
use crate::publication::{Filter, Publication, StreamPosition};

/// How a subscriber wants publications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// `message` frames in the connection's encoding.
    Envelope(Encoding),
    /// Only `data`, as a raw JSON text frame (read-only streams).
    Raw,
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
    pub delivery: Delivery,
    pub filter: Option<Filter>,
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
    pub fn new(outbound: Arc<Outbound>, delivery: Delivery, filter: Option<Filter>) -> Arc<Self> {
        Arc::new(Subscriber {
            outbound,
            delivery,
            filter,
            live: AtomicBool::new(false),
            pending: Mutex::new(Some(Pending::default())),
            closed: AtomicBool::new(false),
        })
    }

    fn frame(&self, p: &Publication) -> OutFrame {
        match self.delivery {
            Delivery::Envelope(encoding) => OutFrame::Shared(p.frame(encoding).clone()),
            Delivery::Raw => OutFrame::Shared(p.raw_frame().clone()),
        }
    }

    fn wants(&self, p: &Publication) -> bool {
        self.filter.as_ref().is_none_or(|f| p.matches(f))
    }

    fn push(&self, p: &Publication) {
        // On overflow the queue requests close 4009 itself.
        self.outbound.push_published(self.frame(p), p.published_at);
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Option<Pending>> {
        // Every critical section leaves the buffer consistent (single moves).
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `p` (or keeps it until the subscriber is live) unless the
    /// filter excludes it; whether it was taken.
    fn deliver(&self, p: &Arc<Publication>) -> bool {
        if !self.wants(p) {
            return false;
        }
        if self.live.load(Ordering::Acquire) {
            self.push(p);
            return true;
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
        true
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

pub struct ChannelIndex {
    shards: Box<[Shard]>,
    metrics: Arc<Metrics>,
}

const SHARDS: usize = 64;

impl ChannelIndex {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        ChannelIndex {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            metrics,
        }
    }

    fn shard(&self, channel: &str) -> &Shard {
        &self.shards[shard_of(channel, SHARDS)]
    }

    pub fn add(&self, channel: &str, subscriber: Arc<Subscriber>) {
        let mut shard = self
            .shard(channel)
            .write()
            .unwrap_or_else(|e| e.into_inner());
        match shard.get_mut(channel) {
            Some(list) => list.push(subscriber),
            None => {
                shard.insert(channel.into(), vec![subscriber]);
            }
        }
    }

    pub fn remove(&self, channel: &str, subscriber: &Arc<Subscriber>) {
        subscriber.close();
        let mut shard = self
            .shard(channel)
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(list) = shard.get_mut(channel) {
            list.retain(|s| !Arc::ptr_eq(s, subscriber));
            if list.is_empty() {
                shard.remove(channel);
            }
        }
    }

    /// Sends a frame that is not a publication (join/leave) to the channel's
    /// envelope subscribers except `except` (the client it is about);
    /// `make` encodes it once per encoding.
    pub fn broadcast_control(
        &self,
        channel: &str,
        except: Option<&Arc<Outbound>>,
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
            if except.is_some_and(|o| Arc::ptr_eq(o, &s.outbound)) {
                continue;
            }
            let frame = match s.delivery {
                Delivery::Envelope(Encoding::Json) => {
                    OutFrame::Text(json.get_or_insert_with(|| make(Encoding::Json)).clone())
                }
                Delivery::Envelope(Encoding::Msgpack) => OutFrame::Binary(
                    msgpack
                        .get_or_insert_with(|| make(Encoding::Msgpack))
                        .clone(),
                ),
                Delivery::Raw => continue,
            };
            s.outbound.push(frame);
        }
    }
}

impl Deliver for ChannelIndex {
    fn deliver(&self, publication: &Arc<Publication>) {
        self.metrics.publications.inc();
        let shard = self
            .shard(&publication.channel)
            .read()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(list) = shard.get(&*publication.channel) {
            let taken: u64 = list.iter().map(|s| u64::from(s.deliver(publication))).sum();
            // One counter update per publication, not per delivery.
            self.metrics.deliveries.inc_by(taken);
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
            let s = Subscriber::new(outbound.clone(), Delivery::Raw, filter);
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
        index.deliver(&p);
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
        let subscriber =
            Subscriber::new(outbound.clone(), Delivery::Envelope(Encoding::Json), None);
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
        t.index.add("ch", t.subscriber.clone());
        let epoch = t.broker.history("ch", None, 0, t.history).await.unwrap();
        let since = StreamPosition {
            offset: 0,
            epoch: epoch.position.epoch,
        };
        let first = t
            .broker
            .history("ch", Some(&since), 4, t.history)
            .await
            .unwrap();
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
        t.index.add("ch", t.subscriber.clone());
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
        t.index.add("ch", t.subscriber.clone());
        let epoch = t.broker.history("ch", None, 0, t.history).await.unwrap();
        let since = StreamPosition {
            offset: 0,
            epoch: epoch.position.epoch,
        };
        let first = t
            .broker
            .history("ch", Some(&since), BACKLOG_PAGE, t.history)
            .await
            .unwrap();
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
}
