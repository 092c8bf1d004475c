//! A publication, encoded once for every kind of subscriber.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::time::Instant;
use wsgate_protocol::{Encoding, ServerFrame};

use crate::connection::outbound::SharedFrame;

/// Where a channel's stream stands: the last offset and the epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamPosition {
    pub offset: u64,
    pub epoch: Arc<str>,
}

/// One message in a channel. Built once by the broker; every subscriber
/// gets a clone of the same bytes.
#[derive(Debug)]
pub struct Publication {
    pub channel: Arc<str>,
    pub offset: u64,
    pub epoch: Arc<str>,
    /// `data` as sent, for raw streams and history.
    pub data: Bytes,
    /// `data` parsed once, for filters and MessagePack.
    pub value: Value,
    /// `{"type":"message","payload":{…}}` in JSON.
    json_frame: Arc<SharedFrame>,
    /// The same in MessagePack, made on first use.
    msgpack_frame: OnceLock<Arc<SharedFrame>>,
    /// `data` alone, for raw streams, made on first use.
    raw_frame: OnceLock<Arc<SharedFrame>>,
    pub published_at: Instant,
}

/// The same message of the same stream.
impl PartialEq for Publication {
    fn eq(&self, other: &Self) -> bool {
        self.offset == other.offset && self.channel == other.channel && self.epoch == other.epoch
    }
}

impl Eq for Publication {}

#[derive(Serialize)]
struct MessagePayload<'a> {
    channel: &'a str,
    offset: u64,
    epoch: &'a str,
    data: &'a Value,
}

impl Publication {
    /// `data` must be the JSON text of `value` (the caller parsed it).
    pub fn new(
        channel: Arc<str>,
        offset: u64,
        epoch: Arc<str>,
        data: Bytes,
        value: Value,
    ) -> Arc<Self> {
        // The JSON frame embeds `data` verbatim: no re-serialization.
        let channel_json = serde_json::to_string(&*channel).expect("a string serializes");
        let epoch_json = serde_json::to_string(&*epoch).expect("a string serializes");
        let mut frame = Vec::with_capacity(data.len() + channel_json.len() + 96);
        frame.extend_from_slice(b"{\"type\":\"message\",\"payload\":{\"channel\":");
        frame.extend_from_slice(channel_json.as_bytes());
        frame.extend_from_slice(b",\"offset\":");
        frame.extend_from_slice(offset.to_string().as_bytes());
        frame.extend_from_slice(b",\"epoch\":");
        frame.extend_from_slice(epoch_json.as_bytes());
        frame.extend_from_slice(b",\"data\":");
        frame.extend_from_slice(&data);
        frame.extend_from_slice(b"}}");
        Arc::new(Publication {
            channel,
            offset,
            epoch,
            data,
            value,
            json_frame: SharedFrame::text(Bytes::from(frame)),
            msgpack_frame: OnceLock::new(),
            raw_frame: OnceLock::new(),
            published_at: Instant::now(),
        })
    }

    /// The `message` frame in the connection's encoding.
    pub fn frame(&self, encoding: Encoding) -> &Arc<SharedFrame> {
        match encoding {
            Encoding::Json => &self.json_frame,
            Encoding::Msgpack => self.msgpack_frame.get_or_init(|| {
                SharedFrame::binary(
                    ServerFrame::new(
                        "message",
                        None,
                        MessagePayload {
                            channel: &self.channel,
                            offset: self.offset,
                            epoch: &self.epoch,
                            data: &self.value,
                        },
                    )
                    .encode(Encoding::Msgpack),
                )
            }),
        }
    }

    /// `data` as one text frame, for raw streams.
    pub fn raw_frame(&self) -> &Arc<SharedFrame> {
        self.raw_frame
            .get_or_init(|| SharedFrame::text(self.data.clone()))
    }

    /// Top-level equality: every key of `filter` is in `data` with an equal
    /// value. Non-object data matches only the empty filter.
    pub fn matches(&self, filter: &Filter) -> bool {
        let Value::Object(fields) = &self.value else {
            return filter.is_empty();
        };
        match filter {
            Filter::Exact(f) => f.iter().all(|(k, v)| fields.get(k) == Some(v)),
            Filter::Text(f) => f.iter().all(|m| match fields.get(&m.key) {
                Some(Value::String(s)) => *s == m.text,
                Some(v @ (Value::Number(_) | Value::Bool(_) | Value::Null)) => {
                    m.scalar.as_ref() == Some(v)
                }
                _ => false,
            }),
        }
    }
}

/// A subscription filter: top-level equality on `data`.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// From a `subscribe` payload: JSON values compared exactly.
    Exact(Map<String, Value>),
    /// From query parameters of a raw stream: text compared with strings,
    /// and with numbers, booleans and null written the JSON way (`?n=3`
    /// matches `"n": 3` and `"n": "3"`).
    Text(Vec<TextMatch>),
}

/// One query-parameter condition, parsed once.
#[derive(Debug, Clone, PartialEq)]
pub struct TextMatch {
    key: String,
    text: String,
    /// `text` read as a JSON number, boolean or null, if it is one.
    scalar: Option<Value>,
}

impl Filter {
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        Filter::Text(
            pairs
                .into_iter()
                .map(|(key, text)| {
                    let scalar = serde_json::from_str::<Value>(&text)
                        .ok()
                        .filter(|v| matches!(v, Value::Number(_) | Value::Bool(_) | Value::Null));
                    TextMatch { key, text, scalar }
                })
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        match self {
            Filter::Exact(f) => f.is_empty(),
            Filter::Text(f) => f.is_empty(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_frame_embeds_data_verbatim() {
        let data = Bytes::from_static(br#"{"a":1,"s":"x"}"#);
        let value: Value = serde_json::from_slice(&data).unwrap();
        let p = Publication::new("chat:1".into(), 7, "ep".into(), data, value);
        let frame: Value = serde_json::from_slice(p.frame(Encoding::Json).bytes()).unwrap();
        assert_eq!(
            frame,
            json!({"type":"message","payload":{"channel":"chat:1","offset":7,"epoch":"ep","data":{"a":1,"s":"x"}}})
        );
        let mp: Value = rmp_serde_decode(p.frame(Encoding::Msgpack).bytes());
        assert_eq!(mp, frame);
    }

    fn rmp_serde_decode(b: &[u8]) -> Value {
        let f = wsgate_protocol::ClientFrame::decode(Encoding::Msgpack, b).unwrap();
        json!({"type": f.kind, "payload": f.payload})
    }

    #[test]
    fn filters_are_top_level_equality() {
        let data = Bytes::from_static(br#"{"severity":"critical","site_id":"abc","n":3}"#);
        let value: Value = serde_json::from_slice(&data).unwrap();
        let p = Publication::new("events".into(), 1, "e".into(), data, value);
        let f = |v: Value| Filter::Exact(v.as_object().unwrap().clone());
        assert!(p.matches(&f(json!({"severity": "critical"}))));
        assert!(p.matches(&f(json!({"severity": "critical", "n": 3}))));
        assert!(!p.matches(&f(json!({"severity": "info"}))));
        assert!(!p.matches(&f(json!({"n": "3"}))));
        assert!(!p.matches(&f(json!({"missing": 1}))));
        assert!(p.matches(&Filter::Exact(Map::new())));
        let t = |pairs: &[(&str, &str)]| {
            Filter::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        };
        assert!(p.matches(&t(&[("severity", "critical"), ("n", "3")])));
        assert!(!p.matches(&t(&[("site_id", "abd")])));
    }
}
