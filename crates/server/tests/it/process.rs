//! The real binary: CLI commands, `serve` logs, SIGTERM shutdown.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::SinkExt;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

const BIN: &str = env!("CARGO_BIN_EXE_wsgate");

fn wsgate() -> Command {
    wsgate_in(&temp_dir("cwd"))
}

/// The binary with a clean environment, running in `dir`.
fn wsgate_in(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(BIN);
    // Start from a clean environment so a developer's WSGATE_ variables do
    // not leak in.
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        // `--dev` keeps its SQLite store in ./wsgate-data: a directory of
        // the test's own.
        .current_dir(dir)
        .kill_on_drop(true);
    cmd
}

#[tokio::test]
async fn config_check_names_the_bad_key() {
    let dir = std::env::temp_dir().join(format!("wsgate-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[limits]\nmax_mesage_bytes = 10\n").unwrap();
    let out = wsgate()
        .args(["config", "check", "--config"])
        .arg(&file)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_mesage_bytes"), "{err}");

    let out = wsgate()
        .args(["config", "check"])
        .env("WSGATE_LIMITS__HEARTBEAT_TIMEOUT_SECS", "5")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("limits.heartbeat_timeout_secs"));

    let out = wsgate()
        .args(["config", "check"])
        .env("WSGATE_AUTH__HMAC_SECRET", SECRET)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn config_print_redacts_and_token_signs() {
    let out = wsgate()
        .args(["config", "print"])
        .env("WSGATE_AUTH__HMAC_SECRET", SECRET)
        .env("WSGATE_API__KEYS", format!("[\"{API_KEY}\"]"))
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        !printed.contains(SECRET) && !printed.contains(API_KEY),
        "{printed}"
    );
    assert!(
        printed.contains("max_connections_per_user = 3"),
        "{printed}"
    );

    let out = wsgate()
        .args([
            "token", "--sub", "cli-user", "--role", "admin", "--ttl", "10m",
        ])
        .env("WSGATE_AUTH__HMAC_SECRET", SECRET)
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let server = TestServer::start().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.request(Some(&token)))
        .await
        .unwrap();
    let connected = next_json(&mut ws).await;
    assert_eq!(connected["payload"]["user"], "cli-user");
    let exp = connected["payload"]["expires_at"].as_u64().unwrap();
    assert!(exp > now() + 500 && exp <= now() + 600);

    let out = wsgate()
        .args(["token", "--sub", "x"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success(), "no secret configured");
}

struct Spawned {
    child: tokio::process::Child,
    addr: std::net::SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
    /// The server's working directory.
    cwd: std::path::PathBuf,
}

async fn spawn_serve(args: &[&str], envs: &[(&str, &str)]) -> Spawned {
    let cwd = temp_dir("cwd");
    let mut cmd = wsgate_in(&cwd);
    cmd.arg("serve")
        .args(args)
        .env("RUST_LOG", "debug")
        .env("WSGATE_LOG__FORMAT", "json");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    let sink = logs.clone();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("\"listening\"") {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                if let Some(tx) = tx.take() {
                    let _ = tx.send(v["addr"].as_str().unwrap().parse().unwrap());
                }
            }
            sink.lock().unwrap().push(line);
        }
    });
    let out = stdout.clone();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            out.lock().unwrap().push(line);
        }
    });
    let addr = tokio::time::timeout(Duration::from_secs(20), rx)
        .await
        .expect("server logs its address")
        .unwrap();
    Spawned {
        child,
        addr,
        logs,
        stdout,
        cwd,
    }
}

fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn sigterm_closes_1001_exits_0_and_logs_never_hold_tokens() {
    // At `trace`, the most verbose level: tungstenite logs whole frames
    // there (a `refresh_token` frame carries a token), unless wsgate holds
    // it back.
    let mut s = spawn_serve(
        &["--listen", "127.0.0.1:0"],
        &[("WSGATE_AUTH__HMAC_SECRET", SECRET), ("RUST_LOG", "trace")],
    )
    .await;
    let url = format!("ws://{}/ws", s.addr);
    let header_token = token("log-header");
    let proto_token = token("log-proto");
    let refresh = token("log-header");
    let forged = sign_custom(
        jsonwebtoken::Algorithm::HS256,
        b"wrong-secret-wrong-secret-wrong-secret",
        &json!({"sub": "forged", "exp": now() + 60}),
    );
    let expired = token_with_ttl("late", -100);

    let mut req = url.as_str().into_client_request().unwrap();
    add_header(&mut req, "authorization", &format!("Bearer {header_token}"));
    let (mut a, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(next_json(&mut a).await["type"], "connected");
    a.send(Message::Text(
        json!({"type": "refresh_token", "payload": {"token": refresh}})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut a).await["type"], "token_refreshed");
    // A refresh with a bad token is an error whose text must not echo it.
    a.send(Message::Text(
        json!({"type": "refresh_token", "payload": {"token": forged}})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let err = next_json(&mut a).await;
    assert!(!err.to_string().contains(&forged));

    let mut req = url.as_str().into_client_request().unwrap();
    add_header(
        &mut req,
        "sec-websocket-protocol",
        &format!("wsgate.v1.json, bearer.{proto_token}"),
    );
    let (mut b, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(next_json(&mut b).await["type"], "connected");

    for bad in [&forged, &expired] {
        let mut req = url.as_str().into_client_request().unwrap();
        add_header(&mut req, "authorization", &format!("Bearer {bad}"));
        assert_eq!(expect_rejection(req).await.0, 401);
    }
    // Query tokens are off: refused, and the URL must not be logged with it.
    let q = format!("{url}?token={header_token}");
    assert_eq!(
        expect_rejection(q.as_str().into_client_request().unwrap())
            .await
            .0,
        401
    );

    sigterm(&s.child);
    assert_eq!(expect_close(&mut a).await, 1001);
    assert_eq!(expect_close(&mut b).await, 1001);
    let status = tokio::time::timeout(Duration::from_secs(15), s.child.wait())
        .await
        .expect("exits within the grace period")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    tokio::time::sleep(Duration::from_millis(100)).await;

    let logs = s.logs.lock().unwrap().join("\n");
    for t in [&header_token, &proto_token, &refresh, &forged, &expired] {
        // Any of the three parts would be a leak; the signature is unique.
        let signature = t.rsplit('.').next().unwrap();
        assert!(!logs.contains(signature), "a token leaked into the logs");
    }
    // One audit line per handshake, accepted and rejected, with reasons.
    let audit: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "handshake")
        .collect();
    assert_eq!(
        audit.iter().filter(|v| v["result"] == "accepted").count(),
        2,
        "{logs}"
    );
    let rejected: Vec<&str> = audit
        .iter()
        .filter(|v| v["result"] == "rejected")
        .map(|v| v["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        rejected,
        ["token_signature", "token_expired", "token_missing"],
        "{logs}"
    );
    // Lines logged inside a connection carry its id and user.
    let disconnected: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "disconnected")
        .collect();
    assert_eq!(disconnected.len(), 2, "{logs}");
    for d in disconnected {
        assert!(d["connection_id"].is_string(), "{d}");
        assert!(d["user"].as_str().unwrap().starts_with("log-"), "{d}");
        assert_eq!(d["code"], 1001);
    }
    // The refresh lines of connection `a` carry its id and user too.
    let refresh_lines: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("token refresh"))
        })
        .collect();
    assert_eq!(refresh_lines.len(), 2, "{logs}");
    for l in refresh_lines {
        assert_eq!(l["user"], "log-header", "{l}");
        assert!(l["connection_id"].is_string(), "{l}");
    }
    let _ = s.stdout;
}

