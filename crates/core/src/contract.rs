//! The contract every `Broker` and `Presence` implementation must pass.
//! The memory implementations run it in this crate's tests; a Redis
//! implementation runs the same functions against a real Redis.
//!
//! Each check takes a factory that builds a fresh broker delivering into
//! the given sink, and uses channel names unique to the call so shared
//! backends can run checks concurrently.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};

use crate::broker::{Broker, ClientInfo, Deliver, HistoryPolicy, Presence};
use crate::publication::{Publication, StreamPosition};

/// Collects what the broker delivers.
#[derive(Default)]
pub struct Collected(Mutex<Vec<Arc<Publication>>>);

impl Deliver for Collected {
    fn deliver(&self, p: &Arc<Publication>) {
        self.0.lock().unwrap().push(p.clone());
    }
}

impl Collected {
    pub fn offsets(&self, channel: &str) -> Vec<u64> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|p| &*p.channel == channel)
            .map(|p| p.offset)
            .collect()
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}:{}", uuid::Uuid::new_v4().simple())
}

async fn publish(b: &dyn Broker, channel: &str, v: Value, h: HistoryPolicy) -> Arc<Publication> {
    let bytes = Bytes::from(v.to_string());
    b.publish(channel, bytes, v, h).await.expect("publish")
}

const KEEP: HistoryPolicy = HistoryPolicy {
    size: 3,
    ttl: Duration::ZERO,
};

/// Offsets start at 1 and grow by one; the epoch stays; every publication
/// is delivered once, in order, with its data.
pub async fn offsets_epochs_and_delivery(make: impl Fn(Arc<dyn Deliver>) -> Arc<dyn Broker>) {
    let sink = Arc::new(Collected::default());
    let b = make(sink.clone());
    let ch = unique("contract");
    let first = publish(&*b, &ch, json!({"n": 1}), KEEP).await;
    assert_eq!(first.offset, 1);
    for n in 2..=5 {
        let p = publish(&*b, &ch, json!({"n": n}), HistoryPolicy::default()).await;
        assert_eq!(p.offset, n);
        assert_eq!(p.epoch, first.epoch);
    }
    // Delivery may be asynchronous for networked brokers.
    for _ in 0..100 {
        if sink.offsets(&ch).len() == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sink.offsets(&ch), [1, 2, 3, 4, 5]);
    let other = unique("contract");
    assert_eq!(
        publish(&*b, &other, json!(null), KEEP).await.offset,
        1,
        "offsets are per channel"
    );
}

/// History keeps the newest `size`, answers `since`, and says whether a
/// recovery from `since` is complete.
pub async fn history_and_recovery(make: impl Fn(Arc<dyn Deliver>) -> Arc<dyn Broker>) {
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
pub async fn history_ttl(make: impl Fn(Arc<dyn Deliver>) -> Arc<dyn Broker>) {
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
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let page = b.history(&ch, None, 10, h).await.unwrap();
    assert!(page.publications.is_empty());
    assert_eq!(page.position.offset, 1);
    assert_eq!(publish(&*b, &ch, json!(2), h).await.offset, 2);
}

/// Presence adds once per connection and removes by connection.
pub async fn presence(p: Arc<dyn Presence>) {
    let ch = unique("contract");
    let client = |u: &str, c: &str| ClientInfo {
        user: u.into(),
        connection_id: c.into(),
    };
    p.add(&ch, client("a", "c1")).await.unwrap();
    p.add(&ch, client("a", "c1")).await.unwrap();
    p.add(&ch, client("b", "c2")).await.unwrap();
    let mut got = p.clients(&ch).await.unwrap();
    got.sort_by(|x, y| x.connection_id.cmp(&y.connection_id));
    assert_eq!(got, [client("a", "c1"), client("b", "c2")]);
    p.remove(&ch, "c1").await.unwrap();
    assert_eq!(p.clients(&ch).await.unwrap(), [client("b", "c2")]);
    p.remove(&ch, "c2").await.unwrap();
    assert!(p.clients(&ch).await.unwrap().is_empty());
    assert!(p.clients(&unique("contract")).await.unwrap().is_empty());
}

#[cfg(test)]
mod memory {
    use super::*;
    use crate::broker::{MemoryBroker, MemoryPresence};

    fn make(sink: Arc<dyn Deliver>) -> Arc<dyn Broker> {
        Arc::new(MemoryBroker::new(sink))
    }

    #[tokio::test]
    async fn memory_offsets_epochs_and_delivery() {
        offsets_epochs_and_delivery(make).await;
    }

    #[tokio::test]
    async fn memory_history_and_recovery() {
        history_and_recovery(make).await;
    }

    #[tokio::test]
    async fn memory_history_ttl() {
        history_ttl(make).await;
    }

    #[tokio::test]
    async fn memory_presence() {
        presence(Arc::new(MemoryPresence::default())).await;
    }
}
