//! Regression tests of an outside security review (issue #13): each one
//! failed on the code before its fix.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

/// Reads until the server closes the socket; how long that took, or `None`
/// if it was still open after `within`.
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((started + within).into(), tcp.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn unfinished_requests_silent_and_idle_sockets_are_closed_after_the_header_timeout() {
    let server = TestServer::with(|c| c.limits.header_timeout_secs = 1).await;
    // Half an upgrade request.
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // A socket that never sends a byte.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    // A keep-alive connection idle after one answered request.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    for (what, tcp) in [
        ("half", &mut half),
        ("silent", &mut silent),
        ("idle", &mut idle),
    ] {
        let took = closed_within(tcp, Duration::from_secs(5)).await;
        assert!(took.is_some(), "{what} socket still open after 5 s");
    }
    server.stop().await;
}

#[tokio::test]
async fn connections_not_yet_upgraded_are_capped_per_address() {
    let server = TestServer::with(|c| c.limits.pending_connections_per_ip = 4).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(b"GET /ws HTTP/1.1\r\n").await.unwrap();
        held.push(tcp);
    }
    // Let the server accept the four.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fifth = TcpStream::connect(server.addr).await.unwrap();
    let took = closed_within(&mut fifth, Duration::from_secs(2)).await;
    assert!(
        took.is_some(),
        "the fifth pending connection is closed at once"
    );
    // A slot given back lets the next client in.
    held.pop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = get_json(&server.http("/health"), &[]).await;
    assert_eq!(status, 200, "{body}");
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(server
        .metrics_text()
        .await
        .contains("wsgate_handshake_rejections_total{reason=\"pending_connections\"} 1"));
    server.stop().await;
}