#[tokio::test]
async fn dev_mode_needs_no_configuration_and_prints_a_token() {
    let mut s = spawn_serve(&["--dev", "--listen", "127.0.0.1:0"], &[]).await;
    let mut token = None;
    for _ in 0..100 {
        token = s.stdout.lock().unwrap().iter().find_map(|l| {
            l.split("token (user dev, role admin, 24h): ")
                .nth(1)
                .map(str::to_owned)
        });
        if token.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = token.expect("dev mode prints a token");
    let mut req = format!("ws://{}/ws", s.addr).into_client_request().unwrap();
    add_header(&mut req, "authorization", &format!("Bearer {token}"));
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(next_json(&mut ws).await["payload"]["user"], "dev");
    let (status, _) = get_json(
        &format!("http://{}/ws/stats", s.addr),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(status, 200, "the dev token is an admin token");
    // The printed API key publishes (and what it publishes reaches the
    // dev user); the dashboard's URL is printed and the page hands its
    // prompt the same token.
    let (key, dashboard) = {
        let out = s.stdout.lock().unwrap();
        let find = |prefix: &str| {
            out.iter()
                .find_map(|l| l.split(prefix).nth(1).map(str::to_owned))
        };
        (
            find("API key (X-API-Key): ").expect("dev mode prints an API key"),
            find("dashboard: ").expect("dev mode prints the dashboard's URL"),
        )
    };
    assert!(
        dashboard.starts_with(&format!("http://{}/dashboard", s.addr)),
        "{dashboard}"
    );
    send_json(
        &mut ws,
        json!({"type": "subscribe", "id": "s", "payload": {"channel": "events"}}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    let resp = reqwest::Client::new()
        .post(format!("http://{}/api/publish", s.addr))
        .header("x-api-key", &key)
        .json(&json!({"channel": "events", "data": {"event_type": "HELLO"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the printed key publishes");
    let m = next_json(&mut ws).await;
    assert_eq!(m["payload"]["data"]["event_type"], "HELLO", "{m}");
    let (status, dev) = get_json(&format!("http://{}/dashboard/dev.json", s.addr), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(dev["token"], token.as_str());
    // Storage defaults to SQLite in ./wsgate-data, created and ready.
    assert!(s.cwd.join("wsgate-data/wsgate.db").is_file());
    let (status, ready) = get_json(&format!("http://{}/ready", s.addr), &[]).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["checks"]["storage"], "ok");
    sigterm(&s.child);
    assert_eq!(s.child.wait().await.unwrap().code(), Some(0));
}

/// `/ready`'s status within `secs`, polled until it is `want`.
async fn ready_within(addr: std::net::SocketAddr, want: u16, secs: u64) -> u16 {
    let mut status = 0;
    for _ in 0..secs * 10 {
        status = get_json(&format!("http://{addr}/ready"), &[]).await.0;
        if status == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    status
}

#[tokio::test]
#[cfg_attr(not(wsgate_redis), ignore = "Redis: set TEST_REDIS_URL (.ci/run does)")]
async fn a_redis_outage_is_logged_once_when_it_starts_and_once_when_it_ends() {
    let mut redis = PrivateRedis::start().await;
    let s = spawn_serve(
        &["--listen", "127.0.0.1:0"],
        &[
            ("WSGATE_AUTH__HMAC_SECRET", SECRET),
            ("WSGATE_BROKER__URL", &redis.url()),
        ],
    )
    .await;
    assert_eq!(ready_within(s.addr, 200, 10).await, 200);
    redis.kill();
    assert_eq!(ready_within(s.addr, 503, 10).await, 503);
    // Long enough for several reconnect attempts (0.1 s, doubling to 5 s).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let _redis = PrivateRedis::start_on(redis.port).await;
    assert_eq!(
        ready_within(s.addr, 200, 15).await,
        200,
        "back without a restart"
    );
    let count = |needle: &str| {
        s.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    };
    assert_eq!(
        count("redis connection lost"),
        1,
        "once, not once per attempt"
    );
    // The log line may follow the first successful command by a moment.
    for _ in 0..50 {
        if count("redis connection restored") > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count("redis connection restored"), 1);
}

#[tokio::test]
#[cfg_attr(not(wsgate_redis), ignore = "Redis: set TEST_REDIS_URL (.ci/run does)")]
async fn rediss_connects_over_tls_and_verifies_the_certificate() {
    // A CA of the test's own, a certificate for localhost, and a Redis
    // that speaks TLS only.
    let dir = temp_dir("redis-tls");
    let sh = |script: &str| {
        let ok = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(&dir)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "{script}");
    };
    sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj '/CN=wsgate test CA'");
    sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout other.key -out other.crt -days 2 -subj '/CN=another CA'");
    sh("openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj '/CN=localhost'");
    sh("printf 'subjectAltName=DNS:localhost\\n' > ext && openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile ext");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut redis = std::process::Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", "0"])
        .args(["--tls-port", &port.to_string()])
        .args([
            "--tls-cert-file",
            "server.crt",
            "--tls-key-file",
            "server.key",
        ])
        .args(["--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no"])
        .args(["--save", "", "--appendonly", "no"])
        .current_dir(&dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("rediss://localhost:{port}/0");
    let config = dir.join("wsgate.toml");
    std::fs::write(
        &config,
        "[[channels.namespaces]]\nname = \"news\"\nsubscribe = \"any\"\npublish = \"any\"\n",
    )
    .unwrap();
    let config = config.to_str().unwrap().to_owned();
    let ca = dir.join("ca.crt");
    let ca = ca.to_str().unwrap();
    let serve = |envs: Vec<(&'static str, String)>| {
        let mut all = vec![
            ("WSGATE_AUTH__HMAC_SECRET", SECRET.to_owned()),
            ("WSGATE_API__KEYS", format!("[\"{API_KEY}\"]")),
            ("WSGATE_BROKER__URL", url.clone()),
        ];
        all.extend(envs);
        let config = config.clone();
        async move {
            let envs: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
            spawn_serve(&["--listen", "127.0.0.1:0", "--config", &config], &envs).await
        }
    };

    // Trusting the test CA (rustls reads SSL_CERT_FILE as the system's
    // roots): ready, and a publication goes through Redis to a subscriber.
    let s = serve(vec![("SSL_CERT_FILE", ca.to_owned())]).await;
    assert_eq!(ready_within(s.addr, 200, 10).await, 200);
    let mut req = format!("ws://{}/ws", s.addr).into_client_request().unwrap();
    add_header(
        &mut req,
        "authorization",
        &format!("Bearer {}", token("tls")),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "connected");
    let sub = call(&mut ws, "subscribe", "1", json!({"channel": "news:tls"})).await;
    assert_eq!(sub["type"], "subscribed", "{sub}");
    let resp = reqwest::Client::new()
        .post(format!("http://{}/api/publish", s.addr))
        .header("x-api-key", API_KEY)
        .json(&json!({"channel": "news:tls", "data": {"over": "tls"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let m = next_of(&mut ws, "message").await;
    assert_eq!(m["payload"]["data"]["over"], "tls", "{m}");

    // Trusting another CA only: the certificate is refused, the broker
    // not ready.
    let other = dir.join("other.crt").to_str().unwrap().to_owned();
    let untrusting = serve(vec![("SSL_CERT_FILE", other)]).await;
    assert_eq!(ready_within(untrusting.addr, 200, 3).await, 503);
    let refused = untrusting
        .logs
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("InvalidCertificate(UnknownIssuer)"));
    assert!(refused, "the certificate was refused, not something else");
    let _ = redis.kill();
    let _ = redis.wait();
}

/// SIGTERM under load (issue 11): connections that publish, others with
/// agent runs in flight, the rest idle subscribers. Every connection gets
/// 1001, the process exits 0 within the grace period, and the runs in
/// flight are recorded as ended: none is left `running` in the store.
#[tokio::test]
async fn sigterm_under_load_closes_every_connection_1001_and_records_runs_in_flight() {
    use wsgate_core::threads::ThreadStore;
    const CLIENTS: usize = 60;
    const RUNNERS: usize = 8;
    const PUBLISHERS: usize = 8;
    let mut s = spawn_serve(
        &["--listen", "127.0.0.1:0"],
        &[
            ("WSGATE_AUTH__HMAC_SECRET", SECRET),
            // Each run takes seconds: in flight at the signal.
            ("WSGATE_AGENT__ECHO_DELAY_MS", "300"),
            ("WSGATE_SHUTDOWN_GRACE_SECS", "5"),
            ("WSGATE_LIMITS__HANDSHAKES_PER_MINUTE_PER_IP", "10000"),
            ("WSGATE_LIMITS__MESSAGES_PER_MINUTE", "100000"),
            ("WSGATE_LIMITS__MESSAGE_BURST", "10000"),
        ],
    )
    .await;
    let url = format!("ws://{}/ws", s.addr);
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let mut req = url.as_str().into_client_request().unwrap();
        add_header(
            &mut req,
            "authorization",
            &format!("Bearer {}", token(&format!("load-{i}"))),
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        assert_eq!(next_json(&mut ws).await["type"], "connected");
        clients.push(ws);
    }
    let mut threads = Vec::new();
    for (i, ws) in clients.iter_mut().enumerate() {
        if i < RUNNERS {
            let words = vec!["word"; 40].join(" ");
            let reply = call(ws, "user_message", "m", json!({ "content": words })).await;
            assert_eq!(reply["type"], "run_started", "{reply}");
            threads.push(reply["payload"]["thread_id"].as_str().unwrap().to_owned());
        } else {
            let s = call(
                ws,
                "subscribe",
                "s",
                json!({"channel": "user:load-".to_owned() + &i.to_string()}),
            )
            .await;
            assert_eq!(s["type"], "subscribed", "{s}");
        }
    }
    // Publishers keep writing until the server closes them.
    let mut tasks = Vec::new();
    for (i, mut ws) in clients.into_iter().enumerate() {
        let publishes = (RUNNERS..RUNNERS + PUBLISHERS).contains(&i);
        let channel = format!("user:load-{i}");
        tasks.push(tokio::spawn(async move {
            use futures_util::StreamExt;
            let mut n = 0u64;
            loop {
                if publishes {
                    n += 1;
                    let frame =
                        json!({"type": "publish", "payload": {"channel": channel, "data": n}});
                    if ws
                        .send(Message::Text(frame.to_string().into()))
                        .await
                        .is_err()
                    {
                        return None;
                    }
                }
                let next = tokio::time::timeout(Duration::from_millis(2), ws.next()).await;
                match next {
                    Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
                    Ok(None | Some(Err(_))) => return None,
                    _ => {}
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    sigterm(&s.child);
    let started = std::time::Instant::now();
    for (i, t) in tasks.into_iter().enumerate() {
        let code = tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("closed within the grace period")
            .unwrap();
        assert_eq!(code, Some(1001), "client {i}");
    }
    let status = tokio::time::timeout(Duration::from_secs(10), s.child.wait())
        .await
        .expect("exits within the grace period")
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );

    // The runs that were streaming are ended in the store, not `running`.
    let db = format!("sqlite://{}/wsgate-data/wsgate.db", s.cwd.display());
    let store = wsgate_storage::Storage::open(&db).await.unwrap();
    assert_eq!(store.running_runs().await.unwrap().len(), 0);
    for (i, thread) in threads.iter().enumerate() {
        let runs = store
            .list_runs(&format!("load-{i}"), thread)
            .await
            .unwrap()
            .unwrap_or_default();
        assert_eq!(runs.len(), 1, "{thread}");
        assert_ne!(runs[0].status, wsgate_core::threads::RunStatus::Running);
    }
    store.close().await;
    let logs = s.logs.lock().unwrap().join("\n");
    assert!(!logs.contains("panicked"), "{logs}");
}
