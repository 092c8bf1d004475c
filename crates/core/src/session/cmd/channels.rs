//! The channel commands of a session: subscribe, unsubscribe, publish,
//! presence, history. Authorization happens here, at once; broker calls run
//! in a spawned task that answers through the outbound queue, so a slow
//! broker never stalls the connection's read loop.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;
use wsgate_protocol::command::{ChannelOnly, History, Position, Publish, Subscribe};
use wsgate_protocol::{CloseCode, Encoding};

use crate::broker::ClientInfo;
use crate::channel::NamespacePolicy;
use crate::channels::{history_frame, history_policy};
use crate::error::CommandError;
use crate::fanout::{CatchUpError, Delivery, HistorySource, Subscriber, BACKLOG_PAGE};
use crate::outbound::OutFrame;
use crate::publication::{Filter, StreamPosition};
use crate::session::{error_frame, out_frame, Session};

/// Threads are owned by their creator; until thread storage exists no
/// thread channel has an owner.
fn no_thread_owner(_: &str) -> Option<String> {
    None
}

fn position(p: Position) -> StreamPosition {
    StreamPosition {
        offset: p.offset,
        epoch: p.epoch.into(),
    }
}

impl Session {
    /// The channel's policy if this user may subscribe.
    fn may_subscribe(&self, channel: &str) -> Result<NamespacePolicy, CommandError> {
        let channels = &self.ctx.shared.channels;
        match channels
            .authorizer
            .can_subscribe(&self.ctx.identity, channel, no_thread_owner)
        {
            Ok(policy) => Ok(policy.clone()),
            Err(d) => Err(self.denied(d)),
        }
    }

    fn denied(&self, d: crate::channel::Denied) -> CommandError {
        if d == crate::channel::Denied::Forbidden {
            self.ctx.shared.metrics.violation("channel_forbidden");
        }
        d.into()
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
        let filter = filter.map(Filter::Exact);
        let recover = recover.map(position);
        // A subscription whose subscribe task failed is closed; forget it.
        self.subscriptions.retain(|(_, s)| !s.is_closed());
        if self.subscriptions.iter().any(|(c, _)| **c == *channel) {
            return Err(CommandError::conflict("already subscribed"));
        }
        if self.subscriptions.len() >= self.ctx.shared.limits.max_subscriptions {
            return Err(CommandError::bad_request("subscription limit reached"));
        }
        let policy = self.may_subscribe(&channel)?;
        let channels = self.ctx.shared.channels.clone();
        let subscriber = Subscriber::new(
            self.ctx.outbound.clone(),
            Delivery::Envelope(self.ctx.encoding),
            filter,
        );
        let channel: Arc<str> = channel.into();
        // Registered before the broker is asked, so nothing published from
        // now on is missed: it waits in the subscriber until the reply and
        // backlog are out.
        channels.index.add(&channel, subscriber.clone());
        self.subscriptions
            .push((channel.clone(), subscriber.clone()));

        let id = id.map(str::to_owned);
        let encoding = self.ctx.encoding;
        let metrics = self.ctx.shared.metrics.clone();
        let client = ClientInfo {
            user: self.ctx.identity.user.clone(),
            connection_id: self.ctx.connection_id.clone(),
        };
        tokio::spawn(async move {
            let history = history_policy(&policy);
            // The first page of a backlog, or (limit 0) just the position;
            // the rest is read page by page as the client takes it.
            let limit = if recover.is_some() { BACKLOG_PAGE } else { 0 };
            let page = channels
                .broker
                .history(&channel, recover.as_ref(), limit, history)
                .await;
            let mut page = match page {
                Ok(page) => page,
                Err(e) => {
                    channels.index.remove(&channel, &subscriber);
                    let frame = error_frame(&metrics, encoding, id.as_deref(), &e.into());
                    subscriber.outbound.push(frame);
                    return;
                }
            };
            let recovered = recover.is_some() && page.complete;
            if recover.is_none() {
                page.publications.clear();
            }
            metrics.message_out("subscribed");
            let reply = out_frame(
                encoding,
                "subscribed",
                id.as_deref(),
                json!({
                    "channel": &*channel,
                    "offset": page.position.offset,
                    "epoch": &*page.position.epoch,
                    "recovered": recovered,
                }),
            );
            let source = HistorySource {
                broker: &*channels.broker,
                channel: &channel,
                history,
            };
            if let Err(e) = subscriber.catch_up(reply, page, &source).await {
                // The client was told what it would get and cannot get it
                // without a gap: what it still missed left history while it
                // read (or the broker failed). Like any slow consumer it is
                // closed with 4009 and recovers, or learns `recovered:
                // false`, on reconnect.
                tracing::info!(connection_id = %client.connection_id, error = %e, "subscription could not catch up");
                if let CatchUpError::Broker(_) = e {
                    metrics.broker_errors.inc();
                }
                channels.index.remove(&channel, &subscriber);
                subscriber.outbound.close(CloseCode::SlowConsumer);
                return;
            }
            if policy.presence && !subscriber.is_closed() {
                if let Err(e) = channels.presence.add(&channel, client.clone()).await {
                    tracing::warn!(connection_id = %client.connection_id, error = %e, "presence add failed");
                }
            }
            if policy.join_leave && !subscriber.is_closed() {
                channels.announce("join", &channel, &client, Some(&subscriber.outbound));
            }
        });
        Ok(())
    }

