//! `/graphql` (SPEC §10) with real clients: HTTP with reqwest, the
//! WebSocket with tokio-tungstenite speaking graphql-transport-ws, and the
//! stock npm `graphql-ws` client under Node (`tests/graphql-ws`).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::harness::*;

const PROTOCOL: &str = "graphql-transport-ws";

/// A `/graphql` upgrade offering `protocols`, with the token on the upgrade
/// when given.
fn gql_request(
    server: &TestServer,
    token: Option<&str>,
    protocols: &str,
) -> tokio_tungstenite::tungstenite::http::Request<()> {
    let mut req = server.request_at("/graphql", token);
    if !protocols.is_empty() {
        add_header(&mut req, "sec-websocket-protocol", protocols);
    }
    req
}

/// Connects to `/graphql`; the server selects graphql-transport-ws.
async fn gql_connect(server: &TestServer, token: Option<&str>) -> Ws {
    let (ws, resp) = tokio_tungstenite::connect_async(gql_request(server, token, PROTOCOL))
        .await
        .expect("handshake accepted");
    assert_eq!(resp.headers()["sec-websocket-protocol"], PROTOCOL);
    ws
}

/// Connects with the token in `connection_init` and waits for the ack.
async fn gql_ready(server: &TestServer, user: &str) -> Ws {
    let mut ws = gql_connect(server, None).await;
    send_json(
        &mut ws,
        json!({"type": "connection_init", "payload": {"token": token(user)}}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await, json!({"type": "connection_ack"}));
    ws
}

async fn subscribe(ws: &mut Ws, id: &str, query: &str, variables: Value) {
    send_json(
        ws,
        json!({"id": id, "type": "subscribe", "payload": {"query": query, "variables": variables}}),
    )
    .await;
}

/// The next frame of operation `id`.
async fn next_for(ws: &mut Ws, id: &str) -> Value {
    loop {
        let v = next_json(ws).await;
        if v["id"] == id {
            return v;
        }
    }
}

/// `POST /graphql` with a bearer token.
async fn post(server: &TestServer, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(server.http("/graphql"))
        .json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(json!(null)),
    )
}

fn code(v: &Value) -> &Value {
    &v["errors"][0]["extensions"]["code"]
}

fn admin_token(user: &str) -> String {
    sign_custom(
        jsonwebtoken::Algorithm::HS256,
        SECRET.as_bytes(),
        &json!({"sub": user, "exp": now() + 3600, "role": "admin"}),
    )
}

const NEWS: &str =
    "subscription($n: String!, $f: JSON) { channel(name: $n, filter: $f) { channel offset data } }";

/// Publishes `data` to `channel` until `ws` receives a `next` for `id`
/// (a subscription has no acknowledgement to wait for).
async fn publish_until_next(
    server: &TestServer,
    ws: &mut Ws,
    id: &str,
    channel: &str,
    data: Value,
) -> Value {
    for _ in 0..100 {
        api_publish(server, channel, data.clone()).await;
        if let Ok(v) = tokio::time::timeout(Duration::from_millis(100), next_for(ws, id)).await {
            return v;
        }
    }
    panic!("no publication reached the subscription");
}

