// The live operations page (/dashboard) in a real browser: Debian's
// Chromium, driven by playwright-core, loads the page the server serves,
// signs in with a token, and checks the three views against the running
// server: metrics charts fill up, a published event shows in the feed (and
// the filter hides and shows it), and the chat view creates a thread, gets
// the echo agent's answer streamed, stops a run, resumes one after a reload
// in the middle of it with nothing missing and nothing twice, and switches
// threads back and forth without piling subscriptions up.
//
// usage: node dashboard.mjs BASE_URL TOKEN API_KEY OUT_DIR
//   (server: metrics_interval_secs = 1, agent echo with echo_delay_ms = 30;
//   passes under the default message rate too, 30/min with bursts of 10:
//   the SDK paces its commands and the page waits for their replies)
// Prints one JSON line per step for the Rust test (crates/server/tests/it/dashboard.rs):
//   {"step":"loaded",…} {"step":"chart_points",…} {"step":"event_seen",…}
//   {"step":"threads_live",…} {"step":"thread_created",…} {"step":"run_completed","text":…}
//   {"step":"run_stopped",…} {"step":"reload_resumed","resumed_mid_run":true,…}
//   {"step":"threads_switched",…} {"step":"done"}
//   {"step":"error","reason":…} on any failure (exit code 1).
// The page puts its SDK client on window.__wsgate under automation
// (navigator.webdriver) only: the subscription check reads it.
// Screenshots: OUT_DIR/overview.png, events.png, chat.png (mid-stream),
// chat-reloaded.png (after the reload, mid-stream).
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [baseArg, token, apiKey, outDir] = process.argv.slice(2);
if (!outDir) {
  console.error('usage: node dashboard.mjs BASE_URL TOKEN API_KEY OUT_DIR');
  process.exit(2);
}
const base = baseArg.replace(/\/+$/, '');
const origin = new URL(base);
const out = (obj) => console.log(JSON.stringify(obj));
const started = Date.now();
const STEP_TIMEOUT = 15000;
mkdirSync(outDir, { recursive: true });

class Failure extends Error {}
const fail = (reason) => {
  throw new Failure(reason);
};
const words = (prefix, n) => Array.from({ length: n }, (_, i) => `${prefix}${i + 1}`).join(' ');

/** Requests to any other host than the server's are a failure (no CDN, no fonts, nothing). */
function sameHost(url) {
  if (url.startsWith('data:') || url.startsWith('blob:') || url === 'about:blank') return true;
  try {
    const u = new URL(url);
    return u.host === origin.host && ['http:', 'https:', 'ws:', 'wss:'].includes(u.protocol);
  } catch {
    return false;
  }
}

