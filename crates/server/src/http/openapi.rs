//! The OpenAPI 3 description of every HTTP endpoint this server has.
//!
//! Every status an operation can answer is listed, each error with the one
//! error shape (`#/components/schemas/Error`) and each success with the
//! schema of its body, so that `scripts/api-fuzz.sh` (schemathesis) can
//! hold every answer to this document. Built from small `json!` pieces: one
//! literal for the whole document would pass the macro's recursion limit.

use axum::Json;
use serde_json::{json, Value};

/// A channel name (SPEC §5); whether its namespace exists depends on the
/// configuration (an unknown one is a 400).
const CHANNEL_PATTERN: &str = "^[A-Za-z0-9_.:@-]{1,255}$";

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

/// A 401: every one names the scheme, as RFC 6750 asks.
fn unauthorized(description: &str) -> Value {
    let mut response = error_response(description);
    response["headers"]["WWW-Authenticate"] = json!({
        "description": "Bearer error=\"invalid_token\"",
        "required": true,
        "schema": { "type": "string", "pattern": "^Bearer" }
    });
    response
}

/// A 429: with the seconds to wait.
fn rate_limited(description: &str) -> Value {
    let mut response = error_response(description);
    response["headers"]["Retry-After"] = json!({
        "description": "seconds to wait",
        "required": true,
        "schema": { "type": "integer", "minimum": 1 }
    });
    response
}

/// A JSON answer and its schema.
fn json_response(description: &str, schema: Value) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": schema } }
    })
}

/// An answer that is not JSON: its media type, a string.
fn text_response(description: &str, media_types: &[&str]) -> Value {
    let mut response = json!({ "description": description });
    for media_type in media_types {
        response["content"][*media_type] = json!({ "schema": { "type": "string" } });
    }
    response
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// A required JSON request body.
fn json_body(schema: Value) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": schema } } })
}

fn path_param(name: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "path", "required": true, "schema": schema })
}

fn query_param(name: &str, description: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "query", "required": false, "description": description, "schema": schema })
}

/// A path segment: any non-empty text (an empty one is another route).
fn segment() -> Value {
    json!({ "type": "string", "minLength": 1 })
}

/// A count or offset: what a `u64` holds.
fn count(minimum: u64) -> Value {
    json!({ "type": "integer", "minimum": minimum, "maximum": u64::MAX })
}

/// The document; a test checks that every route of the router is in it.
pub fn document() -> Value {
    let mut doc = json!({
        "openapi": "3.0.3",
        "info": {
            "title": "wsgate",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Secure real-time WebSocket gateway. The WebSocket protocol is described in docs/protocol.md. Every error is JSON {\"error\": CODE, \"message\": TEXT}."
        },
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" },
                "apiKey": { "type": "apiKey", "in": "header", "name": "X-API-Key" }
            },
            "schemas": schemas()
        },
        "paths": {}
    });
    let groups = [
        websocket_paths(),
        server_api_paths(),
        ops_paths(),
        thread_paths(),
        graphql_paths(),
        dashboard_paths(),
    ];
    for (path, item) in groups.into_iter().flatten() {
        doc["paths"][path] = item;
    }
    doc
}

pub async fn openapi() -> Json<Value> {
    Json(document())
}

