//! A refusal as GraphQL says it: the message, and `extensions.code` from
//! the `/ws` error codes, so a client tells `forbidden` from `not_found`
//! the same way over either protocol.

use async_graphql::{ErrorExtensions, Response};
use wsgate_core::error::CommandError;
use wsgate_core::metrics::Metrics;
use wsgate_protocol::ErrorCode;

/// A service's error as a field error.
pub(crate) fn field_error(e: CommandError) -> async_graphql::Error {
    async_graphql::Error::new(e.message).extend_with(|_, ext| {
        ext.set("code", e.code.as_str());
        if let Some(ms) = e.retry_after_ms {
            ext.set("retry_after_ms", ms);
        }
    })
}

/// `?` for service calls inside resolvers.
pub(crate) trait OrField<T> {
    fn field(self) -> async_graphql::Result<T>;
}

impl<T> OrField<T> for Result<T, CommandError> {
    fn field(self) -> async_graphql::Result<T> {
        self.map_err(field_error)
    }
}

/// The code of the error item a `threadEvents(since)` stream starts with
/// when history no longer holds everything after `since` (what `/ws`
/// answers as `recovered: false`).
pub const RECOVERY_INCOMPLETE: &str = "recovery_incomplete";

/// The bounded label of a GraphQL error's code: one of the `/ws` codes or
/// [`RECOVERY_INCOMPLETE`], else `bad_request` (what async-graphql itself refuses: a document that
/// does not parse or validate, or is over a depth or complexity limit).
pub fn code_label(code: Option<&str>) -> &'static str {
    const CODES: [ErrorCode; 9] = [
        ErrorCode::InvalidMessage,
        ErrorCode::UnknownType,
        ErrorCode::BadRequest,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];
    match code {
        Some(RECOVERY_INCOMPLETE) => RECOVERY_INCOMPLETE,
        c => c
            .and_then(|c| CODES.iter().find(|k| k.as_str() == c))
            .map_or("bad_request", |k| k.as_str()),
    }
}

/// Gives every error of `response` an `extensions.code` (`bad_request`
/// where async-graphql made the error) and counts each by code.
pub fn with_codes(mut response: Response, metrics: &Metrics) -> Response {
    for e in &mut response.errors {
        let ext = e.extensions.get_or_insert_with(Default::default);
        let code = code_label(match ext.get("code") {
            Some(async_graphql::Value::String(s)) => Some(s.as_str()),
            _ => None,
        });
        ext.set("code", code);
        Metrics::count(&metrics.graphql_errors, "code", code);
    }
    response
}

/// A response that is only this error (before anything was executed).
pub(crate) fn error_response(e: CommandError) -> Response {
    let mut server_error = async_graphql::ServerError::new(e.message.clone(), None);
    let mut ext = async_graphql::ErrorExtensionValues::default();
    ext.set("code", e.code.as_str());
    if let Some(ms) = e.retry_after_ms {
        ext.set("retry_after_ms", ms);
    }
    server_error.extensions = Some(ext);
    Response::from_errors(vec![server_error])
}
