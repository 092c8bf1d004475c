//! The envelope `{"type", "id"?, "payload"?}` in JSON text or MessagePack.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The deepest nesting a client frame may have, in either encoding: the
/// recursion limit serde_json applies to JSON text.
pub const MAX_DEPTH: usize = 128;

/// How frames of one connection are encoded, chosen by subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Encoding {
    /// `wsgate.v1.json`: UTF-8 JSON in text frames.
    #[default]
    Json,
    /// `wsgate.v1.msgpack`: MessagePack maps in binary frames.
    Msgpack,
}

impl Encoding {
    pub const fn protocol_name(self) -> &'static str {
        match self {
            Encoding::Json => crate::PROTOCOL_JSON,
            Encoding::Msgpack => crate::PROTOCOL_MSGPACK,
        }
    }

    pub fn from_protocol_name(name: &str) -> Option<Self> {
        match name {
            crate::PROTOCOL_JSON => Some(Encoding::Json),
            crate::PROTOCOL_MSGPACK => Some(Encoding::Msgpack),
            _ => None,
        }
    }

    /// Whether frames of this encoding travel as binary WebSocket messages.
    pub const fn is_binary(self) -> bool {
        matches!(self, Encoding::Msgpack)
    }
}

/// Why a frame could not be read as an envelope. Every variant ends the
/// connection with close 1003: the peer does not speak the protocol.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("frame is not valid {0}")]
    Syntax(&'static str),
    #[error("frame is not an object")]
    NotAnObject,
    #[error("frame has no string \"type\"")]
    MissingType,
}

/// A decoded client frame. `id` and `payload` are kept as sent; the command
/// handler decides whether their shape is acceptable.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientFrame {
    pub kind: String,
    pub id: Option<Value>,
    pub payload: Option<Value>,
}

impl ClientFrame {
    pub fn decode(encoding: Encoding, bytes: &[u8]) -> Result<Self, DecodeError> {
        let value: Value = match encoding {
            Encoding::Json => {
                serde_json::from_slice(bytes).map_err(|_| DecodeError::Syntax("JSON"))?
            }
            Encoding::Msgpack => {
                let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
                // serde_json's own nesting limit. rmp-serde allows 1,024
                // levels, enough to overflow a 2 MiB tokio worker stack
                // while decoding (and again while dropping or re-encoding
                // the value), which aborts the whole process; and data
                // nested deeper than JSON's limit could not be read back
                // from history or the broker as JSON.
                de.set_max_depth(MAX_DEPTH);
                Value::deserialize(&mut de).map_err(|_| DecodeError::Syntax("MessagePack"))?
            }
        };
        let Value::Object(mut map) = value else {
            return Err(DecodeError::NotAnObject);
        };
        let kind = match map.remove("type") {
            Some(Value::String(kind)) => kind,
            _ => return Err(DecodeError::MissingType),
        };
        Ok(ClientFrame {
            kind,
            id: map.remove("id"),
            payload: map.remove("payload"),
        })
    }

    /// The `id` when it is a string, as the protocol requires.
    pub fn id_str(&self) -> Option<&str> {
        self.id.as_ref().and_then(Value::as_str)
    }

    /// The payload as an object; a missing payload reads as empty.
    pub fn payload_object(&self) -> Option<&Map<String, Value>> {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        match &self.payload {
            None | Some(Value::Null) => Some(EMPTY.get_or_init(Map::new)),
            Some(Value::Object(map)) => Some(map),
            Some(_) => None,
        }
    }
}

/// Every `type` the server sends: replies, pushes and run events (SPEC §4).
/// With [`crate::Command::TYPES`] it bounds the values of metric labels.
pub const SERVER_TYPES: &[&str] = &[
    "connected",
    "pong",
    "error",
    "token_refreshed",
    "token_expiring",
    "subscribed",
    "unsubscribed",
    "published",
    "presence",
    "history",
    "message",
    "join",
    "leave",
    "thread_created",
    "threads",
    "thread_loaded",
    "thread_history",
    "thread_renamed",
    "thread_deleted",
    "run_started",
    "run_stopped",
    "agent_started",
    "agent_thinking",
    "tool_executing",
    "tool_result",
    "partial_result",
    "final_report",
    "agent_completed",
];

