//! SPEC §4: the protocol on an open connection, its limits and close codes.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

#[tokio::test]
async fn connected_frame_and_ping_correlation() {
    let server = TestServer::start().await;
    let (mut ws, connected) = server.connect("alice").await;
    let p = &connected["payload"];
    assert_eq!(p["user"], "alice");
    assert_eq!(p["protocol"], "wsgate.v1.json");
    assert_eq!(p["heartbeat_secs"], 30);
    assert_eq!(p["max_message_bytes"], 8192);
    assert_eq!(p["messages_per_minute"], 30);
    assert_eq!(p["message_burst"], 10);
    assert!(p["expires_at"].as_u64().unwrap() > now());
    assert!(p["connection_id"].as_str().unwrap().len() >= 8);

    send_json(&mut ws, json!({"type": "ping", "id": "42"})).await;
    let pong = next_json(&mut ws).await;
    assert_eq!(pong["type"], "pong");
    assert_eq!(pong["id"], "42");

    send_json(&mut ws, json!({"type": "teleport", "id": "7"})).await;
    let err = next_json(&mut ws).await;
    assert_eq!(err["type"], "error");
    assert_eq!(err["id"], "7");
    assert_eq!(err["payload"]["code"], "unknown_type");

    send_json(
        &mut ws,
        json!({"type": "ping", "id": "8", "payload": [1, 2]}),
    )
    .await;
    let err = next_json(&mut ws).await;
    assert_eq!(err["payload"]["code"], "invalid_message");

    // Still open after both errors.
    send_json(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(next_json(&mut ws).await["type"], "pong");
    server.stop().await;
}

#[tokio::test]
async fn invalid_frames_close_1003() {
    let server = TestServer::start().await;
    for bad in ["not json", "[1,2,3]", "{\"type\": 5}", "{\"id\": \"x\"}"] {
        let (mut ws, _) = server.connect("bad").await;
        ws.send(Message::Text(bad.into())).await.unwrap();
        assert_eq!(expect_close(&mut ws).await, 1003, "{bad}");
    }
    // A binary frame on a JSON connection is not the protocol either.
    let (mut ws, _) = server.connect("bad").await;
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(expect_close(&mut ws).await, 1003);
}

#[tokio::test]
async fn oversized_frame_closes_1009() {
    let server = TestServer::with(|c| c.limits.max_message_bytes = 1024).await;
    let (mut ws, _) = server.connect("big").await;
    // Exactly at the limit is fine.
    let pad = "x".repeat(1024 - r#"{"type":"ping","id":""}"#.len());
    send_json(&mut ws, json!({"type": "ping", "id": pad})).await;
    assert_eq!(next_json(&mut ws).await["type"], "pong");
    let pad = "x".repeat(2000);
    send_json(&mut ws, json!({"type": "ping", "id": pad})).await;
    assert_eq!(expect_close(&mut ws).await, 1009);
}

#[tokio::test]
async fn rate_limit_drops_then_closes_1008() {
    let server = TestServer::start().await;
    let (mut ws, _) = server.connect("fast").await;
    // Burst 10 passes; the next 9 are dropped with an error; the 10th drop
    // in a row closes the connection.
    for i in 0..20 {
        send_json(&mut ws, json!({"type": "ping", "id": i.to_string()})).await;
    }
    let mut pongs = 0;
    let mut limited = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                match v["type"].as_str().unwrap() {
                    "pong" => pongs += 1,
                    "error" => {
                        assert_eq!(v["payload"]["code"], "rate_limited");
                        let retry = v["payload"]["retry_after_ms"].as_u64().unwrap();
                        assert!(retry > 0 && retry <= 2000, "{retry}");
                        // The dropped command's id: its request fails at once.
                        limited.push(v["id"].as_str().unwrap().to_owned());
                    }
                    other => panic!("{other}"),
                }
            }
            Some(Ok(Message::Close(Some(f)))) => {
                assert_eq!(u16::from(f.code), 1008);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(pongs, 10);
    let dropped: Vec<String> = (10..19).map(|i| i.to_string()).collect();
    assert_eq!(limited, dropped);
}

#[tokio::test]
async fn rate_limit_recovers_when_the_client_slows_down() {
    let server = TestServer::with(|c| {
        c.limits.messages_per_minute = 600; // one token every 100 ms
        c.limits.message_burst = 2;
    })
    .await;
    let (mut ws, _) = server.connect("steady").await;
    for _ in 0..3 {
        send_json(&mut ws, json!({"type": "ping"})).await;
    }
    assert_eq!(next_json(&mut ws).await["type"], "pong");
    assert_eq!(next_json(&mut ws).await["type"], "pong");
    assert_eq!(next_json(&mut ws).await["payload"]["code"], "rate_limited");
    tokio::time::sleep(Duration::from_millis(250)).await;
    send_json(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(next_json(&mut ws).await["type"], "pong");
}

#[tokio::test]
async fn heartbeat_timeout_closes_4002() {
    let server = TestServer::with(|c| {
        c.limits.heartbeat_secs = 1;
        c.limits.heartbeat_timeout_secs = 2;
    })
    .await;
    let (mut ws, _) = server.connect("sleepy").await;
    // Not reading means tungstenite never answers the server's pings.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let mut saw_ping = false;
    let code = loop {
        match ws.next().await {
            Some(Ok(Message::Ping(_))) => saw_ping = true,
            Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    };
    assert!(saw_ping, "the server pinged before giving up");
    assert_eq!(code, 4002);
}

#[tokio::test]
async fn answering_pings_keeps_the_connection_open() {
    let server = TestServer::with(|c| {
        c.limits.heartbeat_secs = 1;
        c.limits.heartbeat_timeout_secs = 2;
    })
    .await;
    let (mut ws, _) = server.connect("awake").await;
    // Reading lets tungstenite answer pings; nothing but pings arrives.
    let until = tokio::time::Instant::now() + Duration::from_millis(3500);
    let mut pings = 0;
    while let Ok(msg) = tokio::time::timeout_at(until, ws.next()).await {
        match msg {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("no close while pongs flow: {other:?}"),
        }
    }
    assert!(pings >= 2, "{pings}");
    send_json(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(next_json(&mut ws).await["type"], "pong");
}

#[tokio::test]
async fn token_expiry_warns_then_closes_4001() {
    let server = TestServer::start().await;
    let t = token_with_ttl("exp", 3);
    let (mut ws, _) = tokio_tungstenite::connect_async(server.request(Some(&t)))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "connected");
    // Less than 60 s left: the warning comes at once.
    let warn = next_json(&mut ws).await;
    assert_eq!(warn["type"], "token_expiring");
    assert!(warn["payload"]["expires_at"].as_u64().unwrap() <= now() + 3);
    assert_eq!(expect_close(&mut ws).await, 4001);
}

#[tokio::test]
async fn refresh_token_extends_the_connection() {
    let server = TestServer::start().await;
    let t = token_with_ttl("ref", 2);
    let (mut ws, _) = tokio_tungstenite::connect_async(server.request(Some(&t)))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "connected");
    assert_eq!(next_json(&mut ws).await["type"], "token_expiring");

    // Another user's token is refused.
    send_json(
        &mut ws,
        json!({"type": "refresh_token", "id": "r0", "payload": {"token": token("mallory")}}),
    )
    .await;
    let err = next_json(&mut ws).await;
    assert_eq!(err["payload"]["code"], "forbidden");
    // Garbage is refused.
    send_json(
        &mut ws,
        json!({"type": "refresh_token", "id": "r1", "payload": {"token": "x.y.z"}}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["payload"]["code"], "bad_request");

    let fresh = token_with_ttl("ref", 3600);
    send_json(
        &mut ws,
        json!({"type": "refresh_token", "id": "r2", "payload": {"token": fresh}}),
    )
    .await;
    let ok = next_json(&mut ws).await;
    assert_eq!(ok["type"], "token_refreshed");
    assert_eq!(ok["id"], "r2");
    assert!(ok["payload"]["expires_at"].as_u64().unwrap() > now() + 3000);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    send_json(&mut ws, json!({"type": "ping", "id": "alive"})).await;
    assert_eq!(next_json(&mut ws).await["id"], "alive");
}

#[tokio::test]
async fn msgpack_round_trip() {
    let server = TestServer::start().await;
    let mut req = server.request(Some(&token("mp")));
    add_header(&mut req, "sec-websocket-protocol", "wsgate.v1.msgpack");
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(
        resp.headers().get("sec-websocket-protocol").unwrap(),
        "wsgate.v1.msgpack"
    );
    let read = |m: Message| -> Value {
        match m {
            Message::Binary(b) => rmp_serde::from_slice(&b).unwrap(),
            other => panic!("expected binary, got {other:?}"),
        }
    };
    let connected = read(ws.next().await.unwrap().unwrap());
    assert_eq!(connected["type"], "connected");
    assert_eq!(connected["payload"]["protocol"], "wsgate.v1.msgpack");
    let ping = rmp_serde::to_vec_named(&json!({"type": "ping", "id": "m1"})).unwrap();
    ws.send(Message::Binary(ping.into())).await.unwrap();
    let pong = read(ws.next().await.unwrap().unwrap());
    assert_eq!(pong["type"], "pong");
    assert_eq!(pong["id"], "m1");
    // A msgpack value that is not a map closes 1003.
    ws.send(Message::Binary(rmp_serde::to_vec(&[1, 2]).unwrap().into()))
        .await
        .unwrap();
    assert_eq!(expect_close(&mut ws).await, 1003);
}

#[tokio::test]
async fn server_api_disconnect_closes_4003() {
    let server = TestServer::start().await;
    let (mut a1, _) = server.connect("kick").await;
    let (mut a2, _) = server.connect("kick").await;
    let (mut b, _) = server.connect("stay").await;
    let client = reqwest::Client::new();
    let url = server.http("/api/users/kick/disconnect");
    let resp = client.post(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401, "no API key");
    let resp = client
        .post(&url)
        .header("x-api-key", "wrong-key-wrong-key")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "wrong API key");
    let resp = client
        .post(&url)
        .header("x-api-key", API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["disconnected"], 2);
    assert_eq!(expect_close(&mut a1).await, 4003);
    assert_eq!(expect_close(&mut a2).await, 4003);
    send_json(&mut b, json!({"type": "ping"})).await;
    assert_eq!(next_json(&mut b).await["type"], "pong");
}

#[tokio::test]
async fn client_that_does_not_read_is_closed_4009() {
    let server = TestServer::with(|c| {
        c.limits.messages_per_minute = 1_000_000;
        c.limits.message_burst = 1_000_000;
        c.limits.outbound_queue_bytes = 256 * 1024;
    })
    .await;
    let (ws, _) = server.connect_small_window("slow").await;
    let (mut tx, mut rx) = ws.split();
    // Every ping's pong echoes an 8 KB id. The client sends and never
    // reads, so socket buffers fill and the server's queue overflows.
    let id = "i".repeat(8000);
    let writer = tokio::spawn(async move {
        for _ in 0..4000 {
            let frame = json!({"type": "ping", "id": id}).to_string();
            // Blocked this long: the server has stopped reading (it does
            // once it closes); a busy server merely reading slowly is not.
            let send =
                tokio::time::timeout(Duration::from_secs(2), tx.send(Message::Text(frame.into())));
            match send.await {
                Ok(Ok(())) => {}
                _ => break, // blocked or closed: the server stopped reading
            }
        }
        tx
    });
    let _tx = writer.await.unwrap();
    let code = close_code(&mut rx).await;
    // The close frame reaches a client that reads within CLOSE_LINGER (2 s)
    // of the close; this one reads only once its writes block, which can
    // take longer, and then the connection is gone without it — by design.
    // What the server did is in the count.
    assert!(matches!(code, None | Some(4009)), "{code:?}");
    let counted = server
        .metric_shows("wsgate_disconnects_total{code=\"4009\"} 1")
        .await;
    assert!(counted, "4009 counted in wsgate_disconnects_total");
}

#[tokio::test]
async fn shutdown_sends_1001() {
    let server = TestServer::start().await;
    let (mut a, _) = server.connect("s1").await;
    let (mut b, _) = server.connect("s2").await;
    server.shutdown.cancel();
    assert_eq!(expect_close(&mut a).await, 1001);
    assert_eq!(expect_close(&mut b).await, 1001);
    server.stop().await;
}
