//! [`RunRegistry`]: the runs in progress as every node sees them, so one
//! run per thread and `max_runs_per_user` hold across nodes, `switch_thread`
//! on any node finds a run executing on another, and `stop_agent` on any
//! node reaches it. One node needs none: its [`super::Runs`] map is the
//! whole picture. Entries are kept alive by the node executing the run and
//! expire when it crashes.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::broker::BrokerError;

/// One thread's run in progress, as the registry keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunClaim {
    /// Unique to this claim: only its holder may rewrite or release it.
    pub claim: String,
    pub owner: String,
    pub thread_id: String,
    /// Empty until the run is recorded in the store.
    #[serde(default)]
    pub run_id: String,
    /// Once `agent_started` is out: when the run started (Unix ms) and the
    /// thread channel's position just before it (offset, epoch).
    #[serde(default)]
    pub started: Option<(i64, u64, String)>,
    /// Raised by each update, so a keep-alive carrying an older copy never
    /// replaces a newer one.
    #[serde(default)]
    pub version: u64,
}

/// What [`RunRegistry::claim`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimed {
    Yes,
    /// The thread has a run in progress (on some node).
    ThreadBusy,
    /// The owner already has `max_per_user` runs in progress.
    UserAtCap,
}

#[async_trait]
pub trait RunRegistry: Send + Sync + 'static {
    /// Records `claim` for its thread unless the thread has a run or its
    /// owner has `max_per_user`; the same check and write in one step.
    /// From then on the entry is kept alive until [`RunRegistry::release`].
    async fn claim(&self, claim: &RunClaim, max_per_user: usize) -> Result<Claimed, BrokerError>;

    /// Rewrites the holder's entry (run id known, run started; `version`
    /// raised); nothing when another claim holds the thread. Put back if
    /// the registry lost it.
    async fn update(&self, claim: &RunClaim) -> Result<(), BrokerError>;

    /// Removes the entry if it is still `claim`'s.
    async fn release(&self, claim: &RunClaim) -> Result<(), BrokerError>;

    /// The run in progress on `owner`'s thread.
    async fn by_thread(
        &self,
        owner: &str,
        thread_id: &str,
    ) -> Result<Option<RunClaim>, BrokerError>;

    /// `owner`'s run in progress `run_id`.
    async fn by_run(&self, owner: &str, run_id: &str) -> Result<Option<RunClaim>, BrokerError>;
}
