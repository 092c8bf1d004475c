//! `/graphql` over HTTP (SPEC §10): POST a query or mutation with a bearer
//! JWT, or GET one with `?query=` (queries only: a GET changes nothing).
//! A GET that asks for an upgrade is the graphql-transport-ws WebSocket.
//! Answers are GraphQL responses (`{data, errors}`, 200, errors carrying
//! `extensions.code`); what is not a GraphQL request at all gets the JSON
//! error shape of every other endpoint.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;
use wsgate_graphql::Operation;

use super::error::ApiError;
use super::threads::user;
use crate::handshake::{self, UpgradeRequest};
use crate::state::AppState;

/// `GET /graphql`: the WebSocket, or a query in the query string
/// (`query`, `operationName`, `variables` as JSON text).
pub async fn get(req: UpgradeRequest) -> Response {
    if req.wants_upgrade() {
        return handshake::graphql_upgrade(req).await;
    }
    let state = req.state().clone();
    let result = async {
        let identity = user(&state, req.headers())?;
        let op = query_operation(req.uri().query().unwrap_or(""))?;
        Ok::<_, ApiError>(state.graphql.execute(identity, &op, false).await)
    }
    .await;
    match result {
        Ok(response) => Json(response).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /graphql`: `{query, operationName?, variables?}`.
pub async fn post(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let result = async {
        let identity = user(&state, &headers)?;
        let op: Operation = serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(format!(
                "the body must be a GraphQL request {{\"query\", \"operationName\", \"variables\"}}: {e}"
            ))
        })?;
        op.check_maps()?;
        Ok::<_, ApiError>(state.graphql.execute(identity, &op, true).await)
    }
    .await;
    match result {
        Ok(response) => Json(response).into_response(),
        Err(e) => e.into_response(),
    }
}

fn query_operation(query: &str) -> Result<Operation, ApiError> {
    let mut op = Operation {
        query: String::new(),
        operation_name: None,
        variables: None,
        extensions: None,
    };
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "query" => op.query = v.into_owned(),
            "operationName" => op.operation_name = Some(v.into_owned()),
            "variables" => {
                let vars: Value = serde_json::from_str(&v)
                    .map_err(|e| ApiError::bad_request(format!("variables: {e}")))?;
                op.variables = Some(vars);
            }
            _ => {}
        }
    }
    if op.query.is_empty() {
        return Err(ApiError::bad_request(
            "GET /graphql needs ?query= (or an upgrade to graphql-transport-ws)",
        ));
    }
    op.check_maps()?;
    Ok(op)
}

#[cfg(test)]
mod tests {
    use super::{query_operation, ApiError, Operation};
    use axum::http::StatusCode;
    use serde_json::json;

    #[test]
    fn variables_and_extensions_are_maps() {
        let post = |body| serde_json::from_value::<Operation>(body).unwrap();
        let status = |op: Operation| ApiError::from(op.check_maps().unwrap_err()).status;
        assert!(post(json!({"query": "{a}", "variables": {"x": 1}}))
            .check_maps()
            .is_ok());
        assert!(post(json!({"query": "{a}", "variables": null}))
            .check_maps()
            .is_ok());
        for bad in [json!([null]), json!(1), json!("x")] {
            let body = json!({"query": "{a}", "variables": bad.clone()});
            assert_eq!(status(post(body)), StatusCode::BAD_REQUEST);
            let body = json!({"query": "{a}", "extensions": bad});
            assert_eq!(status(post(body)), StatusCode::BAD_REQUEST);
        }
        assert!(query_operation("query=%7Ba%7D&variables=%7B%7D").is_ok());
        let e = query_operation("query=%7Ba%7D&variables=%5B1%5D").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }
}