fn schemas() -> Value {
    json!({
        "Error": {
            "type": "object",
            "required": ["error", "message"],
            "properties": {
                "error": { "type": "string", "pattern": "^[a-z][a-z_]*$" },
                "message": { "type": "string" }
            }
        },
        "Channel": { "type": "string", "pattern": CHANNEL_PATTERN },
        "Published": {
            "type": "object",
            "required": ["offset", "epoch"],
            "properties": { "offset": count(1), "epoch": { "type": "string" } }
        },
        "Thread": {
            "type": "object",
            "required": ["id", "title", "created_at", "updated_at"],
            "additionalProperties": false,
            "properties": {
                "id": { "type": "string" },
                "title": { "type": "string" },
                "created_at": { "type": "integer", "description": "Unix milliseconds" },
                "updated_at": { "type": "integer", "description": "Unix milliseconds" }
            }
        },
        "Message": {
            "type": "object",
            "required": ["id", "thread_id", "role", "content", "created_at"],
            "additionalProperties": false,
            "properties": {
                "id": { "type": "string" },
                "thread_id": { "type": "string" },
                "role": { "type": "string", "enum": ["user", "assistant"] },
                "content": { "type": "string" },
                "created_at": { "type": "integer", "description": "Unix milliseconds" }
            }
        },
        "Run": {
            "type": "object",
            "required": ["id", "thread_id", "status", "error", "started_at", "ended_at"],
            "additionalProperties": false,
            "properties": {
                "id": { "type": "string" },
                "thread_id": { "type": "string" },
                "status": { "type": "string", "enum": ["running", "completed", "stopped", "failed"] },
                "error": { "type": "string", "nullable": true },
                "started_at": { "type": "integer", "description": "Unix milliseconds" },
                "ended_at": { "type": "integer", "nullable": true, "description": "Unix milliseconds; null while running" }
            }
        }
    })
}

/// What a GET of a WebSocket endpoint answers: the upgrade, or one of the
/// handshake's refusals (SPEC §3). A GET without an upgrade is a 400.
fn upgrade_responses() -> Value {
    json!({
        "101": { "description": "Switching protocols" },
        "400": error_response("Not a valid WebSocket upgrade request (a plain GET is not one), or no usable subprotocol"),
        "401": unauthorized("Missing or invalid token"),
        "403": error_response("Origin not allowed"),
        "429": rate_limited("Per-user connection cap or per-IP handshake rate exceeded"),
        "503": error_response("Server connection limit reached")
    })
}

/// A read-only stream: the upgrade's answers, and a channel the token may
/// not read is 403 too.
fn stream_get(summary: &str) -> Value {
    let mut get = json!({
        "summary": summary,
        "security": [{ "bearer": [] }],
        "responses": upgrade_responses()
    });
    get["responses"]["403"] = error_response("Origin or channel not permitted");
    get
}

fn websocket_paths() -> Vec<(&'static str, Value)> {
    let mut stream =
        stream_get("Read-only stream of any channel the token may subscribe to (as /ws/metrics)");
    stream["operationId"] = json!("streamChannel");
    stream["parameters"] = json!([path_param("channel", schema_ref("Channel"))]);
    stream["responses"]["400"] =
        error_response("Not a valid WebSocket upgrade request, or an invalid channel name");
    let mut metrics = stream_get("Read-only stream of the `metrics` channel: each publication's data as one raw JSON text frame; text `ping` is answered with `pong`. Query parameters other than `token` filter on top-level fields.");
    metrics["operationId"] = json!("streamMetrics");
    let mut events = stream_get("Read-only stream of the `events` channel (as /ws/metrics)");
    events["operationId"] = json!("streamEvents");
    vec![
        (
            "/ws",
            json!({ "get": {
                "operationId": "connect",
                "summary": "WebSocket endpoint (upgrade). Token as Authorization bearer, subprotocol bearer.<jwt>, or ?token= when enabled.",
                "security": [{ "bearer": [] }],
                "parameters": [query_param("token", "the token, when auth.allow_query_token is on", json!({ "type": "string" }))],
                "responses": upgrade_responses()
            }}),
        ),
        ("/ws/metrics", json!({ "get": metrics })),
        ("/ws/events", json!({ "get": events })),
        ("/ws/stream/{channel}", json!({ "get": stream })),
    ]
}

