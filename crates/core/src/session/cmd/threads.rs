//! Thread commands (SPEC §4, §6): create, list, history, rename, delete,
//! answered by the [`Threads`](crate::threads::Threads) service in the
//! background, and `switch_thread`, which loads a thread and follows its
//! channel, replaying a run in progress from its first event.

use serde_json::{json, Value};
use wsgate_protocol::command::{CreateThread, Page, RenameThread, ThreadOnly, ThreadPage};

use crate::channels::publication::StreamPosition;
use crate::error::CommandError;
use crate::session::{error_frame, out_frame, Session};

impl Session {
    pub(in crate::session) fn create_thread(
        &mut self,
        id: Option<&str>,
        args: CreateThread,
    ) -> Result<(), CommandError> {
        let (threads, identity) = (self.ctx.shared.threads.clone(), self.ctx.identity.clone());
        self.reply_later(id, "thread_created", async move {
            let thread = threads.create(&identity, args.title.as_deref()).await?;
            Ok(json!({ "thread": thread }))
        });
        Ok(())
    }

    pub(in crate::session) fn list_threads(
        &mut self,
        id: Option<&str>,
        args: Page,
    ) -> Result<(), CommandError> {
        let (threads, identity) = (self.ctx.shared.threads.clone(), self.ctx.identity.clone());
        self.reply_later(id, "threads", async move {
            let list = threads
                .list(&identity, args.limit, args.before.as_deref())
                .await?;
            Ok(json!({ "threads": list }))
        });
        Ok(())
    }

    pub(in crate::session) fn get_thread_history(
        &mut self,
        id: Option<&str>,
        args: ThreadPage,
    ) -> Result<(), CommandError> {
        let (threads, identity) = (self.ctx.shared.threads.clone(), self.ctx.identity.clone());
        self.reply_later(id, "thread_history", async move {
            let messages = threads
                .messages(
                    &identity,
                    &args.thread_id,
                    args.limit,
                    args.before.as_deref(),
                )
                .await?;
            Ok(json!({ "thread_id": args.thread_id, "messages": messages }))
        });
        Ok(())
    }

    pub(in crate::session) fn rename_thread(
        &mut self,
        id: Option<&str>,
        args: RenameThread,
    ) -> Result<(), CommandError> {
        let (threads, identity) = (self.ctx.shared.threads.clone(), self.ctx.identity.clone());
        self.reply_later(id, "thread_renamed", async move {
            let thread = threads
                .rename(&identity, &args.thread_id, &args.title)
                .await?;
            Ok(json!({ "thread": thread }))
        });
        Ok(())
    }

    pub(in crate::session) fn delete_thread(
        &mut self,
        id: Option<&str>,
        args: ThreadOnly,
    ) -> Result<(), CommandError> {
        let (threads, identity) = (self.ctx.shared.threads.clone(), self.ctx.identity.clone());
        self.reply_later(id, "thread_deleted", async move {
            threads.delete(&identity, &args.thread_id).await?;
            Ok(json!({ "thread_id": args.thread_id }))
        });
        Ok(())
    }

    /// `thread_loaded {thread, messages, offset, epoch, active_run}`, then,
    /// when a run is in progress, every event of it so far, in order, then
    /// the live ones: the same subscribe-before-read as `recover`, from the
    /// position just before the run's first event, so a tab opened or
    /// reloaded mid-run shows the whole answer so far, nothing twice.
    pub(in crate::session) fn switch_thread(
        &mut self,
        id: Option<&str>,
        args: ThreadOnly,
    ) -> Result<(), CommandError> {
        let following = self.follow(&args.thread_id)?;
        let (threads, runs) = (
            self.ctx.shared.threads.clone(),
            self.ctx.shared.runs.clone(),
        );
        let channels = self.ctx.shared.channels.clone();
        let (identity, client) = (self.ctx.identity.clone(), self.client());
        let (encoding, metrics) = (self.ctx.encoding, self.ctx.shared.metrics.clone());
        let id = id.map(str::to_owned);
        let outbound = self.ctx.outbound.clone();
        channels.clone().tasks.spawn(async move {
            let loaded = async {
                let thread = threads.get(&identity, &args.thread_id).await?;
                let messages = threads.messages(&identity, &thread.id, None, None).await?;
                let active = runs.active_run(&identity.user, &thread.id).await?;
                let active_json = match &active {
                    Some(a) => json!({ "run_id": &*a.run_id, "started_at": a.started_at }),
                    None => Value::Null,
                };
                let payload = |at: &StreamPosition| {
                    json!({
                        "thread": &thread,
                        "messages": &messages,
                        "offset": at.offset,
                        "epoch": &*at.epoch,
                        "active_run": &active_json,
                    })
                };
                match following {
                    Some((channel, subscriber)) => {
                        let recover = active.as_ref().map(|a| a.replay_from.clone());
                        let reply = |at: &StreamPosition, _recovered: bool| {
                            metrics.message_out("thread_loaded");
                            out_frame(encoding, "thread_loaded", id.as_deref(), payload(at))
                        };
                        channels
                            .subscribe(
                                &identity,
                                Some(&client),
                                &channel,
                                &subscriber,
                                recover,
                                reply,
                            )
                            .await
                    }
                    // Already following the channel: the run's events are
                    // reaching this connection; report where it stands.
                    None => {
                        let channel = format!("thread:{}", thread.id);
                        let now = channels
                            .history(
                                crate::channels::Caller::User(&identity),
                                &channel,
                                None,
                                Some(0),
                            )
                            .await?;
                        metrics.message_out("thread_loaded");
                        outbound.push(out_frame(
                            encoding,
                            "thread_loaded",
                            id.as_deref(),
                            payload(&now.position),
                        ));
                        Ok(())
                    }
                }
            };
            if let Err(e) = loaded.await {
                outbound.push(error_frame(&metrics, encoding, id.as_deref(), &e));
            }
        });
        Ok(())
    }
}
