// reconnect.test.mjs — the connection lost three ways (server API
// disconnect 4003, server restart 1001, a network cut) with subscription
// recovery; the offline queue (bounded, flushed in order after the
// resubscribes); dead-connection detection through the heartbeat; a
// reconnect with more subscriptions than the server's message burst, paced
// under its rate limit; a slow command never taken for a dead connection.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { WsgateClient } from '../dist/index.js';
import { startServer, startProxy, sign, WebSocket, nextEvent, closeProxies, waitFor, sleep, stopServers, slowRepliesWS } from './harness.mjs';

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
  await stopServers();
});

test('(a) POST /api/users/{user}/disconnect → 4003 → no reconnect; a request in flight rejects closed', { timeout: 30_000 }, async () => {
  let attempts = 0;
  // The history's reply never reaches the SDK: it is in flight at the 4003.
  const { SlowRepliesWS } = slowRepliesWS((f) => f.type === 'history', Infinity);
  class CountingWS extends SlowRepliesWS {
    constructor(...a) {
      super(...a);
      attempts++;
    }
  }
  const c = client({ WebSocket: CountingWS, token: sign({ sub: 'kicked' }) });
  c.connect();
  await nextEvent(c, 'connected');
  const pending = c.request('ping', undefined, { timeoutMs: 60000 });
  const inflight = c.history('test:kicked').then(() => null, (e) => e);
  const disc = nextEvent(c, 'disconnected');
  const r = await server.disconnectUser('kicked');
  assert.equal(r.disconnected, 1);
  const d = await disc;
  assert.equal(d.code, 4003);
  assert.equal(d.reconnecting, false);
  assert.equal(c.state, 'closed');
  await pending.catch(() => {}); // the pong may have come first; either way it settled
  assert.equal((await inflight)?.code, 'closed');
  await sleep(800);
  assert.equal(attempts, 1, 'no reconnect after 4003');
  assert.equal(c.state, 'closed');
});