/// The server API (`X-API-Key`).
fn server_api_paths() -> Vec<(&'static str, Value)> {
    let publish_body = json!({
        "type": "object", "required": ["channel", "data"], "additionalProperties": false,
        "properties": { "channel": schema_ref("Channel"), "data": {} }
    });
    let broadcast_body = json!({
        "type": "object", "required": ["channels", "data"], "additionalProperties": false,
        "properties": {
            "channels": {
                "type": "array", "minItems": 1, "maxItems": 1000,
                "description": "any names: one that is not a channel gets an error result of its own",
                "items": { "type": "string" }
            },
            "data": {}
        }
    });
    let broadcast_result = json!({
        "type": "object",
        "required": ["results"],
        "properties": { "results": { "type": "array", "items": { "oneOf": [
            {
                "type": "object", "required": ["channel", "offset", "epoch"],
                "properties": { "channel": { "type": "string" }, "offset": count(1), "epoch": { "type": "string" } }
            },
            {
                "type": "object", "required": ["channel", "error", "message"],
                "properties": { "channel": { "type": "string" }, "error": { "type": "string" }, "message": { "type": "string" } }
            }
        ] } } }
    });
    let presence = json!({
        "type": "object",
        "required": ["channel", "clients"],
        "properties": {
            "channel": { "type": "string" },
            "clients": { "type": "array", "items": {
                "type": "object", "required": ["user", "connection_id"],
                "properties": { "user": { "type": "string" }, "connection_id": { "type": "string" } }
            } }
        }
    });
    let history = json!({
        "type": "object",
        "required": ["channel", "epoch", "offset", "publications"],
        "properties": {
            "channel": { "type": "string" },
            "epoch": { "type": "string" },
            "offset": count(0),
            "publications": { "type": "array", "items": {
                "type": "object", "required": ["offset", "data"],
                "properties": { "offset": count(1), "data": {} }
            } }
        }
    });
    // After a publication, its channel's history and presence answer 200.
    let channel_links = json!({
        "GetHistory": { "operationId": "getChannelHistory", "parameters": { "channel": "$request.body#/channel" } },
        "GetPresence": { "operationId": "getChannelPresence", "parameters": { "channel": "$request.body#/channel" } }
    });
    vec![
        (
            "/api/publish",
            json!({ "post": {
                "operationId": "publish",
                "summary": "Publish data to a channel",
                "security": [{ "apiKey": [] }],
                "requestBody": json_body(publish_body),
                "responses": {
                    "200": {
                        "description": "Published",
                        "content": { "application/json": { "schema": schema_ref("Published") } },
                        "links": channel_links
                    },
                    "400": error_response("Invalid body, channel name, or a namespace that is not configured"),
                    "401": unauthorized("Missing or wrong API key"),
                    "413": error_response("Body over 1 MiB"),
                    "415": error_response("Content-Type is not application/json"),
                    "503": error_response("Broker unavailable")
                }
            }}),
        ),
        (
            "/api/broadcast",
            json!({ "post": {
                "operationId": "broadcast",
                "summary": "Publish the same data to up to 1000 channels; one result per channel",
                "security": [{ "apiKey": [] }],
                "requestBody": json_body(broadcast_body),
                "responses": {
                    "200": json_response("One result per channel, in order", broadcast_result),
                    "400": error_response("Invalid body, or not 1 to 1000 channels"),
                    "401": unauthorized("Missing or wrong API key"),
                    "413": error_response("Body over 1 MiB"),
                    "415": error_response("Content-Type is not application/json")
                }
            }}),
        ),
        (
            "/api/channels/{channel}/presence",
            json!({ "get": {
                "operationId": "getChannelPresence",
                "summary": "Clients present in a channel (namespace with presence enabled)",
                "security": [{ "apiKey": [] }],
                "parameters": [path_param("channel", schema_ref("Channel"))],
                "responses": {
                    "200": json_response("The clients present", presence),
                    "400": error_response("Invalid channel, unknown namespace, or presence not enabled"),
                    "401": unauthorized("Missing or wrong API key"),
                    "503": error_response("Broker unavailable")
                }
            }}),
        ),
        (
            "/api/channels/{channel}/history",
            json!({ "get": {
                "operationId": "getChannelHistory",
                "summary": "A channel's kept publications (namespace with history enabled)",
                "security": [{ "apiKey": [] }],
                "parameters": [
                    path_param("channel", schema_ref("Channel")),
                    query_param("limit", "at most this many (default and cap: the namespace's history_size, at most 1000)", count(0)),
                    query_param("since_offset", "with since_epoch: the publications after this offset", count(0)),
                    query_param("since_epoch", "with since_offset", json!({ "type": "string" }))
                ],
                "responses": {
                    "200": json_response("The publications", history),
                    "400": error_response("Invalid channel or query, unknown namespace, history not enabled, or only one of since_offset and since_epoch"),
                    "401": unauthorized("Missing or wrong API key"),
                    "503": error_response("Broker unavailable")
                }
            }}),
        ),
        (
            "/api/users/{user}/disconnect",
            json!({ "post": {
                "operationId": "disconnectUser",
                "summary": "Close every connection of a user with close code 4003",
                "security": [{ "apiKey": [] }],
                "parameters": [path_param("user", segment())],
                "responses": {
                    "200": json_response("The connections closed on this node", json!({
                        "type": "object", "required": ["user", "disconnected"],
                        "properties": { "user": { "type": "string" }, "disconnected": count(0) }
                    })),
                    "401": unauthorized("Missing or wrong API key"),
                    "503": error_response("Broker unavailable: other nodes not reached")
                }
            }}),
        ),
    ]
}

