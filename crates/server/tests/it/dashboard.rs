//! `/dashboard`: the embedded files with their CSP, the `--dev` token only
//! for loopback clients, and the page itself in Debian's Chromium
//! (`tests/browser/dashboard.mjs`, playwright-core): charts, the events
//! feed, the chat view streaming, stopping and resuming a run after a
//! reload. Screenshots go to `target/dashboard-screenshots/`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use wsgate::http::dashboard::{DashboardOptions, CSP};

use crate::harness::*;

fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[tokio::test]
async fn dashboard_files_are_served_with_a_strict_csp() {
    let server = TestServer::start().await;
    let client = reqwest::Client::new();
    for (path, kind) in [
        ("/dashboard", "text/html"),
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/app.css", "text/css"),
    ] {
        let resp = client.get(server.http(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let h = resp.headers();
        assert!(
            h["content-type"].to_str().unwrap().starts_with(kind),
            "{path}: {:?}",
            h["content-type"]
        );
        assert_eq!(h["content-security-policy"], CSP, "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff");
        let body = resp.bytes().await.unwrap();
        assert!(body.len() > 100, "{path} is the built file, not empty");
    }
    let page = client
        .get(server.http("/dashboard"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Nothing inline and nothing from elsewhere: the CSP would block it.
    assert!(!page.contains("<style"), "no inline style");
    assert!(!page.contains("style=\""), "no style attribute");
    assert!(!page.contains("http://") && !page.contains("https://"));
    for script in page.split("<script").skip(1) {
        assert!(script.contains("src=\"/dashboard/"), "no inline script");
    }
    for path in [
        "/dashboard/other.js",
        "/dashboard/..%2Fcli.rs",
        "/dashboard/index.htm",
    ] {
        let resp = client.get(server.http(path)).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"], "not_found");
    }
    // `/dashboard/` leads to the page.
    let resp = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(server.http("/dashboard/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 308);
    assert_eq!(resp.headers()["location"], "/dashboard");
    // Without --dev there is no token to hand out.
    let resp = client
        .get(server.http("/dashboard/dev.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    server.stop().await;
}

#[tokio::test]
async fn the_dev_token_is_offered_to_loopback_clients_only() {
    let dev = DashboardOptions {
        dev_token: Some("the-dev-token".into()),
        ..Default::default()
    };
    let server = TestServer::with_dashboard(dev, |_| {}).await;
    let v: Value = reqwest::get(server.http("/dashboard/dev.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["token"], "the-dev-token");
    // A page that reached 127.0.0.1 under another name (DNS rebinding)
    // gets nothing, though the peer is local.
    for host in ["evil.example", "evil.example:8080", "127.0.0.1.nip.io"] {
        let resp = reqwest::Client::new()
            .get(server.http("/dashboard/dev.json"))
            .header("Host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "Host: {host}");
    }
    server.stop().await;

    // The same server reached from another address of this machine is not
    // loopback: nothing.
    let Some(ip) = non_loopback_ip() else {
        eprintln!("no non-loopback address on this machine: remote case not checked");
        return;
    };
    let dev = DashboardOptions {
        dev_token: Some("the-dev-token".into()),
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(wsgate::server::run_with(
        base_config(),
        dev,
        listener,
        shutdown.clone(),
    ));
    let resp = reqwest::get(format!("http://{addr}/dashboard/dev.json"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// An address of this machine that is not loopback (the one a UDP socket
/// would use to reach another host), if there is one.
fn non_loopback_ip() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("10.255.255.255:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test]
async fn dev_dashboard_dir_serves_files_from_disk() {
    let dir = temp_dir("dashboard-files");
    std::fs::write(dir.join("app.js"), "console.log('from disk')").unwrap();
    let opts = DashboardOptions {
        assets_dir: Some(dir),
        ..Default::default()
    };
    let server = TestServer::with_dashboard(opts, |_| {}).await;
    let body = reqwest::get(server.http("/dashboard/app.js"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "console.log('from disk')");
    // A file missing from the directory is a 404, not the embedded copy.
    let resp = reqwest::get(server.http("/dashboard/app.css"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    server.stop().await;
}

#[tokio::test]
async fn chromium_runs_the_dashboard_end_to_end() {
    let (chromium, browser) = browser_setup();
    let server = TestServer::with(|c| {
        c.metrics_interval_secs = 1;
        c.agent.echo_delay_ms = 30;
        // The page and the test's own commands, all from one user.
        c.limits.messages_per_minute = 600;
        c.limits.message_burst = 100;
    })
    .await;
    let out = repo_dir().join("target/dashboard-screenshots");
    std::fs::create_dir_all(&out).unwrap();
    let admin = wsgate::auth::sign_hs256(
        SECRET,
        &wsgate::auth::Claims {
            roles: vec!["admin".into()],
            ..claims("dash", 3600)
        },
    );

    let mut child = Command::new("node")
        .arg(browser.join("dashboard.mjs"))
        .args([
            server.http(""),
            admin,
            API_KEY.to_owned(),
            out.display().to_string(),
        ])
        .env("CHROMIUM", &chromium)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    loop {
        let v = next_report(&mut lines, "step", 90).await;
        let step = v["step"].as_str().unwrap_or_default().to_owned();
        match step.as_str() {
            "done" => break,
            // The reload came while the run was still going, and the page
            // showed it resumed: not a finished run loaded from the store.
            "reload_resumed" => {
                assert_eq!(v["resumed_mid_run"], true, "{v}");
                assert_eq!(v["text_ok"], true, "{v}");
            }
            "event_seen" => assert!(v["rows"].as_u64().unwrap() <= 500, "{v}"),
            _ => {}
        }
        seen.push(step);
    }
    for step in [
        "loaded",
        "token_refused",
        "chart_points",
        "event_seen",
        "threads_live",
        "thread_created",
        "run_completed",
        "run_stopped",
        "reload_resumed",
        "threads_switched",
    ] {
        assert!(
            seen.iter().any(|s| s == step),
            "{step} missing from {seen:?}"
        );
    }
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the browser script exits")
        .unwrap();
    assert!(status.success());
    for shot in [
        "overview.png",
        "events.png",
        "chat.png",
        "chat-reloaded.png",
    ] {
        assert!(out.join(shot).is_file(), "{shot} saved");
    }
    server.stop().await;
}
