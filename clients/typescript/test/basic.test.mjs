// basic.test.mjs — connect, request/reply, ping, server errors (forbidden,
// rate_limited with retryAfterMs), request timeouts, subscribe and ordered
// publications, unsubscribe (and subscribing again while sending is held),
// close() with requests queued and in flight.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { WsgateClient, WsgateError } from '../dist/index.js';
import { startServer, startProxy, sign, WebSocket, nextEvent, closeProxies, waitFor, sleep, stopServers, slowRepliesWS } from './harness.mjs';

let server;
const clients = [];
function client(opts) {
  const c = new WsgateClient({ url: server.url, WebSocket, token: sign({ sub: 'basic' }), ...opts });
  clients.push(c);
  return c;
}

before(async () => {
  server = await startServer();
});
after(async () => {
  for (const c of clients) c.close();
  await closeProxies();
  await server.cleanup();
  await stopServers();
});

test('connect, connected info, request/reply by id, ping', { timeout: 30_000 }, async () => {
  const c = client();
  const states = [];
  c.on('state', (s) => states.push(s));
  const connected = nextEvent(c, 'connected');
  c.connect();
  c.connect(); // idempotent
  const info = await connected;
  assert.equal(info.user, 'basic');
  assert.equal(info.protocol, 'wsgate.v1.json');
  assert.ok(info.heartbeat_secs > 0);
  assert.equal(c.state, 'connected');
  assert.deepEqual(states, ['connecting', 'connected']);
  assert.equal(c.info.connection_id, info.connection_id);
  await c.ping();
  // Raw request: the reply payload of the command with the same id.
  const frames = [];
  c.on('frame', (f) => frames.push(f));
  const pub = await c.request('publish', { channel: 'test:basic-rr', data: { x: 1 } });
  assert.equal(pub.channel, 'test:basic-rr');
  assert.equal(typeof pub.offset, 'number');
  assert.ok(frames.some((f) => f.type === 'published' && typeof f.id === 'string'));
});

test('a server error rejects at once with its code', { timeout: 30_000 }, async () => {
  const c = client();
  c.connect();
  await nextEvent(c, 'connected');
  const t0 = Date.now();
  await assert.rejects(c.publish('srv:only', { no: true }), (e) => e instanceof WsgateError && e.code === 'forbidden');
  await assert.rejects(c.request('no_such_command', {}), (e) => e.code === 'unknown_type');
  await assert.rejects(c.renameThread('nope', 'x'), (e) => e.code === 'not_found');
  assert.ok(Date.now() - t0 < 2000, 'rejected at once, not at the timeout');
});

test('request timeout counts from the call, queued time included', { timeout: 30_000 }, async () => {
  // Never connected: the command waits in the queue and times out there.
  const idle = client({ requestTimeoutMs: 300 });
  const t0 = Date.now();
  await assert.rejects(idle.ping(), (e) => e.code === 'timeout');
  assert.ok(Date.now() - t0 >= 290 && Date.now() - t0 < 1500);
  // Sent but no reply: a proxy that swallows everything.
  const proxy = await startProxy(server.port);
  const c = client({ url: proxy.url, requestTimeoutMs: 10000 });
  c.connect();
  await nextEvent(c, 'connected');
  proxy.stall();
  const t1 = Date.now();
  await assert.rejects(c.request('ping', undefined, { timeoutMs: 400 }), (e) => e.code === 'timeout');
  assert.ok(Date.now() - t1 < 1500);
  c.close();
  await proxy.close();
});

test('subscribe: ready(), publications in order, each once; unsubscribe', { timeout: 30_000 }, async () => {
  const c = client();
  c.connect();
  const sub = c.subscribe('test:basic-sub');
  assert.equal(sub.state, 'subscribing');
  assert.equal(c.subscribe('test:basic-sub'), sub, 'one Subscription per channel');
  const info = await sub.ready();
  assert.equal(info.channel, 'test:basic-sub');
  assert.equal(info.resubscribed, false);
  assert.equal(sub.state, 'subscribed');
  const got = [];
  const all = [];
  sub.on('publication', (p) => got.push(p));
  c.on('publication', (p) => all.push(p));
  for (let i = 1; i <= 20; i++) await server.publish('test:basic-sub', { i });
  await waitFor(() => got.length >= 20, 5000, '20 publications');
  assert.deepEqual(got.map((p) => p.data.i), Array.from({ length: 20 }, (_, i) => i + 1));
  for (let i = 1; i < got.length; i++) assert.equal(got[i].offset, got[i - 1].offset + 1);
  assert.equal(sub.offset, got[19].offset);
  assert.equal(sub.epoch, got[19].epoch);
  assert.equal(all.length, 20);
  // A client publish into a subscribed channel: the reply and the message.
  const r = await c.publish('test:basic-sub', { i: 21 });
  await waitFor(() => got.length === 21);
  assert.equal(got[20].offset, r.offset);
  await sub.unsubscribe();
  assert.equal(sub.state, 'unsubscribed');
  assert.equal(c.getSubscription('test:basic-sub'), undefined);
  await server.publish('test:basic-sub', { i: 22 });
  await sleep(200);
  assert.equal(got.length, 21, 'nothing after unsubscribe');
});

