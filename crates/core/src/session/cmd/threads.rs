//! Thread and agent commands (SPEC §6). Declared by the protocol so that
//! they decode and validate like every other command; until thread storage
//! and agent runs exist they answer `error unknown_type`, as before they
//! were declared.

use wsgate_protocol::Command;

use crate::error::CommandError;
use crate::session::Session;

impl Session {
    pub(in crate::session) fn thread_command(
        &mut self,
        command: &Command,
    ) -> Result<(), CommandError> {
        Err(CommandError::not_implemented(command.name()))
    }
}
