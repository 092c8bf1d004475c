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
    let mut doc = paths();
    doc["paths"]["/graphql"] = graphql_path();
    for (path, item) in dashboard_paths() {
        doc["paths"][path] = item;
    }
    doc
}

/// Every route but `/graphql` and the dashboard's (one `json!` for all would pass the macro's
/// recursion limit).
fn paths() -> Value {
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
            "/ws/metrics": { "get": {
                "summary": "Read-only stream of the `metrics` channel: each publication's data as one raw JSON text frame; text `ping` is answered with `pong`. Query parameters other than `token` filter on top-level fields.",
                "security": [{ "bearer": [] }],
                "responses": { "101": { "description": "Switching protocols" }, "401": error_response("Missing or invalid token"), "403": error_response("Not permitted") }
            }},
            "/ws/events": { "get": {
                "summary": "Read-only stream of the `events` channel (as /ws/metrics)",
                "security": [{ "bearer": [] }],
                "responses": { "101": { "description": "Switching protocols" }, "401": error_response("Missing or invalid token"), "403": error_response("Not permitted") }
            }},
            "/ws/stream/{channel}": { "get": {
                "summary": "Read-only stream of any channel the token may subscribe to (as /ws/metrics)",
                "security": [{ "bearer": [] }],
                "parameters": [{ "name": "channel", "in": "path", "required": true, "schema": { "type": "string", "pattern": "^[A-Za-z0-9_.:@-]{1,255}$" } }],
                "responses": { "101": { "description": "Switching protocols" }, "400": error_response("Invalid channel name"), "401": error_response("Missing or invalid token"), "403": error_response("Stream channel not permitted") }
            }},
            "/api/publish": { "post": {
                "summary": "Publish data to a channel",
                "security": [{ "apiKey": [] }],
                "requestBody": { "required": true, "content": { "application/json": { "schema": {
                    "type": "object", "required": ["channel", "data"], "additionalProperties": false,
                    "properties": { "channel": { "type": "string" }, "data": {} }
                }}}},
                "responses": {
                    "200": { "description": "{\"offset\": N, \"epoch\": E}" },
                    "400": error_response("Invalid body, channel name or namespace"),
                    "401": error_response("Missing or wrong API key"),
                    "503": error_response("Broker unavailable")
                }
            }},
            "/api/broadcast": { "post": {
                "summary": "Publish the same data to up to 1000 channels; one result per channel",
                "security": [{ "apiKey": [] }],
                "requestBody": { "required": true, "content": { "application/json": { "schema": {
                    "type": "object", "required": ["channels", "data"], "additionalProperties": false,
                    "properties": { "channels": { "type": "array", "items": { "type": "string" } }, "data": {} }
                }}}},
                "responses": {
                    "200": { "description": "{\"results\": [{channel, offset, epoch} | {channel, error, message}]}" },
                    "400": error_response("Invalid body"),
                    "401": error_response("Missing or wrong API key")
                }
            }},
            "/api/channels/{channel}/presence": { "get": {
                "summary": "Clients present in a channel (namespace with presence enabled)",
                "security": [{ "apiKey": [] }],
                "parameters": [{ "name": "channel", "in": "path", "required": true, "schema": { "type": "string" } }],
                "responses": {
                    "200": { "description": "{channel, clients: [{user, connection_id}]}" },
                    "400": error_response("Invalid channel or presence not enabled"),
                    "401": error_response("Missing or wrong API key")
                }
            }},
            "/api/channels/{channel}/history": { "get": {
                "summary": "A channel's kept publications (namespace with history enabled)",
                "security": [{ "apiKey": [] }],
                "parameters": [
                    { "name": "channel", "in": "path", "required": true, "schema": { "type": "string" } },
                    { "name": "limit", "in": "query", "required": false, "schema": { "type": "integer", "minimum": 0 } },
                    { "name": "since_offset", "in": "query", "required": false, "schema": { "type": "integer", "minimum": 0 } },
                    { "name": "since_epoch", "in": "query", "required": false, "schema": { "type": "string" } }
                ],
                "responses": {
                    "200": { "description": "{channel, epoch, offset, publications: [{offset, data}]}" },
                    "400": error_response("Invalid channel, query, or history not enabled"),
                    "401": error_response("Missing or wrong API key")
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
            "/api/threads": {
                "get": {
                    "summary": "The caller's threads, most recently updated first",
                    "security": [{ "bearer": [] }],
                    "parameters": [
                        { "name": "limit", "in": "query", "required": false, "schema": { "type": "integer", "minimum": 1 } },
                        { "name": "before", "in": "query", "required": false, "schema": { "type": "string" }, "description": "a thread id: the page after it" }
                    ],
                    "responses": {
                        "200": { "description": "{threads: [{id, title, created_at, updated_at}]}" },
                        "400": error_response("Invalid query"),
                        "401": error_response("Missing or invalid token")
                    }
                },
                "post": {
                    "summary": "Create a thread (title at most 200 characters)",
                    "security": [{ "bearer": [] }],
                    "requestBody": { "required": true, "content": { "application/json": { "schema": {
                        "type": "object", "properties": { "title": { "type": "string", "maxLength": 200 } }, "additionalProperties": false
                    } } } },
                    "responses": {
                        "201": { "description": "{thread}" },
                        "400": error_response("Invalid body or title"),
                        "401": error_response("Missing or invalid token")
                    }
                }
            },
            "/api/threads/{id}": {
                "get": {
                    "summary": "One of the caller's threads",
                    "security": [{ "bearer": [] }],
                    "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }],
                    "responses": {
                        "200": { "description": "{thread}" },
                        "401": error_response("Missing or invalid token"),
                        "404": error_response("No such thread of the caller's")
                    }
                },
                "patch": {
                    "summary": "Rename a thread",
                    "security": [{ "bearer": [] }],
                    "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }],
                    "requestBody": { "required": true, "content": { "application/json": { "schema": {
                        "type": "object", "required": ["title"], "properties": { "title": { "type": "string", "minLength": 1, "maxLength": 200 } }, "additionalProperties": false
                    } } } },
                    "responses": {
                        "200": { "description": "{thread}" },
                        "400": error_response("Invalid body or title"),
                        "401": error_response("Missing or invalid token"),
                        "404": error_response("No such thread of the caller's")
                    }
                },
                "delete": {
                    "summary": "Delete a thread with its messages and runs",
                    "security": [{ "bearer": [] }],
                    "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }],
                    "responses": {
                        "204": { "description": "Deleted" },
                        "401": error_response("Missing or invalid token"),
                        "404": error_response("No such thread of the caller's")
                    }
                }
            },
            "/api/threads/{id}/messages": { "post": {
                "summary": "Store a user message and start an agent run; its events stream on thread:<id>",
                "security": [{ "bearer": [] }],
                "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }],
                "requestBody": { "required": true, "content": { "application/json": { "schema": {
                    "type": "object", "required": ["content"], "properties": { "content": { "type": "string", "minLength": 1 } }, "additionalProperties": false
                } } } },
                "responses": {
                    "202": { "description": "{message, run_id}" },
                    "400": error_response("Invalid body or content"),
                    "401": error_response("Missing or invalid token"),
                    "404": error_response("No such thread of the caller's"),
                    "409": error_response("A run in progress on the thread, or the per-user run cap reached")
                }
            }, "get": {
                "summary": "A page of a thread's messages, oldest first",
                "security": [{ "bearer": [] }],
                "parameters": [
                    { "name": "id", "in": "path", "required": true, "schema": { "type": "string" } },
                    { "name": "limit", "in": "query", "required": false, "schema": { "type": "integer", "minimum": 1 } },
                    { "name": "before", "in": "query", "required": false, "schema": { "type": "string" }, "description": "a message id: the messages before it" }
                ],
                "responses": {
                    "200": { "description": "{thread_id, messages: [{id, thread_id, role, content, created_at}]}" },
                    "400": error_response("Invalid query"),
                    "401": error_response("Missing or invalid token"),
                    "404": error_response("No such thread of the caller's")
                }
            }},
            "/api/threads/{id}/runs": { "get": {
                "summary": "A thread's agent runs, in the order they started",
                "security": [{ "bearer": [] }],
                "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }],
                "responses": {
                    "200": { "description": "{thread_id, runs: [{id, thread_id, status, error, started_at, ended_at}]}" },
                    "401": error_response("Missing or invalid token"),
                    "404": error_response("No such thread of the caller's")
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

/// `/graphql`, one route for GET (a query, or the WebSocket) and POST.
fn graphql_path() -> Value {
    json!({
        "get": {
            "summary": "GraphQL (docs/graphql.md). With an upgrade: subscriptions over WebSocket, subprotocol graphql-transport-ws, token on the upgrade or in connection_init. Without: a query (never a mutation) in ?query=, bearer JWT.",
            "security": [{ "bearer": [] }],
            "parameters": [
                { "name": "query", "in": "query", "required": false, "schema": { "type": "string" } },
                { "name": "operationName", "in": "query", "required": false, "schema": { "type": "string" } },
                { "name": "variables", "in": "query", "required": false, "description": "JSON text", "schema": { "type": "string" } }
            ],
            "responses": {
                "101": { "description": "Switching protocols (graphql-transport-ws)" },
                "200": { "description": "GraphQL response {data, errors}; errors carry extensions.code", "content": { "application/json": { "schema": { "type": "object" } } } },
                "400": error_response("No ?query=, variables that are not JSON, or an upgrade without the graphql-transport-ws subprotocol"),
                "401": error_response("Missing or invalid token"),
                "403": error_response("Origin not allowed"),
                "429": error_response("Per-user connection cap or per-IP handshake rate exceeded (Retry-After)"),
                "503": error_response("Server connection limit reached")
            }
        },
        "post": {
            "summary": "GraphQL query or mutation: {query, operationName?, variables?}",
            "security": [{ "bearer": [] }],
            "requestBody": { "required": true, "content": { "application/json": { "schema": {
                "type": "object",
                "required": ["query"],
                "properties": {
                    "query": { "type": "string" },
                    "operationName": { "type": "string", "nullable": true },
                    "variables": { "type": "object", "nullable": true },
                    "extensions": { "type": "object", "nullable": true }
                }
            } } } },
            "responses": {
                "200": { "description": "GraphQL response {data, errors}; errors carry extensions.code", "content": { "application/json": { "schema": { "type": "object" } } } },
                "400": error_response("The body is not a GraphQL request"),
                "401": error_response("Missing or invalid token"),
                "413": error_response("Body over the limit")
            }
        }
    })
}

/// `/dashboard` and its files.
fn dashboard_paths() -> [(&'static str, Value); 3] {
    [
        (
            "/dashboard",
            json!({ "get": {
                "summary": "The live operations page (HTML; strict CSP, files embedded in the binary)",
                "responses": { "200": { "description": "text/html" } }
            }}),
        ),
        (
            "/dashboard/dev.json",
            json!({ "get": {
                "summary": "In --dev, to a client on this machine: the printed dev token, to fill in the dashboard's prompt",
                "responses": {
                    "200": { "description": "{\"token\"}" },
                    "404": error_response("not in --dev, or not a loopback client")
                }
            }}),
        ),
        (
            "/dashboard/{file}",
            json!({ "get": {
                "summary": "The dashboard's script and stylesheet",
                "parameters": [{ "name": "file", "in": "path", "required": true, "schema": { "type": "string", "enum": ["app.js", "app.css"] } }],
                "responses": {
                    "200": { "description": "text/javascript or text/css" },
                    "404": error_response("no such file")
                }
            }}),
        ),
    ]
}
