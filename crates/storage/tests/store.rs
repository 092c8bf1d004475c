//! The thread store on both databases: each case below runs once on a
//! fresh SQLite file in a temporary directory (`sqlite::…`) and once on a
//! fresh database of the test PostgreSQL (`postgres::…`; `TEST_POSTGRES_URL`,
//! which `.ci/run` sets), which is dropped afterwards. Without the variable
//! the PostgreSQL cases are reported skipped (see build.rs).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use sqlx::{Connection, Executor};
use wsgate_core::threads::{Role, RunStatus, StoreError, Thread, ThreadOwners, ThreadStore};
use wsgate_storage::Storage;

fn postgres_base() -> String {
    std::env::var("TEST_POSTGRES_URL").expect("TEST_POSTGRES_URL (see .ci/run)")
}

/// A store of its own for one test, and what to remove after it.
struct TestDb {
    store: Storage,
    url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Dir(PathBuf),
    Database(String),
}

impl TestDb {
    async fn sqlite() -> Self {
        let dir = std::env::temp_dir().join(format!("wsgate-store-{}", uuid::Uuid::new_v4()));
        let url = format!("sqlite://{}", dir.join("store.db").display());
        let store = Storage::open(&url).await.expect("open the SQLite store");
        TestDb {
            store,
            url,
            cleanup: Cleanup::Dir(dir),
        }
    }

    async fn postgres() -> Self {
        let name = format!("wsgate_store_{}", uuid::Uuid::new_v4().simple());
        let base = postgres_base();
        let mut admin = sqlx::PgConnection::connect(&base)
            .await
            .expect("the PostgreSQL of TEST_POSTGRES_URL answers");
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        admin.close().await.unwrap();
        let (prefix, _) = base.rsplit_once('/').unwrap();
        let url = format!("{prefix}/{name}");
        let store = Storage::open(&url)
            .await
            .expect("open the PostgreSQL store");
        TestDb {
            store,
            url,
            cleanup: Cleanup::Database(name),
        }
    }

    /// Runs `case` on this store, then removes the store, also when the
    /// case panics (the panic is passed on afterwards).
    async fn run<F>(self, case: impl FnOnce(Arc<TestDb>) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let db = Arc::new(self);
        let outcome = tokio::spawn(case(db.clone())).await;
        db.finish().await;
        if let Err(error) = outcome {
            std::panic::resume_unwind(error.into_panic());
        }
    }

    async fn finish(&self) {
        self.store.close().await;
        match &self.cleanup {
            Cleanup::Dir(dir) => std::fs::remove_dir_all(dir).unwrap(),
            Cleanup::Database(name) => {
                let mut admin = sqlx::PgConnection::connect(&postgres_base()).await.unwrap();
                admin
                    .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                    .await
                    .unwrap();
            }
        }
    }
}

/// Each case as `sqlite::<case>` and `postgres::<case>`.
macro_rules! on_both_databases {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    super::TestDb::sqlite()
                        .await
                        .run(|db| async move { super::$case(&db).await })
                        .await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                #[cfg_attr(not(wsgate_postgres), ignore = "PostgreSQL: set TEST_POSTGRES_URL (.ci/run does)")]
                async fn $case() {
                    super::TestDb::postgres()
                        .await
                        .run(|db| async move { super::$case(&db).await })
                        .await;
                }
            )*
        }
    };
}

on_both_databases!(
    migrations_are_applied_once,
    threads_page_newest_first,
    threads_page_stably_under_equal_timestamps,
    a_thread_is_its_owners_only,
    rename_sets_the_title_and_updated_at,
    messages_page_oldest_first_within_a_page,
    a_message_moves_its_thread_to_the_top,
    runs_are_recorded_and_the_first_end_wins,
    interrupted_runs_fail_at_start,
    deleting_a_thread_deletes_its_messages_and_runs,
    errors_do_not_reveal_the_store_url,
    concurrent_writes_all_land,
);

/// Runs a statement the store has no method for (forcing timestamps).
async fn execute(store: &Storage, sql: &str) {
    match store {
        Storage::Sqlite { writes: pool, .. } => pool.execute(sql).await.map(drop),
        Storage::Postgres(pool) => pool.execute(sql).await.map(drop),
    }
    .unwrap();
}

