//! Several nodes over one Redis (SPEC §7; `TEST_REDIS_URL`, which `.ci/run`
//! sets; skipped without it): each test's nodes share a key prefix of
//! their own, so tests never see each other's data.

use std::time::Duration;

use serde_json::{json, Value};
use wsgate::config::{Config, NamespaceConfig, Secret};

use crate::harness::*;

/// A node of the cluster `prefix`: the `chat` namespace with history,
/// presence and join/leave.
async fn node(prefix: &str) -> TestServer {
    node_on(&redis_url(), prefix).await
}

fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").expect("TEST_REDIS_URL (see .ci/run)")
}

/// A node as [`node`], on the Redis at `url`.
async fn node_on(url: &str, prefix: &str) -> TestServer {
    node_with(url, prefix, |_| {}).await
}

/// A node as [`node_on`], with more configuration.
async fn node_with(
    url: &str,
    prefix: &str,
    more: impl Fn(&mut Config) + Send + 'static,
) -> TestServer {
    let (url, prefix) = (url.to_owned(), prefix.to_owned());
    TestServer::with(move |c: &mut Config| {
        more(c);
        c.broker.url = Secret::new(url.clone());
        c.broker.prefix = prefix.clone();
        c.channels.namespaces = vec![NamespaceConfig {
            name: "chat".into(),
            subscribe: "any".into(),
            publish: "any".into(),
            history_size: 100,
            presence: true,
            join_leave: true,
            ..NamespaceConfig::default()
        }];
        c.limits.messages_per_minute = 100_000;
        c.limits.message_burst = 100_000;
    })
    .await
}

/// A key prefix no other test uses.
fn cluster() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("it-{}-{nanos}-{n}", std::process::id())
}

#[tokio::test]
#[cfg_attr(not(wsgate_redis), ignore = "Redis: set TEST_REDIS_URL (.ci/run does)")]
async fn publications_reach_every_node_in_order_with_the_same_offsets() {
    let prefix = cluster();
    let (a, b, c) = (
        node(&prefix).await,
        node(&prefix).await,
        node(&prefix).await,
    );
    let (mut on_a, _) = a.connect("ann").await;
    let (mut on_b, _) = b.connect("bob").await;
    let sa = call(&mut on_a, "subscribe", "s", json!({"channel": "chat:room"})).await;
    let sb = call(&mut on_b, "subscribe", "s", json!({"channel": "chat:room"})).await;
    assert_eq!(sa["type"], "subscribed", "{sa}");
    assert_eq!(sa["payload"]["epoch"], sb["payload"]["epoch"], "one stream");
    for i in 1..=5 {
        let r = api_publish(&c, "chat:room", json!({"i": i})).await;
        assert_eq!(r["offset"], i, "{r}");
    }
    for ws in [&mut on_a, &mut on_b] {
        let mut got = Vec::new();
        for _ in 0..5 {
            let m = next_of(ws, "message").await;
            assert_eq!(m["payload"]["epoch"], sa["payload"]["epoch"]);
            got.push((
                m["payload"]["offset"].as_u64().unwrap(),
                m["payload"]["data"]["i"].as_u64().unwrap(),
            ));
        }
        assert_eq!(got, [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]);
    }

    // Ann leaves node A; what is published meanwhile she recovers on B.
    drop(on_a);
    for i in 6..=8 {
        api_publish(&c, "chat:room", json!({"i": i})).await;
    }
    let (mut again, _) = b.connect("ann").await;
    let r = call(
        &mut again,
        "subscribe",
        "s",
        json!({"channel": "chat:room", "recover": {"offset": 5, "epoch": sa["payload"]["epoch"]}}),
    )
    .await;
    assert_eq!(r["payload"]["recovered"], true, "{r}");
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(
            next_of(&mut again, "message").await["payload"]["offset"]
                .as_u64()
                .unwrap(),
        );
    }
    assert_eq!(got, [6, 7, 8], "exactly the missed ones");
    for n in [a, b, c] {
        n.stop().await;
    }
}

