//! Chaos under load (issue 11): PostgreSQL and Redis cut and restored while
//! clients write. `/ready` tracks the cut, writes during it are refused
//! with `unavailable` (never acknowledged and then lost), nothing the
//! server acknowledged is lost, and everything flows again without a
//! restart.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_util::sync::CancellationToken;
use wsgate::config::{Config, NamespaceConfig, Secret};

use crate::harness::*;

/// How many clients write at once.
const WRITERS: usize = 6;

/// Polls `/ready` until it answers `want` (within 10 s); how long it took.
async fn ready_becomes(server: &TestServer, want: u16) -> Duration {
    let started = Instant::now();
    loop {
        let (status, body) = get_json(&server.http("/ready"), &[]).await;
        if status == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "/ready stayed {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What one writer saw: what the server acknowledged (with when), and the
/// error codes of what it refused.
#[derive(Default)]
struct Tally {
    thread_id: Option<String>,
    acked: Vec<(Instant, String)>,
    refused: Vec<String>,
}

impl Tally {
    fn acked_after(&self, t: Instant) -> usize {
        self.acked.iter().filter(|(at, _)| *at > t).count()
    }
}

/// Sends `user_message`s in one thread of its own until `stop`, each
/// after the previous run ended (the echo agent answers at once).
async fn message_writer(mut ws: Ws, user: String, stop: CancellationToken) -> Tally {
    let mut tally = Tally::default();
    let mut n = 0;
    while !stop.is_cancelled() {
        n += 1;
        let content = format!("{user}-{n}");
        let mut payload = json!({ "content": content });
        if let Some(id) = &tally.thread_id {
            payload["thread_id"] = json!(id);
        }
        let reply = call(&mut ws, "user_message", &n.to_string(), payload).await;
        match reply["type"].as_str() {
            Some("run_started") => {
                tally.acked.push((Instant::now(), content));
                tally
                    .thread_id
                    .get_or_insert_with(|| reply["payload"]["thread_id"].as_str().unwrap().into());
                // The run's events end with `agent_completed`, whatever
                // its status (a broken store may fail it).
                run_events(&mut ws).await;
            }
            _ => {
                let code = reply["payload"]["code"].as_str().unwrap_or("?").to_owned();
                tally.refused.push(code);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    tally
}

#[tokio::test]
#[cfg_attr(
    not(wsgate_postgres),
    ignore = "PostgreSQL: set TEST_POSTGRES_URL (.ci/run does)"
)]
async fn postgres_cut_under_load_loses_no_acknowledged_message() {
    let (url, name) = create_database().await;
    let target = postgres_addr().await;
    let port = free_addr().await;
    let relay = Relay::start(port, target).await;
    let via_relay = url.replacen("127.0.0.1:5432", &port.to_string(), 1);
    let server = TestServer::with(move |c: &mut Config| {
        c.storage.url = Secret::new(via_relay.clone());
        c.agent.echo_delay_ms = 0;
        c.limits.messages_per_minute = 1_000_000;
        c.limits.message_burst = 100_000;
    })
    .await;
    let stop = CancellationToken::new();
    let mut writers = Vec::new();
    for i in 0..WRITERS {
        let user = format!("pg-writer-{i}");
        let (ws, _) = server.connect(&user).await;
        writers.push(tokio::spawn(message_writer(ws, user, stop.clone())));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The cut: every pooled connection dies, new ones are refused.
    drop(relay);
    ready_becomes(&server, 503).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let relay = Relay::start(port, target).await;
    ready_becomes(&server, 200).await;
    let restored = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.cancel();

    let mut refused_codes = HashSet::new();
    for (i, w) in writers.into_iter().enumerate() {
        let tally = w.await.unwrap();
        let user = format!("pg-writer-{i}");
        refused_codes.extend(tally.refused.iter().cloned());
        // Everything flows again without a restart.
        assert!(
            tally.acked_after(restored) > 0,
            "{user}: nothing after the cut"
        );
        // Every acknowledged message is stored, once.
        let thread = tally.thread_id.as_deref().expect("a thread");
        let (status, body) = get_json(
            &server.http(&format!("/api/threads/{thread}/messages?limit=1000")),
            &[("authorization", &format!("Bearer {}", token(&user)))],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let stored: Vec<&str> = body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "user")
            .map(|m| m["content"].as_str().unwrap())
            .collect();
        let unique: HashSet<&str> = stored.iter().copied().collect();
        assert_eq!(unique.len(), stored.len(), "{user}: a message stored twice");
        for (_, content) in &tally.acked {
            assert!(
                unique.contains(content.as_str()),
                "{user}: {content} was lost"
            );
        }
        // No run is left `running` by the cut.
        let (_, runs) = get_json(
            &server.http(&format!("/api/threads/{thread}/runs")),
            &[("authorization", &format!("Bearer {}", token(&user)))],
        )
        .await;
        for run in runs["runs"].as_array().unwrap() {
            assert_ne!(run["status"], "running", "{user}: {run}");
        }
    }
    // Refusals during the cut say why.
    for code in &refused_codes {
        assert!(code == "unavailable", "refused with {code:?}");
    }
    drop(relay);
    server.stop().await;
    drop_database(&name).await;
}

/// Publishes numbered publications on `channel` until `stop`; what was
/// acknowledged (offset and number, with when) and the refusal codes.
async fn publisher(
    mut ws: Ws,
    channel: String,
    stop: CancellationToken,
) -> (Vec<(Instant, u64, u64)>, Vec<String>) {
    let (mut acked, mut refused) = (Vec::new(), Vec::new());
    let mut n = 0u64;
    while !stop.is_cancelled() {
        n += 1;
        let reply = call(
            &mut ws,
            "publish",
            &n.to_string(),
            json!({"channel": channel, "data": {"n": n}}),
        )
        .await;
        match reply["payload"]["offset"].as_u64() {
            Some(offset) if reply["type"] == "published" => {
                acked.push((Instant::now(), offset, n));
            }
            _ => refused.push(reply["payload"]["code"].as_str().unwrap_or("?").to_owned()),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (acked, refused)
}

#[tokio::test]
#[cfg_attr(not(wsgate_redis), ignore = "Redis: set TEST_REDIS_URL (.ci/run does)")]
async fn redis_cut_under_load_loses_no_acknowledged_publication() {
    let redis = std::env::var("TEST_REDIS_URL").expect("TEST_REDIS_URL (see .ci/run)");
    let target = redis_addr(&redis).await;
    let port = free_addr().await;
    let relay = Relay::start(port, target).await;
    let prefix = format!("chaos-{}-{}", std::process::id(), now());
    let node = |url: String| {
        let prefix = prefix.clone();
        TestServer::with(move |c: &mut Config| {
            c.broker.url = Secret::new(url.clone());
            c.broker.prefix = prefix.clone();
            c.channels.namespaces = vec![NamespaceConfig {
                name: "load".into(),
                subscribe: "any".into(),
                publish: "any".into(),
                history_size: 100_000,
                ..NamespaceConfig::default()
            }];
            c.limits.messages_per_minute = 1_000_000;
            c.limits.message_burst = 100_000;
        })
    };
    // Node A reaches Redis through the relay that is cut; node C directly.
    let a = node(format!("redis://{port}/0")).await;
    let c = node(redis.clone()).await;
    let stop = CancellationToken::new();
    let mut publishers = Vec::new();
    for i in 0..WRITERS {
        let (ws, _) = a.connect(&format!("pub-{i}")).await;
        publishers.push(tokio::spawn(publisher(
            ws,
            format!("load:{i}"),
            stop.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    drop(relay);
    ready_becomes(&a, 503).await;
    assert_eq!(
        get_json(&c.http("/ready"), &[]).await.0,
        200,
        "C is not cut"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let relay = Relay::start(port, target).await;
    ready_becomes(&a, 200).await;
    let restored = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.cancel();

    for (i, p) in publishers.into_iter().enumerate() {
        let (acked, refused) = p.await.unwrap();
        assert!(
            acked.iter().any(|(at, ..)| *at > restored),
            "pub-{i}: nothing after the cut"
        );
        for code in &refused {
            assert_eq!(code, "unavailable", "pub-{i}");
        }
        // Every acknowledged publication is in the channel's history, as
        // the other node reads it, at the offset it was acknowledged with.
        let (status, body) = get_json(
            &c.http(&format!("/api/channels/load:{i}/history?limit=100000")),
            &[("x-api-key", API_KEY)],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let kept: HashSet<(u64, u64)> = body["publications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["offset"].as_u64().unwrap(),
                    p["data"]["n"].as_u64().unwrap(),
                )
            })
            .collect();
        for (_, offset, n) in &acked {
            assert!(
                kept.contains(&(*offset, *n)),
                "pub-{i}: #{n} at {offset} lost"
            );
        }
    }
    drop(relay);
    a.stop().await;
    c.stop().await;
}