#[tokio::test]
async fn at_the_global_pending_cap_the_oldest_silent_socket_makes_room() {
    // Issue #11's slowloris from many addresses: silent sockets filled the
    // global cap and every new client was refused until the header timeout.
    let server = TestServer::with(|c| {
        c.limits.max_pending_connections = 8;
        c.limits.header_timeout_secs = 60;
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(TcpStream::connect(server.addr).await.unwrap());
        // Admission order is connect order.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A legitimate client still gets through, at once.
    let started = Instant::now();
    let (_ws, connected) = server.connect("alice").await;
    assert_eq!(connected["type"], "connected");
    assert!(started.elapsed() < Duration::from_secs(2));
    // It took the oldest silent socket's place; the newest is untouched.
    let oldest = closed_within(&mut silent[0], Duration::from_secs(2)).await;
    assert!(oldest.is_some(), "the oldest silent socket is closed");
    let newest = closed_within(&mut silent[7], Duration::from_millis(300)).await;
    assert!(newest.is_none(), "the newest silent socket stays open");
    assert!(server
        .metrics_text()
        .await
        .contains("wsgate_handshake_rejections_total{reason=\"pending_evicted\"}"));
    server.stop().await;
}

#[tokio::test]
async fn shutdown_does_not_wait_for_half_sent_requests() {
    let server = TestServer::with(|c| c.shutdown_grace_secs = 20).await;
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    server.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited {:?} for connections with no request in progress",
        started.elapsed()
    );
    assert!(closed_within(&mut half, Duration::from_secs(1))
        .await
        .is_some());
}

#[tokio::test]
async fn configured_issuer_and_audience_are_required_at_the_handshake() {
    let server = TestServer::with(|c| {
        c.auth.issuer = Some("https://idp.example".into());
        c.auth.audience = Some("wsgate".into());
    })
    .await;
    let exp = now() + 600;
    let sign =
        |claims: Value| sign_custom(jsonwebtoken::Algorithm::HS256, SECRET.as_bytes(), &claims);
    for (claims, what) in [
        (json!({"sub": "u", "exp": exp}), "no iss, no aud"),
        (
            json!({"sub": "u", "exp": exp, "iss": null, "aud": null}),
            "null",
        ),
        (
            json!({"sub": "u", "exp": exp, "iss": 1, "aud": 2}),
            "numbers",
        ),
        (
            json!({"sub": "u", "exp": exp, "iss": "https://idp.example"}),
            "no aud",
        ),
        (json!({"sub": "u", "exp": exp, "aud": "wsgate"}), "no iss"),
    ] {
        let (status, _, body) = expect_rejection(server.request(Some(&sign(claims)))).await;
        assert_eq!(status, 401, "{what}: {body}");
    }
    let good =
        sign(json!({"sub": "u", "exp": exp, "iss": "https://idp.example", "aud": ["x", "wsgate"]}));
    tokio_tungstenite::connect_async(server.request(Some(&good)))
        .await
        .expect("matching iss and aud");
    server.stop().await;
}

#[tokio::test]
async fn an_enormous_exp_is_refused_at_the_handshake_and_on_refresh() {
    let server = TestServer::start().await;
    let sign = |exp: u64| {
        sign_custom(
            jsonwebtoken::Algorithm::HS256,
            SECRET.as_bytes(),
            &json!({"sub": "big", "exp": exp}),
        )
    };
    let (status, _, body) = expect_rejection(server.request(Some(&sign(u64::MAX)))).await;
    assert_eq!(status, 401, "{body}");

    let (mut ws, _) = server.connect("big").await;
    send_json(
        &mut ws,
        json!({"type": "refresh_token", "id": "r", "payload": {"token": sign(u64::MAX)}}),
    )
    .await;
    let reply = next_json(&mut ws).await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["payload"]["code"], "bad_request");
    // Still open, and the gauge counts it once.
    send_json(&mut ws, json!({"type": "ping", "id": "p"})).await;
    assert_eq!(next_json(&mut ws).await["type"], "pong");
    assert!(server
        .metrics_text()
        .await
        .contains("wsgate_connections_active 1\n"));
    ws.close(None).await.unwrap();
    drop(ws);
    let mut active = String::new();
    for _ in 0..50 {
        active = server.metrics_text().await;
        if active.contains("wsgate_connections_active 0\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(active.contains("wsgate_connections_active 0\n"));
    server.stop().await;
}

#[tokio::test]
async fn malformed_upgrade_requests_count_against_the_per_ip_rate() {
    let server = TestServer::with(|c| c.limits.handshakes_per_minute_per_ip = 3).await;
    for _ in 0..3 {
        let resp = reqwest::get(server.http("/ws")).await.unwrap();
        assert_eq!(resp.status(), 400);
    }
    let resp = reqwest::get(server.http("/ws")).await.unwrap();
    assert_eq!(resp.status(), 429);
    let (status, _, _) = expect_rejection(server.request(Some(&token("late")))).await;
    assert_eq!(status, 429);
    server.stop().await;
}

#[tokio::test]
async fn a_dropped_tcp_connection_is_counted_as_peer_not_1002() {
    let server = TestServer::start().await;
    let (ws, _) = server.connect("dropper").await;
    // No close frame: the TCP connection just goes away.
    drop(ws);
    let mut text = String::new();
    for _ in 0..50 {
        text = server.metrics_text().await;
        if text.contains("wsgate_disconnects_total{code=\"peer\"} 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        text.contains("wsgate_disconnects_total{code=\"peer\"} 1"),
        "{text}"
    );
    assert!(!text.contains("wsgate_disconnects_total{code=\"1002\"}"));
    server.stop().await;
}

#[tokio::test]
async fn an_origin_with_another_scheme_is_refused_even_for_the_own_host() {
    let server = TestServer::start().await;
    for (origin, allowed) in [
        (format!("http://{}", server.addr), true),
        (format!("https://{}", server.addr), true),
        (format!("ftp://{}", server.addr), false),
        (format!("chrome-extension://{}", server.addr), false),
    ] {
        let mut req = server.request(Some(&token("o")));
        add_header(&mut req, "origin", &origin);
        match tokio_tungstenite::connect_async(req).await {
            Ok(_) => assert!(allowed, "{origin} was let in"),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert!(!allowed, "{origin} refused");
                assert_eq!(resp.status(), 403);
            }
            Err(e) => panic!("{e}"),
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn framework_rejections_are_json_errors() {
    let server = TestServer::start().await;
    let client = reqwest::Client::new();
    let check = |resp: reqwest::Response, status: u16, code: &'static str| async move {
        assert_eq!(resp.status().as_u16(), status);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], code, "{body}");
        assert!(!body["message"].as_str().unwrap().is_empty(), "{body}");
    };
    // A path segment that is not UTF-8.
    let resp = client
        .get(server.http("/ws/stream/%FF"))
        .send()
        .await
        .unwrap();
    check(resp, 400, "bad_request").await;
    // A method the route does not have.
    let resp = client.post(server.http("/health")).send().await.unwrap();
    check(resp, 405, "method_not_allowed").await;
    // A body over the server API's limit.
    let big = json!({"channel": "news", "data": "x".repeat(2 << 20)}).to_string();
    let resp = client
        .post(server.http("/api/publish"))
        .header("x-api-key", API_KEY)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    check(resp, 413, "too_large").await;
    server.stop().await;
}

/// A 1 MB token, in the `Authorization` header or the subprotocol: refused
/// at the HTTP layer (the request head is larger than the server reads)
/// before any decoding, quickly, and the server goes on serving.
#[tokio::test]
async fn a_token_with_a_megabyte_header_is_refused_quickly() {
    let server = TestServer::start().await;
    let huge = format!("{}.{}.sig", "A".repeat(1 << 20), "B".repeat(16));
    for header in ["authorization", "sec-websocket-protocol"] {
        let value = if header == "authorization" {
            format!("Bearer {huge}")
        } else {
            format!("wsgate.v1.json, bearer.{huge}")
        };
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        let head = format!(
            "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             {header}: {value}\r\n\r\n"
        );
        let started = Instant::now();
        // The server may close before reading it all: a failed write is
        // part of being refused.
        let _ = tcp.write_all(head.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{header}: {:?}",
            started.elapsed()
        );
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 431") || text.starts_with("HTTP/1.1 400"),
            "{header}: {text}"
        );
        assert!(!text.starts_with("HTTP/1.1 101"), "{header}");
    }
    // Other clients are unaffected.
    let (mut ws, _) = server.connect("after-huge").await;
    assert_eq!(call(&mut ws, "ping", "p", json!({})).await["type"], "pong");
    server.stop().await;
}