#[tokio::test]
#[cfg_attr(not(wsgate_redis), ignore = "Redis: set TEST_REDIS_URL (.ci/run does)")]
async fn presence_and_join_leave_span_the_nodes() {
    let prefix = cluster();
    let (a, b, c) = (
        node(&prefix).await,
        node(&prefix).await,
        node(&prefix).await,
    );
    let (mut ann, _) = a.connect("ann").await;
    call(&mut ann, "subscribe", "s", json!({"channel": "chat:lobby"})).await;
    let (mut bob, hello) = b.connect("bob").await;
    call(&mut bob, "subscribe", "s", json!({"channel": "chat:lobby"})).await;
    let join = next_of(&mut ann, "join").await;
    assert_eq!(join["payload"]["user"], "bob");
    assert_eq!(
        join["payload"]["connection_id"],
        hello["payload"]["connection_id"]
    );
    // Asked on a third node, presence holds both.
    let (mut carol, _) = c.connect("carol").await;
    let r = call(
        &mut carol,
        "presence",
        "p",
        json!({"channel": "chat:lobby"}),
    )
    .await;
    let mut users: Vec<String> = r["payload"]["clients"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|c| c["user"].as_str().unwrap().to_owned())
        .collect();
    users.sort();
    assert_eq!(users, ["ann", "bob"]);
    // Bob goes: Ann, on another node, is told, and presence shrinks.
    bob.close(None).await.unwrap();
    let leave = next_of(&mut ann, "leave").await;
    assert_eq!(leave["payload"]["user"], "bob");
    let mut left = usize::MAX;
    for _ in 0..50 {
        let r = call(
            &mut carol,
            "presence",
            "p2",
            json!({"channel": "chat:lobby"}),
        )
        .await;
        left = r["payload"]["clients"].as_array().unwrap().len();
        if left == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(left, 1);
    for n in [a, b, c] {
        n.stop().await;
    }
}

#[tokio::test]
#[cfg_attr(not(wsgate_redis), ignore = "Redis: set TEST_REDIS_URL (.ci/run does)")]
async fn a_node_that_loses_redis_stays_up_and_misses_nothing() {
    let prefix = cluster();
    let target = redis_addr(&redis_url()).await;
    let port = free_addr().await;
    let relay = Relay::start(port, target).await;
    let a = node_on(&format!("redis://{port}/0"), &prefix).await;
    let c = node(&prefix).await;
    let (mut ws, _) = a.connect("ann").await;
    let s = call(&mut ws, "subscribe", "s", json!({"channel": "chat:room"})).await;
    assert_eq!(s["type"], "subscribed", "{s}");
    api_publish(&c, "chat:room", json!({"i": 1})).await;
    assert_eq!(next_of(&mut ws, "message").await["payload"]["offset"], 1);

    // Redis is gone for node A: not ready, naming the broker; channel
    // commands answer `unavailable`; the connection stays open.
    drop(relay);
    let (status, body) = get_json(&a.http("/ready"), &[]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["broker"], "failed", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("broker"),
        "{body}"
    );
    let e = call(&mut ws, "subscribe", "s2", json!({"channel": "chat:other"})).await;
    assert_eq!(e["payload"]["code"], "unavailable", "{e}");
    let e = call(&mut ws, "history", "h", json!({"channel": "chat:room"})).await;
    assert_eq!(e["payload"]["code"], "unavailable", "{e}");
    assert_eq!(call(&mut ws, "ping", "p", json!({})).await["type"], "pong");
    // Meanwhile node C goes on publishing.
    for i in 2..=3 {
        api_publish(&c, "chat:room", json!({"i": i})).await;
    }

    // Redis is back: ready again without a restart, the missed
    // publications arrive, then the live ones, each once, in order.
    let _relay = Relay::start(port, target).await;
    let mut status = 0;
    for _ in 0..100 {
        status = get_json(&a.http("/ready"), &[]).await.0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200);
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(
            next_of(&mut ws, "message").await["payload"]["offset"]
                .as_u64()
                .unwrap(),
        );
    }
    api_publish(&c, "chat:room", json!({"i": 4})).await;
    got.push(
        next_of(&mut ws, "message").await["payload"]["offset"]
            .as_u64()
            .unwrap(),
    );
    assert_eq!(got, [2, 3, 4]);
    for n in [a, c] {
        n.stop().await;
    }
}