#[tokio::test]
async fn http_queries_and_mutations_follow_the_ws_rules() {
    let server = TestServer::start().await;
    let alice = token("alice");
    let (status, v) = post(
        &server,
        Some(&alice),
        json!({"query": "{ me { user roles } }"}),
    )
    .await;
    assert_eq!(
        (status, &v),
        (
            200,
            &json!({"data": {"me": {"user": "alice", "roles": []}}})
        )
    );

    let (_, v) = post(
        &server,
        Some(&alice),
        json!({"query": "mutation($t: String) { createThread(title: $t) { id title } }", "variables": {"t": "plans"}}),
    )
    .await;
    let id = v["data"]["createThread"]["id"].as_str().unwrap().to_owned();
    assert_eq!(v["data"]["createThread"]["title"], "plans");
    let (_, v) = post(
        &server,
        Some(&alice),
        json!({"query": "{ threads { id title } }"}),
    )
    .await;
    assert_eq!(v["data"]["threads"], json!([{"id": id, "title": "plans"}]));
    let q =
        json!({"query": "query($id: ID!) { thread(id: $id) { title } }", "variables": {"id": id}});
    // Someone else's thread does not exist for them, as on /ws.
    let (status, v) = post(&server, Some(&token("mallory")), q.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(code(&v), "not_found", "{v}");
    let (_, v) = post(
        &server,
        Some(&alice),
        json!({"query": "mutation($id: ID!) { renameThread(id: $id, title: \"\") { title } }", "variables": {"id": id}}),
    )
    .await;
    assert_eq!(code(&v), "bad_request", "an empty title is refused: {v}");

    // Publishing follows the namespace: the default one is server-only.
    let (_, v) = post(
        &server,
        Some(&alice),
        json!({"query": "mutation { publish(channel: \"news\", data: {a: 1}) { offset } }"}),
    )
    .await;
    assert_eq!(code(&v), "forbidden", "{v}");
    // Stats are for admins.
    let (_, v) = post(&server, Some(&alice), json!({"query": "{ stats }"})).await;
    assert_eq!(code(&v), "forbidden", "{v}");
    let (_, v) = post(
        &server,
        Some(&admin_token("root")),
        json!({"query": "{ stats }"}),
    )
    .await;
    assert!(v["data"]["stats"]["connections"].is_number(), "{v}");

    // No token: 401 in the JSON error shape, not a GraphQL response.
    let (status, v) = post(&server, None, json!({"query": "{ me { user } }"})).await;
    assert_eq!((status, v["error"].as_str()), (401, Some("unauthorized")));
    let (status, v) = post(&server, Some(&alice), json!({"nope": 1})).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("bad_request")));

    // GET runs queries, never mutations.
    let url = |q: &str| {
        format!(
            "{}?query={}",
            server.http("/graphql"),
            form_urlencoded::byte_serialize(q.as_bytes()).collect::<String>()
        )
    };
    let auth = format!("Bearer {alice}");
    let (status, v) = get_json(&url("{ me { user } }"), &[("authorization", &auth)]).await;
    assert_eq!((status, &v["data"]["me"]["user"]), (200, &json!("alice")));
    let (_, v) = get_json(
        &url("mutation { createThread { id } }"),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(code(&v), "bad_request", "{v}");
    assert!(v["errors"][0]["message"].as_str().unwrap().contains("POST"));
    // Subscriptions need the WebSocket.
    let (_, v) = post(
        &server,
        Some(&alice),
        json!({"query": "subscription { metrics { offset } }"}),
    )
    .await;
    assert_eq!(code(&v), "bad_request", "{v}");
    assert!(
        server
            .metric_shows("wsgate_graphql_operations_total{type=\"mutation\"}")
            .await
    );
    assert!(
        server
            .metric_shows("wsgate_graphql_errors_total{code=\"not_found\"} 1")
            .await
    );
    server.stop().await;
}

