//! One handler per command (or small group of commands), dispatched from
//! the protocol's [`Command`] enum. A handler answers success itself (at
//! once, or later from a task) and returns the error of a command it
//! refuses; [`Session::run`]'s caller turns that into the `error` frame.

mod agents;
mod channels;
mod connection;
mod threads;

use std::future::Future;

use serde_json::Value;
use wsgate_protocol::Command;

use super::{error_frame, out_frame, Session};
use crate::error::CommandError;

impl Session {
    /// Runs one decoded command.
    pub(super) fn run(&mut self, id: Option<&str>, command: Command) -> Result<(), CommandError> {
        match command {
            Command::Ping(_) => self.ping(id),
            Command::RefreshToken(args) => self.refresh_token(id, args),
            Command::Subscribe(args) => self.subscribe(id, args),
            Command::Unsubscribe(args) => self.unsubscribe(id, args),
            Command::Publish(args) => self.publish(id, args),
            Command::Presence(args) => self.presence(id, args),
            Command::History(args) => self.history(id, args),
            Command::CreateThread(args) => self.create_thread(id, args),
            Command::ListThreads(args) => self.list_threads(id, args),
            Command::GetThreadHistory(args) => self.get_thread_history(id, args),
            Command::RenameThread(args) => self.rename_thread(id, args),
            Command::DeleteThread(args) => self.delete_thread(id, args),
            Command::UserMessage(args) => self.user_message(id, args),
            Command::StartAgent(args) => self.start_agent(id, args),
            Command::StopAgent(args) => self.stop_agent(id, args),
            Command::SwitchThread(args) => self.switch_thread(id, args),
        }
    }

    /// Runs `call` in the background and answers `kind` with its payload,
    /// or the error.
    pub(in crate::session) fn reply_later<F>(&self, id: Option<&str>, kind: &'static str, call: F)
    where
        F: Future<Output = Result<Value, CommandError>> + Send + 'static,
    {
        let (id, encoding) = (id.map(str::to_owned), self.ctx.encoding);
        let (outbound, metrics) = (self.ctx.outbound.clone(), self.ctx.shared.metrics.clone());
        self.ctx.shared.channels.tasks.spawn(async move {
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
}