#[tokio::test]
#[cfg_attr(not(wsgate_redis), ignore = "Redis: set TEST_REDIS_URL (.ci/run does)")]
async fn redis_killed_and_restarted_empty_is_survived_and_reported() {
    let prefix = cluster();
    let mut redis = PrivateRedis::start().await;
    let (a, c) = (
        node_on(&redis.url(), &prefix).await,
        node_on(&redis.url(), &prefix).await,
    );
    let (mut ws, _) = a.connect("ann").await;
    let s = call(&mut ws, "subscribe", "s", json!({"channel": "chat:room"})).await;
    assert_eq!(s["type"], "subscribed", "{s}");
    for i in 1..=2 {
        api_publish(&c, "chat:room", json!({ "i": i })).await;
    }
    let mut last = Value::Null;
    for _ in 1..=2 {
        last = next_of(&mut ws, "message").await["payload"].clone();
    }
    assert_eq!(last["offset"], 2);
    let old_epoch = last["epoch"].clone();

    // Redis dies mid-stream: both nodes are not ready, naming the broker;
    // publish, subscribe and history answer `unavailable`; the client's
    // connection stays open and answers.
    redis.kill();
    let (status, body) = get_json(&a.http("/ready"), &[]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["broker"], "failed", "{body}");
    let resp = reqwest::Client::new()
        .post(c.http("/api/publish"))
        .header("x-api-key", API_KEY)
        .json(&json!({"channel": "chat:room", "data": {"i": 3}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "unavailable", "{body}");
    let e = call(&mut ws, "subscribe", "s2", json!({"channel": "chat:other"})).await;
    assert_eq!(e["payload"]["code"], "unavailable", "{e}");
    let e = call(&mut ws, "history", "h", json!({"channel": "chat:room"})).await;
    assert_eq!(e["payload"]["code"], "unavailable", "{e}");
    assert_eq!(call(&mut ws, "ping", "p", json!({})).await["type"], "pong");

    // Redis is back, empty: the nodes reconnect by themselves and become
    // ready; the channel's stream is lost, so its subscriber is closed
    // with 4009 rather than left waiting on a stream that restarted.
    let _redis = PrivateRedis::start_on(redis.port).await;
    for n in [&a, &c] {
        let mut status = 0;
        for _ in 0..150 {
            status = get_json(&n.http("/ready"), &[]).await.0;
            if status == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(status, 200, "ready again without a restart");
    }
    assert_eq!(expect_close(&mut ws).await, 4009);
    // The client comes back and asks to recover: told `recovered: false`
    // (a new epoch), never silently nothing; then publications flow.
    let (mut ws, _) = a.connect("ann").await;
    let s = call(
        &mut ws,
        "subscribe",
        "s",
        json!({"channel": "chat:room", "recover": {"offset": 2, "epoch": old_epoch}}),
    )
    .await;
    assert_eq!(s["type"], "subscribed", "{s}");
    assert_eq!(s["payload"]["recovered"], false, "{s}");
    assert_ne!(s["payload"]["epoch"], old_epoch);
    api_publish(&c, "chat:room", json!({"i": 4})).await;
    let m = next_of(&mut ws, "message").await;
    assert_eq!(m["payload"]["data"]["i"], 4, "{m}");
    assert_eq!(m["payload"]["offset"], 1, "the new stream's first");
    for n in [a, c] {
        n.stop().await;
    }
}

#[tokio::test]
#[cfg_attr(not(wsgate_redis), ignore = "Redis: set TEST_REDIS_URL (.ci/run does)")]
async fn disconnecting_a_user_reaches_every_node() {
    let prefix = cluster();
    let (a, b) = (node(&prefix).await, node(&prefix).await);
    let (mut on_a, _) = a.connect("kick").await;
    let (mut on_b, _) = b.connect("kick").await;
    let (mut other, _) = b.connect("stay").await;
    // A node is ready once it listens for node commands.
    let mut ready = 0;
    for _ in 0..50 {
        ready = get_json(&b.http("/ready"), &[]).await.0;
        if ready == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ready, 200);
    let resp = reqwest::Client::new()
        .post(a.http("/api/users/kick/disconnect"))
        .header("x-api-key", API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["disconnected"], 1, "counted on the node asked");
    assert_eq!(expect_close(&mut on_a).await, 4003);
    assert_eq!(
        expect_close(&mut on_b).await,
        4003,
        "and closed on the other"
    );
    assert_eq!(
        call(&mut other, "ping", "p", json!({})).await["type"],
        "pong"
    );
    for n in [a, b] {
        n.stop().await;
    }
}

#[tokio::test]
#[cfg_attr(not(wsgate_redis), ignore = "Redis: set TEST_REDIS_URL (.ci/run does)")]
async fn the_per_user_cap_counts_every_node() {
    let prefix = cluster();
    let url = redis_url();
    let cap = |c: &mut Config| c.limits.max_connections_per_user = 2;
    let (a, b) = (
        node_with(&url, &prefix, cap).await,
        node_with(&url, &prefix, cap).await,
    );
    let (first, _) = a.connect("capped").await;
    let (_second, _) = b.connect("capped").await;
    // A third, on either node, is one too many for the user.
    for n in [&a, &b] {
        let (status, _, body) = expect_rejection(n.request(Some(&token("capped")))).await;
        assert_eq!(status, 429, "{body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("too many connections"),
            "{body}"
        );
    }
    // Another user is not affected.
    let (_other, _) = b.connect("free").await;
    // One closes on node A: room again on node B once A has said so.
    drop(first);
    let mut admitted = false;
    for _ in 0..50 {
        if tokio_tungstenite::connect_async(b.request(Some(&token("capped"))))
            .await
            .is_ok()
        {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(admitted, "the closed connection stops counting");
    for n in [a, b] {
        n.stop().await;
    }
}

/// Two nodes of one cluster on one store (threads live in the shared
/// database), the echo agent streaming a word every 100 ms.
async fn run_nodes(prefix: &str, max_runs_per_user: usize) -> (TestServer, TestServer) {
    let store = format!("sqlite://{}/shared.db", temp_dir("cluster-runs").display());
    let config = move |c: &mut Config| {
        c.storage.url = Secret::new(store.clone());
        c.agent.echo_delay_ms = 100;
        c.limits.max_runs_per_user = max_runs_per_user;
    };
    let a = node_with(&redis_url(), prefix, config.clone()).await;
    // B opens the store A created (its migrations applied).
    let _ = a.connect("warm-up").await;
    let b = node_with(&redis_url(), prefix, config).await;
    (a, b)
}

#[tokio::test]
#[cfg_attr(not(wsgate_redis), ignore = "Redis: set TEST_REDIS_URL (.ci/run does)")]
async fn a_run_started_on_one_node_is_watched_and_stopped_from_another() {
    let prefix = cluster();
    let (a, b) = run_nodes(&prefix, 2).await;
    let (mut on_a, _) = a.connect("runner").await;
    let (mut on_b, _) = b.connect("runner").await;
    // Long enough (60 words, 100 ms apart) that the stop below lands
    // mid-run on a slow machine.
    let words = ["one"; 60].join(" ");
    let started = call(&mut on_a, "user_message", "1", json!({ "content": words })).await;
    assert_eq!(started["type"], "run_started", "{started}");
    let thread_id = started["payload"]["thread_id"].as_str().unwrap().to_owned();
    let run_id = started["payload"]["run_id"].as_str().unwrap().to_owned();
    let mut partials = 0;
    while partials < 2 {
        let v = next_json(&mut on_a).await;
        if v["payload"]["data"]["type"] == "partial_result" {
            partials += 1;
        }
    }

    // Node B sees the run A executes, and replays it from its start.
    let loaded = call(
        &mut on_b,
        "switch_thread",
        "2",
        json!({ "thread_id": thread_id }),
    )
    .await;
    assert_eq!(loaded["type"], "thread_loaded", "{loaded}");
    assert_eq!(loaded["payload"]["active_run"]["run_id"], json!(run_id));
    let mut replayed: Vec<Value> = Vec::new();
    while replayed
        .last()
        .is_none_or(|e| e["type"] != "partial_result")
    {
        let v = next_json(&mut on_b).await;
        if v["type"] == "message" {
            replayed.push(v["payload"]["data"].clone());
        }
    }
    assert_eq!(replayed[0]["type"], "agent_started", "{replayed:?}");
    assert_eq!(replayed.last().unwrap()["payload"]["delta"], "one ");

    // One run per thread across nodes, whichever node is asked.
    for (id, kind, payload) in [
        ("3", "start_agent", json!({ "thread_id": thread_id })),
        (
            "4",
            "user_message",
            json!({ "thread_id": thread_id, "content": "again" }),
        ),
    ] {
        let e = call(&mut on_b, kind, id, payload).await;
        assert_eq!(e["payload"]["code"], "conflict", "{kind}: {e}");
    }
    // Someone else cannot stop it from B.
    let (mut other, _) = b.connect("someone").await;
    let e = call(&mut other, "stop_agent", "5", json!({ "run_id": run_id })).await;
    assert_eq!(e["payload"]["code"], "not_found", "{e}");

    // Its owner can: the stop crosses to A, and every tab on both nodes
    // sees the run end stopped, before it has streamed every word.
    // The reply comes once the run's last event is out; on B's tab it may
    // come before or after that event (another Redis connection).
    send_json(
        &mut on_b,
        json!({"type": "stop_agent", "id": "6", "payload": { "run_id": run_id }}),
    )
    .await;
    let (mut on_b_events, mut stopped) = (Vec::<Value>::new(), None);
    while stopped.is_none()
        || on_b_events
            .last()
            .is_none_or(|e| e["type"] != "agent_completed")
    {
        let v = next_json(&mut on_b).await;
        if v["id"] == "6" {
            stopped = Some(v);
        } else if v["type"] == "message" {
            on_b_events.push(v["payload"]["data"].clone());
        }
    }
    let stopped = stopped.unwrap();
    assert_eq!(stopped["type"], "run_stopped", "{stopped}");
    for events in [run_events(&mut on_a).await, on_b_events] {
        let end = events.last().unwrap();
        assert_eq!(end["type"], "agent_completed", "{events:?}");
        assert_eq!(end["payload"]["status"], "stopped", "{events:?}");
        assert_eq!(end["payload"]["run_id"], json!(run_id));
        assert!(!events.iter().any(|e| e["type"] == "final_report"));
    }
    let (status, runs) = get_json(
        &a.http(&format!("/api/threads/{thread_id}/runs")),
        &[("authorization", &format!("Bearer {}", token("runner")))],
    )
    .await;
    assert_eq!(status, 200, "{runs}");
    assert_eq!(runs["runs"][0]["status"], "stopped", "{runs}");

    // The thread is free again on every node: B runs the next one, and
    // its events reach A's tab.
    let again = call(
        &mut on_b,
        "start_agent",
        "7",
        json!({ "thread_id": thread_id }),
    )
    .await;
    assert_eq!(again["type"], "run_started", "{again}");
    let events = run_events(&mut on_a).await;
    assert_eq!(events.last().unwrap()["payload"]["status"], "completed");
    assert_eq!(
        events.last().unwrap()["payload"]["run_id"],
        again["payload"]["run_id"]
    );
    for n in [a, b] {
        n.stop().await;
    }
}

#[tokio::test]
#[cfg_attr(not(wsgate_redis), ignore = "Redis: set TEST_REDIS_URL (.ci/run does)")]
async fn the_per_user_run_cap_counts_every_node() {
    let prefix = cluster();
    let (a, b) = run_nodes(&prefix, 1).await;
    let (mut on_a, _) = a.connect("one-run").await;
    let (mut on_b, _) = b.connect("one-run").await;
    let started = call(
        &mut on_a,
        "user_message",
        "1",
        json!({ "content": "a long answer to stream slowly" }),
    )
    .await;
    assert_eq!(started["type"], "run_started", "{started}");
    let e = call(
        &mut on_b,
        "user_message",
        "2",
        json!({ "content": "another thread" }),
    )
    .await;
    assert_eq!(e["payload"]["code"], "conflict", "{e}");
    assert!(
        e["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("per user"),
        "{e}"
    );
    for n in [a, b] {
        n.stop().await;
    }
}

#[tokio::test]
#[cfg_attr(not(wsgate_redis), ignore = "Redis: set TEST_REDIS_URL (.ci/run does)")]
async fn a_node_fails_the_runs_a_crashed_node_left_and_only_those() {
    use wsgate_core::runs::{Claimed, RunClaim, RunRegistry};
    use wsgate_core::threads::ThreadStore;
    let prefix = cluster();
    let url = format!("sqlite://{}/shared.db", temp_dir("orphans").display());
    let store = wsgate_storage::Storage::open(&url).await.unwrap();
    let live_thread = store.create_thread("kim", "live").await.unwrap();
    let live = store
        .create_run("kim", &live_thread.id)
        .await
        .unwrap()
        .unwrap();
    let orphan_thread = store.create_thread("kim", "orphan").await.unwrap();
    let orphan = store
        .create_run("kim", &orphan_thread.id)
        .await
        .unwrap()
        .unwrap();
    store.close().await;
    // Another node still runs `live` and holds its claim; `orphan`'s node
    // crashed and its claim is gone.
    let (client, _) = wsgate_broker_redis::clients(&redis_url()).unwrap();
    let other_node =
        wsgate_broker_redis::RedisRuns::new(client, wsgate_broker_redis::Keys::new(&prefix));
    let claim = RunClaim {
        claim: "held-elsewhere".into(),
        owner: "kim".into(),
        thread_id: live_thread.id.clone(),
        run_id: live.id.clone(),
        started: None,
        version: 1,
    };
    assert_eq!(other_node.claim(&claim, 5).await.unwrap(), Claimed::Yes);

    let node = node_with(&redis_url(), &prefix, move |c| {
        c.storage.url = Secret::new(url.clone());
    })
    .await;
    let runs_of = |thread: String| {
        let url = node.http(&format!("/api/threads/{thread}/runs"));
        async move {
            let auth = format!("Bearer {}", token("kim"));
            get_json(&url, &[("authorization", &auth)]).await.1["runs"][0].clone()
        }
    };
    let mut failed = Value::Null;
    for _ in 0..100 {
        failed = runs_of(orphan_thread.id.clone()).await;
        if failed["status"] != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(failed["id"], json!(orphan.id));
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["error"], "interrupted");
    let kept = runs_of(live_thread.id.clone()).await;
    assert_eq!(
        kept["status"], "running",
        "another node's run is left alone: {kept}"
    );
    // And the node knows the thread is busy.
    let (mut ws, _) = node.connect("kim").await;
    let e = call(
        &mut ws,
        "start_agent",
        "1",
        json!({ "thread_id": live_thread.id }),
    )
    .await;
    assert_eq!(e["payload"]["code"], "conflict", "{e}");
    node.stop().await;
}
