//! The `openai` backend (SPEC §6): streams `{base_url}/chat/completions`
//! from any OpenAI-compatible server, passing each content delta on as
//! `partial_result` and reporting their concatenation at `data: [DONE]`.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt};
use reqwest::header::ACCEPT;
use serde_json::{json, Value};
use wsgate_core::runs::{AgentBackend, AgentError, AgentEvent, AgentInput, EventSender};

use crate::common::{check_status, http_failure, messages_json, send, until_closed};

/// Longest answer a run may build: past it the run fails instead of letting
/// an upstream grow the concatenation without bound. Also the most bytes the
/// stream may carry between two events, because the SSE parser buffers an
/// unfinished event whole.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;

pub struct OpenAiAgent {
    pub client: reqwest::Client,
    /// `agent.url`, e.g. `https://api.openai.com/v1` (a trailing `/` is
    /// fine).
    pub base_url: String,
    pub model: String,
    /// Sent as `Authorization: Bearer …` when set; never printed.
    pub api_key: Option<String>,
    /// Sent first as a `system` message when non-empty.
    pub system_prompt: String,
}

impl fmt::Debug for OpenAiAgent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiAgent")
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// Why reading the body stopped, as seen through the SSE parser.
#[derive(Debug)]
pub(crate) enum ReadError {
    Http(reqwest::Error),
    /// More than [`MAX_ANSWER_BYTES`] arrived without completing an event.
    TooLong,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Http(e) => e.fmt(f),
            ReadError::TooLong => f.write_str("event too long"),
        }
    }
}

#[async_trait]
impl AgentBackend for OpenAiAgent {
    fn name(&self) -> &'static str {
        "openai"
    }

    async fn run(&self, input: AgentInput, events: EventSender) -> Result<String, AgentError> {
        let system = (!self.system_prompt.is_empty())
            .then(|| json!({ "role": "system", "content": self.system_prompt }));
        let messages: Vec<Value> = system
            .into_iter()
            .chain(messages_json(&input.messages))
            .collect();
        let url = format!("{}/chat/completions", self.base_url.trim_end_matches('/'));
        let mut request = self
            .client
            .post(url)
            .header(ACCEPT, "text/event-stream")
            .json(&json!({ "model": self.model, "stream": true, "messages": messages }));
        if let Some(key) = &self.api_key {
            // reqwest marks this header sensitive, so it is kept out of its
            // debug output too.
            request = request.bearer_auth(key);
        }
        let response = until_closed(&events, request.send())
            .await?
            .map_err(|e| http_failure("the OpenAI request failed", e))?;
        check_status("the OpenAI server", &response)?;

        let body = response.bytes_stream().map(|c| c.map_err(ReadError::Http));
        read_stream(body, &events).await
    }
}

/// Reads the SSE body, passing each content delta on, until `[DONE]` (the
/// concatenation is the answer). Separate from the request so that the
/// parser can be fed arbitrary chunks (`fuzz/`).
pub(crate) async fn read_stream<S>(body: S, events: &EventSender) -> Result<String, AgentError>
where
    S: Stream<Item = Result<Bytes, ReadError>> + Unpin,
{
    // eventsource-stream buffers an unfinished event without limit, so
    // the bytes fed to it since the last event are counted here and the
    // read fails past the bound. The counter is reset when an event
    // comes out; what one chunk brings in beyond that is at most the
    // chunk itself.
    let pending = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&pending);
    let mut stream = body
        .map(move |chunk| {
            let bytes = chunk?;
            let seen = counted.fetch_add(bytes.len(), Ordering::Relaxed) + bytes.len();
            if seen > MAX_ANSWER_BYTES {
                Err(ReadError::TooLong)
            } else {
                Ok(bytes)
            }
        })
        .eventsource();

    let mut answer = String::new();
    loop {
        let event = match until_closed(events, stream.next()).await? {
            Some(Ok(event)) => event,
            Some(Err(e)) => return Err(read_failure(e)),
            None => {
                return Err(AgentError::Upstream(
                    "the OpenAI stream ended without [DONE]".into(),
                ))
            }
        };
        pending.store(0, Ordering::Relaxed);
        if event.data.trim() == "[DONE]" {
            send(
                events,
                AgentEvent::FinalReport {
                    content: answer.clone(),
                },
            )
            .await?;
            return Ok(answer);
        }
        let Some(delta) = chunk_delta(&event.data)? else {
            continue;
        };
        if answer.len() + delta.len() > MAX_ANSWER_BYTES {
            return Err(AgentError::Upstream(format!(
                "the OpenAI answer is longer than {MAX_ANSWER_BYTES} bytes"
            )));
        }
        answer.push_str(&delta);
        send(events, AgentEvent::PartialResult { delta }).await?;
    }
}

/// The reason for a broken stream. Parser errors carry the offending input,
/// which is not quoted.
fn read_failure(err: EventStreamError<ReadError>) -> AgentError {
    match err {
        EventStreamError::Transport(ReadError::Http(e)) => {
            http_failure("reading the OpenAI stream failed", e)
        }
        EventStreamError::Transport(ReadError::TooLong) => AgentError::Upstream(format!(
            "the OpenAI stream sent more than {MAX_ANSWER_BYTES} bytes without an event"
        )),
        EventStreamError::Utf8(_) => {
            AgentError::Upstream("the OpenAI stream is not valid UTF-8".into())
        }
        EventStreamError::Parser(_) => {
            AgentError::Upstream("the OpenAI stream is not server-sent events".into())
        }
    }
}

/// `choices[0].delta.content` of one chunk, when present and non-empty.
/// A chunk with an empty `choices` (a final usage chunk) is fine; one that
/// is not JSON or has no `choices` at all is not an OpenAI stream.
fn chunk_delta(data: &str) -> Result<Option<String>, AgentError> {
    let malformed = |what: &str| AgentError::Upstream(format!("the OpenAI stream sent {what}"));
    let chunk: Value =
        serde_json::from_str(data).map_err(|_| malformed("an event that is not JSON"))?;
    if chunk.get("error").is_some() {
        return Err(malformed("an error event"));
    }
    let choices = chunk
        .get("choices")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("an event without choices"))?;
    let content = choices
        .first()
        .and_then(|c| c.get("delta"))
        .and_then(|d| d.get("content"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    Ok(content.map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_are_read_from_the_first_choice() {
        let delta = |d: &str| chunk_delta(d);
        assert_eq!(
            delta(r#"{"choices":[{"delta":{"content":"hi"}}]}"#),
            Ok(Some("hi".into()))
        );
        assert_eq!(
            delta(r#"{"choices":[{"delta":{"role":"assistant"}}]}"#),
            Ok(None)
        );
        assert_eq!(delta(r#"{"choices":[{"delta":{"content":""}}]}"#), Ok(None));
        assert_eq!(
            delta(r#"{"choices":[{"delta":{"content":null}}]}"#),
            Ok(None)
        );
        assert_eq!(delta(r#"{"choices":[],"usage":{}}"#), Ok(None));
        assert!(delta("nope").is_err());
        assert!(delta(r#"{"id":"x"}"#).is_err());
        assert!(delta(r#"{"error":{"message":"m"}}"#).is_err());
    }

    #[test]
    fn the_key_never_prints() {
        let agent = OpenAiAgent {
            client: reqwest::Client::new(),
            base_url: "http://x".into(),
            model: "m".into(),
            api_key: Some("sk-secret".into()),
            system_prompt: String::new(),
        };
        assert!(!format!("{agent:?}").contains("sk-secret"));
    }
}
