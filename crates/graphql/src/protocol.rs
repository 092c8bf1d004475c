//! The graphql-transport-ws messages (the protocol of the npm `graphql-ws`
//! client): what a client may send, and the frames the server writes.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::operation::Operation;

/// The subprotocol, the only one `/graphql` accepts on an upgrade.
pub const PROTOCOL: &str = "graphql-transport-ws";

/// A client message. Anything else (another `type`, a missing `id`, a
/// `subscribe` without a `query`) is not of the protocol: close 4400.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ClientMessage {
    ConnectionInit {
        #[serde(default)]
        payload: Option<Value>,
    },
    Ping {
        #[serde(default)]
        payload: Option<Value>,
    },
    Pong {
        #[serde(default)]
        #[allow(dead_code)]
        payload: Option<Value>,
    },
    Subscribe {
        id: String,
        payload: Operation,
    },
    Complete {
        id: String,
    },
}

/// Longest operation id accepted: ids are the client's (graphql-ws makes
/// UUIDs), kept per operation and echoed in every frame of it.
pub(crate) const MAX_ID_BYTES: usize = 128;

impl ClientMessage {
    pub fn parse(text: &[u8]) -> Result<Self, String> {
        let msg: ClientMessage = serde_json::from_slice(text).map_err(|e| e.to_string())?;
        match &msg {
            ClientMessage::Subscribe { id, .. } | ClientMessage::Complete { id }
                if id.is_empty() || id.len() > MAX_ID_BYTES =>
            {
                Err(format!("an id is 1 to {MAX_ID_BYTES} bytes"))
            }
            _ => Ok(msg),
        }
    }
}

/// The token a `connection_init` payload carries: `{"token": "…"}` or
/// `{"Authorization": "Bearer …"}` (any case of the key and the scheme).
pub(crate) fn init_token(payload: Option<&Value>) -> Option<&str> {
    let fields = payload?.as_object()?;
    if let Some(token) = fields.get("token").and_then(Value::as_str) {
        return Some(token);
    }
    let auth = fields
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))?
        .1
        .as_str()?;
    let (scheme, token) = auth.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn encode(v: &Value) -> Bytes {
    Bytes::from(v.to_string())
}

pub(crate) fn ack() -> Bytes {
    Bytes::from_static(br#"{"type":"connection_ack"}"#)
}

pub(crate) fn pong(payload: Option<Value>) -> Bytes {
    match payload {
        Some(p) => encode(&json!({"type": "pong", "payload": p})),
        None => Bytes::from_static(br#"{"type":"pong"}"#),
    }
}

pub(crate) fn complete(id: &str) -> Bytes {
    encode(&json!({"type": "complete", "id": id}))
}

/// `error`: the operation failed before it ran; `errors` is a non-empty
/// array of GraphQL errors.
pub(crate) fn error(id: &str, errors: &Value) -> Bytes {
    encode(&json!({"type": "error", "id": id, "payload": errors}))
}

/// The start of a `next` frame of operation `id`, up to its payload: a
/// shared resolution's payload is written after it for each subscriber.
pub(crate) fn next_prefix(id: &str) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(id.len() + 40);
    prefix.extend_from_slice(br#"{"id":"#);
    prefix.extend_from_slice(Value::String(id.to_owned()).to_string().as_bytes());
    prefix.extend_from_slice(br#","type":"next","payload":"#);
    prefix
}

/// A whole `next` frame: `prefix` (from [`next_prefix`]), then the
/// serialized execution result.
pub(crate) fn next(prefix: &[u8], payload: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(prefix.len() + payload.len() + 1);
    frame.extend_from_slice(prefix);
    frame.extend_from_slice(payload);
    frame.push(b'}');
    Bytes::from(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_and_bad_ones_do_not() {
        assert!(matches!(
            ClientMessage::parse(br#"{"type":"connection_init","payload":{"token":"t"}}"#),
            Ok(ClientMessage::ConnectionInit { .. })
        ));
        assert!(matches!(
            ClientMessage::parse(
                br#"{"type":"subscribe","id":"1","payload":{"query":"{me{user}}"}}"#
            ),
            Ok(ClientMessage::Subscribe { .. })
        ));
        for bad in [
            &br#"{"type":"subscribe","id":"1","payload":{}}"#[..],
            br#"{"type":"subscribe","id":"","payload":{"query":"{a}"}}"#,
            br#"{"type":"start","id":"1"}"#,
            br#"{"type":"complete"}"#,
            br#"not json"#,
        ] {
            assert!(
                ClientMessage::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!(
            r#"{{"type":"complete","id":"{}"}}"#,
            "x".repeat(MAX_ID_BYTES + 1)
        );
        assert!(ClientMessage::parse(long.as_bytes()).is_err());
    }

    #[test]
    fn the_token_comes_from_either_field() {
        let t = |v: Value| init_token(Some(&v)).map(str::to_owned);
        assert_eq!(t(json!({"token": "a"})), Some("a".into()));
        assert_eq!(t(json!({"Authorization": "Bearer b"})), Some("b".into()));
        assert_eq!(t(json!({"authorization": "bearer c"})), Some("c".into()));
        assert_eq!(t(json!({"Authorization": "Basic d"})), None);
        assert_eq!(t(json!({})), None);
        assert_eq!(init_token(None), None);
    }

    #[test]
    fn a_next_frame_is_the_prefix_and_the_payload() {
        let frame = next(&next_prefix("a\"b"), br#"{"data":{"x":1}}"#);
        let v: Value = serde_json::from_slice(&frame).unwrap();
        assert_eq!(
            v,
            json!({"id": "a\"b", "type": "next", "payload": {"data": {"x": 1}}})
        );
    }
}
