//! Thread commands over `/ws` (SPEC §4, §6) on the real server and its
//! SQLite store: replies, owner-only access, validation, news on
//! `user:<sub>`, and thread channels opening to their owner.

use serde_json::{json, Value};

use crate::harness::*;

#[tokio::test]
async fn threads_are_created_listed_renamed_and_deleted_by_their_owner_only() {
    let server = TestServer::start().await;
    let (mut alice, _) = server.connect("alice").await;
    let (mut bob, _) = server.connect("bob").await;

    let created = call(&mut alice, "create_thread", "1", json!({"title": "Plans"})).await;
    assert_eq!(created["type"], "thread_created", "{created}");
    let thread = &created["payload"]["thread"];
    let id = thread["id"].as_str().unwrap().to_owned();
    assert_eq!(thread["title"], "Plans");
    assert!(thread["created_at"].is_i64() && thread["updated_at"].is_i64());
    assert!(
        thread.get("owner").is_none(),
        "the owner is not part of the shape"
    );
    // Threads are ordered by updated_at (milliseconds), ties by id: two
    // made in the same millisecond come in id order, so "newest first"
    // needs the clock to move (this was a flaky failure on a fast run).
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    let untitled = call(&mut alice, "create_thread", "2", json!({})).await;
    assert_eq!(untitled["payload"]["thread"]["title"], "New thread");

    let list = call(&mut alice, "list_threads", "3", json!({"limit": 10})).await;
    assert_eq!(list["type"], "threads");
    let titles: Vec<&str> = list["payload"]["threads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["New thread", "Plans"], "newest first");
    let paged = call(&mut alice, "list_threads", "4", json!({"limit": 1})).await;
    assert_eq!(paged["payload"]["threads"].as_array().unwrap().len(), 1);

    // Bob sees nothing of alice's thread: not_found, exactly as for none.
    for (kind, payload) in [
        ("get_thread_history", json!({"thread_id": id})),
        ("rename_thread", json!({"thread_id": id, "title": "mine"})),
        ("delete_thread", json!({"thread_id": id})),
        ("get_thread_history", json!({"thread_id": "no-such-thread"})),
    ] {
        let e = call(&mut bob, kind, "b", payload).await;
        assert_eq!(e["type"], "error", "{kind}: {e}");
        assert_eq!(e["payload"]["code"], "not_found", "{kind}: {e}");
    }
    let bobs = call(&mut bob, "list_threads", "b2", json!({})).await;
    assert_eq!(bobs["payload"]["threads"], json!([]));
    // Nor may he subscribe to its channel; alice may.
    let e = call(
        &mut bob,
        "subscribe",
        "b3",
        json!({"channel": format!("thread:{id}")}),
    )
    .await;
    assert_eq!(e["payload"]["code"], "forbidden", "{e}");
    let ok = call(
        &mut alice,
        "subscribe",
        "5",
        json!({"channel": format!("thread:{id}")}),
    )
    .await;
    assert_eq!(ok["type"], "subscribed", "{ok}");

    let history = call(
        &mut alice,
        "get_thread_history",
        "6",
        json!({"thread_id": id}),
    )
    .await;
    assert_eq!(history["type"], "thread_history");
    assert_eq!(history["payload"], json!({"thread_id": id, "messages": []}));

    let renamed = call(
        &mut alice,
        "rename_thread",
        "7",
        json!({"thread_id": id, "title": "Trip"}),
    )
    .await;
    assert_eq!(renamed["type"], "thread_renamed");
    assert_eq!(renamed["payload"]["thread"]["title"], "Trip");

    let deleted = call(&mut alice, "delete_thread", "8", json!({"thread_id": id})).await;
    assert_eq!(deleted["type"], "thread_deleted");
    assert_eq!(deleted["payload"]["thread_id"], json!(id));
    let gone = call(
        &mut alice,
        "get_thread_history",
        "9",
        json!({"thread_id": id}),
    )
    .await;
    assert_eq!(gone["payload"]["code"], "not_found");
    server.stop().await;
}

#[tokio::test]
async fn bad_thread_fields_are_named() {
    let server = TestServer::start().await;
    let (mut ws, _) = server.connect("val").await;
    let long = "x".repeat(201);
    for (kind, payload, field) in [
        ("create_thread", json!({"title": long}), "payload.title"),
        ("create_thread", json!({"title": 5}), "payload.title"),
        (
            "rename_thread",
            json!({"thread_id": "t", "title": ""}),
            "payload.title",
        ),
        ("rename_thread", json!({"thread_id": "t"}), "`title`"),
        ("list_threads", json!({"limit": 0}), "payload.limit"),
        ("get_thread_history", json!({}), "`thread_id`"),
    ] {
        let e = call(&mut ws, kind, "v", payload).await;
        assert_eq!(e["payload"]["code"], "bad_request", "{kind}: {e}");
        let message = e["payload"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{kind}: {message}");
    }
    server.stop().await;
}

#[tokio::test]
async fn thread_changes_reach_the_owners_other_tabs() {
    let server = TestServer::start().await;
    let (mut tab1, _) = server.connect("tabs").await;
    let (mut tab2, _) = server.connect("tabs").await;
    let sub = call(&mut tab2, "subscribe", "s", json!({"channel": "user:tabs"})).await;
    assert_eq!(sub["type"], "subscribed", "{sub}");

    let created = call(&mut tab1, "create_thread", "1", json!({"title": "A"})).await;
    let id = created["payload"]["thread"]["id"].clone();
    call(
        &mut tab1,
        "rename_thread",
        "2",
        json!({"thread_id": id, "title": "B"}),
    )
    .await;
    call(&mut tab1, "delete_thread", "3", json!({"thread_id": id})).await;

    let mut news = Vec::new();
    while news.len() < 3 {
        let v = next_json(&mut tab2).await;
        if v["type"] == "message" {
            assert_eq!(v["payload"]["channel"], "user:tabs");
            news.push(v["payload"]["data"].clone());
        }
    }
    assert_eq!(news[0]["type"], "thread_created");
    assert_eq!(news[0]["thread"]["id"], id);
    assert_eq!(news[1]["type"], "thread_renamed");
    assert_eq!(news[1]["thread"]["title"], "B");
    assert_eq!(news[2], json!({"type": "thread_deleted", "thread_id": id}));
    server.stop().await;
}

/// A store for one test: a fresh SQLite file, or a database of its own on
/// the test PostgreSQL, dropped by [`Store::remove`].
enum Store {
    Sqlite(String),
    Postgres(String, String),
}

impl Store {
    async fn new(postgres: bool) -> Self {
        if postgres {
            let (url, name) = create_database().await;
            Store::Postgres(url, name)
        } else {
            let dir = temp_dir("threads-store");
            Store::Sqlite(format!("sqlite://{}/wsgate.db", dir.display()))
        }
    }

    fn url(&self) -> String {
        match self {
            Store::Sqlite(url) | Store::Postgres(url, _) => url.clone(),
        }
    }

    async fn remove(self) {
        if let Store::Postgres(_, name) = self {
            drop_database(&name).await;
        }
    }
}

/// Threads, their messages and a run survive a restart (the run's answer
/// stored before `agent_completed`).
async fn threads_outlive_a_restart(postgres: bool) {
    let store = Store::new(postgres).await;
    let url = store.url();
    let with_store = |c: &mut wsgate::config::Config| {
        c.storage.url = wsgate::config::Secret::new(url.clone());
    };
    let server = TestServer::with(with_store).await;
    let (mut ws, _) = server.connect("keeper").await;
    let created = call(&mut ws, "create_thread", "1", json!({"title": "Kept"})).await;
    let id = created["payload"]["thread"]["id"].clone();
    let sub = call(
        &mut ws,
        "subscribe",
        "s",
        json!({"channel": format!("thread:{}", id.as_str().unwrap())}),
    )
    .await;
    assert_eq!(sub["type"], "subscribed", "{sub}");
    let started = call(
        &mut ws,
        "user_message",
        "2",
        json!({"thread_id": id, "content": "kept words"}),
    )
    .await;
    assert_eq!(started["type"], "run_started", "{started}");
    loop {
        let v = next_json(&mut ws).await;
        if v["payload"]["data"]["type"] == "agent_completed" {
            break;
        }
    }
    drop(ws);
    server.stop().await;

    let server = TestServer::with(with_store).await;
    let (mut ws, _) = server.connect("keeper").await;
    let list = call(&mut ws, "list_threads", "3", json!({})).await;
    assert_eq!(list["payload"]["threads"][0]["id"], id);
    assert_eq!(list["payload"]["threads"][0]["title"], "Kept");
    let history = call(&mut ws, "get_thread_history", "4", json!({"thread_id": id})).await;
    let messages = history["payload"]["messages"].as_array().unwrap();
    let said: Vec<_> = messages
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    assert_eq!(said, [("user", "kept words"), ("assistant", "kept words")]);
    let (s, runs) = rest(
        &server,
        reqwest::Method::GET,
        &format!("/api/threads/{}/runs", id.as_str().unwrap()),
        Some("keeper"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{runs}");
    assert_eq!(runs["runs"][0]["status"], "completed");
    server.stop().await;
    store.remove().await;
}

#[tokio::test]
async fn threads_outlive_a_restart_on_sqlite() {
    threads_outlive_a_restart(false).await;
}

#[tokio::test]
#[cfg_attr(
    not(wsgate_postgres),
    ignore = "PostgreSQL: set TEST_POSTGRES_URL (.ci/run does)"
)]
async fn threads_outlive_a_restart_on_postgres() {
    threads_outlive_a_restart(true).await;
}

/// A REST call as `user` (no token when `None`): status and JSON body.
async fn rest(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    user: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, server.http(path));
    if let Some(u) = user {
        req = req.bearer_auth(token(u));
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_rest_api_serves_the_same_threads_owner_only() {
    use reqwest::Method;
    let server = TestServer::start().await;
    let (s, body) = rest(&server, Method::GET, "/api/threads", None, None).await;
    assert_eq!((s, body["error"].as_str()), (401, Some("unauthorized")));

    let (s, body) = rest(
        &server,
        Method::POST,
        "/api/threads",
        Some("ann"),
        Some(json!({"title": "Via REST"})),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    let id = body["thread"]["id"].as_str().unwrap().to_owned();

    // The same thread over /ws.
    let (mut ws, _) = server.connect("ann").await;
    let list = call(&mut ws, "list_threads", "1", json!({})).await;
    assert_eq!(list["payload"]["threads"][0]["id"], json!(id));

    let (s, body) = rest(&server, Method::GET, "/api/threads", Some("ann"), None).await;
    assert_eq!(s, 200);
    assert_eq!(body["threads"][0]["title"], "Via REST");
    let (s, body) = rest(
        &server,
        Method::GET,
        &format!("/api/threads/{id}"),
        Some("ann"),
        None,
    )
    .await;
    assert_eq!((s, body["thread"]["id"].as_str()), (200, Some(id.as_str())));
    let (s, body) = rest(
        &server,
        Method::PATCH,
        &format!("/api/threads/{id}"),
        Some("ann"),
        Some(json!({"title": "Renamed"})),
    )
    .await;
    assert_eq!(
        (s, body["thread"]["title"].as_str()),
        (200, Some("Renamed"))
    );
    let (s, body) = rest(
        &server,
        Method::GET,
        &format!("/api/threads/{id}/messages?limit=5"),
        Some("ann"),
        None,
    )
    .await;
    assert_eq!((s, body["messages"].clone()), (200, json!([])));
    let (s, body) = rest(
        &server,
        Method::GET,
        &format!("/api/threads/{id}/runs"),
        Some("ann"),
        None,
    )
    .await;
    assert_eq!((s, body["runs"].clone()), (200, json!([])));

    // Someone else: 404 on every route, like a thread that does not exist.
    for (method, path, b) in [
        (Method::GET, format!("/api/threads/{id}"), None),
        (
            Method::PATCH,
            format!("/api/threads/{id}"),
            Some(json!({"title": "x"})),
        ),
        (Method::DELETE, format!("/api/threads/{id}"), None),
        (Method::GET, format!("/api/threads/{id}/messages"), None),
        (Method::GET, format!("/api/threads/{id}/runs"), None),
        (Method::GET, "/api/threads/no-such".to_string(), None),
    ] {
        let (s, body) = rest(&server, method.clone(), &path, Some("mallory"), b).await;
        assert_eq!(
            (s, body["error"].as_str()),
            (404, Some("not_found")),
            "{method} {path}"
        );
    }
    // Bad bodies are the JSON error shape, naming what is wrong.
    let (s, body) = rest(
        &server,
        Method::PATCH,
        &format!("/api/threads/{id}"),
        Some("ann"),
        Some(json!({"title": ""})),
    )
    .await;
    assert_eq!(
        (s, body["error"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    let (s, body) = rest(
        &server,
        Method::POST,
        "/api/threads",
        Some("ann"),
        Some(json!({"title": 5})),
    )
    .await;
    assert_eq!(
        (s, body["error"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    // serde's structs also take an array of their fields: not a body here
    // (schemathesis: `[]` made a thread, `["t"]` renamed one).
    for (method, path, b) in [
        (Method::POST, "/api/threads".to_string(), json!([])),
        (Method::PATCH, format!("/api/threads/{id}"), json!(["t"])),
        (
            Method::POST,
            format!("/api/threads/{id}/messages"),
            json!(["hi"]),
        ),
    ] {
        let (s, body) = rest(&server, method.clone(), &path, Some("ann"), Some(b)).await;
        assert_eq!(
            (s, body["error"].as_str(), body["message"].as_str()),
            (
                400,
                Some("bad_request"),
                Some("the body must be a JSON object")
            ),
            "{method} {path}"
        );
    }

    let (s, _) = rest(
        &server,
        Method::DELETE,
        &format!("/api/threads/{id}"),
        Some("ann"),
        None,
    )
    .await;
    assert_eq!(s, 204);
    let (s, _) = rest(
        &server,
        Method::GET,
        &format!("/api/threads/{id}"),
        Some("ann"),
        None,
    )
    .await;
    assert_eq!(s, 404);
    server.stop().await;
}

async fn a_run_left_running_by_a_killed_server_is_failed_at_the_next_start(postgres: bool) {
    use wsgate_core::threads::ThreadStore;
    let db = Store::new(postgres).await;
    let url = db.url();
    // What a killed server leaves behind: a run still `running`.
    let store = wsgate_storage::Storage::open(&url).await.unwrap();
    let thread = store.create_thread("kim", "t").await.unwrap();
    let run = store.create_run("kim", &thread.id).await.unwrap().unwrap();
    store.close().await;

    let server =
        TestServer::with(|c| c.storage.url = wsgate::config::Secret::new(url.clone())).await;
    let (s, body) = rest(
        &server,
        reqwest::Method::GET,
        &format!("/api/threads/{}/runs", thread.id),
        Some("kim"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["runs"][0]["id"], json!(run.id));
    assert_eq!(body["runs"][0]["status"], "failed");
    assert_eq!(body["runs"][0]["error"], "interrupted");
    assert!(body["runs"][0]["ended_at"].is_i64());
    server.stop().await;
    db.remove().await;
}

#[tokio::test]
async fn a_run_left_running_by_a_killed_server_is_failed_at_the_next_start_on_sqlite() {
    a_run_left_running_by_a_killed_server_is_failed_at_the_next_start(false).await;
}

#[tokio::test]
#[cfg_attr(
    not(wsgate_postgres),
    ignore = "PostgreSQL: set TEST_POSTGRES_URL (.ci/run does)"
)]
async fn a_run_left_running_by_a_killed_server_is_failed_at_the_next_start_on_postgres() {
    a_run_left_running_by_a_killed_server_is_failed_at_the_next_start(true).await;
}
