//! Channels as a service, shared by every front end (the `/ws` session,
//! raw streams, the HTTP API; GraphQL next): authorization (default deny;
//! thread ownership asked of the thread store), publish, presence,
//! history, and the life of a subscription (the node's broker
//! subscription, the reply and backlog, presence, join and leave).
//! Methods take the caller and typed arguments and return
//! `Result<_, CommandError>`; a front end only encodes the answer.

pub mod authorizer;
pub mod fanout;
pub mod history;
pub mod names;
pub mod publication;
pub mod raw_stream;

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use tokio_util::task::TaskTracker;
use wsgate_protocol::{CloseCode, ErrorCode};

use crate::auth::Identity;
use crate::broker::{
    Broker, BrokerError, ClientInfo, ControlKind, HistoryPage, HistoryPolicy, Presence,
};
use crate::channels::authorizer::{Authorizer, Denied, NamespacePolicy};
use crate::channels::fanout::{
    CatchUpError, ChannelIndex, HistorySource, Subscriber, BACKLOG_PAGE,
};
use crate::channels::publication::{Publication, StreamPosition};
use crate::connection::outbound::OutFrame;
use crate::error::CommandError;
use crate::limits::MAX_HISTORY_LIMIT;
use crate::metrics::Metrics;
use crate::threads::ThreadOwners;

pub struct Channels {
    pub authorizer: Authorizer,
    pub broker: Arc<dyn Broker>,
    pub presence: Arc<dyn Presence>,
    pub index: Arc<ChannelIndex>,
    /// Who owns each `thread:<id>` channel.
    pub threads: Arc<dyn ThreadOwners>,
    pub metrics: Arc<Metrics>,
    /// Background work of channel commands (a subscription catching up, a
    /// reply waiting for the broker, leave and presence updates), so that
    /// shutdown waits for it.
    pub tasks: TaskTracker,
}

/// On whose behalf a channel is used.
#[derive(Debug, Clone, Copy)]
pub enum Caller<'a> {
    /// A connected user: the namespace's policies apply.
    User(&'a Identity),
    /// The server API (API key): any channel of a known namespace.
    Server,
}

pub fn history_policy(policy: &NamespacePolicy) -> HistoryPolicy {
    HistoryPolicy {
        size: policy.history_size,
        ttl: policy.history_ttl,
    }
}

impl Channels {
    /// A failed broker call as the caller's error, counted once here.
    fn broker_failed(&self, e: BrokerError) -> CommandError {
        self.metrics.broker_errors.inc();
        e.into()
    }

    fn denied(&self, caller: Caller<'_>, d: Denied) -> CommandError {
        match (caller, d) {
            (_, Denied::BadName) => d.into(),
            // The server is refused only a namespace that does not exist.
            (Caller::Server, Denied::Forbidden) => {
                CommandError::bad_request("unknown channel namespace")
            }
            (Caller::User(_), Denied::Forbidden) => {
                self.metrics.violation("channel_forbidden");
                d.into()
            }
        }
    }

    /// The owner of a `thread:<id>` channel's thread (`None` for other
    /// channels, and for threads that do not exist).
    async fn thread_owner(&self, channel: &str) -> Result<Option<Arc<str>>, CommandError> {
        let Some(("thread", id)) = channel.split_once(':') else {
            return Ok(None);
        };
        self.threads
            .owner(id)
            .await
            .map_err(|e| CommandError::new(ErrorCode::Unavailable, e.to_string()))
    }

    /// The namespace's policy if `caller` may subscribe to `channel` (and
    /// read its presence and history).
    pub async fn may_read(
        &self,
        caller: Caller<'_>,
        channel: &str,
    ) -> Result<NamespacePolicy, CommandError> {
        self.authorize(caller, channel, Authorizer::can_subscribe)
            .await
    }

    /// The namespace's policy if `caller` may publish in `channel`.
    pub async fn may_publish(
        &self,
        caller: Caller<'_>,
        channel: &str,
    ) -> Result<NamespacePolicy, CommandError> {
        self.authorize(caller, channel, Authorizer::can_publish)
            .await
    }