#[tokio::test]
async fn depth_complexity_size_and_introspection_are_limited() {
    let server = TestServer::with(|c| {
        c.graphql.max_depth = 2;
        c.graphql.max_complexity = 5;
        c.graphql.introspection = false;
        c.limits.max_message_bytes = 2048;
    })
    .await;
    let t = token("alice");
    let (_, v) = post(&server, Some(&t), json!({"query": "{ me { user } }"})).await;
    assert_eq!(v["data"]["me"]["user"], "alice");
    let deep = "{ history(channel: \"news\") { position { offset } } }";
    let (_, v) = post(&server, Some(&t), json!({"query": deep})).await;
    assert_eq!(code(&v), "bad_request", "{v}");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("nested too deep"),
        "{v}"
    );
    let wide = "{ me { user roles name expiresAt } a: me { user } b: me { user } }";
    let (_, v) = post(&server, Some(&t), json!({"query": wide})).await;
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("too complex"),
        "{v}"
    );
    let (_, v) = post(
        &server,
        Some(&t),
        json!({"query": "{ __schema { types { name } } }"}),
    )
    .await;
    assert!(v["data"].is_null() || v["errors"].is_array(), "{v}");
    assert!(v["errors"].is_array(), "introspection is off: {v}");
    let huge = format!("{{ me {{ user }} }} # {}", "x".repeat(2100));
    let (_, v) = post(&server, Some(&t), json!({"query": huge})).await;
    assert_eq!(code(&v), "bad_request", "{v}");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("max_message_bytes"),
        "{v}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_subscription_receives_publications_until_complete() {
    let server = TestServer::start().await;
    let mut ws = gql_ready(&server, "alice").await;
    subscribe(&mut ws, "s1", NEWS, json!({"n": "news"})).await;
    let v = publish_until_next(&server, &mut ws, "s1", "news", json!({"k": 1})).await;
    assert_eq!(v["type"], "next");
    assert_eq!(v["payload"]["data"]["channel"]["channel"], "news");
    assert_eq!(v["payload"]["data"]["channel"]["data"], json!({"k": 1}));
    // The stream is in order and each publication arrives once.
    let first = v["payload"]["data"]["channel"]["offset"].as_u64().unwrap();
    let p = api_publish(&server, "news", json!({"k": 2})).await;
    let mut last = first;
    loop {
        let v = next_for(&mut ws, "s1").await;
        let offset = v["payload"]["data"]["channel"]["offset"].as_u64().unwrap();
        assert_eq!(offset, last + 1);
        last = offset;
        if offset == p["offset"].as_u64().unwrap() {
            assert_eq!(v["payload"]["data"]["channel"]["data"], json!({"k": 2}));
            break;
        }
    }
    // A ping is answered; after complete nothing more comes for s1.
    send_json(&mut ws, json!({"type": "complete", "id": "s1"})).await;
    send_json(&mut ws, json!({"type": "ping", "payload": {"x": 1}})).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "pong", "payload": {"x": 1}})
    );
    api_publish(&server, "news", json!({"k": 3})).await;
    send_json(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "pong"}),
        "nothing for s1 after complete"
    );
    // A query over the socket: next, then complete.
    subscribe(&mut ws, "q", "{ me { user } }", json!({})).await;
    assert_eq!(
        next_for(&mut ws, "q").await["payload"]["data"]["me"]["user"],
        "alice"
    );
    assert_eq!(
        next_for(&mut ws, "q").await,
        json!({"id": "q", "type": "complete"})
    );
    assert!(
        server
            .metric_shows("wsgate_connections_open{protocol=\"graphql-transport-ws\"} 1")
            .await
    );
    server.stop().await;
}