/// Health, readiness, metrics, client settings, stats.
fn ops_paths() -> Vec<(&'static str, Value)> {
    let config = json!({
        "type": "object",
        "required": ["endpoint", "protocols", "graphql", "auth_transports", "heartbeat_secs", "heartbeat_timeout_secs",
            "max_message_bytes", "messages_per_minute", "message_burst", "max_subscriptions", "max_connections_per_user", "compression"],
        "properties": {
            "endpoint": { "type": "string" },
            "protocols": { "type": "array", "items": { "type": "string" } },
            "graphql": { "type": "object", "required": ["endpoint", "protocol"] },
            "auth_transports": { "type": "array", "items": { "type": "string", "enum": ["header", "subprotocol", "query"] } },
            "heartbeat_secs": count(1),
            "heartbeat_timeout_secs": count(1),
            "max_message_bytes": count(1),
            "messages_per_minute": count(1),
            "message_burst": count(1),
            "max_subscriptions": count(1),
            "max_connections_per_user": count(1),
            "compression": { "type": "boolean" }
        }
    });
    let stats = json!({
        "type": "object",
        "required": ["node", "uptime_secs", "connections", "users", "active_connections_gauge"],
        "properties": {
            "node": { "type": "string" },
            "uptime_secs": count(0),
            "connections": count(0),
            "users": count(0),
            "active_connections_gauge": { "type": "integer" }
        }
    });
    vec![
        (
            "/health",
            json!({ "get": {
                "operationId": "health",
                "summary": "Liveness",
                "responses": { "200": json_response("Alive", json!({
                    "type": "object", "required": ["status"], "properties": { "status": { "type": "string", "enum": ["ok"] } }
                })) }
            }}),
        ),
        (
            "/ready",
            json!({ "get": {
                "operationId": "ready",
                "summary": "Readiness: storage and broker answer",
                "responses": {
                    "200": json_response("Ready", json!({
                        "type": "object", "required": ["status", "checks"],
                        "properties": { "status": { "type": "string", "enum": ["ready"] }, "checks": { "type": "object" } }
                    })),
                    "503": error_response("A dependency failed; also {status: not_ready, checks}")
                }
            }}),
        ),
        (
            "/metrics",
            json!({ "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (OpenMetrics text)",
                "responses": { "200": text_response("Metrics", &["application/openmetrics-text"]) }
            }}),
        ),
        (
            "/ws/config",
            json!({ "get": {
                "operationId": "clientConfig",
                "summary": "Public client settings: heartbeat, limits, protocols, auth transports",
                "responses": { "200": json_response("Settings", config) }
            }}),
        ),
        (
            "/ws/stats",
            json!({ "get": {
                "operationId": "stats",
                "summary": "Counters and gauges (admin JWT or API key)",
                "security": [{ "bearer": [] }, { "apiKey": [] }],
                "responses": {
                    "200": json_response("Stats", stats),
                    "401": unauthorized("No credentials, or invalid ones"),
                    "403": error_response("Not an admin")
                }
            }}),
        ),
        (
            "/api/openapi.json",
            json!({ "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": { "200": json_response("OpenAPI 3 document", json!({ "type": "object", "required": ["openapi", "paths"] })) }
            }}),
        ),
    ]
}