test('a refused subscribe fails the Subscription with the server code', { timeout: 30_000 }, async () => {
  const c = client();
  c.connect();
  const sub = c.subscribe('nope:unknown-namespace');
  await assert.rejects(sub.ready(), (e) => e.code === 'forbidden' || e.code === 'bad_request');
  assert.equal(sub.state, 'failed');
});

/** A socket that tells the SDK the server allows far more than it does, so
 * the SDK's pacing lets frames through that the server then refuses. */
class OptimisticWS extends WebSocket {
  set onmessage(fn) {
    super.onmessage = (ev) => {
      const f = JSON.parse(String(ev.data));
      if (f.type === 'connected') Object.assign(f.payload, { messages_per_minute: 6000, message_burst: 1000 });
      fn({ data: JSON.stringify(f) });
    };
  }
  get onmessage() {
    return super.onmessage;
  }
}

test('rate_limited (server refusal) rejects at once with retryAfterMs; the SDK then holds its frames', { timeout: 30_000 }, async () => {
  const limited = await startServer({ limits: { messages_per_minute: 60, message_burst: 3 } });
  try {
    const c = new WsgateClient({ url: limited.url, WebSocket: OptimisticWS, token: sign({ sub: 'rl' }) });
    clients.push(c);
    c.connect();
    await nextEvent(c, 'connected');
    const results = await Promise.allSettled(Array.from({ length: 6 }, () => c.ping()));
    const limitedErrs = results.filter((r) => r.status === 'rejected').map((r) => r.reason);
    assert.ok(limitedErrs.length >= 2, `some pings were rate limited: ${JSON.stringify(results)}`);
    for (const e of limitedErrs) {
      assert.equal(e.code, 'rate_limited');
      assert.ok(e.retryAfterMs > 0, 'retryAfterMs from payload.retry_after_ms');
    }
    // After a refusal the SDK waits retry_after_ms before sending again.
    await c.ping();
    c.close();
  } finally {
    await limited.cleanup();
  }
});

test("pacing: a burst of commands beyond the server's burst is spread out, never refused", { timeout: 30_000 }, async () => {
  const limited = await startServer({ limits: { messages_per_minute: 60, message_burst: 3 } });
  try {
    const c = new WsgateClient({ url: limited.url, WebSocket, token: sign({ sub: 'paced' }) });
    clients.push(c);
    c.connect();
    const info = await nextEvent(c, 'connected');
    assert.equal(info.message_burst, 3);
    const t0 = Date.now();
    const results = await Promise.allSettled(Array.from({ length: 6 }, () => c.ping()));
    const took = Date.now() - t0;
    assert.deepEqual(results.map((r) => r.status), Array(6).fill('fulfilled'), JSON.stringify(results));
    // 3 at once, then 3 more at 0.9/s (90% of the server's 1/s).
    assert.ok(took >= 3000 && took < 6000, `took ${took} ms`);
    // The wait counts against maxQueue: more than it waiting → queue_full.
    const small = new WsgateClient({ url: limited.url, WebSocket, token: sign({ sub: 'paced2' }), maxQueue: 2 });
    clients.push(small);
    small.connect();
    await nextEvent(small, 'connected');
    const burst = Array.from({ length: 6 }, () => small.ping().then(() => 'ok', (e) => e.code));
    assert.deepEqual(await Promise.all(burst), ['ok', 'ok', 'ok', 'ok', 'ok', 'queue_full']);
    c.close();
    small.close();
  } finally {
    await limited.cleanup();
  }
});

