// auth.test.mjs — tokens: subprotocol transport, refresh before exp
// (getToken called again, token_refreshed, the connection outlives the first
// token), a refused token reported as 'unauthorized' and not retried
// forever, tokens rejected locally (not a JWT / expired), 4001 at exp.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { WsgateClient, decodeToken } from '../dist/index.js';
import { startServer, sign, WebSocket, nextEvent, waitFor, sleep } from './harness.mjs';

let server;
const clients = [];
function counting() {
  const made = [];
  class CountingWS extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      made.push({ url, protocols });
    }
  }
  return { made, CountingWS };
}
function client(opts) {
  const c = new WsgateClient({ url: server.url, WebSocket, minReconnectDelayMs: 50, maxReconnectDelayMs: 200, ...opts });
  clients.push(c);
  return c;
}

before(async () => {
  server = await startServer();
});
after(async () => {
  for (const c of clients) c.close();
  await server.cleanup();
});

test('the token travels as a subprotocol, never in the URL', async () => {
  const { made, CountingWS } = counting();
  const token = sign({ sub: 'proto' });
  const c = client({ WebSocket: CountingWS, token });
  c.connect();
  await nextEvent(c, 'connected');
  assert.equal(made.length, 1);
  assert.deepEqual(made[0].protocols, ['wsgate.v1.json', 'bearer.' + token]);
  assert.ok(!made[0].url.includes(token));
  assert.equal(decodeToken(token).sub, 'proto');
});

test('refresh before exp: getToken again, token_refreshed, the connection outlives the first token', async () => {
  const firstExp = Math.floor(Date.now() / 1000) + 5;
  let calls = 0;
  const c = client({
    refreshMarginSecs: 3,
    getToken: async () => (++calls === 1 ? sign({ sub: 'refresh', exp: firstExp }) : sign({ sub: 'refresh', expIn: 3600 })),
  });
  const frames = [];
  const discs = [];
  c.on('frame', (f) => frames.push(f));
  c.on('disconnected', (d) => discs.push(d));
  c.connect();
  const info = await nextEvent(c, 'connected');
  assert.equal(info.expires_at, firstExp);
  const refreshed = await waitFor(() => frames.find((f) => f.type === 'token_refreshed'), 5000, 'token_refreshed');
  assert.ok(refreshed.payload.expires_at > firstExp + 3000);
  assert.equal(calls, 2, 'getToken called once more for the refresh');
  // Past the first token's exp (+1 s): still the same connection.
  await sleep(Math.max(0, firstExp * 1000 - Date.now()) + 1200);
  assert.deepEqual(discs, [], 'no 4001, no reconnect');
  assert.equal(c.state, 'connected');
  await c.ping();
  assert.ok(frames.some((f) => f.type === 'token_expiring'), 'the server warned (less than 60 s left)');
});

test('a refused token (bad signature): unauthorized, getToken once more, then stop', async () => {
  const { made, CountingWS } = counting();
  let calls = 0;
  const c = client({
    WebSocket: CountingWS,
    getToken: () => {
      calls++;
      return sign({ sub: 'bad', secret: 'another-secret-0123456789-0123456789-xyz' });
    },
  });
  const errors = [];
  c.on('error', (e) => errors.push(e));
  const queued = c.ping().then(() => null, (e) => e);
  c.connect();
  await waitFor(() => c.state === 'closed', 5000, 'closed');
  assert.equal((await queued)?.code, 'unauthorized', 'the queued command rejects with the refusal');
  await sleep(1000);
  assert.equal(made.length, 2, 'two handshakes, then no more');
  assert.equal(calls, 2);
  assert.ok(errors.length >= 1 && errors.every((e) => e.code === 'unauthorized'));
  assert.equal(c.state, 'closed');
});

test('a fixed refused token: one attempt only', async () => {
  const { made, CountingWS } = counting();
  const c = client({ WebSocket: CountingWS, token: sign({ sub: 'bad2', secret: 'another-secret-0123456789-0123456789-xyz' }) });
  const err = nextEvent(c, 'error');
  c.connect();
  assert.equal((await err).code, 'unauthorized');
  await sleep(600);
  assert.equal(made.length, 1);
  assert.equal(c.state, 'closed');
});

test('tokens refused locally (browser rule): not a JWT → unauthorized, expired → token_expired; never offered', async () => {
  const { made, CountingWS } = counting();
  const a = client({ WebSocket: CountingWS, token: 'not-a-jwt' });
  const ea = nextEvent(a, 'error');
  a.connect();
  assert.equal((await ea).code, 'unauthorized');
  const b = client({ WebSocket: CountingWS, token: sign({ sub: 'old', expIn: -10 }) });
  const eb = nextEvent(b, 'error');
  b.connect();
  assert.equal((await eb).code, 'token_expired');
  await sleep(200);
  assert.equal(made.length, 0);
  assert.equal(a.state, 'closed');
  assert.equal(b.state, 'closed');
});

test('4001 at exp without refresh: a new token from getToken, reconnected at once', async () => {
  let calls = 0;
  const c = client({
    refreshMarginSecs: 0,
    // The first token expires in 2 s; refreshing is made to fail, so the
    // server closes with 4001 at exp and the SDK reconnects with a new one.
    getToken: () => (++calls === 1 ? sign({ sub: 'exp4001', expIn: 2 }) : calls === 2 ? 'broken' : sign({ sub: 'exp4001' })),
  });
  const discs = [];
  c.on('disconnected', (d) => discs.push(d));
  c.on('error', () => {});
  c.connect();
  await nextEvent(c, 'connected');
  await nextEvent(c, 'connected', () => true, 6000);
  const d = discs.find((x) => x.code === 4001);
  assert.ok(d, JSON.stringify(discs));
  assert.equal(d.delayMs, 0);
  assert.ok(calls >= 3);
});
