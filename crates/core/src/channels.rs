//! Channels as a service: the authorizer, the broker, presence and the
//! local fan-out index, shared by every session and the server API.

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Value};
use wsgate_protocol::{Encoding, ServerFrame};

use crate::broker::{Broker, BrokerError, ClientInfo, HistoryPage, HistoryPolicy, Presence};
use crate::channel::{Authorizer, Denied, NamespacePolicy};
use crate::fanout::ChannelIndex;
use crate::limits::MAX_HISTORY_LIMIT;
use crate::outbound::Outbound;
use crate::publication::{Publication, StreamPosition};

pub struct Channels {
    pub authorizer: Authorizer,
    pub broker: Arc<dyn Broker>,
    pub presence: Arc<dyn Presence>,
    pub index: Arc<ChannelIndex>,
}

/// Why a server-side publish failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("invalid channel name")]
    BadName,
    #[error("unknown namespace")]
    UnknownNamespace,
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl From<Denied> for PublishError {
    fn from(d: Denied) -> Self {
        match d {
            Denied::BadName => PublishError::BadName,
            Denied::Forbidden => PublishError::UnknownNamespace,
        }
    }
}

pub fn history_policy(policy: &NamespacePolicy) -> HistoryPolicy {
    HistoryPolicy {
        size: policy.history_size,
        ttl: policy.history_ttl,
    }
}

impl Channels {
    /// The server API's publish: any valid channel of a known namespace.
    /// `data` is the JSON text of `value`.
    pub async fn publish(
        &self,
        channel: &str,
        data: Bytes,
        value: Value,
    ) -> Result<Arc<Publication>, PublishError> {
        let policy = self.authorizer.lookup(channel)?;
        let history = history_policy(policy);
        Ok(self.broker.publish(channel, data, value, history).await?)
    }

    /// Publications after `since` (the newest ones without it), at most
    /// `limit`, which defaults to and is capped by the namespace's history
    /// size and [`MAX_HISTORY_LIMIT`].
    pub async fn history_page(
        &self,
        channel: &str,
        policy: &NamespacePolicy,
        since: Option<&StreamPosition>,
        limit: Option<usize>,
    ) -> Result<HistoryPage, BrokerError> {
        let history = history_policy(policy);
        let limit = limit
            .unwrap_or(history.size)
            .min(history.size)
            .min(MAX_HISTORY_LIMIT);
        self.broker.history(channel, since, limit, history).await
    }

    /// The server API's history: [`Channels::history_page`] as JSON, in one
    /// answer (an HTTP body is not held to a connection's queue; the
    /// `history` command's reply is cut by [`history_frame`]).
    pub async fn history(
        &self,
        channel: &str,
        policy: &NamespacePolicy,
        since: Option<&StreamPosition>,
        limit: Option<usize>,
    ) -> Result<Value, BrokerError> {
        let page = self.history_page(channel, policy, since, limit).await?;
        let publications: Vec<Value> = page
            .publications
            .iter()
            .map(|p| json!({"offset": p.offset, "data": &p.value}))
            .collect();
        Ok(json!({
            "channel": channel,
            "epoch": &*page.position.epoch,
            "offset": page.position.offset,
            "publications": publications,
        }))
    }

    /// Sends `join` or `leave` to the channel's other subscribers on this
    /// node (`except`: the connection the news is about).
    pub fn announce(
        &self,
        kind: &'static str,
        channel: &str,
        client: &ClientInfo,
        except: Option<&Arc<Outbound>>,
    ) {
        let payload = json!({
            "channel": channel,
            "user": &*client.user,
            "connection_id": &*client.connection_id,
        });
        self.index
            .broadcast_control(channel, except, |enc: Encoding| {
                ServerFrame::new(kind, None, &payload).encode(enc)
            });
    }
}

#[derive(Serialize)]
struct HistoryItem<'a> {
    offset: u64,
    data: &'a Value,
}

#[derive(Serialize)]
struct HistoryPayload<'a> {
    channel: &'a str,
    epoch: &'a str,
    offset: u64,
    /// Publications after the last one here exist: ask again with
    /// `since {offset: <last offset here>, epoch}`.
    more: bool,
    publications: Vec<HistoryItem<'a>>,
}

/// Bytes a history item adds to a JSON frame besides its `data`:
/// `{"offset":<20 digits>,"data":},`.
const ITEM_OVERHEAD: usize = 40;

