//! The interface between a transport and what runs on a connection.
//!
//! The transport owns the socket: it reads frames, enforces frame size and
//! heartbeats, and writes whatever the handler queued in its
//! [`Outbound`](crate::connection::outbound::Outbound). A handler never sees the socket.

use bytes::Bytes;
use tokio::time::Instant;
use wsgate_protocol::CloseCode;

use crate::connection::outbound::{OutFrame, Outbound};
use std::sync::Arc;

/// A data frame received from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A text frame; the transport has checked it is UTF-8.
    Text(Bytes),
    Binary(Bytes),
}

/// The per-connection logic a transport drives.
pub trait ConnectionHandler: Send + 'static {
    /// Handles one frame. `Err` ends the connection with that close code.
    fn on_message(&mut self, msg: Incoming) -> Result<(), CloseCode>;

    /// The next instant at which [`on_deadline`](Self::on_deadline) must run
    /// (token expiry), if any.
    fn deadline(&self) -> Option<Instant> {
        None
    }

    fn on_deadline(&mut self, _now: Instant) -> Result<(), CloseCode> {
        Ok(())
    }
}

/// Sends every frame back as it came. Used by the Autobahn conformance
/// example, so the suite exercises the same transport as `/ws`.
pub struct Echo {
    outbound: Arc<Outbound>,
}

impl Echo {
    pub fn new(outbound: Arc<Outbound>) -> Self {
        Echo { outbound }
    }
}

impl ConnectionHandler for Echo {
    fn on_message(&mut self, msg: Incoming) -> Result<(), CloseCode> {
        let frame = match msg {
            Incoming::Text(b) => OutFrame::Text(b),
            Incoming::Binary(b) => OutFrame::Binary(b),
        };
        // On overflow the queue requests close 4009 itself; the transport
        // sees it on its next drain.
        self.outbound.push(frame);
        Ok(())
    }
}
