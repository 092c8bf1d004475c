//! Agent runs, transport-neutral: what an agent backend emits
//! ([`AgentEvent`]), the backend interface ([`AgentBackend`]) and the
//! built-in deterministic [`EchoAgent`]. Backends that need an HTTP client
//! live in their own crate; the run manager that publishes events to
//! `thread:<id>` and records runs comes with thread storage.

mod backend;
mod echo;
mod event;

pub use backend::{AgentBackend, AgentError, AgentInput, AgentMessage, EventSender};
pub use echo::EchoAgent;
pub use event::{AgentEvent, EventParseError, MAX_EVENT_LINE_BYTES};