/// A `SELECT count(*) …` with one text parameter.
async fn count(store: &Storage, sql: &str, param: &str) -> i64 {
    match store {
        Storage::Sqlite { writes: pool, .. } => {
            sqlx::query_scalar(sql).bind(param).fetch_one(pool).await
        }
        Storage::Postgres(pool) => sqlx::query_scalar(sql).bind(param).fetch_one(pool).await,
    }
    .unwrap()
}

fn ids(threads: &[Thread]) -> Vec<&str> {
    threads.iter().map(|t| t.id.as_str()).collect()
}

/// Every thread of `owner`, `page` at a time, following the cursor.
async fn all_pages(store: &Storage, owner: &str, page: u32) -> Vec<String> {
    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let threads = store
            .list_threads(owner, page, before.as_deref())
            .await
            .unwrap();
        assert!(threads.len() <= page as usize);
        let Some(last) = threads.last() else {
            return seen;
        };
        before = Some(last.id.clone());
        seen.extend(threads.into_iter().map(|t| t.id));
    }
}

async fn migrations_are_applied_once(db: &TestDb) {
    let sql = "SELECT count(*) FROM _sqlx_migrations WHERE version IN (1, 2) AND success = $1";
    let applied: i64 = match &db.store {
        Storage::Sqlite { writes: pool, .. } => {
            sqlx::query_scalar(sql).bind(true).fetch_one(pool).await
        }
        Storage::Postgres(pool) => sqlx::query_scalar(sql).bind(true).fetch_one(pool).await,
    }
    .unwrap();
    assert_eq!(applied, 2);
    if let Storage::Sqlite { writes: pool, .. } = &db.store {
        let on: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(on, 1, "cascades need foreign keys on every connection");
    }
    // Opening again applies nothing twice.
    let again = Storage::open(&db.url).await.unwrap();
    again.close().await;
}

async fn threads_page_newest_first(db: &TestDb) {
    let store = &db.store;
    let mut made = Vec::new();
    for i in 0..5 {
        made.push(
            store
                .create_thread("alice", &format!("t{i}"))
                .await
                .unwrap(),
        );
    }
    store.create_thread("bob", "not alice's").await.unwrap();
    let first = &made[0];
    assert_eq!(first.owner, "alice");
    assert_eq!(first.title, "t0");
    assert_eq!(first.created_at, first.updated_at);
    assert!(uuid::Uuid::parse_str(&first.id).is_ok_and(|u| u.get_version_num() == 4));

    // Distinct times, oldest first: t0 … t4.
    for (i, thread) in made.iter().enumerate() {
        execute(
            store,
            &format!(
                "UPDATE threads SET updated_at = {} WHERE id = '{}'",
                1000 + i,
                thread.id
            ),
        )
        .await;
    }
    let newest_first: Vec<&str> = made.iter().rev().map(|t| t.id.as_str()).collect();
    let all = store.list_threads("alice", 50, None).await.unwrap();
    assert_eq!(ids(&all), newest_first);
    assert_eq!(all[0].title, "t4");
    assert_eq!(all[0].updated_at, 1004);

    let page = store.list_threads("alice", 2, None).await.unwrap();
    assert_eq!(ids(&page), newest_first[..2]);
    let page = store
        .list_threads("alice", 2, Some(&page[1].id))
        .await
        .unwrap();
    assert_eq!(ids(&page), newest_first[2..4]);
    assert_eq!(all_pages(store, "alice", 2).await, newest_first);
    assert_eq!(all_pages(store, "alice", 5).await, newest_first);
    assert!(store
        .list_threads("alice", 0, None)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .list_threads("carol", 10, None)
        .await
        .unwrap()
        .is_empty());

    // A cursor that is no thread of alice's gives an empty page.
    let bobs = store.list_threads("bob", 10, None).await.unwrap();
    assert_eq!(bobs.len(), 1);
    let missing = uuid::Uuid::new_v4().to_string();
    for cursor in [bobs[0].id.as_str(), missing.as_str()] {
        assert!(store
            .list_threads("alice", 10, Some(cursor))
            .await
            .unwrap()
            .is_empty());
    }
}

