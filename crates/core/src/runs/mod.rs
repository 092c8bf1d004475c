//! Agent runs, transport-neutral: what an agent backend emits
//! ([`AgentEvent`]), the backend interface ([`AgentBackend`]) and the
//! built-in deterministic [`EchoAgent`], and the run manager ([`Runs`]).
//! Backends that need an HTTP client live in `wsgate-agents`.

mod backend;
mod echo;
mod event;
mod manager;

pub use backend::{AgentBackend, AgentError, AgentInput, AgentMessage, EventSender};
pub use echo::EchoAgent;
pub use event::{AgentEvent, EventParseError, MAX_EVENT_LINE_BYTES};
pub use manager::{ActiveRun, Runs};
