// harness.mjs — test helpers: start the real wsgate binary ($WSGATE_BIN)
// with a config in a temp dir, sign HS256 JWTs, call the server API, and a
// TCP proxy the tests can cut or stall to simulate network failures.
// (No tests in this file; node --test runs it and finds none.)

import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import WebSocket from 'ws';

export { WebSocket };
export const SECRET = 'test-secret-0123456789-0123456789-abcdef';
export const API_KEY = 'test-api-key-0123456789abcdef';

const b64url = (s) => Buffer.from(s).toString('base64url');

/** An HS256 JWT: claims sub, exp (default +1 h), optional roles/role/extra. */
export function sign({ sub = 'alice', expIn = 3600, exp, secret = SECRET, ...extra } = {}) {
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const now = Math.floor(Date.now() / 1000);
  const claims = b64url(JSON.stringify({ sub, iat: now, exp: exp ?? now + expIn, ...extra }));
  const sig = createHmac('sha256', secret).update(`${header}.${claims}`).digest('base64url');
  return `${header}.${claims}.${sig}`;
}

function toml(limits, agent, extra) {
  const kv = (o) =>
    Object.entries(o)
      .map(([k, v]) => `${k} = ${JSON.stringify(v)}`)
      .join('\n');
  return `shutdown_grace_secs = 1
metrics_interval_secs = 3600

[log]
format = "json"

[auth]
hmac_secret = ${JSON.stringify(SECRET)}

[api]
keys = [${JSON.stringify(API_KEY)}]

[limits]
${kv(limits)}

[agent]
${kv(agent)}

[storage]
url = "sqlite://data/wsgate.db"

[[channels.namespaces]]
name = "test"
subscribe = "any"
publish = "any"
history_size = 1000
history_ttl_secs = 600

[[channels.namespaces]]
name = "srv"
subscribe = "any"
publish = "server"
history_size = 100
history_ttl_secs = 600
${extra}
`;
}

/** Servers not cleaned up yet: stopServers() (in after()) ends them, so a
 * test that timed out before its own cleanup does not leave a child process
 * that keeps the test file from exiting. */
const openServers = new Set();
export async function stopServers() {
  await Promise.all(Array.from(openServers, (s) => (s.cleanup ? s.cleanup() : s.proc?.kill('SIGKILL'))));
}

/**
 * Starts `$WSGATE_BIN serve --config FILE --listen 127.0.0.1:PORT` (port 0:
 * any) in a temp dir and resolves when its JSON log says "listening".
 * Returns { port, url, dir, stop(), restart(), publish(), disconnectUser() }.
 */
