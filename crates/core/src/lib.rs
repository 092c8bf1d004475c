//! wsgate's transport-neutral core.
//!
//! A [`session::Session`] is the per-connection protocol state machine: it is
//! fed decoded frames and writes replies into an [`outbound::Outbound`] queue.
//! It never sees a socket, so the WebSocket transport (in the server crate),
//! tests and future transports all drive it the same way. The [`hub::Hub`]
//! knows every open connection, enforces the connection caps and lets the
//! server API reach a user's connections.

pub mod auth;
pub mod broker;
pub mod channels;
pub mod connection;
pub mod error;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod runs;
pub mod session;
pub mod threads;

pub use wsgate_protocol as protocol;
