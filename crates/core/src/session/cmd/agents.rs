//! Agent commands (SPEC §4, §6): `user_message`, `start_agent`,
//! `stop_agent`. Run events reach the connection through `thread:<id>`, to
//! which a requesting connection is subscribed first (once): so it gets each
//! event exactly once, with its offset and epoch, like every other tab.

use std::sync::Arc;

use serde_json::json;
use wsgate_protocol::command::{StopAgent, ThreadOnly, UserMessage};

use crate::channels::fanout::{FrameFormat, Subscriber};
use crate::channels::publication::StreamPosition;
use crate::error::CommandError;
use crate::session::Session;

use super::channels::subscribed_frame;
use crate::threads::Role;

/// Characters of a first message that title the thread it creates.
const TITLE_FROM_CONTENT: usize = 60;

impl Session {
    /// The subscriber for `thread:<id>` when this connection is not yet
    /// subscribed (registered in the session now; the caller's task makes
    /// it live before the run starts).
    pub(in crate::session) fn follow(
        &mut self,
        thread_id: &str,
    ) -> Option<(Arc<str>, Arc<Subscriber>)> {
        let channel: Arc<str> = format!("thread:{thread_id}").into();
        self.subscriptions.retain(|(_, s)| !s.is_closed());
        if self.subscriptions.iter().any(|(c, _)| *c == channel) {
            return None;
        }
        let subscriber = Subscriber::for_connection(
            self.ctx.outbound.clone(),
            FrameFormat::Envelope(self.ctx.encoding),
            None,
            self.ctx.connection_id.clone(),
        );
        self.subscriptions
            .push((channel.clone(), subscriber.clone()));
        Some((channel, subscriber))
    }

    /// Starts a run on `thread` (after storing `content` as the user's
    /// message when given) and answers `run_started`.
    fn run_on(&mut self, id: Option<&str>, thread: Option<String>, content: Option<String>) {
        let following = thread.as_deref().and_then(|t| self.follow(t));
        let (threads, runs) = (
            self.ctx.shared.threads.clone(),
            self.ctx.shared.runs.clone(),
        );
        let channels = self.ctx.shared.channels.clone();
        let (identity, client) = (self.ctx.identity.clone(), self.client());
        let (encoding, metrics) = (self.ctx.encoding, self.ctx.shared.metrics.clone());
        // A new thread's channel is followed once the thread exists; the
        // subscription is handed back to the session through `adopted`.
        let adopted = thread
            .is_none()
            .then(|| self.adopted.get_or_insert_with(Default::default).clone());
        let outbound = self.ctx.outbound.clone();
        self.reply_later(id, "run_started", async move {
            let thread = match thread {
                Some(t) => threads.get(&identity, &t).await?,
                None => {
                    let content = content.as_deref().unwrap_or_default();
                    let title: String = content.chars().take(TITLE_FROM_CONTENT).collect();
                    threads.create(&identity, Some(&title)).await?
                }
            };
            if runs.is_running(&thread.id) {
                return Err(CommandError::conflict("the thread has a run in progress"));
            }
            let message = match content {
                Some(c) => Some(
                    threads
                        .add_message(&identity, &thread.id, Role::User, &c)
                        .await?,
                ),
                None => None,
            };
            let follow = match (following, &adopted) {
                (Some(f), _) => Some(f),
                (None, Some(adopted)) => {
                    let channel: Arc<str> = format!("thread:{}", thread.id).into();
                    let subscriber = Subscriber::for_connection(
                        outbound,
                        FrameFormat::Envelope(encoding),
                        None,
                        client.connection_id.clone(),
                    );
                    let f = (channel, subscriber);
                    // Handed to the session before it goes live, so the
                    // session's end undoes it whatever happens next.
                    adopted
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(f.clone());
                    Some(f)
                }
                (None, None) => None,
            };
            if let Some((channel, subscriber)) = follow {
                let reply = |at: &StreamPosition, recovered: bool| {
                    subscribed_frame(&metrics, encoding, None, &channel, at, recovered)
                };
                channels
                    .subscribe(&identity, &client, &channel, &subscriber, None, reply)
                    .await?;
            }
            let run = runs.start(&identity, &thread.id).await?;
            let mut reply = json!({ "run_id": run.id, "thread_id": thread.id });
            if let Some(m) = message {
                reply["message"] = json!(m);
            }
            Ok(reply)
        });
    }

    pub(in crate::session) fn user_message(
        &mut self,
        id: Option<&str>,
        args: UserMessage,
    ) -> Result<(), CommandError> {
        if args.content.trim().is_empty() {
            return Err(CommandError::bad_request(
                "payload.content must not be empty",
            ));
        }
        let limit = self.ctx.shared.limits.max_message_bytes;
        if args.content.len() > limit {
            return Err(CommandError::bad_request(format!(
                "payload.content: at most {limit} bytes"
            )));
        }
        self.run_on(id, args.thread_id, Some(args.content));
        Ok(())
    }

    pub(in crate::session) fn start_agent(
        &mut self,
        id: Option<&str>,
        args: ThreadOnly,
    ) -> Result<(), CommandError> {
        self.run_on(id, Some(args.thread_id), None);
        Ok(())
    }

    pub(in crate::session) fn stop_agent(
        &mut self,
        id: Option<&str>,
        args: StopAgent,
    ) -> Result<(), CommandError> {
        let (runs, identity) = (self.ctx.shared.runs.clone(), self.ctx.identity.clone());
        self.reply_later(id, "run_stopped", async move {
            runs.stop(&identity, &args.run_id).await?;
            Ok(json!({ "run_id": args.run_id }))
        });
        Ok(())
    }
}