/// The user API for threads (SPEC §6): bearer JWT, owner-only.
fn thread_paths() -> Vec<(&'static str, Value)> {
    let id = || path_param("id", segment());
    let thread = || {
        json_response(
            "The thread",
            json!({ "type": "object", "required": ["thread"], "properties": { "thread": schema_ref("Thread") } }),
        )
    };
    // A title or content: some text that is not only white space.
    let title = json!({ "type": "string", "minLength": 1, "maxLength": 200, "pattern": "\\S" });
    let content = json!({ "type": "string", "minLength": 1, "pattern": "\\S", "description": "at most limits.max_message_bytes bytes" });
    let limit = || query_param("limit", "at most this many (default 50, cap 200)", count(1));
    // Each operation on a thread follows its creation.
    let links = json!({
        "GetThread": { "operationId": "getThread", "parameters": { "id": "$response.body#/thread/id" } },
        "RenameThread": { "operationId": "renameThread", "parameters": { "id": "$response.body#/thread/id" } },
        "DeleteThread": { "operationId": "deleteThread", "parameters": { "id": "$response.body#/thread/id" } },
        "ListMessages": { "operationId": "listMessages", "parameters": { "id": "$response.body#/thread/id" } },
        "PostMessage": { "operationId": "postMessage", "parameters": { "id": "$response.body#/thread/id" } },
        "ListRuns": { "operationId": "listRuns", "parameters": { "id": "$response.body#/thread/id" } }
    });
    let mut created = json_response(
        "The new thread",
        json!({ "type": "object", "required": ["thread"], "properties": { "thread": schema_ref("Thread") } }),
    );
    created["links"] = links;
    let threads = json!({
        "type": "object", "required": ["threads"],
        "properties": { "threads": { "type": "array", "items": schema_ref("Thread") } }
    });
    let messages = json!({
        "type": "object", "required": ["thread_id", "messages"],
        "properties": { "thread_id": { "type": "string" }, "messages": { "type": "array", "items": schema_ref("Message") } }
    });
    let runs = json!({
        "type": "object", "required": ["thread_id", "runs"],
        "properties": { "thread_id": { "type": "string" }, "runs": { "type": "array", "items": schema_ref("Run") } }
    });
    let accepted = json!({
        "type": "object", "required": ["message", "run_id"],
        "properties": { "message": schema_ref("Message"), "run_id": { "type": "string" } }
    });
    vec![
        (
            "/api/threads",
            json!({
                "get": {
                    "operationId": "listThreads",
                    "summary": "The caller's threads, most recently updated first",
                    "security": [{ "bearer": [] }],
                    "parameters": [limit(), query_param("before", "a thread id: the page after it", json!({ "type": "string" }))],
                    "responses": {
                        "200": json_response("A page of threads", threads),
                        "400": error_response("Invalid query"),
                        "401": unauthorized("Missing or invalid token"),
                        "503": error_response("Storage unavailable")
                    }
                },
                "post": {
                    "operationId": "createThread",
                    "summary": "Create a thread (title at most 200 characters; none or blank: \"New thread\")",
                    "security": [{ "bearer": [] }],
                    "requestBody": json_body(json!({
                        "type": "object", "properties": { "title": { "type": "string", "maxLength": 200, "nullable": true } }, "additionalProperties": false
                    })),
                    "responses": {
                        "201": created,
                        "400": error_response("Invalid body or title"),
                        "401": unauthorized("Missing or invalid token"),
                        "413": error_response("Body over 1 MiB"),
                        "415": error_response("Content-Type is not application/json"),
                        "503": error_response("Storage unavailable")
                    }
                }
            }),
        ),
        (
            "/api/threads/{id}",
            json!({
                "get": {
                    "operationId": "getThread",
                    "summary": "One of the caller's threads",
                    "security": [{ "bearer": [] }],
                    "parameters": [id()],
                    "responses": {
                        "200": thread(),
                        "401": unauthorized("Missing or invalid token"),
                        "404": error_response("No such thread of the caller's"),
                        "503": error_response("Storage unavailable")
                    }
                },
                "patch": {
                    "operationId": "renameThread",
                    "summary": "Rename a thread",
                    "security": [{ "bearer": [] }],
                    "parameters": [id()],
                    "requestBody": json_body(json!({
                        "type": "object", "required": ["title"], "properties": { "title": title }, "additionalProperties": false
                    })),
                    "responses": {
                        "200": thread(),
                        "400": error_response("Invalid body or title"),
                        "401": unauthorized("Missing or invalid token"),
                        "404": error_response("No such thread of the caller's"),
                        "413": error_response("Body over 1 MiB"),
                        "415": error_response("Content-Type is not application/json"),
                        "503": error_response("Storage unavailable")
                    }
                },
                "delete": {
                    "operationId": "deleteThread",
                    "summary": "Delete a thread with its messages and runs",
                    "security": [{ "bearer": [] }],
                    "parameters": [id()],
                    "responses": {
                        "204": { "description": "Deleted" },
                        "401": unauthorized("Missing or invalid token"),
                        "404": error_response("No such thread of the caller's"),
                        "503": error_response("Storage unavailable")
                    }
                }
            }),
        ),
        (
            "/api/threads/{id}/messages",
            json!({
                "post": {
                    "operationId": "postMessage",
                    "summary": "Store a user message and start an agent run; its events stream on thread:<id>",
                    "security": [{ "bearer": [] }],
                    "parameters": [id()],
                    "requestBody": json_body(json!({
                        "type": "object", "required": ["content"], "properties": { "content": content }, "additionalProperties": false
                    })),
                    "responses": {
                        "202": json_response("Stored; the run started", accepted),
                        "400": error_response("Invalid body or content"),
                        "401": unauthorized("Missing or invalid token"),
                        "404": error_response("No such thread of the caller's"),
                        "409": error_response("A run in progress on the thread, or the per-user run cap reached"),
                        "413": error_response("Body over 1 MiB"),
                        "415": error_response("Content-Type is not application/json"),
                        "503": error_response("Storage unavailable")
                    }
                },
                "get": {
                    "operationId": "listMessages",
                    "summary": "A page of a thread's messages, oldest first",
                    "security": [{ "bearer": [] }],
                    "parameters": [id(), limit(), query_param("before", "a message id: the messages before it", json!({ "type": "string" }))],
                    "responses": {
                        "200": json_response("A page of messages", messages),
                        "400": error_response("Invalid query"),
                        "401": unauthorized("Missing or invalid token"),
                        "404": error_response("No such thread of the caller's"),
                        "503": error_response("Storage unavailable")
                    }
                }
            }),
        ),
        (
            "/api/threads/{id}/runs",
            json!({ "get": {
                "operationId": "listRuns",
                "summary": "A thread's agent runs, in the order they started",
                "security": [{ "bearer": [] }],
                "parameters": [id()],
                "responses": {
                    "200": json_response("The runs", runs),
                    "401": unauthorized("Missing or invalid token"),
                    "404": error_response("No such thread of the caller's"),
                    "503": error_response("Storage unavailable")
                }
            }}),
        ),
    ]
}

