//! SPEC §5 and the channel commands of §4, with real clients.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;
use wsgate::config::{Config, NamespaceConfig};

fn ns(name: &str, subscribe: &str, publish: &str) -> NamespaceConfig {
    NamespaceConfig {
        name: name.into(),
        subscribe: subscribe.into(),
        publish: publish.into(),
        ..NamespaceConfig::default()
    }
}

fn channels_config(c: &mut Config) {
    let mut chat = ns("chat", "any", "any");
    chat.history_size = 10;
    chat.presence = true;
    chat.join_leave = true;
    let mut hist = ns("hist", "any", "server");
    hist.history_size = 3;
    let mut ttl = ns("ttl", "any", "server");
    ttl.history_size = 100;
    ttl.history_ttl_secs = 1;
    c.channels.namespaces = vec![
        chat,
        hist,
        ttl,
        ns("ops", "role:admin", "server"),
        ns("team", "claim", "server"),
    ];
    c.limits.messages_per_minute = 100_000;
    c.limits.message_burst = 100_000;
}

async fn start() -> TestServer {
    TestServer::with(channels_config).await
}

#[tokio::test]
async fn subscribe_receive_publish_unsubscribe() {
    let server = start().await;
    let (mut ws, _) = server.connect("alice").await;
    let r = call(&mut ws, "subscribe", "s1", json!({"channel": "news"})).await;
    assert_eq!(r["type"], "subscribed", "{r}");
    assert_eq!(r["payload"]["channel"], "news");
    assert_eq!(r["payload"]["offset"], 0);
    assert_eq!(r["payload"]["recovered"], false);
    let epoch = r["payload"]["epoch"].as_str().unwrap().to_string();

    let p = api_publish(&server, "news", json!({"headline": "hi"})).await;
    assert_eq!(p["offset"], 1);
    assert_eq!(p["epoch"], epoch.as_str());
    let m = next_of(&mut ws, "message").await;
    assert_eq!(
        m["payload"],
        json!({"channel": "news", "offset": 1, "epoch": epoch, "data": {"headline": "hi"}})
    );

    // Clients may not publish where only the server may.
    let r = call(
        &mut ws,
        "publish",
        "p1",
        json!({"channel": "news", "data": 1}),
    )
    .await;
    assert_eq!(r["payload"]["code"], "forbidden");
    // ...but may in chat.
    call(&mut ws, "subscribe", "s2", json!({"channel": "chat:1"})).await;
    send_json(&mut ws, json!({"type": "publish", "id": "p2", "payload": {"channel": "chat:1", "data": {"text": "yo"}}})).await;
    // The publication reaches subscribers (this connection too) and the
    // publisher gets its reply; the two may come in either order.
    let (mut reply, mut message) = (None, None);
    while reply.is_none() || message.is_none() {
        let v = next_json(&mut ws).await;
        match v["type"].as_str().unwrap() {
            "published" => reply = Some(v),
            "message" => message = Some(v),
            other => panic!("{other}: {v}"),
        }
    }
    assert_eq!(reply.unwrap()["payload"]["offset"], 1);
    assert_eq!(message.unwrap()["payload"]["data"]["text"], "yo");

    let r = call(&mut ws, "subscribe", "s3", json!({"channel": "news"})).await;
    assert_eq!(r["payload"]["code"], "conflict");
    let r = call(&mut ws, "unsubscribe", "u1", json!({"channel": "news"})).await;
    assert_eq!(r["type"], "unsubscribed");
    let r = call(&mut ws, "unsubscribe", "u2", json!({"channel": "news"})).await;
    assert_eq!(r["payload"]["code"], "not_found");
    api_publish(&server, "news", json!(2)).await;
    send_json(&mut ws, json!({"type": "ping", "id": "after"})).await;
    let v = next_json(&mut ws).await;
    assert_eq!(v["type"], "pong", "no message after unsubscribe: {v}");
}

