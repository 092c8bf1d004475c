// load.mjs — the soak's steady churn, driven through the project's own
// TypeScript SDK (clients/typescript, bundled by soak.sh).
//
// CONCURRENCY slots each run sessions back to back, forever: a session
// connects (HS256 JWT) to one node, subscribes to two of the `soak:room-*`
// channels, publishes every few seconds, sends one message to the built-in
// echo agent (a new thread or one of the user's older ones) and follows the
// run's streamed events to `agent_completed`, sometimes reads a thread's
// history, renames one or deletes the user's oldest, swaps a room, and
// closes. With several nodes, consecutive sessions of a slot alternate
// between them, so every room has subscribers on every node and each node
// sees the other's publications (counted as cross-node deliveries). One API
// publisher per node also publishes through `POST /api/publish` (X-API-Key).
//
// Everything unexpected is counted as an error (by kind, with the last
// messages kept): a refused or dropped connection, a failed or timed-out
// command, a run that does not complete or whose answer is wrong, a gap in
// a subscription's offsets. The counters are written as JSON to --stats
// every 2 s (the sampler reads them). SIGTERM/SIGINT: start no more
// sessions, let the ones running finish their run (at most 20 s), close
// everything, write the stats a last time and exit.
//
// usage: node load.mjs --config FILE   (JSON: see soak.sh, write_load_config)

import { createHmac } from 'node:crypto';
import { readFileSync, writeFileSync, renameSync } from 'node:fs';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const cfg = JSON.parse(readFileSync(args.config, 'utf8'));
// The SDK bundle soak.sh made from clients/typescript/src, and `ws` from the
// SDK's own dev dependencies (Node 20 has no global WebSocket).
const { WsgateClient } = await import(pathToFileURL(cfg.sdk).href);
const WebSocket = createRequire(cfg.wsFrom)('ws');

const NODES = cfg.nodes; // [{name, ws, http}]
const ROOMS = cfg.rooms ?? 16;
const CONCURRENCY = cfg.concurrency ?? 100;
const USERS_PER_SLOT = cfg.usersPerSlot ?? 3; // a bounded user population, as in life
const SESSION_MS = cfg.sessionMs ?? [20000, 40000];
const PUBLISH_EVERY_MS = cfg.publishEveryMs ?? 5000;
const API_PUBLISH_EVERY_MS = cfg.apiPublishEveryMs ?? 1000;
const RUN_TIMEOUT_MS = 30000;
const THREADS_KEPT = 2; // per user; older ones are deleted (keeps the store bounded)

const stats = {
  mode: cfg.mode,
  started_at: Date.now(),
  concurrency: CONCURRENCY,
  sessions_started: 0,
  sessions_done: 0,
  connects: 0,
  clients_open: 0,
  clients_open_by_node: Object.fromEntries(NODES.map((n) => [n.name, 0])),
  subscribes: 0,
  unsubscribes: 0,
  publishes: 0,
  api_publishes: 0,
  deliveries: 0,
  cross_node_deliveries: 0,
  joins_leaves: 0,
  delivery_gaps: 0,
  runs_started: 0,
  runs_completed: 0,
  run_events: 0,
  threads_created: 0,
  threads_deleted: 0,
  threads_renamed: 0,
  history_reads: 0,
  errors: 0,
  errors_by_kind: {},
  last_errors: [],
  latency_ms: { p50: null, p99: null, max: null, n: 0 },
};
// publish → delivery latencies since the last stats write (for p50/p99)
let latencies = [];

function error(kind, detail) {
  stats.errors++;
  stats.errors_by_kind[kind] = (stats.errors_by_kind[kind] ?? 0) + 1;
  stats.last_errors.push({ at: new Date().toISOString(), kind, detail: String(detail).slice(0, 300) });
  if (stats.last_errors.length > 50) stats.last_errors.shift();
}

function writeStats() {
  stats.now = Date.now();
  if (latencies.length) {
    latencies.sort((a, b) => a - b);
    const q = (p) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))];
    stats.latency_ms = { p50: q(0.5), p99: q(0.99), max: latencies[latencies.length - 1], n: latencies.length };
    latencies = [];
  }
  const tmp = cfg.stats + '.tmp';
  writeFileSync(tmp, JSON.stringify(stats, null, 1));
  renameSync(tmp, cfg.stats);
}

const b64url = (s) => Buffer.from(s).toString('base64url');
function sign(sub) {
  const now = Math.floor(Date.now() / 1000);
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const claims = b64url(JSON.stringify({ sub, iat: now, exp: now + 7200 }));
  const sig = createHmac('sha256', cfg.secret).update(`${header}.${claims}`).digest('base64url');
  return `${header}.${claims}.${sig}`;
}

