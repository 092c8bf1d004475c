//! Agent runs over `/ws` with the built-in echo agent (SPEC §4, §6): the
//! full event order, every tab seeing the run, stop, conflicts, the per-user
//! cap, timeouts, and a run outliving the connection that started it.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn a_message_starts_a_run_that_streams_in_order_and_is_stored() {
    let server = TestServer::with(|c| c.agent.echo_delay_ms = 5).await;
    let (mut ws, _) = server.connect("runner").await;
    let reply = call(
        &mut ws,
        "user_message",
        "1",
        json!({"content": "hello wide world"}),
    )
    .await;
    assert_eq!(reply["type"], "run_started", "{reply}");
    let run_id = reply["payload"]["run_id"].as_str().unwrap().to_owned();
    let thread_id = reply["payload"]["thread_id"].as_str().unwrap().to_owned();
    assert_eq!(reply["payload"]["message"]["content"], "hello wide world");
    assert_eq!(reply["payload"]["message"]["role"], "user");

    let events = run_events(&mut ws).await;
    assert_eq!(
        kinds(&events),
        [
            "agent_started",
            "agent_thinking",
            "tool_executing",
            "tool_result",
            "partial_result",
            "partial_result",
            "partial_result",
            "final_report",
            "agent_completed"
        ]
    );
    for e in &events {
        assert_eq!(e["payload"]["run_id"], json!(run_id));
        assert_eq!(e["payload"]["thread_id"], json!(thread_id));
    }
    let partials: String = events
        .iter()
        .filter(|e| e["type"] == "partial_result")
        .map(|e| e["payload"]["delta"].as_str().unwrap())
        .collect();
    let report = &events[7]["payload"];
    assert_eq!(report["content"], json!(partials));
    assert_eq!(partials, "hello wide world");
    assert_eq!(events[8]["payload"]["status"], "completed");

    // The answer is the thread's assistant message; the run is recorded.
    let history = call(
        &mut ws,
        "get_thread_history",
        "2",
        json!({"thread_id": thread_id}),
    )
    .await;
    let messages = history["payload"]["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(messages[1]["content"], "hello wide world");
    assert_eq!(messages[1]["id"], report["message_id"]);
    let (status, runs) = get_json(
        &server.http(&format!("/api/threads/{thread_id}/runs")),
        &[("authorization", &format!("Bearer {}", token("runner")))],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(runs["runs"][0]["status"], "completed");
    server.stop().await;
}

#[tokio::test]
async fn every_tab_sees_the_run_and_it_outlives_its_requester() {
    let server = TestServer::with(|c| c.agent.echo_delay_ms = 50).await;
    let (mut tab1, _) = server.connect("two").await;
    let (mut tab2, _) = server.connect("two").await;
    let created = call(&mut tab1, "create_thread", "1", json!({"title": "t"})).await;
    let thread_id = created["payload"]["thread"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let sub = call(
        &mut tab2,
        "subscribe",
        "s",
        json!({"channel": format!("thread:{thread_id}")}),
    )
    .await;
    assert_eq!(sub["type"], "subscribed");

    let reply = call(
        &mut tab1,
        "user_message",
        "2",
        json!({"thread_id": thread_id, "content": "one two three four"}),
    )
    .await;
    assert_eq!(reply["type"], "run_started", "{reply}");
    // The requester goes away mid-run; the run goes on and tab 2 sees it all.
    drop(tab1);
    let events = run_events(&mut tab2).await;
    assert_eq!(events.first().unwrap()["type"], "agent_started");
    assert_eq!(events.last().unwrap()["payload"]["status"], "completed");
    assert_eq!(
        kinds(&events)
            .iter()
            .filter(|k| **k == "partial_result")
            .count(),
        4
    );
    server.stop().await;
}

#[tokio::test]
async fn stop_conflict_cap_and_timeout() {
    let server = TestServer::with(|c| {
        c.agent.echo_delay_ms = 300;
        c.agent.timeout_secs = 2;
        c.limits.max_runs_per_user = 1;
    })
    .await;
    let (mut ws, _) = server.connect("busy").await;
    let (mut other, _) = server.connect("other").await;
    let words = "a b c d e f g h i j k l m n o p";
    let reply = call(&mut ws, "user_message", "1", json!({"content": words})).await;
    let run_id = reply["payload"]["run_id"].as_str().unwrap().to_owned();
    let thread_id = reply["payload"]["thread_id"].as_str().unwrap().to_owned();

    // One run per thread, and this user's cap is one.
    let e = call(&mut ws, "start_agent", "2", json!({"thread_id": thread_id})).await;
    assert_eq!(e["payload"]["code"], "conflict", "{e}");
    let e = call(
        &mut ws,
        "user_message",
        "3",
        json!({"content": "second thread"}),
    )
    .await;
    assert_eq!(e["payload"]["code"], "conflict", "{e}");
    // Another user cannot stop it, nor tell it exists.
    let e = call(&mut other, "stop_agent", "4", json!({"run_id": run_id})).await;
    assert_eq!(e["payload"]["code"], "not_found", "{e}");

    // The reply comes once the run has ended, after its last event.
    send_json(
        &mut ws,
        json!({"type": "stop_agent", "id": "5", "payload": {"run_id": run_id}}),
    )
    .await;
    let mut events = Vec::new();
    let stopped = loop {
        let v = next_json(&mut ws).await;
        if v["id"] == "5" {
            break v;
        }
        if v["type"] == "message" {
            events.push(v["payload"]["data"].clone());
        }
    };
    assert_eq!(stopped["type"], "run_stopped", "{stopped}");
    let last = events.last().unwrap();
    assert_eq!(last["type"], "agent_completed");
    assert_eq!(last["payload"]["status"], "stopped");
    assert!(!kinds(&events).contains(&"final_report"));

    // A run that outlasts agent.timeout_secs ends failed.
    let reply = call(&mut ws, "start_agent", "6", json!({"thread_id": thread_id})).await;
    assert_eq!(reply["type"], "run_started", "{reply}");
    let events = run_events(&mut ws).await;
    let last = &events.last().unwrap()["payload"];
    assert_eq!(last["status"], "failed");
    assert!(
        last["error"].as_str().unwrap().contains("timed out"),
        "{last}"
    );
    // Both ends are counted by backend and status, with their durations;
    // the stopped run had sent events, the timed-out one too.
    let metrics = server.metrics_text().await;
    for line in [
        r#"wsgate_agent_runs_total{backend="echo",status="stopped"} 1"#,
        r#"wsgate_agent_runs_total{backend="echo",status="failed"} 1"#,
        "wsgate_agent_run_duration_seconds_count 2",
        "wsgate_agent_time_to_first_event_seconds_count 2",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    assert!(!metrics.contains(r#"status="completed""#), "{metrics}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.stop().await;
}

#[tokio::test]
async fn bad_agent_commands_are_refused() {
    let server = TestServer::start().await;
    let (mut ws, _) = server.connect("bad").await;
    let e = call(&mut ws, "user_message", "1", json!({"content": "  "})).await;
    assert_eq!(e["payload"]["code"], "bad_request");
    let e = call(&mut ws, "start_agent", "3", json!({"thread_id": "nope"})).await;
    assert_eq!(e["payload"]["code"], "not_found");
    let e = call(&mut ws, "stop_agent", "4", json!({"run_id": "nope"})).await;
    assert_eq!(e["payload"]["code"], "not_found");
    server.stop().await;
}

#[tokio::test]
async fn an_http_agent_streams_through_the_gateway() {
    use axum::routing::post;
    // An upstream that streams NDJSON like a real agent: the thread as it
    // stands comes in, events go out one line at a time.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/run",
        post(|axum::Json(body): axum::Json<Value>| async move {
            let last = body["messages"].as_array().unwrap().last().unwrap()["content"]
                .as_str()
                .unwrap()
                .to_uppercase();
            let lines = vec![
                json!({"type": "agent_thinking", "payload": {"text": "hm"}}),
                json!({"type": "partial_result", "payload": {"delta": last.clone()}}),
                json!({"type": "final_report", "payload": {"content": last}}),
            ];
            let stream = futures_util::stream::iter(
                lines
                    .into_iter()
                    .map(|l| Ok::<_, std::io::Error>(bytes::Bytes::from(format!("{l}\n")))),
            );
            axum::body::Body::from_stream(stream)
        }),
    );
    let upstream = tokio::spawn(async move { axum::serve(listener, app).await });
    let server = TestServer::with(|c| {
        c.agent.kind = "http".into();
        c.agent.url = format!("http://{addr}/run");
    })
    .await;
    let (mut ws, _) = server.connect("http-user").await;
    let reply = call(
        &mut ws,
        "user_message",
        "1",
        json!({"content": "shout this"}),
    )
    .await;
    assert_eq!(reply["type"], "run_started", "{reply}");
    let events = run_events(&mut ws).await;
    assert_eq!(
        kinds(&events),
        [
            "agent_started",
            "agent_thinking",
            "partial_result",
            "final_report",
            "agent_completed"
        ]
    );
    assert_eq!(events[3]["payload"]["content"], "SHOUT THIS");
    assert_eq!(events[4]["payload"]["status"], "completed");
    upstream.abort();
    server.stop().await;
}

#[tokio::test]
async fn a_reconnect_mid_run_recovers_exactly_the_missed_events() {
    let server = TestServer::with(|c| c.agent.echo_delay_ms = 100).await;
    let (mut ws, _) = server.connect("flaky").await;
    let reply = call(
        &mut ws,
        "user_message",
        "1",
        json!({"content": "a b c d e f g h"}),
    )
    .await;
    let thread_id = reply["payload"]["thread_id"].as_str().unwrap().to_owned();
    // Read a few events, remember the last position, drop the connection.
    let mut seen = Vec::new();
    let (mut offset, mut epoch) = (0, String::new());
    while seen.len() < 5 {
        let v = next_json(&mut ws).await;
        if v["type"] == "message" {
            offset = v["payload"]["offset"].as_u64().unwrap();
            epoch = v["payload"]["epoch"].as_str().unwrap().to_owned();
            seen.push(v["payload"]["data"].clone());
        }
    }
    drop(ws);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let (mut ws, _) = server.connect("flaky").await;
    let sub = call(
        &mut ws,
        "subscribe", "2",
        json!({"channel": format!("thread:{thread_id}"), "recover": {"offset": offset, "epoch": epoch}}),
    )
    .await;
    assert_eq!(sub["payload"]["recovered"], true, "{sub}");
    let rest = run_events(&mut ws).await;
    let all: Vec<Value> = seen.into_iter().chain(rest).collect();
    assert_eq!(all.first().unwrap()["type"], "agent_started");
    assert_eq!(all.last().unwrap()["payload"]["status"], "completed");
    let partials: String = all
        .iter()
        .filter(|e| e["type"] == "partial_result")
        .map(|e| e["payload"]["delta"].as_str().unwrap())
        .collect();
    assert_eq!(
        partials, "a b c d e f g h",
        "nothing missing, nothing twice"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_tab_opened_mid_run_gets_the_whole_run_so_far_then_the_rest() {
    let server = TestServer::with(|c| c.agent.echo_delay_ms = 100).await;
    let (mut tab1, _) = server.connect("switcher").await;
    let reply = call(
        &mut tab1,
        "user_message",
        "1",
        json!({"content": "one two three four five six"}),
    )
    .await;
    let thread_id = reply["payload"]["thread_id"].as_str().unwrap().to_owned();
    // Let part of the answer stream before the second tab opens.
    let mut partials_seen = 0;
    while partials_seen < 2 {
        let v = next_json(&mut tab1).await;
        if v["payload"]["data"]["type"] == "partial_result" {
            partials_seen += 1;
        }
    }
    let (mut tab2, _) = server.connect("switcher").await;
    let loaded = call(
        &mut tab2,
        "switch_thread",
        "2",
        json!({"thread_id": thread_id}),
    )
    .await;
    assert_eq!(loaded["type"], "thread_loaded", "{loaded}");
    let p = &loaded["payload"];
    assert_eq!(p["thread"]["id"], json!(thread_id));
    assert_eq!(p["messages"][0]["content"], "one two three four five six");
    assert_eq!(p["active_run"]["run_id"], reply["payload"]["run_id"]);
    assert!(p["offset"].is_u64() && p["epoch"].is_string());
    let events = run_events(&mut tab2).await;
    assert_eq!(
        events[0]["type"], "agent_started",
        "replayed from the start"
    );
    let partials: String = events
        .iter()
        .filter(|e| e["type"] == "partial_result")
        .map(|e| e["payload"]["delta"].as_str().unwrap())
        .collect();
    assert_eq!(
        partials, "one two three four five six",
        "nothing missing, nothing twice"
    );
    assert_eq!(events.last().unwrap()["payload"]["status"], "completed");

    // After the run: no active run, and the answer is among the messages.
    let (mut tab3, _) = server.connect("switcher").await;
    let loaded = call(
        &mut tab3,
        "switch_thread",
        "3",
        json!({"thread_id": thread_id}),
    )
    .await;
    assert_eq!(loaded["payload"]["active_run"], Value::Null);
    assert_eq!(loaded["payload"]["messages"].as_array().unwrap().len(), 2);
    // Someone else's thread: not_found.
    let (mut other, _) = server.connect("someone").await;
    let e = call(
        &mut other,
        "switch_thread",
        "4",
        json!({"thread_id": thread_id}),
    )
    .await;
    assert_eq!(e["payload"]["code"], "not_found", "{e}");
    server.stop().await;
}

#[tokio::test]
async fn a_message_posted_over_rest_starts_a_run_that_streams_on_the_thread() {
    let server = TestServer::with(|c| c.agent.echo_delay_ms = 50).await;
    let (mut ws, _) = server.connect("poster").await;
    let created = call(&mut ws, "create_thread", "1", json!({"title": "rest"})).await;
    let thread_id = created["payload"]["thread"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let sub = call(
        &mut ws,
        "subscribe",
        "2",
        json!({"channel": format!("thread:{thread_id}")}),
    )
    .await;
    assert_eq!(sub["type"], "subscribed");

    let client = reqwest::Client::new();
    let url = server.http(&format!("/api/threads/{thread_id}/messages"));
    let resp = client
        .post(&url)
        .bearer_auth(token("poster"))
        .json(&json!({"content": "from the api"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["message"]["content"], "from the api");
    let run_id = body["run_id"].clone();
    // A second message while the run goes on: conflict, nothing stored.
    let resp = client
        .post(&url)
        .bearer_auth(token("poster"))
        .json(&json!({"content": "too soon"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    // Someone else: 404.
    let resp = client
        .post(&url)
        .bearer_auth(token("stranger"))
        .json(&json!({"content": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    let events = run_events(&mut ws).await;
    assert_eq!(events[0]["payload"]["run_id"], run_id);
    assert_eq!(events.last().unwrap()["payload"]["status"], "completed");
    let history = call(
        &mut ws,
        "get_thread_history",
        "3",
        json!({"thread_id": thread_id}),
    )
    .await;
    let contents: Vec<&str> = history["payload"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        contents,
        ["from the api", "from the api"],
        "the question, then the echo"
    );
    server.stop().await;
}

#[tokio::test]
async fn threads_in_use_count_against_the_subscription_cap() {
    let server = TestServer::with(|c| {
        c.limits.max_subscriptions = 2;
        c.agent.echo_delay_ms = 0;
    })
    .await;
    let (mut ws, _) = server.connect("many").await;
    // Each run on a new thread follows that thread: two fit.
    let mut threads = Vec::new();
    for id in ["1", "2"] {
        let r = call(&mut ws, "user_message", id, json!({"content": "hi"})).await;
        assert_eq!(r["type"], "run_started", "{r}");
        threads.push(r["payload"]["thread_id"].as_str().unwrap().to_owned());
        run_events(&mut ws).await;
    }
    let (_, before) = rest(&server, "/api/threads", "many").await;
    // A third is refused before anything is stored, naming the limit…
    let e = call(&mut ws, "user_message", "3", json!({"content": "hi"})).await;
    assert_eq!(e["payload"]["code"], "bad_request", "{e}");
    assert!(
        e["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("max_subscriptions"),
        "{e}"
    );
    let (_, after) = rest(&server, "/api/threads", "many").await;
    assert_eq!(before["threads"], after["threads"], "no thread was created");
    let other = call(&mut ws, "create_thread", "4", json!({"title": "x"})).await;
    let other = other["payload"]["thread"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let e = call(&mut ws, "switch_thread", "5", json!({"thread_id": other})).await;
    assert_eq!(e["payload"]["code"], "bad_request", "{e}");
    // …while a thread already followed still runs, and leaving one makes room.
    let r = call(
        &mut ws,
        "user_message",
        "6",
        json!({"thread_id": threads[0], "content": "again"}),
    )
    .await;
    assert_eq!(r["type"], "run_started", "{r}");
    run_events(&mut ws).await;
    let u = call(
        &mut ws,
        "unsubscribe",
        "7",
        json!({"channel": format!("thread:{}", threads[1])}),
    )
    .await;
    assert_eq!(u["type"], "unsubscribed", "{u}");
    let r = call(&mut ws, "switch_thread", "8", json!({"thread_id": other})).await;
    assert_eq!(r["type"], "thread_loaded", "{r}");
    server.stop().await;
}

/// `GET path` with `user`'s bearer token: status and JSON body.
async fn rest(server: &TestServer, path: &str, user: &str) -> (u16, Value) {
    get_json(
        &server.http(path),
        &[("authorization", &format!("Bearer {}", token(user)))],
    )
    .await
}