/// `/graphql`, one route for GET (a query, or the WebSocket) and POST.
fn graphql_paths() -> Vec<(&'static str, Value)> {
    // A GraphQL response; its errors carry `extensions.code`.
    let response = json_response(
        "GraphQL response {data, errors}",
        json!({
            "type": "object",
            "properties": {
                "data": {},
                "errors": { "type": "array", "items": {
                    "type": "object", "required": ["message", "extensions"],
                    "properties": {
                        "message": { "type": "string" },
                        "extensions": { "type": "object", "required": ["code"], "properties": { "code": { "type": "string" } } }
                    }
                } }
            }
        }),
    );
    let mut get_responses = upgrade_responses();
    get_responses["101"] = json!({ "description": "Switching protocols (graphql-transport-ws)" });
    get_responses["200"] = response.clone();
    get_responses["400"] = error_response(
        "No ?query=, variables that are not a JSON object, or an upgrade without the graphql-transport-ws subprotocol",
    );
    let variables = json!({
        "name": "variables", "in": "query", "required": false, "description": "a JSON object",
        "content": { "application/json": { "schema": { "type": "object" } } }
    });
    vec![(
        "/graphql",
        json!({
            "get": {
                "operationId": "graphqlGet",
                "summary": "GraphQL (docs/graphql.md). With an upgrade: subscriptions over WebSocket, subprotocol graphql-transport-ws, token on the upgrade or in connection_init (no query parameter needed). Without: a query (never a mutation) in ?query=, bearer JWT.",
                "security": [{ "bearer": [] }],
                "parameters": [
                    { "name": "query", "in": "query", "required": true, "schema": { "type": "string", "minLength": 1 } },
                    { "name": "operationName", "in": "query", "required": false, "schema": { "type": "string" } },
                    variables
                ],
                "responses": get_responses
            },
            "post": {
                "operationId": "graphqlPost",
                "summary": "GraphQL query or mutation: {query, operationName?, variables?}",
                "security": [{ "bearer": [] }],
                "requestBody": json_body(json!({
                    "type": "object",
                    "required": ["query"],
                    "properties": {
                        "query": { "type": "string" },
                        "operationName": { "type": "string", "nullable": true },
                        "variables": { "type": "object", "nullable": true },
                        "extensions": { "type": "object", "nullable": true }
                    }
                })),
                "responses": {
                    "200": response,
                    "400": error_response("The body is not a GraphQL request"),
                    "401": unauthorized("Missing or invalid token"),
                    "413": error_response("Body over 1 MiB")
                }
            }
        }),
    )]
}

