//! What a verified token tells wsgate, and the verifier interface the
//! session uses for `refresh_token`. Key handling lives in the server crate.

use std::sync::Arc;

use crate::limits::MAX_TIMER;

/// The claims wsgate uses from a verified token.
///
/// Every connection keeps its identity for its whole life, and most tokens
/// carry only `sub` and `exp`: the optional claims live in one box that
/// exists only when one of them is set (32 bytes per connection instead of
/// 96).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `sub`: the user id.
    pub user: Arc<str>,
    /// `exp` as Unix seconds.
    pub expires_at: u64,
    optional: Option<Box<OptionalClaims>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct OptionalClaims {
    roles: Vec<String>,
    channels: Vec<String>,
    name: Option<String>,
}

impl Identity {
    /// `sub` and `exp` only; see [`Identity::with_claims`].
    pub fn new(user: Arc<str>, expires_at: u64) -> Self {
        Identity {
            user,
            expires_at,
            optional: None,
        }
    }

    /// With `role`/`roles`, `channels` and `name` (boxed only if any is set).
    pub fn with_claims(
        mut self,
        roles: Vec<String>,
        channels: Vec<String>,
        name: Option<String>,
    ) -> Self {
        let claims = OptionalClaims {
            roles,
            channels,
            name,
        };
        self.optional = (claims != OptionalClaims::default()).then(|| Box::new(claims));
        self
    }

    /// `role` and/or `roles`.
    pub fn roles(&self) -> &[String] {
        self.optional.as_ref().map_or(&[], |c| &c.roles)
    }

    /// `channels`: extra channel patterns the user may subscribe to.
    pub fn channels(&self) -> &[String] {
        self.optional.as_ref().map_or(&[], |c| &c.channels)
    }

    /// `name`, for display.
    pub fn name(&self) -> Option<&str> {
        self.optional.as_ref().and_then(|c| c.name.as_deref())
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles().iter().any(|r| r == role)
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The monotonic instant at which a Unix `exp` is reached: connection
/// timers run on `Instant`s so paused-time tests and clock jumps behave.
///
/// Clamped to [`MAX_TIMER`] ahead, so no `exp` overflows `Instant` arithmetic.
pub fn expiry_instant(expires_at: u64) -> tokio::time::Instant {
    let left = std::time::Duration::from_secs(expires_at.saturating_sub(unix_now()));
    tokio::time::Instant::now() + left.min(MAX_TIMER)
}

/// Why a token was refused. The message never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token was presented")]
    Missing,
    #[error("token is malformed")]
    Malformed,
    #[error("token algorithm is not allowed")]
    DisallowedAlgorithm,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not yet valid")]
    NotYetValid,
    #[error("token issuer is not accepted")]
    WrongIssuer,
    #[error("token audience is not accepted")]
    WrongAudience,
    #[error("token is missing a required claim")]
    MissingClaim,
    #[error("no key is available to verify the token")]
    NoKey,
}

impl AuthError {
    /// A bounded label for metrics and audit logs.
    pub const fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "token_missing",
            AuthError::Malformed => "token_malformed",
            AuthError::DisallowedAlgorithm => "token_algorithm",
            AuthError::BadSignature => "token_signature",
            AuthError::Expired => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::WrongIssuer => "token_issuer",
            AuthError::WrongAudience => "token_audience",
            AuthError::MissingClaim => "token_claims",
            AuthError::NoKey => "token_no_key",
        }
    }
}

/// Verifies tokens. Implemented by the server's JWT verifier; tests can
/// provide their own.
pub trait TokenVerifier: Send + Sync + 'static {
    fn verify(&self, token: &str) -> Result<Identity, AuthError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_far_expiry_does_not_overflow() {
        let now = tokio::time::Instant::now();
        let far = expiry_instant(u64::MAX);
        assert!(far > now + MAX_TIMER - std::time::Duration::from_secs(5));
        assert!(expiry_instant(0) <= tokio::time::Instant::now());
    }
}
