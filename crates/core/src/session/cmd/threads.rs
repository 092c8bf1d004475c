//! Thread commands (SPEC §4, §6): create, list, history, rename, delete,
//! answered by the [`Threads`](crate::threads::Threads) service in the
//! background. `switch_thread` and the agent commands come with agent runs
//! (they decode and validate already, then answer `unknown_type`).

use serde_json::json;
use wsgate_protocol::command::{CreateThread, Page, RenameThread, ThreadOnly, ThreadPage};

use crate::error::CommandError;
use crate::session::Session;

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
}
