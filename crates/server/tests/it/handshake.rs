//! SPEC §3: token transports, JWT checks, origin policy, rejection table.

use jsonwebtoken::Algorithm;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::harness::*;

async fn assert_401(server: &TestServer, token: Option<&str>, reason_fragment: &str) {
    let (status, headers, body) = expect_rejection(server.request(token)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        headers.get("www-authenticate").unwrap(),
        "Bearer error=\"invalid_token\""
    );
    assert_eq!(body["error"], "unauthorized");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains(reason_fragment), "{message}");
    if let Some(t) = token {
        assert!(!message.contains(t), "the token must never be echoed");
    }
}

#[tokio::test]
async fn not_an_upgrade_is_400_json() {
    let server = TestServer::start().await;
    let resp = reqwest::get(server.http("/ws")).await.unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "bad_request");
    assert!(body["message"].as_str().unwrap().len() > 3);
}

#[tokio::test]
async fn each_malformed_upgrade_is_400_naming_its_fault() {
    let server = TestServer::start().await;
    let client = reqwest::Client::new();
    let good = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let cases: [(&str, &str, &str); 5] = [
        ("connection", "keep-alive", "Connection"),
        ("upgrade", "h2c", "Upgrade"),
        ("sec-websocket-version", "8", "Sec-WebSocket-Version"),
        ("sec-websocket-key", "c2hvcnQ=", "Sec-WebSocket-Key"),
        ("sec-websocket-key", "", "Sec-WebSocket-Key"),
    ];
    for (name, value, named) in cases {
        let mut req = client.get(server.http("/ws"));
        for (k, v) in good {
            if k != name {
                req = req.header(k, v);
            }
        }
        if !value.is_empty() {
            req = req.header(name, value);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 400, "{name}: {value}");
        let version = resp.headers().get("sec-websocket-version").cloned();
        let body: serde_json::Value = resp.json().await.unwrap();
        assert!(
            body["message"].as_str().unwrap().contains(named),
            "{name}: {body}"
        );
        if name == "sec-websocket-version" {
            assert_eq!(version.unwrap(), "13", "RFC 6455 §4.4");
        }
    }
    let resp = good
        .iter()
        .fold(client.post(server.http("/ws")), |r, (k, v)| {
            r.header(*k, *v)
        })
        .send()
        .await
        .unwrap();
    assert!(
        resp.status() == 400 || resp.status() == 405,
        "{}",
        resp.status()
    );
    server.stop().await;
}

