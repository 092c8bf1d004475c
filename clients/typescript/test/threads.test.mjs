// threads.test.mjs — thread helpers and agent runs against the echo agent:
// CRUD, a run streamed with runEvents (also across a network cut), stopRun,
// switchThread mid-run replaying the run so far, runEvents ended by an
// unsubscribe.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { WsgateClient } from '../dist/index.js';
import { startServer, startProxy, sign, WebSocket, nextEvent, closeProxies, waitFor, sleep, stopServers } from './harness.mjs';

let server;
const clients = [];
function client(sub, opts) {
  const c = new WsgateClient({
    url: server.url,
    WebSocket,
    token: sign({ sub }),
    minReconnectDelayMs: 50,
    maxReconnectDelayMs: 300,
    ...opts,
  });
  clients.push(c);
  c.connect();
  return c;
}
const words = (n) => Array.from({ length: n }, (_, i) => `w${i}`).join(' ');

async function collect(iter, onEach = () => {}) {
  const out = [];
  for await (const ev of iter) {
    out.push(ev);
    onEach(ev, out);
  }
  return out;
}

function checkRun(events, runId) {
  assert.ok(events.length > 3);
  assert.equal(events[0].type, 'agent_started');
  assert.equal(events.at(-1).type, 'agent_completed');
  for (const e of events) assert.equal(e.runId, runId);
  const offsets = events.map((e) => e.offset);
  for (let i = 1; i < offsets.length; i++) assert.ok(offsets[i] > offsets[i - 1], `offsets increase: ${offsets}`);
  assert.equal(new Set(offsets).size, offsets.length, 'each event once');
}

before(async () => {
  server = await startServer({ agent: { echo_delay_ms: 50 } });
});
after(async () => {
  for (const c of clients) c.close();
  await closeProxies();
  await server.cleanup();
  await stopServers();
});

test('thread helpers: create, list, rename, history, delete', { timeout: 30_000 }, async () => {
  const c = client('threads-crud');
  const t = await c.createThread('first');
  assert.equal(t.title, 'first');
  assert.equal(typeof t.id, 'string');
  const t2 = await c.createThread();
  assert.equal(t2.title, 'New thread');
  const list = await c.listThreads();
  assert.deepEqual(list.map((x) => x.id).sort(), [t.id, t2.id].sort());
  assert.equal((await c.listThreads({ limit: 1 })).length, 1);
  const renamed = await c.renameThread(t.id, 'renamed');
  assert.equal(renamed.title, 'renamed');
  assert.equal((await c.listThreads())[0].id, t.id, 'renaming moves it to the top');
  assert.deepEqual(await c.getThreadHistory(t.id), []);
  await c.deleteThread(t2.id);
  assert.deepEqual((await c.listThreads()).map((x) => x.id), [t.id]);
  await assert.rejects(c.renameThread(t2.id, 'x'), (e) => e.code === 'not_found');
  await assert.rejects(c.createThread(''.padEnd(201, 'x')), (e) => e.code === 'bad_request');
});

test('sendMessage + runEvents: every event once, deltas add up to final_report; a second message conflicts', { timeout: 30_000 }, async () => {
  const c = client('threads-run');
  const run_events = [];
  c.on('run_event', (e) => run_events.push(e));
  const { runId, threadId, message } = await c.sendMessage('hello there wsgate');
  assert.equal(message.content, 'hello there wsgate');
  assert.equal(message.role, 'user');
  // The server subscribed us (a `subscribed` frame without id): adopted.
  const sub = c.getSubscription('thread:' + threadId);
  assert.ok(sub, 'thread subscription adopted');
  assert.equal(sub.state, 'subscribed');
  await assert.rejects(c.sendMessage('again', { threadId }), (e) => e.code === 'conflict');
  const events = await collect(c.runEvents(threadId, runId));
  checkRun(events, runId);
  const deltas = events.filter((e) => e.type === 'partial_result').map((e) => e.payload.delta).join('');
  const report = events.find((e) => e.type === 'final_report');
  assert.equal(deltas, report.payload.content);
  assert.equal(events.at(-1).payload.status, 'completed');
  assert.deepEqual(run_events.map((e) => e.offset), events.map((e) => e.offset), 'run_event: each once');
  const history = await c.getThreadHistory(threadId);
  assert.deepEqual(history.map((m) => m.role), ['user', 'assistant']);
  assert.equal(history[1].content, report.payload.content);
  // Iterating a finished run again replays it from the buffer and ends.
  assert.equal((await collect(c.runEvents(threadId, runId))).length, events.length);
});

test('a run streamed across a network cut: recovered, every partial_result once, ends with agent_completed', { timeout: 30_000 }, async () => {
  const proxy = await startProxy(server.port);
  const c = client('threads-cut', { url: proxy.url });
  await nextEvent(c, 'connected');
  const { runId, threadId } = await c.sendMessage(words(40));
  const sub = c.getSubscription('thread:' + threadId);
  const resubs = [];
  sub.on('subscribed', (s) => resubs.push(s));
  let cut = false;
  const events = await collect(c.runEvents(threadId, runId), (ev, out) => {
    if (!cut && out.filter((e) => e.type === 'partial_result').length === 5) {
      cut = true;
      proxy.cut();
    }
  });
  assert.ok(cut);
  checkRun(events, runId);
  const partials = events.filter((e) => e.type === 'partial_result');
  assert.equal(partials.length, 40);
  const report = events.find((e) => e.type === 'final_report');
  assert.equal(partials.map((e) => e.payload.delta).join(''), report.payload.content);
  assert.equal(events.at(-1).payload.status, 'completed');
  assert.ok(resubs.length >= 1 && resubs.every((s) => s.resubscribed && s.recovered), JSON.stringify(resubs));
  assert.ok(proxy.connections >= 2);
  await proxy.close();
});

