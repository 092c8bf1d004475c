//! Threads as core sees them: who owns a thread ([`ThreadOwners`], which
//! the authorizer asks for `thread:<id>` channels, owner only) and the
//! [`ThreadStore`] that keeps threads, messages and runs. Core never knows
//! which database answers: the sqlx implementations live in
//! `wsgate-storage`.

mod service;
mod store;

pub use service::{Threads, DEFAULT_PAGE, DEFAULT_TITLE};

pub use store::{Message, Role, Run, RunStatus, StoreError, Thread, ThreadStore};

use std::sync::Arc;

use async_trait::async_trait;

/// Why an owner could not be looked up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("thread store unavailable: {0}")]
pub struct StoreUnavailable(pub String);

#[async_trait]
pub trait ThreadOwners: Send + Sync + 'static {
    /// The `sub` that owns `thread_id`; `None` when no such thread exists.
    async fn owner(&self, thread_id: &str) -> Result<Option<Arc<str>>, StoreUnavailable>;
}

/// No thread store: no thread exists, so every `thread:` channel is
/// refused (default deny).
pub struct NoThreads;

#[async_trait]
impl ThreadOwners for NoThreads {
    async fn owner(&self, _: &str) -> Result<Option<Arc<str>>, StoreUnavailable> {
        Ok(None)
    }
}