#[tokio::test]
async fn token_problems_are_401() {
    let server = TestServer::with(|c| {
        c.auth.issuer = Some("https://issuer.test".into());
        c.auth.audience = Some("wsgate".into());
    })
    .await;
    let good =
        json!({"sub": "u", "exp": now() + 60, "iss": "https://issuer.test", "aud": "wsgate"});
    let sign =
        |claims: &serde_json::Value| sign_custom(Algorithm::HS256, SECRET.as_bytes(), claims);
    // Sanity: the good claims pass.
    let (ws, _) = tokio_tungstenite::connect_async(server.request(Some(&sign(&good))))
        .await
        .expect("good token accepted");
    drop(ws);

    assert_401(&server, None, "no token").await;
    assert_401(&server, Some("not.a.jwt"), "malformed").await;
    let wrong_key = sign_custom(
        Algorithm::HS256,
        b"another-secret-another-secret-0000",
        &good,
    );
    assert_401(&server, Some(&wrong_key), "signature").await;
    let mut c = good.clone();
    c["exp"] = json!(now() - 10);
    assert_401(&server, Some(&sign(&c)), "expired").await;
    let mut c = good.clone();
    c["nbf"] = json!(now() + 300);
    assert_401(&server, Some(&sign(&c)), "not yet valid").await;
    let mut c = good.clone();
    c["iss"] = json!("https://evil.test");
    assert_401(&server, Some(&sign(&c)), "issuer").await;
    let mut c = good.clone();
    c["aud"] = json!("someone-else");
    assert_401(&server, Some(&sign(&c)), "audience").await;
    let mut c = good.clone();
    c.as_object_mut().unwrap().remove("exp");
    assert_401(&server, Some(&sign(&c)), "claim").await;
    let mut c = good.clone();
    c.as_object_mut().unwrap().remove("sub");
    assert_401(&server, Some(&sign(&c)), "claim").await;
    // HS384 is a fine algorithm, but not on this server's allow-list.
    let hs384 = sign_custom(Algorithm::HS384, SECRET.as_bytes(), &good);
    assert_401(&server, Some(&hs384), "algorithm").await;
    // alg "none": header {"alg":"none","typ":"JWT"}, no signature.
    use base64::Engine;
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&good)
    );
    assert_401(&server, Some(&none), "algorithm").await;

    let metrics = server.metrics_text().await;
    for reason in [
        "token_missing",
        "token_signature",
        "token_expired",
        "token_algorithm",
        "token_issuer",
    ] {
        assert!(
            metrics.contains(&format!(
                "wsgate_handshake_rejections_total{{reason=\"{reason}\"}}"
            )),
            "{reason} counted"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn leeway_accepts_slightly_expired_tokens() {
    let server = TestServer::with(|c| c.auth.leeway_secs = 120).await;
    let t = token_with_ttl("u", -30);
    let (ws, _) = tokio_tungstenite::connect_async(server.request(Some(&t)))
        .await
        .expect("within leeway");
    drop(ws);
    assert_401(&server, Some(&token_with_ttl("u", -300)), "expired").await;
}

#[tokio::test]
async fn hmac_token_is_refused_where_only_an_rsa_key_is_configured() {
    let pem = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rsa_public.pem");
    let server = TestServer::with(|c| {
        c.auth.hmac_secret = None;
        c.auth.public_key_pem = Some(pem.into());
        c.auth.algorithms = vec!["RS256".into()];
    })
    .await;
    // Signed with HS256 using the public key's bytes as the secret: the
    // classic key-confusion attack.
    let public = std::fs::read(pem).unwrap();
    let forged = sign_custom(
        Algorithm::HS256,
        &public,
        &json!({"sub": "u", "exp": now() + 60}),
    );
    assert_401(&server, Some(&forged), "algorithm").await;
    // Even if HS256 were allowed, a token for it is never checked with the RSA key.
    let server2 = TestServer::with(|c| {
        c.auth.public_key_pem = Some(pem.into());
        c.auth.algorithms = vec!["RS256".into(), "HS256".into()];
        c.auth.hmac_secret = Some(wsgate::config::Secret::new(
            "a-completely-different-hmac-secret-xx",
        ));
    })
    .await;
    assert_401(&server2, Some(&forged), "signature").await;
    // A genuine RS256 token passes.
    let private = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/rsa_private.pem"
    ))
    .unwrap();
    let rs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::RS256),
        &json!({"sub": "u", "exp": now() + 60}),
        &jsonwebtoken::EncodingKey::from_rsa_pem(&private).unwrap(),
    )
    .unwrap();
    let (ws, _) = tokio_tungstenite::connect_async(server.request(Some(&rs)))
        .await
        .expect("RS256 accepted");
    drop(ws);
}

