//! The channel commands of a session: subscribe, unsubscribe, publish,
//! presence, history. Each checks what only the session knows (its own
//! subscriptions), then hands the rest to the [`Channels`] service in a
//! background task that answers through the outbound queue, so a slow
//! broker or thread store never stalls the connection's read loop.
//!
//! [`Channels`]: crate::channels::Channels

use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;
use wsgate_protocol::command::{ChannelOnly, History, Position, Publish, Subscribe};
use wsgate_protocol::{CloseCode, Encoding};

use crate::broker::ClientInfo;
use crate::channels::fanout::{FrameFormat, Subscriber};
use crate::channels::history::history_frame;
use crate::channels::publication::{Filter, StreamPosition};
use crate::channels::Caller;
use crate::connection::outbound::OutFrame;
use crate::error::CommandError;
use crate::metrics::Metrics;
use crate::session::{error_frame, out_frame, Session};

/// The `subscribed` reply: where the subscription starts, and whether what
/// was asked to be recovered was.
pub(in crate::session) fn subscribed_frame(
    metrics: &Metrics,
    encoding: Encoding,
    id: Option<&str>,
    channel: &str,
    at: &StreamPosition,
    recovered: bool,
) -> OutFrame {
    metrics.message_out("subscribed");
    out_frame(
        encoding,
        "subscribed",
        id,
        json!({
            "channel": channel,
            "offset": at.offset,
            "epoch": &*at.epoch,
            "recovered": recovered,
        }),
    )
}

fn position(p: Position) -> StreamPosition {
    StreamPosition {
        offset: p.offset,
        epoch: p.epoch.into(),
    }
}

impl Session {
    /// Forgets closed subscriptions (a failed subscribe, a slow
    /// subscriber's), then refuses one more past `limits.max_subscriptions`.
    /// A thread in use (`user_message`, `start_agent`, `switch_thread`)
    /// counts as one too, so no command piles subscriptions up.
    pub(in crate::session) fn room_for_subscription(&mut self) -> Result<(), CommandError> {
        self.subscriptions.retain(|(_, s)| !s.is_closed());
        if self.subscriptions.len() >= self.ctx.shared.limits.max_subscriptions {
            return Err(CommandError::bad_request(format!(
                "subscription limit reached (limits.max_subscriptions = {}; a thread in use \
                 counts as one): unsubscribe from a channel you no longer watch",
                self.ctx.shared.limits.max_subscriptions
            )));
        }
        Ok(())
    }

    /// A new subscription of this connection, in its encoding.
    pub(in crate::session) fn subscriber(&self, filter: Option<Filter>) -> Arc<Subscriber> {
        Subscriber::for_connection(
            self.ctx.outbound.clone(),
            FrameFormat::Envelope(self.ctx.encoding),
            filter,
            self.ctx.connection_id.clone(),
        )
    }

    pub(in crate::session) fn client(&self) -> ClientInfo {
        ClientInfo {
            user: self.ctx.identity.user.clone(),
            connection_id: self.ctx.connection_id.clone(),
        }
    }

    pub(in crate::session) fn subscribe(
        &mut self,
        id: Option<&str>,
        args: Subscribe,
    ) -> Result<(), CommandError> {
        let Subscribe {
            channel,
            filter,
            recover,
        } = args;
        self.subscriptions.retain(|(_, s)| !s.is_closed());
        if self.subscriptions.iter().any(|(c, _)| **c == *channel) {
            return Err(CommandError::conflict("already subscribed"));
        }
        self.room_for_subscription()?;
        let subscriber = self.subscriber(filter.map(Filter::Exact));
        let channel: Arc<str> = channel.into();
        self.subscriptions
            .push((channel.clone(), subscriber.clone()));

        let (id, encoding) = (id.map(str::to_owned), self.ctx.encoding);
        let (identity, client) = (self.ctx.identity.clone(), self.client());
        let channels = self.ctx.shared.channels.clone();
        let metrics = self.ctx.shared.metrics.clone();
        channels.clone().tasks.spawn(async move {
            let reply = |at: &StreamPosition, recovered: bool| {
                subscribed_frame(&metrics, encoding, id.as_deref(), &channel, at, recovered)
            };
            let recover = recover.map(position);
            let done = channels
                .subscribe(
                    &identity,
                    Some(&client),
                    &channel,
                    &subscriber,
                    recover,
                    reply,
                )
                .await;
            if let Err(e) = done {
                let frame = error_frame(&metrics, encoding, id.as_deref(), &e);
                subscriber.outbound.push(frame);
            }
        });
        Ok(())
    }