    pub(in crate::session) fn unsubscribe(
        &mut self,
        id: Option<&str>,
        args: ChannelOnly,
    ) -> Result<(), CommandError> {
        let Some(at) = self
            .subscriptions
            .iter()
            .position(|(c, _)| **c == *args.channel)
        else {
            return Err(CommandError::not_found("not subscribed"));
        };
        let (channel, subscriber) = self.subscriptions.swap_remove(at);
        self.leave(&channel, &subscriber);
        self.send("unsubscribed", id, json!({ "channel": &*channel }));
        Ok(())
    }

    /// Removes one subscription from the index and, where enabled, from
    /// presence, announcing `leave`.
    pub(in crate::session) fn leave(&self, channel: &Arc<str>, subscriber: &Arc<Subscriber>) {
        let channels = &self.ctx.shared.channels;
        channels.index.remove(channel, subscriber);
        let Some(policy) = channels.authorizer.policy(channel) else {
            return;
        };
        if !(policy.presence || policy.join_leave) {
            return;
        }
        let client = ClientInfo {
            user: self.ctx.identity.user.clone(),
            connection_id: self.ctx.connection_id.clone(),
        };
        if policy.join_leave {
            channels.announce("leave", channel, &client, None);
        }
        // A session dropped while the runtime shuts down has nowhere to
        // spawn; presence of a stopping node goes away with it anyway.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if policy.presence {
            let channels = channels.clone();
            let channel = channel.clone();
            runtime.spawn(async move {
                if let Err(e) = channels
                    .presence
                    .remove(&channel, &client.connection_id)
                    .await
                {
                    tracing::warn!(connection_id = %client.connection_id, error = %e, "presence remove failed");
                }
            });
        }
    }

    /// Runs a broker call off the read loop and answers `kind` with its
    /// payload, or the error.
    fn reply_later<F>(&self, id: Option<&str>, kind: &'static str, call: F)
    where
        F: std::future::Future<Output = Result<serde_json::Value, CommandError>> + Send + 'static,
    {
        let (id, encoding) = (id.map(str::to_owned), self.ctx.encoding);
        let (outbound, metrics) = (self.ctx.outbound.clone(), self.ctx.shared.metrics.clone());
        tokio::spawn(async move {
            let frame = match call.await {
                Ok(payload) => {
                    metrics.message_out(kind);
                    out_frame(encoding, kind, id.as_deref(), payload)
                }
                Err(e) => error_frame(&metrics, encoding, id.as_deref(), &e),
            };
            outbound.push(frame);
        });
    }

    pub(in crate::session) fn publish(
        &mut self,
        id: Option<&str>,
        args: Publish,
    ) -> Result<(), CommandError> {
        let Publish { channel, data } = args;
        let channels = self.ctx.shared.channels.clone();
        let policy =
            match channels
                .authorizer
                .can_publish(&self.ctx.identity, &channel, no_thread_owner)
            {
                Ok(policy) => policy.clone(),
                Err(d) => return Err(self.denied(d)),
            };
        // The frame was parsed into a value; this is the one serialization
        // the publication gets.
        let bytes = Bytes::from(serde_json::to_vec(&data).expect("a JSON value serializes"));
        self.reply_later(id, "published", async move {
            let p = channels
                .broker
                .publish(&channel, bytes, data, history_policy(&policy))
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
        let policy = self.may_subscribe(&channel)?;
        if !policy.presence {
            return Err(CommandError::bad_request(
                "presence is not enabled for this channel",
            ));
        }
        let channels = self.ctx.shared.channels.clone();
        self.reply_later(id, "presence", async move {
            let clients = channels.presence.clients(&channel).await?;
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
        let policy = self.may_subscribe(&channel)?;
        if policy.history_size == 0 {
            return Err(CommandError::bad_request(
                "history is not enabled for this channel",
            ));
        }
        let channels = self.ctx.shared.channels.clone();
        let (id, encoding) = (id.map(str::to_owned), self.ctx.encoding);
        let (outbound, metrics) = (self.ctx.outbound.clone(), self.ctx.shared.metrics.clone());
        tokio::spawn(async move {
            let page = channels
                .history_page(&channel, &policy, since.as_ref(), limit)
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
                Err(e) => error_frame(&metrics, encoding, id.as_deref(), &e.into()),
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
        for (channel, subscriber) in std::mem::take(&mut self.subscriptions) {
            self.leave(&channel, &subscriber);
        }
        // The connection is over and nothing drains its queue any more:
        // closing it ends tasks still waiting for room (a `history` reply,
        // a backlog) instead of leaving them parked for good. The first
        // close request wins, so a real close code is kept.
        self.ctx.outbound.close(CloseCode::GoingAway);
    }
}
