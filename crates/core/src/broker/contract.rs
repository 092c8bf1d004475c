//! The contract every `Broker` and `Presence` implementation must pass.
//! The memory implementations run it in this crate's tests; a Redis
//! implementation runs the same functions against a real Redis.
//!
//! Each check takes a factory that builds a fresh broker (or presence)
//! delivering into the given sink, and uses channel names unique to the call
//! so shared backends can run checks concurrently.
//!
//! Time is tokio's: every check runs under
//! `#[tokio::test(start_paused = true)]`, where waiting costs nothing. A
//! broker that keeps time on another clock (Redis expires keys on its own)
//! runs [`history_ttl`] unpaused.
//!
//! What a check cannot see is proven with a marker: to show that something
//! was *not* delivered, a later publication on a subscribed channel is
//! awaited first, since a node receives its channels in publish order.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};

use crate::broker::{
    Broker, ClientInfo, ControlKind, HistoryPolicy, NodeCommand, NodeSink, Presence,
};
use crate::channels::publication::{Publication, StreamPosition};

/// One thing a node's sink received.
#[derive(Debug, Clone)]
pub enum Delivered {
    Publication(Arc<Publication>),
    Control {
        channel: Arc<str>,
        kind: ControlKind,
        client: ClientInfo,
    },
}

impl Delivered {
    fn channel(&self) -> &str {
        match self {
            Delivered::Publication(p) => &p.channel,
            Delivered::Control { channel, .. } => channel,
        }
    }
}

/// Collects what the broker delivers, in delivery order, and the channels
/// it reported gaps in.
#[derive(Default)]
pub struct Collected(
    Mutex<Vec<Delivered>>,
    Mutex<Vec<String>>,
    Mutex<Vec<NodeCommand>>,
);

impl NodeSink for Collected {
    fn on_publication(&self, p: &Arc<Publication>) {
        self.lock().push(Delivered::Publication(p.clone()));
    }

    fn on_control(&self, channel: &str, kind: ControlKind, client: &ClientInfo) {
        self.lock().push(Delivered::Control {
            channel: channel.into(),
            kind,
            client: client.clone(),
        });
    }

    fn on_node_command(&self, command: &NodeCommand) {
        self.2
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(command.clone());
    }

    fn on_gap(&self, channel: &str) {
        self.1
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(channel.into());
    }
}