/// A frame the server sends. `payload` is anything serializable.
#[derive(Debug, Serialize)]
pub struct ServerFrame<'a, P: Serialize> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<P>,
}

impl<'a, P: Serialize> ServerFrame<'a, P> {
    pub fn new(kind: &'a str, id: Option<&'a str>, payload: P) -> Self {
        ServerFrame {
            kind,
            id,
            payload: Some(payload),
        }
    }

    /// Encodes the frame once; the bytes can be shared by many connections.
    pub fn encode(&self, encoding: Encoding) -> Bytes {
        let bytes = match encoding {
            // Serializing derived structs and `Value`s into a Vec cannot fail:
            // every map key is a string and there is no I/O.
            Encoding::Json => serde_json::to_vec(self).expect("server frame serializes to JSON"),
            Encoding::Msgpack => {
                rmp_serde::to_vec_named(self).expect("server frame serializes to MessagePack")
            }
        };
        Bytes::from(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_json_envelope() {
        let f = ClientFrame::decode(Encoding::Json, br#"{"type":"ping","id":"7"}"#).unwrap();
        assert_eq!(f.kind, "ping");
        assert_eq!(f.id_str(), Some("7"));
        assert!(f.payload_object().unwrap().is_empty());
    }

    /// A MessagePack frame nested 1,000 deep (fine for rmp-serde's own
    /// limit of 1,024) overflowed the stack of a tokio worker thread.
    #[test]
    fn messagepack_nesting_is_limited_like_json() {
        fn nested(depth: usize) -> Vec<u8> {
            let mut frame = vec![0x82, 0xa4];
            frame.extend_from_slice(b"type");
            frame.extend_from_slice(&[0xa4]);
            frame.extend_from_slice(b"ping");
            frame.extend_from_slice(&[0xa7]);
            frame.extend_from_slice(b"payload");
            frame.extend(std::iter::repeat_n(0x91, depth));
            frame.push(0xc0);
            frame
        }
        // On a thread with a tokio worker's stack, as the server decodes.
        let decoded = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(|| {
                (
                    ClientFrame::decode(Encoding::Msgpack, &nested(100)).is_ok(),
                    ClientFrame::decode(Encoding::Msgpack, &nested(1000)),
                    ClientFrame::decode(Encoding::Json, &{
                        let mut f = br#"{"type":"ping","payload":"#.to_vec();
                        f.extend(std::iter::repeat_n(b'[', 1000));
                        f
                    }),
                )
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(decoded.0, "100 levels are fine");
        assert_eq!(decoded.1, Err(DecodeError::Syntax("MessagePack")));
        assert_eq!(decoded.2, Err(DecodeError::Syntax("JSON")));
    }

    #[test]
    fn rejects_non_envelopes() {
        assert_eq!(
            ClientFrame::decode(Encoding::Json, b"[1,2]"),
            Err(DecodeError::NotAnObject)
        );
        assert_eq!(
            ClientFrame::decode(Encoding::Json, br#"{"type":3}"#),
            Err(DecodeError::MissingType)
        );
        assert_eq!(
            ClientFrame::decode(Encoding::Json, b"{nope"),
            Err(DecodeError::Syntax("JSON"))
        );
        assert_eq!(
            ClientFrame::decode(Encoding::Msgpack, &[0xc1]),
            Err(DecodeError::Syntax("MessagePack"))
        );
    }

    #[test]
    fn payload_must_be_an_object() {
        let f = ClientFrame::decode(Encoding::Json, br#"{"type":"x","payload":5}"#).unwrap();
        assert!(f.payload_object().is_none());
    }

    #[test]
    fn msgpack_round_trip_has_the_json_structure() {
        let frame = ServerFrame::new("pong", Some("a"), json!({"n": 1}));
        let bytes = frame.encode(Encoding::Msgpack);
        let back = ClientFrame::decode(Encoding::Msgpack, &bytes).unwrap();
        assert_eq!(back.kind, "pong");
        assert_eq!(back.id_str(), Some("a"));
        assert_eq!(back.payload, Some(json!({"n": 1})));
        let json = frame.encode(Encoding::Json);
        assert_eq!(&json[..], br#"{"type":"pong","id":"a","payload":{"n":1}}"#);
    }
}
