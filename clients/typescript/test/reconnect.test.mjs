// reconnect.test.mjs — the connection lost three ways (server API
// disconnect 4003, server restart 1001, a network cut) with subscription
// recovery; the offline queue (bounded, flushed in order after the
// resubscribes); dead-connection detection through the heartbeat.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { WsgateClient } from '../dist/index.js';
import { startServer, startProxy, sign, WebSocket, nextEvent, closeProxies, waitFor, sleep } from './harness.mjs';

let server;
const clients = [];
function client(opts) {
  const c = new WsgateClient({
    url: server.url,
    WebSocket,
    minReconnectDelayMs: 50,
    maxReconnectDelayMs: 300,
    ...opts,
  });
  clients.push(c);
  return c;
}

before(async () => {
  // heartbeat_secs = 2: the SDK's dead-connection detection acts within ~4 s.
  server = await startServer({ limits: { heartbeat_secs: 2, heartbeat_timeout_secs: 6 } });
});
after(async () => {
  for (const c of clients) c.close();
  await closeProxies();
  await server.cleanup();
});

test('(a) POST /api/users/{user}/disconnect → 4003 → no reconnect', async () => {
  let attempts = 0;
  class CountingWS extends WebSocket {
    constructor(...a) {
      super(...a);
      attempts++;
    }
  }
  const c = client({ WebSocket: CountingWS, token: sign({ sub: 'kicked' }) });
  c.connect();
  await nextEvent(c, 'connected');
  const pending = c.request('ping', undefined, { timeoutMs: 60000 });
  const disc = nextEvent(c, 'disconnected');
  const r = await server.disconnectUser('kicked');
  assert.equal(r.disconnected, 1);
  const d = await disc;
  assert.equal(d.code, 4003);
  assert.equal(d.reconnecting, false);
  assert.equal(c.state, 'closed');
  await pending.catch(() => {}); // the pong may have come first; either way it settled
  await sleep(800);
  assert.equal(attempts, 1, 'no reconnect after 4003');
  assert.equal(c.state, 'closed');
});

test('(c) network cut while the server publishes: recovered, every publication once, in order', async () => {
  const proxy = await startProxy(server.port);
  const c = client({ url: proxy.url, token: sign({ sub: 'cut' }) });
  c.connect();
  const sub = c.subscribe('test:cut');
  await sub.ready();
  const got = [];
  const infos = [];
  sub.on('publication', (p) => got.push(p.data.i));
  sub.on('subscribed', (s) => infos.push(s));
  const N = 60;
  let cutDone = false;
  for (let i = 1; i <= N; i++) {
    await server.publish('test:cut', { i });
    if (i === 20) {
      proxy.cut();
      cutDone = true;
    }
    await sleep(10);
  }
  assert.ok(cutDone);
  await waitFor(() => got.length >= N, 8000, `${N} publications`);
  await sleep(200);
  assert.deepEqual(got, Array.from({ length: N }, (_, i) => i + 1), 'each once, in order');
  assert.ok(infos.length >= 1, 'resubscribed');
  assert.ok(infos.every((s) => s.resubscribed && s.recovered), JSON.stringify(infos));
  assert.ok(proxy.connections >= 2);
  await proxy.close();
  c.close();
});