#[tokio::test]
async fn the_handshake_and_init_are_checked_like_ws() {
    let server = TestServer::with(|c| {
        c.graphql.init_timeout_secs = 1;
        c.origins.allowed = vec!["https://app.example".into()];
    })
    .await;
    // No subprotocol, or the legacy one: 400 saying which to offer.
    let (status, _, body) = expect_rejection(gql_request(&server, None, "")).await;
    assert_eq!(status, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("graphql-transport-ws"),
        "{body}"
    );
    let (status, _, body) = expect_rejection(gql_request(&server, None, "graphql-ws")).await;
    assert_eq!(status, 400);
    assert!(
        body["message"].as_str().unwrap().contains("legacy"),
        "{body}"
    );
    // The origin policy, with or without a token on the upgrade.
    let mut req = gql_request(&server, None, PROTOCOL);
    add_header(&mut req, "origin", "https://evil.example");
    assert_eq!(expect_rejection(req).await.0, 403);
    // A bad token on the upgrade is refused before it (401, as /ws).
    assert_eq!(
        expect_rejection(gql_request(&server, Some("nope"), PROTOCOL))
            .await
            .0,
        401
    );

    // A bad token in connection_init: 4403, no ack.
    let mut ws = gql_connect(&server, None).await;
    send_json(
        &mut ws,
        json!({"type": "connection_init", "payload": {"token": "not-a-jwt"}}),
    )
    .await;
    assert_eq!(close_code(&mut ws).await, Some(4403));
    let mut ws = gql_connect(&server, None).await;
    send_json(&mut ws, json!({"type": "connection_init"})).await;
    assert_eq!(close_code(&mut ws).await, Some(4403), "no token at all");
    // Subscribe before init: 4401.
    let mut ws = gql_connect(&server, None).await;
    subscribe(&mut ws, "1", "{ me { user } }", json!({})).await;
    assert_eq!(close_code(&mut ws).await, Some(4401));
    // No init in time: 4408.
    let mut ws = gql_connect(&server, None).await;
    assert_eq!(close_code(&mut ws).await, Some(4408));
    // Not of the protocol: 4400.
    let mut ws = gql_ready(&server, "alice").await;
    send_json(&mut ws, json!({"type": "start", "id": "1"})).await;
    assert_eq!(close_code(&mut ws).await, Some(4400));
    // A second init: 4429.
    let mut ws = gql_ready(&server, "alice").await;
    send_json(
        &mut ws,
        json!({"type": "connection_init", "payload": {"token": token("alice")}}),
    )
    .await;
    assert_eq!(close_code(&mut ws).await, Some(4429));
    // An id in use: 4409.
    let mut ws = gql_ready(&server, "alice").await;
    subscribe(&mut ws, "dup", NEWS, json!({"n": "news"})).await;
    subscribe(&mut ws, "dup", NEWS, json!({"n": "news"})).await;
    assert_eq!(close_code(&mut ws).await, Some(4409));
    // The token on the upgrade: init needs no payload; Authorization in the
    // payload works too.
    let mut ws = gql_connect(&server, Some(&token("bob"))).await;
    send_json(&mut ws, json!({"type": "connection_init"})).await;
    assert_eq!(next_json(&mut ws).await["type"], "connection_ack");
    let mut ws = gql_connect(&server, None).await;
    let auth = format!("Bearer {}", token("carol"));
    send_json(
        &mut ws,
        json!({"type": "connection_init", "payload": {"Authorization": auth}}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["type"], "connection_ack");
    subscribe(&mut ws, "me", "{ me { user } }", json!({})).await;
    assert_eq!(
        next_for(&mut ws, "me").await["payload"]["data"]["me"]["user"],
        "carol"
    );
    assert!(
        server
            .metric_shows("wsgate_disconnects_total{code=\"4408\"} 1")
            .await
    );
    server.stop().await;
}

#[tokio::test]
async fn a_graphql_connection_counts_against_the_caps() {
    let server = TestServer::with(|c| {
        c.limits.max_connections_per_user = 1;
        c.limits.max_connections = 3;
    })
    .await;
    let _a = gql_ready(&server, "alice").await;
    // Alice's second: the token in init finds her at her cap: 4403.
    let mut second = gql_connect(&server, None).await;
    send_json(
        &mut second,
        json!({"type": "connection_init", "payload": {"token": token("alice")}}),
    )
    .await;
    assert_eq!(close_code(&mut second).await, Some(4403));
    assert!(
        server
            .metric_shows("wsgate_disconnects_total{code=\"4403\"} 1")
            .await
    );
    // On the upgrade, the same cap answers 429 as /ws does.
    assert_eq!(
        expect_rejection(gql_request(&server, Some(&token("alice")), PROTOCOL))
            .await
            .0,
        429
    );
    // /ws and /graphql share the caps: alice's /ws connection is refused.
    assert_eq!(
        expect_rejection(server.request(Some(&token("alice"))))
            .await
            .0,
        429
    );
    // A connection waiting for init holds a slot of the global cap.
    let _w1 = gql_connect(&server, None).await;
    let _b = server.connect("bob").await;
    let (status, _, _) = expect_rejection(gql_request(&server, None, PROTOCOL)).await;
    assert_eq!(status, 503);
    server.stop().await;
}

#[tokio::test]
async fn refusals_are_errors_with_the_ws_codes() {
    let server = TestServer::with(|c| c.limits.max_subscriptions = 2).await;
    let mut ws = gql_ready(&server, "alice").await;
    // Another user's channel: an `error` message (the operation ends).
    subscribe(
        &mut ws,
        "x",
        "subscription { channel(name: \"user:bob\") { offset } }",
        json!({}),
    )
    .await;
    let v = next_for(&mut ws, "x").await;
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["payload"][0]["extensions"]["code"], "forbidden", "{v}");
    // A namespace that does not exist: default deny.
    subscribe(
        &mut ws,
        "y",
        "subscription { channel(name: \"secret:1\") { offset } }",
        json!({}),
    )
    .await;
    assert_eq!(
        next_for(&mut ws, "y").await["payload"][0]["extensions"]["code"],
        "forbidden"
    );
    // A document that does not validate.
    subscribe(&mut ws, "z", "subscription { nope }", json!({})).await;
    let v = next_for(&mut ws, "z").await;
    assert_eq!(
        (v["type"].as_str(), &v["payload"][0]["extensions"]["code"]),
        (Some("error"), &json!("bad_request"))
    );
    // Variables that are not an object: refused, not run without them
    // (as over HTTP).
    subscribe(&mut ws, "v", NEWS, json!(["news"])).await;
    let v = next_for(&mut ws, "v").await;
    assert_eq!(
        (v["type"].as_str(), &v["payload"][0]["extensions"]["code"]),
        (Some("error"), &json!("bad_request")),
        "{v}"
    );
    assert!(
        v["payload"][0]["message"]
            .as_str()
            .unwrap()
            .contains("variables must be a JSON object"),
        "{v}"
    );
    // Someone else's thread events: forbidden, as subscribing to their
    // `thread:<id>` on /ws is.
    let (_, t) = post(
        &server,
        Some(&token("bob")),
        json!({"query": "mutation { createThread { id } }"}),
    )
    .await;
    let bobs = t["data"]["createThread"]["id"].as_str().unwrap();
    subscribe(
        &mut ws,
        "t",
        "subscription($t: ID!) { threadEvents(threadId: $t) { offset } }",
        json!({"t": bobs}),
    )
    .await;
    let v = next_for(&mut ws, "t").await;
    assert_eq!(v["type"], "error");
    assert_eq!(v["payload"][0]["extensions"]["code"], "forbidden", "{v}");
    // At most limits.max_subscriptions at once.
    subscribe(&mut ws, "a", NEWS, json!({"n": "news"})).await;
    subscribe(&mut ws, "b", NEWS, json!({"n": "other"})).await;
    subscribe(&mut ws, "c", NEWS, json!({"n": "third"})).await;
    let v = next_for(&mut ws, "c").await;
    assert_eq!(v["type"], "error");
    assert!(
        v["payload"][0]["message"]
            .as_str()
            .unwrap()
            .contains("max_subscriptions"),
        "{v}"
    );
    // Completing one makes room.
    send_json(&mut ws, json!({"type": "complete", "id": "a"})).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    subscribe(&mut ws, "c", NEWS, json!({"n": "third"})).await;
    let v = publish_until_next(&server, &mut ws, "c", "third", json!({"ok": true})).await;
    assert_eq!(v["payload"]["data"]["channel"]["data"], json!({"ok": true}));
    server.stop().await;
}

