//! What an agent emits during a run, in the wire shape of SPEC §4's run
//! events: `{"type": "partial_result", "payload": {"delta": "…"}}`. The
//! `http` backend's NDJSON lines are exactly this shape, so one parser
//! validates them; the run manager adds `run_id` and `thread_id` and the
//! `agent_started` / `agent_completed` events around them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest NDJSON line an upstream may send: a line longer than this ends
/// the run `failed` instead of growing a buffer without bound.
pub const MAX_EVENT_LINE_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "payload", rename_all = "snake_case")]
pub enum AgentEvent {
    /// `agent_thinking {text}`.
    #[serde(rename = "agent_thinking")]
    Thinking { text: String },
    /// `tool_executing {tool, input}`.
    ToolExecuting { tool: String, input: Value },
    /// `tool_result {tool, output}`.
    ToolResult { tool: String, output: Value },
    /// `partial_result {delta}`: the next piece of the answer.
    PartialResult { delta: String },
    /// `final_report {content}`: the whole answer, stored as the assistant
    /// message (the manager adds its `message_id`).
    FinalReport { content: String },
}

impl AgentEvent {
    /// The event's `type` on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            AgentEvent::Thinking { .. } => "agent_thinking",
            AgentEvent::ToolExecuting { .. } => "tool_executing",
            AgentEvent::ToolResult { .. } => "tool_result",
            AgentEvent::PartialResult { .. } => "partial_result",
            AgentEvent::FinalReport { .. } => "final_report",
        }
    }

    /// Reads one NDJSON line of an upstream agent. Whatever is not one of
    /// the event types with its fields is an error that ends the run, with
    /// a reason that quotes nothing of the line (it may be huge, or carry
    /// what the upstream should not have sent).
    pub fn from_line(line: &[u8]) -> Result<Self, EventParseError> {
        if line.len() > MAX_EVENT_LINE_BYTES {
            return Err(EventParseError::TooLong);
        }
        let value: Value = serde_json::from_slice(line).map_err(|_| EventParseError::NotJson)?;
        let kind = value
            .get("type")
            .and_then(Value::as_str)
            .ok_or(EventParseError::NoType)?;
        let known = [
            "agent_thinking",
            "tool_executing",
            "tool_result",
            "partial_result",
            "final_report",
        ];
        if !known.contains(&kind) {
            return Err(EventParseError::UnknownType);
        }
        serde_json::from_value(value).map_err(|e| EventParseError::BadPayload(e.to_string()))
    }
}

/// Why an upstream line is not an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventParseError {
    #[error("an event line is longer than {MAX_EVENT_LINE_BYTES} bytes")]
    TooLong,
    #[error("an event line is not JSON")]
    NotJson,
    #[error("an event line has no string \"type\"")]
    NoType,
    #[error("an event line has an unknown type")]
    UnknownType,
    #[error("an event's payload is invalid: {0}")]
    BadPayload(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_round_trip_in_the_wire_shape() {
        let events = [
            AgentEvent::Thinking { text: "t".into() },
            AgentEvent::ToolExecuting {
                tool: "word_count".into(),
                input: json!({"text": "a b"}),
            },
            AgentEvent::ToolResult {
                tool: "word_count".into(),
                output: json!({"words": 2}),
            },
            AgentEvent::PartialResult { delta: "a ".into() },
            AgentEvent::FinalReport {
                content: "a b".into(),
            },
        ];
        for e in events {
            let line = serde_json::to_vec(&e).unwrap();
            let v: Value = serde_json::from_slice(&line).unwrap();
            assert_eq!(v["type"], e.kind());
            assert!(v["payload"].is_object());
            assert_eq!(AgentEvent::from_line(&line), Ok(e));
        }
        assert_eq!(
            serde_json::to_value(AgentEvent::PartialResult { delta: "x".into() }).unwrap(),
            json!({"type": "partial_result", "payload": {"delta": "x"}})
        );
    }

    #[test]
    fn bad_lines_are_named_without_quoting_them() {
        let cases: [(&[u8], EventParseError); 4] = [
            (b"nope", EventParseError::NotJson),
            (br#"{"payload":{}}"#, EventParseError::NoType),
            (
                br#"{"type":"agent_completed","payload":{}}"#,
                EventParseError::UnknownType,
            ),
            (br#"{"type":7}"#, EventParseError::NoType),
        ];
        for (line, want) in cases {
            assert_eq!(AgentEvent::from_line(line), Err(want));
        }
        let bad = AgentEvent::from_line(br#"{"type":"partial_result","payload":{"delta":5}}"#);
        assert!(
            matches!(bad, Err(EventParseError::BadPayload(_))),
            "{bad:?}"
        );
        let long = vec![b' '; MAX_EVENT_LINE_BYTES + 1];
        assert_eq!(AgentEvent::from_line(&long), Err(EventParseError::TooLong));
    }
}
