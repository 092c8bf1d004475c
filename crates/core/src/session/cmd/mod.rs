//! One handler per command (or small group of commands), dispatched from
//! the protocol's [`Command`] enum. A handler answers success itself (at
//! once, or later from a task) and returns the error of a command it
//! refuses; [`Session::run`]'s caller turns that into the `error` frame.

mod channels;
mod connection;
mod threads;

use wsgate_protocol::Command;

use super::Session;
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
            Command::CreateThread(_)
            | Command::ListThreads(_)
            | Command::SwitchThread(_)
            | Command::GetThreadHistory(_)
            | Command::RenameThread(_)
            | Command::DeleteThread(_)
            | Command::UserMessage(_)
            | Command::StartAgent(_)
            | Command::StopAgent(_) => self.thread_command(&command),
        }
    }
}
