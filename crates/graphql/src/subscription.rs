//! `Subscription`: a channel (with an equality filter on `data`'s top-level
//! fields), `events`, `metrics`, and one thread's run events with recovery.
//!
//! Every subscription is executed twice over its life, in two modes: first
//! as a [`Mode::Probe`] for each subscriber, which asks the authorizer and
//! returns at once (so a refusal is that subscriber's error, whoever else
//! subscribed the same), then as [`Mode::Live`], once for all identical
//! subscribers when they are shared, which holds the channel and yields
//! its publications.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_graphql::{Context, ErrorExtensions, Json, Subscription, ID};
use futures_util::stream::{self, BoxStream, StreamExt};
use serde_json::{Map, Value};
use wsgate_core::channels::publication::{Filter, Publication as CorePublication};
use wsgate_core::channels::Caller;
use wsgate_core::error::CommandError;

use crate::error::{field_error, OrField, RECOVERY_INCOMPLETE};
use crate::schema::{services, viewer};
use crate::tap::{Tap, TapCell};
use crate::types::{Publication, StreamPositionInput, ThreadEvent};

/// How a subscription document is being executed.
pub(crate) enum Mode {
    /// Authorize only: every field checks, then yields nothing.
    Probe(Arc<Probe>),
    /// Hold the channels and yield publications.
    Live(Arc<TapCell>),
}

/// What a probe found out besides the refusals.
#[derive(Default)]
pub(crate) struct Probe {
    /// A field replays history for this subscriber (`since`): its stream
    /// is its own, never shared.
    pub own_stream: AtomicBool,
}

pub struct SubscriptionRoot;

type Items<T> = BoxStream<'static, async_graphql::Result<T>>;

#[Subscription]
impl SubscriptionRoot {
    /// Publications in `name` from now on; with `filter`, only those whose
    /// `data` has every one of its top-level fields with an equal value.
    async fn channel(
        &self,
        ctx: &Context<'_>,
        name: String,
        filter: Option<Json<Map<String, Value>>>,
    ) -> async_graphql::Result<Items<Publication>> {
        open(ctx, name, filter, None, Publication).await
    }

    /// The built-in `events` channel.
    async fn events(
        &self,
        ctx: &Context<'_>,
        filter: Option<Json<Map<String, Value>>>,
    ) -> async_graphql::Result<Items<Publication>> {
        open(ctx, "events".into(), filter, None, Publication).await
    }

    /// The built-in `metrics` channel (a snapshot every
    /// `metrics_interval_secs`).
    async fn metrics(&self, ctx: &Context<'_>) -> async_graphql::Result<Items<Publication>> {
        open(ctx, "metrics".into(), None, None, Publication).await
    }

    /// The events of a thread's runs (`thread:<id>`, owner only). With
    /// `since` (an event's `offset` and `epoch`), the events after it come
    /// first, then the live ones; if some have left history (or `epoch`
    /// is another), the first item is an error with code
    /// `recovery_incomplete` and the stream goes on from the oldest event
    /// still kept, or from now.
    async fn thread_events(
        &self,
        ctx: &Context<'_>,
        thread_id: ID,
        since: Option<StreamPositionInput>,
    ) -> async_graphql::Result<Items<ThreadEvent>> {
        let channel = format!("thread:{}", thread_id.0);
        open(ctx, channel, None, since, ThreadEvent).await
    }
}

/// The one body of every subscription field.
async fn open<T: Send + 'static>(
    ctx: &Context<'_>,
    channel: String,
    filter: Option<Json<Map<String, Value>>>,
    since: Option<StreamPositionInput>,
    item: fn(Arc<CorePublication>) -> T,
) -> async_graphql::Result<Items<T>> {
    let shared = &services(ctx).shared;
    let identity = viewer(ctx)?;
    let mode = ctx
        .data::<Mode>()
        .map_err(|_| field_error(CommandError::bad_request("subscriptions need WebSocket")))?;
    match mode {
        Mode::Probe(probe) => {
            shared
                .channels
                .may_read(Caller::User(identity), &channel)
                .await
                .field()?;
            if since.is_some() {
                probe.own_stream.store(true, Ordering::Relaxed);
            }
            Ok(stream::empty().boxed())
        }
        Mode::Live(cell) => {
            let asked_recovery = since.is_some();
            let (tap, recovered) = Tap::open(
                shared.channels.clone(),
                identity.clone(),
                channel,
                filter.map(|f| Filter::Exact(f.0)),
                since.map(Into::into),
                shared.limits.outbound_queue_bytes,
                cell.clone(),
            )
            .await
            .field()?;
            let items = tap.into_stream().map(move |p| Ok(item(p)));
            if asked_recovery && !recovered {
                let gap = Err(async_graphql::Error::new(
                    "some events after `since` are no longer in history; the stream goes on from the oldest one kept, or from now",
                )
                .extend_with(|_, e| e.set("code", RECOVERY_INCOMPLETE)));
                return Ok(stream::once(async move { gap }).chain(items).boxed());
            }
            Ok(items.boxed())
        }
    }
}