test('stopRun on a slow run: agent_completed status stopped', { timeout: 30_000 }, async () => {
  const c = client('threads-stop');
  const { runId, threadId } = await c.sendMessage(words(200));
  const it = c.runEvents(threadId, runId);
  const events = [];
  let stopped;
  for await (const ev of it) {
    events.push(ev);
    if (ev.type === 'partial_result' && !stopped) stopped = c.stopRun(runId);
  }
  await stopped;
  assert.equal(events.at(-1).type, 'agent_completed');
  assert.equal(events.at(-1).payload.status, 'stopped');
  assert.ok(events.filter((e) => e.type === 'partial_result').length < 200);
  await assert.rejects(c.stopRun(runId), (e) => e.code === 'not_found');
});

test('switchThread mid-run (another tab) replays the run so far, then live, each once', { timeout: 30_000 }, async () => {
  const a = client('threads-switch');
  const b = client('threads-switch');
  const { runId, threadId } = await a.sendMessage(words(30));
  const aEvents = collect(a.runEvents(threadId, runId));
  await waitFor(async () => (await a.getThreadHistory(threadId)).length >= 1 && a.getSubscription('thread:' + threadId)?.offset >= 6, 5000, 'run under way');
  const loaded = await b.switchThread(threadId);
  assert.equal(loaded.thread.id, threadId);
  assert.equal(loaded.active_run?.run_id, runId);
  assert.equal(loaded.messages[0].content, words(30));
  assert.equal(b.getSubscription('thread:' + threadId)?.state, 'subscribed', 'switch_thread subscription tracked');
  const bEvents = await collect(b.runEvents(threadId, runId));
  checkRun(bEvents, runId);
  const all = await aEvents;
  assert.deepEqual(bEvents.map((e) => e.offset), all.map((e) => e.offset), 'the whole run, replayed then live');
  // switchThread on a thread already followed: no replay, no duplicates.
  const again = await a.switchThread(threadId);
  assert.equal(again.active_run, null);
});

test('runEvents subscribes to the thread when not yet subscribed; startAgent', { timeout: 30_000 }, async () => {
  const a = client('threads-start');
  const b = client('threads-start');
  const t = await a.createThread('start');
  const { runId } = await b.sendMessage(words(30), { threadId: t.id });
  assert.equal(a.getSubscription('thread:' + t.id), undefined);
  const it = a.runEvents(t.id, runId); // a was not subscribed: runEvents subscribes
  assert.ok(a.getSubscription('thread:' + t.id));
  const events = await collect(it);
  assert.equal(events.at(-1).type, 'agent_completed');
  assert.ok(events.some((e) => e.type === 'partial_result'));
  const started = await b.startAgent(t.id);
  assert.equal(started.threadId, t.id);
  const again = await collect(a.runEvents(t.id, started.runId));
  checkRun(again, started.runId);
});

test("runEvents on someone else's thread: the iterator rejects with the subscription's error (forbidden)", { timeout: 30_000 }, async () => {
  const owner = client('threads-owner');
  const other = client('threads-other');
  const t = await owner.createThread('private');
  const { runId } = await owner.sendMessage(words(5), { threadId: t.id });
  const it = other.runEvents(t.id, runId);
  const err = await it.next().then(() => null, (e) => e);
  assert.equal(err?.code, 'forbidden');
  assert.equal(other.getSubscription('thread:' + t.id), undefined, 'the failed subscription is dropped');
  // A waiting iterator fails too (not only one created after the refusal).
  const waiting = other.runEvents(t.id, runId);
  const pending = waiting.next().then(() => null, (e) => e);
  assert.equal((await pending)?.code, 'forbidden');
  assert.deepEqual(await waiting.next(), { value: undefined, done: true });
});

test('runEvents on a deleted thread rejects (forbidden); after close() it rejects closed', { timeout: 30_000 }, async () => {
  const c = client('threads-deleted');
  const t = await c.createThread('doomed');
  await c.deleteThread(t.id);
  const err = await c.runEvents(t.id, 'no-such-run').next().then(() => null, (e) => e);
  assert.equal(err?.code, 'forbidden');
  // An iterator open when the client is closed, and one asked for after.
  const t2 = await c.createThread('open');
  const open = c.runEvents(t2.id, 'r');
  const waiting = open.next().then(() => null, (e) => e);
  c.close();
  assert.equal((await waiting)?.code, 'closed');
  const t0 = Date.now();
  await assert.rejects(c.runEvents(t2.id, 'r').next(), (e) => e.code === 'closed');
  assert.ok(Date.now() - t0 < 100, 'at once');
});

test("unsubscribing a thread ends its runEvents iterators with 'closed'", { timeout: 30_000 }, async () => {
  const c = client('threads-unsub');
  const { runId, threadId } = await c.sendMessage(words(100));
  const it = c.runEvents(threadId, runId);
  assert.equal((await it.next()).value.type, 'agent_started');
  await c.getSubscription('thread:' + threadId).unsubscribe();
  // What was already buffered may come first; then 'closed', not a hang.
  let err;
  for (;;) {
    const r = await Promise.race([it.next().then((x) => x, (e) => ({ error: e })), sleep(3000).then(() => ({ hung: true }))]);
    if (r.error) err = r.error;
    if (r.error || r.hung || r.done) break;
  }
  assert.equal(err?.code, 'closed');
  assert.deepEqual(await it.next(), { value: undefined, done: true });
  await c.stopRun(runId).catch(() => {});
});