export async function startServer({ limits = {}, agent = {}, extra = '', dir } = {}) {
  const bin = process.env.WSGATE_BIN;
  if (!bin) throw new Error('set WSGATE_BIN to the wsgate binary');
  dir ??= mkdtempSync(join(tmpdir(), 'wsgate-sdk-'));
  const config = join(dir, 'wsgate.toml');
  writeFileSync(
    config,
    toml(
      {
        messages_per_minute: 6000,
        message_burst: 1000,
        max_connections_per_user: 50,
        handshakes_per_minute_per_ip: 100000,
        ...limits,
      },
      { kind: 'echo', echo_delay_ms: 50, ...agent },
      extra,
    ),
  );
  const server = { dir, port: 0, proc: undefined, logs: [] };
  openServers.add(server);

  const launch = (port) =>
    new Promise((resolve, reject) => {
      const proc = spawn(bin, ['serve', '--config', config, '--listen', `127.0.0.1:${port}`], {
        cwd: dir,
        // Every WSGATE_* variable is read as configuration (and an unknown
        // one, like our own WSGATE_BIN, is an error): pass none but ours.
        env: { ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('WSGATE_'))), WSGATE_LOG__FORMAT: 'json' },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      server.proc = proc;
      const timer = setTimeout(() => reject(new Error('server did not log "listening" in 15 s:\n' + server.logs.slice(-20).join('\n'))), 15000);
      const onLine = (line) => {
        server.logs.push(line);
        if (server.logs.length > 2000) server.logs.shift();
        if (!line.includes('"listening"')) return;
        try {
          const j = JSON.parse(line);
          const addr = j.addr ?? j.fields?.addr;
          if (!addr) return;
          clearTimeout(timer);
          resolve(Number(String(addr).split(':').pop()));
        } catch {
          /* not JSON */
        }
      };
      createInterface({ input: proc.stderr }).on('line', onLine);
      createInterface({ input: proc.stdout }).on('line', onLine);
      proc.on('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`server exited (${code}) before listening:\n` + server.logs.slice(-20).join('\n')));
      });
    });

  server.port = await launch(0);
  server.url = `ws://127.0.0.1:${server.port}/ws`;
  server.http = `http://127.0.0.1:${server.port}`;

  /** SIGTERM (the server closes everyone with 1001) and wait for the exit. */
  server.stop = async () => {
    const proc = server.proc;
    if (!proc || proc.exitCode !== null) return;
    const exited = new Promise((r) => proc.once('exit', r));
    proc.kill('SIGTERM');
    const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(t);
  };
  /** Start again on the same port, same config and SQLite store. */
  server.start = async () => {
    await launch(server.port);
  };
  server.cleanup = async () => {
    openServers.delete(server);
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  };
  server.api = async (method, path, body) => {
    const res = await fetch(server.http + path, {
      method,
      headers: { 'X-API-Key': API_KEY, 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
    return text ? JSON.parse(text) : undefined;
  };
  server.publish = (channel, data) => server.api('POST', '/api/publish', { channel, data });
  server.disconnectUser = (user) => server.api('POST', `/api/users/${encodeURIComponent(user)}/disconnect`);
  return server;
}

/**
 * A TCP proxy in front of `port`. cut(): destroy every open connection (a
 * network drop). stall(): open connections silently stop forwarding in both
 * directions, without closing (a dead path). refuse(true): new connections
 * are closed at once (the network stays down). Counts connections.
 */
const openProxies = new Set();
/** Closes every proxy still open (call in after(): a listening proxy left by
 * a failed test would keep the test process alive). */
export async function closeProxies() {
  await Promise.all(Array.from(openProxies, (p) => p.close()));
}

export async function startProxy(port) {
  const pairs = new Set();
  let refusing = false;
  const proxy = { connections: 0 };
  const srv = net.createServer((client) => {
    if (refusing) {
      client.destroy();
      return;
    }
    proxy.connections++;
    const upstream = net.connect(port, '127.0.0.1');
    const pair = { client, upstream, stalled: false };
    pairs.add(pair);
    client.on('data', (d) => {
      if (!pair.stalled) upstream.write(d);
    });
    upstream.on('data', (d) => {
      if (!pair.stalled) client.write(d);
    });
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('close', end);
    upstream.on('close', end);
    client.on('error', end);
    upstream.on('error', end);
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  proxy.port = srv.address().port;
  proxy.url = `ws://127.0.0.1:${proxy.port}/ws`;
  proxy.cut = () => {
    for (const p of Array.from(pairs)) {
      pairs.delete(p);
      p.client.destroy();
      p.upstream.destroy();
    }
  };
  proxy.stall = () => {
    for (const p of pairs) p.stalled = true;
  };
  proxy.refuse = (on) => {
    refusing = on;
  };
  openProxies.add(proxy);
  proxy.close = () => {
    openProxies.delete(proxy);
    proxy.cut();
    return new Promise((r) => srv.close(r));
  };
  return proxy;
}

/**
 * A `ws` WebSocket class whose replies to the commands matching
 * isSlow(command frame) reach the SDK `delayMs` later (Infinity: never) — a
 * slow command on a healthy connection (every other frame passes at once).
 * `sent`: every frame sent, with its time.
 */
export function slowRepliesWS(isSlow, delayMs) {
  const sent = [];
  class SlowRepliesWS extends WebSocket {
    send(d) {
      sent.push({ at: Date.now(), frame: JSON.parse(d) });
      super.send(d);
    }
    set onmessage(fn) {
      super.onmessage = (ev) => {
        const f = JSON.parse(String(ev.data));
        const cmd = f.id === undefined ? undefined : sent.find((s) => s.frame.id === f.id)?.frame;
        if (cmd && isSlow(cmd)) {
          if (delayMs < Infinity) setTimeout(() => fn(ev), delayMs);
          return;
        }
        fn(ev);
      };
    }
    get onmessage() {
      return super.onmessage;
    }
  }
  return { sent, SlowRepliesWS };
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls until fn() is truthy (returns its value) or throws after timeoutMs. */
export async function waitFor(fn, timeoutMs = 5000, what = 'condition') {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** Resolves with the next event `ev` of `target` (client or subscription) matching pred. */
export function nextEvent(target, ev, pred = () => true, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      off();
      reject(new Error(`timed out waiting for event ${ev}`));
    }, timeoutMs);
    const off = target.on(ev, (arg) => {
      if (!pred(arg)) return;
      clearTimeout(t);
      off();
      resolve(arg);
    });
  });
}
