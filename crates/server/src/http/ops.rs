//! Operations endpoints: health, readiness, metrics, client settings,
//! admin stats and the disconnect API.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use subtle::ConstantTimeEq;
use wsgate_core::broker::NodeCommand;
use wsgate_core::hub::Hub;
use wsgate_core::metrics::Metrics;
use wsgate_protocol::{CloseCode, PROTOCOL_JSON, PROTOCOL_MSGPACK};

use super::error::ApiError;
use crate::state::AppState;

pub async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// 200 when every dependency answers, else 503 naming the failed ones.
/// The body names checks only: driver errors can carry host names, users
/// or database names, so they go to the log, not to whoever asks.
pub async fn ready(State(state): State<AppState>) -> Response {
    let (storage, broker) = tokio::join!(state.storage.ping(), state.channels.broker.ping());
    let mut failed = Vec::new();
    if let Err(error) = &storage {
        state.metrics.storage_errors.inc();
        tracing::warn!(check = "storage", kind = state.storage.kind(), %error, "not ready");
        failed.push(format!("storage ({})", state.storage.kind()));
    }
    if let Err(error) = &broker {
        state.metrics.broker_errors.inc();
        tracing::warn!(check = "broker", %error, "not ready");
        failed.push("broker".to_owned());
    }
    let status = |ok: bool| if ok { "ok" } else { "failed" };
    let checks = json!({
        "storage": status(storage.is_ok()),
        "broker": status(broker.is_ok()),
    });
    if failed.is_empty() {
        return (
            StatusCode::OK,
            Json(json!({ "status": "ready", "checks": checks })),
        )
            .into_response();
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({
            "error": "unavailable",
            "message": format!("not answering: {}", failed.join(", ")),
            "status": "not_ready",
            "checks": checks,
        })),
    )
        .into_response()
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    state
        .metrics
        .runtime_alive_tasks
        .set(i64::try_from(tasks).unwrap_or(i64::MAX));
    let mut body = String::new();
    if prometheus_client::encoding::text::encode(&mut body, &state.registry).is_err() {
        return ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "metrics encoding failed",
        )
        .into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

pub async fn ws_config(State(state): State<AppState>) -> Json<serde_json::Value> {
    let l = &state.config.limits;
    let mut transports = vec!["header", "subprotocol"];
    if state.config.auth.allow_query_token {
        transports.push("query");
    }
    Json(json!({
        "endpoint": "/ws",
        "protocols": [PROTOCOL_JSON, PROTOCOL_MSGPACK],
        "graphql": { "endpoint": "/graphql", "protocol": wsgate_graphql::PROTOCOL },
        "auth_transports": transports,
        "heartbeat_secs": l.heartbeat_secs,
        "heartbeat_timeout_secs": l.heartbeat_timeout_secs,
        "max_message_bytes": l.max_message_bytes,
        "messages_per_minute": l.messages_per_minute,
        "message_burst": l.message_burst,
        "max_subscriptions": l.max_subscriptions,
        "max_connections_per_user": l.max_connections_per_user,
        "compression": state.config.transport.compression,
    }))
}

/// Whether the request carries a configured `X-API-Key`. Keys are compared
/// in constant time so response timing does not reveal a prefix.
pub fn has_api_key(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(given) = headers.get("x-api-key").map(|v| v.as_bytes()) else {
        return false;
    };
    let mut ok = subtle::Choice::from(0);
    for key in &state.config.api.keys {
        ok |= key.expose().as_bytes().ct_eq(given);
    }
    ok.into()
}

/// The server API: `X-API-Key` only.
pub fn require_api_key(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if has_api_key(state, headers) {
        Ok(())
    } else {
        state.metrics.violation("api_key");
        Err(ApiError::unauthorized("a valid X-API-Key is required"))
    }
}

/// Admin endpoints: an API key, or a bearer JWT with role `admin`.
pub fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if has_api_key(state, headers) {
        return Ok(());
    }
    let Some(token) = crate::auth::bearer_token(headers) else {
        return Err(ApiError::unauthorized(
            "an admin token or X-API-Key is required",
        ));
    };
    match state.verifier.verify(token) {
        Ok(id) if id.has_role("admin") => Ok(()),
        Ok(_) => Err(ApiError::forbidden("role admin is required")),
        Err(e) => Err(ApiError::unauthorized(e.to_string())),
    }
}

pub async fn ws_stats(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_admin(&state, &headers)?;
    Ok(Json((state.stats)()))
}

/// What `/ws/stats` and GraphQL's `stats` answer.
pub fn stats(
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    node: String,
    started_at: Instant,
) -> impl Fn() -> serde_json::Value + Send + Sync + 'static {
    move || {
        let h = hub.stats();
        json!({
            "node": node,
            "uptime_secs": started_at.elapsed().as_secs(),
            "connections": h.connections,
            "users": h.users,
            "active_connections_gauge": metrics.connections_active.get(),
        })
    }
}

pub async fn disconnect_user(
    State(state): State<AppState>,
    Path(user): Path<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_api_key(&state, &headers)?;
    // This node's connections close before the answer (`disconnected`
    // counts them); every other node closes its own as the command,
    // sent through the broker, reaches it.
    let n = state.hub.close_user(&user, CloseCode::Disconnected);
    let command = NodeCommand::Disconnect { user: user.clone() };
    if let Err(e) = state.channels.broker.to_all_nodes(&command).await {
        state.metrics.broker_errors.inc();
        return Err(ApiError::unavailable(format!(
            "closed {n} connection(s) on this node; other nodes not reached: {e}"
        )));
    }
    tracing::info!(target: "wsgate::audit", event = "disconnect_user", user = %user, connections = n);
    Ok(Json(json!({ "user": user, "disconnected": n })))
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}
