// Drives wsgate's /graphql endpoint with the stock `graphql-ws` client
// (protocol graphql-transport-ws) over the `ws` package, and checks that:
//   - a client with a valid JWT in connection_init is acknowledged;
//   - a `channel` subscription receives a message published over HTTP, and
//     can be completed by the client;
//   - a subscription to another user's channel is refused with an `error`
//     message carrying GraphQL errors;
//   - a `me` query works over the same socket (one `next`, then `complete`);
//   - a client with a bad token is closed by the server (code reported).
//
// Run by `cargo nextest run --workspace` via crates/server/tests/it/graphql.rs:
//   node client.mjs <wsUrl> <token> <publishUrl> <apiKey>
//   e.g. node client.mjs ws://127.0.0.1:PORT/graphql JWT http://127.0.0.1:PORT/api/publish KEY
// Prints one JSON object per line, each with an "event" field, in this order:
//   connected, next, completed, refused, me, bad_token_closed
// Anything unexpected prints {"event":"error","message":...} and exits 1.

import WebSocket from 'ws';
import { createClient } from 'graphql-ws';

const emit = (event, fields = {}) => console.log(JSON.stringify({ event, ...fields }));

let stage = 'start';
function fail(message) {
  emit('error', { message: `${stage}: ${message}` });
  process.exit(1);
}

// CloseEvent and ErrorEvent from `ws` keep their fields in getters, which
// JSON.stringify does not see, so describe them by hand.
function describe(x) {
  if (x && typeof x === 'object' && 'code' in x && 'reason' in x) return `close ${x.code} "${x.reason}"`;
  if (x && typeof x.message === 'string') return x.message;
  try { return JSON.stringify(x); } catch { return String(x); }
}

process.on('unhandledRejection', (e) => fail(`unhandled rejection: ${describe(e)}`));
process.on('uncaughtException', (e) => fail(`uncaught exception: ${describe(e)}`));
setTimeout(() => fail('timed out (30 s deadline for the whole script)'), 30_000);

const [wsUrl, token, publishUrl, apiKey] = process.argv.slice(2);
if (!apiKey) fail('usage: node client.mjs <wsUrl> <token> <publishUrl> <apiKey>');

// a. Client A, non-lazy: one socket for the whole of b, c and d.
stage = 'client A connecting';
let disposingA = false;
let onConnectedA, onClosedA;
const connectedA = new Promise((resolve) => (onConnectedA = resolve));
const closedA = new Promise((resolve) => (onClosedA = resolve));
const clientA = createClient({
  url: wsUrl,
  webSocketImpl: WebSocket,
  connectionParams: { token },
  retryAttempts: 0,
  lazy: false,
  onNonLazyError: (e) => { if (!disposingA) fail(`client A gave up: ${describe(e)}`); },
  on: {
    connected: () => { emit('connected'); onConnectedA(); },
    closed: (e) => (disposingA ? onClosedA() : fail(`client A closed unexpectedly: ${describe(e)}`)),
    error: (e) => fail(`client A socket error: ${describe(e)}`),
  },
});
await connectedA;

// b. Subscribe to a channel; publish over HTTP until the first `next`.
stage = 'news subscription';
await new Promise((resolve) => {
  let got = false;
  let n = 0;
  const publisher = setInterval(() => {
    const i = ++n;
    fetch(publishUrl, {
      method: 'POST',
      headers: { 'X-API-Key': apiKey, 'content-type': 'application/json' },
      body: JSON.stringify({ channel: 'gqlnews', data: { n: i, from: 'graphql-ws' } }),
    })
      .then(async (res) => { if (!res.ok) fail(`publish #${i} answered ${res.status}: ${await res.text()}`); })
      .catch((e) => fail(`publish #${i} failed: ${describe(e)}`));
  }, 200);
  const dispose = clientA.subscribe(
    {
      query: 'subscription News($name: String!) { channel(name: $name) { channel offset epoch data } }',
      variables: { name: 'gqlnews' },
    },
    {
      next: (result) => {
        if (got) return; // later publications racing our `complete`
        got = true;
        clearInterval(publisher);
        emit('next', { payload: result });
        dispose(); // sends {"type":"complete","id":...}; graphql-ws then calls sink.complete
      },
      error: (e) => fail(`subscription errored: ${describe(e)}`),
      complete: () => {
        if (!got) fail('subscription completed before any next');
        emit('completed');
        resolve();
      },
    },
  );
});

// c. Another user's channel: the server must answer with an `error` message.
stage = 'refused subscription';
await new Promise((resolve) => {
  clientA.subscribe(
    { query: 'subscription { channel(name: "user:someone-else") { offset } }' },
    {
      next: (result) => fail(`expected an error message, got next ${describe(result)}`),
      error: (errors) => {
        if (!Array.isArray(errors)) fail(`expected an array of GraphQL errors, got ${describe(errors)}`);
        emit('refused', { errors });
        resolve();
      },
      complete: () => fail('expected an error message, got complete'),
    },
  );
});

// d. A query on the same socket: one `next`, then the server's `complete`.
stage = 'me query';
await new Promise((resolve) => {
  let got = false;
  clientA.subscribe(
    { query: 'query { me { user } }' },
    {
      next: (result) => {
        if (got) fail(`second next for a query: ${describe(result)}`);
        got = true;
        emit('me', { payload: result });
      },
      error: (e) => fail(`query errored: ${describe(e)}`),
      complete: () => (got ? resolve() : fail('query completed without a result')),
    },
  );
});

// e. Close A (waiting for the close handshake), then a client with a bad token.
stage = 'disposing client A';
disposingA = true;
await clientA.dispose();
await closedA;

stage = 'bad token';
const closed = await new Promise((resolve) => {
  createClient({
    url: wsUrl,
    webSocketImpl: WebSocket,
    connectionParams: { token: 'not-a-jwt' },
    retryAttempts: 0,
    lazy: false,
    onNonLazyError: () => {}, // the refusal is what we expect
    on: {
      connected: () => fail('client B was acknowledged despite a bad token'),
      closed: resolve,
      error: () => {}, // e.g. an HTTP refusal of the upgrade; the close event reports it
    },
  });
});
emit('bad_token_closed', { code: closed.code, reason: closed.reason });

// f.
process.exit(0);
