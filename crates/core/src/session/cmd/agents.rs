//! Agent commands (SPEC §4, §6): `user_message`, `start_agent`,
//! `stop_agent`. Run events reach the connection through `thread:<id>`, to
//! which a requesting connection is subscribed first (once): so it gets each
//! event exactly once, with its offset and epoch, like every other tab.

use std::sync::Arc;

use serde_json::json;
use wsgate_protocol::command::{StopAgent, ThreadOnly, UserMessage};

use crate::channels::publication::StreamPosition;
use crate::error::CommandError;
use crate::session::{Session, Subscription};

use super::channels::subscribed_frame;

impl Session {
    /// The subscriber for `thread:<id>` when this connection is not yet
    /// subscribed (registered in the session now; the caller's task makes
    /// it live before the run starts).
    pub(in crate::session) fn follow(
        &mut self,
        thread_id: &str,
    ) -> Result<Option<Subscription>, CommandError> {
        let channel: Arc<str> = format!("thread:{thread_id}").into();
        self.subscriptions.retain(|(_, s)| !s.is_closed());
        if self.subscriptions.iter().any(|(c, _)| *c == channel) {
            return Ok(None);
        }
        self.room_for_subscription()?;
        let subscriber = self.subscriber(None);
        self.subscriptions
            .push((channel.clone(), subscriber.clone()));
        Ok(Some((channel, subscriber)))
    }

    /// Starts a run on `thread` (after storing `content` as the user's
    /// message when given) and answers `run_started`.
    fn run_on(
        &mut self,
        id: Option<&str>,
        thread: Option<String>,
        content: Option<String>,
    ) -> Result<(), CommandError> {
        let following = match thread.as_deref() {
            Some(t) => self.follow(t)?,
            None => {
                self.room_for_subscription()?;
                None
            }
        };
        // A new thread's channel is followed once the thread exists; the
        // subscription is handed back to the session through `adopted`.
        let adopted = thread.is_none().then(|| {
            let list = self.adopted.get_or_insert_with(Default::default).clone();
            (list, self.subscriber(None))
        });
        let shared = self.ctx.shared.clone();
        let (identity, client) = (self.ctx.identity.clone(), self.client());
        let encoding = self.ctx.encoding;
        self.reply_later(id, "run_started", async move {
            let (threads, runs) = (&shared.threads, &shared.runs);
            let (thread, message) = match content {
                Some(c) => {
                    let max = shared.limits.max_message_bytes;
                    let (t, m) = runs
                        .accept_message(threads, &identity, thread.as_deref(), &c, max)
                        .await?;
                    (t, Some(m))
                }
                // `start_agent` always names its thread.
                None => (
                    threads
                        .get(&identity, thread.as_deref().unwrap_or_default())
                        .await?,
                    None,
                ),
            };
            let follow = match (following, adopted) {
                (Some(f), _) => Some(f),
                (None, Some((list, subscriber))) => {
                    let f: (Arc<str>, _) = (format!("thread:{}", thread.id).into(), subscriber);
                    // Handed to the session before it goes live, so the
                    // session's end undoes it whatever happens next.
                    list.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(f.clone());
                    Some(f)
                }
                (None, None) => None,
            };
            if let Some((channel, subscriber)) = follow {
                let reply = |at: &StreamPosition, recovered: bool| {
                    subscribed_frame(&shared.metrics, encoding, None, &channel, at, recovered)
                };
                shared
                    .channels
                    .subscribe(&identity, Some(&client), &channel, &subscriber, None, reply)
                    .await?;
            }
            let run = runs.start(&identity, &thread.id).await?;
            let mut reply = json!({ "run_id": run.id, "thread_id": thread.id });
            if let Some(m) = message {
                reply["message"] = json!(m);
            }
            Ok(reply)
        });
        Ok(())
    }

    pub(in crate::session) fn user_message(
        &mut self,
        id: Option<&str>,
        args: UserMessage,
    ) -> Result<(), CommandError> {
        self.run_on(id, args.thread_id, Some(args.content))
    }

    pub(in crate::session) fn start_agent(
        &mut self,
        id: Option<&str>,
        args: ThreadOnly,
    ) -> Result<(), CommandError> {
        self.run_on(id, Some(args.thread_id), None)
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
