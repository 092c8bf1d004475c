//! `Mutation`: publish, threads, messages and runs, through the services
//! `/ws` commands use.

use async_graphql::{Context, Json, Object, ID};
use bytes::Bytes;
use serde_json::Value;
use wsgate_core::channels::Caller;
use wsgate_core::error::CommandError;

use crate::error::OrField;
use crate::schema::{services, viewer};
use crate::types::{SentMessage, StreamPosition, Thread};

pub struct MutationRoot;

#[Object]
impl MutationRoot {
    /// Publishes `data` where the channel's namespace lets the caller
    /// publish; answers the publication's position.
    async fn publish(
        &self,
        ctx: &Context<'_>,
        channel: String,
        data: Json<Value>,
    ) -> async_graphql::Result<StreamPosition> {
        let shared = &services(ctx).shared;
        let bytes = Bytes::from(serde_json::to_vec(&data.0)?);
        let max = shared.limits.max_message_bytes;
        if bytes.len() > max {
            return Err(CommandError::bad_request(format!(
                "data is {} bytes; at most {max} (limits.max_message_bytes)",
                bytes.len()
            )))
            .field();
        }
        let p = shared
            .channels
            .publish(Caller::User(viewer(ctx)?), &channel, bytes, data.0)
            .await
            .field()?;
        Ok(StreamPosition {
            offset: p.offset,
            epoch: p.epoch.to_string(),
        })
    }

    async fn create_thread(
        &self,
        ctx: &Context<'_>,
        title: Option<String>,
    ) -> async_graphql::Result<Thread> {
        let threads = &services(ctx).shared.threads;
        Ok(threads
            .create(viewer(ctx)?, title.as_deref())
            .await
            .field()?
            .into())
    }

    async fn rename_thread(
        &self,
        ctx: &Context<'_>,
        id: ID,
        title: String,
    ) -> async_graphql::Result<Thread> {
        let threads = &services(ctx).shared.threads;
        Ok(threads
            .rename(viewer(ctx)?, &id, &title)
            .await
            .field()?
            .into())
    }

    /// Deletes the thread with its messages and runs; true when done.
    async fn delete_thread(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        let threads = &services(ctx).shared.threads;
        threads.delete(viewer(ctx)?, &id).await.field()?;
        Ok(true)
    }

    /// Stores a user message (in a new thread without `threadId`) and
    /// starts the agent's run on it.
    async fn send_message(
        &self,
        ctx: &Context<'_>,
        thread_id: Option<ID>,
        content: String,
    ) -> async_graphql::Result<SentMessage> {
        let shared = &services(ctx).shared;
        let identity = viewer(ctx)?;
        let (thread, message) = shared
            .runs
            .accept_message(
                &shared.threads,
                identity,
                thread_id.as_ref().map(|t| t.as_str()),
                &content,
                shared.limits.max_message_bytes,
            )
            .await
            .field()?;
        let run = shared.runs.start(identity, &thread.id).await.field()?;
        Ok(SentMessage {
            message: message.into(),
            thread: thread.into(),
            run_id: ID(run.id),
        })
    }

    /// Stops the caller's run; true once its last event is out.
    async fn stop_run(&self, ctx: &Context<'_>, run_id: ID) -> async_graphql::Result<bool> {
        let runs = &services(ctx).shared.runs;
        runs.stop(viewer(ctx)?, &run_id).await.field()?;
        Ok(true)
    }
}
