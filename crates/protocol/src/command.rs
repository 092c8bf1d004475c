//! The client → server commands of SPEC §4 as one typed enum, decoded once
//! from an envelope's `type` and `payload`. A field of the wrong type or a
//! missing required field is a [`CommandError::BadRequest`] naming the
//! field; the list of types (for metric labels and the unknown-type path)
//! comes from the same declaration.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A stream position as a client sends it (`recover`, `since`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub offset: u64,
    pub epoch: String,
}

/// Why a frame's `type` and `payload` are not a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// `error unknown_type`; the connection stays open.
    #[error("unknown message type")]
    UnknownType,
    /// `error invalid_message`: the payload is not an object.
    #[error("\"payload\" must be an object")]
    PayloadNotAnObject,
    /// `error bad_request`; the message names the field.
    #[error("{0}")]
    BadRequest(String),
}

/// Reads a payload object into a command's fields; the error names the
/// field (`payload.channel: invalid type: integer `5`, expected a string`,
/// `payload: missing field `channel``).
fn fields<T: DeserializeOwned>(payload: Value) -> Result<T, CommandError> {
    serde_path_to_error::deserialize(payload).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        CommandError::BadRequest(if path.is_empty() || path == "." {
            format!("payload: {inner}")
        } else {
            format!("payload.{path}: {inner}")
        })
    })
}

