//! GraphQL for wsgate (SPEC §10): a schema over the same channels, threads
//! and runs services as `/ws`, served over HTTP and over WebSocket with the
//! `graphql-transport-ws` protocol, where identical subscriptions share one
//! resolution of each publication.
//!
//! The transport (frames, heartbeats, the bounded outbound queue) is the
//! server's, the same as `/ws`: [`GraphqlConnection`] is only a
//! [`ConnectionHandler`](wsgate_core::connection::handler::ConnectionHandler).

mod connection;
mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod mutation;
mod operation;
mod protocol;
mod pump;
mod query;
mod schema;
mod shared;
mod subscription;
mod tap;
mod types;

pub use connection::{Gate, GraphqlConnection};
pub use error::{code_label, with_codes};
pub use operation::{Operation, OperationKind};
pub use protocol::PROTOCOL;
pub use schema::{sdl, Graphql, GraphqlSettings, StatsFn, Viewer};