/// The `next` of operation `id` for the publication at `offset`.
async fn until_offset(ws: &mut Ws, id: &str, offset: u64) -> Value {
    loop {
        let v = next_for(ws, id).await;
        if v["payload"]["data"]["channel"]["offset"].as_u64() == Some(offset) {
            return v;
        }
    }
}

#[tokio::test]
async fn aliases_do_not_get_past_the_limits() {
    let server = TestServer::with(|c| {
        c.limits.message_burst = 4;
        c.limits.messages_per_minute = 4;
    })
    .await;
    let mut ws = gql_ready(&server, "alice").await;
    // One subscription, one stream: more root fields are refused.
    let many =
        "subscription { a: channel(name: \"x1\") { offset } b: channel(name: \"x2\") { offset } }";
    subscribe(&mut ws, "m", many, json!({})).await;
    let v = next_for(&mut ws, "m").await;
    assert_eq!(v["type"], "error", "{v}");
    assert!(
        v["payload"][0]["message"]
            .as_str()
            .unwrap()
            .contains("exactly one root field"),
        "{v}"
    );
    let hidden = "subscription { ...F } fragment F on SubscriptionRoot { metrics { offset } events { offset } }";
    subscribe(&mut ws, "f", hidden, json!({})).await;
    assert_eq!(next_for(&mut ws, "f").await["type"], "error");
    // Each root field of a mutation is a command of the message rate:
    // more than a burst at once is refused outright…
    let five: String = (0..5)
        .map(|i| format!("t{i}: createThread {{ id }} "))
        .collect();
    subscribe(
        &mut ws,
        "five",
        &format!("mutation {{ {five} }}"),
        json!({}),
    )
    .await;
    let v = next_for(&mut ws, "five").await;
    assert!(
        v["payload"][0]["message"]
            .as_str()
            .unwrap()
            .contains("message_burst"),
        "{v}"
    );
    // …and three take three: the bucket (4, two spent above) is empty.
    let three = "mutation { a: createThread { id } b: createThread { id } c: createThread { id } }";
    subscribe(&mut ws, "three", three, json!({})).await;
    let v = next_for(&mut ws, "three").await;
    assert_eq!(v["payload"][0]["extensions"]["code"], "rate_limited", "{v}");
    let (_, v) = post(
        &server,
        Some(&token("alice")),
        json!({"query": "{ threads { id } }"}),
    )
    .await;
    assert_eq!(
        v["data"]["threads"],
        json!([]),
        "nothing of the refused ones ran"
    );
    server.stop().await;
}

