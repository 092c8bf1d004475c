//! The thread store's contract: threads, their messages and agent runs,
//! each visible to the thread's owner only.
//!
//! Conventions every implementation keeps:
//! - Ids are UUID v4 strings, made by the store.
//! - Times are Unix milliseconds (`i64`, UTC), in the database and on the
//!   wire alike: numbers compare and page without parsing, and the
//!   protocol's other times (`expires_at`) are numbers too.
//! - Owner-only access: a thread of someone else answers exactly as a
//!   thread that does not exist (`None`, `false`, an empty page), so a
//!   caller cannot learn that it exists.
//! - Pages are cut by a cursor, the id of the last item the caller has
//!   seen (`before`), never by an offset, so a page does not shift when
//!   items are added, and items with equal timestamps are neither skipped
//!   nor repeated. A cursor that names nothing the caller owns gives an
//!   empty page.
//! - Limits on titles and content are the caller's to check; the store
//!   keeps what it is given.

use async_trait::async_trait;
use serde::Serialize;

use super::ThreadOwners;

/// A conversation, owned by the `sub` that created it. Serialises as the
/// protocol's `{id, title, created_at, updated_at}`; the owner is not sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Thread {
    pub id: String,
    #[serde(skip)]
    pub owner: String,
    pub title: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds: creation, a rename or the latest message.
    pub updated_at: i64,
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

impl Role {
    /// The stored and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            _ => None,
        }
    }
}

/// One message of a thread. Serialises as the protocol's
/// `{id, thread_id, role, content, created_at}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub id: String,
    pub thread_id: String,
    pub role: Role,
    pub content: String,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// Where an agent run stands. Every status but `Running` is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Completed,
    Stopped,
    Failed,
}

impl RunStatus {
    /// The stored and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Stopped => "stopped",
            RunStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "running" => Some(RunStatus::Running),
            "completed" => Some(RunStatus::Completed),
            "stopped" => Some(RunStatus::Stopped),
            "failed" => Some(RunStatus::Failed),
            _ => None,
        }
    }
}

/// The record of one agent run on a thread; the owner is not serialised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Run {
    pub id: String,
    pub thread_id: String,
    #[serde(skip)]
    pub owner: String,
    pub status: RunStatus,
    pub error: Option<String>,
    /// Unix milliseconds.
    pub started_at: i64,
    /// Unix milliseconds; `None` while running.
    pub ended_at: Option<i64>,
}

/// Why the store could not answer. The message is safe to show and to
/// log: it never carries the store's URL, host or credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("thread store unavailable: {0}")]
    Unavailable(String),
}

impl From<StoreError> for super::StoreUnavailable {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(message) => super::StoreUnavailable(message),
        }
    }
}

/// Threads, messages and runs. A store is also the [`ThreadOwners`] lookup
/// the authorizer asks for `thread:<id>` channels.
///
/// Every method that takes `owner` answers for that owner's threads only;
/// see the module documentation for what "not found" looks like.
#[async_trait]
pub trait ThreadStore: ThreadOwners {
    /// A new, empty thread of `owner`.
    async fn create_thread(&self, owner: &str, title: &str) -> Result<Thread, StoreError>;

    /// Up to `limit` threads of `owner`, most recently updated first (ties
    /// by id, descending); with `before`, only those after that thread in
    /// this order.
    async fn list_threads(
        &self,
        owner: &str,
        limit: u32,
        before: Option<&str>,
    ) -> Result<Vec<Thread>, StoreError>;

    async fn get_thread(&self, owner: &str, id: &str) -> Result<Option<Thread>, StoreError>;

    /// Sets the title and `updated_at`; `None` when `owner` has no such
    /// thread.
    async fn rename_thread(
        &self,
        owner: &str,
        id: &str,
        title: &str,
    ) -> Result<Option<Thread>, StoreError>;

    /// Deletes the thread with its messages and runs; `false` when `owner`
    /// has no such thread.
    async fn delete_thread(&self, owner: &str, id: &str) -> Result<bool, StoreError>;

    /// Appends a message and moves the thread's `updated_at` to its time;
    /// `None` when `owner` has no such thread.
    async fn add_message(
        &self,
        owner: &str,
        thread_id: &str,
        role: Role,
        content: &str,
    ) -> Result<Option<Message>, StoreError>;

    /// The newest `limit` messages written before the message `before` (or
    /// the newest of all), oldest first. Messages keep the order they were
    /// added in, whatever their timestamps. `None` when `owner` has no such
    /// thread.
    async fn list_messages(
        &self,
        owner: &str,
        thread_id: &str,
        limit: u32,
        before: Option<&str>,
    ) -> Result<Option<Vec<Message>>, StoreError>;

    /// Records a run, `running` from now; `None` when `owner` has no such
    /// thread. Whether another run may start is the caller's to decide.
    async fn create_run(&self, owner: &str, thread_id: &str) -> Result<Option<Run>, StoreError>;

    /// Ends a running run with a final `status` (not `Running`) and an
    /// optional error. `false` when there is no such run or it has already
    /// ended: the first end wins, so a late timeout cannot overwrite a stop.
    async fn finish_run(
        &self,
        run_id: &str,
        status: RunStatus,
        error: Option<&str>,
    ) -> Result<bool, StoreError>;

    /// Every run of the thread, in the order they started; `None` when
    /// `owner` has no such thread.
    async fn list_runs(&self, owner: &str, thread_id: &str)
        -> Result<Option<Vec<Run>>, StoreError>;

    /// Marks every `running` run `failed` with the error `"interrupted"`:
    /// at start-up, nothing can still be running. Returns how many.
    async fn fail_interrupted_runs(&self) -> Result<u64, StoreError>;

    /// Every `running` run of every owner, oldest first: with several
    /// nodes, what a node checks against the runs the cluster knows to be
    /// in progress (a crashed node's are not).
    async fn running_runs(&self) -> Result<Vec<Run>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_and_message_serialise_as_the_protocol_says() {
        let thread = Thread {
            id: "t".into(),
            owner: "alice".into(),
            title: "Hello".into(),
            created_at: 1,
            updated_at: 2,
        };
        assert_eq!(
            serde_json::to_value(&thread).unwrap(),
            serde_json::json!({"id": "t", "title": "Hello", "created_at": 1, "updated_at": 2})
        );
        let message = Message {
            id: "m".into(),
            thread_id: "t".into(),
            role: Role::Assistant,
            content: "hi".into(),
            created_at: 3,
        };
        assert_eq!(
            serde_json::to_value(&message).unwrap(),
            serde_json::json!({
                "id": "m", "thread_id": "t", "role": "assistant", "content": "hi", "created_at": 3
            })
        );
    }

    #[test]
    fn stored_spellings_round_trip() {
        for role in [Role::User, Role::Assistant] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
            assert_eq!(serde_json::to_value(role).unwrap(), role.as_str());
        }
        for status in [
            RunStatus::Running,
            RunStatus::Completed,
            RunStatus::Stopped,
            RunStatus::Failed,
        ] {
            assert_eq!(RunStatus::parse(status.as_str()), Some(status));
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        assert_eq!(Role::parse("system"), None);
    }
}