#[tokio::test]
async fn permissions_are_default_deny() {
    let server = start().await;
    let (mut ws, _) = server.connect("alice").await;
    let cases = [
        ("user:alice", "subscribed"),
        ("user:bob", "forbidden"),
        ("thread:123", "forbidden"),
        ("nowhere:1", "forbidden"),
        ("ops:alerts", "forbidden"),
        ("team:blue", "forbidden"),
        ("bad name!", "bad_request"),
    ];
    for (i, (channel, expect)) in cases.iter().enumerate() {
        let r = call(
            &mut ws,
            "subscribe",
            &format!("c{i}"),
            json!({"channel": channel}),
        )
        .await;
        let got = if r["type"] == "subscribed" {
            "subscribed"
        } else {
            r["payload"]["code"].as_str().unwrap()
        };
        assert_eq!(got, *expect, "{channel}: {r}");
    }
    let r = call(
        &mut ws,
        "publish",
        "pu",
        json!({"channel": "user:alice", "data": 1}),
    )
    .await;
    assert_eq!(
        r["payload"]["code"], "forbidden",
        "user channels are server-published"
    );
    let r = call(&mut ws, "subscribe", "x", json!({})).await;
    assert_eq!(r["payload"]["code"], "bad_request");

    // Roles and token channel patterns.
    let mut admin = claims("root", 600);
    admin.roles = vec!["admin".into()];
    admin.channels = vec!["team:blue*".into(), "user:*".into()];
    let t = wsgate::auth::sign_hs256(SECRET, &admin);
    let (mut ws, _) = tokio_tungstenite::connect_async(server.request(Some(&t)))
        .await
        .unwrap();
    next_json(&mut ws).await;
    for (channel, expect) in [
        ("ops:alerts", "subscribed"),
        ("team:blue-2", "subscribed"),
        ("team:red", "forbidden"),
        ("user:alice", "forbidden"),
    ] {
        let r = call(&mut ws, "subscribe", channel, json!({"channel": channel})).await;
        let got = if r["type"] == "subscribed" {
            "subscribed"
        } else {
            r["payload"]["code"].as_str().unwrap()
        };
        assert_eq!(got, expect, "{channel}");
    }
}

#[tokio::test]
async fn user_channel_reaches_only_its_owner() {
    let server = start().await;
    let (mut alice, _) = server.connect("alice").await;
    call(
        &mut alice,
        "subscribe",
        "1",
        json!({"channel": "user:alice"}),
    )
    .await;
    api_publish(&server, "user:alice", json!({"note": "private"})).await;
    assert_eq!(
        next_of(&mut alice, "message").await["payload"]["data"]["note"],
        "private"
    );
}

#[tokio::test]
async fn max_subscriptions_per_connection() {
    let server = TestServer::with(|c| {
        channels_config(c);
        c.limits.max_subscriptions = 2;
    })
    .await;
    let (mut ws, _) = server.connect("m").await;
    assert_eq!(
        call(&mut ws, "subscribe", "1", json!({"channel": "a"})).await["type"],
        "subscribed"
    );
    assert_eq!(
        call(&mut ws, "subscribe", "2", json!({"channel": "b"})).await["type"],
        "subscribed"
    );
    let r = call(&mut ws, "subscribe", "3", json!({"channel": "c"})).await;
    assert_eq!(r["payload"]["code"], "bad_request");
    call(&mut ws, "unsubscribe", "4", json!({"channel": "a"})).await;
    assert_eq!(
        call(&mut ws, "subscribe", "5", json!({"channel": "c"})).await["type"],
        "subscribed"
    );
}

