//! The store and `/ready`: SQLite files and a real PostgreSQL
//! (`TEST_POSTGRES_URL`; skipped without it), each test in a database of
//! its own; losing PostgreSQL is a TCP relay in front of it being cut.

use std::time::Duration;

use serde_json::Value;
use sqlx::{Connection, Row};
use wsgate::config::Secret;

use crate::harness::*;

async fn ready(server: &TestServer) -> (u16, Value) {
    get_json(&server.http("/ready"), &[]).await
}

#[tokio::test]
async fn sqlite_store_is_created_and_migrated_at_start() {
    let dir = temp_dir("sqlite");
    let file = dir.join("nested/dir/wsgate.db");
    let url = format!("sqlite://{}", file.display());
    let server = TestServer::with(|c| c.storage.url = Secret::new(url.clone())).await;
    let (status, body) = ready(&server).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["storage"], "ok");
    assert!(file.is_file(), "the file and its directories are created");
    server.stop().await;

    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let versions: Vec<i64> = sqlx::query("SELECT version FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&mut db)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [1, 2]);
    let created: String = sqlx::query("SELECT value FROM wsgate_meta WHERE key = 'created_at'")
        .fetch_one(&mut db)
        .await
        .unwrap()
        .get(0);
    assert!(created.ends_with('Z'), "{created}");
    db.close().await.unwrap();

    // A second start on the same file applies nothing twice.
    let server = TestServer::with(|c| c.storage.url = Secret::new(url.clone())).await;
    assert_eq!(ready(&server).await.0, 200);
    server.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(wsgate_postgres),
    ignore = "PostgreSQL: set TEST_POSTGRES_URL (.ci/run does)"
)]
async fn postgres_store_is_migrated_and_ready() {
    let (url, name) = create_database().await;
    let server = TestServer::with(|c| c.storage.url = Secret::new(url.clone())).await;
    let (status, body) = ready(&server).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["storage"], "ok");
    server.stop().await;
    let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
    let n: i64 = sqlx::query("SELECT count(*) FROM wsgate_meta")
        .fetch_one(&mut db)
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    db.close().await.unwrap();
    drop_database(&name).await;
}

#[tokio::test]
#[cfg_attr(
    not(wsgate_postgres),
    ignore = "PostgreSQL: set TEST_POSTGRES_URL (.ci/run does)"
)]
async fn ready_reports_a_lost_store_and_its_return() {
    let (url, name) = create_database().await;
    let target = postgres_addr().await;
    let port = free_addr().await;
    let relay = Relay::start(port, target).await;
    let via_relay = url.replacen("127.0.0.1:5432", &port.to_string(), 1);
    assert_ne!(via_relay, url, "the test URL points at 127.0.0.1:5432");
    let server = TestServer::with(|c| c.storage.url = Secret::new(via_relay)).await;
    assert_eq!(ready(&server).await.0, 200);

    drop(relay);
    let (status, body) = ready(&server).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "unavailable");
    assert_eq!(body["checks"]["storage"], "failed");
    assert_eq!(body["checks"]["broker"], "ok");
    let message = body["message"].as_str().unwrap();
    assert_eq!(message, "not answering: storage (postgres)", "{body}");
    // Driver errors (hosts, ports, users) stay in the log.
    assert!(!message.contains("127.0.0.1") && !message.contains(&port.port().to_string()));
    assert!(
        server
            .metrics_text()
            .await
            .contains("wsgate_storage_errors_total"),
        "counted"
    );

    // PostgreSQL is back: ready again, without a restart.
    let _relay = Relay::start(port, target).await;
    let mut answered = 0;
    for _ in 0..50 {
        answered = ready(&server).await.0;
        if answered == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answered, 200);
    server.stop().await;
    drop_database(&name).await;
}

#[tokio::test]
async fn an_unreachable_store_stops_the_start_with_a_clear_error() {
    let mut config = base_config();
    // Nothing listens on port 1.
    config.storage.url = Secret::new("postgres://postgres@127.0.0.1:1/test");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = wsgate::run(config, listener, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.starts_with("storage.url: cannot open the store"),
        "{text}"
    );
}
