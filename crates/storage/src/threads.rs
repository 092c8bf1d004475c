//! [`ThreadStore`] and [`ThreadOwners`] on either database. The SQL is the
//! same for both (SQLite reads `$1` placeholders too); only the pool type
//! differs, so each query is written once and run through [`on_pool!`],
//! which also picks SQLite's single writer for statements that write.
//!
//! Owner-only access is part of every query (`WHERE … AND owner = $n`), so
//! someone else's thread is indistinguishable from a missing one.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use wsgate_core::threads::{
    Message, Role, Run, RunStatus, StoreError, StoreUnavailable, Thread, ThreadOwners, ThreadStore,
};

use crate::Storage;

/// Runs `$body` with `$pool` bound to whichever pool the store has: on
/// SQLite the readers' pool for `read`, the one writer connection for
/// `write`. The body is compiled once per database.
macro_rules! on_pool {
    ($storage:expr, read $pool:ident => $body:expr) => {
        match $storage {
            Storage::Sqlite { reads: $pool, .. } => $body,
            Storage::Postgres($pool) => $body,
        }
    };
    ($storage:expr, write $pool:ident => $body:expr) => {
        match $storage {
            Storage::Sqlite { writes: $pool, .. } => $body,
            Storage::Postgres($pool) => $body,
        }
    };
}

const THREAD_COLUMNS: &str = "id, owner, title, created_at, updated_at";
const MESSAGE_COLUMNS: &str = "id, thread_id, role, content, created_at";
const RUN_COLUMNS: &str = "id, thread_id, owner, status, error, started_at, ended_at";

#[derive(sqlx::FromRow)]
struct ThreadRow {
    id: String,
    owner: String,
    title: String,
    created_at: i64,
    updated_at: i64,
}

