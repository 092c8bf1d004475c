//! The persistent store: SQLite (the default, a file under `wsgate-data/`)
//! or PostgreSQL, chosen by `storage.url`. Versioned migrations
//! (`migrations/sqlite`, `migrations/postgres`, embedded in the binary) run
//! at start; `/ready` probes the store with [`Storage::ping`]. [`Storage`]
//! is core's `ThreadStore` (and with it `ThreadOwners`); see `threads.rs`.

mod threads;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// How long a request waits for a pooled connection, and `/ready` for its
/// probe: an unreachable store is reported, not waited on.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);
/// Connections per pool. SQLite serialises writers anyway; PostgreSQL gets
/// a handful so a slow query does not hold up the rest.
/// Reading connections besides SQLite's one writer.
const SQLITE_READERS: u32 = 4;
const POSTGRES_CONNECTIONS: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot create the directory {path}: {source}")]
    Directory {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open the store: {0}")]
    Connect(sqlx::Error),
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("no answer within {} s", ANSWER_WITHIN.as_secs())]
    Timeout,
    #[error("{0}")]
    Query(sqlx::Error),
}

/// A pool on one of the two supported databases.
#[derive(Debug, Clone)]
pub enum Storage {
    /// SQLite allows one writer at a time; several writing connections
    /// meet `SQLITE_BUSY` and sleep in its busy handler (1, 2, 5, 10 … ms:
    /// `user_message` → `agent_started` took 150 ms at 100 runs/s, see
    /// docs/benchmarks.md). So writes queue, in order, for one connection
    /// in the pool, and reads (WAL: they never wait for the writer) use
    /// the others.
    Sqlite {
        reads: SqlitePool,
        writes: SqlitePool,
    },
    Postgres(PgPool),
}

impl Storage {
    /// Opens the store and applies pending migrations. A SQLite file and its
    /// directory are created when missing.
    pub async fn open(url: &str) -> Result<Self, StorageError> {
        let storage = if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(StorageError::Connect)?
                .create_if_missing(true)
                // Deleting a thread cascades to its messages and runs only
                // with foreign keys on, a per-connection setting in SQLite.
                .foreign_keys(true)
                // Readers do not wait for the writer.
                .journal_mode(SqliteJournalMode::Wal)
                // In WAL mode NORMAL loses no committed transaction when
                // the process dies, only (at most the last ones) on a power
                // cut, and spares an fsync per commit (SQLite's advice
                // for WAL; sqlx's default is FULL).
                .synchronous(SqliteSynchronous::Normal);
            if let Some(dir) = options.get_filename().parent() {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir).map_err(|source| StorageError::Directory {
                        path: dir.display().to_string(),
                        source,
                    })?;
                }
            }
            let writes = SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(ANSWER_WITHIN)
                .connect_with(options.clone())
                .await
                .map_err(StorageError::Connect)?;
            sqlx::migrate!("migrations/sqlite").run(&writes).await?;
            let reads = SqlitePoolOptions::new()
                .max_connections(SQLITE_READERS)
                .acquire_timeout(ANSWER_WITHIN)
                .connect_with(options)
                .await
                .map_err(StorageError::Connect)?;
            Storage::Sqlite { reads, writes }
        } else {
            let pool = PgPoolOptions::new()
                .max_connections(POSTGRES_CONNECTIONS)
                .acquire_timeout(ANSWER_WITHIN)
                .connect(url)
                .await
                .map_err(StorageError::Connect)?;
            sqlx::migrate!("migrations/postgres").run(&pool).await?;
            Storage::Postgres(pool)
        };
        Ok(storage)
    }

    /// `sqlite` or `postgres`, for logs and `/ready`.
    pub fn kind(&self) -> &'static str {
        match self {
            Storage::Sqlite { .. } => "sqlite",
            Storage::Postgres(_) => "postgres",
        }
    }

    /// One round trip to the database, bounded by 2 s (`ANSWER_WITHIN`).
    pub async fn ping(&self) -> Result<(), StorageError> {
        let query = async {
            match self {
                Storage::Sqlite { reads, .. } => {
                    sqlx::query("SELECT 1").execute(reads).await.map(drop)
                }
                Storage::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop),
            }
        };
        match tokio::time::timeout(ANSWER_WITHIN, query).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(StorageError::Query(e)),
            Err(_) => Err(StorageError::Timeout),
        }
    }

    /// Waits for checked-out connections and closes the pool.
    pub async fn close(&self) {
        match self {
            Storage::Sqlite { reads, writes } => {
                reads.close().await;
                writes.close().await;
            }
            Storage::Postgres(pool) => pool.close().await,
        }
    }
}
