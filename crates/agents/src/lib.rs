//! Agent backends that talk to an upstream over HTTP (SPEC §6): [`HttpAgent`]
//! (`agent.kind = "http"`, newline-delimited JSON events) and
//! [`OpenAiAgent`] (`agent.kind = "openai"`, any OpenAI-compatible
//! `chat/completions` stream). They live outside `wsgate-core` so that the
//! core stays free of an HTTP client; both implement
//! [`wsgate_core::runs::AgentBackend`] and are stopped by dropping the run
//! future, which drops the upstream connection with it.

mod common;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod http;
mod openai;

pub use http::HttpAgent;
pub use openai::{OpenAiAgent, MAX_ANSWER_BYTES};