impl From<ThreadRow> for Thread {
    fn from(row: ThreadRow) -> Self {
        Thread {
            id: row.id,
            owner: row.owner,
            title: row.title,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

#[derive(sqlx::FromRow)]
struct MessageRow {
    id: String,
    thread_id: String,
    role: String,
    content: String,
    created_at: i64,
}

impl TryFrom<MessageRow> for Message {
    type Error = StoreError;

    fn try_from(row: MessageRow) -> Result<Self, StoreError> {
        Ok(Message {
            role: Role::parse(&row.role).ok_or_else(|| corrupt("role"))?,
            id: row.id,
            thread_id: row.thread_id,
            content: row.content,
            created_at: row.created_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct RunRow {
    id: String,
    thread_id: String,
    owner: String,
    status: String,
    error: Option<String>,
    started_at: i64,
    ended_at: Option<i64>,
}

impl TryFrom<RunRow> for Run {
    type Error = StoreError;

    fn try_from(row: RunRow) -> Result<Self, StoreError> {
        Ok(Run {
            status: RunStatus::parse(&row.status).ok_or_else(|| corrupt("status"))?,
            id: row.id,
            thread_id: row.thread_id,
            owner: row.owner,
            error: row.error,
            started_at: row.started_at,
            ended_at: row.ended_at,
        })
    }
}

/// Unix milliseconds now. A clock before 1970 reads as 0 rather than
/// failing a write.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The driver's error goes to the log; the caller gets a message without
/// hosts, users or database text, which may end up in a reply.
fn unavailable(error: sqlx::Error) -> StoreError {
    tracing::warn!(%error, "thread store query failed");
    let message = match &error {
        sqlx::Error::PoolTimedOut => "no database connection within the time allowed".to_owned(),
        sqlx::Error::PoolClosed => "the store is closed".to_owned(),
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => {
            "the database connection failed".to_owned()
        }
        sqlx::Error::Database(e) => match e.code() {
            Some(code) => format!("the database refused the query (SQLSTATE {code})"),
            None => "the database refused the query".to_owned(),
        },
        _ => "the query failed".to_owned(),
    };
    StoreError::Unavailable(message)
}

/// A value the schema's CHECK constraints should have kept out.
fn corrupt(column: &str) -> StoreError {
    tracing::error!(column, "thread store holds an unknown value");
    StoreError::Unavailable(format!("unexpected {column} in the store"))
}

impl Storage {
    /// Whether `owner` has the thread `id`.
    async fn owns(&self, owner: &str, id: &str) -> Result<bool, StoreError> {
        let sql = "SELECT id FROM threads WHERE id = $1 AND owner = $2";
        let found: Option<String> = on_pool!(self, read pool => sqlx::query_scalar(sql)
            .bind(id)
            .bind(owner)
            .fetch_optional(pool)
            .await)
        .map_err(unavailable)?;
        Ok(found.is_some())
    }
}

#[async_trait]
impl ThreadOwners for Storage {
    async fn owner(&self, thread_id: &str) -> Result<Option<Arc<str>>, StoreUnavailable> {
        let sql = "SELECT owner FROM threads WHERE id = $1";
        let owner: Option<String> = on_pool!(self, read pool => sqlx::query_scalar(sql)
            .bind(thread_id)
            .fetch_optional(pool)
            .await)
        .map_err(unavailable)?;
        Ok(owner.map(Arc::from))
    }
}

#[async_trait]
impl ThreadStore for Storage {
    async fn create_thread(&self, owner: &str, title: &str) -> Result<Thread, StoreError> {
        let now = now_ms();
        let thread = Thread {
            id: new_id(),
            owner: owner.to_owned(),
            title: title.to_owned(),
            created_at: now,
            updated_at: now,
        };
        let sql = "INSERT INTO threads (id, owner, title, created_at, updated_at) \
                   VALUES ($1, $2, $3, $4, $5)";
        on_pool!(self, write pool => sqlx::query(sql)
            .bind(&thread.id)
            .bind(&thread.owner)
            .bind(&thread.title)
            .bind(thread.created_at)
            .bind(thread.updated_at)
            .execute(pool)
            .await
            .map(drop))
        .map_err(unavailable)?;
        Ok(thread)
    }

    async fn list_threads(
        &self,
        owner: &str,
        limit: u32,
        before: Option<&str>,
    ) -> Result<Vec<Thread>, StoreError> {
        // Two statements rather than `$2 IS NULL OR …`, so each keeps a
        // plan that walks `threads_by_owner`.
        let rows: Vec<ThreadRow> = match before {
            None => {
                let sql = format!(
                    "SELECT {THREAD_COLUMNS} FROM threads WHERE owner = $1 \
                     ORDER BY updated_at DESC, id DESC LIMIT $2"
                );
                on_pool!(self, read pool => sqlx::query_as(&sql)
                    .bind(owner)
                    .bind(i64::from(limit))
                    .fetch_all(pool)
                    .await)
            }
            Some(cursor) => {
                // A cursor that is not the owner's thread matches no row,
                // and the comparison with no row is NULL: an empty page.
                let sql = format!(
                    "SELECT {THREAD_COLUMNS} FROM threads WHERE owner = $1 \
                     AND (updated_at, id) < \
                         (SELECT updated_at, id FROM threads WHERE id = $2 AND owner = $1) \
                     ORDER BY updated_at DESC, id DESC LIMIT $3"
                );
                on_pool!(self, read pool => sqlx::query_as(&sql)
                    .bind(owner)
                    .bind(cursor)
                    .bind(i64::from(limit))
                    .fetch_all(pool)
                    .await)
            }
        }
        .map_err(unavailable)?;
        Ok(rows.into_iter().map(Thread::from).collect())
    }

    async fn get_thread(&self, owner: &str, id: &str) -> Result<Option<Thread>, StoreError> {
        let sql = format!("SELECT {THREAD_COLUMNS} FROM threads WHERE id = $1 AND owner = $2");
        let row: Option<ThreadRow> = on_pool!(self, read pool => sqlx::query_as(&sql)
            .bind(id)
            .bind(owner)
            .fetch_optional(pool)
            .await)
        .map_err(unavailable)?;
        Ok(row.map(Thread::from))
    }

    async fn rename_thread(
        &self,
        owner: &str,
        id: &str,
        title: &str,
    ) -> Result<Option<Thread>, StoreError> {
        let sql = format!(
            "UPDATE threads SET title = $1, updated_at = $2 WHERE id = $3 AND owner = $4 \
             RETURNING {THREAD_COLUMNS}"
        );
        let row: Option<ThreadRow> = on_pool!(self, write pool => sqlx::query_as(&sql)
            .bind(title)
            .bind(now_ms())
            .bind(id)
            .bind(owner)
            .fetch_optional(pool)
            .await)
        .map_err(unavailable)?;
        Ok(row.map(Thread::from))
    }

    async fn delete_thread(&self, owner: &str, id: &str) -> Result<bool, StoreError> {
        // Messages and runs go with it: ON DELETE CASCADE.
        let sql = "DELETE FROM threads WHERE id = $1 AND owner = $2";
        let done = on_pool!(self, write pool => sqlx::query(sql)
            .bind(id)
            .bind(owner)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))
        .map_err(unavailable)?;
        Ok(done > 0)
    }

    async fn add_message(
        &self,
        owner: &str,
        thread_id: &str,
        role: Role,
        content: &str,
    ) -> Result<Option<Message>, StoreError> {
        let message = Message {
            id: new_id(),
            thread_id: thread_id.to_owned(),
            role,
            content: content.to_owned(),
            created_at: now_ms(),
        };
        // The update comes first: it checks the owner and holds the thread
        // row, so a concurrent delete cannot slip in before the insert.
        let bump = "UPDATE threads SET updated_at = $1 WHERE id = $2 AND owner = $3";
        let insert = "INSERT INTO messages (id, thread_id, role, content, created_at) \
                      VALUES ($1, $2, $3, $4, $5)";
        let stored: Result<bool, sqlx::Error> = on_pool!(self, write pool => async {
            let mut tx = pool.begin().await?;
            let owned = sqlx::query(bump)
                .bind(message.created_at)
                .bind(thread_id)
                .bind(owner)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                > 0;
            if !owned {
                // Dropping the transaction rolls it back.
                return Ok(false);
            }
            sqlx::query(insert)
                .bind(&message.id)
                .bind(&message.thread_id)
                .bind(message.role.as_str())
                .bind(&message.content)
                .bind(message.created_at)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(true)
        }
        .await);
        Ok(stored.map_err(unavailable)?.then_some(message))
    }

    async fn list_messages(
        &self,
        owner: &str,
        thread_id: &str,
        limit: u32,
        before: Option<&str>,
    ) -> Result<Option<Vec<Message>>, StoreError> {
        if !self.owns(owner, thread_id).await? {
            return Ok(None);
        }
        // Newest first to cut the page at `limit`, reversed below. A cursor
        // that is not a message of this thread gives an empty page.
        let rows: Vec<MessageRow> = match before {
            None => {
                let sql = format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages WHERE thread_id = $1 \
                     ORDER BY seq DESC LIMIT $2"
                );
                on_pool!(self, read pool => sqlx::query_as(&sql)
                    .bind(thread_id)
                    .bind(i64::from(limit))
                    .fetch_all(pool)
                    .await)
            }
            Some(cursor) => {
                let sql = format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages WHERE thread_id = $1 \
                     AND seq < (SELECT seq FROM messages WHERE id = $2 AND thread_id = $1) \
                     ORDER BY seq DESC LIMIT $3"
                );
                on_pool!(self, read pool => sqlx::query_as(&sql)
                    .bind(thread_id)
                    .bind(cursor)
                    .bind(i64::from(limit))
                    .fetch_all(pool)
                    .await)
            }
        }
        .map_err(unavailable)?;
        let mut messages = rows
            .into_iter()
            .map(Message::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        messages.reverse();
        Ok(Some(messages))
    }

    async fn create_run(&self, owner: &str, thread_id: &str) -> Result<Option<Run>, StoreError> {
        let run = Run {
            id: new_id(),
            thread_id: thread_id.to_owned(),
            owner: owner.to_owned(),
            status: RunStatus::Running,
            error: None,
            started_at: now_ms(),
            ended_at: None,
        };
        // Inserts nothing unless `owner` has the thread.
        let sql = "INSERT INTO runs (id, thread_id, owner, status, started_at) \
                   SELECT $1, id, owner, $2, $3 FROM threads WHERE id = $4 AND owner = $5";
        let inserted = on_pool!(self, write pool => sqlx::query(sql)
            .bind(&run.id)
            .bind(run.status.as_str())
            .bind(run.started_at)
            .bind(thread_id)
            .bind(owner)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))
        .map_err(unavailable)?;
        Ok((inserted > 0).then_some(run))
    }

    async fn finish_run(
        &self,
        run_id: &str,
        status: RunStatus,
        error: Option<&str>,
    ) -> Result<bool, StoreError> {
        debug_assert_ne!(status, RunStatus::Running, "a run ends in a final status");
        let sql = "UPDATE runs SET status = $1, error = $2, ended_at = $3 \
                   WHERE id = $4 AND status = 'running'";
        let done = on_pool!(self, write pool => sqlx::query(sql)
            .bind(status.as_str())
            .bind(error)
            .bind(now_ms())
            .bind(run_id)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))
        .map_err(unavailable)?;
        Ok(done > 0)
    }

    async fn list_runs(
        &self,
        owner: &str,
        thread_id: &str,
    ) -> Result<Option<Vec<Run>>, StoreError> {
        if !self.owns(owner, thread_id).await? {
            return Ok(None);
        }
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE thread_id = $1 ORDER BY seq");
        let rows: Vec<RunRow> = on_pool!(self, read pool => sqlx::query_as(&sql)
            .bind(thread_id)
            .fetch_all(pool)
            .await)
        .map_err(unavailable)?;
        let runs = rows
            .into_iter()
            .map(Run::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(runs))
    }

    async fn running_runs(&self) -> Result<Vec<Run>, StoreError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE status = 'running' ORDER BY seq");
        let rows: Vec<RunRow> = on_pool!(self, read pool => sqlx::query_as(&sql)
            .fetch_all(pool)
            .await)
        .map_err(unavailable)?;
        rows.into_iter().map(Run::try_from).collect()
    }

    async fn fail_interrupted_runs(&self) -> Result<u64, StoreError> {
        let sql = "UPDATE runs SET status = 'failed', error = 'interrupted', ended_at = $1 \
                   WHERE status = 'running'";
        on_pool!(self, write pool => sqlx::query(sql)
            .bind(now_ms())
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))
        .map_err(unavailable)
    }
}
