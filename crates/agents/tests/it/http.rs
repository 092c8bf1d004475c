//! The `http` backend against a scripted NDJSON upstream.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;
use tokio::sync::mpsc;
use wsgate_agents::HttpAgent;
use wsgate_core::runs::{AgentBackend, AgentError, AgentEvent, MAX_EVENT_LINE_BYTES};

use crate::support::{input, upstream, within, Upstream};

const NDJSON: &str = "application/x-ndjson";

fn agent(url: String) -> HttpAgent {
    HttpAgent {
        client: reqwest::Client::new(),
        url,
        timeout: Duration::from_secs(30),
    }
}

type Run = tokio::task::JoinHandle<Result<String, AgentError>>;

/// Starts a run against `up` (with user-info and a query string in its
/// URL, which no reason may repeat) and returns its events.
fn start(up: &Upstream) -> (Run, mpsc::Receiver<AgentEvent>) {
    let url = format!("http://bob:hunter2@{}/agent?token=s3cret", up.addr);
    let (tx, rx) = mpsc::channel(8);
    let run = tokio::spawn(async move { agent(url).run(input("hi there"), tx).await });
    (run, rx)
}

async fn failure(run: Run) -> String {
    match within(run).await.unwrap() {
        Err(AgentError::Upstream(reason)) => {
            for secret in ["hunter2", "s3cret", "bob:"] {
                assert!(!reason.contains(secret), "{reason}");
            }
            reason
        }
        other => panic!("expected an upstream failure, got {other:?}"),
    }
}

