//! The responses of one execution as graphql-transport-ws frames, for one
//! subscriber or many: each response is serialized once, whoever reads it.

use std::sync::Arc;

use async_graphql::{Response, Value as GqlValue};
use futures_util::stream::{BoxStream, StreamExt};
use serde_json::Value;
use tokio::time::Instant;
use wsgate_core::connection::outbound::{OutFrame, Outbound};
use wsgate_core::metrics::Metrics;
use wsgate_protocol::CloseCode;

use crate::error::{with_codes, RECOVERY_INCOMPLETE};
use crate::protocol;
use crate::tap::TapCell;

/// What the subscribers of an execution are to be sent.
pub(crate) enum Out<'a> {
    /// A `next` frame's payload (the serialized result), with the publish
    /// time of the publication it resolved, if it resolved one.
    Next(&'a [u8], Option<Instant>),
    /// The execution failed before any result: an `error` frame with
    /// these errors (a non-empty array), and nothing after it.
    Error(&'a Value),
    /// The execution ended: `complete`, or with `Some(4009)` the channel
    /// could not be kept up with and the connections close as slow
    /// consumers (as on `/ws`), so they reconnect and resubscribe.
    End(Option<CloseCode>),
}

/// Whether a first response is a refusal of the whole operation: no data
/// and errors (a document that does not validate, a field refused), but
/// not the `recovery_incomplete` notice a stream starts with.
fn is_refusal(response: &Response) -> bool {
    response.data == GqlValue::Null
        && !response.errors.is_empty()
        && !response.errors.iter().any(|e| {
            e.extensions.as_ref().and_then(|x| x.get("code"))
                == Some(&GqlValue::String(RECOVERY_INCOMPLETE.into()))
        })
}

/// Reads `responses` to their end, telling `out` what to send.
pub(crate) async fn pump(
    mut responses: BoxStream<'static, Response>,
    cell: &TapCell,
    metrics: &Metrics,
    mut out: impl FnMut(Out<'_>),
) {
    let mut first = true;
    while let Some(response) = responses.next().await {
        let response = with_codes(response, metrics);
        if first && is_refusal(&response) {
            let errors = serde_json::to_value(&response.errors).unwrap_or_default();
            out(Out::Error(&errors));
            return;
        }
        first = false;
        match serde_json::to_vec(&response) {
            Ok(payload) => out(Out::Next(&payload, cell.published_at())),
            Err(e) => tracing::warn!(error = %e, "a GraphQL response did not serialize"),
        }
    }
    out(Out::End(cell.ended()));
}

/// One subscriber of an execution: an operation of one connection.
pub(crate) struct Recipient {
    pub id: String,
    /// `{"id":…,"type":"next","payload":`, made once per operation.
    prefix: Vec<u8>,
    pub outbound: Arc<Outbound>,
}

impl Recipient {
    pub fn new(id: String, outbound: Arc<Outbound>) -> Self {
        Recipient {
            prefix: protocol::next_prefix(&id),
            id,
            outbound,
        }
    }

    /// Queues what `out` says; a full queue closes the connection with
    /// 4009 by itself, as on `/ws`.
    pub fn send(&self, out: &Out<'_>) {
        match *out {
            Out::Next(payload, published) => {
                let frame = OutFrame::Text(protocol::next(&self.prefix, payload));
                match published {
                    Some(at) => self.outbound.push_published(frame, at),
                    None => self.outbound.push(frame),
                };
            }
            Out::Error(errors) => {
                self.outbound
                    .push(OutFrame::Text(protocol::error(&self.id, errors)));
            }
            Out::End(Some(code)) => self.outbound.close(code),
            Out::End(None) => {
                self.outbound
                    .push(OutFrame::Text(protocol::complete(&self.id)));
            }
        }
    }
}
