//! The channel commands of a session: subscribe, unsubscribe, publish,
//! presence, history. Authorization and validation happen here, at once;
//! broker calls run in a spawned task that answers through the outbound
//! queue, so a slow broker never stalls the connection's read loop.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Map, Value};
use wsgate_protocol::{CloseCode, Encoding, ErrorCode};

use super::{out_frame, Session};
use crate::broker::{BrokerError, ClientInfo};
use crate::channel::{Denied, NamespacePolicy};
use crate::channels::{history_frame, history_policy};
use crate::fanout::{CatchUpError, Delivery, HistorySource, Subscriber, BACKLOG_PAGE};
use crate::metrics::Metrics;
use crate::outbound::OutFrame;
use crate::publication::{Filter, StreamPosition};

fn parse_position(v: &Value) -> Option<StreamPosition> {
    let obj = v.as_object()?;
    Some(StreamPosition {
        offset: obj.get("offset")?.as_u64()?,
        epoch: obj.get("epoch")?.as_str()?.into(),
    })
}

/// Threads are owned by their creator; until thread storage exists no
/// thread channel has an owner.
fn no_thread_owner(_: &str) -> Option<String> {
    None
}

/// The `error unavailable` answer to a command whose broker call failed,
/// counted as a broker error.
fn unavailable(
    metrics: &Metrics,
    encoding: Encoding,
    id: Option<&str>,
    e: &BrokerError,
) -> OutFrame {
    metrics.broker_errors.inc();
    metrics.error(ErrorCode::Unavailable.as_str());
    out_frame(
        encoding,
        "error",
        id,
        json!({"code": ErrorCode::Unavailable, "message": e.to_string()}),
    )
}

