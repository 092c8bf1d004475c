//! Every HTTP route of the server, in one place.

mod api;
pub mod error;
pub mod openapi;
mod ops;

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
        .layer(DefaultBodyLimit::max(api::MAX_BODY_BYTES))
        .route("/api/openapi.json", get(openapi::openapi))
        .fallback(ops::not_found)
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
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
