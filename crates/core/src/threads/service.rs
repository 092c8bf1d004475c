//! Threads as a service for every front end (the `/ws` commands now, REST
//! and GraphQL next): validation, owner-only access answered `not_found`
//! (never a hint that someone else's thread exists), paging bounds, and
//! news of each change published to the owner's `user:<sub>` channel so
//! their other tabs update their thread lists.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Value};
use wsgate_protocol::ErrorCode;

use super::{Message, Role, Run, StoreError, Thread, ThreadStore};
use crate::auth::Identity;
use crate::channels::{Caller, Channels};
use crate::error::CommandError;
use crate::limits::{MAX_PAGE, MAX_TITLE_CHARS};

/// The title of a thread created without one.
pub const DEFAULT_TITLE: &str = "New thread";
/// Items in a page when the caller gives no `limit`.
pub const DEFAULT_PAGE: u32 = 50;

pub struct Threads {
    pub store: Arc<dyn ThreadStore>,
    pub channels: Arc<Channels>,
}

fn not_found() -> CommandError {
    CommandError::not_found("no such thread")
}

/// A title as given, or why it is refused.
fn valid_title(title: &str) -> Result<&str, CommandError> {
    let title = title.trim();
    if title.is_empty() {
        return Err(CommandError::bad_request("payload.title must not be empty"));
    }
    if title.chars().count() > MAX_TITLE_CHARS {
        return Err(CommandError::bad_request(format!(
            "payload.title: at most {MAX_TITLE_CHARS} characters"
        )));
    }
    Ok(title)
}

/// `limit` bounded to `1..=MAX_PAGE`, [`DEFAULT_PAGE`] when absent.
fn page_size(limit: Option<u64>) -> Result<u32, CommandError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(0) => Err(CommandError::bad_request(
            "payload.limit must be at least 1",
        )),
        Some(n) => Ok(n.min(u64::from(MAX_PAGE)) as u32),
    }
}

impl Threads {
    fn store_failed(&self, e: StoreError) -> CommandError {
        self.channels.metrics.storage_errors.inc();
        CommandError::new(ErrorCode::Unavailable, e.to_string())
    }

    /// Tells the owner's other connections: `{"type": kind, ...fields}` in
    /// `user:<sub>`. A failure is logged, not the caller's: the change
    /// itself is stored.
    async fn announce(&self, user: &str, kind: &str, mut data: Value) {
        data["type"] = json!(kind);
        let bytes = Bytes::from(data.to_string());
        let channel = format!("user:{user}");
        if let Err(e) = self
            .channels
            .publish(Caller::Server, &channel, bytes, data)
            .await
        {
            tracing::warn!(user, kind, error = %e, "thread news not published");
        }
    }

    pub async fn create(
        &self,
        identity: &Identity,
        title: Option<&str>,
    ) -> Result<Thread, CommandError> {
        let title = match title {
            None => DEFAULT_TITLE,
            Some(t) if t.trim().is_empty() => DEFAULT_TITLE,
            Some(t) => valid_title(t)?,
        };
        let thread = self
            .store
            .create_thread(&identity.user, title)
            .await
            .map_err(|e| self.store_failed(e))?;
        self.announce(
            &identity.user,
            "thread_created",
            json!({ "thread": &thread }),
        )
        .await;
        Ok(thread)
    }

    pub async fn list(
        &self,
        identity: &Identity,
        limit: Option<u64>,
        before: Option<&str>,
    ) -> Result<Vec<Thread>, CommandError> {
        let limit = page_size(limit)?;
        self.store
            .list_threads(&identity.user, limit, before)
            .await
            .map_err(|e| self.store_failed(e))
    }

    pub async fn get(&self, identity: &Identity, id: &str) -> Result<Thread, CommandError> {
        self.store
            .get_thread(&identity.user, id)
            .await
            .map_err(|e| self.store_failed(e))?
            .ok_or_else(not_found)
    }

    /// A page of the thread's messages, oldest first.
    pub async fn messages(
        &self,
        identity: &Identity,
        id: &str,
        limit: Option<u64>,
        before: Option<&str>,
    ) -> Result<Vec<Message>, CommandError> {
        let limit = page_size(limit)?;
        self.store
            .list_messages(&identity.user, id, limit, before)
            .await
            .map_err(|e| self.store_failed(e))?
            .ok_or_else(not_found)
    }

    /// Appends a message to the owner's thread.
    pub async fn add_message(
        &self,
        identity: &Identity,
        id: &str,
        role: Role,
        content: &str,
    ) -> Result<Message, CommandError> {
        self.store
            .add_message(&identity.user, id, role, content)
            .await
            .map_err(|e| self.store_failed(e))?
            .ok_or_else(not_found)
    }

    /// The thread's runs, in the order they started.
    pub async fn runs(&self, identity: &Identity, id: &str) -> Result<Vec<Run>, CommandError> {
        self.store
            .list_runs(&identity.user, id)
            .await
            .map_err(|e| self.store_failed(e))?
            .ok_or_else(not_found)
    }

    pub async fn rename(
        &self,
        identity: &Identity,
        id: &str,
        title: &str,
    ) -> Result<Thread, CommandError> {
        let title = valid_title(title)?;
        let thread = self
            .store
            .rename_thread(&identity.user, id, title)
            .await
            .map_err(|e| self.store_failed(e))?
            .ok_or_else(not_found)?;
        self.announce(
            &identity.user,
            "thread_renamed",
            json!({ "thread": &thread }),
        )
        .await;
        Ok(thread)
    }

    pub async fn delete(&self, identity: &Identity, id: &str) -> Result<(), CommandError> {
        let deleted = self
            .store
            .delete_thread(&identity.user, id)
            .await
            .map_err(|e| self.store_failed(e))?;
        if !deleted {
            return Err(not_found());
        }
        // The thread's event stream goes with it (ids are never reused).
        // Failing here loses nothing: the history then expires by its TTL.
        let channel = format!("thread:{id}");
        if let Err(e) = self.channels.broker.forget(&channel).await {
            tracing::warn!(%channel, error = %e, "could not drop a deleted thread's history");
        }
        self.announce(&identity.user, "thread_deleted", json!({ "thread_id": id }))
            .await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_and_page_sizes_are_bounded() {
        assert_eq!(valid_title("  hi  ").unwrap(), "hi");
        assert_eq!(valid_title("").unwrap_err().code, ErrorCode::BadRequest);
        let long = "é".repeat(MAX_TITLE_CHARS + 1);
        let e = valid_title(&long).unwrap_err();
        assert!(e.message.contains("payload.title"), "{e}");
        assert!(
            valid_title(&"é".repeat(MAX_TITLE_CHARS)).is_ok(),
            "characters, not bytes"
        );
        assert_eq!(page_size(None).unwrap(), DEFAULT_PAGE);
        assert_eq!(page_size(Some(u64::MAX)).unwrap(), MAX_PAGE);
        assert!(page_size(Some(0)).is_err());
    }
}
