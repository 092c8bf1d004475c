//! The server API (`X-API-Key`): publish, broadcast, presence, history.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use wsgate_core::channels::publication::StreamPosition;
use wsgate_core::channels::Caller;

use super::error::ApiError;
use super::ops::require_api_key;
use crate::state::AppState;

use wsgate_core::limits::MAX_BROADCAST_CHANNELS;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    channel: String,
    data: Box<RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcastRequest {
    channels: Vec<String>,
    data: Box<RawValue>,
}

/// A JSON body, or the one error shape: 413 over the limit, 415 without a
/// JSON content type, 400 for anything else wrong with it.
pub(super) fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(t)| t).map_err(|e| {
        // Keep the rejection's status: 413 for a body over the limit, 415
        // without a JSON content type; any other fault of the body is 400.
        let (status, code) = match e.status().as_u16() {
            413 => (e.status(), "too_large"),
            415 => (e.status(), "unsupported_media_type"),
            _ => (axum::http::StatusCode::BAD_REQUEST, "bad_request"),
        };
        ApiError::new(status, code, e.body_text())
    })
}

/// A JSON object body as `T`, or the one error shape as [`body`] gives it.
/// serde's derived structs also accept an array of their fields in order
/// (`[]` made a thread, found by schemathesis), so the body is taken as raw
/// JSON first and anything but an object is refused with 400.
pub(super) fn object_body<T: serde::de::DeserializeOwned>(
    raw: Result<Json<Box<RawValue>>, JsonRejection>,
) -> Result<T, ApiError> {
    let raw = body(raw)?;
    let bad = |message: String| {
        ApiError::new(axum::http::StatusCode::BAD_REQUEST, "bad_request", message)
    };
    if !raw.get().trim_start().starts_with('{') {
        return Err(bad("the body must be a JSON object".into()));
    }
    serde_json::from_str(raw.get()).map_err(|e| bad(format!("invalid body: {e}")))
}

/// `data` verbatim, and parsed once for filters and MessagePack.
fn data_parts(raw: &RawValue) -> (Bytes, Value) {
    let text = raw.get();
    // RawValue holds valid JSON, so parsing it again cannot fail.
    let value = serde_json::from_str(text).unwrap_or(Value::Null);
    (Bytes::copy_from_slice(text.as_bytes()), value)
}

pub async fn publish(
    State(state): State<AppState>,
    headers: HeaderMap,
    req: Result<Json<Box<RawValue>>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    require_api_key(&state, &headers)?;
    let req: PublishRequest = object_body(req)?;
    let (data, value) = data_parts(&req.data);
    let p = state
        .channels
        .publish(Caller::Server, &req.channel, data, value)
        .await?;
    Ok(Json(json!({ "offset": p.offset, "epoch": &*p.epoch })))
}

pub async fn broadcast(
    State(state): State<AppState>,
    headers: HeaderMap,
    req: Result<Json<Box<RawValue>>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    require_api_key(&state, &headers)?;
    let req: BroadcastRequest = object_body(req)?;
    if req.channels.is_empty() || req.channels.len() > MAX_BROADCAST_CHANNELS {
        return Err(ApiError::bad_request(format!(
            "channels must name 1 to {MAX_BROADCAST_CHANNELS} channels"
        )));
    }
    let (data, value) = data_parts(&req.data);
    let mut results = Vec::with_capacity(req.channels.len());
    for channel in &req.channels {
        // Bytes clones share one buffer; the parsed value is cloned per
        // channel because each publication keeps its own.
        match state
            .channels
            .publish(Caller::Server, channel, data.clone(), value.clone())
            .await
        {
            Ok(p) => {
                results.push(json!({"channel": channel, "offset": p.offset, "epoch": &*p.epoch}))
            }
            Err(e) => {
                results.push(json!({"channel": channel, "error": e.code, "message": e.message}))
            }
        }
    }
    Ok(Json(json!({ "results": results })))
}

pub async fn presence(
    State(state): State<AppState>,
    Path(channel): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_api_key(&state, &headers)?;
    let clients = state.channels.presence(Caller::Server, &channel).await?;
    Ok(Json(json!({ "channel": channel, "clients": clients })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    limit: Option<usize>,
    since_offset: Option<u64>,
    since_epoch: Option<String>,
}

pub async fn history(
    State(state): State<AppState>,
    Path(channel): Path<String>,
    headers: HeaderMap,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    require_api_key(&state, &headers)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let since = match (q.since_offset, q.since_epoch) {
        (Some(offset), Some(epoch)) => Some(StreamPosition {
            offset,
            epoch: epoch.into(),
        }),
        (None, None) => None,
        _ => {
            return Err(ApiError::bad_request(
                "since_offset and since_epoch go together",
            ))
        }
    };
    // One answer, not cut to a byte budget like the `history` command's
    // reply: an HTTP body is not held to a connection's queue.
    let page = state
        .channels
        .history(Caller::Server, &channel, since.as_ref(), q.limit)
        .await?;
    let publications: Vec<Value> = page
        .publications
        .iter()
        .map(|p| json!({"offset": p.offset, "data": &p.value}))
        .collect();
    Ok(Json(json!({
        "channel": channel,
        "epoch": &*page.position.epoch,
        "offset": page.position.offset,
        "publications": publications,
    })))
}
