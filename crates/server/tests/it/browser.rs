//! A real browser against the real server: Debian's Chromium, driven by
//! `tests/browser/deflate.mjs` (playwright-core). `scripts/test.sh` and
//! `.ci/run` install both; without them this test fails and says how to
//! install them.

use std::process::Stdio;
use std::time::Duration;

use axum::response::Html;
use axum::routing::get;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::harness::*;

/// Serves a blank page, so the browser has a real `http://` origin.
async fn page_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/",
        get(|| async { Html("<!doctype html><title>wsgate browser test</title>") }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test]
async fn chromium_agrees_deflate_and_exchanges_compressed_messages() {
    let (chromium, browser) = browser_setup();
    let page = page_server().await;
    let origin = page.clone();
    let server = TestServer::with(|c| {
        c.transport.compression = true;
        c.origins.allowed = vec![origin];
    })
    .await;

    let mut child = Command::new("node")
        .arg(browser.join("deflate.mjs"))
        .args([&page, &server.url("/ws"), &token("browser-user")])
        .env("CHROMIUM", &chromium)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let subscribed = next_report(&mut lines, "event", 60).await;
    assert_eq!(subscribed["event"], "subscribed", "{subscribed}");
    assert_eq!(subscribed["protocol"], "wsgate.v1.json");
    assert_eq!(
        subscribed["extensions"],
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    );
    // Large enough to be sent compressed (over compression_min_bytes).
    let data = json!({"rows": (0..50).map(|i| json!({"id": i, "site": "eu-west", "ok": true})).collect::<Vec<_>>()});
    api_publish(&server, "browser", data.clone()).await;

    let mut got_message = false;
    let mut got_pong = false;
    while !(got_message && got_pong) {
        let v = next_report(&mut lines, "event", 60).await;
        match v["event"].as_str() {
            Some("message") => {
                assert_eq!(v["data"], data);
                got_message = true;
            }
            Some("pong") => {
                assert_eq!(v["id"], "big");
                got_pong = true;
            }
            other => panic!("unexpected {other:?}: {v}"),
        }
    }
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the browser script exits")
        .unwrap();
    assert!(status.success());
    server.stop().await;
}
