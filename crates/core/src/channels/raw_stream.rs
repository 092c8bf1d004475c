//! Read-only streams (`/ws/metrics`, `/ws/events`, `/ws/stream/{channel}`):
//! one channel, each publication's `data` as a raw JSON text frame, and a
//! text `ping` answered with `pong`. Nothing else a client sends has an
//! effect.

use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;
use wsgate_protocol::CloseCode;

use crate::auth::expiry_instant;
use crate::channels::fanout::{FrameFormat, Subscriber};
use crate::channels::publication::Filter;
use crate::channels::{history_policy, Channels};
use crate::connection::handler::{ConnectionHandler, Incoming};
use crate::connection::outbound::{OutFrame, Outbound};

pub struct RawStream {
    channel: Arc<str>,
    subscriber: Arc<Subscriber>,
    channels: Arc<Channels>,
    /// The token's `exp`: a stream ends with 4001 like `/ws` (there is no
    /// `refresh_token` on a read-only stream; reconnect with a new token).
    expire_at: Instant,
}

impl RawStream {
    /// Subscribes at once; publications from the current position on are
    /// sent. The caller has checked the channel and the permission
    /// ([`Channels::may_read`]). When the broker cannot subscribe the node,
    /// the stream closes with 1011 and the client reconnects.
    pub fn start(
        channels: Arc<Channels>,
        channel: Arc<str>,
        filter: Option<Filter>,
        outbound: Arc<Outbound>,
        expires_at: u64,
    ) -> Self {
        let subscriber = Subscriber::new(outbound, FrameFormat::Raw, filter);
        let task = (channels.clone(), channel.clone(), subscriber.clone());
        channels.tasks.spawn(async move {
            let (channels, channel, subscriber) = task;
            let broker = &*channels.broker;
            if let Err(e) = channels
                .index
                .subscribe(broker, &channel, subscriber.clone())
                .await
            {
                channels.metrics.broker_errors.inc();
                tracing::warn!(error = %e, "stream subscribe failed");
                subscriber.outbound.close(CloseCode::Internal);
                return;
            }
            let history = channels
                .authorizer
                .policy(&channel)
                .map(history_policy)
                .unwrap_or_default();
            match broker.history(&channel, None, 0, history).await {
                Ok(page) => subscriber.go_live(None, &[], page.position.offset),
                // Without a position, deliver everything from now on.
                Err(_) => subscriber.go_live(None, &[], 0),
            }
        });
        let expire_at = expiry_instant(expires_at);
        RawStream {
            channel,
            subscriber,
            channels,
            expire_at,
        }
    }
}

impl ConnectionHandler for RawStream {
    fn on_message(&mut self, msg: Incoming) -> Result<(), CloseCode> {
        if let Incoming::Text(t) = msg {
            if t.trim_ascii() == b"ping" {
                self.subscriber
                    .outbound
                    .push(OutFrame::Text(Bytes::from_static(b"pong")));
            }
        }
        Ok(())
    }

    fn deadline(&self) -> Option<Instant> {
        Some(self.expire_at)
    }

    fn on_deadline(&mut self, now: Instant) -> Result<(), CloseCode> {
        if now >= self.expire_at {
            return Err(CloseCode::TokenExpired);
        }
        Ok(())
    }
}

impl Drop for RawStream {
    fn drop(&mut self) {
        self.channels.leave(&self.channel, &self.subscriber, None);
    }
}
