//! RS256 tokens checked against a JWKS served by a local HTTP server, which
//! then goes down: the last good keys stay in use.

use std::time::Duration;

use axum::routing::get;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::harness::*;

fn rs256(kid: &str, sub: &str) -> String {
    let private = include_bytes!("../fixtures/rsa_private.pem");
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(
        &header,
        &json!({"sub": sub, "exp": now() + 600}),
        &EncodingKey::from_rsa_pem(private).unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn jwks_keys_survive_the_endpoint_going_down() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_addr = listener.local_addr().unwrap();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().route(
        "/jwks.json",
        get(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { include_str!("../fixtures/jwks.json") }
        }),
    );
    let jwks_server = tokio::spawn(async move { axum::serve(listener, app).await });

    let server = TestServer::with(|c| {
        c.auth.hmac_secret = None;
        c.auth.algorithms = vec!["RS256".into()];
        c.auth.jwks_url = Some(format!("http://{jwks_addr}/jwks.json"));
        c.auth.jwks_refresh_secs = 1;
    })
    .await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(server.request(Some(&rs256("test-rsa-1", "j"))))
            .await
            .expect("RS256 token verified with the JWKS key");
    assert_eq!(next_json(&mut ws).await["payload"]["user"], "j");
    assert!(hits.load(std::sync::atomic::Ordering::SeqCst) >= 1);

    // An unknown kid is refused (and no URL is built from it).
    let (status, _, _) = expect_rejection(server.request(Some(&rs256("unknown-kid", "j")))).await;
    assert_eq!(status, 401);

    // The identity provider goes away; refreshes fail from now on.
    jwks_server.abort();
    let _ = jwks_server.await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (mut ws2, _) =
        tokio_tungstenite::connect_async(server.request(Some(&rs256("test-rsa-1", "j2"))))
            .await
            .expect("last good keys still verify");
    assert_eq!(next_json(&mut ws2).await["payload"]["user"], "j2");
    server.stop().await;
}

#[tokio::test]
async fn an_oversized_jwks_is_refused_without_reading_it_whole() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = sent.clone();
    // A chunked answer that never ends (no Content-Length to check first).
    let app = axum::Router::new().route(
        "/endless",
        get(move || {
            let counter = counter.clone();
            async move {
                axum::body::Body::from_stream(futures_util::stream::repeat_with(move || {
                    counter.fetch_add(64 * 1024, std::sync::atomic::Ordering::Relaxed);
                    Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 64 * 1024]))
                }))
            }
        }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let cache = wsgate::auth::JwksCache::new(format!("http://{addr}/endless"));
    let started = std::time::Instant::now();
    let err = cache.refresh().await.unwrap_err().to_string();
    assert!(err.contains("larger than"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Reading stopped at the cap (plus what was in flight), far below what
    // buffering until the fetch timeout would have taken in.
    let read = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(read < 64 << 20, "{read} bytes produced");
    server.abort();
}

#[tokio::test]
async fn a_jwks_endpoint_that_never_answers_fails_the_fetch_in_bounded_time() {
    // Accepts the connection, reads the request, and never writes a byte.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hung = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let cache = wsgate::auth::JwksCache::new(format!("http://{addr}/jwks.json"));
    let started = std::time::Instant::now();
    let err = cache.refresh().await.unwrap_err().to_string();
    let took = started.elapsed();
    // The fetch timeout (3 s) ends it: the refresher does not hang.
    assert!(took < Duration::from_secs(5), "{took:?}: {err}");
    assert!(took >= Duration::from_secs(2), "{took:?}: {err}");
    assert_eq!(cache.key_count(), 0);
    hung.abort();
}
