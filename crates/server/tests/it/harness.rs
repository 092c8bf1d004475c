//! Starts a real server on 127.0.0.1:0 per test and gives real clients.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue, Request};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use wsgate::auth::{sign_hs256, Claims};
use wsgate::config::{Config, Secret};

pub const SECRET: &str = "integration-test-secret-0123456789abcdef";
pub const API_KEY: &str = "integration-api-key-0123456789";

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct TestServer {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// A new empty directory under the system's temp dir.
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("wsgate-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The test PostgreSQL's admin URL. Tests that need it carry
/// `#[cfg_attr(not(wsgate_postgres), ignore = …)]`: the build script sets
/// `wsgate_postgres` when `TEST_POSTGRES_URL` is set (`.ci/run` sets it), so
/// without it they are reported skipped, not passed.
pub fn postgres_base() -> String {
    std::env::var("TEST_POSTGRES_URL").expect("TEST_POSTGRES_URL (see .ci/run)")
}

/// The test PostgreSQL's socket address.
pub async fn postgres_addr() -> SocketAddr {
    let url = reqwest::Url::parse(&postgres_base()).expect("TEST_POSTGRES_URL is a URL");
    let host = url.host_str().unwrap_or("127.0.0.1").to_owned();
    tokio::net::lookup_host((host, url.port().unwrap_or(5432)))
        .await
        .unwrap()
        .next()
        .unwrap()
}

/// A fresh database on the test PostgreSQL: its URL and name, for
/// [`drop_database`].
pub async fn create_database() -> (String, String) {
    use sqlx::{Connection, Executor};
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!(
        "wsgate_it_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let base = postgres_base();
    let mut admin = sqlx::PgConnection::connect(&base)
        .await
        .expect("the PostgreSQL of TEST_POSTGRES_URL answers");
    admin
        .execute(format!("DROP DATABASE IF EXISTS {name}").as_str())
        .await
        .unwrap();
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    let (prefix, _) = base.rsplit_once('/').unwrap();
    (format!("{prefix}/{name}"), name)
}

pub async fn drop_database(name: &str) {
    use sqlx::{Connection, Executor};
    let mut admin = sqlx::PgConnection::connect(&postgres_base()).await.unwrap();
    admin
        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await
        .unwrap();
}

pub fn base_config() -> Config {
    let mut c = Config::default();
    // Each server its own SQLite file, never ./wsgate-data.
    c.storage.url = Secret::new(format!(
        "sqlite://{}/wsgate.db",
        temp_dir("store").display()
    ));
    c.auth.hmac_secret = Some(Secret::new(SECRET));
    c.api.keys = vec![Secret::new(API_KEY)];
    // Tests open many connections from 127.0.0.1.
    c.limits.handshakes_per_minute_per_ip = 10_000;
    c.limits.pending_connections_per_ip = 10_000;
    c.shutdown_grace_secs = 2;
    c
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with(|_| {}).await
    }

    pub async fn with(adjust: impl FnOnce(&mut Config)) -> Self {
        Self::with_dashboard(Default::default(), adjust).await
    }

    /// [`TestServer::with`], serving the dashboard as `wsgate serve` would
    /// with these options (a `--dev` token, a files directory).
    pub async fn with_dashboard(
        dashboard: wsgate::http::dashboard::DashboardOptions,
        adjust: impl FnOnce(&mut Config),
    ) -> Self {
        let mut config = base_config();
        adjust(&mut config);
        config.validate().expect("test config is valid");
        let listener = wsgate::listener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(wsgate::server::run_with(
            config,
            dashboard,
            listener,
            shutdown.clone(),
        ));
        TestServer {
            addr,
            shutdown,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The `/metrics` page.
    pub async fn metrics_text(&self) -> String {
        reqwest::get(self.http("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops within its grace period")
            .unwrap()
            .unwrap();
    }

    /// A request for `/ws` with `Authorization: Bearer <token>`.
    pub fn request(&self, token: Option<&str>) -> Request<()> {
        self.request_at("/ws", token)
    }

    /// A WebSocket request for `path` with `Authorization: Bearer <token>`.
    pub fn request_at(&self, path: &str, token: Option<&str>) -> Request<()> {
        let mut req = self.url(path).into_client_request().unwrap();
        if let Some(t) = token {
            req.headers_mut().insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
            );
        }
        req
    }

    /// Connects as `user` and reads the `connected` frame.
    pub async fn connect(&self, user: &str) -> (Ws, Value) {
        let (mut ws, _) = tokio_tungstenite::connect_async(self.request(Some(&token(user))))
            .await
            .expect("handshake accepted");
        let connected = next_json(&mut ws).await;
        assert_eq!(connected["type"], "connected");
        (ws, connected)
    }

    /// As [`TestServer::connect`], with a 64 KiB receive buffer: for a
    /// client that stops reading, so the server's queue fills whatever the
    /// machine's loopback buffers can hold (`tcp_rmem` reaches 32 MB on
    /// some kernels, enough to swallow a whole test's flood).
    pub async fn connect_small_window(&self, user: &str) -> (Ws, Value) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(64 * 1024).unwrap();
        let stream = socket.connect(self.addr).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async(
            self.request(Some(&token(user))),
            MaybeTlsStream::Plain(stream),
        )
        .await
        .expect("handshake accepted");
        let connected = next_json(&mut ws).await;
        assert_eq!(connected["type"], "connected");
        (ws, connected)
    }
}

pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

pub fn claims(user: &str, ttl_secs: i64) -> Claims {
    Claims::new(user, (now() as i64 + ttl_secs) as u64)
}

pub fn token(user: &str) -> String {
    sign_hs256(SECRET, &claims(user, 3600))
}

pub fn token_with_ttl(user: &str, ttl_secs: i64) -> String {
    sign_hs256(SECRET, &claims(user, ttl_secs))
}

/// Signs arbitrary claims with any HMAC algorithm and key.
pub fn sign_custom(alg: jsonwebtoken::Algorithm, key: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(key),
    )
    .unwrap()
}

pub fn add_header(req: &mut Request<()>, name: &'static str, value: &str) {
    req.headers_mut().insert(
        HeaderName::from_static(name),
        HeaderValue::from_str(value).unwrap(),
    );
}

/// The refused handshake's status, headers and JSON body.
pub async fn expect_rejection(
    req: Request<()>,
) -> (u16, tokio_tungstenite::tungstenite::http::HeaderMap, Value) {
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => panic!("handshake was accepted"),
        Err(WsError::Http(resp)) => {
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp.into_body().unwrap_or_default();
            let json: Value = serde_json::from_slice(&body).unwrap_or(json!(null));
            (status, headers, json)
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// The next frame of type `kind` as JSON, skipping any other.
pub async fn next_of(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let v = next_json(ws).await;
        if v["type"] == kind {
            return v;
        }
    }
}

/// The next text frame as JSON, skipping pings.
pub async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("stream open")
            .expect("frame ok");
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Sends a command and returns the reply with the same id, skipping other
/// frames.
pub async fn call(ws: &mut Ws, kind: &str, id: &str, payload: Value) -> Value {
    send_json(ws, json!({"type": kind, "id": id, "payload": payload})).await;
    loop {
        let v = next_json(ws).await;
        if v["id"] == id {
            return v;
        }
    }
}

pub async fn send_json(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// Reads until the server's close frame and returns its code.
pub async fn expect_close(ws: &mut Ws) -> u16 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("close within 20 s");
        match msg {
            Some(Ok(Message::Close(Some(CloseFrame { code, .. })))) => return code.into(),
            Some(Ok(Message::Close(None))) => return 1005,
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("socket error before close frame: {e}"),
            None => panic!("stream ended without a close frame"),
        }
    }
}

pub async fn get_json(url: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(json!(null));
    (status, body)
}

/// Publishes through the server API and returns its `{offset, epoch}`.
pub async fn api_publish(server: &TestServer, channel: &str, data: Value) -> Value {
    let resp = reqwest::Client::new()
        .post(server.http("/api/publish"))
        .header("x-api-key", API_KEY)
        .json(&json!({"channel": channel, "data": data}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

/// A free loopback address for a relay (or anything) to listen on.
pub async fn free_addr() -> SocketAddr {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The address of the Redis a `redis://host:port/db` URL names.
pub async fn redis_addr(url: &str) -> SocketAddr {
    let host = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    tokio::net::lookup_host(host).await.unwrap().next().unwrap()
}

/// Forwards TCP connections from `listen` to `target` until dropped;
/// dropping it cuts every relayed connection.
pub struct Relay {
    /// Aborted on drop, and with it the relayed connections it owns.
    _tasks: tokio::task::JoinSet<()>,
}

impl Relay {
    pub async fn start(listen: SocketAddr, target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Relay { _tasks: tasks }
    }
}

/// A `redis-server` of the test's own on a free port, keeping nothing on
/// disk: killing it loses every key, as a crash of a Redis without
/// persistence does.
pub struct PrivateRedis {
    pub port: u16,
    child: std::process::Child,
}

impl PrivateRedis {
    pub async fn start_on(port: u16) -> Self {
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test.sh installs it)");
        // Owned at once, so a panic below still kills and reaps it.
        let redis = PrivateRedis { port, child };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return redis;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("redis-server did not listen on {port}");
    }

    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(port).await
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// SIGKILL: no goodbye to the clients.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run events from `thread:<id>` message frames until `agent_completed`.
pub async fn run_events(ws: &mut Ws) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let v = next_json(ws).await;
        if v["type"] != "message" {
            continue;
        }
        let p = &v["payload"];
        assert!(p["channel"].as_str().unwrap().starts_with("thread:"));
        assert!(p["offset"].is_u64() && p["epoch"].is_string());
        let data = p["data"].clone();
        let done = data["type"] == "agent_completed";
        events.push(data);
        if done {
            return events;
        }
    }
}

/// Reads until a close frame (its code), the end of the connection or 10 s
/// of silence (`None`).
pub async fn close_code<S>(stream: &mut S) -> Option<u16>
where
    S: futures_util::Stream<Item = Result<Message, WsError>> + Unpin,
{
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
        match msg {
            Ok(Message::Close(Some(f))) => return Some(u16::from(f.code)),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

impl TestServer {
    /// Whether `/metrics` shows `line` within 5 s (metrics of a connection
    /// are recorded once its task has ended).
    pub async fn metric_shows(&self, line: &str) -> bool {
        for _ in 0..50 {
            if self.metrics_text().await.contains(line) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
}

/// A browser script's (`tests/browser`) next report, one JSON line on its
/// stdout, within `secs`; its `{key: "error"}` reports fail the test.
pub async fn next_report(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    key: &str,
    secs: u64,
) -> Value {
    let line = tokio::time::timeout(Duration::from_secs(secs), lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("the browser reports within {secs} s"))
        .unwrap()
        .expect("the browser script reports before it exits");
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
    assert_ne!(v[key], "error", "{v}");
    v
}

/// Debian's Chromium (`CHROMIUM` or /usr/bin/chromium) and `tests/browser`
/// with playwright-core installed, for the browser tests; fails saying how
/// to install what is missing (scripts/test.sh does both).
pub fn browser_setup() -> (String, std::path::PathBuf) {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "no Chromium at {chromium}: `apt-get install chromium` (scripts/test.sh does it)"
    );
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "run `npm ci --prefix tests/browser` (scripts/test.sh does it)"
    );
    (chromium, dir)
}
