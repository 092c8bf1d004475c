#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target to fuzz/seeds/<target>/.

The seeds are valid inputs of each format (what real clients, upstreams and
operators send) plus a few known-hostile ones, so that the fuzzer starts
past the outer syntax. Run it after changing a format; the output is
committed. Needs the `msgpack` package (pip install msgpack)."""

import base64
import hashlib
import hmac
import json
import os
import shutil
import zlib

import msgpack

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")
SEEDS = {}


def seed(target, name, data):
    if isinstance(data, str):
        data = data.encode()
    SEEDS.setdefault(target, []).append((name, data))


# --- envelope: selector byte (0 JSON, 1 MessagePack) + a client frame ----
FRAMES = [
    {"type": "ping", "id": "1"},
    {"type": "subscribe", "id": "2", "payload": {"channel": "news"}},
    {"type": "subscribe", "id": "3", "payload": {"channel": "user:alice",
     "filter": {"kind": "a"}, "recover": {"offset": 3, "epoch": "e1"}}},
    {"type": "unsubscribe", "id": "4", "payload": {"channel": "news"}},
    {"type": "publish", "id": "5", "payload": {"channel": "chat:1", "data": {"text": "hi", "n": [1, 2.5, None, True]}}},
    {"type": "presence", "id": "6", "payload": {"channel": "room:1"}},
    {"type": "history", "id": "7", "payload": {"channel": "news", "limit": 10, "since": {"offset": 1, "epoch": "x"}}},
    {"type": "refresh_token", "id": "8", "payload": {"token": "a.b.c"}},
    {"type": "create_thread", "id": "9", "payload": {"title": "t"}},
    {"type": "list_threads", "id": "10", "payload": {"limit": 5, "before": "01J"}},
    {"type": "switch_thread", "id": "11", "payload": {"thread_id": "01J"}},
    {"type": "get_thread_history", "id": "12", "payload": {"thread_id": "01J", "limit": 50}},
    {"type": "rename_thread", "id": "13", "payload": {"thread_id": "01J", "title": "new"}},
    {"type": "delete_thread", "id": "14", "payload": {"thread_id": "01J"}},
    {"type": "user_message", "id": "15", "payload": {"content": "hello", "thread_id": "01J"}},
    {"type": "start_agent", "id": "16", "payload": {"thread_id": "01J"}},
    {"type": "stop_agent", "id": "17", "payload": {"run_id": "r1"}},
    {"type": "nope", "id": 18, "payload": []},
]
for i, f in enumerate(FRAMES):
    seed("envelope", f"json-{i}", b"\x00" + json.dumps(f).encode())
    seed("envelope", f"msgpack-{i}", b"\x01" + msgpack.packb(f))
seed("envelope", "json-deep", b"\x00" + b"[" * 200 + b"]" * 200)
seed("envelope", "msgpack-deep", b"\x01" + b"\x91" * 2000 + b"\xc0")
seed("envelope", "msgpack-huge-len", b"\x01\xdd\xff\xff\xff\xff")


# --- inflate: read size, mode (1: deflate negotiated), client frames ----
def frame(opcode, payload, fin=True, rsv1=False, mask=b"\x01\x02\x03\x04"):
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        head = bytes([b0, 0x80 | n])
    elif n < 65536:
        head = bytes([b0, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([b0, 0x80 | 127]) + n.to_bytes(8, "big")
    masked = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
    return head + mask + masked


def deflated(data):
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


text = b'{"type":"publish","payload":{"channel":"news","data":"' + b"x" * 300 + b'"}}'
z = deflated(text)
seed("inflate", "plain-text", b"\x40\x00" + frame(1, b'{"type":"ping"}'))
seed("inflate", "compressed-text", b"\x40\x01" + frame(1, z, rsv1=True))
seed("inflate", "compressed-split", b"\x03\x01" + frame(1, z[:10], fin=False, rsv1=True) + frame(0, z[10:]))
seed("inflate", "ping-between", b"\x07\x01" + frame(1, z[:5], fin=False, rsv1=True) + frame(9, b"p") + frame(0, z[5:]))
seed("inflate", "bomb", b"\xff\x01" + frame(2, deflated(b"\x00" * 1_000_000), rsv1=True))
seed("inflate", "close", b"\x10\x01" + frame(8, b"\x03\xe8bye"))
seed("inflate", "rsv1-on-control", b"\x10\x01" + frame(9, b"x", rsv1=True))
seed("inflate", "unmasked", b"\x10\x01" + bytes([0xc1, 0x05]) + deflated(b"hello")[:5])
seed("inflate", "long-len", b"\x10\x01" + bytes([0xc1, 0xff]) + (2**63).to_bytes(8, "big") + b"\x00" * 4)


# --- upgrade: a raw HTTP request head -------------------------------------
def upgrade(extra="", path="/ws", method="GET", version="1.1"):
    return (f"{method} {path} HTTP/{version}\r\nHost: localhost:8080\r\n"
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" + extra + "\r\n")


seed("upgrade", "plain", upgrade())
seed("upgrade", "bearer", upgrade("Authorization: Bearer a.b.c\r\n"))
seed("upgrade", "protocols", upgrade("Sec-WebSocket-Protocol: wsgate.v1.msgpack, bearer.a.b.c\r\n"))
seed("upgrade", "bearer-only-protocol", upgrade("Sec-WebSocket-Protocol: bearer.a.b.c\r\n"))
seed("upgrade", "query-token", upgrade(path="/ws?token=a.b.c&x=%FF"))
seed("upgrade", "origin", upgrade("Origin: https://app.example\r\n"))
seed("upgrade", "origin-self", upgrade("Origin: http://LOCALHOST:8080\r\n"))
seed("upgrade", "deflate", upgrade("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits, x-webkit-deflate-frame\r\n"))
seed("upgrade", "deflate-params", upgrade("Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=9; client_no_context_takeover\r\n"))
seed("upgrade", "post", upgrade(method="POST"))
seed("upgrade", "http10", upgrade(version="1.0"))
seed("upgrade", "multi-connection", upgrade("Connection: keep-alive, Upgrade\r\n"))


# --- jwt: mode 0 a raw token; mode 1 header 0xff claims, signed -----------
SECRET = b"fuzzing-secret-0123456789abcdef"


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=")


def token(header, claims, secret=SECRET):
    signed = b64(json.dumps(header).encode()) + b"." + b64(json.dumps(claims).encode())
    sig = hmac.new(secret, signed, hashlib.sha256).digest()
    return signed + b"." + b64(sig)


good_claims = {"sub": "alice", "exp": 4102444800, "iss": "wsgate", "aud": ["clients"],
               "roles": ["admin"], "channels": ["user:alice", "news*"], "name": "Alice"}
seed("jwt", "valid", b"\x00" + token({"alg": "HS256", "typ": "JWT"}, good_claims))
seed("jwt", "expired", b"\x00" + token({"alg": "HS256"}, dict(good_claims, exp=1)))
seed("jwt", "wrong-key", b"\x00" + token({"alg": "HS256"}, good_claims, b"other"))
seed("jwt", "alg-none", b"\x00" + b64(b'{"alg":"none"}') + b"." + b64(json.dumps(good_claims).encode()) + b".")
seed("jwt", "kid-path", b"\x00" + token({"alg": "HS256", "kid": "../../etc/passwd", "jku": "http://x"}, good_claims))
seed("jwt", "garbage", b"\x00not.a.token")
for i, (h, c) in enumerate([
    ({"alg": "HS256", "typ": "JWT"}, good_claims),
    ({"alg": "HS256"}, dict(good_claims, aud="clients", role="ops")),
    ({"alg": "HS256"}, dict(good_claims, sub="")),
    ({"alg": "HS256"}, dict(good_claims, exp=1e300)),
    ({"alg": "HS256"}, dict(good_claims, nbf=4102444800)),
    ({"alg": "HS256"}, dict(good_claims, iss=["wsgate"])),
    ({"alg": "HS256", "crit": ["exp"], "x5u": "http://x"}, dict(good_claims, channels="x")),
]):
    seed("jwt", f"signed-{i}", b"\x01" + json.dumps(h).encode() + b"\xff" + json.dumps(c).encode())


# --- agent_ndjson: chunk size + an NDJSON body ---------------------------
events = [
    {"type": "agent_thinking", "payload": {"text": "hm"}},
    {"type": "tool_executing", "payload": {"tool": "search", "input": {"q": "x"}}},
    {"type": "tool_result", "payload": {"tool": "search", "output": [1, 2]}},
    {"type": "partial_result", "payload": {"delta": "Hel"}},
    {"type": "partial_result", "payload": {"delta": "lo"}},
    {"type": "final_report", "payload": {"content": "Hello"}},
]
body = "\n".join(json.dumps(e) for e in events)
seed("agent_ndjson", "full", b"\x07" + body.encode() + b"\n")
seed("agent_ndjson", "crlf-no-final-newline", b"\x40" + body.replace("\n", "\r\n").encode())
seed("agent_ndjson", "blank-lines", b"\x01" + b"\n\n  \n" + body.encode())
seed("agent_ndjson", "no-report", b"\x10" + json.dumps(events[3]).encode() + b"\n")
seed("agent_ndjson", "bad-event", b"\x10" + b'{"type":"partial_result","payload":{"delta":5}}\n')


# --- agent_sse: chunk size + an OpenAI chat/completions stream -----------
def chunk(content):
    return "data: " + json.dumps({"id": "c1", "object": "chat.completion.chunk",
                                  "choices": [{"index": 0, "delta": {"content": content}}]}) + "\n\n"


sse = (": keep-alive\n\n" + "data: " + json.dumps({"choices": [{"delta": {"role": "assistant"}}]}) + "\n\n"
       + chunk("Hel") + chunk("lo") + "data: " + json.dumps({"choices": [], "usage": {"total_tokens": 3}}) + "\n\n"
       + "data: [DONE]\n\n")
seed("agent_sse", "full", b"\x05" + sse.encode())
seed("agent_sse", "crlf", b"\x40" + sse.replace("\n", "\r\n").encode())
seed("agent_sse", "event-and-id", b"\x03" + b"event: message\nid: 1\nretry: 10\n" + chunk("x").encode() + b"data: [DONE]\n\n")
seed("agent_sse", "error", b"\x20" + b'data: {"error":{"message":"quota"}}\n\n')
seed("agent_sse", "multiline-data", b"\x20" + b'data: {"choices":\ndata: [{"delta":{"content":"a"}}]}\n\ndata: [DONE]\n\n')


# --- config: TOML files ----------------------------------------------------
seed("config", "empty", "")
seed("config", "full", """listen = "0.0.0.0:8080"
shutdown_grace_secs = 10
metrics_interval_secs = 1