#[tokio::test]
async fn streams_events_as_they_arrive_and_returns_the_report() {
    let mut up = upstream(StatusCode::OK, NDJSON).await;
    let (run, mut rx) = start(&up);
    up.send(r#"{"type":"agent_thinking","payload":{"text":"hmm"}}"#.to_owned() + "\n")
        .await;
    // The rest is held back: this event can only come from reading the
    // body incrementally.
    assert_eq!(
        within(rx.recv()).await,
        Some(AgentEvent::Thinking { text: "hmm".into() })
    );
    assert!(!run.is_finished());

    let seen = (&mut up.seen).await.unwrap();
    assert_eq!(seen.uri.path(), "/agent");
    assert_eq!(
        seen.body,
        json!({
            "run_id": "run-1",
            "thread_id": "thread-1",
            "user": "alice",
            "messages": [
                {"role": "user", "content": "earlier"},
                {"role": "assistant", "content": "reply"},
                {"role": "user", "content": "hi there"},
            ],
        })
    );

    // A line split across chunks, a blank line and CRLF are all fine.
    up.send(r#"{"type":"partial_result","#).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    up.send("\"payload\":{\"delta\":\"hi \"}}\n\n\r\n").await;
    assert_eq!(
        within(rx.recv()).await,
        Some(AgentEvent::PartialResult {
            delta: "hi ".into()
        })
    );
    up.send(
        concat!(
            r#"{"type":"partial_result","payload":{"delta":"there"}}"#,
            "\r\n",
            r#"{"type":"final_report","payload":{"content":"hi there"}}"#,
            "\n"
        )
        .to_owned(),
    )
    .await;
    assert_eq!(within(run).await.unwrap(), Ok("hi there".into()));
    let rest: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    assert_eq!(
        rest,
        [
            AgentEvent::PartialResult {
                delta: "there".into()
            },
            AgentEvent::FinalReport {
                content: "hi there".into()
            }
        ]
    );
}

#[tokio::test]
async fn a_last_line_without_newline_still_counts() {
    let up = upstream(StatusCode::OK, NDJSON).await;
    let (run, _rx) = start(&up);
    up.send(r#"{"type":"final_report","payload":{"content":"ok"}}"#)
        .await;
    drop(up.body);
    assert_eq!(within(run).await.unwrap(), Ok("ok".into()));
}

#[tokio::test]
async fn an_error_status_fails_with_the_status() {
    let up = upstream(StatusCode::INTERNAL_SERVER_ERROR, "text/plain").await;
    let (run, _rx) = start(&up);
    up.send("boom").await;
    drop(up.body);
    let reason = failure(run).await;
    assert!(reason.contains("500"), "{reason}");
    assert!(!reason.contains("boom"), "{reason}");
}

#[tokio::test]
async fn a_refused_connection_fails_without_credentials_in_the_reason() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let (tx, _rx) = mpsc::channel(8);
    let url = format!("http://bob:hunter2@{addr}/agent?token=s3cret");
    let run = tokio::spawn(async move { agent(url).run(input("x"), tx).await });
    let reason = failure(run).await;
    assert!(reason.contains("request failed"), "{reason}");
}

#[tokio::test]
async fn a_line_that_is_not_json_fails() {
    let up = upstream(StatusCode::OK, NDJSON).await;
    let (run, _rx) = start(&up);
    up.send("this is not json\n").await;
    let reason = failure(run).await;
    assert!(reason.contains("not JSON"), "{reason}");
    assert!(!reason.contains("this is not"), "{reason}");
}

#[tokio::test]
async fn an_unknown_event_type_fails() {
    let up = upstream(StatusCode::OK, NDJSON).await;
    let (run, _rx) = start(&up);
    up.send("{\"type\":\"agent_completed\",\"payload\":{}}\n")
        .await;
    let reason = failure(run).await;
    assert!(reason.contains("unknown type"), "{reason}");
}

#[tokio::test]
async fn a_stream_without_a_final_report_fails() {
    let up = upstream(StatusCode::OK, NDJSON).await;
    let (run, mut rx) = start(&up);
    up.send("{\"type\":\"partial_result\",\"payload\":{\"delta\":\"a\"}}\n")
        .await;
    drop(up.body);
    let reason = failure(run).await;
    assert!(reason.contains("without a final_report"), "{reason}");
    assert!(
        rx.recv().await.is_some(),
        "the events before still went out"
    );
}

#[tokio::test]
async fn an_over_long_line_fails_without_waiting_for_its_end() {
    let up = upstream(StatusCode::OK, NDJSON).await;
    let (run, _rx) = start(&up);
    let chunk = vec![b'x'; 64 * 1024];
    let chunks = MAX_EVENT_LINE_BYTES / chunk.len() + 1;
    // The upstream never ends the line nor the body: the run must fail on
    // the length alone.
    let body = up.body.clone();
    tokio::spawn(async move {
        for _ in 0..chunks {
            if body.send(chunk.clone().into()).await.is_err() {
                return;
            }
        }
        std::future::pending::<()>().await;
    });
    let reason = failure(run).await;
    assert!(reason.contains("longer than"), "{reason}");
}

#[tokio::test]
async fn dropping_the_run_drops_the_upstream_connection() {
    let up = upstream(StatusCode::OK, NDJSON).await;
    let (run, mut rx) = start(&up);
    up.send("{\"type\":\"agent_thinking\",\"payload\":{\"text\":\"t\"}}\n")
        .await;
    assert!(within(rx.recv()).await.is_some());
    run.abort();
    assert!(run.await.unwrap_err().is_cancelled());
    up.expect_dropped(b"\n").await;
}

#[tokio::test]
async fn a_closed_channel_ends_the_run_while_the_upstream_is_silent() {
    let up = upstream(StatusCode::OK, NDJSON).await;
    let (run, mut rx) = start(&up);
    up.send("{\"type\":\"agent_thinking\",\"payload\":{\"text\":\"t\"}}\n")
        .await;
    assert!(within(rx.recv()).await.is_some());
    drop(rx);
    assert_eq!(within(run).await.unwrap(), Err(AgentError::Closed));
    // Returning dropped the response, and with it the connection.
    up.expect_dropped(b"\n").await;
}
