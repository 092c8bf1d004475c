//! The `openai` backend against a scripted server-sent-events upstream.

use axum::http::{header, StatusCode};
use serde_json::json;
use tokio::sync::mpsc;
use wsgate_agents::OpenAiAgent;
use wsgate_core::runs::{AgentBackend, AgentError, AgentEvent};

use crate::support::{input, upstream, within, Upstream};

const SSE: &str = "text/event-stream";
const KEY: &str = "sk-test-0123456789";

type Run = tokio::task::JoinHandle<Result<String, AgentError>>;

fn start_with(
    up: &Upstream,
    api_key: Option<&str>,
    system_prompt: &str,
) -> (Run, mpsc::Receiver<AgentEvent>) {
    let agent = OpenAiAgent {
        client: reqwest::Client::new(),
        base_url: format!("http://{}/v1/", up.addr),
        model: "gpt-test".into(),
        api_key: api_key.map(str::to_owned),
        system_prompt: system_prompt.into(),
    };
    let (tx, rx) = mpsc::channel(8);
    let run = tokio::spawn(async move { agent.run(input("hi there"), tx).await });
    (run, rx)
}

fn start(up: &Upstream) -> (Run, mpsc::Receiver<AgentEvent>) {
    start_with(up, Some(KEY), "Be brief.")
}

fn chunk(content: &str) -> String {
    let chunk = json!({
        "id": "c1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}],
    });
    format!("data: {chunk}\n\n")
}

async fn failure(run: Run) -> String {
    match within(run).await.unwrap() {
        Err(AgentError::Upstream(reason)) => {
            assert!(!reason.contains(KEY), "{reason}");
            reason
        }
        other => panic!("expected an upstream failure, got {other:?}"),
    }
}

#[tokio::test]
async fn streams_deltas_until_done_and_reports_them() {
    let mut up = upstream(StatusCode::OK, SSE).await;
    let (run, mut rx) = start(&up);
    let role = json!({"choices": [{"index": 0, "delta": {"role": "assistant"}}]});
    up.send(format!("data: {role}\n\n") + &chunk("Hel")).await;
    // The rest is held back: this delta can only come from parsing the
    // stream as it arrives.
    assert_eq!(
        within(rx.recv()).await,
        Some(AgentEvent::PartialResult {
            delta: "Hel".into()
        })
    );
    assert!(!run.is_finished());

    let seen = (&mut up.seen).await.unwrap();
    assert_eq!(seen.uri.path(), "/v1/chat/completions");
    assert_eq!(
        seen.headers[header::AUTHORIZATION],
        format!("Bearer {KEY}").as_str()
    );
    assert_eq!(seen.body["model"], "gpt-test");
    assert_eq!(seen.body["stream"], true);
    assert_eq!(
        seen.body["messages"],
        json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "earlier"},
            {"role": "assistant", "content": "reply"},
            {"role": "user", "content": "hi there"},
        ])
    );

    // An event split across chunks, a comment and an empty delta are fine.
    let lo = chunk("lo");
    let (a, b) = lo.split_at(10);
    up.send(a.to_owned()).await;
    up.send(b.to_owned()).await;
    up.send(": keep-alive\n\n".to_owned() + &chunk("")).await;
    up.send(chunk(" world") + "data: [DONE]\n\n").await;
    assert_eq!(within(run).await.unwrap(), Ok("Hello world".into()));
    let rest: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    assert_eq!(
        rest,
        [
            AgentEvent::PartialResult { delta: "lo".into() },
            AgentEvent::PartialResult {
                delta: " world".into()
            },
            AgentEvent::FinalReport {
                content: "Hello world".into()
            }
        ]
    );
}

#[tokio::test]
async fn without_a_key_or_prompt_neither_is_sent() {
    let mut up = upstream(StatusCode::OK, SSE).await;
    let (run, _rx) = start_with(&up, None, "");
    up.send(chunk("ok") + "data: [DONE]\n\n").await;
    assert_eq!(within(run).await.unwrap(), Ok("ok".into()));
    let seen = (&mut up.seen).await.unwrap();
    assert!(!seen.headers.contains_key(header::AUTHORIZATION));
    assert_eq!(seen.body["messages"][0]["role"], "user");
}

#[tokio::test]
async fn an_unauthorized_answer_names_the_status_but_not_the_key() {
    let up = upstream(StatusCode::UNAUTHORIZED, "application/json").await;
    let (run, _rx) = start(&up);
    // OpenAI's real 401 body echoes part of the key.
    up.send(format!(
        r#"{{"error":{{"message":"Incorrect API key provided: {KEY}"}}}}"#
    ))
    .await;
    drop(up.body);
    let reason = failure(run).await;
    assert!(reason.contains("401"), "{reason}");
    assert!(!reason.contains("Incorrect"), "{reason}");
}

#[tokio::test]
async fn a_data_line_that_is_not_json_fails() {
    let up = upstream(StatusCode::OK, SSE).await;
    let (run, _rx) = start(&up);
    up.send("data: {not json\n\n").await;
    let reason = failure(run).await;
    assert!(reason.contains("not JSON"), "{reason}");
}

#[tokio::test]
async fn an_event_without_choices_fails() {
    let up = upstream(StatusCode::OK, SSE).await;
    let (run, _rx) = start(&up);
    up.send("data: {\"id\":\"x\"}\n\n").await;
    let reason = failure(run).await;
    assert!(reason.contains("without choices"), "{reason}");
}

#[tokio::test]
async fn a_stream_without_done_fails() {
    let up = upstream(StatusCode::OK, SSE).await;
    let (run, mut rx) = start(&up);
    up.send(chunk("partial")).await;
    drop(up.body);
    let reason = failure(run).await;
    assert!(reason.contains("without [DONE]"), "{reason}");
    assert_eq!(
        rx.recv().await,
        Some(AgentEvent::PartialResult {
            delta: "partial".into()
        })
    );
}

#[tokio::test]
async fn an_endless_event_fails_without_buffering_it_all() {
    let up = upstream(StatusCode::OK, SSE).await;
    let (run, _rx) = start(&up);
    let body = up.body.clone();
    // One `data:` line that never ends, and a body that never ends either.
    tokio::spawn(async move {
        let _ = body.send("data: ".into()).await;
        let piece = vec![b'x'; 64 * 1024];
        while body.send(piece.clone().into()).await.is_ok() {}
    });
    let reason = failure(run).await;
    assert!(reason.contains("without an event"), "{reason}");
}

#[tokio::test]
async fn an_answer_past_the_bound_fails() {
    let up = upstream(StatusCode::OK, SSE).await;
    let (run, mut rx) = start(&up);
    // Drain the partial results so the bounded channel never holds the
    // run back.
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let body = up.body.clone();
    tokio::spawn(async move {
        let piece = chunk(&"y".repeat(60 * 1024));
        while body.send(piece.clone().into()).await.is_ok() {}
    });
    let reason = failure(run).await;
    assert!(reason.contains("answer is longer"), "{reason}");
}

#[tokio::test]
async fn dropping_the_run_drops_the_upstream_connection() {
    let up = upstream(StatusCode::OK, SSE).await;
    let (run, mut rx) = start(&up);
    up.send(chunk("a")).await;
    assert!(within(rx.recv()).await.is_some());
    run.abort();
    assert!(run.await.unwrap_err().is_cancelled());
    up.expect_dropped(b": ping\n\n").await;
}