impl Collected {
    /// The node commands received, in order.
    pub fn node_commands(&self) -> Vec<NodeCommand> {
        self.2.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The channels reported as having a gap, in order.
    pub fn gaps(&self) -> Vec<String> {
        self.1.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Delivered>> {
        // A check that panicked holding it fails anyway.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What `channel` delivered, oldest first.
    pub fn of(&self, channel: &str) -> Vec<Delivered> {
        self.lock()
            .iter()
            .filter(|d| d.channel() == channel)
            .cloned()
            .collect()
    }

    /// The offsets of `channel`'s delivered publications.
    pub fn offsets(&self, channel: &str) -> Vec<u64> {
        self.of(channel)
            .iter()
            .filter_map(|d| match d {
                Delivered::Publication(p) => Some(p.offset),
                Delivered::Control { .. } => None,
            })
            .collect()
    }

    /// `channel`'s deliveries as short strings (`"3"`, `"join u c"`), for
    /// comparing orders.
    pub fn log(&self, channel: &str) -> Vec<String> {
        self.of(channel)
            .iter()
            .map(|d| match d {
                Delivered::Publication(p) => p.offset.to_string(),
                Delivered::Control { kind, client, .. } => {
                    format!("{} {} {}", kind.as_str(), client.user, client.connection_id)
                }
            })
            .collect()
    }

    /// Waits until `channel` has delivered `n` things; panics after a while.
    /// FrameFormat may be asynchronous for networked brokers.
    pub async fn wait_for(&self, channel: &str, n: usize) {
        for _ in 0..100 {
            if self.of(channel).len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "{channel}: {} delivered, waited for {n}",
            self.of(channel).len()
        );
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}:{}", uuid::Uuid::new_v4().simple())
}

async fn publish(b: &dyn Broker, channel: &str, v: Value, h: HistoryPolicy) -> Arc<Publication> {
    let bytes = Bytes::from(v.to_string());
    b.publish(channel, bytes, v, h).await.expect("publish")
}

fn client(user: &str, connection_id: &str) -> ClientInfo {
    ClientInfo {
        user: user.into(),
        connection_id: connection_id.into(),
    }
}

const KEEP: HistoryPolicy = HistoryPolicy {
    size: 3,
    ttl: Duration::ZERO,
};

/// Offsets start at 1 and grow by one; the epoch stays; every publication
/// of a subscribed channel is delivered once, in order, with its data.
pub async fn offsets_epochs_and_delivery(make: impl Fn(Arc<dyn NodeSink>) -> Arc<dyn Broker>) {
    let sink = Arc::new(Collected::default());
    let b = make(sink.clone());
    let ch = unique("contract");
    b.subscribe(&ch).await.expect("subscribe");
    let first = publish(&*b, &ch, json!({"n": 1}), KEEP).await;
    assert_eq!(first.offset, 1);
    for n in 2..=5 {
        let p = publish(&*b, &ch, json!({"n": n}), HistoryPolicy::default()).await;
        assert_eq!(p.offset, n);
        assert_eq!(p.epoch, first.epoch);
    }
    sink.wait_for(&ch, 5).await;
    assert_eq!(sink.offsets(&ch), [1, 2, 3, 4, 5]);
    let Delivered::Publication(last) = &sink.of(&ch)[4] else {
        unreachable!("only publications were sent")
    };
    assert_eq!(last.value, json!({"n": 5}));
    let other = unique("contract");
    assert_eq!(
        publish(&*b, &other, json!(null), KEEP).await.offset,
        1,
        "offsets are per channel"
    );
}

/// The node receives only the channels it subscribed to; subscribing twice
/// is the same as once, one unsubscribe ends it, and a channel can be
/// subscribed again.
pub async fn delivery_follows_subscriptions(make: impl Fn(Arc<dyn NodeSink>) -> Arc<dyn Broker>) {
    let sink = Arc::new(Collected::default());
    let b = make(sink.clone());
    let (on, off, marker) = (unique("contract"), unique("contract"), unique("contract"));
    b.subscribe(&on).await.unwrap();
    b.subscribe(&marker).await.unwrap();
    publish(&*b, &off, json!(1), KEEP).await;
    publish(&*b, &on, json!(1), KEEP).await;
    sink.wait_for(&on, 1).await;
    assert_eq!(sink.offsets(&on), [1]);
    assert!(sink.of(&off).is_empty(), "never subscribed");

    b.subscribe(&on).await.unwrap();
    b.unsubscribe(&on).await.unwrap();
    publish(&*b, &on, json!(2), KEEP).await;
    publish(&*b, &marker, json!(1), KEEP).await;
    sink.wait_for(&marker, 1).await;
    assert_eq!(sink.offsets(&on), [1], "one unsubscribe ends it");
    b.unsubscribe(&off)
        .await
        .expect("unsubscribing a channel never subscribed");

    b.subscribe(&on).await.unwrap();
    publish(&*b, &on, json!(3), KEEP).await;
    sink.wait_for(&on, 2).await;
    assert_eq!(sink.offsets(&on), [1, 3], "subscribed again");
}

/// Join and leave reach the nodes subscribed to the channel, in order with
/// its publications, and no other.
pub async fn join_and_leave(make: impl Fn(Arc<dyn NodeSink>) -> Arc<dyn Broker>) {
    let sink = Arc::new(Collected::default());
    let b = make(sink.clone());
    let (ch, off) = (unique("contract"), unique("contract"));
    b.subscribe(&ch).await.unwrap();
    let alice = client("alice", "c1");
    publish(&*b, &ch, json!(1), KEEP).await;
    b.publish_control(&ch, ControlKind::Join, &alice)
        .await
        .unwrap();
    publish(&*b, &ch, json!(2), KEEP).await;
    b.publish_control(&ch, ControlKind::Leave, &alice)
        .await
        .unwrap();
    b.publish_control(&off, ControlKind::Join, &alice)
        .await
        .unwrap();
    publish(&*b, &ch, json!(3), KEEP).await;
    sink.wait_for(&ch, 5).await;
    assert_eq!(
        sink.log(&ch),
        ["1", "join alice c1", "2", "leave alice c1", "3"]
    );
    assert!(sink.of(&off).is_empty(), "not subscribed");

    b.unsubscribe(&ch).await.unwrap();
    b.subscribe(&off).await.unwrap();
    b.publish_control(&ch, ControlKind::Join, &alice)
        .await
        .unwrap();
    publish(&*b, &off, json!(1), KEEP).await;
    sink.wait_for(&off, 1).await;
    assert_eq!(sink.of(&ch).len(), 5, "nothing after unsubscribe");
}

/// History keeps the newest `size`, answers `since`, and says whether a
/// recovery from `since` is complete. History needs no subscription.
pub async fn history_and_recovery(make: impl Fn(Arc<dyn NodeSink>) -> Arc<dyn Broker>) {
    let b = make(Arc::new(Collected::default()));
    let ch = unique("contract");
    let empty = b.history(&ch, None, 10, KEEP).await.unwrap();
    assert_eq!(empty.position.offset, 0);
    assert!(empty.publications.is_empty());
    let epoch = empty.position.epoch.clone();
    for n in 1..=5 {
        publish(&*b, &ch, json!({"n": n}), KEEP).await;
    }
    let page = b.history(&ch, None, 10, KEEP).await.unwrap();
    assert_eq!(
        page.position,
        StreamPosition {
            offset: 5,
            epoch: epoch.clone()
        },
        "epoch fixed before the first publish"
    );
    let offsets: Vec<u64> = page.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, [3, 4, 5]);
    assert_eq!(page.publications[0].value, json!({"n": 3}));
    let newest = b.history(&ch, None, 2, KEEP).await.unwrap();
    assert_eq!(
        newest
            .publications
            .iter()
            .map(|p| p.offset)
            .collect::<Vec<_>>(),
        [4, 5]
    );

    let since = |offset| StreamPosition {
        offset,
        epoch: epoch.clone(),
    };
    let r = b.history(&ch, Some(&since(3)), 10, KEEP).await.unwrap();
    assert_eq!(
        r.publications.iter().map(|p| p.offset).collect::<Vec<_>>(),
        [4, 5]
    );
    assert!(r.complete);
    let r = b.history(&ch, Some(&since(2)), 10, KEEP).await.unwrap();
    assert!(r.complete, "3 is the first needed and still kept");
    let r = b.history(&ch, Some(&since(1)), 10, KEEP).await.unwrap();
    assert!(!r.complete, "2 was evicted");
    let r = b.history(&ch, Some(&since(5)), 10, KEEP).await.unwrap();
    assert!(r.complete && r.publications.is_empty(), "nothing missed");
    // Readers page through a backlog with a small limit: completeness is
    // about what is kept after `since`, not about what fits in one page.
    let r = b.history(&ch, Some(&since(2)), 1, KEEP).await.unwrap();
    assert_eq!(
        r.publications.iter().map(|p| p.offset).collect::<Vec<_>>(),
        [3]
    );
    assert!(r.complete, "a page of one is still complete");
    let wrong = StreamPosition {
        offset: 3,
        epoch: "other".into(),
    };
    let r = b.history(&ch, Some(&wrong), 10, KEEP).await.unwrap();
    assert!(
        !r.complete && r.publications.is_empty(),
        "another epoch cannot be recovered"
    );
    let future = since(9);
    assert!(
        !b.history(&ch, Some(&future), 10, KEEP)
            .await
            .unwrap()
            .complete,
        "an offset from the future"
    );
    // `since` comes from clients: the largest offset must not overflow.
    let r = b
        .history(&ch, Some(&since(u64::MAX)), 10, KEEP)
        .await
        .unwrap();
    assert!(
        !r.complete && r.publications.is_empty(),
        "an offset no stream reaches"
    );
}

/// Publications older than the TTL leave history; offsets do not reset.
/// Waits with `tokio::time::sleep`: instant on paused time.
pub async fn history_ttl(make: impl Fn(Arc<dyn NodeSink>) -> Arc<dyn Broker>) {
    let b = make(Arc::new(Collected::default()));
    let ch = unique("contract");
    let h = HistoryPolicy {
        size: 10,
        ttl: Duration::from_millis(200),
    };
    publish(&*b, &ch, json!(1), h).await;
    assert_eq!(
        b.history(&ch, None, 10, h)
            .await
            .unwrap()
            .publications
            .len(),
        1
    );
    // Well past the TTL: a networked broker may expire in whole seconds.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let page = b.history(&ch, None, 10, h).await.unwrap();
    assert!(page.publications.is_empty());
    assert_eq!(page.position.offset, 1);
    assert_eq!(publish(&*b, &ch, json!(2), h).await.offset, 2);
}

/// A forgotten channel (a deleted thread's) keeps nothing: no history,
/// its position back to 0; other channels are untouched.
pub async fn forget(make: impl Fn(Arc<dyn NodeSink>) -> Arc<dyn Broker>) {
    let b = make(Arc::new(Collected::default()));
    let (gone, kept) = (unique("contract"), unique("contract"));
    for i in 0..3 {
        publish(&*b, &gone, json!(i), KEEP).await;
        publish(&*b, &kept, json!(i), KEEP).await;
    }
    b.forget(&gone).await.unwrap();
    let page = b.history(&gone, None, 10, KEEP).await.unwrap();
    assert!(page.publications.is_empty());
    assert_eq!(page.position.offset, 0);
    let page = b.history(&kept, None, 10, KEEP).await.unwrap();
    assert_eq!(page.publications.len(), 3);
    assert_eq!(page.position.offset, 3);
}

/// A node command reaches every node built by `make`, the sender too.
/// Nodes may start listening a moment after they are built (a networked
/// broker subscribes in the background), so the command is sent again
/// until every node has it; each node receives nothing else.
pub async fn node_commands_reach_every_node(
    make: impl Fn(Arc<dyn NodeSink>) -> Arc<dyn Broker>,
    nodes: usize,
) {
    let sinks: Vec<Arc<Collected>> = (0..nodes).map(|_| Arc::new(Collected::default())).collect();
    let brokers: Vec<_> = sinks.iter().map(|s| make(s.clone())).collect();
    let command = NodeCommand::Disconnect {
        user: unique("user"),
    };
    for _ in 0..100 {
        brokers[0].to_all_nodes(&command).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        if sinks.iter().all(|s| !s.node_commands().is_empty()) {
            break;
        }
    }
    for sink in &sinks {
        let got = sink.node_commands();
        assert!(!got.is_empty(), "every node, the sender too");
        assert!(got.iter().all(|c| *c == command), "{got:?}");
    }
}

/// Presence holds one entry per connection (adding again changes nothing),
/// removes by connection, forgets a channel whose last client left, and
/// keeps channels apart.
pub async fn presence(make: impl Fn() -> Arc<dyn Presence>) {
    let p = make();
    let (ch, other) = (unique("contract"), unique("contract"));
    let sorted = |mut v: Vec<ClientInfo>| {
        v.sort_by(|x, y| x.connection_id.cmp(&y.connection_id));
        v
    };
    assert!(p.clients(&ch).await.unwrap().is_empty(), "unknown channel");
    p.add(&ch, client("a", "c1")).await.unwrap();
    p.add(&ch, client("a", "c1")).await.unwrap();
    p.add(&ch, client("a", "c3")).await.unwrap();
    p.add(&ch, client("b", "c2")).await.unwrap();
    p.add(&other, client("z", "c9")).await.unwrap();
    assert_eq!(
        sorted(p.clients(&ch).await.unwrap()),
        [client("a", "c1"), client("b", "c2"), client("a", "c3")],
        "one entry per connection, a user may have several"
    );
    p.remove(&ch, "c1").await.unwrap();
    p.remove(&ch, "c1").await.expect("removing twice");
    p.remove(&ch, "c9")
        .await
        .expect("a connection of another channel");
    assert_eq!(
        sorted(p.clients(&ch).await.unwrap()),
        [client("b", "c2"), client("a", "c3")]
    );
    p.remove(&ch, "c2").await.unwrap();
    p.remove(&ch, "c3").await.unwrap();
    assert!(p.clients(&ch).await.unwrap().is_empty(), "last client left");
    assert_eq!(p.clients(&other).await.unwrap(), [client("z", "c9")]);
    p.add(&ch, client("b", "c2")).await.unwrap();
    assert_eq!(
        p.clients(&ch).await.unwrap(),
        [client("b", "c2")],
        "a channel comes back after its last client left"
    );
    p.remove(&ch, "c2").await.unwrap();
    p.remove(&other, "c9").await.unwrap();
}

#[cfg(test)]
mod memory {
    use super::*;
    use crate::broker::{MemoryBroker, MemoryPresence};

    fn make(sink: Arc<dyn NodeSink>) -> Arc<dyn Broker> {
        Arc::new(MemoryBroker::new(sink))
    }

    #[tokio::test(start_paused = true)]
    async fn memory_offsets_epochs_and_delivery() {
        offsets_epochs_and_delivery(make).await;
    }

    #[tokio::test(start_paused = true)]
    async fn memory_delivery_follows_subscriptions() {
        delivery_follows_subscriptions(make).await;
    }

    #[tokio::test(start_paused = true)]
    async fn memory_join_and_leave() {
        join_and_leave(make).await;
    }

    #[tokio::test(start_paused = true)]
    async fn memory_history_and_recovery() {
        history_and_recovery(make).await;
    }

    #[tokio::test(start_paused = true)]
    async fn memory_history_ttl() {
        history_ttl(make).await;
    }

    #[tokio::test(start_paused = true)]
    async fn memory_forget() {
        forget(make).await;
    }

    #[tokio::test(start_paused = true)]
    async fn memory_node_commands_reach_every_node() {
        // One memory broker is one node.
        node_commands_reach_every_node(make, 1).await;
    }

    #[tokio::test(start_paused = true)]
    async fn memory_presence() {
        presence(|| Arc::new(MemoryPresence::default())).await;
    }
}
