//! wsgate's wire contract: the envelope every frame uses, the two encodings
//! (JSON text and MessagePack binary), error codes and close codes.
//!
//! This crate knows nothing about sockets; it turns bytes into [`ClientFrame`]s
//! and [`ServerFrame`]s into bytes.

mod close;
pub mod command;
mod error;
mod frame;

pub use close::CloseCode;
pub use command::{Command, CommandError};
pub use error::ErrorCode;
pub use frame::{ClientFrame, DecodeError, Encoding, ServerFrame, SERVER_TYPES};

/// Subprotocol name of the JSON encoding (the default).
pub const PROTOCOL_JSON: &str = "wsgate.v1.json";
/// Subprotocol name of the MessagePack encoding.
pub const PROTOCOL_MSGPACK: &str = "wsgate.v1.msgpack";
/// Prefix of the subprotocol entry that carries a bearer token.
pub const BEARER_PROTOCOL_PREFIX: &str = "bearer.";