[auth]
hmac_secret = "a-long-random-secret-of-32-bytes-at-least"
algorithms = ["HS256"]
issuer = "wsgate"
audience = "clients"
leeway_secs = 5
allow_query_token = true

[origins]
allowed = ["https://app.example"]

[limits]
max_connections_per_user = 5
max_message_bytes = 65536

[transport]
compression = true
compression_level = 6

[api]
keys = ["a-long-random-server-api-key"]

[graphql]
max_depth = 12
max_complexity = 500

[log]
format = "json"
""")
seed("config", "jwks", """[auth]
jwks_url = "https://idp.example/.well-known/jwks.json"
algorithms = ["RS256"]
""")
seed("config", "storage", """[storage]
url = "postgres://user:pass@127.0.0.1:5432/test?sslmode=disable"

[broker]
kind = "redis"
url = "redis://127.0.0.1:6379/0"

[agent]
kind = "openai"
url = "https://api.openai.com/v1"
""")
seed("config", "bad", "[limits]\nmax_message_bytes = -1\nunknown = 1e400\n")


# --- graphql: graphql-transport-ws messages --------------------------------
def sub(query, variables=None, name=None):
    payload = {"query": query}
    if variables is not None:
        payload["variables"] = variables
    if name is not None:
        payload["operationName"] = name
    return json.dumps({"type": "subscribe", "id": "1", "payload": payload})


seed("graphql", "init", json.dumps({"type": "connection_init", "payload": {"token": "a.b.c"}}))
seed("graphql", "ping", '{"type":"ping"}')
seed("graphql", "complete", '{"type":"complete","id":"1"}')
seed("graphql", "me", sub("{ me { user roles name expiresAt } }"))
seed("graphql", "threads", sub("query Q($n: Int) { threads(limit: $n) { id title } }", {"n": 5}, "Q"))
seed("graphql", "history", sub('{ history(channel: "news", limit: 5, since: {offset: 1, epoch: "e"}) { publications { offset data } } }'))
seed("graphql", "channel", sub("subscription($n: String!) { channel(name: $n) { offset epoch data } }", {"n": "news"}))
seed("graphql", "thread-events", sub('subscription { threadEvents(threadId: "t") { type payload } }'))
seed("graphql", "mutation", sub('mutation { publish(channel: "a", data: {x: [1, 2]}) { offset epoch } sendMessage(content: "hi") { threadId } }'))
seed("graphql", "fragments", sub("query { ...F } fragment F on QueryRoot { me { ...G } } fragment G on Me { user }"))
seed("graphql", "fragment-cycle", sub("query { ...F } fragment F on QueryRoot { ...F }"))
seed("graphql", "deep", sub("{ " + "thread(id: \"a\") { messages { " * 12 + "id" + " } }" * 12 + " }"))
seed("graphql", "introspection", sub("{ __schema { types { name fields { name type { ofType { ofType { name } } } } } } }"))
seed("graphql", "aliases", sub("{ " + " ".join(f"a{i}: me {{ user }}" for i in range(300)) + " }"))
seed("graphql", "directives", sub("query($s: Boolean!) { me @include(if: $s) @skip(if: false) { user } }", {"s": True}))

shutil.rmtree(ROOT, ignore_errors=True)
for target, items in SEEDS.items():
    os.makedirs(os.path.join(ROOT, target))
    for name, data in items:
        with open(os.path.join(ROOT, target, name), "wb") as f:
            f.write(data)
print({t: len(v) for t, v in SEEDS.items()})