let stopping = false;
const sleepers = new Set();
/** A sleep that the stop cuts short. */
function sleep(ms) {
  return new Promise((resolve) => {
    const s = { resolve, t: setTimeout(() => (sleepers.delete(s), resolve()), ms) };
    sleepers.add(s);
  });
}
const rand = (lo, hi) => lo + Math.random() * (hi - lo);
const pick = (a) => a[Math.floor(Math.random() * a.length)];
const VOCAB = 'alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa'.split(' ');
const withTimeout = (p, ms, what) =>
  Promise.race([p, new Promise((_, rej) => setTimeout(() => rej(new Error(`${what}: no answer in ${ms} ms`)), ms).unref())]);

/** Threads each user has, oldest first (this process is the only writer). */
const userThreads = new Map();

/** Subscribes to a room, counting deliveries and checking offsets. */
function joinRoom(client, node, room, subs) {
  const sub = client.subscribe(room);
  stats.subscribes++;
  let last;
  sub.on('publication', (p) => {
    stats.deliveries++;
    // One subscription, never reconnected (reconnect: false): the offsets
    // it sees must be consecutive, whichever node published.
    if (last !== undefined && p.offset !== last + 1) {
      stats.delivery_gaps++;
      error('delivery_gap', `${room} on ${node.name}: offset ${p.offset} after ${last}`);
    }
    last = p.offset;
    if (p.data && p.data.node !== node.name) stats.cross_node_deliveries++;
    if (p.data && typeof p.data.ts === 'number') latencies.push(Date.now() - p.data.ts);
  });
  sub.on('subscribed', (s) => {
    if (last === undefined) last = s.offset;
  });
  sub.on('join', () => stats.joins_leaves++);
  sub.on('leave', () => stats.joins_leaves++);
  sub.on('error', (e) => error('subscription', `${room}: ${e.code} ${e.message}`));
  subs.set(room, sub);
  return sub.ready();
}

/** One agent run: user_message, then runEvents to agent_completed. */
async function agentRun(client, user) {
  const threads = userThreads.get(user) ?? [];
  userThreads.set(user, threads);
  const text = Array.from({ length: 8 + Math.floor(Math.random() * 9) }, () => pick(VOCAB)).join(' ');
  // Half the runs continue one of the user's threads, half start a new one.
  const threadId = threads.length && Math.random() < 0.5 ? pick(threads) : undefined;
  const r = await client.sendMessage(text, threadId ? { threadId } : undefined);
  stats.runs_started++;
  if (!threadId) {
    stats.threads_created++;
    threads.push(r.threadId);
  }
  let deltas = '';
  let final;
  let status;
  const follow = (async () => {
    for await (const ev of client.runEvents(r.threadId, r.runId)) {
      stats.run_events++;
      if (ev.type === 'partial_result') deltas += ev.payload.delta;
      if (ev.type === 'final_report') final = ev.payload.content;
      if (ev.type === 'agent_completed') status = ev.payload.status;
    }
  })();
  follow.catch(() => {}); // a timeout below abandons it; close() ends it
  await withTimeout(follow, RUN_TIMEOUT_MS, 'run');
  if (status !== 'completed') throw Object.assign(new Error(`run ${r.runId} ended ${status}`), { kind: 'run_status' });
  if (final !== text || deltas !== text)
    throw Object.assign(new Error(`run ${r.runId}: answer differs from the message`), { kind: 'run_answer' });
  stats.runs_completed++;
  return r.threadId;
}

