//! The interface every agent backend implements: given the thread so far,
//! emit events into a bounded channel and return the final answer. A run
//! is stopped by dropping its future, which drops the upstream request at
//! once (no cancellation protocol to get wrong).

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::AgentEvent;

/// One message of the conversation as a backend sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentMessage {
    /// `user` or `assistant`.
    pub role: &'static str,
    pub content: String,
}

/// What a run starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInput {
    pub run_id: String,
    pub thread_id: String,
    pub user: String,
    /// The thread's messages, oldest first.
    pub messages: Vec<AgentMessage>,
}

/// Where a backend sends its events. Bounded: a backend that produces
/// faster than the run manager publishes waits (its upstream is then read
/// no faster than events can be delivered) instead of queueing without
/// bound.
pub type EventSender = mpsc::Sender<AgentEvent>;

/// Why a run failed, as recorded and sent in `agent_completed {error}`.
/// The reason never contains credentials (an API key, a URL's user-info).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Upstream(String),
    /// The run manager stopped listening (the run was stopped or timed
    /// out); the backend just returns.
    #[error("run ended")]
    Closed,
}

#[async_trait]
pub trait AgentBackend: Send + Sync + 'static {
    /// `echo`, `http` or `openai`: the label of the run metrics.
    fn name(&self) -> &'static str;

    /// Runs the agent: events go to `events` in order; the final answer is
    /// also sent as [`AgentEvent::FinalReport`] and returned.
    async fn run(&self, input: AgentInput, events: EventSender) -> Result<String, AgentError>;
}