/// `/dashboard` and its files.
fn dashboard_paths() -> Vec<(&'static str, Value)> {
    vec![
        (
            "/dashboard",
            json!({ "get": {
                "operationId": "dashboard",
                "summary": "The live operations page (HTML; strict CSP, files embedded in the binary)",
                "responses": { "200": text_response("The page", &["text/html"]) }
            }}),
        ),
        (
            "/dashboard/dev.json",
            json!({ "get": {
                "operationId": "dashboardDevToken",
                "summary": "In --dev, to a client on this machine: the printed dev token, to fill in the dashboard's prompt",
                "responses": {
                    "200": json_response("The token", json!({
                        "type": "object", "required": ["token"], "properties": { "token": { "type": "string" } }
                    })),
                    "404": error_response("not in --dev, or not a loopback client")
                }
            }}),
        ),
        (
            "/dashboard/{file}",
            json!({ "get": {
                "operationId": "dashboardFile",
                "summary": "The dashboard's script and stylesheet",
                "parameters": [path_param("file", json!({ "type": "string", "enum": ["app.js", "app.css"] }))],
                "responses": {
                    "200": text_response("The file", &["text/javascript", "text/css"]),
                    "404": error_response("no such file")
                }
            }}),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::document;

    /// Every operation has an id of its own, every link names one of them,
    /// and every error status an operation lists is the one error shape
    /// (what `scripts/api-fuzz.sh` holds the running server to).
    #[test]
    fn operations_links_and_errors() {
        let doc = document();
        let mut ids = std::collections::HashSet::new();
        let mut links = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let id = op["operationId"].as_str();
                let id = id.unwrap_or_else(|| panic!("{method} {path}: no operationId"));
                assert!(ids.insert(id.to_owned()), "operationId {id} twice");
                for (status, response) in op["responses"].as_object().unwrap() {
                    if status.starts_with('4') || status.starts_with('5') {
                        assert_eq!(
                            response["content"]["application/json"]["schema"]["$ref"],
                            "#/components/schemas/Error",
                            "{method} {path} {status}"
                        );
                    }
                    if let Some(l) = response["links"].as_object() {
                        links.extend(l.values().map(|l| l["operationId"].clone()));
                    }
                }
            }
        }
        assert!(!links.is_empty());
        for link in links {
            assert!(ids.contains(link.as_str().unwrap()), "link to {link}");
        }
    }
}
