//! A scripted upstream server: it records the one request it gets and
//! streams the body chunks the test sends it, when the test sends them, and
//! says when hyper dropped that body (the client went away).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use wsgate_core::runs::{AgentInput, AgentMessage};

/// What the upstream was sent.
#[derive(Debug)]
pub struct Seen {
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Value,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: oneshot::Receiver<Seen>,
    /// Each item is written as one body chunk; dropping this ends the body.
    pub body: mpsc::Sender<Bytes>,
    /// Fires when the response body is dropped: at its end, or when the
    /// client closed the connection.
    pub dropped: oneshot::Receiver<()>,
}

struct Script {
    status: StatusCode,
    content_type: &'static str,
    seen: oneshot::Sender<Seen>,
    body: mpsc::Receiver<Bytes>,
    dropped: DropSignal,
}

struct DropSignal(Option<oneshot::Sender<()>>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

type Shared = Arc<Mutex<Option<Script>>>;

async fn handle(
    State(script): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let script = script
        .lock()
        .unwrap()
        .take()
        .expect("one request per upstream");
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let _ = script.seen.send(Seen { uri, headers, body });
    // The guard lives in the stream's state, so it drops with the body.
    let chunks = futures_util::stream::unfold(
        (script.body, script.dropped),
        |(mut rx, guard)| async move {
            let chunk = rx.recv().await?;
            Some((Ok::<_, Infallible>(chunk), (rx, guard)))
        },
    );
    Response::builder()
        .status(script.status)
        .header(header::CONTENT_TYPE, script.content_type)
        .body(Body::from_stream(chunks))
        .unwrap()
}

pub async fn upstream(status: StatusCode, content_type: &'static str) -> Upstream {
    let (seen_tx, seen) = oneshot::channel();
    let (body, body_rx) = mpsc::channel(16);
    let (dropped_tx, dropped) = oneshot::channel();
    let script: Shared = Arc::new(Mutex::new(Some(Script {
        status,
        content_type,
        seen: seen_tx,
        body: body_rx,
        dropped: DropSignal(Some(dropped_tx)),
    })));
    let app = Router::new().fallback(handle).with_state(script);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Upstream {
        addr,
        seen,
        body,
        dropped,
    }
}

impl Upstream {
    pub async fn send(&self, chunk: impl Into<Bytes>) {
        self.body.send(chunk.into()).await.expect("body still read");
    }

    /// After the client went away: keeps writing harmless chunks (a write
    /// to a closed connection is what surely makes hyper notice) until the
    /// body is dropped.
    pub async fn expect_dropped(self, keepalive: &'static [u8]) {
        let Upstream { body, dropped, .. } = self;
        let pinger = tokio::spawn(async move {
            loop {
                if body.send(Bytes::from_static(keepalive)).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        within(dropped).await.expect("body dropped");
        pinger.abort();
    }
}

/// Fails the test instead of hanging it.
pub async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("timed out")
}

pub fn input(text: &str) -> AgentInput {
    AgentInput {
        run_id: "run-1".into(),
        thread_id: "thread-1".into(),
        user: "alice".into(),
        messages: vec![
            AgentMessage {
                role: "user",
                content: "earlier".into(),
            },
            AgentMessage {
                role: "assistant",
                content: "reply".into(),
            },
            AgentMessage {
                role: "user",
                content: text.into(),
            },
        ],
    }
}
