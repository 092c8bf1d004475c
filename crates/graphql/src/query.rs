//! `Query`: what the caller may read, through the same services (and so the
//! same authorizer and ownership rules) as `/ws` and the REST API.

use async_graphql::{Context, Json, Object, ID};
use serde_json::Value;
use wsgate_core::channels::Caller;
use wsgate_core::error::CommandError;

use crate::error::OrField;
use crate::schema::{services, viewer};
use crate::types::{ClientInfo, HistoryPage, Me, Message, Run, StreamPositionInput, Thread};

pub struct QueryRoot;

#[Object]
impl QueryRoot {
    /// The caller, as the token says.
    async fn me(&self, ctx: &Context<'_>) -> async_graphql::Result<Me> {
        Ok(Me::from(viewer(ctx)?))
    }

    /// The caller's threads, most recently updated first.
    async fn threads(
        &self,
        ctx: &Context<'_>,
        limit: Option<u64>,
        before: Option<String>,
    ) -> async_graphql::Result<Vec<Thread>> {
        let threads = &services(ctx).shared.threads;
        let list = threads
            .list(viewer(ctx)?, limit, before.as_deref())
            .await
            .field()?;
        Ok(list.into_iter().map(Thread::from).collect())
    }

    /// One of the caller's threads (anyone else's is `not_found`).
    async fn thread(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Thread> {
        let threads = &services(ctx).shared.threads;
        Ok(threads.get(viewer(ctx)?, &id).await.field()?.into())
    }

    /// A page of a thread's messages, oldest first.
    async fn messages(
        &self,
        ctx: &Context<'_>,
        thread_id: ID,
        limit: Option<u64>,
        before: Option<String>,
    ) -> async_graphql::Result<Vec<Message>> {
        let threads = &services(ctx).shared.threads;
        let list = threads
            .messages(viewer(ctx)?, &thread_id, limit, before.as_deref())
            .await
            .field()?;
        Ok(list.into_iter().map(Message::from).collect())
    }

    /// A thread's runs, in the order they started.
    async fn runs(&self, ctx: &Context<'_>, thread_id: ID) -> async_graphql::Result<Vec<Run>> {
        let threads = &services(ctx).shared.threads;
        let list = threads.runs(viewer(ctx)?, &thread_id).await.field()?;
        Ok(list.into_iter().map(Run::from).collect())
    }

    /// A channel's history: the newest publications, or those after `since`.
    async fn history(
        &self,
        ctx: &Context<'_>,
        channel: String,
        limit: Option<usize>,
        since: Option<StreamPositionInput>,
    ) -> async_graphql::Result<HistoryPage> {
        let channels = &services(ctx).shared.channels;
        let since = since.map(Into::into);
        let page = channels
            .history(Caller::User(viewer(ctx)?), &channel, since.as_ref(), limit)
            .await
            .field()?;
        Ok(page.into())
    }

    /// Who is in a channel that keeps presence.
    async fn presence(
        &self,
        ctx: &Context<'_>,
        channel: String,
    ) -> async_graphql::Result<Vec<ClientInfo>> {
        let channels = &services(ctx).shared.channels;
        let clients = channels
            .presence(Caller::User(viewer(ctx)?), &channel)
            .await
            .field()?;
        Ok(clients.into_iter().map(ClientInfo::from).collect())
    }

    /// What `/ws/stats` answers; role `admin` only.
    async fn stats(&self, ctx: &Context<'_>) -> async_graphql::Result<Json<Value>> {
        if !viewer(ctx)?.has_role("admin") {
            return Err(CommandError::forbidden("role admin is required")).field();
        }
        Ok(Json((services(ctx).stats)()))
    }
}
