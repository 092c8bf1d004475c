//! The user API for threads (SPEC §6): bearer JWT, owner-only (another
//! user's thread is 404, like a missing one), the same `Threads` service
//! as the `/ws` commands, so the rules and the `user:<sub>` news are the
//! same whichever way a thread changes.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use wsgate_core::auth::Identity;

use super::api::object_body;
use super::error::ApiError;
use crate::state::AppState;

/// The caller: a valid bearer JWT, or 401.
pub(super) fn user(state: &AppState, headers: &HeaderMap) -> Result<Identity, ApiError> {
    let token = crate::auth::bearer_token(headers)
        .ok_or_else(|| ApiError::unauthorized("a bearer token is required"))?;
    state
        .verifier
        .verify(token)
        .map_err(|e| ApiError::unauthorized(e.to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    limit: Option<u64>,
    before: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewThread {
    #[serde(default)]
    title: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    content: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rename {
    title: String,
}

/// `GET /api/threads?limit=&before=`.
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let identity = user(&state, &headers)?;
    let threads = state
        .sessions
        .threads
        .list(&identity, q.limit, q.before.as_deref())
        .await?;
    Ok(Json(json!({ "threads": threads })))
}

/// `POST /api/threads` `{title?}` → 201 `{thread}`.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    req: Result<Json<Box<RawValue>>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let identity = user(&state, &headers)?;
    let body: NewThread = object_body(req)?;
    let thread = state
        .sessions
        .threads
        .create(&identity, body.title.as_deref())
        .await?;
    Ok((StatusCode::CREATED, Json(json!({ "thread": thread }))))
}

/// `GET /api/threads/{id}`.
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let identity = user(&state, &headers)?;
    let thread = state.sessions.threads.get(&identity, &id).await?;
    Ok(Json(json!({ "thread": thread })))
}

/// `PATCH /api/threads/{id}` `{title}`.
pub async fn rename(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    req: Result<Json<Box<RawValue>>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let identity = user(&state, &headers)?;
    let body: Rename = object_body(req)?;
    let thread = state
        .sessions
        .threads
        .rename(&identity, &id, &body.title)
        .await?;
    Ok(Json(json!({ "thread": thread })))
}

/// `DELETE /api/threads/{id}` → 204.
pub async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let identity = user(&state, &headers)?;
    state.sessions.threads.delete(&identity, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/threads/{id}/messages?limit=&before=`.
pub async fn messages(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let identity = user(&state, &headers)?;
    let messages = state
        .sessions
        .threads
        .messages(&identity, &id, q.limit, q.before.as_deref())
        .await?;
    Ok(Json(json!({ "thread_id": id, "messages": messages })))
}

/// `POST /api/threads/{id}/messages` `{content}` → 202 `{message, run_id}`:
/// the message is stored and a run starts, whose events stream on
/// `thread:<id>` like any run's.
pub async fn post_message(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    req: Result<Json<Box<RawValue>>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let identity = user(&state, &headers)?;
    let body: NewMessage = object_body(req)?;
    let (threads, runs) = (&state.sessions.threads, &state.sessions.runs);
    let max = state.config.limits.max_message_bytes;
    let (_, message) = runs
        .accept_message(threads, &identity, Some(&id), &body.content, max)
        .await?;
    let run = runs.start(&identity, &id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "message": message, "run_id": run.id })),
    ))
}

/// `GET /api/threads/{id}/runs`.
pub async fn runs(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let identity = user(&state, &headers)?;
    let runs = state.sessions.threads.runs(&identity, &id).await?;
    Ok(Json(json!({ "thread_id": id, "runs": runs })))
}