#[tokio::test]
async fn connections_without_a_token_yet_have_their_own_cap() {
    // A tenth of limits.max_connections may wait for connection_init.
    let server = TestServer::with(|c| c.limits.max_connections = 20).await;
    let _w1 = gql_connect(&server, None).await;
    let _w2 = gql_connect(&server, None).await;
    let (status, _, body) = expect_rejection(gql_request(&server, None, PROTOCOL)).await;
    assert_eq!(status, 503);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("connection_init"),
        "{body}"
    );
    // A token on the upgrade still gets in; an init moves a waiting
    // connection to its user, which frees a waiting slot.
    let _t = gql_connect(&server, Some(&token("alice"))).await;
    let mut w1 = _w1;
    send_json(
        &mut w1,
        json!({"type": "connection_init", "payload": {"token": token("bob")}}),
    )
    .await;
    assert_eq!(next_json(&mut w1).await["type"], "connection_ack");
    let _w3 = gql_connect(&server, None).await;
    assert!(
        server
            .metric_shows("wsgate_handshake_rejections_total{reason=\"pending_limit\"} 1")
            .await
    );
    server.stop().await;
}

#[tokio::test]
async fn identical_subscriptions_share_one_resolution() {
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    for user in ["u1", "u2", "u3"] {
        let mut ws = gql_ready(&server, user).await;
        subscribe(&mut ws, user, NEWS, json!({"n": "feed"})).await;
        clients.push(ws);
    }
    // A filter is part of the variables: its own execution.
    let mut filtered = gql_ready(&server, "u4").await;
    subscribe(
        &mut filtered,
        "f",
        NEWS,
        json!({"n": "feed", "f": {"level": "high"}}),
    )
    .await;
    assert!(
        server
            .metric_shows("wsgate_graphql_shared_subscribers 4")
            .await
    );
    assert!(
        server
            .metric_shows("wsgate_graphql_shared_executions 2")
            .await
    );
    // Every subscriber gets the same payload behind its own id.
    let first = publish_until_next(
        &server,
        &mut clients[0],
        "u1",
        "feed",
        json!({"level": "low"}),
    )
    .await;
    let p = api_publish(&server, "feed", json!({"level": "high", "n": 7})).await;
    let target = p["offset"].as_u64().unwrap();
    let a = until_offset(&mut clients[0], "u1", target).await;
    let b = until_offset(&mut clients[1], "u2", target).await;
    let c = until_offset(&mut clients[2], "u3", target).await;
    assert_eq!(a["payload"], b["payload"]);
    assert_eq!(b["payload"], c["payload"]);
    assert_eq!(
        a["payload"]["data"]["channel"]["data"],
        json!({"level": "high", "n": 7})
    );
    let f = until_offset(&mut filtered, "f", target).await;
    assert_eq!(f["payload"], a["payload"]);
    assert!(first["payload"]["data"]["channel"]["offset"].as_u64() < p["offset"].as_u64());
    // A subscriber leaving (complete, or its connection closing) leaves
    // the others their execution; the last one ends it.
    send_json(&mut clients[0], json!({"type": "complete", "id": "u1"})).await;
    drop(clients.remove(1));
    assert!(
        server
            .metric_shows("wsgate_graphql_shared_subscribers 2")
            .await
    );
    api_publish(&server, "feed", json!({"level": "high", "n": 8})).await;
    loop {
        let v = next_for(&mut clients[1], "u3").await;
        if v["payload"]["data"]["channel"]["data"]["n"] == 8 {
            break;
        }
    }
    drop(clients);
    drop(filtered);
    assert!(
        server
            .metric_shows("wsgate_graphql_shared_executions 0")
            .await
    );
    assert!(
        server
            .metric_shows("wsgate_graphql_shared_subscribers 0")
            .await
    );
    server.stop().await;
}