test('a command over max_message_bytes rejects too_large locally; the connection stays', { timeout: 30_000 }, async () => {
  const c = client();
  c.connect();
  const info = await nextEvent(c, 'connected');
  const discs = [];
  c.on('disconnected', (d) => discs.push(d));
  const inflight = c.publish('test:big', { small: true });
  await assert.rejects(c.publish('test:big', { blob: 'x'.repeat(info.max_message_bytes) }), (e) => e.code === 'too_large');
  // Multi-byte characters count as bytes: 3,000 × 3 bytes > 8,192.
  await assert.rejects(c.publish('test:big', { blob: '€'.repeat(Math.ceil(info.max_message_bytes / 3)) }), (e) => e.code === 'too_large');
  await inflight; // not failed by a 1009
  await c.ping();
  assert.deepEqual(discs, []);
  assert.equal(c.state, 'connected');
});

test('close() during the handshake (ws CONNECTING) does not crash', { timeout: 30_000 }, async () => {
  const uncaught = [];
  const onUncaught = (e) => uncaught.push(e);
  process.on('uncaughtException', onUncaught);
  try {
    for (let i = 0; i < 5; i++) {
      const a = client(); // fixed token: the socket is created inside connect()
      a.connect();
      a.close();
      const b = client({ getToken: async () => sign({ sub: 'basic' }) });
      b.connect();
      await sleep(i); // the socket is CONNECTING
      b.close();
      assert.equal(a.state, 'closed');
      assert.equal(b.state, 'closed');
    }
    await sleep(300);
    assert.deepEqual(uncaught.map(String), []);
  } finally {
    process.off('uncaughtException', onUncaught);
  }
});

test('close(): pending and queued reject closed; state closed; no reconnect', { timeout: 30_000 }, async () => {
  const c = client();
  const p = c.ping(); // queued (idle)
  c.close();
  await assert.rejects(p, (e) => e.code === 'closed');
  assert.equal(c.state, 'closed');
  await assert.rejects(c.ping(), (e) => e.code === 'closed');
});

test('close() with a request in flight (sent, not answered) rejects it closed, not disconnected', { timeout: 30_000 }, async () => {
  const { sent, SlowRepliesWS } = slowRepliesWS((f) => f.type === 'history', Infinity);
  const c = client({ WebSocket: SlowRepliesWS });
  c.connect();
  await nextEvent(c, 'connected');
  const p = c.history('test:inflight');
  const q = c.ping(); // sent too (its pong cannot arrive before close())
  assert.deepEqual(sent.map((s) => s.frame.type).slice(-2), ['history', 'ping'], 'both sent');
  c.close();
  await assert.rejects(p, (e) => e.code === 'closed');
  await assert.rejects(q, (e) => e.code === 'closed');
});

test('unsubscribe then subscribe of the same channel while sending is held: sent in that order, the new subscription ends subscribed', { timeout: 30_000 }, async () => {
  const limited = await startServer({ limits: { messages_per_minute: 60, message_burst: 3 } });
  try {
    const sent = [];
    class RecordingWS extends WebSocket {
      send(d) {
        sent.push(JSON.parse(d));
        super.send(d);
      }
    }
    const c = new WsgateClient({ url: limited.url, WebSocket: RecordingWS, token: sign({ sub: 'resub' }), requestTimeoutMs: 500 });
    clients.push(c);
    c.connect();
    const sub = c.subscribe('test:resub');
    await sub.ready();
    await Promise.all([c.ping(), c.ping()]); // the burst (3) is used up: frames now wait ~1.1 s each
    const unsubscribed = sub.unsubscribe();
    const again = c.subscribe('test:resub');
    assert.notEqual(again, sub);
    const errors = [];
    again.on('error', (e) => errors.push(e));
    // No requestTimeoutMs (500 ms here) for the unsubscribe: it waits its turn.
    await unsubscribed;
    await again.ready();
    assert.equal(again.state, 'subscribed');
    assert.deepEqual(
      sent.filter((f) => f.type.endsWith('subscribe')).map((f) => f.type),
      ['subscribe', 'unsubscribe', 'subscribe'],
    );
    // Subscribed on the server too: a publication arrives.
    const got = nextEvent(again, 'publication');
    await limited.publish('test:resub', { x: 1 });
    assert.deepEqual((await got).data, { x: 1 });
    assert.deepEqual(errors, []);
    c.close();
  } finally {
    await limited.cleanup();
  }
});