test('queue: bounded while disconnected (4th → queue_full), flushed in order after the resubscribe', async () => {
  const proxy = await startProxy(server.port);
  const sent = [];
  class RecordingWS extends WebSocket {
    send(d) {
      sent.push(JSON.parse(d));
      super.send(d);
    }
  }
  const c = client({ url: proxy.url, WebSocket: RecordingWS, token: sign({ sub: 'queue' }), maxQueue: 3 });
  c.connect();
  const sub = c.subscribe('test:queue');
  await sub.ready();
  const got = [];
  sub.on('publication', (p) => got.push(p.data.q));
  proxy.refuse(true);
  const disc = nextEvent(c, 'disconnected');
  proxy.cut();
  await disc;
  assert.equal(c.state, 'reconnecting');
  const p1 = c.publish('test:queue', { q: 1 });
  const p2 = c.publish('test:queue', { q: 2 });
  const p3 = c.publish('test:queue', { q: 3 });
  const t0 = Date.now();
  await assert.rejects(c.publish('test:queue', { q: 4 }), (e) => e.code === 'queue_full');
  assert.ok(Date.now() - t0 < 100, 'queue_full at once');
  // Published by someone else while we are away: recovered before our queue.
  await server.publish('test:queue', { q: 0 });
  await sleep(300);
  sent.length = 0;
  proxy.refuse(false);
  const replies = await Promise.all([p1, p2, p3]);
  // A connection's publishes get offsets in the order it sent them.
  assert.deepEqual(replies.map((r) => r.offset - replies[0].offset), [0, 1, 2]);
  // What the SDK sent on the new connection: the recovering subscribe, then
  // the three queued commands in the order they were issued.
  assert.deepEqual(
    sent.filter((f) => f.type !== 'ping').map((f) => [f.type, f.payload?.data?.q ?? null]),
    [['subscribe', null], ['publish', 1], ['publish', 2], ['publish', 3]],
  );
  assert.ok(sent.find((f) => f.type === 'subscribe').payload.recover, 'resubscribed with recover');
  await waitFor(() => got.length >= 4, 5000, 'publications');
  await sleep(100);
  // The missed publication first (recovered), then the queued ones, in
  // order, each once.
  assert.deepEqual(got, [0, 1, 2, 3]);
  await proxy.close();
  c.close();
});

test('a request sent before the drop rejects disconnected (never re-sent silently)', async () => {
  const proxy = await startProxy(server.port);
  const c = client({ url: proxy.url, token: sign({ sub: 'drop' }) });
  c.connect();
  await nextEvent(c, 'connected');
  proxy.stall();
  const p = c.publish('test:drop', { once: true });
  await sleep(50);
  proxy.cut();
  await assert.rejects(p, (e) => e.code === 'disconnected');
  await nextEvent(c, 'connected');
  const h = await c.history('test:drop');
  assert.equal(h.publications.length, 0, 'the command was not re-sent');
  await proxy.close();
  c.close();
});

test('dead connection (a path that stops forwarding, not closed) is detected and replaced', async () => {
  const proxy = await startProxy(server.port);
  const c = client({ url: proxy.url, token: sign({ sub: 'dead' }) });
  c.connect();
  const info = await nextEvent(c, 'connected');
  assert.equal(info.heartbeat_secs, 2);
  const sub = c.subscribe('test:dead');
  await sub.ready();
  const got = [];
  sub.on('publication', (p) => got.push(p.data.i));
  proxy.stall();
  const t0 = Date.now();
  await server.publish('test:dead', { i: 1 });
  const d = await nextEvent(c, 'disconnected', () => true, 8000);
  const took = Date.now() - t0;
  assert.ok(d.reconnecting);
  assert.ok(took >= 1500 && took < 6500, `detected in ${took} ms (heartbeat 2 s + pong timeout 2 s)`);
  const s = await nextEvent(sub, 'subscribed', () => true, 5000);
  assert.ok(s.resubscribed && s.recovered);
  await waitFor(() => got.length === 1, 3000, 'the publication sent into the dead path');
  assert.deepEqual(got, [1]);
  await proxy.close();
  c.close();
});

test('(b) server restart: 1001 → immediate retry then backoff; recovered:false reported (memory broker epoch changes)', async () => {
  const c = client({ token: sign({ sub: 'restart' }) });
  c.connect();
  const sub = c.subscribe('test:restart');
  await sub.ready();
  const got = [];
  sub.on('publication', (p) => got.push(p.data.i));
  await server.publish('test:restart', { i: 1 });
  await waitFor(() => got.length === 1);
  const discs = [];
  c.on('disconnected', (d) => discs.push(d));
  const resub = nextEvent(sub, 'subscribed', (s) => s.resubscribed, 15000);
  await server.stop();
  assert.equal(discs[0]?.code, 1001);
  assert.equal(discs[0]?.delayMs, 0, 'first retry at once after 1001');
  await sleep(300);
  await server.start();
  const s = await resub;
  assert.equal(s.recovered, false, 'history lost with the process: reported as a gap');
  await server.publish('test:restart', { i: 2 });
  await waitFor(() => got.length === 2, 5000);
  assert.deepEqual(got, [1, 2]);
  assert.equal(c.state, 'connected');
  c.close();
});
