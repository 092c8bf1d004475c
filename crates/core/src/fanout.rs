//! The channel → subscribers index and the fan-out of publications.
//!
//! Subscribers are found by channel name in a sharded map, never by scanning
//! connections. Each subscriber gets a clone of the publication's pre-encoded
//! bytes pushed into its bounded outbound queue; a publisher never waits on a
//! subscriber (a full queue closes that one connection with 4009).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use wsgate_protocol::Encoding;

use crate::broker::{shard_of, Deliver};
use crate::metrics::Metrics;
use crate::outbound::{OutFrame, Outbound};
use crate::publication::{Filter, Publication};

/// How a subscriber wants publications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// `message` frames in the connection's encoding.
    Envelope(Encoding),
    /// Only `data`, as a raw JSON text frame (read-only streams).
    Raw,
}

/// One connection's subscription to one channel.
pub struct Subscriber {
    pub outbound: Arc<Outbound>,
    pub delivery: Delivery,
    pub filter: Option<Filter>,
    /// False while the subscribe reply (and any recovered backlog) is being
    /// prepared; publications arriving meanwhile wait in `pending`.
    live: AtomicBool,
    pending: Mutex<Option<Vec<Arc<Publication>>>>,
    /// Set on unsubscribe so a late subscribe task sends nothing.
    closed: AtomicBool,
}

impl Subscriber {
    /// A subscriber that buffers until [`Subscriber::go_live`].
    pub fn new(outbound: Arc<Outbound>, delivery: Delivery, filter: Option<Filter>) -> Arc<Self> {
        Arc::new(Subscriber {
            outbound,
            delivery,
            filter,
            live: AtomicBool::new(false),
            pending: Mutex::new(Some(Vec::new())),
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

    /// Queues `p` (or keeps it until [`Subscriber::go_live`]) unless the
    /// filter excludes it; whether it was taken.
    fn deliver(&self, p: &Arc<Publication>) -> bool {
        if !self.wants(p) {
            return false;
        }
        if self.live.load(Ordering::Acquire) {
            self.push(p);
            return true;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        match pending.as_mut() {
            Some(buffer) => buffer.push(p.clone()),
            None => self.push(p),
        }
        true
    }

    /// Sends `reply`, then `backlog`, then whatever arrived meanwhile with an
    /// offset after `last_offset` — in that order, without duplicates — and
    /// switches to direct delivery.
    pub fn go_live(
        &self,
        reply: Option<OutFrame>,
        backlog: &[Arc<Publication>],
        mut last_offset: u64,
    ) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
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
        // Filtered on arrival already.
        for p in pending.take().unwrap_or_default() {
            if p.offset > last_offset {
                self.push(&p);
                last_offset = p.offset;
            }
        }
        self.live.store(true, Ordering::Release);
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
}