    pub(in crate::session) fn unsubscribe(
        &mut self,
        id: Option<&str>,
        args: ChannelOnly,
    ) -> Result<(), CommandError> {
        self.subscriptions.retain(|(_, s)| !s.is_closed());
        let Some(at) = self
            .subscriptions
            .iter()
            .position(|(c, _)| **c == *args.channel)
        else {
            return Err(CommandError::not_found("not subscribed"));
        };
        let (channel, subscriber) = self.subscriptions.swap_remove(at);
        self.ctx
            .shared
            .channels
            .leave(&channel, &subscriber, Some(self.client()));
        self.send("unsubscribed", id, json!({ "channel": &*channel }));
        Ok(())
    }

    pub(in crate::session) fn publish(
        &mut self,
        id: Option<&str>,
        args: Publish,
    ) -> Result<(), CommandError> {
        let Publish { channel, data } = args;
        // The frame was parsed into a value; this is the one serialization
        // the publication gets.
        let bytes = Bytes::from(serde_json::to_vec(&data).expect("a JSON value serializes"));
        let (channels, identity) = (self.ctx.shared.channels.clone(), self.ctx.identity.clone());
        // This publish's end is the next one's start (dropping the sender
        // is the signal, so a failed or cancelled publish releases it too).
        let (done, tail) = tokio::sync::oneshot::channel::<()>();
        let before = self.publish_tail.replace(tail);
        self.reply_later(id, "published", async move {
            let _done = done;
            if let Some(before) = before {
                let _ = before.await;
            }
            let p = channels
                .publish(Caller::User(&identity), &channel, bytes, data)
                .await?;
            Ok(json!({"channel": channel, "offset": p.offset, "epoch": &*p.epoch}))
        });
        Ok(())
    }

    pub(in crate::session) fn presence(
        &mut self,
        id: Option<&str>,
        args: ChannelOnly,
    ) -> Result<(), CommandError> {
        let channel = args.channel;
        let (channels, identity) = (self.ctx.shared.channels.clone(), self.ctx.identity.clone());
        self.reply_later(id, "presence", async move {
            let clients = channels.presence(Caller::User(&identity), &channel).await?;
            Ok(json!({"channel": channel, "clients": clients}))
        });
        Ok(())
    }

    pub(in crate::session) fn history(
        &mut self,
        id: Option<&str>,
        args: History,
    ) -> Result<(), CommandError> {
        let History {
            channel,
            since,
            limit,
        } = args;
        let since = since.map(position);
        let limit = limit.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        let (channels, identity) = (self.ctx.shared.channels.clone(), self.ctx.identity.clone());
        let (id, encoding) = (id.map(str::to_owned), self.ctx.encoding);
        let (outbound, metrics) = (self.ctx.outbound.clone(), self.ctx.shared.metrics.clone());
        channels.clone().tasks.spawn(async move {
            let page = channels
                .history(Caller::User(&identity), &channel, since.as_ref(), limit)
                .await;
            let budget = outbound.paced_budget();
            let frame = match page {
                Ok(page) => {
                    metrics.message_out("history");
                    let bytes = history_frame(encoding, id.as_deref(), &channel, &page, budget);
                    match encoding {
                        Encoding::Json => OutFrame::Text(bytes),
                        Encoding::Msgpack => OutFrame::Binary(bytes),
                    }
                }
                Err(e) => error_frame(&metrics, encoding, id.as_deref(), &e),
            };
            // A page is up to half the queue: it waits for room rather than
            // closing a client that reads fine.
            outbound.push_paced(frame, budget).await;
        });
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.adopt();
        let client = self.client();
        for (channel, subscriber) in std::mem::take(&mut self.subscriptions) {
            self.ctx
                .shared
                .channels
                .leave(&channel, &subscriber, Some(client.clone()));
        }
        // The connection is over and nothing drains its queue any more:
        // closing it ends tasks still waiting for room (a `history` reply,
        // a backlog) instead of leaving them parked for good. The first
        // close request wins, so a real close code is kept.
        self.ctx.outbound.close(CloseCode::GoingAway);
    }
}