test('(c) network cut while the server publishes: recovered, every publication once, in order', { timeout: 30_000 }, async () => {
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

test('queue: bounded while disconnected (4th → queue_full), flushed in order after the resubscribe', { timeout: 30_000 }, async () => {
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

test('a request sent before the drop rejects disconnected (never re-sent silently)', { timeout: 30_000 }, async () => {
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

test('dead connection (a path that stops forwarding, not closed) is detected and replaced', { timeout: 30_000 }, async () => {
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

test('(b) server restart: 1001 → immediate retry then backoff; recovered:false reported (memory broker epoch changes)', { timeout: 30_000 }, async () => {
  const c = client({ token: sign({ sub: 'restart' }) });
  c.connect();
  const sub = c.subscribe('test:restart');
  await sub.ready();
  const got = [];
  sub.on('publication', (p) => got.push(p.data.i));
  await server.publish('test:restart', { i: 1 });
  await waitFor(() => got.length === 1);
  const resub = nextEvent(sub, 'subscribed', (s) => s.resubscribed, 15000);
  // The process may exit before the client has seen the close: wait for it.
  const disc = nextEvent(c, 'disconnected', () => true, 10000);
  await server.stop();
  const d = await disc;
  assert.equal(d.code, 1001);
  assert.equal(d.delayMs, 0, 'first retry at once after 1001');
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

test('reconnect with 20 subscriptions under a tight rate limit (60/min, burst 10): paced, never 1008, heartbeat not fooled, all recovered, missed publications delivered', { timeout: 60_000 }, async () => {
  // Unpaced, 20 resubscribes at once are 10 accepted and 10 dropped: the
  // 10th drop in a row closes 1008, and every reconnect does it again.
  // heartbeat_secs 1: subscribed replies come ~1.1 s apart while paced, so
  // the SDK's heartbeat pings during the resubscription too — it must go
  // ahead of the line, and the connection must not be taken for dead.
  const limited = await startServer({ limits: { messages_per_minute: 60, message_burst: 10, heartbeat_secs: 1 } });
  try {
    const proxy = await startProxy(limited.port);
    const N = 20;
    const sent = [];
    class RecordingWS extends WebSocket {
      send(d) {
        sent.push({ at: Date.now(), frame: JSON.parse(d) });
        super.send(d);
      }
    }
    // requestTimeoutMs counts queued time: the publishes wait ~11 s behind
    // the resubscribes.
    const c = client({ url: proxy.url, WebSocket: RecordingWS, token: sign({ sub: 'paced' }), requestTimeoutMs: 40000 });
    const discs = [];
    const errors = [];
    let connects = 0;
    c.on('disconnected', (d) => discs.push(d));
    c.on('connected', () => connects++);
    c.on('error', (e) => errors.push(e));
    c.connect();
    const subs = Array.from({ length: N }, (_, i) => c.subscribe(`test:paced-${i}`));
    const got = subs.map(() => []);
    const infos = subs.map(() => []);
    subs.forEach((s, i) => {
      s.on('publication', (p) => got[i].push(p.data.n));
      s.on('subscribed', (x) => infos[i].push(x));
      s.on('error', (e) => errors.push(e));
    });
    const info = await nextEvent(c, 'connected');
    assert.equal(info.heartbeat_secs, 1);
    assert.equal(info.messages_per_minute, 60);
    assert.equal(info.message_burst, 10);
    await Promise.all(subs.map((s) => s.ready()));
    for (let i = 0; i < N; i++) await limited.publish(`test:paced-${i}`, { n: 1 });
    await waitFor(() => got.every((g) => g.length === 1), 5000, 'first publications');

    // Cut; while away, the server publishes to every channel and we queue
    // two publishes of our own.
    proxy.refuse(true);
    const disc = nextEvent(c, 'disconnected');
    proxy.cut();
    await disc;
    for (let i = 0; i < N; i++) await limited.publish(`test:paced-${i}`, { n: 2 });
    const q1 = c.publish('test:paced-0', { n: 3 });
    const q2 = c.publish('test:paced-1', { n: 3 });
    q1.catch(() => {});
    q2.catch(() => {});
    sent.length = 0;
    const t0 = Date.now();
    proxy.refuse(false);
    await waitFor(() => infos.every((x) => x.length === 2), 40000, 'every subscription resubscribed');
    await Promise.all([q1, q2]);
    const took = Date.now() - t0;
    await waitFor(() => got[0].length === 3 && got[1].length === 3 && got.every((g) => g.length >= 2), 5000, 'publications');

    assert.ok(infos.every((x) => x[1].resubscribed && x[1].recovered), JSON.stringify(infos.map((x) => x[1])));
    got.forEach((g, i) => assert.deepEqual(g, i < 2 ? [1, 2, 3] : [1, 2], `test:paced-${i}: each once, in order`));
    assert.ok(discs.every((d) => d.code === 1006), `never closed 1008, only the cut and refused attempts: ${JSON.stringify(discs)}`);
    assert.equal(connects, 2, 'one reconnect, never dropped again');
    assert.deepEqual(errors.filter((e) => e.code === 'rate_limited'), [], 'nothing refused rate_limited');
    // What went out on the new connection: 20 subscribes, then the 2 queued
    // publishes; the first 10 at once, the rest paced at <= 1 per second.
    const frames = sent.map((s) => s.frame);
    assert.deepEqual(
      frames.filter((f) => f.type !== 'ping').map((f) => f.type),
      [...Array(N).fill('subscribe'), 'publish', 'publish'],
    );
    for (let i = 10; i < sent.length; i++) {
      const allowed = 10 + ((sent[i].at - sent[0].at) / 1000) * 1.0; // the server's budget since the first frame
      assert.ok(i + 1 <= allowed + 0.01, `frame ${i + 1} at +${sent[i].at - sent[0].at} ms is within the server's budget`);
    }
    assert.ok(took >= 9000, `paced: ${took} ms for 22 frames with a burst of 10 at 1/s`);
    assert.equal(c.state, 'connected');
    await proxy.close();
    c.close();
  } finally {
    await limited.cleanup();
  }
});

test('a slow command sent after a silence is not the heartbeat probe: a healthy connection is not killed', { timeout: 30_000 }, async () => {
  // heartbeat 1 s (pong timeout 2 s); the history's reply comes 3.5 s late
  // (a slow command: a big history, stop_agent waiting for the run's end).
  const limited = await startServer({ limits: { messages_per_minute: 60, message_burst: 3, heartbeat_secs: 1 } });
  try {
    const { sent, SlowRepliesWS } = slowRepliesWS((f) => f.type === 'history', 3500);
    const c = client({ url: limited.url, WebSocket: SlowRepliesWS, token: sign({ sub: 'slow' }) });
    const discs = [];
    c.on('disconnected', (d) => discs.push(d));
    c.connect();
    const info = await nextEvent(c, 'connected');
    assert.equal(info.heartbeat_secs, 1);
    // The burst used up: the history waits for the rate limit past a
    // heartbeat of silence, so frames are waiting when the heartbeat looks.
    await Promise.all([c.ping(), c.ping(), c.ping()]);
    const t0 = Date.now();
    const h = await c.history('test:slow');
    assert.equal(h.channel, 'test:slow');
    assert.ok(Date.now() - t0 >= 3500);
    assert.deepEqual(discs, [], 'not taken for dead');
    assert.equal(c.state, 'connected');
    const types = sent.map((s) => s.frame.type);
    assert.ok(types.slice(types.indexOf('history') + 1).includes('ping'), `a ping followed the history: ${types}`);
    c.close();
  } finally {
    await limited.cleanup();
  }
});