    /// Asks the authorizer's `check` for a user, after looking up the
    /// owner of a thread channel; the server needs only a known namespace.
    async fn authorize<'a>(
        &'a self,
        caller: Caller<'_>,
        channel: &str,
        check: for<'x> fn(
            &'x Authorizer,
            &Identity,
            &str,
            Option<&str>,
        ) -> Result<&'x NamespacePolicy, Denied>,
    ) -> Result<NamespacePolicy, CommandError> {
        let allowed = match caller {
            Caller::Server => self.authorizer.lookup(channel),
            Caller::User(identity) => {
                let owner = self.thread_owner(channel).await?;
                check(&self.authorizer, identity, channel, owner.as_deref())
            }
        };
        allowed.cloned().map_err(|d| self.denied(caller, d))
    }

    /// Publishes `value` (whose JSON text is `data`) if `caller` may.
    pub async fn publish(
        &self,
        caller: Caller<'_>,
        channel: &str,
        data: Bytes,
        value: Value,
    ) -> Result<Arc<Publication>, CommandError> {
        let policy = self.may_publish(caller, channel).await?;
        let p = self
            .broker
            .publish(channel, data, value, history_policy(&policy))
            .await
            .map_err(|e| self.broker_failed(e))?;
        // Counted where publications are accepted: a node's fan-out sees
        // only the channels it subscribes to.
        self.metrics.publications.inc();
        Ok(p)
    }

    /// Who is in `channel`, where the namespace keeps presence.
    pub async fn presence(
        &self,
        caller: Caller<'_>,
        channel: &str,
    ) -> Result<Vec<ClientInfo>, CommandError> {
        let policy = self.may_read(caller, channel).await?;
        if !policy.presence {
            return Err(CommandError::bad_request(
                "presence is not enabled for this channel",
            ));
        }
        self.presence
            .clients(channel)
            .await
            .map_err(|e| self.broker_failed(e))
    }

    /// Publications after `since` (the newest ones without it), at most
    /// `limit`, which defaults to and is capped by the namespace's history
    /// size and [`MAX_HISTORY_LIMIT`].
    pub async fn history(
        &self,
        caller: Caller<'_>,
        channel: &str,
        since: Option<&StreamPosition>,
        limit: Option<usize>,
    ) -> Result<HistoryPage, CommandError> {
        let policy = self.may_read(caller, channel).await?;
        if policy.history_size == 0 {
            return Err(CommandError::bad_request(
                "history is not enabled for this channel",
            ));
        }
        let history = history_policy(&policy);
        let limit = limit
            .unwrap_or(history.size)
            .min(history.size)
            .min(MAX_HISTORY_LIMIT);
        self.broker
            .history(channel, since, limit, history)
            .await
            .map_err(|e| self.broker_failed(e))
    }

    /// Runs a new subscription of `identity`'s connection (`client`; `None`
    /// for a subscriber in no presence, like a GraphQL subscription) until
    /// it is live: authorization, the node's broker subscription, the reply
    /// (`reply(position, recovered)`), the missed publications after
    /// `recover` paced to the reader, then presence and `join`.
    ///
    /// An error before the reply is returned for the caller to answer, with
    /// `subscriber` closed. A failure after it (what the client still
    /// missed left history while it read, or the broker failed) closes the
    /// connection with 4009, as for a slow consumer: the client recovers
    /// or learns `recovered: false` on reconnect, and is never left with a
    /// silent gap.
    pub async fn subscribe(
        &self,
        identity: &Identity,
        client: Option<&ClientInfo>,
        channel: &Arc<str>,
        subscriber: &Arc<Subscriber>,
        recover: Option<StreamPosition>,
        reply: impl FnOnce(&StreamPosition, bool) -> OutFrame,
    ) -> Result<(), CommandError> {
        let policy = match self.may_read(Caller::User(identity), channel).await {
            Ok(policy) => policy,
            Err(e) => {
                subscriber.close();
                return Err(e);
            }
        };
        // In the index (and the node subscribed) before the position is
        // read, so nothing published from now on is missed: it waits in the
        // subscriber until the reply and backlog are out.
        if let Err(e) = self
            .index
            .subscribe(&*self.broker, channel, subscriber.clone())
            .await
        {
            subscriber.close();
            return Err(self.broker_failed(e));
        }
        let history = history_policy(&policy);
        // The first page of a backlog, or (limit 0) just the position; the
        // rest is read page by page as the client takes it.
        let limit = if recover.is_some() { BACKLOG_PAGE } else { 0 };
        let mut page = match self
            .broker
            .history(channel, recover.as_ref(), limit, history)
            .await
        {
            Ok(page) => page,
            Err(e) => {
                let _ = self
                    .index
                    .unsubscribe(&*self.broker, channel, subscriber)
                    .await;
                return Err(self.broker_failed(e));
            }
        };
        let recovered = recover.is_some() && page.complete;
        if recover.is_none() {
            page.publications.clear();
        }
        let frame = reply(&page.position, recovered);
        let source = HistorySource {
            broker: &*self.broker,
            channel,
            history,
        };
        if let Err(e) = subscriber.catch_up(frame, page, &source).await {
            let connection_id = client.map(|c| &*c.connection_id);
            tracing::info!(connection_id, error = %e, "subscription could not catch up");
            if let CatchUpError::Broker(_) = e {
                self.metrics.broker_errors.inc();
            }
            let _ = self
                .index
                .unsubscribe(&*self.broker, channel, subscriber)
                .await;
            subscriber.outbound.close(CloseCode::SlowConsumer);
            return Ok(());
        }
        let Some(client) = client.filter(|_| !subscriber.is_closed()) else {
            return Ok(());
        };
        if policy.presence {
            if let Err(e) = self.presence.add(channel, client.clone()).await {
                self.metrics.broker_errors.inc();
                tracing::warn!(connection_id = %client.connection_id, error = %e, "presence add failed");
            }
        }
        if policy.join_leave {
            if let Err(e) = self
                .broker
                .publish_control(channel, ControlKind::Join, client)
                .await
            {
                self.metrics.broker_errors.inc();
                tracing::warn!(connection_id = %client.connection_id, error = %e, "join failed");
            }
        }
        Ok(())
    }

    /// Ends a subscription without waiting: out of the index at once; the
    /// node's broker subscription (when it was the last here), presence
    /// and `leave` follow in a background task. `client` is `None` for a
    /// raw stream, which is in no presence. A subscriber already closed
    /// (its subscribe failed, or it left before) has nothing left to undo.
    pub fn leave(
        self: &Arc<Self>,
        channel: &Arc<str>,
        subscriber: &Arc<Subscriber>,
        client: Option<ClientInfo>,
    ) {
        if subscriber.is_closed() {
            return;
        }
        let last = self.index.remove(channel, subscriber);
        let policy = self.authorizer.policy(channel);
        let announce =
            |on: fn(&NamespacePolicy) -> bool| client.is_some() && policy.is_some_and(on);
        let (presence, leave) = (announce(|p| p.presence), announce(|p| p.join_leave));
        if !(last || presence || leave) {
            return;
        }
        // A connection dropped while the runtime shuts down has nowhere to
        // run this; a stopping node's subscriptions and presence go with
        // it anyway.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (this, channel) = (self.clone(), channel.clone());
        self.tasks.spawn_on(
            async move {
                if last {
                    if let Err(e) = this.index.reconcile(&*this.broker, &channel).await {
                        this.metrics.broker_errors.inc();
                        tracing::warn!(error = %e, "node unsubscribe failed");
                    }
                }
                let Some(client) = client else { return };
                if presence {
                    if let Err(e) = this.presence.remove(&channel, &client.connection_id).await {
                        this.metrics.broker_errors.inc();
                        tracing::warn!(connection_id = %client.connection_id, error = %e, "presence remove failed");
                    }
                }
                if leave {
                    if let Err(e) = this
                        .broker
                        .publish_control(&channel, ControlKind::Leave, &client)
                        .await
                    {
                        this.metrics.broker_errors.inc();
                        tracing::warn!(connection_id = %client.connection_id, error = %e, "leave failed");
                    }
                }
            },
            &runtime,
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use async_trait::async_trait;
    use serde_json::json;
    use wsgate_protocol::Encoding;

    use super::*;
    use crate::broker::{MemoryBroker, MemoryPresence};
    use crate::channels::authorizer::{PublishPolicy, SubscribePolicy};
    use crate::channels::fanout::FrameFormat;
    use crate::connection::outbound::Outbound;
    use crate::threads::StoreUnavailable;

    /// Thread `t1` belongs to alice; `down` fails like a lost database.
    struct Owners;

    #[async_trait]
    impl ThreadOwners for Owners {
        async fn owner(&self, id: &str) -> Result<Option<Arc<str>>, StoreUnavailable> {
            match id {
                "t1" => Ok(Some("alice".into())),
                "down" => Err(StoreUnavailable("connection refused".into())),
                _ => Ok(None),
            }
        }
    }

    fn service() -> Arc<Channels> {
        let metrics = Arc::new(Metrics::register(&mut Default::default()));
        let index = Arc::new(ChannelIndex::new(metrics.clone()));
        let chat = NamespacePolicy {
            history_size: 10,
            presence: true,
            join_leave: true,
            ..NamespacePolicy::new(SubscribePolicy::Any, PublishPolicy::Any)
        };
        Arc::new(Channels {
            authorizer: Authorizer::new([("chat".to_string(), chat)]),
            broker: Arc::new(MemoryBroker::new(index.clone())),
            presence: Arc::new(MemoryPresence::default()),
            index,
            threads: Arc::new(Owners),
            metrics,
            tasks: TaskTracker::new(),
        })
    }

    fn user(name: &str) -> Identity {
        Identity::new(name.into(), u64::MAX)
    }

    fn client(name: &str) -> ClientInfo {
        ClientInfo {
            user: name.into(),
            connection_id: format!("c-{name}").into(),
        }
    }

    async fn publish(c: &Channels, caller: Caller<'_>, channel: &str) -> Result<u64, CommandError> {
        let v = json!({"n": 1});
        let p = c
            .publish(caller, channel, Bytes::from(v.to_string()), v)
            .await?;
        Ok(p.offset)
    }

    fn code(r: Result<impl std::fmt::Debug, CommandError>) -> ErrorCode {
        r.expect_err("refused").code
    }

    #[tokio::test]
    async fn authorization_is_the_same_for_every_front_end() {
        let c = service();
        let alice = user("alice");
        let bob = user("bob");
        // Server-only namespace: users may not publish, the server may.
        assert_eq!(
            code(publish(&c, Caller::User(&alice), "news").await),
            ErrorCode::Forbidden
        );
        assert_eq!(publish(&c, Caller::Server, "news").await, Ok(1));
        // Unknown namespace: forbidden to users, a bad request to the server.
        assert_eq!(
            code(c.may_read(Caller::User(&alice), "nope:x").await),
            ErrorCode::Forbidden
        );
        assert_eq!(
            code(publish(&c, Caller::Server, "nope:x").await),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(c.may_read(Caller::User(&alice), "bad name").await),
            ErrorCode::BadRequest
        );
        // Threads: the owner only, asked of the thread store.
        assert!(c.may_read(Caller::User(&alice), "thread:t1").await.is_ok());
        assert_eq!(
            code(c.may_read(Caller::User(&bob), "thread:t1").await),
            ErrorCode::Forbidden
        );
        assert_eq!(
            code(c.may_read(Caller::User(&alice), "thread:t2").await),
            ErrorCode::Forbidden
        );
        assert_eq!(
            code(c.may_read(Caller::User(&alice), "thread:down").await),
            ErrorCode::Unavailable
        );
        // Presence and history only where the namespace keeps them.
        assert_eq!(
            code(c.presence(Caller::User(&alice), "news").await),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(c.history(Caller::Server, "news", None, None).await),
            ErrorCode::BadRequest
        );
        assert_eq!(
            c.metrics
                .security_violations
                .get_or_create(&[("kind", "channel_forbidden")])
                .get(),
            4
        );
    }

    #[tokio::test]
    async fn history_is_capped_by_the_namespace() {
        let c = service();
        for _ in 0..12 {
            publish(&c, Caller::Server, "chat:a").await.unwrap();
        }
        let page = c
            .history(Caller::Server, "chat:a", None, Some(100))
            .await
            .unwrap();
        let offsets: Vec<u64> = page.publications.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, (3..=12).collect::<Vec<_>>(), "history_size 10");
        let page = c
            .history(Caller::Server, "chat:a", None, Some(2))
            .await
            .unwrap();
        assert_eq!(page.publications.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_subscription_lives_from_reply_to_leave() {
        let c = service();
        let alice = user("alice");
        let (a, b) = (client("alice"), client("bob"));
        let channel: Arc<str> = "chat:room".into();
        let subscribe = |who: &ClientInfo| {
            let outbound = Arc::new(Outbound::new(1 << 16));
            let s = Subscriber::for_connection(
                outbound.clone(),
                FrameFormat::Envelope(Encoding::Json),
                None,
                who.connection_id.clone(),
            );
            (outbound, s)
        };
        let reply = |at: &StreamPosition, recovered: bool| {
            OutFrame::Text(Bytes::from(format!("subscribed {} {recovered}", at.offset)))
        };
        let (qa, sa) = subscribe(&a);
        c.subscribe(&alice, Some(&a), &channel, &sa, None, reply)
            .await
            .unwrap();
        let (qb, sb) = subscribe(&b);
        c.subscribe(&user("bob"), Some(&b), &channel, &sb, None, reply)
            .await
            .unwrap();
        assert_eq!(publish(&c, Caller::Server, "chat:room").await, Ok(1));
        let texts = |q: &Outbound| -> Vec<String> {
            q.take()
                .0
                .iter()
                .map(|f| match f {
                    OutFrame::Text(b) => String::from_utf8_lossy(b).into_owned(),
                    OutFrame::Shared(f) => String::from_utf8_lossy(f.bytes()).into_owned(),
                    OutFrame::Binary(_) | OutFrame::Publication(_) => "binary".into(),
                })
                .collect()
        };
        let got_a = texts(&qa);
        assert_eq!(got_a[0], "subscribed 0 false");
        assert!(
            got_a[1].contains("\"join\"") && got_a[1].contains("c-bob"),
            "{got_a:?}"
        );
        assert!(got_a[2].contains("\"message\""), "{got_a:?}");
        let got_b = texts(&qb);
        assert_eq!(got_b.len(), 2, "bob is not told of his own join: {got_b:?}");
        let names: Vec<_> = c
            .presence(Caller::Server, "chat:room")
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.user)
            .collect();
        assert_eq!(names.len(), 2);

        // Bob leaves: alice hears it, presence forgets him.
        c.leave(&channel, &sb, Some(b.clone()));
        c.tasks.close();
        tokio::time::timeout(Duration::from_secs(5), c.tasks.wait())
            .await
            .unwrap();
        assert!(texts(&qa)
            .iter()
            .any(|t| t.contains("\"leave\"") && t.contains("c-bob")));
        assert_eq!(
            c.presence(Caller::Server, "chat:room").await.unwrap().len(),
            1
        );
        // Leaving twice does nothing.
        c.leave(&channel, &sb, Some(b));
        assert!(qa.take().0.is_empty());
    }

    #[tokio::test]
    async fn a_refused_subscription_is_closed_and_never_indexed() {
        let c = service();
        let outbound = Arc::new(Outbound::new(1 << 16));
        let s = Subscriber::new(outbound.clone(), FrameFormat::Raw, None);
        let channel: Arc<str> = "thread:t1".into();
        let e = c
            .subscribe(
                &user("bob"),
                Some(&client("bob")),
                &channel,
                &s,
                None,
                |_, _| unreachable!("no reply before authorization"),
            )
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
        assert!(s.is_closed());
        publish(&c, Caller::Server, "thread:t1").await.unwrap();
        assert!(outbound.take().0.is_empty());
    }
}
