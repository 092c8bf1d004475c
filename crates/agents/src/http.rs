//! The `http` backend (SPEC §6): POSTs the thread to `agent.url` and reads
//! the response as newline-delimited JSON events `{type, payload}`, each
//! passed on as it arrives; the `final_report` content is the answer.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::json;
use wsgate_core::runs::{
    AgentBackend, AgentError, AgentEvent, AgentInput, EventSender, MAX_EVENT_LINE_BYTES,
};

use crate::common::{check_status, http_failure, messages_json, send, until_closed};

pub struct HttpAgent {
    pub client: reqwest::Client,
    /// `agent.url`. It may carry user-info or a token in its query string;
    /// neither ever appears in a failure reason.
    pub url: String,
    /// Deadline for the whole request, body included (reqwest's per-request
    /// timeout), so a backend used on its own cannot hang forever; the run
    /// manager's `agent.timeout_secs` is the one users see.
    pub timeout: Duration,
}

#[async_trait]
impl AgentBackend for HttpAgent {
    fn name(&self) -> &'static str {
        "http"
    }

    async fn run(&self, input: AgentInput, events: EventSender) -> Result<String, AgentError> {
        let body = json!({
            "run_id": input.run_id,
            "thread_id": input.thread_id,
            "user": input.user,
            "messages": messages_json(&input.messages).collect::<Vec<_>>(),
        });
        let request = self
            .client
            .post(&self.url)
            .timeout(self.timeout)
            .json(&body)
            .send();
        let response = until_closed(&events, request)
            .await?
            .map_err(|e| http_failure("the agent request failed", e))?;
        check_status("the agent", &response)?;

        let body = response
            .bytes_stream()
            .map(|chunk| chunk.map_err(|e| http_failure("reading the agent's stream failed", e)));
        read_events(body, &events).await
    }
}

/// Reads the NDJSON body, passing each event on, until the final report
/// (its content is the answer). Separate from the request so that the
/// parser can be fed arbitrary chunks (`fuzz/`).
pub(crate) async fn read_events<S>(mut body: S, events: &EventSender) -> Result<String, AgentError>
where
    S: Stream<Item = Result<Bytes, AgentError>> + Unpin,
{
    let mut lines = LineBuffer::default();
    let mut complete = Vec::new();
    loop {
        let chunk = until_closed(events, body.next()).await?;
        let at_end = match chunk {
            Some(bytes) => {
                lines.feed(&bytes?, &mut complete)?;
                false
            }
            // NDJSON's last line may lack its newline: it still counts.
            None => {
                complete.extend(lines.finish());
                true
            }
        };
        for line in complete.drain(..) {
            if let Some(answer) = handle_line(&line, events).await? {
                // The final report ends the run: an upstream that keeps
                // the connection open after it does not hold the run.
                return Ok(answer);
            }
        }
        if at_end {
            return Err(AgentError::Upstream(
                "the agent's stream ended without a final_report".into(),
            ));
        }
    }
}

/// Passes one line on as an event; `Some(answer)` once it was the report.
async fn handle_line(line: &[u8], events: &EventSender) -> Result<Option<String>, AgentError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let event = AgentEvent::from_line(line)
        .map_err(|e| AgentError::Upstream(format!("the agent sent an invalid event: {e}")))?;
    let answer = match &event {
        AgentEvent::FinalReport { content } => Some(content.clone()),
        _ => None,
    };
    send(events, event).await?;
    Ok(answer)
}

/// The bytes of the line being received. Bounded by
/// [`MAX_EVENT_LINE_BYTES`]: a chunk that would take it past that fails
/// before it is copied, so an upstream that never sends a newline costs at
/// most one line's worth of memory.
#[derive(Default)]
struct LineBuffer {
    partial: Vec<u8>,
}

impl LineBuffer {
    /// Appends the complete lines of `chunk` (without their `\n`) to
    /// `lines` and keeps the rest for the next chunk.
    fn feed(&mut self, chunk: &[u8], lines: &mut Vec<Vec<u8>>) -> Result<(), AgentError> {
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            self.check(end)?;
            let mut line = std::mem::take(&mut self.partial);
            line.extend_from_slice(&rest[..end]);
            lines.push(line);
            rest = &rest[end + 1..];
        }
        self.check(rest.len())?;
        self.partial.extend_from_slice(rest);
        Ok(())
    }

    fn check(&self, more: usize) -> Result<(), AgentError> {
        if self.partial.len() + more > MAX_EVENT_LINE_BYTES {
            return Err(AgentError::Upstream(format!(
                "the agent sent a line longer than {MAX_EVENT_LINE_BYTES} bytes"
            )));
        }
        Ok(())
    }

    /// The unterminated last line, if any.
    fn finish(&mut self) -> Option<Vec<u8>> {
        Some(std::mem::take(&mut self.partial)).filter(|l| !l.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_chunks_are_joined() {
        let mut buf = LineBuffer::default();
        let mut lines = Vec::new();
        buf.feed(b"ab", &mut lines).unwrap();
        buf.feed(b"c\nd\n\ne", &mut lines).unwrap();
        assert_eq!(lines, [b"abc".to_vec(), b"d".to_vec(), Vec::new()]);
        assert_eq!(buf.finish(), Some(b"e".to_vec()));
        assert_eq!(buf.finish(), None);
    }

    #[test]
    fn a_line_may_be_exactly_the_limit_but_not_more() {
        let mut buf = LineBuffer::default();
        let mut lines = Vec::new();
        let max = vec![b'x'; MAX_EVENT_LINE_BYTES];
        buf.feed(&max, &mut lines).unwrap();
        buf.feed(b"\n", &mut lines).unwrap();
        assert_eq!(lines.len(), 1);
        buf.feed(&max, &mut lines).unwrap();
        assert!(buf.feed(b"y", &mut lines).is_err());
        // The chunk that failed was not copied in.
        assert_eq!(buf.partial.len(), MAX_EVENT_LINE_BYTES);
    }
}
