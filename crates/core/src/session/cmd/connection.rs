//! Commands about the connection itself: `ping` and `refresh_token`.

use serde_json::json;
use wsgate_protocol::command::RefreshToken;

use crate::auth::expiry_instant;
use crate::error::CommandError;
use crate::session::Session;

impl Session {
    pub(in crate::session) fn ping(&mut self, id: Option<&str>) -> Result<(), CommandError> {
        self.send("pong", id, json!({}));
        Ok(())
    }

    /// Replaces the connection's token by a newer one of the same user.
    pub(in crate::session) fn refresh_token(
        &mut self,
        id: Option<&str>,
        args: RefreshToken,
    ) -> Result<(), CommandError> {
        match self.ctx.shared.verifier.verify(&args.token) {
            Err(e) => {
                tracing::info!(
                    connection_id = %self.ctx.connection_id,
                    user = %self.ctx.identity.user,
                    reason = e.reason(),
                    "token refresh refused"
                );
                self.ctx.shared.metrics.violation("refresh_invalid_token");
                Err(CommandError::bad_request(e.to_string()))
            }
            Ok(identity) if identity.user != self.ctx.identity.user => {
                tracing::warn!(
                    connection_id = %self.ctx.connection_id,
                    user = %self.ctx.identity.user,
                    "token refresh for another user refused"
                );
                self.ctx.shared.metrics.violation("refresh_other_user");
                Err(CommandError::forbidden("token is for another user"))
            }
            Ok(identity) => {
                tracing::debug!(
                    connection_id = %self.ctx.connection_id,
                    user = %self.ctx.identity.user,
                    expires_at = identity.expires_at,
                    "token refreshed"
                );
                self.warned = false;
                self.expire_at = expiry_instant(identity.expires_at);
                self.ctx.identity = identity;
                self.send(
                    "token_refreshed",
                    id,
                    json!({ "expires_at": self.ctx.identity.expires_at }),
                );
                Ok(())
            }
        }
    }
}