#[tokio::test]
async fn a_run_streams_and_resumes_from_an_offset() {
    let server = TestServer::with(|c| c.agent.echo_delay_ms = 5).await;
    let alice = token("alice");
    let (_, t) = post(
        &server,
        Some(&alice),
        json!({"query": "mutation { createThread { id } }"}),
    )
    .await;
    let thread = t["data"]["createThread"]["id"].as_str().unwrap().to_owned();
    // Where the thread's stream stands before the run: recover from there.
    let q = json!({"query": "query($c: String!) { history(channel: $c) { position { offset epoch } } }", "variables": {"c": format!("thread:{thread}")}});
    let (_, h) = post(&server, Some(&alice), q).await;
    let start = h["data"]["history"]["position"].clone();
    let mut ws = gql_ready(&server, "alice").await;
    let events = "subscription($t: ID!, $s: StreamPositionInput) { threadEvents(threadId: $t, since: $s) { offset epoch type runId payload } }";
    subscribe(&mut ws, "ev", events, json!({"t": thread, "s": start})).await;
    subscribe(
        &mut ws,
        "send",
        "mutation($t: ID) { sendMessage(threadId: $t, content: \"one two three\") { runId } }",
        json!({"t": thread}),
    )
    .await;
    let sent = next_for(&mut ws, "send").await;
    let run_id = sent["payload"]["data"]["sendMessage"]["runId"]
        .as_str()
        .unwrap()
        .to_owned();
    // Every event of the run, in order, to agent_completed.
    let mut seen = Vec::new();
    let mut epoch;
    loop {
        let v = next_for(&mut ws, "ev").await;
        let e = &v["payload"]["data"]["threadEvents"];
        assert_eq!(e["runId"], run_id.as_str(), "{v}");
        epoch = e["epoch"].as_str().map(str::to_owned);
        seen.push((
            e["offset"].as_u64().unwrap(),
            e["type"].as_str().unwrap().to_owned(),
        ));
        if e["type"] == "agent_completed" {
            assert_eq!(e["payload"]["status"], "completed");
            break;
        }
    }
    assert_eq!(seen[0].1, "agent_started");
    assert!(seen.iter().any(|(_, t)| t == "partial_result"));
    assert!(
        seen.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "in order, none missing: {seen:?}"
    );
    assert_eq!(seen[0].0, start["offset"].as_u64().unwrap() + 1);
    // Resuming after the third event gets exactly the rest.
    let (after, _) = seen[2].clone();
    let mut again = gql_ready(&server, "alice").await;
    subscribe(
        &mut again,
        "r",
        events,
        json!({"t": thread, "s": {"offset": after, "epoch": epoch.unwrap()}}),
    )
    .await;
    let mut rest = Vec::new();
    while rest.len() < seen.len() - 3 {
        let v = next_for(&mut again, "r").await;
        rest.push(
            v["payload"]["data"]["threadEvents"]["offset"]
                .as_u64()
                .unwrap(),
        );
    }
    assert_eq!(rest, seen[3..].iter().map(|(o, _)| *o).collect::<Vec<_>>());
    // The run is recorded; stopping a run that ended is not_found.
    let q = json!({"query": "query($t: ID!) { runs(threadId: $t) { id status } }", "variables": {"t": thread}});
    let (_, v) = post(&server, Some(&token("alice")), q).await;
    assert_eq!(
        v["data"]["runs"],
        json!([{"id": run_id, "status": "completed"}])
    );
    let stop =
        json!({"query": "mutation($r: ID!) { stopRun(runId: $r) }", "variables": {"r": run_id}});
    let (_, v) = post(&server, Some(&token("alice")), stop).await;
    assert_eq!(code(&v), "not_found", "{v}");
    server.stop().await;
}