#[tokio::test]
async fn subprotocol_token_is_never_echoed() {
    let server = TestServer::start().await;
    let t = token("sp");
    let mut req = server.request(None);
    add_header(
        &mut req,
        "sec-websocket-protocol",
        &format!("wsgate.v1.json, bearer.{t}"),
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("accepted");
    assert_eq!(
        resp.headers().get("sec-websocket-protocol").unwrap(),
        "wsgate.v1.json"
    );
    for (name, value) in resp.headers() {
        assert!(
            !value.to_str().unwrap_or("").contains(&t),
            "{name} leaks the token"
        );
    }
    let connected = next_json(&mut ws).await;
    assert_eq!(connected["payload"]["user"], "sp");
    assert_eq!(connected["payload"]["protocol"], "wsgate.v1.json");

    // bearer.<jwt> alone, with no wsgate protocol to select, is refused.
    let mut req = server.request(None);
    add_header(&mut req, "sec-websocket-protocol", &format!("bearer.{t}"));
    let (status, _, body) = expect_rejection(req).await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn query_token_only_when_enabled() {
    let server = TestServer::start().await;
    let url = format!("{}?token={}", server.url("/ws"), token("q"));
    let (status, _, _) = expect_rejection(url.as_str().into_client_request().unwrap()).await;
    assert_eq!(status, 401);
    let server = TestServer::with(|c| c.auth.allow_query_token = true).await;
    let url = format!("{}?token={}", server.url("/ws"), token("q"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("query token accepted");
    assert_eq!(next_json(&mut ws).await["payload"]["user"], "q");
}

#[tokio::test]
async fn origin_policy() {
    let server = TestServer::with(|c| c.origins.allowed = vec!["https://app.example".into()]).await;
    let t = token("o");
    let try_origin = |origin: Option<String>| {
        let mut req = server.request(Some(&t));
        if let Some(o) = origin {
            add_header(&mut req, "origin", &o);
        }
        req
    };
    // No Origin: not a browser, passes.
    tokio_tungstenite::connect_async(try_origin(None))
        .await
        .expect("no origin");
    // The allowed entry passes.
    tokio_tungstenite::connect_async(try_origin(Some("https://app.example".into())))
        .await
        .expect("allowed origin");
    // Same host as the request passes.
    tokio_tungstenite::connect_async(try_origin(Some(format!("http://{}", server.addr))))
        .await
        .expect("same-host origin");
    for bad in [
        "https://evil.example",
        "https://app.example.evil.com",
        "null",
        "http://app.example",
    ] {
        let (status, _, body) = expect_rejection(try_origin(Some(bad.into()))).await;
        assert_eq!(status, 403, "{bad}");
        assert_eq!(body["error"], "forbidden");
    }
    let star = TestServer::with(|c| c.origins.allowed = vec!["*".into()]).await;
    let mut req = star.request(Some(&t));
    add_header(&mut req, "origin", "https://anything.example");
    tokio_tungstenite::connect_async(req)
        .await
        .expect("* allows all");
}

#[tokio::test]
async fn per_user_cap_is_429_with_retry_after() {
    let server = TestServer::start().await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(server.connect("capped").await);
    }
    let (status, headers, body) = expect_rejection(server.request(Some(&token("capped")))).await;
    assert_eq!(status, 429, "{body}");
    assert!(headers.get("retry-after").is_some());
    assert_eq!(body["error"], "rate_limited");
    // Another user is unaffected, and closing one frees a slot.
    server.connect("other").await;
    let (mut ws, _) = open.pop().unwrap();
    ws.close(None).await.unwrap();
    expect_close(&mut ws).await;
    let mut ok = false;
    for _ in 0..50 {
        if tokio_tungstenite::connect_async(server.request(Some(&token("capped"))))
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(ok, "slot freed after close");
}

#[tokio::test]
async fn per_ip_handshake_rate_is_429() {
    let server = TestServer::with(|c| c.limits.handshakes_per_minute_per_ip = 3).await;
    for i in 0..3 {
        server.connect(&format!("ip{i}")).await;
    }
    let (status, headers, body) = expect_rejection(server.request(Some(&token("ip9")))).await;
    assert_eq!(status, 429, "{body}");
    let retry: u64 = headers
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
}

#[tokio::test]
async fn global_cap_is_503() {
    let server = TestServer::with(|c| c.limits.max_connections = 2).await;
    let _a = server.connect("g1").await;
    let _b = server.connect("g2").await;
    let (status, _, body) = expect_rejection(server.request(Some(&token("g3")))).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "unavailable");
}