#[tokio::test]
async fn history_is_bounded_by_size_and_ttl() {
    let server = start().await;
    for i in 1..=5 {
        api_publish(&server, "hist:a", json!({"i": i})).await;
    }
    let (mut ws, _) = server.connect("h").await;
    let r = call(&mut ws, "history", "h1", json!({"channel": "hist:a"})).await;
    assert_eq!(r["type"], "history", "{r}");
    assert_eq!(r["payload"]["offset"], 5);
    let offsets: Vec<u64> = r["payload"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [3, 4, 5], "size 3 keeps the newest three");
    assert_eq!(r["payload"]["publications"][0]["data"], json!({"i": 3}));
    let epoch = r["payload"]["epoch"].clone();
    let r = call(
        &mut ws,
        "history",
        "h2",
        json!({"channel": "hist:a", "since": {"offset": 4, "epoch": epoch}, "limit": 10}),
    )
    .await;
    assert_eq!(r["payload"]["publications"].as_array().unwrap().len(), 1);
    let r = call(&mut ws, "history", "h3", json!({"channel": "news"})).await;
    assert_eq!(r["payload"]["code"], "bad_request", "no history configured");

    api_publish(&server, "ttl:a", json!(1)).await;
    let r = call(&mut ws, "history", "t1", json!({"channel": "ttl:a"})).await;
    assert_eq!(r["payload"]["publications"].as_array().unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let r = call(&mut ws, "history", "t2", json!({"channel": "ttl:a"})).await;
    assert_eq!(
        r["payload"]["publications"].as_array().unwrap().len(),
        0,
        "expired after ttl"
    );
    assert_eq!(r["payload"]["offset"], 1, "offsets survive expiry");

    // The same through the server API.
    let (status, body) = get_json(
        &server.http("/api/channels/hist:a/history?limit=2"),
        &[("x-api-key", API_KEY)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["publications"].as_array().unwrap().len(), 2);
    let (status, _) = get_json(&server.http("/api/channels/hist:a/history"), &[]).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn recovery_after_a_real_disconnect() {
    let server = start().await;
    let (mut ws, _) = server.connect("r").await;
    let r = call(&mut ws, "subscribe", "s", json!({"channel": "chat:room"})).await;
    let epoch = r["payload"]["epoch"].as_str().unwrap().to_string();
    for i in 1..=2 {
        api_publish(&server, "chat:room", json!({"i": i})).await;
    }
    assert_eq!(next_of(&mut ws, "message").await["payload"]["offset"], 1);
    assert_eq!(next_of(&mut ws, "message").await["payload"]["offset"], 2);
    ws.close(None).await.unwrap();
    drop(ws);
    for i in 3..=5 {
        api_publish(&server, "chat:room", json!({"i": i})).await;
    }
    let (mut ws, _) = server.connect("r").await;
    let r = call(
        &mut ws,
        "subscribe",
        "s",
        json!({"channel": "chat:room", "recover": {"offset": 2, "epoch": epoch}}),
    )
    .await;
    assert_eq!(r["payload"]["recovered"], true, "{r}");
    assert_eq!(r["payload"]["offset"], 5);
    api_publish(&server, "chat:room", json!({"i": 6})).await;
    let mut got = Vec::new();
    for _ in 0..4 {
        let m = next_of(&mut ws, "message").await;
        got.push(m["payload"]["offset"].as_u64().unwrap());
    }
    assert_eq!(
        got,
        [3, 4, 5, 6],
        "in order, no duplicates, missed ones before newer"
    );

    // A wrong epoch cannot be recovered.
    let (mut ws2, _) = server.connect("r2").await;
    let r = call(
        &mut ws2,
        "subscribe",
        "s",
        json!({"channel": "chat:room", "recover": {"offset": 1, "epoch": "nope"}}),
    )
    .await;
    assert_eq!(r["payload"]["recovered"], false);
    api_publish(&server, "chat:room", json!({"i": 7})).await;
    assert_eq!(next_of(&mut ws2, "message").await["payload"]["offset"], 7);
    // Nothing to recover is a successful recovery.
    let (mut ws3, _) = server.connect("r3").await;
    let r = call(
        &mut ws3,
        "subscribe",
        "s",
        json!({"channel": "chat:room", "recover": {"offset": 7, "epoch": epoch}}),
    )
    .await;
    assert_eq!(r["payload"]["recovered"], true);
}

#[tokio::test]
async fn presence_and_join_leave() {
    let server = start().await;
    let (mut a, ca) = server.connect("ann").await;
    let (mut b, cb) = server.connect("bob").await;
    call(&mut a, "subscribe", "1", json!({"channel": "chat:lobby"})).await;
    call(&mut b, "subscribe", "1", json!({"channel": "chat:lobby"})).await;
    // Ann is told about Bob, never about herself.
    let join = next_of(&mut a, "join").await;
    assert_eq!(join["payload"]["user"], "bob");
    assert_eq!(
        join["payload"]["connection_id"],
        cb["payload"]["connection_id"]
    );
    let r = call(&mut a, "presence", "p", json!({"channel": "chat:lobby"})).await;
    let mut users: Vec<String> = r["payload"]["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["user"].as_str().unwrap().to_string())
        .collect();
    users.sort();
    assert_eq!(users, ["ann", "bob"]);
    let (status, body) = get_json(
        &server.http("/api/channels/chat:lobby/presence"),
        &[("x-api-key", API_KEY)],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["clients"].as_array().unwrap().len(), 2);
    // Bob goes away: Ann sees leave, presence shrinks.
    b.close(None).await.unwrap();
    let leave = next_of(&mut a, "leave").await;
    assert_eq!(leave["payload"]["user"], "bob");
    let mut left = 0;
    for _ in 0..50 {
        let r = call(&mut a, "presence", "p2", json!({"channel": "chat:lobby"})).await;
        left = r["payload"]["clients"].as_array().unwrap().len();
        if left == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(left, 1);
    let r = call(&mut a, "presence", "p3", json!({"channel": "news"})).await;
    assert_eq!(r["payload"]["code"], "bad_request", "presence not enabled");
    let _ = ca;
}

#[tokio::test]
async fn filters_match_top_level_fields() {
    let server = start().await;
    let (mut ws, _) = server.connect("f").await;
    call(
        &mut ws,
        "subscribe",
        "1",
        json!({"channel": "events", "filter": {"severity": "critical"}}),
    )
    .await;
    api_publish(&server, "events", json!({"severity": "info", "n": 1})).await;
    api_publish(&server, "events", json!({"severity": "critical", "n": 2})).await;
    let m = next_of(&mut ws, "message").await;
    assert_eq!(m["payload"]["data"]["n"], 2);
    let r = call(
        &mut ws,
        "subscribe",
        "2",
        json!({"channel": "news", "filter": [1]}),
    )
    .await;
    assert_eq!(r["payload"]["code"], "bad_request");
}

#[tokio::test]
async fn broadcast_and_api_errors() {
    let server = start().await;
    let (mut ws, _) = server.connect("b").await;
    call(&mut ws, "subscribe", "1", json!({"channel": "a"})).await;
    call(&mut ws, "subscribe", "2", json!({"channel": "b"})).await;
    let client = reqwest::Client::new();
    let resp = client
        .post(server.http("/api/broadcast"))
        .header("x-api-key", API_KEY)
        .json(&json!({"channels": ["a", "b", "bad name"], "data": {"x": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["results"][0]["offset"], 1);
    assert_eq!(body["results"][2]["error"], "bad_request");
    let mut channels = vec![
        next_of(&mut ws, "message").await["payload"]["channel"]
            .as_str()
            .unwrap()
            .to_string(),
        next_of(&mut ws, "message").await["payload"]["channel"]
            .as_str()
            .unwrap()
            .to_string(),
    ];
    channels.sort();
    assert_eq!(channels, ["a", "b"]);
    for (body, status) in [
        (json!({"channel": "a"}), 400),
        (json!({"channel": "no:such", "data": 1}), 400),
        (json!({"channel": "a", "data": 1, "extra": true}), 400),
        // The fields as an array: serde's structs would take it.
        (json!(["a", 1]), 400),
    ] {
        let resp = client
            .post(server.http("/api/publish"))
            .header("x-api-key", API_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{body}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"], "bad_request");
    }
    let resp = client
        .post(server.http("/api/publish"))
        .json(&json!({"channel": "a", "data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn msgpack_subscriber_gets_the_same_publication() {
    let server = start().await;
    let mut req = server.request(Some(&token("mp")));
    add_header(&mut req, "sec-websocket-protocol", "wsgate.v1.msgpack");
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let read = |m: Message| -> Value {
        match m {
            Message::Binary(b) => rmp_serde::from_slice(&b).unwrap(),
            other => panic!("{other:?}"),
        }
    };
    read(ws.next().await.unwrap().unwrap());
    let sub = rmp_serde::to_vec_named(
        &json!({"type": "subscribe", "id": "1", "payload": {"channel": "news"}}),
    )
    .unwrap();
    ws.send(Message::Binary(sub.into())).await.unwrap();
    assert_eq!(
        read(ws.next().await.unwrap().unwrap())["type"],
        "subscribed"
    );
    api_publish(&server, "news", json!({"k": [1, 2]})).await;
    let m = read(ws.next().await.unwrap().unwrap());
    assert_eq!(m["type"], "message");
    assert_eq!(m["payload"]["data"], json!({"k": [1, 2]}));
}

#[tokio::test]
async fn slow_consumer_is_closed_while_fast_ones_get_everything_in_order() {
    let server = TestServer::with(|c| {
        channels_config(c);
        c.limits.outbound_queue_bytes = 64 * 1024;
    })
    .await;
    let (mut fast, _) = server.connect("fast").await;
    call(&mut fast, "subscribe", "1", json!({"channel": "firehose"})).await;
    let (mut slow, _) = server.connect_small_window("slow").await;
    call(&mut slow, "subscribe", "1", json!({"channel": "firehose"})).await;
    // The slow client stops reading; the fast one reads concurrently.
    let total = 3000u64;
    let reader = tokio::spawn(async move {
        let mut expect = 1;
        while expect <= total {
            let m = next_of(&mut fast, "message").await;
            assert_eq!(
                m["payload"]["offset"].as_u64().unwrap(),
                expect,
                "in order, none lost"
            );
            expect += 1;
        }
    });
    let pad = "x".repeat(2000);
    let client = reqwest::Client::new();
    for i in 0..total {
        client
            .post(server.http("/api/publish"))
            .header("x-api-key", API_KEY)
            .json(&json!({"channel": "firehose", "data": {"i": i, "pad": pad}}))
            .send()
            .await
            .unwrap();
    }
    tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .unwrap()
        .unwrap();
    // The server closed the slow one with 4009. Whether the close frame
    // reaches it depends on it reading within CLOSE_LINGER (2 s) of the
    // overflow: one that reads only after the whole flood may find the
    // connection gone without it (by design: a client that does not read
    // must not hold its connection). The count says what the server did.
    let code = close_code(&mut slow).await;
    assert!(matches!(code, None | Some(4009)), "{code:?}");
    let counted = server
        .metric_shows("wsgate_disconnects_total{code=\"4009\"} 1")
        .await;
    assert!(counted, "the slow consumer closed with 4009, once");
}

#[tokio::test]
async fn a_thousand_subscribers_receive_every_publication_in_order() {
    let server = start().await;
    let n = 1000;
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let (mut ws, _) = server.connect(&format!("sub{i}")).await;
        call(&mut ws, "subscribe", "s", json!({"channel": "broadcast"})).await;
        clients.push(ws);
    }
    let pubs = 20u64;
    for i in 1..=pubs {
        api_publish(&server, "broadcast", json!({"seq": i})).await;
    }
    let mut tasks = Vec::new();
    for mut ws in clients {
        tasks.push(tokio::spawn(async move {
            for expect in 1..=pubs {
                let m = next_of(&mut ws, "message").await;
                assert_eq!(m["payload"]["offset"].as_u64().unwrap(), expect);
                assert_eq!(m["payload"]["data"]["seq"].as_u64().unwrap(), expect);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn next_text(ws: &mut Ws) -> String {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .unwrap()
            .unwrap();
        match msg {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("{other:?}"),
        }
    }
}

async fn open_stream(server: &TestServer, path: &str, user: &str) -> Ws {
    tokio_tungstenite::connect_async(server.request_at(path, Some(&token(user))))
        .await
        .expect("stream accepted")
        .0
}

#[tokio::test]
async fn raw_streams_send_data_only_with_query_filters() {
    let server = start().await;
    let mut events = open_stream(&server, "/ws/events?severity=critical&site_id=abc", "ops").await;
    let mut all = open_stream(&server, "/ws/stream/news", "reader").await;
    // Give the streams' subscriptions a moment to go live.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let evt = |sev: &str, site: &str, n: u32| json!({"type": "event", "event_type": "SITE_CREATED", "severity": sev, "site_id": site, "n": n});
    api_publish(&server, "events", evt("info", "abc", 1)).await;
    api_publish(&server, "events", evt("critical", "xyz", 2)).await;
    api_publish(&server, "events", evt("critical", "abc", 3)).await;
    let got: Value = serde_json::from_str(&next_text(&mut events).await).unwrap();
    assert_eq!(
        got,
        evt("critical", "abc", 3),
        "raw data, no envelope, filtered"
    );
    events.send(Message::Text("ping".into())).await.unwrap();
    assert_eq!(next_text(&mut events).await, "pong");

    api_publish(&server, "news", json!([1, "two"])).await;
    assert_eq!(next_text(&mut all).await, r#"[1,"two"]"#);
}

#[tokio::test]
async fn raw_stream_permissions() {
    let server = start().await;
    let url = |path: &str, user: &str| server.request_at(path, Some(&token(user)));
    let (status, _, body) = expect_rejection(url("/ws/stream/user:bob", "alice")).await;
    assert_eq!(status, 403, "{body}");
    let (status, _, _) = expect_rejection(url("/ws/stream/ops:alerts", "alice")).await;
    assert_eq!(status, 403);
    let (status, _, _) = expect_rejection(url("/ws/stream/bad%20name", "alice")).await;
    assert_eq!(status, 400);
    let (status, _, _) = expect_rejection(server.request_at("/ws/events", None)).await;
    assert_eq!(status, 401, "same token rules as /ws");
    // Own user channel is fine.
    let mut ws = open_stream(&server, "/ws/stream/user:alice", "alice").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    api_publish(&server, "user:alice", json!({"hello": "alice"})).await;
    assert_eq!(next_text(&mut ws).await, r#"{"hello":"alice"}"#);
}

#[tokio::test]
async fn metrics_channel_publishes_node_figures() {
    let server = TestServer::with(|c| {
        channels_config(c);
        c.metrics_interval_secs = 1;
    })
    .await;
    let mut raw = open_stream(&server, "/ws/metrics", "watcher").await;
    let (mut ws, _) = server.connect("dash").await;
    call(&mut ws, "subscribe", "m", json!({"channel": "metrics"})).await;
    let m: Value = serde_json::from_str(&next_text(&mut raw).await).unwrap();
    assert_eq!(m["type"], "metrics");
    assert!(m["timestamp"].as_u64().unwrap() > 1_700_000_000_000);
    assert!(m["node"].is_string());
    for key in [
        "connections",
        "messages_in_per_sec",
        "messages_out_per_sec",
        "deliveries_per_sec",
        "publish_latency_ms",
    ] {
        assert!(!m["metrics"][key].is_null(), "{key} in {m}");
    }
    let env = next_of(&mut ws, "message").await;
    assert_eq!(env["payload"]["channel"], "metrics");
    assert_eq!(env["payload"]["data"]["metrics"]["connections"], 2);
}

#[tokio::test]
async fn raw_stream_closes_4001_when_the_token_expires() {
    let server = start().await;
    let req = server.request_at("/ws/events", Some(&token_with_ttl("brief", 2)));
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(expect_close(&mut ws).await, 4001);
}

/// `channels_config` plus a namespace with room for big backlogs, and the
/// given outbound queue.
fn big_history_config(c: &mut Config, queue_bytes: usize) {
    channels_config(c);
    let mut big = ns("big", "any", "server");
    big.history_size = 100;
    c.channels.namespaces.push(big);
    c.limits.outbound_queue_bytes = queue_bytes;
}

fn offsets_of(history: &Value) -> Vec<u64> {
    history["payload"]["publications"]
        .as_array()
        .unwrap_or_else(|| panic!("a history reply: {history}"))
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn recovery_bigger_than_the_outbound_queue_is_paced_to_the_reader() {
    let server = TestServer::with(|c| big_history_config(c, 256 * 1024)).await;
    let (mut ws, _) = server.connect("rec").await;
    let r = call(&mut ws, "subscribe", "s", json!({"channel": "big:r"})).await;
    let epoch = r["payload"]["epoch"].as_str().unwrap().to_string();
    ws.close(None).await.unwrap();
    drop(ws);
    // Missed while away: 40 × 50 KB, eight times the queue.
    let pad = "x".repeat(50_000);
    for i in 1..=40 {
        api_publish(&server, "big:r", json!({"i": i, "pad": pad})).await;
    }
    let (mut ws, _) = server.connect("rec").await;
    send_json(
        &mut ws,
        json!({"type": "subscribe", "id": "s", "payload":
            {"channel": "big:r", "recover": {"offset": 0, "epoch": epoch}}}),
    )
    .await;
    // Live publications while the backlog is on its way (nothing is read
    // yet): more than the subscription buffers, so some are dropped there
    // and read from history again.
    for i in 41..=50 {
        api_publish(&server, "big:r", json!({"i": i, "pad": pad})).await;
    }
    let r = next_json(&mut ws).await;
    assert_eq!(r["type"], "subscribed", "{r}");
    assert_eq!(r["payload"]["recovered"], true);
    assert!(r["payload"]["offset"].as_u64().unwrap() >= 40, "{r}");
    for expect in 1..=50u64 {
        let m = next_json(&mut ws).await;
        assert_eq!(m["type"], "message");
        assert_eq!(
            m["payload"]["offset"].as_u64().unwrap(),
            expect,
            "in order, each once"
        );
        assert_eq!(m["payload"]["data"]["i"].as_u64().unwrap(), expect);
    }
    // Live from here on, and nothing left over.
    api_publish(&server, "big:r", json!({"i": 51})).await;
    assert_eq!(next_json(&mut ws).await["payload"]["offset"], 51);
    let r = call(&mut ws, "ping", "p", json!({})).await;
    assert_eq!(r["type"], "pong");
}

#[tokio::test]
async fn history_bigger_than_the_outbound_queue_comes_in_pages() {
    let server = TestServer::with(|c| big_history_config(c, 1 << 20)).await;
    let pad = "x".repeat(400_000);
    for i in 1..=3 {
        api_publish(&server, "big:h", json!({"i": i, "pad": pad})).await;
    }
    let (mut ws, _) = server.connect("hist").await;
    let r = call(&mut ws, "history", "h0", json!({"channel": "big:h"})).await;
    assert_eq!(r["type"], "history", "{r}");
    assert_eq!(r["payload"]["offset"], 3);
    let epoch = r["payload"]["epoch"].clone();
    let mut got = offsets_of(&r);
    assert!(!got.is_empty() && got.len() < 3, "cut to fit: {got:?}");
    assert_eq!(r["payload"]["more"], true);
    let mut more = true;
    let mut pages = 1;
    while more {
        let since = json!({"offset": got.last().unwrap(), "epoch": epoch});
        let r = call(
            &mut ws,
            "history",
            &format!("h{pages}"),
            json!({"channel": "big:h", "since": since}),
        )
        .await;
        let page = offsets_of(&r);
        assert!(!page.is_empty(), "{r}");
        got.extend(page);
        more = r["payload"]["more"].as_bool().unwrap();
        pages += 1;
        assert!(pages <= 3, "one 400 KB publication per page at least");
    }
    assert_eq!(got, [1, 2, 3]);
    // Small publications still come in one page, `more` false.
    let r = call(&mut ws, "history", "small", json!({"channel": "hist:none"})).await;
    assert_eq!(r["payload"]["more"], false, "{r}");
    // The largest offset a client can send is answered, not overflowed.
    let r = call(
        &mut ws,
        "history",
        "max",
        json!({"channel": "big:h", "since": {"offset": u64::MAX, "epoch": epoch}}),
    )
    .await;
    assert_eq!(r["type"], "history", "{r}");
    assert_eq!(offsets_of(&r), Vec::<u64>::new());
    assert_eq!(r["payload"]["more"], false);
}

#[tokio::test]
async fn a_channels_claim_does_not_open_a_role_namespace() {
    let server = start().await;
    let mut c = claims("claimer", 600);
    c.channels = vec!["ops:*".into(), "team:*".into()];
    let t = wsgate::auth::sign_hs256(SECRET, &c);
    let (mut ws, _) = tokio_tungstenite::connect_async(server.request(Some(&t)))
        .await
        .unwrap();
    next_json(&mut ws).await;
    let r = call(&mut ws, "subscribe", "1", json!({"channel": "ops:x"})).await;
    assert_eq!(
        r["payload"]["code"], "forbidden",
        "role:admin needs the role: {r}"
    );
    let r = call(&mut ws, "subscribe", "2", json!({"channel": "team:x"})).await;
    assert_eq!(
        r["type"], "subscribed",
        "claim namespaces take the claim: {r}"
    );
    let (status, _, _) = expect_rejection(server.request_at("/ws/stream/ops:x", Some(&t))).await;
    assert_eq!(status, 403, "raw streams ask the same authorizer");
}

/// Publishes sent back to back by one connection get offsets in the order
/// they were sent (the SDK found them reordered: each reply runs on its own
/// task, and a multi-thread runtime may start the latest spawned first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connections_publishes_keep_their_order() {
    let server = start().await;
    let (mut ws, _) = server.connect("orderly").await;
    call(&mut ws, "subscribe", "s", json!({"channel": "chat:order"})).await;
    const N: u64 = 40;
    for i in 1..=N {
        ws.feed(Message::text(
            json!({"type": "publish", "id": format!("p{i}"), "payload": {"channel": "chat:order", "data": {"i": i}}})
                .to_string(),
        ))
        .await
        .unwrap();
    }
    ws.flush().await.unwrap();
    let (mut replies, mut messages) = (0, Vec::new());
    while replies < N || (messages.len() as u64) < N {
        let v = next_json(&mut ws).await;
        match v["type"].as_str().unwrap() {
            "published" => {
                replies += 1;
                let i: u64 = v["id"].as_str().unwrap()[1..].parse().unwrap();
                assert_eq!(v["payload"]["offset"], i, "publish p{i}'s offset: {v}");
            }
            "message" => messages.push(v["payload"]["data"]["i"].as_u64().unwrap()),
            other => panic!("{other}: {v}"),
        }
    }
    assert_eq!(messages, (1..=N).collect::<Vec<_>>());
    server.stop().await;
}