#[tokio::test]
async fn token_expiry_closes_4001() {
    let server = TestServer::start().await;
    let mut ws = gql_connect(&server, None).await;
    send_json(
        &mut ws,
        json!({"type": "connection_init", "payload": {"token": token_with_ttl("alice", 2)}}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["type"], "connection_ack");
    assert_eq!(close_code(&mut ws).await, Some(4001));
    server.stop().await;
}

#[tokio::test]
async fn a_subscriber_that_does_not_read_is_closed_4009() {
    let server = TestServer::with(|c| c.limits.outbound_queue_bytes = 64 * 1024).await;
    // A small receive window, so the server's queue is what fills.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(
        gql_request(&server, Some(&token("slow")), PROTOCOL),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap();
    send_json(&mut slow, json!({"type": "connection_init"})).await;
    assert_eq!(next_json(&mut slow).await["type"], "connection_ack");
    subscribe(&mut slow, "s", NEWS, json!({"n": "flood"})).await;
    let mut fine = gql_ready(&server, "fine").await;
    subscribe(&mut fine, "s", NEWS, json!({"n": "flood"})).await;
    publish_until_next(&server, &mut fine, "s", "flood", json!({"warm": 1})).await;
    let blob = "x".repeat(8 * 1024);
    for i in 0..2000 {
        api_publish(&server, "flood", json!({"i": i, "blob": blob})).await;
        if server
            .metrics_text()
            .await
            .contains("wsgate_disconnects_total{code=\"4009\"} 1")
        {
            break;
        }
        // The reader keeps up, and is not affected.
        let _ = next_for(&mut fine, "s").await;
    }
    assert!(
        server
            .metric_shows("wsgate_disconnects_total{code=\"4009\"} 1")
            .await
    );
    // The other subscriber of the same shared execution goes on.
    let p = api_publish(&server, "flood", json!({"after": true})).await;
    loop {
        let v = next_for(&mut fine, "s").await;
        if v["payload"]["data"]["channel"]["offset"].as_u64() == p["offset"].as_u64() {
            break;
        }
    }
    server.stop().await;
}

fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/graphql-ws")
}

/// The stock npm `graphql-ws` client over `ws`, unmodified.
#[tokio::test]
async fn the_npm_graphql_ws_client_works_unmodified() {
    assert!(
        node_dir().join("node_modules/graphql-ws").is_dir(),
        "run `npm ci --prefix tests/graphql-ws` (scripts/test.sh does it)"
    );
    let server = TestServer::start().await;
    let mut child = Command::new("node")
        .arg(node_dir().join("client.mjs"))
        .args([
            &server.url("/graphql"),
            &token("node-user"),
            &server.http("/api/publish"),
            &API_KEY.to_owned(),
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut events = Vec::new();
    while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(40), lines.next_line())
        .await
        .expect("the script reports within 40 s")
    {
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_ne!(v["event"], "error", "{v}");
        events.push(v);
    }
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "connected",
            "next",
            "completed",
            "refused",
            "me",
            "bad_token_closed"
        ]
    );
    assert_eq!(
        events[1]["payload"]["data"]["channel"]["channel"],
        "gqlnews"
    );
    assert_eq!(
        events[1]["payload"]["data"]["channel"]["data"]["from"],
        "graphql-ws"
    );
    assert_eq!(events[3]["errors"][0]["extensions"]["code"], "forbidden");
    assert_eq!(events[4]["payload"]["data"]["me"]["user"], "node-user");
    assert_eq!(events[5]["code"], 4403);
    let status = child.wait().await.unwrap();
    assert!(status.success());
    server.stop().await;
}
