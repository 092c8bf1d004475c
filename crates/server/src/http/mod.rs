//! Every HTTP route of the server, in one place.

mod api;
pub mod dashboard;
pub mod error;
mod graphql;
pub mod openapi;
pub mod ops;
mod threads;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use crate::handshake::{self, ws_handler};
use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/ws", get(ws_handler))
        .route("/ws/metrics", get(handshake::metrics_stream))
        .route("/ws/events", get(handshake::events_stream))
        .route("/ws/stream/{channel}", get(handshake::channel_stream))
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/ws/config", get(ops::ws_config))
        .route("/ws/stats", get(ops::ws_stats))
        .route("/api/users/{user}/disconnect", post(ops::disconnect_user))
        .route("/api/publish", post(api::publish))
        .route("/api/broadcast", post(api::broadcast))
        .route("/api/channels/{channel}/presence", get(api::presence))
        .route("/api/channels/{channel}/history", get(api::history))
        .route("/api/threads", get(threads::list).post(threads::create))
        .route(
            "/api/threads/{id}",
            get(threads::get)
                .patch(threads::rename)
                .delete(threads::delete),
        )
        .route(
            "/api/threads/{id}/messages",
            get(threads::messages).post(threads::post_message),
        )
        .route("/api/threads/{id}/runs", get(threads::runs))
        .route("/graphql", get(graphql::get).post(graphql::post))
        .route("/dashboard", get(dashboard::index))
        .route("/dashboard/", get(dashboard::trailing_slash))
        .route("/dashboard/dev.json", get(dashboard::dev_token))
        .route("/dashboard/{file}", get(dashboard::file))
        .layer(DefaultBodyLimit::max(wsgate_core::limits::MAX_BODY_BYTES))
        .route("/api/openapi.json", get(openapi::openapi))
        .fallback(ops::not_found)
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

/// Largest body of an error response rewritten by [`json_errors`]; the
/// rejections it rewrites are one-line texts.
const MAX_ERROR_TEXT: usize = 4096;

/// Every error response in the one JSON shape, `{"error", "message"}`:
/// our handlers already answer so, and this rewrites the ones axum makes
/// itself (a path that does not decode, a method not allowed, a body over
/// the limit, a query that does not parse), which are plain text or empty.
async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, MAX_ERROR_TEXT)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    let code = match status.as_u16() {
        400 | 422 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "timeout",
        413 => "too_large",
        415 => "unsupported_media_type",
        429 => "rate_limited",
        503 => "unavailable",
        _ if status.is_server_error() => "internal",
        _ => "bad_request",
    };
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// Security headers on every HTTP response. A `101 Switching Protocols`
/// gets none: some proxies and clients mishandle extra headers on upgrades.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        return resp;
    }
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}
