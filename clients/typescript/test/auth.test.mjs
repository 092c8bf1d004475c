// auth.test.mjs — tokens: subprotocol transport, refresh before exp
// (getToken called again, token_refreshed, the connection outlives the first
// token), a refused token reported as 'unauthorized' and not retried
// forever, tokens rejected locally (not a JWT / expired / characters a
// subprotocol cannot carry), 4001 at exp; the browser-side HTTP token check
// and where it asks.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { WsgateClient, decodeToken } from '../dist/index.js';
import { startServer, sign, WebSocket, nextEvent, waitFor, sleep, stopServers } from './harness.mjs';

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
  await stopServers();
});

test('the token travels as a subprotocol, never in the URL', { timeout: 30_000 }, async () => {
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

test('refresh before exp: getToken again, token_refreshed, the connection outlives the first token', { timeout: 30_000 }, async () => {
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

test('a refused token (bad signature): unauthorized, getToken once more, then stop', { timeout: 30_000 }, async () => {
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

test('a fixed refused token: one attempt only', { timeout: 30_000 }, async () => {
  const { made, CountingWS } = counting();
  const c = client({ WebSocket: CountingWS, token: sign({ sub: 'bad2', secret: 'another-secret-0123456789-0123456789-xyz' }) });
  const err = nextEvent(c, 'error');
  c.connect();
  assert.equal((await err).code, 'unauthorized');
  await sleep(600);
  assert.equal(made.length, 1);
  assert.equal(c.state, 'closed');
});

test('tokens refused locally (browser rule): not a JWT → unauthorized, expired → token_expired; never offered', { timeout: 30_000 }, async () => {
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

test('4001 at exp without refresh: a new token from getToken, reconnected at once', { timeout: 30_000 }, async () => {
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

test("the SDK's own refresh timer: refreshMarginSecs before exp, before the server's token_expiring", { timeout: 30_000 }, async () => {
  // exp in 70 s, margin 68 s: the SDK refreshes ~2 s after connecting; the
  // server would warn only at exp - 60 s (10 s in), so it is the timer.
  const firstExp = Math.floor(Date.now() / 1000) + 70;
  let calls = 0;
  const c = client({
    refreshMarginSecs: 68,
    getToken: async () => (++calls === 1 ? sign({ sub: 'timer', exp: firstExp }) : sign({ sub: 'timer', expIn: 3600 })),
  });
  const frames = [];
  c.on('frame', (f) => frames.push({ at: Date.now(), ...f }));
  c.connect();
  const info = await nextEvent(c, 'connected');
  const t0 = Date.now();
  assert.equal(info.expires_at, firstExp);
  const refreshed = await waitFor(() => frames.find((f) => f.type === 'token_refreshed'), 8000, 'token_refreshed');
  const after = refreshed.at - t0;
  assert.ok(after >= 500 && after < 6000, `refreshed ${after} ms after connecting (expected ~2 s)`);
  assert.ok(refreshed.payload.expires_at > firstExp + 3000);
  assert.equal(calls, 2);
  assert.ok(!frames.some((f) => f.type === 'token_expiring'), 'no token_expiring: the timer refreshed first');
  await c.ping();
  assert.equal(c.state, 'connected');
});

test('getToken failing: reported, retried with backoff (not a tight loop)', { timeout: 30_000 }, async () => {
  let calls = 0;
  const c = client({
    getToken: () => {
      calls++;
      throw new Error('token service down');
    },
  });
  const errors = [];
  const discs = [];
  c.on('error', (e) => errors.push(e));
  c.on('disconnected', (d) => discs.push(d));
  c.connect();
  await sleep(1500);
  // minReconnectDelayMs 50, max 200: a few to a few dozen tries, not thousands.
  assert.ok(calls >= 3 && calls <= 60, `${calls} getToken calls in 1.5 s`);
  assert.ok(errors.length >= 1 && errors.every((e) => e.code === 'unauthorized' && /token service down/.test(e.message)));
  assert.ok(discs.every((d) => d.reconnecting));
  assert.ok(discs.slice(1).some((d) => d.delayMs > 0), 'backoff delays');
  assert.equal(c.state, 'reconnecting');
  c.close();
});

/** A WebSocket as a browser shows it: a refused handshake is an `error`
 * event with no detail and a close 1006 — the HTTP status is invisible. */
function browserLike(target) {
  const made = [];
  class BrowserLikeWS {
    constructor(url, protocols) {
      made.push({ url, protocols });
      // target: where it really connects (any url accepted, like a scheme
      // a browser would take).
      const ws = (this.inner = new WebSocket(target ?? url, protocols));
      let opened = false;
      ws.on('open', () => {
        opened = true;
        this.onopen?.({});
      });
      ws.on('message', (data) => this.onmessage?.({ data: String(data) }));
      ws.on('error', () => this.onerror?.({ type: 'error' }));
      ws.on('close', (code, reason) => this.onclose?.(opened ? { code, reason: String(reason) } : { code: 1006, reason: '' }));
    }
    send(d) {
      this.inner.send(d);
    }
    close(code, reason) {
      this.inner.close(code, reason);
    }
  }
  return { made, BrowserLikeWS };
}

test('browser: a refused token (bad signature) is found by the HTTP check: unauthorized with the server message, getToken once more, then stop', { timeout: 30_000 }, async () => {
  const { made, BrowserLikeWS } = browserLike();
  let calls = 0;
  const c = client({
    WebSocket: BrowserLikeWS,
    getToken: () => {
      calls++;
      return sign({ sub: 'bad-browser', secret: 'another-secret-0123456789-0123456789-xyz' });
    },
  });
  const errors = [];
  c.on('error', (e) => errors.push(e));
  c.connect();
  await waitFor(() => c.state === 'closed', 8000, 'closed');
  await sleep(800);
  assert.equal(made.length, 2, 'two handshakes, then no more');
  assert.equal(calls, 2);
  assert.equal(errors.length, 2);
  for (const e of errors) {
    assert.equal(e.code, 'unauthorized');
    assert.equal(e.message, 'token signature is invalid', "the server's message");
  }
});

test('browser: a failed handshake that is not the token keeps backing off; a good token connects; checkTokenOverHttp: false skips the check', { timeout: 30_000 }, async () => {
  const { made, BrowserLikeWS } = browserLike();
  // A good token through the browser-like socket connects as usual.
  const ok = client({ WebSocket: BrowserLikeWS, token: sign({ sub: 'good-browser' }) });
  ok.connect();
  await nextEvent(ok, 'connected');
  ok.close();
  // Nothing listens on this port: the handshake fails, the HTTP check fails
  // too (network error) — not a token problem: backoff continues.
  const dead = client({ WebSocket: BrowserLikeWS, url: 'ws://127.0.0.1:9/ws', token: sign({ sub: 'nowhere' }) });
  const errors = [];
  dead.on('error', (e) => errors.push(e));
  dead.connect();
  await sleep(1200);
  assert.ok(made.length >= 3, `retried: ${made.length}`);
  assert.equal(dead.state, 'reconnecting');
  assert.deepEqual(errors, []);
  dead.close();
  // Without the check, a refused token looks like any failure: backoff.
  const { made: made2, BrowserLikeWS: WS2 } = browserLike();
  const nocheck = client({ WebSocket: WS2, checkTokenOverHttp: false, token: sign({ sub: 'bad', secret: 'another-secret-0123456789-0123456789-xyz' }) });
  nocheck.connect();
  await sleep(800);
  assert.ok(made2.length >= 2);
  assert.equal(nocheck.state, 'reconnecting');
  nocheck.close();
});

/** Counts the HTTP token checks (the SDK's fetch calls) while fn runs. */
async function countingFetch(fn) {
  const calls = [];
  const real = globalThis.fetch;
  globalThis.fetch = (url, init) => {
    calls.push({ url: String(url), init });
    return real(url, init);
  };
  try {
    await fn(calls);
  } finally {
    globalThis.fetch = real;
  }
  return calls;
}

test('browser: no HTTP token check when the ws path does not end in /ws or the scheme is unknown; tokenCheckUrl asks where told', { timeout: 30_000 }, async () => {
  const bad = () => sign({ sub: 'bad-path', secret: 'another-secret-0123456789-0123456789-xyz' });
  const port = new URL(server.url).port;
  await countingFetch(async (calls) => {
    // A gateway path that is not /ws: the check would ask another app (here
    // the server's own /api/threads, whose 401 would stop the client).
    const { BrowserLikeWS } = browserLike();
    const other = client({ WebSocket: BrowserLikeWS, url: `ws://127.0.0.1:${port}/socket`, token: bad() });
    // A scheme the derivation does not know (the socket class accepts it).
    const { made, BrowserLikeWS: AnyScheme } = browserLike(server.url);
    const ftp = client({ WebSocket: AnyScheme, url: `ftp://127.0.0.1:${port}/ws`, token: bad() });
    const errors = [];
    other.on('error', (e) => errors.push(e));
    ftp.on('error', (e) => errors.push(e));
    other.connect();
    ftp.connect();
    await sleep(1200);
    assert.ok(made.length >= 2, `the ftp: client kept trying: ${made.length}`);
    assert.deepEqual(calls, [], 'no check made');
    assert.deepEqual(errors, []);
    assert.equal(other.state, 'reconnecting');
    assert.equal(ftp.state, 'reconnecting');
    other.close();
    ftp.close();
    // With tokenCheckUrl the check asks there: the refusal is found.
    const { BrowserLikeWS: WS3 } = browserLike();
    const told = client({ WebSocket: WS3, url: `ws://127.0.0.1:${port}/socket`, token: bad(), tokenCheckUrl: server.http + '/api/threads?limit=1' });
    const err = nextEvent(told, 'error');
    told.connect();
    assert.equal((await err).code, 'unauthorized');
    assert.equal((await err).message, 'token signature is invalid');
    assert.equal(calls.length, 1);
    assert.equal(calls[0].url, server.http + '/api/threads?limit=1');
    assert.equal(calls[0].init.credentials, 'omit');
    assert.equal(calls[0].init.cache, 'no-store');
    await waitFor(() => told.state === 'closed', 3000, 'closed');
  });
});

test('a token with surrounding whitespace is trimmed; one with a character a subprotocol cannot carry is refused locally, never echoed', { timeout: 30_000 }, async () => {
  // A trailing newline (`(await fetch(...)).text()`): trimmed, it connects.
  const { made, CountingWS } = counting();
  const good = sign({ sub: 'newline' });
  const c = client({ WebSocket: CountingWS, getToken: async () => good + '\r\n' });
  c.connect();
  await nextEvent(c, 'connected');
  assert.deepEqual(made[0].protocols, ['wsgate.v1.json', 'bearer.' + good]);
  c.close();
  // A space inside (Chrome's `new WebSocket` would throw a SyntaxError that
  // quotes the subprotocol, token included): refused as unauthorized before
  // any socket, the token in no message; getToken once more, then stop.
  const tried = [];
  class ChromeLikeWS {
    constructor(url, protocols) {
      tried.push(protocols);
      for (const p of protocols)
        if (!/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/.test(p)) throw new SyntaxError(`Failed to construct 'WebSocket': The subprotocol '${p}' is invalid.`);
      throw new Error('not reached in this test');
    }
  }
  const t = sign({ sub: 'space' });
  const spaced = t.slice(0, -4) + ' ' + t.slice(-4);
  let calls = 0;
  const b = client({
    WebSocket: ChromeLikeWS,
    getToken: () => {
      calls++;
      return spaced;
    },
  });
  const errors = [];
  b.on('error', (e) => errors.push(e));
  b.connect();
  await waitFor(() => b.state === 'closed', 3000, 'closed');
  await sleep(300);
  assert.deepEqual(tried, [], 'no WebSocket constructed');
  assert.equal(calls, 2);
  assert.equal(errors.length, 2);
  for (const e of errors) {
    assert.equal(e.code, 'unauthorized');
    assert.ok(!e.message.includes(t.slice(-20)) && !e.message.includes(spaced.slice(0, 20)), e.message);
  }
  // A fixed token with a newline inside: one refusal, stop.
  const d = client({ WebSocket: ChromeLikeWS, token: t.replace('.', '.\n') });
  const ed = nextEvent(d, 'error');
  d.connect();
  const e = await ed;
  assert.equal(e.code, 'unauthorized');
  assert.ok(!e.message.includes(t.split('.')[1].slice(0, 20)));
  assert.equal(d.state, 'closed');
  assert.deepEqual(tried, []);
});
