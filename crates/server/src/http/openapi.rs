//! The OpenAPI 3 description of every HTTP endpoint this server has.

use axum::Json;
use serde_json::{json, Value};

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

/// The document; a test checks that every route of the router is in it.
pub fn document() -> Value {
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "wsgate",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Secure real-time WebSocket gateway. The WebSocket protocol is described in docs/protocol.md."
        },
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" },
                "apiKey": { "type": "apiKey", "in": "header", "name": "X-API-Key" }
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {
                        "error": { "type": "string" },
                        "message": { "type": "string" }
                    }
                }
            }
        },
        "paths": {
            "/ws": { "get": {
                "summary": "WebSocket endpoint (upgrade). Token as Authorization bearer, subprotocol bearer.<jwt>, or ?token= when enabled.",
                "security": [{ "bearer": [] }],
                "parameters": [{ "name": "token", "in": "query", "required": false, "schema": { "type": "string" } }],
                "responses": {
                    "101": { "description": "Switching protocols" },
                    "400": error_response("Not a valid WebSocket upgrade request"),
                    "401": error_response("Missing or invalid token"),
                    "403": error_response("Origin not allowed"),
                    "429": error_response("Per-user connection cap or per-IP handshake rate exceeded (Retry-After)"),
                    "503": error_response("Server connection limit reached")
                }
            }},
            "/health": { "get": {
                "summary": "Liveness",
                "responses": { "200": { "description": "{\"status\":\"ok\"}" } }
            }},
            "/ready": { "get": {
                "summary": "Readiness: storage and broker answer",
                "responses": { "200": { "description": "ready" }, "503": error_response("a dependency failed") }
            }},
            "/metrics": { "get": {
                "summary": "Prometheus metrics (OpenMetrics text)",
                "responses": { "200": { "description": "metrics" } }
            }},
            "/ws/config": { "get": {
                "summary": "Public client settings: heartbeat, limits, protocols, auth transports",
                "responses": { "200": { "description": "settings" } }
            }},
            "/ws/stats": { "get": {
                "summary": "Counters and gauges (admin JWT or API key)",
                "security": [{ "bearer": [] }, { "apiKey": [] }],
                "responses": {
                    "200": { "description": "stats" },
                    "401": error_response("no credentials"),
                    "403": error_response("not an admin")
                }
            }},
            "/api/users/{user}/disconnect": { "post": {
                "summary": "Close every connection of a user with close code 4003",
                "security": [{ "apiKey": [] }],
                "parameters": [{ "name": "user", "in": "path", "required": true, "schema": { "type": "string" } }],
                "responses": {
                    "200": { "description": "{\"user\", \"disconnected\": N}" },
                    "401": error_response("missing or wrong API key")
                }
            }},
            "/api/openapi.json": { "get": {
                "summary": "This document",
                "responses": { "200": { "description": "OpenAPI 3 document" } }
            }}
        }
    })
}

pub async fn openapi() -> Json<Value> {
    Json(document())
}