async function session(slot, n) {
  const node = NODES[(slot + n) % NODES.length];
  const user = `soak-${cfg.mode}-${slot}-${n % USERS_PER_SLOT}`;
  stats.sessions_started++;
  // No reconnect: any drop during a session is something to count, not to
  // paper over.
  const client = new WsgateClient({ url: node.ws, token: sign(user), WebSocket, reconnect: false });
  let open = false;
  client.on('error', (e) => error('client', `${node.name} ${user}: ${e.code} ${e.message}`));
  client.on('disconnected', (d) => {
    if (open) {
      open = false;
      stats.clients_open--;
      stats.clients_open_by_node[node.name]--;
    }
    if (d.code !== 1000) error('disconnected', `${node.name} ${user}: close ${d.code} ${d.reason}`);
  });
  const connected = new Promise((resolve, reject) => {
    client.on('connected', () => {
      open = true;
      stats.connects++;
      stats.clients_open++;
      stats.clients_open_by_node[node.name]++;
      resolve();
    });
    client.on('disconnected', (d) => reject(new Error(`closed before connected (${d.code})`)));
  });
  connected.catch(() => {});
  const subs = new Map();
  let step = 'connect';
  try {
    client.connect();
    await withTimeout(connected, 10000, 'connect');
    step = 'subscribe';
    const rooms = new Set();
    while (rooms.size < 2) rooms.add(`soak:room-${Math.floor(Math.random() * ROOMS)}`);
    await withTimeout(Promise.all([...rooms].map((room) => joinRoom(client, node, room, subs))), 10000, 'subscribe');

    const until = Date.now() + rand(...SESSION_MS);
    // The run starts at a random point of the session, publications around it.
    const runAt = Date.now() + rand(0, (until - Date.now()) / 2);
    let ran = false;
    let seq = 0;
    while (!stopping && Date.now() < until) {
      await sleep(rand(0.5, 1.5) * PUBLISH_EVERY_MS);
      if (stopping) break;
      step = 'publish';
      await client.publish(pick([...subs.keys()]), { node: node.name, ts: Date.now(), slot, seq: seq++ });
      stats.publishes++;
      if (!ran && Date.now() >= runAt) {
        ran = true;
        step = 'agent run';
        const threadId = await agentRun(client, user);
        const threads = userThreads.get(user);
        const roll = Math.random();
        if (roll < 0.3) {
          step = 'history';
          await client.getThreadHistory(threadId, { limit: 20 });
          stats.history_reads++;
        } else if (roll < 0.45) {
          step = 'rename';
          await client.renameThread(pick(threads), `soak ${slot}/${n}`);
          stats.threads_renamed++;
        }
        if (threads.length > THREADS_KEPT) {
          step = 'delete';
          const oldest = threads.shift();
          await client.deleteThread(oldest === threadId ? threads.shift() : oldest);
          stats.threads_deleted++;
        }
        // Swap one room now and then: unsubscribe and subscribe churn.
        if (Math.random() < 0.3) {
          step = 'swap room';
          const [leaving] = subs.keys();
          const sub = subs.get(leaving);
          subs.delete(leaving);
          await sub.unsubscribe();
          stats.unsubscribes++;
          let next;
          do next = `soak:room-${Math.floor(Math.random() * ROOMS)}`;
          while (subs.has(next) || next === leaving);
          await withTimeout(joinRoom(client, node, next, subs), 10000, 'subscribe');
        }
      }
    }
    // A session cut short by the stop still does its run, so every run
    // started is followed to its end.
    if (!ran && !stopping) {
      step = 'agent run';
      await agentRun(client, user);
    }
  } catch (e) {
    error(e.kind ?? `${step}`, `${node.name} ${user}: ${e.code ?? ''} ${e.message}`);
  } finally {
    client.close();
    stats.sessions_done++;
  }
}

async function slotLoop(slot) {
  // Spread the first connects over the first session length, so the load
  // ramps up instead of arriving as one burst.
  await sleep(rand(0, SESSION_MS[0]));
  for (let n = 0; !stopping; n++) {
    await session(slot, n);
    await sleep(rand(500, 2000));
  }
}

async function apiPublisher(node) {
  let seq = 0;
  while (!stopping) {
    await sleep(rand(0.5, 1.5) * API_PUBLISH_EVERY_MS);
    if (stopping) break;
    const channel = `soak:room-${Math.floor(Math.random() * ROOMS)}`;
    try {
      const res = await fetch(`${node.http}/api/publish`, {
        method: 'POST',
        headers: { 'X-API-Key': cfg.apiKey, 'Content-Type': 'application/json' },
        body: JSON.stringify({ channel, data: { node: node.name, ts: Date.now(), api: true, seq: seq++ } }),
      });
      const body = await res.text();
      if (res.ok) stats.api_publishes++;
      else error('api_publish', `${node.name}: ${res.status} ${body.slice(0, 200)}`);
    } catch (e) {
      error('api_publish', `${node.name}: ${e.message}`);
    }
  }
}

const ticker = setInterval(writeStats, 2000);
writeStats();
const loops = [
  ...Array.from({ length: CONCURRENCY }, (_, i) => slotLoop(i)),
  ...NODES.map((n) => apiPublisher(n)),
];

let stopped;
function stop() {
  if (stopping) return;
  stopping = true;
  for (const s of sleepers) {
    clearTimeout(s.t);
    s.resolve();
  }
  sleepers.clear();
  // Running sessions finish their run and close; 20 s at most.
  stopped = Promise.race([Promise.allSettled(loops), new Promise((r) => setTimeout(r, 20000))]).then(() => {
    clearInterval(ticker);
    stats.stopped_at = Date.now();
    writeStats();
    process.exit(0);
  });
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.on('unhandledRejection', (e) => error('unhandled', e?.stack ?? e));
