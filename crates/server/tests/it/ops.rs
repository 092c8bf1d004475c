//! Operations endpoints: health, readiness, metrics, client config, admin
//! stats, OpenAPI, security headers.

use serde_json::Value;

use crate::harness::*;

#[tokio::test]
async fn health_ready_and_config() {
    let server = TestServer::start().await;
    let (status, body) = get_json(&server.http("/health"), &[]).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = get_json(&server.http("/ready"), &[]).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get_json(&server.http("/ws/config"), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body["heartbeat_secs"], 30);
    assert_eq!(body["max_message_bytes"], 8192);
    assert_eq!(body["protocols"][0], "wsgate.v1.json");
    assert_eq!(body["graphql"]["protocol"], "graphql-transport-ws");
    assert_eq!(
        body["auth_transports"],
        serde_json::json!(["header", "subprotocol"])
    );
    let (status, body) = get_json(&server.http("/nope"), &[]).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn security_headers_on_http_not_on_upgrade() {
    let server = TestServer::start().await;
    let resp = reqwest::get(server.http("/health")).await.unwrap();
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    assert!(resp.headers().contains_key("referrer-policy"));
    let (_, resp) = tokio_tungstenite::connect_async(server.request(Some(&token("h"))))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    assert!(!resp.headers().contains_key("x-content-type-options"));
    assert!(!resp.headers().contains_key("x-frame-options"));
}

#[tokio::test]
async fn stats_need_admin_or_api_key() {
    let server = TestServer::start().await;
    let _c = server.connect("someone").await;
    let url = server.http("/ws/stats");
    let (status, body) = get_json(&url, &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let user = format!("Bearer {}", token("plain"));
    let (status, _) = get_json(&url, &[("authorization", &user)]).await;
    assert_eq!(status, 403);
    let mut claims = claims("root", 600);
    claims.roles = vec!["admin".into()];
    let admin = format!("Bearer {}", wsgate::auth::sign_hs256(SECRET, &claims));
    let (status, body) = get_json(&url, &[("authorization", &admin)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["connections"], 1);
    let (status, body) = get_json(&url, &[("x-api-key", API_KEY)]).await;
    assert_eq!(status, 200);
    assert_eq!(body["users"], 1);
}

#[tokio::test]
async fn metrics_have_bounded_labels_and_no_secrets() {
    let server = TestServer::start().await;
    let t = token("metric-user");
    let (mut ws, _) = server.connect("metric-user").await;
    send_json(&mut ws, serde_json::json!({"type": "ping"})).await;
    next_json(&mut ws).await;
    send_json(&mut ws, serde_json::json!({"type": "drop-table-users"})).await;
    next_json(&mut ws).await;
    let text = server.metrics_text().await;
    for name in [
        "wsgate_connections_active 1",
        "wsgate_connections_total{result=\"accepted\"} 1",
        "wsgate_messages_in_total{type=\"ping\"} 1",
        "wsgate_messages_in_total{type=\"unknown\"} 1",
        "wsgate_messages_out_total{type=\"pong\"} 1",
        "wsgate_errors_total{code=\"unknown_type\"} 1",
        "wsgate_connection_duration_seconds",
        "wsgate_publish_write_latency_seconds",
    ] {
        assert!(text.contains(name), "missing {name}\n{text}");
    }
    assert!(!text.contains("metric-user"));
    assert!(!text.contains("drop-table-users"));
    assert!(!text.contains(&t));

    // A client that closes is counted as `peer`, not under a code the
    // server never sent.
    ws.close(None).await.unwrap();
    let mut counted = false;
    for _ in 0..100 {
        if server
            .metrics_text()
            .await
            .contains("wsgate_disconnects_total{code=\"peer\"} 1")
        {
            counted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(counted);
}

#[tokio::test]
async fn openapi_lists_every_route() {
    let server = TestServer::start().await;
    let (status, doc) = get_json(&server.http("/api/openapi.json"), &[]).await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for p in [
        "/ws",
        "/health",
        "/ready",
        "/metrics",
        "/ws/config",
        "/ws/stats",
        "/api/users/{user}/disconnect",
        "/api/openapi.json",
        "/graphql",
        "/ws/metrics",
        "/ws/events",
        "/ws/stream/{channel}",
        "/api/publish",
        "/api/broadcast",
        "/api/channels/{channel}/presence",
        "/api/channels/{channel}/history",
        "/api/threads",
        "/api/threads/{id}",
        "/api/threads/{id}/messages",
        "/api/threads/{id}/runs",
    ] {
        assert!(paths.contains(&p), "{p} missing from OpenAPI");
    }
    // And every documented path answers something other than the 404
    // fallback (a route's own 404, like `/dashboard/dev.json` outside
    // `--dev`, says something else).
    for p in paths {
        let url = server.http(
            &p.replace("{user}", "x")
                .replace("{channel}", "news")
                .replace("{file}", "app.js"),
        );
        let resp = reqwest::Client::new().get(&url).send().await.unwrap();
        let status = resp.status().as_u16();
        if status == 404 {
            let body: Value = resp.json().await.unwrap();
            assert_ne!(
                body["message"], "no such endpoint",
                "{p} is documented but not routed"
            );
        }
    }
}

/// `wsgate_runtime_alive_tasks` follows the connections: up while clients
/// are connected, back to its idle value when they leave (what the soak
/// checks for leaks).
#[tokio::test]
async fn alive_tasks_return_to_idle_when_clients_leave() {
    let server = TestServer::start().await;
    let tasks = |text: String| -> i64 {
        text.lines()
            .find_map(|l| l.strip_prefix("wsgate_runtime_alive_tasks "))
            .expect("the gauge is exported")
            .parse()
            .unwrap()
    };
    let idle = tasks(server.metrics_text().await);
    let mut clients = Vec::new();
    for i in 0..10 {
        clients.push(server.connect(&format!("tasks-{i}")).await.0);
    }
    let busy = tasks(server.metrics_text().await);
    // At least a task per connection; the scrapes' own HTTP connections
    // may linger a moment in either count, hence the margin.
    assert!(busy >= idle + 8, "idle {idle}, with 10 clients {busy}");
    drop(clients);
    let mut now = busy;
    for _ in 0..50 {
        now = tasks(server.metrics_text().await);
        if now <= idle {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(now <= idle, "idle {idle}, after the clients left {now}");
    server.stop().await;
}