async function publishEvent(eventType, data) {
  const res = await fetch(`${base}/api/publish`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-API-Key': apiKey },
    body: JSON.stringify({
      channel: 'events',
      data: { type: 'event', event_type: eventType, timestamp: Date.now(), data },
    }),
  });
  if (!res.ok) fail(`POST /api/publish answered ${res.status}: ${await res.text()}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-dev-shm-usage'],
});
let failed = false;
const problems = [];
let refusing = false;
try {
  const context = await browser.newContext({ viewport: { width: 1360, height: 860 } });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT);
  page.on('request', (req) => {
    if (!sameHost(req.url())) problems.push(`request to another host: ${req.url()}`);
  });
  page.on('websocket', (ws) => {
    if (!sameHost(ws.url())) problems.push(`WebSocket to another host: ${ws.url()}`);
  });
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    // Outside --dev, /dashboard/dev.json is a 404 by design: Chromium logs it.
    if (/dev\.json/.test(msg.location()?.url ?? '') || /dev\.json/.test(msg.text())) return;
    // While a bad token is tried on purpose, Chromium logs the refused
    // handshake and the SDK's HTTP check (both 401).
    if (refusing && /401|Authentication failed/.test(msg.text())) return;
    problems.push(`console error: ${msg.text()}`);
  });
  const check = () => {
    if (problems.length) fail(problems.join('; '));
  };

  // --- load and sign in ------------------------------------------------
  const res = await page.goto(`${base}/dashboard`);
  if (!res || res.status() !== 200) fail(`GET /dashboard answered ${res?.status()}`);
  const csp = res.headers()['content-security-policy'] ?? '';
  await page.waitForSelector('#token', { state: 'visible' });
  // --dev fills the field in from /dashboard/dev.json; give it a moment.
  await page.waitForFunction(() => document.querySelector('#token').value !== '', null, { timeout: 1500 }).catch(() => {});
  const prefilled = (await page.inputValue('#token')) !== '';
  if ((await page.getAttribute('#token', 'type')) !== 'password') fail('the token field is not a password field');
  check();
  out({ step: 'loaded', prefilled, csp: csp !== '' });

  // --- a refused token: the server's reason, one handshake, not retried ---
  {
    const [header, claims] = token.split('.');
    const forged = `${header}.${claims}.${'A'.repeat(43)}`;
    let handshakes = 0;
    const countHandshake = () => handshakes++;
    page.on('websocket', countHandshake);
    refusing = true;
    await page.fill('#token', forged);
    await page.click('#connect');
    await page.waitForSelector('#login-error:not([hidden])');
    const message = await page.textContent('#login-error');
    if (!/signature/i.test(message)) fail(`a forged token's refusal says: ${message}`);
    await page.waitForTimeout(2000); // time enough for retries, if there were any
    page.off('websocket', countHandshake);
    refusing = false;
    if (handshakes !== 1) fail(`a refused token was offered ${handshakes} times`);
    const kept = await page.evaluate(() => Object.values(sessionStorage).some((v) => v.split('.').length === 3));
    if (kept) fail('a refused token stays in sessionStorage');
    check();
    out({ step: 'token_refused', message, handshakes });
  }
  await page.fill('#token', token);

  await page.click('#connect');
  await page.waitForSelector('#conn-state[data-state="connected"]');
  const user = await page.textContent('#conn-user');
  const stored = await page.evaluate(() => Object.values(sessionStorage).some((v) => v.split('.').length === 3));
  if (!stored) fail('the token is not kept in sessionStorage');
  if (page.url().includes(token) || (prefilled && page.url().includes('eyJ'))) fail('the token is in the URL');

  // --- overview: the charts receive points ------------------------------
  await page.click('[data-view="overview"]');
  // MIN_POINTS: more for the docs' screenshots (scripts/dashboard-screenshots.sh).
  const minPoints = Number(process.env.MIN_POINTS ?? 3);
  await page.waitForFunction((n) => Number(document.querySelector('#overview')?.dataset.points ?? 0) >= n, minPoints, { timeout: 12000 + minPoints * 1500 });
  const charts = await page.$$eval('.chart', (els) =>
    els.map((el) => ({
      id: el.dataset.testid,
      points: Number(el.dataset.points),
      width: el.querySelector('canvas')?.getBoundingClientRect().width ?? 0,
    })),
  );
  if (charts.length !== 3 || charts.some((c) => c.points < 3 || c.width < 100)) fail(`charts not drawn: ${JSON.stringify(charts)}`);
  const connections = await page.textContent('#tile-connections');
  if (!connections || Number(connections) < 1) fail(`connections tile shows ${connections}`);
  // Resizing the window resizes the charts.
  const before = charts[0].width;
  await page.setViewportSize({ width: 1000, height: 860 });
  await page.waitForFunction((w) => {
    const c = document.querySelector('.chart canvas');
    return c && Math.abs(c.getBoundingClientRect().width - w) > 20;
  }, before);
  await page.setViewportSize({ width: 1360, height: 860 });
  await page.waitForTimeout(300);
  await page.screenshot({ path: join(outDir, 'overview.png') });
  check();
  out({ step: 'chart_points', points: Math.min(...charts.map((c) => c.points)), charts, user, connections: Number(connections) });

  // --- events: a published event shows; the filter hides and shows it --
  await page.click('[data-view="events"]');
  const marker = `x-${Date.now()}`;
  await publishEvent('SITE_CREATED', { site: 'x', marker });
  await publishEvent('USER_LOGGED_IN', { user: 'someone' });
  const row = page.locator('.event-row[data-event-type="SITE_CREATED"]', { hasText: marker });
  await row.waitFor({ state: 'visible' });
  await page.locator('.event-row[data-event-type="USER_LOGGED_IN"]').first().waitFor({ state: 'visible' });
  const count = Number(await page.getAttribute('#events-count', 'data-count'));
  await page.fill('#events-filter', 'no-such-thing-anywhere');
  await row.waitFor({ state: 'hidden' });
  await page.fill('#events-filter', 'site_created');
  await row.waitFor({ state: 'visible' });
  const otherHidden = await page.locator('.event-row[data-event-type="USER_LOGGED_IN"]').first().isHidden();
  if (!otherHidden) fail('the filter "site_created" does not hide a USER_LOGGED_IN event');
  await page.fill('#events-filter', '');
  // Thousands of events: every one counted, the DOM list stays bounded.
  const burst = 3000;
  for (let i = 0; i < burst; i += 20) {
    await Promise.all(Array.from({ length: 20 }, (_, j) => publishEvent('BURST', { n: i + j })));
  }
  await publishEvent('BURST_END', { n: burst });
  await page.waitForFunction((n) => Number(document.querySelector('#events-count').dataset.count) >= n, count + burst + 1, { timeout: 30000 });
  const rows = await page.locator('.event-row').count();
  if (rows > 500) fail(`the events feed keeps ${rows} rows after ${burst} events (bounded at 500)`);
  const newest = await page.locator('.event-row').first().textContent();
  if (!newest.includes('BURST_END')) fail(`the newest row is not the last event: ${newest}`);
  await page.screenshot({ path: join(outDir, 'events.png') });
  check();
  out({ step: 'event_seen', count, filter: 'hides and shows', burst, rows });

  // --- chat: the thread list follows user:<sub> (another tab, or REST) ---
  await page.click('[data-view="chat"]');
  {
    const api = async (method, path, body) => {
      const res = await fetch(`${base}/api/threads${path}`, {
        method,
        headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
        body: body && JSON.stringify(body),
      });
      if (!res.ok) fail(`${method} /api/threads${path} answered ${res.status}`);
      return res.status === 204 ? null : res.json();
    };
    const created = await api('POST', '', { title: 'made elsewhere' });
    const id = (created.thread ?? created).id;
    const item = page.locator(`.thread-item[data-thread-id="${id}"]`);
    await item.waitFor();
    if (!(await item.textContent()).includes('made elsewhere')) fail('a thread made over REST shows without its title');
    await api('PATCH', `/${id}`, { title: 'renamed elsewhere' });
    await page.waitForFunction((id) => document.querySelector(`.thread-item[data-thread-id="${id}"]`)?.textContent.includes('renamed elsewhere'), id);
    await api('DELETE', `/${id}`);
    await item.waitFor({ state: 'detached' });
    check();
    out({ step: 'threads_live', thread_id: id });
  }

  // --- chat: create a thread, a run to completion -----------------------
  const threadsBefore = await page.locator('.thread-item').count();
  await page.click('#new-thread');
  await page.waitForFunction((n) => document.querySelectorAll('.thread-item').length === n + 1, threadsBefore);
  const selected = page.locator('.thread-item[aria-selected="true"]');
  await selected.waitFor();
  const threadId = await selected.getAttribute('data-thread-id');
  await page.waitForSelector('#send:not([disabled])');
  check();
  out({ step: 'thread_created', thread_id: threadId });

  const lastAssistant = '.msg.assistant:last-of-type';
  const assistantCount = () => page.locator('.msg.assistant').count();
  /** Sends a message and waits for its run's bubble (a new .msg.assistant). */
  async function send(text) {
    const n = await assistantCount();
    await page.fill('#composer', text);
    await page.press('#composer', 'Enter');
    await page.waitForFunction((n) => document.querySelectorAll('.msg.assistant').length > n, n);
  }
  const bubbleText = () => page.$eval('#messages .msg.assistant:last-of-type .msg-body', (el) => el.textContent);
  const bubbleStatus = () => page.getAttribute(`#messages ${lastAssistant}`, 'data-status');
  const waitStatus = (status, timeout = STEP_TIMEOUT) =>
    page.waitForFunction(
      (s) => {
        const all = document.querySelectorAll('#messages .msg.assistant');
        return all.length > 0 && all[all.length - 1].dataset.status === s;
      },
      status,
      { timeout },
    );
  /** Waits until the streaming bubble holds at least `n` words. */
  const waitWords = (n) =>
    page.waitForFunction(
      (n) => {
        const all = document.querySelectorAll('#messages .msg.assistant .msg-body');
        const t = all.length ? all[all.length - 1].textContent.trim() : '';
        return t !== '' && t.split(/\s+/).length >= n;
      },
      n,
    );

  const short = 'hello from the dashboard browser test';
  await send(short);
  await waitStatus('completed');
  const shortAnswer = await bubbleText();
  const steps = await page.locator(`#messages ${lastAssistant} .step`).count();
  if (shortAnswer !== short) fail(`the echo answer is ${JSON.stringify(shortAnswer)}, expected ${JSON.stringify(short)}`);
  if (steps < 2) fail(`the run shows ${steps} steps (thinking, tool), expected at least 2`);
  if (!(await page.locator('#stop').isHidden())) fail('the Stop button is still shown after the run');
  check();
  out({ step: 'run_completed', text: shortAnswer, steps });

  // --- a long run, stopped mid-way --------------------------------------
  const long1 = words('alpha', 150);
  await send(long1);
  await page.waitForSelector('#stop', { state: 'visible' });
  await waitWords(15);
  const partial = await bubbleText();
  if (!long1.startsWith(partial.trimEnd())) fail(`the streamed text is not a prefix of the answer: ${JSON.stringify(partial.slice(0, 80))}`);
  await page.screenshot({ path: join(outDir, 'chat.png') });
  await page.click('#stop');
  await waitStatus('stopped');
  const stoppedText = (await bubbleText()).trim();
  const stoppedWords = stoppedText ? stoppedText.split(/\s+/).length : 0;
  if (stoppedWords >= 150) fail('the stopped run streamed every word');
  if (!(await page.locator('#stop').isHidden())) fail('the Stop button is still shown after stopping');
  const statusText = await page.textContent(`#messages ${lastAssistant} .run-status`);
  check();
  out({ step: 'run_stopped', words: stoppedWords, status: statusText });

  // --- a long run, the page reloaded mid-way ----------------------------
  // 200 words at 30 ms each stream for ~6 s: reloaded after the first few,
  // the page is back well before the end.
  const long2Words = 200;
  const long2 = words('bravo', long2Words);
  await send(long2);
  await waitWords(3);
  const beforeReload = (await bubbleText()).trim().split(/\s+/).length;
  if (beforeReload >= long2Words) fail('the run was over before the reload');
  await page.reload();
  // No prompt: the token is in sessionStorage; the thread is selected again.
  await page.waitForSelector('#conn-state[data-state="connected"]');
  if (await page.locator('#login').isVisible()) fail('the reload asked for the token again');
  await page.waitForSelector(`.thread-item[aria-selected="true"][data-thread-id="${threadId}"]`);
  await page.waitForFunction(() => {
    const all = document.querySelectorAll('#messages .msg.assistant .msg-body');
    return all.length > 0 && all[all.length - 1].textContent.includes('bravo1 ');
  });
  const afterReload = (await bubbleText()).trim().split(/\s+/).length;
  const resumedMidRun = (await bubbleStatus()) === 'running';
  if (!resumedMidRun) fail(`after the reload the run shows ${await bubbleStatus()}, not running: the reload did not land mid-run (${afterReload} words)`);
  if (!(await page.locator('#stop').isVisible())) fail('after the reload mid-run the Stop button is not shown');
  await page.screenshot({ path: join(outDir, 'chat-reloaded.png') });
  // Every sample while it streams is a prefix of the answer: nothing missing, nothing twice.
  let samples = 0;
  while ((await bubbleStatus()) === 'running' && samples < 400) {
    const t = (await bubbleText()).trimEnd();
    if (!long2.startsWith(t)) fail(`after the reload the bubble is not a prefix of the answer: ${JSON.stringify(t.slice(-80))}`);
    samples++;
    await page.waitForTimeout(50);
  }
  if (samples < 3) fail(`only ${samples} samples while the resumed run streamed`);
  await waitStatus('completed');
  const finalText = await bubbleText();
  if (finalText !== long2) fail(`after the reload the answer is ${JSON.stringify(finalText.slice(0, 80))}… (${finalText.length} chars), expected the ${long2Words} words`);
  const userMessages = await page.locator('#messages .msg.user').count();
  if (userMessages !== 3) fail(`after the reload the thread shows ${userMessages} user messages, expected 3`);
  check();
  out({
    step: 'reload_resumed',
    words_before_reload: beforeReload,
    words_after_reload: afterReload,
    resumed_mid_run: resumedMidRun,
    samples,
    text_ok: true,
  });

  // --- switching threads: only the selected thread stays subscribed ------
  // (and one left while its run goes on, until that run ends). The SDK's
  // subscriptions, read from the client the page exposes under automation.
  const followed = () =>
    page.evaluate(() => {
      const c = window.__wsgate?.client;
      if (!c || typeof c.getSubscription !== 'function') return null;
      const ids = Array.from(document.querySelectorAll('.thread-item'), (el) => el.dataset.threadId);
      const on = (id) => {
        const s = c.getSubscription(`thread:${id}`);
        return !!s && s.state !== 'unsubscribed' && s.state !== 'failed';
      };
      return { threads: ids.filter(on).sort(), all: c.subs instanceof Map ? c.subs.size : null };
    });
  if ((await followed()) === null) fail('window.__wsgate.client is missing: the page exposes it under automation');
  /** Waits until exactly `ids` are followed; fails with what is. */
  async function expectFollowed(ids, what, timeout = 8000) {
    const want = [...ids].sort();
    try {
      await page.waitForFunction(
        (want) => {
          const c = window.__wsgate?.client;
          if (!c) return false;
          const ids = Array.from(document.querySelectorAll('.thread-item'), (el) => el.dataset.threadId);
          const have = ids
            .filter((id) => {
              const s = c.getSubscription(`thread:${id}`);
              return !!s && s.state !== 'unsubscribed' && s.state !== 'failed';
            })
            .sort();
          return JSON.stringify(have) === JSON.stringify(want);
        },
        want,
        { timeout },
      );
    } catch {
      fail(`${what}: the client follows ${JSON.stringify((await followed())?.threads)}, expected ${JSON.stringify(want)}`);
    }
  }
  /** Waits until `id` is selected and loaded (Send usable again). */
  async function opened(id, timeout = STEP_TIMEOUT) {
    await page.waitForSelector(`.thread-item[aria-selected="true"][data-thread-id="${id}"]`, { timeout });
    await page.waitForSelector('#send:not([disabled])', { timeout });
  }
  const openThread = (id) => page.click(`.thread-item[data-thread-id="${id}"] .thread-open`);
  async function newThread() {
    const n = await page.locator('.thread-item').count();
    await page.click('#new-thread');
    await page.waitForFunction((n) => document.querySelectorAll('.thread-item').length === n + 1, n);
    const id = await page.getAttribute('.thread-item[aria-selected="true"]', 'data-thread-id');
    if (!id || id === threadId) fail('the new thread is not selected');
    await opened(id);
    return id;
  }
  await expectFollowed([threadId], 'after the reload');
  const t1 = await newThread();
  await expectFollowed([t1], 'after creating a second thread');
  const t2 = await newThread();
  await expectFollowed([t2], 'after creating a third thread');
  let switches = 2;
  for (const id of [threadId, t1, t2, threadId]) {
    await openThread(id);
    await opened(id);
    switches++;
    await expectFollowed([id], `after switch ${switches}`);
  }
  const userMessagesBack = await page.locator('#messages .msg.user').count();
  if (userMessagesBack !== 3) fail(`back on the first thread it shows ${userMessagesBack} user messages, expected 3`);
  // Quick clicks, without waiting for each thread to load: the last wins,
  // and the ones passed over are not left subscribed.
  await openThread(t2);
  await openThread(t1);
  await openThread(threadId);
  switches += 3;
  await opened(threadId, 30000);
  await expectFollowed([threadId], 'after three quick switches', 30000);
  if ((await page.textContent('#thread-title')) === 'Loading…') fail('the last thread picked is not shown');
  // A thread left while its run goes on stays followed until the run ends.
  await openThread(t1);
  await opened(t1);
  const short2 = words('charlie', 150);
  await send(short2);
  await waitWords(3);
  await openThread(t2);
  await opened(t2);
  switches += 2;
  await expectFollowed([t1, t2], 'after leaving a thread whose run goes on', 5000);
  await expectFollowed([t2], 'after the run on the thread left ended', 20000);
  await openThread(t1);
  await opened(t1);
  switches++;
  await expectFollowed([t1], 'back on the thread whose run ended');
  const t1Answer = await page.$eval('#messages .msg.assistant:last-of-type .msg-body', (el) => el.textContent);
  if (t1Answer !== short2) fail(`the run finished while away shows ${JSON.stringify(t1Answer.slice(0, 80))}, expected the 150 words`);
  const state = await followed();
  check();
  out({ step: 'threads_switched', switches, threads: 3, followed: state.threads.length, subscriptions: state.all });
  out({ step: 'done', ms: Date.now() - started });
} catch (e) {
  failed = true;
  out({ step: 'error', reason: e instanceof Failure ? e.message : String(e?.stack ?? e) });
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