/// Declares the commands once: the enum, each type's name, and the parser.
macro_rules! commands {
    ($( $(#[$doc:meta])* $variant:ident($fields:ty) = $name:literal, )*) => {
        #[derive(Debug, Clone, PartialEq)]
        pub enum Command {
            $( $(#[$doc])* $variant($fields), )*
        }

        impl Command {
            /// Every command type, as sent in `type`.
            pub const TYPES: &'static [&'static str] = &[$($name),*];

            /// The command's `type`.
            pub fn name(&self) -> &'static str {
                match self {
                    $( Command::$variant(_) => $name, )*
                }
            }

            /// Decodes the command of `type` `kind` from its payload; a
            /// missing or `null` payload reads as `{}`.
            pub fn parse(kind: &str, payload: Option<Value>) -> Result<Self, CommandError> {
                let payload = match payload {
                    None | Some(Value::Null) => Value::Object(Map::new()),
                    Some(p @ Value::Object(_)) => p,
                    Some(_) => return Err(CommandError::PayloadNotAnObject),
                };
                match kind {
                    $( $name => Ok(Command::$variant(fields(payload)?)), )*
                    _ => Err(CommandError::UnknownType),
                }
            }
        }
    };
}

commands! {
    /// `pong`.
    Ping(NoFields) = "ping",
    /// `token_refreshed {expires_at}`.
    RefreshToken(RefreshToken) = "refresh_token",
    /// `subscribed {channel, offset, epoch, recovered}`, then the backlog.
    Subscribe(Subscribe) = "subscribe",
    /// `unsubscribed {channel}`.
    Unsubscribe(ChannelOnly) = "unsubscribe",
    /// `published {channel, offset, epoch}`.
    Publish(Publish) = "publish",
    /// `presence {channel, clients}`.
    Presence(ChannelOnly) = "presence",
    /// `history {channel, epoch, offset, publications, more}`.
    History(History) = "history",
    /// `thread_created {thread}`.
    CreateThread(CreateThread) = "create_thread",
    /// `threads {threads}`.
    ListThreads(Page) = "list_threads",
    /// `thread_loaded {thread, messages, offset, epoch, active_run}`.
    SwitchThread(ThreadOnly) = "switch_thread",
    /// `thread_history {thread_id, messages}`.
    GetThreadHistory(ThreadPage) = "get_thread_history",
    /// `thread_renamed {thread}`.
    RenameThread(RenameThread) = "rename_thread",
    /// `thread_deleted {thread_id}`.
    DeleteThread(ThreadOnly) = "delete_thread",
    /// The message is stored, then a run starts.
    UserMessage(UserMessage) = "user_message",
    /// Starts a run on the thread as it stands.
    StartAgent(ThreadOnly) = "start_agent",
    /// The run ends `stopped`.
    StopAgent(StopAgent) = "stop_agent",
}

/// A command without arguments (anything in its payload is ignored).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NoFields {}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RefreshToken {
    pub token: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Subscribe {
    pub channel: String,
    /// Top-level equality matches on a publication's `data`.
    #[serde(default)]
    pub filter: Option<Map<String, Value>>,
    #[serde(default)]
    pub recover: Option<Position>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChannelOnly {
    pub channel: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Publish {
    pub channel: String,
    /// Any JSON value, `null` included; required.
    pub data: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct History {
    pub channel: String,
    #[serde(default)]
    pub since: Option<Position>,
    #[serde(default)]
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CreateThread {
    #[serde(default)]
    pub title: Option<String>,
}

/// `limit` and `before` of a listing: at most `limit` items older than the
/// `before` cursor (an id the previous page ended with).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Page {
    #[serde(default)]
    pub limit: Option<u64>,
    #[serde(default)]
    pub before: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ThreadOnly {
    pub thread_id: String,
}

/// One thread's messages, paged like [`Page`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ThreadPage {
    pub thread_id: String,
    #[serde(default)]
    pub limit: Option<u64>,
    #[serde(default)]
    pub before: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RenameThread {
    pub thread_id: String,
    pub title: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UserMessage {
    pub content: String,
    /// Default: the switched thread, else a new one.
    #[serde(default)]
    pub thread_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StopAgent {
    pub run_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(kind: &str, payload: Value) -> Result<Command, CommandError> {
        Command::parse(kind, Some(payload))
    }

    fn bad(kind: &str, payload: Value) -> String {
        match parse(kind, payload) {
            Err(CommandError::BadRequest(m)) => m,
            other => panic!("{kind}: expected bad_request, got {other:?}"),
        }
    }

    #[test]
    fn every_command_decodes() {
        let ok = [
            ("ping", json!({})),
            ("refresh_token", json!({"token": "t"})),
            (
                "subscribe",
                json!({"channel": "c", "filter": {"a": 1}, "recover": {"offset": 3, "epoch": "e"}}),
            ),
            ("unsubscribe", json!({"channel": "c"})),
            ("publish", json!({"channel": "c", "data": null})),
            ("presence", json!({"channel": "c"})),
            (
                "history",
                json!({"channel": "c", "since": {"offset": 0, "epoch": "e"}, "limit": 5}),
            ),
            ("create_thread", json!({"title": "t"})),
            ("list_threads", json!({"limit": 10, "before": "x"})),
            ("switch_thread", json!({"thread_id": "t"})),
            ("get_thread_history", json!({"thread_id": "t", "limit": 2})),
            ("rename_thread", json!({"thread_id": "t", "title": "new"})),
            ("delete_thread", json!({"thread_id": "t"})),
            ("user_message", json!({"content": "hi"})),
            ("start_agent", json!({"thread_id": "t"})),
            ("stop_agent", json!({"run_id": "r"})),
        ];
        assert_eq!(ok.len(), Command::TYPES.len(), "one case per command");
        for (kind, payload) in ok {
            let command = parse(kind, payload).unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert_eq!(command.name(), kind);
        }
        assert_eq!(
            parse(
                "subscribe",
                json!({"channel": "c", "recover": {"offset": 3, "epoch": "e"}})
            )
            .unwrap(),
            Command::Subscribe(Subscribe {
                channel: "c".into(),
                filter: None,
                recover: Some(Position {
                    offset: 3,
                    epoch: "e".into()
                }),
            })
        );
        assert_eq!(
            parse(
                "get_thread_history",
                json!({"thread_id": "t", "before": "m9"})
            )
            .unwrap(),
            Command::GetThreadHistory(ThreadPage {
                thread_id: "t".into(),
                limit: None,
                before: Some("m9".into()),
            })
        );
    }

    #[test]
    fn a_missing_payload_is_empty_and_optional_fields_may_be_null() {
        assert_eq!(Command::parse("ping", None), Ok(Command::Ping(NoFields {})));
        assert_eq!(
            Command::parse("create_thread", Some(Value::Null)),
            Ok(Command::CreateThread(CreateThread { title: None }))
        );
        assert!(parse(
            "subscribe",
            json!({"channel": "c", "filter": null, "recover": null})
        )
        .is_ok());
    }

    #[test]
    fn missing_required_fields_are_named() {
        let cases = [
            ("refresh_token", "token"),
            ("subscribe", "channel"),
            ("unsubscribe", "channel"),
            ("publish", "channel"),
            ("presence", "channel"),
            ("history", "channel"),
            ("switch_thread", "thread_id"),
            ("get_thread_history", "thread_id"),
            ("rename_thread", "thread_id"),
            ("delete_thread", "thread_id"),
            ("user_message", "content"),
            ("start_agent", "thread_id"),
            ("stop_agent", "run_id"),
        ];
        for (kind, field) in cases {
            let m = bad(kind, json!({}));
            assert!(m.contains(&format!("`{field}`")), "{kind}: {m}");
        }
        let m = bad("publish", json!({"channel": "c"}));
        assert!(m.contains("`data`"), "{m}");
        let m = bad("rename_thread", json!({"thread_id": "t"}));
        assert!(m.contains("`title`"), "{m}");
    }

    #[test]
    fn fields_of_the_wrong_type_are_named() {
        let cases = [
            ("refresh_token", json!({"token": 5}), "payload.token"),
            ("subscribe", json!({"channel": 5}), "payload.channel"),
            (
                "subscribe",
                json!({"channel": "c", "filter": 5}),
                "payload.filter",
            ),
            (
                "subscribe",
                json!({"channel": "c", "filter": [1]}),
                "payload.filter",
            ),
            (
                "subscribe",
                json!({"channel": "c", "recover": 5}),
                "payload.recover",
            ),
            (
                "subscribe",
                json!({"channel": "c", "recover": {"offset": -1, "epoch": "e"}}),
                "payload.recover.offset",
            ),
            (
                "subscribe",
                json!({"channel": "c", "recover": {"offset": 1, "epoch": 2}}),
                "payload.recover.epoch",
            ),
            ("unsubscribe", json!({"channel": true}), "payload.channel"),
            (
                "publish",
                json!({"channel": [], "data": 1}),
                "payload.channel",
            ),
            ("presence", json!({"channel": {}}), "payload.channel"),
            (
                "history",
                json!({"channel": "c", "limit": -1}),
                "payload.limit",
            ),
            (
                "history",
                json!({"channel": "c", "limit": "x"}),
                "payload.limit",
            ),
            (
                "history",
                json!({"channel": "c", "since": "x"}),
                "payload.since",
            ),
            ("create_thread", json!({"title": 1}), "payload.title"),
            ("list_threads", json!({"limit": "x"}), "payload.limit"),
            ("list_threads", json!({"before": 1}), "payload.before"),
            (
                "switch_thread",
                json!({"thread_id": 1}),
                "payload.thread_id",
            ),
            (
                "get_thread_history",
                json!({"thread_id": "t", "limit": 1.5}),
                "payload.limit",
            ),
            (
                "rename_thread",
                json!({"thread_id": "t", "title": null}),
                "payload.title",
            ),
            (
                "delete_thread",
                json!({"thread_id": []}),
                "payload.thread_id",
            ),
            ("user_message", json!({"content": 1}), "payload.content"),
            (
                "user_message",
                json!({"content": "x", "thread_id": 1}),
                "payload.thread_id",
            ),
            ("start_agent", json!({"thread_id": 1}), "payload.thread_id"),
            ("stop_agent", json!({"run_id": 1}), "payload.run_id"),
        ];
        for (kind, payload, field) in cases {
            let m = bad(kind, payload.clone());
            assert!(m.starts_with(field), "{kind} {payload}: {m}");
        }
    }

    #[test]
    fn unknown_types_and_non_object_payloads() {
        assert_eq!(parse("nope", json!({})), Err(CommandError::UnknownType));
        assert_eq!(
            parse("ping", json!([1])),
            Err(CommandError::PayloadNotAnObject)
        );
        assert_eq!(
            parse("subscribe", json!("c")),
            Err(CommandError::PayloadNotAnObject)
        );
    }
}