impl Session {
    fn channel_arg<'a>(&self, id: Option<&str>, p: &'a Map<String, Value>) -> Option<&'a str> {
        match p.get("channel").and_then(Value::as_str) {
            Some(c) => Some(c),
            None => {
                self.send_error(
                    id,
                    ErrorCode::BadRequest,
                    "payload.channel (string) is required",
                    None,
                );
                None
            }
        }
    }

    /// The channel's policy if this user may subscribe; otherwise answers
    /// the error itself.
    fn may_subscribe(&self, id: Option<&str>, channel: &str) -> Option<NamespacePolicy> {
        let channels = &self.ctx.shared.channels;
        match channels
            .authorizer
            .can_subscribe(&self.ctx.identity, channel, no_thread_owner)
        {
            Ok(policy) => Some(policy.clone()),
            Err(d) => {
                self.denied(id, d);
                None
            }
        }
    }

    /// An optional `{offset, epoch}` argument; `Err` after answering.
    fn position_arg(
        &self,
        id: Option<&str>,
        p: &Map<String, Value>,
        key: &str,
    ) -> Result<Option<StreamPosition>, ()> {
        match p.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match parse_position(v) {
                Some(pos) => Ok(Some(pos)),
                None => {
                    let message =
                        format!("payload.{key} must be {{offset: integer, epoch: string}}");
                    self.send_error(id, ErrorCode::BadRequest, &message, None);
                    Err(())
                }
            },
        }
    }

    fn denied(&self, id: Option<&str>, d: Denied) {
        match d {
            Denied::BadName => {
                self.send_error(id, ErrorCode::BadRequest, "invalid channel name", None)
            }
            Denied::Forbidden => {
                self.ctx.shared.metrics.violation("channel_forbidden");
                self.send_error(
                    id,
                    ErrorCode::Forbidden,
                    "not allowed on this channel",
                    None,
                )
            }
        }
    }

    pub(super) fn subscribe(&mut self, id: Option<&str>, p: &Map<String, Value>) {
        let Some(channel) = self.channel_arg(id, p) else {
            return;
        };
        let filter = match p.get("filter") {
            None | Some(Value::Null) => None,
            Some(Value::Object(f)) => Some(Filter::Exact(f.clone())),
            Some(_) => {
                return self.send_error(
                    id,
                    ErrorCode::BadRequest,
                    "payload.filter must be an object",
                    None,
                )
            }
        };
        let Ok(recover) = self.position_arg(id, p, "recover") else {
            return;
        };
        // A subscription whose subscribe task failed is closed; forget it.
        self.subscriptions.retain(|(_, s)| !s.is_closed());
        if self.subscriptions.iter().any(|(c, _)| &**c == channel) {
            return self.send_error(id, ErrorCode::Conflict, "already subscribed", None);
        }
        if self.subscriptions.len() >= self.ctx.shared.limits.max_subscriptions {
            return self.send_error(
                id,
                ErrorCode::BadRequest,
                "subscription limit reached",
                None,
            );
        }
        let Some(policy) = self.may_subscribe(id, channel) else {
            return;
        };
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
                    let frame = unavailable(&metrics, encoding, id.as_deref(), &e);
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
    }

    pub(super) fn unsubscribe(&mut self, id: Option<&str>, p: &Map<String, Value>) {
        let Some(channel) = self.channel_arg(id, p) else {
            return;
        };
        let Some(at) = self.subscriptions.iter().position(|(c, _)| &**c == channel) else {
            return self.send_error(id, ErrorCode::NotFound, "not subscribed", None);
        };
        let (channel, subscriber) = self.subscriptions.swap_remove(at);
        self.leave(&channel, &subscriber);
        self.send("unsubscribed", id, json!({ "channel": &*channel }));
    }

    /// Removes one subscription from the index and, where enabled, from
    /// presence, announcing `leave`.
    pub(super) fn leave(&self, channel: &Arc<str>, subscriber: &Arc<Subscriber>) {
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
    /// payload, or `error unavailable` when the broker fails.
    fn reply_later<F>(&self, id: Option<&str>, kind: &'static str, call: F)
    where
        F: std::future::Future<Output = Result<Value, BrokerError>> + Send + 'static,
    {
        let (id, encoding) = (id.map(str::to_owned), self.ctx.encoding);
        let (outbound, metrics) = (self.ctx.outbound.clone(), self.ctx.shared.metrics.clone());
        tokio::spawn(async move {
            let frame = match call.await {
                Ok(payload) => {
                    metrics.message_out(kind);
                    out_frame(encoding, kind, id.as_deref(), payload)
                }
                Err(e) => unavailable(&metrics, encoding, id.as_deref(), &e),
            };
            outbound.push(frame);
        });
    }

    pub(super) fn publish(&mut self, id: Option<&str>, p: &Map<String, Value>) {
        let Some(channel) = self.channel_arg(id, p) else {
            return;
        };
        let Some(data) = p.get("data") else {
            return self.send_error(id, ErrorCode::BadRequest, "payload.data is required", None);
        };
        let channels = self.ctx.shared.channels.clone();
        let policy =
            match channels
                .authorizer
                .can_publish(&self.ctx.identity, channel, no_thread_owner)
            {
                Ok(policy) => policy.clone(),
                Err(d) => return self.denied(id, d),
            };
        // The frame was parsed into a value; this is the one serialization
        // the publication gets.
        let bytes = Bytes::from(serde_json::to_vec(data).expect("a JSON value serializes"));
        let value = data.clone();
        let channel = channel.to_owned();
        self.reply_later(id, "published", async move {
            let p = channels
                .broker
                .publish(&channel, bytes, value, history_policy(&policy))
                .await?;
            Ok(json!({"channel": channel, "offset": p.offset, "epoch": &*p.epoch}))
        });
    }

    pub(super) fn presence(&mut self, id: Option<&str>, p: &Map<String, Value>) {
        let Some(channel) = self.channel_arg(id, p) else {
            return;
        };
        let Some(policy) = self.may_subscribe(id, channel) else {
            return;
        };
        let channels = self.ctx.shared.channels.clone();
        if !policy.presence {
            return self.send_error(
                id,
                ErrorCode::BadRequest,
                "presence is not enabled for this channel",
                None,
            );
        }
        let channel = channel.to_owned();
        self.reply_later(id, "presence", async move {
            let clients = channels.presence.clients(&channel).await?;
            Ok(json!({"channel": channel, "clients": clients}))
        });
    }

    pub(super) fn history(&mut self, id: Option<&str>, p: &Map<String, Value>) {
        let Some(channel) = self.channel_arg(id, p) else {
            return;
        };
        let Ok(since) = self.position_arg(id, p, "since") else {
            return;
        };
        let limit = match p.get("limit") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(n) => Some(n as usize),
                None => {
                    return self.send_error(
                        id,
                        ErrorCode::BadRequest,
                        "payload.limit must be a non-negative integer",
                        None,
                    )
                }
            },
        };
        let Some(policy) = self.may_subscribe(id, channel) else {
            return;
        };
        let channels = self.ctx.shared.channels.clone();
        if policy.history_size == 0 {
            return self.send_error(
                id,
                ErrorCode::BadRequest,
                "history is not enabled for this channel",
                None,
            );
        }
        let channel = channel.to_owned();
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
                Err(e) => unavailable(&metrics, encoding, id.as_deref(), &e),
            };
            // A page is up to half the queue: it waits for room rather than
            // closing a client that reads fine.
            outbound.push_paced(frame, budget).await;
        });
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
