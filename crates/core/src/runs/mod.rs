//! Agent runs, transport-neutral: what an agent backend emits
//! ([`AgentEvent`]), the backend interface ([`AgentBackend`]) and the
//! built-in deterministic [`EchoAgent`], the run manager ([`Runs`]) and
//! the cluster's view of runs ([`RunRegistry`]).
//! Backends that need an HTTP client live in `wsgate-agents`.

mod backend;
mod echo;
mod event;
mod manager;
mod registry;

pub use backend::{AgentBackend, AgentError, AgentInput, AgentMessage, EventSender};
pub use echo::EchoAgent;
pub use event::{AgentEvent, EventParseError, MAX_EVENT_LINE_BYTES};
pub use manager::{ActiveRun, Runs};
pub use registry::{Claimed, RunClaim, RunRegistry};
