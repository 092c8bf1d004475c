//! The one error a command fails with, whichever front end asked (`/ws`,
//! the HTTP API, GraphQL later): a code from the protocol's list and a
//! message for the client. Each front end turns it into its own answer in
//! one place (an `error` frame, an HTTP status and JSON body).

use wsgate_protocol::ErrorCode;

use crate::broker::BrokerError;
use crate::channels::authorizer::Denied;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CommandError {
    pub code: ErrorCode,
    pub message: String,
    /// With `rate_limited`: when to try again.
    pub retry_after_ms: Option<u64>,
}

impl CommandError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        CommandError {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }

    /// A command the protocol names whose service does not exist yet (the
    /// thread and agent commands until storage and agents land): answered
    /// as an unknown type, as before they were declared.
    pub fn not_implemented(kind: &str) -> Self {
        Self::new(
            ErrorCode::UnknownType,
            format!("{kind} is not available on this server yet"),
        )
    }
}

/// The broker's failure as the caller sees it; the service counts it in
/// `wsgate_broker_errors_total` where it happens.
impl From<BrokerError> for CommandError {
    fn from(e: BrokerError) -> Self {
        Self::new(ErrorCode::Unavailable, e.to_string())
    }
}

impl From<Denied> for CommandError {
    fn from(d: Denied) -> Self {
        match d {
            Denied::BadName => Self::bad_request("invalid channel name"),
            Denied::Forbidden => Self::forbidden("not allowed on this channel"),
        }
    }
}

impl From<wsgate_protocol::CommandError> for CommandError {
    fn from(e: wsgate_protocol::CommandError) -> Self {
        use wsgate_protocol::CommandError as Parse;
        match e {
            Parse::UnknownType => Self::new(ErrorCode::UnknownType, "unknown message type"),
            Parse::PayloadNotAnObject => Self::new(ErrorCode::InvalidMessage, e.to_string()),
            Parse::BadRequest(m) => Self::bad_request(m),
        }
    }
}