async fn threads_page_stably_under_equal_timestamps(db: &TestDb) {
    let store = &db.store;
    let mut made = Vec::new();
    for i in 0..7 {
        made.push(
            store
                .create_thread("alice", &format!("t{i}"))
                .await
                .unwrap()
                .id,
        );
    }
    execute(store, "UPDATE threads SET updated_at = 5000").await;
    // Ties go by id, descending.
    made.sort_unstable_by(|a, b| b.cmp(a));
    for page in 1..=8 {
        assert_eq!(
            all_pages(store, "alice", page).await,
            made,
            "pages of {page}"
        );
    }
}

async fn a_thread_is_its_owners_only(db: &TestDb) {
    let store = &db.store;
    let thread = store.create_thread("alice", "secret").await.unwrap();
    store
        .add_message("alice", &thread.id, Role::User, "hello")
        .await
        .unwrap()
        .unwrap();
    let run = store
        .create_run("alice", &thread.id)
        .await
        .unwrap()
        .unwrap();
    let thread = store
        .get_thread("alice", &thread.id)
        .await
        .unwrap()
        .unwrap();

    // To bob, alice's thread looks exactly like one that does not exist.
    let missing = uuid::Uuid::new_v4().to_string();
    for id in [thread.id.as_str(), missing.as_str()] {
        assert_eq!(store.get_thread("bob", id).await.unwrap(), None);
        assert_eq!(store.rename_thread("bob", id, "mine").await.unwrap(), None);
        assert!(!store.delete_thread("bob", id).await.unwrap());
        assert_eq!(
            store
                .add_message("bob", id, Role::User, "hi")
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            store.list_messages("bob", id, 10, None).await.unwrap(),
            None
        );
        assert_eq!(store.create_run("bob", id).await.unwrap(), None);
        assert_eq!(store.list_runs("bob", id).await.unwrap(), None);
    }
    assert!(store
        .list_threads("bob", 10, None)
        .await
        .unwrap()
        .is_empty());

    // Nothing bob tried changed it.
    assert_eq!(
        store.get_thread("alice", &thread.id).await.unwrap(),
        Some(thread.clone())
    );
    let messages = store
        .list_messages("alice", &thread.id, 10, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(messages.len(), 1);
    assert_eq!(
        store.list_runs("alice", &thread.id).await.unwrap().unwrap(),
        [run]
    );

    // The store answers the authorizer's question too.
    assert_eq!(
        store.owner(&thread.id).await.unwrap().as_deref(),
        Some("alice")
    );
    assert_eq!(store.owner(&missing).await.unwrap(), None);
}

async fn rename_sets_the_title_and_updated_at(db: &TestDb) {
    let store = &db.store;
    let thread = store.create_thread("alice", "before").await.unwrap();
    execute(store, "UPDATE threads SET updated_at = 1, created_at = 1").await;
    let renamed = store
        .rename_thread("alice", &thread.id, "after")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(renamed.id, thread.id);
    assert_eq!(renamed.owner, "alice");
    assert_eq!(renamed.title, "after");
    assert_eq!(renamed.created_at, 1);
    assert!(renamed.updated_at >= thread.created_at, "{renamed:?}");
    assert_eq!(
        store.get_thread("alice", &thread.id).await.unwrap(),
        Some(renamed)
    );
}

async fn messages_page_oldest_first_within_a_page(db: &TestDb) {
    let store = &db.store;
    let thread = store.create_thread("alice", "chat").await.unwrap();
    let other = store.create_thread("alice", "other").await.unwrap();
    let mut made = Vec::new();
    for i in 0..5 {
        let role = if i % 2 == 0 {
            Role::User
        } else {
            Role::Assistant
        };
        let message = store
            .add_message("alice", &thread.id, role, &format!("m{i}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(message.thread_id, thread.id);
        assert_eq!(message.role, role);
        made.push(message);
    }
    store
        .add_message("alice", &other.id, Role::User, "elsewhere")
        .await
        .unwrap()
        .unwrap();
    // Equal timestamps do not reorder them: messages keep the order they
    // were added in.
    execute(store, "UPDATE messages SET created_at = 7").await;
    for m in &mut made {
        m.created_at = 7;
    }

    let page = |limit, before: Option<String>| {
        let thread_id = thread.id.clone();
        async move {
            store
                .list_messages("alice", &thread_id, limit, before.as_deref())
                .await
                .unwrap()
                .unwrap()
        }
    };
    assert_eq!(page(10, None).await, made);
    assert_eq!(page(2, None).await, made[3..]);
    assert_eq!(page(2, Some(made[3].id.clone())).await, made[1..3]);
    assert_eq!(page(2, Some(made[1].id.clone())).await, made[..1]);
    assert!(page(2, Some(made[0].id.clone())).await.is_empty());
    assert!(page(0, None).await.is_empty());
    // A cursor from another thread, or none at all, gives an empty page.
    let elsewhere = store
        .list_messages("alice", &other.id, 10, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(elsewhere.len(), 1);
    assert!(page(10, Some(elsewhere[0].id.clone())).await.is_empty());
    assert!(page(10, Some("nope".into())).await.is_empty());
    // An empty thread is a thread with no messages, not a missing one.
    let empty = store.create_thread("alice", "empty").await.unwrap();
    assert_eq!(
        store
            .list_messages("alice", &empty.id, 10, None)
            .await
            .unwrap(),
        Some(vec![])
    );
}

async fn a_message_moves_its_thread_to_the_top(db: &TestDb) {
    let store = &db.store;
    let older = store.create_thread("alice", "older").await.unwrap();
    let newer = store.create_thread("alice", "newer").await.unwrap();
    execute(
        store,
        &format!(
            "UPDATE threads SET updated_at = 1 WHERE id = '{}'",
            older.id
        ),
    )
    .await;
    execute(
        store,
        &format!(
            "UPDATE threads SET updated_at = 2 WHERE id = '{}'",
            newer.id
        ),
    )
    .await;
    let listed = store.list_threads("alice", 10, None).await.unwrap();
    assert_eq!(ids(&listed), [newer.id.as_str(), older.id.as_str()]);

    let message = store
        .add_message("alice", &older.id, Role::User, "bump")
        .await
        .unwrap()
        .unwrap();
    let listed = store.list_threads("alice", 10, None).await.unwrap();
    assert_eq!(ids(&listed), [older.id.as_str(), newer.id.as_str()]);
    assert_eq!(listed[0].updated_at, message.created_at);
}

async fn runs_are_recorded_and_the_first_end_wins(db: &TestDb) {
    let store = &db.store;
    let thread = store.create_thread("alice", "work").await.unwrap();
    let first = store
        .create_run("alice", &thread.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.thread_id, thread.id);
    assert_eq!(first.owner, "alice");
    assert_eq!(first.status, RunStatus::Running);
    assert_eq!((first.error.as_deref(), first.ended_at), (None, None));
    let second = store
        .create_run("alice", &thread.id)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(first.id, second.id);

    assert!(store
        .finish_run(&first.id, RunStatus::Completed, None)
        .await
        .unwrap());
    // Already ended: a late stop or timeout changes nothing.
    assert!(!store
        .finish_run(&first.id, RunStatus::Failed, Some("timeout"))
        .await
        .unwrap());
    assert!(store
        .finish_run(&second.id, RunStatus::Failed, Some("upstream said 500"))
        .await
        .unwrap());
    assert!(!store
        .finish_run("no-such-run", RunStatus::Stopped, None)
        .await
        .unwrap());

    let runs = store.list_runs("alice", &thread.id).await.unwrap().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].id, first.id);
    assert_eq!(runs[0].status, RunStatus::Completed);
    assert_eq!(runs[0].error, None);
    assert!(runs[0].ended_at.is_some_and(|t| t >= first.started_at));
    assert_eq!(runs[0].started_at, first.started_at);
    assert_eq!(runs[1].id, second.id);
    assert_eq!(runs[1].status, RunStatus::Failed);
    assert_eq!(runs[1].error.as_deref(), Some("upstream said 500"));

    let empty = store.create_thread("alice", "idle").await.unwrap();
    assert_eq!(
        store.list_runs("alice", &empty.id).await.unwrap(),
        Some(vec![])
    );
}

async fn interrupted_runs_fail_at_start(db: &TestDb) {
    let store = &db.store;
    let a = store.create_thread("alice", "a").await.unwrap();
    let b = store.create_thread("bob", "b").await.unwrap();
    let done = store.create_run("alice", &a.id).await.unwrap().unwrap();
    store
        .finish_run(&done.id, RunStatus::Stopped, None)
        .await
        .unwrap();
    store.create_run("alice", &a.id).await.unwrap().unwrap();
    store.create_run("bob", &b.id).await.unwrap().unwrap();

    assert_eq!(store.fail_interrupted_runs().await.unwrap(), 2);
    assert_eq!(store.fail_interrupted_runs().await.unwrap(), 0);

    let runs = store.list_runs("alice", &a.id).await.unwrap().unwrap();
    assert_eq!(runs[0].status, RunStatus::Stopped, "ended runs keep theirs");
    assert_eq!(runs[0].error, None);
    assert_eq!(runs[1].status, RunStatus::Failed);
    assert_eq!(runs[1].error.as_deref(), Some("interrupted"));
    assert!(runs[1].ended_at.is_some());
    let runs = store.list_runs("bob", &b.id).await.unwrap().unwrap();
    assert_eq!(runs[0].status, RunStatus::Failed);
    assert_eq!(runs[0].error.as_deref(), Some("interrupted"));
}

async fn deleting_a_thread_deletes_its_messages_and_runs(db: &TestDb) {
    let store = &db.store;
    let doomed = store.create_thread("alice", "doomed").await.unwrap();
    let kept = store.create_thread("alice", "kept").await.unwrap();
    for thread in [&doomed, &kept] {
        for content in ["q", "a"] {
            store
                .add_message("alice", &thread.id, Role::User, content)
                .await
                .unwrap()
                .unwrap();
        }
        store
            .create_run("alice", &thread.id)
            .await
            .unwrap()
            .unwrap();
    }

    assert!(store.delete_thread("alice", &doomed.id).await.unwrap());
    assert!(!store.delete_thread("alice", &doomed.id).await.unwrap());
    assert_eq!(store.get_thread("alice", &doomed.id).await.unwrap(), None);
    assert_eq!(
        store
            .list_messages("alice", &doomed.id, 10, None)
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.list_runs("alice", &doomed.id).await.unwrap(), None);
    assert_eq!(store.owner(&doomed.id).await.unwrap(), None);
    let (doomed_id, kept_id) = (doomed.id.as_str(), kept.id.as_str());
    let left = |table: &'static str| {
        let sql = format!("SELECT count(*) FROM {table} WHERE thread_id = $1");
        async move {
            (
                count(store, &sql, doomed_id).await,
                count(store, &sql, kept_id).await,
            )
        }
    };
    assert_eq!(left("messages").await, (0, 2));
    assert_eq!(left("runs").await, (0, 1));
    assert_eq!(
        ids(&store.list_threads("alice", 10, None).await.unwrap()),
        [kept.id.as_str()]
    );
}

async fn errors_do_not_reveal_the_store_url(db: &TestDb) {
    let store = &db.store;
    let thread = store.create_thread("alice", "t").await.unwrap();
    store.close().await;
    let error = store.get_thread("alice", &thread.id).await.unwrap_err();
    let StoreError::Unavailable(message) = &error else {
        panic!("{error:?}");
    };
    let shown = error.to_string();
    for secret in [
        "127.0.0.1",
        "postgres@",
        "wsgate_store_",
        "store.db",
        "sqlite:",
    ] {
        assert!(
            !message.contains(secret) && !shown.contains(secret),
            "{shown}"
        );
    }
    let unavailable = store.owner(&thread.id).await.unwrap_err();
    assert!(unavailable.0.contains("closed"), "{unavailable}");
}

/// Many writers at once, transactions included: every write lands, none
/// waits on another forever (SQLite's writes share one connection).
async fn concurrent_writes_all_land(db: &TestDb) {
    let store = Arc::new(db.store.clone());
    let thread = store.create_thread("busy", "t").await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    // 64 in flight at a time: many more than connections, but not so many
    // that on a loaded CI machine one waits past the pool's 2 s bound
    // (which is the store answering `unavailable` as it should).
    let in_flight = Arc::new(tokio::sync::Semaphore::new(64));
    for i in 0..200 {
        let (store, id) = (store.clone(), thread.id.clone());
        let in_flight = in_flight.clone();
        tasks.spawn(async move {
            let _turn = in_flight.acquire_owned().await.unwrap();
            let m = store
                .add_message("busy", &id, Role::User, &format!("m{i}"))
                .await;
            let t = store.create_thread("busy", &format!("t{i}")).await;
            (m.map(|m| m.is_some()), t.map(drop))
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (m, t) = done.unwrap();
        assert!(m.unwrap(), "the thread is there");
        t.unwrap();
    }
    let messages = store
        .list_messages("busy", &thread.id, 500, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(messages.len(), 200);
}
