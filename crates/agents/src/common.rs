//! What both backends share: racing upstream I/O against the run manager
//! going away, sending events, and turning HTTP failures into reasons that
//! are safe to record and show (no URL user-info, query string or key).

use std::future::Future;

use serde_json::{json, Value};
use wsgate_core::runs::{AgentError, AgentEvent, AgentMessage, EventSender};

/// Runs `work` unless the run manager stops listening first. Waiting on
/// `closed()` as well as on the upstream matters when the upstream is
/// silent: without it a stopped run would hold its connection until the
/// upstream next wrote something.
pub(crate) async fn until_closed<F: Future>(
    events: &EventSender,
    work: F,
) -> Result<F::Output, AgentError> {
    tokio::select! {
        // Checked first so that a closed channel wins over a ready chunk.
        biased;
        () = events.closed() => Err(AgentError::Closed),
        out = work => Ok(out),
    }
}

/// Sends one event; the channel is bounded, so this waits while the run
/// manager is behind, and reading the upstream waits with it.
pub(crate) async fn send(events: &EventSender, event: AgentEvent) -> Result<(), AgentError> {
    events.send(event).await.map_err(|_| AgentError::Closed)
}

/// A reason for a failed request or read. reqwest's `Display` names the URL,
/// which may carry user-info or a key in its query string, so it is dropped
/// with `without_url()`; the source chain (connection refused, timed out…)
/// is kept because it is what an operator needs, and names no URL.
pub(crate) fn http_failure(context: &str, err: reqwest::Error) -> AgentError {
    let err = err.without_url();
    let mut reason = format!("{context}: {err}");
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        source = cause.source();
    }
    AgentError::Upstream(reason)
}

/// A non-2xx answer ends the run with its status. The body is not quoted:
/// an upstream's error body may echo credentials (OpenAI's 401 repeats part
/// of the key) or be arbitrarily large.
pub(crate) fn check_status(who: &str, response: &reqwest::Response) -> Result<(), AgentError> {
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(AgentError::Upstream(format!(
            "{who} answered HTTP {status}"
        )))
    }
}

/// The thread's messages in the `{role, content}` shape both upstreams take.
pub(crate) fn messages_json(messages: &[AgentMessage]) -> impl Iterator<Item = Value> + '_ {
    messages
        .iter()
        .map(|m| json!({ "role": m.role, "content": m.content }))
}
