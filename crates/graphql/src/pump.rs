//! The responses of one execution as graphql-transport-ws frames, for one
//! subscriber or many: each response is serialized once, whoever reads it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_graphql::{Response, Value as GqlValue};
use futures_util::stream::{BoxStream, StreamExt};
use serde_json::Value;
use tokio::time::Instant;
use wsgate_core::connection::outbound::{OutFrame, Outbound, Pushed};
use wsgate_core::metrics::Metrics;
use wsgate_protocol::CloseCode;

use crate::error::{with_codes, RECOVERY_INCOMPLETE};
use crate::protocol;
use crate::tap::TapCell;

/// One result of an execution, serialized.
pub(crate) enum Item {
    /// A `next` frame's payload, with the publish time of the publication
    /// it resolved, if it resolved one.
    Next(Vec<u8>, Option<Instant>),
    /// The execution failed before any result: an `error` frame with these
    /// errors (a non-empty array), and nothing after it.
    Error(Value),
}

/// How an execution ended: `complete`, or with `Some(4009)` the channel
/// could not be kept up with and the connections close as slow consumers
/// (as on `/ws`), so they reconnect and resubscribe.
pub(crate) type End = Option<CloseCode>;

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

/// An execution's responses, read one at a time.
pub(crate) struct Pump {
    responses: BoxStream<'static, Response>,
    first: bool,
    done: bool,
}

impl Pump {
    pub fn new(responses: BoxStream<'static, Response>) -> Self {
        Pump {
            responses,
            first: true,
            done: false,
        }
    }

    /// The next result; `None` once the execution has ended (then ask the
    /// tap's cell why, [`TapCell::ended`]).
    pub async fn next(&mut self, cell: &TapCell, metrics: &Metrics) -> Option<Item> {
        while !self.done {
            let Some(response) = self.responses.next().await else {
                self.done = true;
                break;
            };
            let response = with_codes(response, metrics);
            if std::mem::replace(&mut self.first, false) && is_refusal(&response) {
                self.done = true;
                return Some(Item::Error(errors_json(&response)));
            }
            match serde_json::to_vec(&response) {
                Ok(payload) => return Some(Item::Next(payload, cell.published_at())),
                Err(e) => tracing::warn!(error = %e, "a GraphQL response did not serialize"),
            }
        }
        None
    }
}

/// A response's errors as the JSON array an `error` frame carries.
pub(crate) fn errors_json(response: &Response) -> Value {
    serde_json::to_value(&response.errors).unwrap_or_default()
}

/// One subscriber of an execution: an operation of one connection.
pub(crate) struct Recipient {
    pub id: String,
    /// `{"id":…,"type":"next","payload":`, made once per operation.
    prefix: Vec<u8>,
    pub outbound: Arc<Outbound>,
    /// Set by the client's `complete`: nothing more is sent for this id,
    /// even before the operation's task has stopped (the id may be reused).
    completed: Arc<AtomicBool>,
}

impl Recipient {
    pub fn new(id: String, outbound: Arc<Outbound>, completed: Arc<AtomicBool>) -> Self {
        Recipient {
            prefix: protocol::next_prefix(&id),
            id,
            outbound,
            completed,
        }
    }

    fn live(&self) -> bool {
        !self.completed.load(Ordering::Acquire)
    }

    fn next_frame(&self, payload: &[u8]) -> OutFrame {
        OutFrame::Text(protocol::next(&self.prefix, payload))
    }

    /// Queues a result without waiting (a shared execution must not wait
    /// for one subscriber): a full queue closes the connection with 4009 by
    /// itself, as on `/ws`.
    pub fn send(&self, item: &Item) {
        if !self.live() {
            return;
        }
        match item {
            Item::Next(payload, published) => {
                let frame = self.next_frame(payload);
                match published {
                    Some(at) => self.outbound.push_published(frame, *at),
                    None => self.outbound.push(frame),
                };
            }
            Item::Error(errors) => self.error(errors),
        }
    }

    /// Queues a result of this subscriber's own execution, waiting for room:
    /// a replayed backlog reaches the client at its own pace, as `/ws`
    /// recovery does. Live publications that pile up meanwhile fill the
    /// tap's queue, which ends the execution as a slow consumer. False once
    /// the connection is closing.
    pub async fn send_paced(&self, item: &Item) -> bool {
        if !self.live() {
            return true;
        }
        match item {
            Item::Next(payload, _) => {
                let budget = self.outbound.paced_budget();
                self.outbound
                    .push_paced(self.next_frame(payload), budget)
                    .await
                    == Pushed::Queued
            }
            Item::Error(errors) => {
                self.error(errors);
                true
            }
        }
    }

    pub fn error(&self, errors: &Value) {
        if self.live() {
            self.outbound
                .push(OutFrame::Text(protocol::error(&self.id, errors)));
        }
    }

    pub fn end(&self, end: End) {
        match end {
            Some(code) => self.outbound.close(code),
            None if self.live() => {
                self.outbound
                    .push(OutFrame::Text(protocol::complete(&self.id)));
            }
            None => {}
        }
    }
}