/// The `history` reply to `page`, encoded: its publications oldest first,
/// cut to the prefix whose frame fits `budget` bytes (at least one
/// publication, however big), with `more` saying whether publications after
/// the last one sent exist. A reply is queued like any frame, so one bigger
/// than the connection's queue would close it with 4009; cut, a history of
/// any size can be read page by page.
pub fn history_frame(
    encoding: Encoding,
    id: Option<&str>,
    channel: &str,
    page: &HistoryPage,
    budget: usize,
) -> Bytes {
    let all = &page.publications;
    let encode = |n: usize| {
        let more = match all[..n].last() {
            Some(last) => n < all.len() || last.offset < page.position.offset,
            None => false,
        };
        let payload = HistoryPayload {
            channel,
            epoch: &page.position.epoch,
            offset: page.position.offset,
            more,
            publications: all[..n]
                .iter()
                .map(|p| HistoryItem {
                    offset: p.offset,
                    data: &p.value,
                })
                .collect(),
        };
        ServerFrame::new("history", id, payload).encode(encoding)
    };
    // Estimated from the JSON text of each `data`, so the frame is encoded
    // once in the common case rather than once per publication.
    let mut used = encode(0).len();
    let mut n = 0;
    for p in all {
        let size = p.data.len() + ITEM_OVERHEAD;
        if n > 0 && used + size > budget {
            break;
        }
        used += size;
        n += 1;
    }
    loop {
        let frame = encode(n);
        if frame.len() <= budget || n <= 1 {
            return frame;
        }
        // The estimate fell short (MessagePack writes some values, e.g.
        // floats, longer than JSON does): drop an eighth and encode again.
        n -= (n / 8).max(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(sizes: &[usize], head: u64) -> HistoryPage {
        let first = head + 1 - sizes.len() as u64;
        let publications = sizes
            .iter()
            .zip(first..)
            .map(|(size, offset)| {
                let value = Value::String("x".repeat(*size));
                let data = Bytes::from(value.to_string());
                Publication::new("h".into(), offset, "ep".into(), data, value)
            })
            .collect();
        HistoryPage {
            position: StreamPosition {
                offset: head,
                epoch: "ep".into(),
            },
            publications,
            complete: true,
        }
    }

    fn read(encoding: Encoding, frame: &[u8]) -> (Vec<u64>, bool) {
        let f = wsgate_protocol::ClientFrame::decode(encoding, frame).unwrap();
        assert_eq!(f.kind, "history");
        let p = f.payload.unwrap();
        let offsets = p["publications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["offset"].as_u64().unwrap())
            .collect();
        (offsets, p["more"].as_bool().unwrap())
    }

    #[test]
    fn history_frames_are_cut_to_the_budget_with_more() {
        for encoding in [Encoding::Json, Encoding::Msgpack] {
            let all = page(&[400, 400, 400], 3);
            let frame = history_frame(encoding, Some("h"), "h", &all, 1000);
            assert!(frame.len() <= 1000);
            assert_eq!(read(encoding, &frame), (vec![1, 2], true));
            // Everything fits: no more.
            let frame = history_frame(encoding, None, "h", &all, 10_000);
            assert_eq!(read(encoding, &frame), (vec![1, 2, 3], false));
            // One publication over the budget still goes, alone.
            let big = page(&[5000, 10], 9);
            let frame = history_frame(encoding, None, "h", &big, 1000);
            assert_eq!(read(encoding, &frame), (vec![8], true));
            // A page that stops short of the stream's position (a limit):
            // there is more after it.
            let mut limited = page(&[10, 10], 2);
            limited.position.offset = 5;
            let frame = history_frame(encoding, None, "h", &limited, 1000);
            assert_eq!(read(encoding, &frame), (vec![1, 2], true));
            let empty = page(&[], 4);
            assert_eq!(
                read(encoding, &history_frame(encoding, None, "h", &empty, 10)),
                (vec![], false)
            );
        }
    }

    #[test]
    fn a_msgpack_estimate_that_falls_short_is_corrected() {
        // Floats: 9 bytes in MessagePack, 3 in JSON.
        let value = Value::Array(vec![serde_json::json!(1.5); 100]);
        let data = Bytes::from(value.to_string());
        let publications = (1..=10)
            .map(|o| Publication::new("h".into(), o, "ep".into(), data.clone(), value.clone()))
            .collect();
        let p = HistoryPage {
            position: StreamPosition {
                offset: 10,
                epoch: "ep".into(),
            },
            publications,
            complete: true,
        };
        let frame = history_frame(Encoding::Msgpack, None, "h", &p, 4000);
        assert!(frame.len() <= 4000, "{}", frame.len());
        let (offsets, more) = read(Encoding::Msgpack, &frame);
        assert!(!offsets.is_empty() && more);
    }
}
