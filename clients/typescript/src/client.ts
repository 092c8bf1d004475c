// client.ts — WsgateClient: one logical connection to wsgate's /ws that
// survives reconnects. It owns the socket lifecycle (token → handshake →
// `connected`), request/reply by id, the offline command queue, the
// subscriptions to restore, token refresh and dead-connection detection.
//
// Ordering guarantee on every (re)connect: active subscriptions are re-sent
// first (with `recover` from their last position), then queued commands in
// the order they were issued — so a queued command that depends on a
// subscription (e.g. publish into a channel we listen to) sees it live.
//
// Pacing: every frame goes out through one send line under a token bucket
// that mirrors the server's message limiter (pacer.ts): internal frames
// (heartbeat ping, refresh_token, then subscribes and unsubscribes in the
// order made) first, then the command queue in order. So a reconnect with
// many subscriptions and a full queue never trips the server's rate limit
// (whose 10th drop in a row closes 1008).

import { backoffDelay } from './backoff.js';
import { Emitter } from './emitter.js';
import { WsgateError } from './errors.js';
import { TokenBucket } from './pacer.js';
import { BoundedQueue } from './queue.js';
import { RunTracker } from './runs.js';
import { Subscription, type SubscriptionHost } from './subscription.js';
import { cleanToken, decodeToken, nowSecs } from './token.js';
import { httpUrl, tokenCheckUrl } from './tokencheck.js';
import {
  RUN_EVENT_TYPES,
  type ClientEvents,
  type ClientOptions,
  type ClientState,
  type ConnectedInfo,
  type Message,
  type Publication,
  type RawFrame,
  type RunEvent,
  type RunEventType,
  type Thread,
  type ThreadLoaded,
} from './types.js';

interface Pending {
  frame: RawFrame;
  resolve: (payload: any) => void;
  reject: (err: WsgateError) => void;
  /** Called synchronously with the reply, before the next frame is handled
   * (a promise continuation would run too late: frames that follow the reply
   * in the same TCP read are dispatched before microtasks). */
  onReply?: (payload: any) => void;
  /** Called when the frame is handed to the socket. */
  onSent?: () => void;
  timer?: ReturnType<typeof setTimeout>;
  /** The frame as sent (serialized once, at the call). */
  text: string;
  sent: boolean;
}

type Resolved = Required<Omit<ClientOptions, 'token' | 'getToken' | 'WebSocket' | 'pongTimeoutMs' | 'tokenCheckUrl'>> &
  Pick<ClientOptions, 'token' | 'getToken' | 'pongTimeoutMs' | 'tokenCheckUrl'>;

/** A no-op handler: a socket we are done with keeps a listener for every
 * event (Node's `ws` throws an 'error' nobody listens to). */
const ignore = (): void => {};


/** Commands the server answers at once: a heartbeat probe may be one. */
const QUICK: ReadonlySet<string> = new Set(['ping', 'subscribe', 'unsubscribe']);

/** setTimeout's longest delay (~24.8 days); longer ones fire at once. */
const MAX_TIMER_MS = 2_147_483_647;

export class WsgateClient implements SubscriptionHost {
  private readonly opts: Resolved;
  private readonly WS: any;
  private readonly events = new Emitter<ClientEvents>();
  private readonly runs: RunTracker;
  private readonly subs = new Map<string, Subscription>();
  private readonly pending = new Map<string, Pending>();
  /** Commands waiting to be sent (no connection yet, or held by the pacer). */
  private readonly queue: BoundedQueue<Pending>;
  /** The current socket's internal frames waiting to be sent, ahead of the
   * queue: heartbeat ping and refresh_token (at the front), subscribes and
   * unsubscribes (in the order made). Bounded by construction: one ping, one
   * refresh, one subscribe or unsubscribe per Subscription. */
  private line: Pending[] = [];
  /** The current socket's copy of the server's message limiter. */
  private bucket: TokenBucket | undefined;
  private pumpTimer: ReturnType<typeof setTimeout> | undefined;

  private _state: ClientState = 'idle';
  private _info: ConnectedInfo | undefined;
  private ws: any;
  /** Bumped on every open/close so a stale async step (getToken resolving
   * after close()) knows to stop. */
  private gen = 0;
  /** `connected` received on the current socket: commands may be sent. */
  private live = false;
  /** The resubscribes are answered on this socket: the queue may go out
   * (before that new commands queue behind the older ones, keeping the order). */
  private flushed = false;
  private nextId = 0;
  private attempt = 0;
  private connectedAt = 0;
  private authFailures = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;

  private tokenExp: number | undefined;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;
  private refreshing: Promise<void> | undefined;

  private lastRx = 0;
  private idleTimer: ReturnType<typeof setTimeout> | undefined;
  private deadTimer: ReturnType<typeof setTimeout> | undefined;
  /** The heartbeat ping in flight: waiting in the line, or sent. */
  private pinging: 'waiting' | 'sent' | undefined;
  /** Silent too long while frames wait: called with the next frame sent —
   * the probe if it draws a quick answer, else a ping follows it. */
  private probe: ((sent: Pending) => void) | undefined;

  constructor(opts: ClientOptions) {
    if (!opts || !opts.url) throw new TypeError('wsgate: `url` is required');
    this.WS = opts.WebSocket ?? (globalThis as any).WebSocket;
    if (!this.WS)
      throw new TypeError('wsgate: no global WebSocket here; pass one in the options (Node: `WebSocket` from the ws package)');
    this.opts = {
      url: opts.url,
      token: opts.token,
      getToken: opts.getToken,
      reconnect: opts.reconnect ?? true,
      minReconnectDelayMs: opts.minReconnectDelayMs ?? 500,
      maxReconnectDelayMs: opts.maxReconnectDelayMs ?? 20000,
      requestTimeoutMs: opts.requestTimeoutMs ?? 10000,
      maxQueue: opts.maxQueue ?? 100,
      refreshMarginSecs: opts.refreshMarginSecs ?? 60,
      pongTimeoutMs: opts.pongTimeoutMs,
      stableAfterMs: opts.stableAfterMs ?? 5000,
      runBufferSize: opts.runBufferSize ?? 1000,
      checkTokenOverHttp: opts.checkTokenOverHttp ?? typeof (globalThis as any).fetch === 'function',
      tokenCheckUrl: opts.tokenCheckUrl,
    };
    this.queue = new BoundedQueue(this.opts.maxQueue);
    this.runs = new RunTracker(this.opts.runBufferSize);
  }

  get state(): ClientState {
    return this._state;
  }
  get info(): ConnectedInfo | undefined {
    return this._info;
  }

  on<K extends keyof ClientEvents>(ev: K, fn: (arg: ClientEvents[K]) => void): () => void {
    return this.events.on(ev, fn);
  }

  // ------------------------------------------------------------ lifecycle

  /** Starts connecting (idempotent while connecting or connected). */
  connect(): void {
    if (this._state === 'connecting' || this._state === 'connected' || this._state === 'reconnecting') return;
    this.attempt = 0;
    this.authFailures = 0;
    this.setState('connecting');
    void this.open();
  }

  /** Closes with 1000 and does not reconnect; pending and queued requests
   * reject with 'closed'. Subscriptions are kept: connect() restores them. */
  close(): void {
    const wasLive = this.live;
    this.gen++;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    const ws = this.ws;
    // Before teardown(), which would reject what is in flight 'disconnected'.
    this.failAll(new WsgateError('closed', 'the client was closed'));
    this.teardown();
    if (ws) {
      try {
        ws.close(1000, 'client closed');
      } catch {
        /* already closing */
      }
    }
    if (this._state !== 'closed') this.setState('closed');
    if (wasLive) this.events.emit('disconnected', { code: 1000, reason: 'client closed', reconnecting: false });
  }

  private setState(s: ClientState): void {
    if (this._state === s) return;
    this._state = s;
    this.events.emit('state', s);
  }

  private async open(): Promise<void> {
    const gen = ++this.gen;
    let token: string | undefined;
    try {
      token = this.opts.getToken ? await this.opts.getToken() : this.opts.token;
    } catch (e) {
      if (gen !== this.gen) return;
      this.events.emit('error', new WsgateError('unauthorized', `getToken failed: ${(e as Error)?.message ?? e}`));
      // Maybe a passing failure (the token endpoint is down): back off.
      this.scheduleReconnect(0, 'getToken failed', false);
      return;
    }
    if (gen !== this.gen) return;
    if (typeof token === 'string' && token.trim()) {
      // A character a subprotocol cannot carry would make `new WebSocket`
      // throw (Chrome's SyntaxError quotes the subprotocol, token and all).
      token = cleanToken(token);
      if (!token) {
        this.refused('unauthorized', 'the token has characters a WebSocket subprotocol cannot carry (a JWT is base64url and dots)');
        return;
      }
    } else token = undefined;
    // Browsers cannot see a refused handshake's 401, so a token that cannot
    // work is caught here instead of being offered again and again.
    const claims = token ? decodeToken(token) : undefined;
    if (!token || !claims) {
      this.refused('unauthorized', token ? 'the token is not a decodable JWT with an exp' : 'no token');
      return;
    }
    if (claims.exp <= nowSecs()) {
      this.refused('token_expired', 'the token has expired');
      return;
    }
    this.tokenExp = claims.exp;

    let ws: any;
    try {
      // The token travels as a subprotocol, never in the URL (URLs end up in logs).
      ws = new this.WS(this.opts.url, ['wsgate.v1.json', 'bearer.' + token]);
    } catch (e) {
      // Never the token in a message (a browser's error may quote it).
      const msg = String((e as Error)?.message ?? e).split(token).join('<token>');
      this.events.emit('error', new WsgateError('disconnected', `cannot open the WebSocket: ${msg}`));
      this.scheduleReconnect(1006, '', false);
      return;
    }
    this.ws = ws;
    let opened = false;
    let saw401 = false;
    // Node's `ws` reports a refused handshake as "Unexpected server
    // response: 401" and a network failure by its errno; a browser only
    // says the connection failed.
    let statusKnown = false;
    ws.onopen = () => {
      opened = true;
    };
    ws.onmessage = (ev: any) => {
      if (this.ws === ws) this.onData(ev.data);
    };
    ws.onerror = (ev: any) => {
      const msg = String(ev?.message ?? ev?.error?.message ?? '');
      if (/Unexpected server response|\bE[A-Z]{4,}\b/.test(msg)) statusKnown = true;
      if (/\b401\b/.test(msg)) saw401 = true;
    };
    ws.onclose = (ev: any) => {
      if (this.ws !== ws) return;
      const code = ev?.code ?? 1006;
      const reason = ev?.reason ?? '';
      const checkUrl = !opened && !statusKnown && this.opts.checkTokenOverHttp ? this.checkUrl() : undefined;
      if (checkUrl) {
        // The handshake failed and we cannot tell why: ask over HTTP
        // whether it is the token.
        this.teardown();
        void this.checkToken(checkUrl, token!).then((refusal) => {
          if (gen === this.gen) this.onSocketClosed(code, reason, refusal);
        });
        return;
      }
      this.onSocketClosed(code, reason, saw401 ? 'the server refused the token (HTTP 401)' : undefined);
    };
  }

  /** Where the token check asks (tokencheck.ts), or undefined: no check. */
  private checkUrl(): string | undefined {
    const base = (globalThis as any).location?.href;
    const explicit = this.opts.tokenCheckUrl;
    return explicit !== undefined ? httpUrl(explicit, base) : tokenCheckUrl(this.opts.url, base);
  }

  /** `GET <url>` (…/api/threads?limit=1) with the token: the refusal's
   * message on a 401, else undefined (accepted, another status, or the
   * check itself failed — a network error, CORS — : not a token problem). */
  private async checkToken(url: string, token: string): Promise<string | undefined> {
    const f = (globalThis as any).fetch;
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      const ctl = typeof AbortController === 'function' ? new AbortController() : undefined;
      timer = setTimeout(() => ctl?.abort(), 5000);
      const res = await f(url, {
        headers: { Authorization: 'Bearer ' + token },
        // Not the page's cookies, nothing cached: only the token is asked about.
        credentials: 'omit',
        cache: 'no-store',
        signal: ctl?.signal,
      });
      if (res.status !== 401) return undefined;
      let message = 'the server refused the token (HTTP 401)';
      try {
        const body = await res.json();
        if (body && typeof body.message === 'string') message = body.message;
      } catch {
        /* not JSON */
      }
      return message;
    } catch {
      return undefined;
    } finally {
      clearTimeout(timer);
    }
  }

  /** The token was refused (locally or by a 401): try one fresh token from
   * getToken, then give up — retrying a bad credential forever only feeds
   * the server's handshake rate limit. */
  private refused(code: 'unauthorized' | 'token_expired', message: string): void {
    this.authFailures++;
    const err = new WsgateError(code, message);
    this.events.emit('error', err);
    if (this.opts.getToken && this.opts.reconnect && this.authFailures < 2) {
      this.scheduleReconnect(401, message, 'now');
    } else {
      this.stop(err, 401, message);
    }
  }

  /** @param refusal set when the token was refused (a 401): its message */
  private onSocketClosed(code: number, reason: string, refusal?: string): void {
    const wasLive = this.live;
    if (wasLive && Date.now() - this.connectedAt >= this.opts.stableAfterMs) this.attempt = 0;
    if (code === 4003 && refusal === undefined) {
      // stop() before any teardown(): requests in flight reject 'closed' too.
      this.stop(new WsgateError('closed', 'disconnected by the server (4003)'), code, reason);
      return;
    }
    this.teardown();
    if (refusal !== undefined) {
      this.refused('unauthorized', refusal);
      return;
    }
    if (!this.opts.reconnect) {
      this.stop(new WsgateError('closed', `connection closed (${code})`), code, reason);
      return;
    }
    // 1008: the server's rate limit — back off harder (two attempts' worth).
    if (code === 1008) this.attempt++;
    // 1001: the server is restarting or draining — another node (or it,
    // restarted) is likely ready now. 4001: the token expired — a new one
    // fixes it at once. Both get one immediate retry, then backoff.
    this.scheduleReconnect(code, reason, code === 1001 || code === 4001);
  }

  /** @param immediate 'now': at once (a refused token, bounded by
   * authFailures); true: at once unless this is already a retry; false:
   * backoff. */
  private scheduleReconnect(code: number, reason: string, immediate: boolean | 'now'): void {
    const delayMs =
      immediate === 'now' || (immediate && this.attempt === 0)
        ? 0
        : backoffDelay(this.attempt, this.opts.minReconnectDelayMs, this.opts.maxReconnectDelayMs);
    if (immediate !== 'now') this.attempt++;
    this.setState('reconnecting');
    this.events.emit('disconnected', { code, reason, reconnecting: true, delayMs });
    clearTimeout(this.reconnectTimer);
    const gen = this.gen;
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      if (gen === this.gen && this._state === 'reconnecting') void this.open();
    }, delayMs);
  }

  /** No more reconnects (4003, a refused token, reconnect: false). */
  private stop(err: WsgateError, code: number, reason: string): void {
    this.gen++;
    this.failAll(err); // before teardown(): in flight too rejects with err
    this.teardown();
    this.setState('closed');
    this.events.emit('disconnected', { code, reason, reconnecting: false });
  }

  /** Forget the current socket: timers off, sent requests fail (they may or
   * may not have run — the SDK never re-sends a command silently); internal
   * frames not sent yet are dropped (subscribes go again on the next socket). */
  private teardown(): void {
    const ws = this.ws;
    this.ws = undefined;
    this.live = false;
    this.flushed = false;
    this.bucket = undefined;
    this.refreshing = undefined;
    this.pinging = undefined;
    this.probe = undefined;
    if (ws) ws.onopen = ws.onmessage = ws.onerror = ws.onclose = ignore;
    clearTimeout(this.idleTimer);
    clearTimeout(this.deadTimer);
    clearTimeout(this.refreshTimer);
    clearTimeout(this.pumpTimer);
    this.idleTimer = this.deadTimer = this.refreshTimer = this.pumpTimer = undefined;
    const line = this.line;
    this.line = [];
    for (const [id, p] of Array.from(this.pending)) {
      if (!p.sent && !line.includes(p)) continue; // queued: waits for the next socket
      this.pending.delete(id);
      clearTimeout(p.timer);
      p.reject(new WsgateError('disconnected', 'the connection closed before the reply'));
    }
    for (const sub of this.subs.values()) sub._disconnected();
  }

  private failAll(err: WsgateError): void {
    this.queue.drain();
    for (const [id, p] of Array.from(this.pending)) {
      this.pending.delete(id);
      clearTimeout(p.timer);
      p.reject(err);
    }
    this.runs.failAll(err);
  }

  /** Drop a socket that went silent without closing (a dead TCP path): a
   * close handshake would never complete, so don't wait for it. */
  private killSocket(reason: string): void {
    const ws = this.ws;
    this.teardown();
    try {
      if (typeof ws?.terminate === 'function') ws.terminate();
      else ws?.close(4000, reason);
    } catch {
      /* ignore */
    }
    this.scheduleReconnect(1006, reason, false);
  }

  // ------------------------------------------------------------ frames

  private onData(data: unknown): void {
    let text: string;
    if (typeof data === 'string') text = data;
    else if (data instanceof ArrayBuffer || ArrayBuffer.isView(data))
      text = new TextDecoder().decode(data as ArrayBuffer);
    else text = String(data);
    let frame: RawFrame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    if (!frame || typeof frame.type !== 'string') return;
    this.lastRx = Date.now();
    this.probe = undefined;
    if (this.deadTimer) {
      clearTimeout(this.deadTimer);
      this.deadTimer = undefined;
      this.armIdle();
    }
    this.events.emit('frame', frame);
    this.handleFrame(frame);
  }

  private handleFrame(f: RawFrame): void {
    const p = f.payload ?? {};
    if (f.type === 'connected') return this.onConnected(p as ConnectedInfo);
    if (f.type === 'error' && p.code === 'rate_limited') {
      // Our pacing and the server's limiter disagree (an older server
      // without message_burst, say): hold everything for as long as asked.
      this.bucket?.pause(typeof p.retry_after_ms === 'number' ? p.retry_after_ms : 1000);
    }
    if (f.id !== undefined) {
      const pend = this.pending.get(f.id);
      if (pend) {
        this.pending.delete(f.id);
        clearTimeout(pend.timer);
        if (f.type === 'error') pend.reject(new WsgateError(p.code ?? 'internal', p.message, p.retry_after_ms));
        else {
          pend.onReply?.(p);
          pend.resolve(p);
        }
        return;
      }
    }
    switch (f.type) {
      case 'message':
        return this.onMessage(p);
      case 'subscribed': {
        // Pushed by the server (user_message / start_agent subscribe the
        // connection to thread:<id>): adopt it so it is recovered later.
        let sub = this.subs.get(p.channel);
        if (!sub) this.subs.set(p.channel, (sub = new Subscription(this, p.channel)));
        sub._onSubscribed(p);
        return;
      }
      case 'join':
      case 'leave':
        this.subs.get(p.channel)?._presence(f.type, p);
        return;
      case 'token_expiring':
        // Already refreshed past that expiry? Then this warning is stale.
        if (this.tokenExp === undefined || this.tokenExp <= p.expires_at) void this.refresh();
        return;
      case 'error':
        this.events.emit('error', new WsgateError(p.code ?? 'internal', p.message, p.retry_after_ms));
        return;
    }
  }

  private onConnected(info: ConnectedInfo): void {
    this._info = info;
    this.live = true;
    this.connectedAt = Date.now();
    this.authFailures = 0;
    if (typeof info.expires_at === 'number') this.tokenExp = info.expires_at;
    const rate = info.messages_per_minute;
    // A server that does not say its burst: assume its default (10).
    const burst = Math.max(1, info.message_burst ?? Math.min(10, rate));
    this.bucket = rate > 0 ? new TokenBucket(rate, burst) : undefined;
    // 1. restore subscriptions, 2. once they are answered, flush queued
    // commands in order. Waiting for the answers matters: the server answers
    // a recovering subscribe and the commands pipelined behind it on
    // separate tasks (only a connection's publishes are kept in order), so
    // "subscribed first, then the queue" needs the replies.
    const gen = this.gen;
    const resubscribed: Promise<void>[] = [];
    for (const sub of this.subs.values()) if (sub.state === 'subscribing') resubscribed.push(this.sendSubscribe(sub));
    const flush = () => {
      if (gen !== this.gen || !this.live || this.flushed) return;
      this.flushed = true;
      this.pump();
    };
    if (resubscribed.length) void Promise.all(resubscribed).then(flush);
    else flush();
    this.lastRx = Date.now();
    this.armIdle();
    this.scheduleRefresh(false);
    this.setState('connected');
    this.events.emit('connected', info);
  }

  private onMessage(p: any): void {
    const pub: Publication = { channel: p.channel, offset: p.offset, epoch: p.epoch, data: p.data };
    const sub = this.subs.get(pub.channel);
    if (sub && !sub._deliver(pub)) return; // already delivered (replayed twice)
    this.events.emit('publication', pub);
    const d: any = pub.data;
    if (pub.channel.startsWith('thread:') && d && typeof d === 'object' && RUN_EVENT_TYPES.has(d.type)) {
      const payload = d.payload && typeof d.payload === 'object' ? d.payload : {};
      const ev: RunEvent = {
        type: d.type as RunEventType,
        runId: String(payload.run_id),
        threadId: String(payload.thread_id ?? pub.channel.slice('thread:'.length)),
        offset: pub.offset,
        epoch: pub.epoch,
        payload,
      };
      this.runs.push(ev);
      this.events.emit('run_event', ev);
    }
  }

  // ------------------------------------------------------------ sending

  /** Sends what waits, as fast as the pacer allows: the line first, then
   * (once the resubscribes are answered) the queue, each in order. */
  private pump(): void {
    clearTimeout(this.pumpTimer);
    this.pumpTimer = undefined;
    while (this.live) {
      const fromLine = this.line.length > 0;
      const p = fromLine ? this.line[0] : this.flushed ? this.queue.peek() : undefined;
      if (!p) return;
      if (this.tooBig(p)) {
        if (fromLine) this.line.shift();
        else this.queue.shift();
        this.pending.delete(p.frame.id!);
        clearTimeout(p.timer);
        p.reject(this.tooLarge(p));
        continue;
      }
      const wait = this.bucket ? this.bucket.take() : 0;
      if (wait > 0) {
        clearTimeout(this.pumpTimer); // a probe's ping may have pumped meanwhile
        this.pumpTimer = setTimeout(() => this.pump(), wait);
        return;
      }
      if (fromLine) this.line.shift();
      else this.queue.shift();
      try {
        this.ws.send(p.text);
      } catch {
        // The socket is closing; its close event fails this request.
      }
      p.sent = true;
      p.onSent?.();
      const probe = this.probe;
      this.probe = undefined;
      probe?.(p);
    }
  }

  private tooBig(p: Pending): boolean {
    const max = this._info?.max_message_bytes;
    return !!max && p.text.length * 3 > max && new TextEncoder().encode(p.text).length > max;
  }

  private tooLarge(p: Pending): WsgateError {
    return new WsgateError('too_large', `${p.frame.type}: the frame is over the server's max_message_bytes (${this._info?.max_message_bytes})`);
  }

  /** @param internal a frame of the SDK's own for the current socket (it
   * goes in the line, never rejected queue_full; `front` puts it first) */
  private req<T>(
    type: string,
    payload: object | undefined,
    timeoutMs: number | undefined,
    onReply?: (p: any) => void,
    internal?: 'front' | 'back',
    onSent?: () => void,
  ): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this._state === 'closed') return reject(new WsgateError('closed', 'the client is closed'));
      if (internal && !this.live) return reject(new WsgateError('disconnected', 'not connected'));
      const id = String(++this.nextId);
      const frame: RawFrame = payload === undefined ? { type, id } : { type, id, payload };
      const p: Pending = { frame, text: JSON.stringify(frame), resolve, reject, onReply, onSent, sent: false };
      // Over the server's limit it would close the connection (1009),
      // failing every request in flight: refuse it here instead.
      if (this.tooBig(p)) return reject(this.tooLarge(p));
      const ms = timeoutMs ?? this.opts.requestTimeoutMs;
      if (ms > 0 && ms < Infinity)
        p.timer = setTimeout(() => {
          this.pending.delete(id);
          this.queue.remove(p);
          const i = this.line.indexOf(p);
          if (i >= 0) this.line.splice(i, 1);
          reject(new WsgateError('timeout', `no reply to ${type} within ${ms} ms`));
        }, Math.min(ms, MAX_TIMER_MS));
      if (internal === 'front') this.line.unshift(p);
      else if (internal) this.line.push(p);
      else if (!this.queue.push(p)) {
        clearTimeout(p.timer);
        return reject(new WsgateError('queue_full', `${this.opts.maxQueue} commands already wait to be sent`));
      }
      this.pending.set(id, p);
      this.pump();
    });
  }

  /** Sends a command and resolves with its reply's payload; a server
   * `error` with the command's id rejects at once with its code. */
  request<T = any>(type: string, payload?: object, opts?: { timeoutMs?: number }): Promise<T> {
    return this.req<T>(type, payload, opts?.timeoutMs);
  }

  ping(): Promise<void> {
    return this.req('ping', undefined, undefined).then(() => undefined);
  }

  // ------------------------------------------------------------ channels

  /** Returns the channel's Subscription (the existing one if there is one). */
  subscribe(
    channel: string,
    opts?: { filter?: Record<string, unknown>; since?: { offset: number; epoch: string } },
  ): Subscription {
    const existing = this.subs.get(channel);
    if (existing) return existing;
    const sub = new Subscription(this, channel, opts?.filter, opts?.since);
    this.subs.set(channel, sub);
    if (this.live) void this.sendSubscribe(sub);
    return sub;
  }

  getSubscription(channel: string): Subscription | undefined {
    return this.subs.get(channel);
  }

  /** Puts the subscription's subscribe in the line (ahead of the queue); the
   * promise settles (never rejects) when it is answered for good (a
   * rate-limited one is retried first) or the socket goes. */
  private sendSubscribe(sub: Subscription): Promise<void> {
    // No timeout: a recovering subscribe may wait behind a long backlog;
    // a dead connection is caught by the heartbeat instead.
    return this.req(
      'subscribe',
      sub._subscribePayload(),
      Infinity,
      (payload) => this.onSubscribeReply(sub, payload),
      'back',
    ).then(
      () => undefined,
      (err: WsgateError) => this.onSubscribeError(sub, err),
    );
  }

  private onSubscribeReply(sub: Subscription, p: any): void {
    if (this.subs.get(sub.channel) !== sub) return;
    const recovering = sub._recovering;
    const info = sub._onSubscribed(p);
    if (recovering && !info.recovered && sub.channel.startsWith('thread:'))
      this.runs.gap(sub.channel.slice('thread:'.length));
  }

  private onSubscribeError(sub: Subscription, err: WsgateError): Promise<void> | void {
    if (this.subs.get(sub.channel) !== sub) return;
    if (err.code === 'disconnected' || err.code === 'closed') return; // re-sent on reconnect
    if (err.code === 'conflict' && sub.state === 'subscribed') return; // the server subscribed us meanwhile
    if (err.code === 'rate_limited' || err.code === 'unavailable') {
      sub._error(err);
      // rate_limited paused the pacer for retry_after_ms: back in the line,
      // it goes when the server accepts frames again (one at a time, not
      // every refused subscribe at the same instant).
      const gen = this.gen;
      const wait = err.code === 'rate_limited' ? 0 : err.retryAfterMs ?? 1000;
      return new Promise<void>((r) => setTimeout(r, wait)).then(() => {
        if (gen === this.gen && this.live && this.subs.get(sub.channel) === sub && sub.state === 'subscribing')
          return this.sendSubscribe(sub);
      });
    }
    this.subs.delete(sub.channel);
    sub._fail(err);
    if (sub.channel.startsWith('thread:')) this.runs.failThread(sub.channel.slice('thread:'.length), err);
  }

  /** @internal (Subscription.unsubscribe) */
  _unsubscribe(sub: Subscription): Promise<void> {
    if (this.subs.get(sub.channel) === sub) {
      this.subs.delete(sub.channel);
      // Nothing more arrives for its runs: their iterators end.
      if (sub.channel.startsWith('thread:'))
        this.runs.failThread(sub.channel.slice('thread:'.length), new WsgateError('closed', `${sub.channel} was unsubscribed`));
    }
    if (!this.live) return Promise.resolve(); // the server already forgot it
    // Its subscribe still waits in the line: withdraw it, nothing to undo.
    const i = this.line.findIndex((p) => p.frame.type === 'subscribe' && (p.frame.payload as any)?.channel === sub.channel);
    if (i >= 0) {
      const [p] = this.line.splice(i, 1);
      this.pending.delete(p.frame.id!);
      p.reject(new WsgateError('closed', 'unsubscribed'));
      return Promise.resolve();
    }
    // In the line, like subscribes: a subscribe of the same channel made
    // after it goes after it (not ahead: a conflict, then the unsubscribe
    // removing the new one); no timeout, never queue_full, not held behind
    // the resubscribes' answers.
    return this.req('unsubscribe', { channel: sub.channel }, Infinity, undefined, 'back').then(
      () => undefined,
      (e: WsgateError) => {
        // Gone with the connection (the server forgot it), or not there.
        if (e.code !== 'not_found' && e.code !== 'disconnected' && e.code !== 'closed') throw e;
      },
    );
  }

  publish(channel: string, data: unknown): Promise<{ channel: string; offset: number; epoch: string }> {
    return this.req('publish', { channel, data }, undefined);
  }

  presence(channel: string): Promise<{ channel: string; clients: { user: string; connection_id: string }[] }> {
    return this.req('presence', { channel }, undefined);
  }

  history(
    channel: string,
    opts?: { since?: { offset: number; epoch: string }; limit?: number },
  ): Promise<{ channel: string; epoch: string; offset: number; more?: boolean; publications: { offset: number; data: unknown }[] }> {
    return this.req('history', { channel, ...opts }, undefined);
  }

  // ------------------------------------------------------------ threads and runs

  createThread(title?: string): Promise<Thread> {
    return this.req<any>('create_thread', title === undefined ? {} : { title }, undefined).then((p) => p.thread);
  }

  listThreads(opts?: { limit?: number; before?: string }): Promise<Thread[]> {
    return this.req<any>('list_threads', { ...opts }, undefined).then((p) => p.threads);
  }

  /** Loads a thread; the connection is then subscribed to thread:<id>, which
   * the SDK tracks (and recovers after a reconnect) like any subscription. */
  switchThread(threadId: string): Promise<ThreadLoaded> {
    const channel = 'thread:' + threadId;
    return this.req<ThreadLoaded>('switch_thread', { thread_id: threadId }, undefined, (p: ThreadLoaded) => {
      if (this.subs.has(channel)) return;
      const sub = new Subscription(this, channel);
      this.subs.set(channel, sub);
      // With a run in progress the server replays it from just before its
      // agent_started, i.e. from below the reply's offset: accept those.
      sub._adopt(p.active_run ? 0 : p.offset, p.epoch);
    });
  }

  getThreadHistory(threadId: string, opts?: { limit?: number; before?: string }): Promise<Message[]> {
    return this.req<any>('get_thread_history', { thread_id: threadId, ...opts }, undefined).then((p) => p.messages);
  }

  renameThread(threadId: string, title: string): Promise<Thread> {
    return this.req<any>('rename_thread', { thread_id: threadId, title }, undefined).then((p) => p.thread);
  }

  deleteThread(threadId: string): Promise<void> {
    return this.req('delete_thread', { thread_id: threadId }, undefined).then(() => undefined);
  }

  sendMessage(content: string, opts?: { threadId?: string }): Promise<{ runId: string; threadId: string; message: Message }> {
    const payload: Record<string, unknown> = { content };
    if (opts?.threadId !== undefined) payload.thread_id = opts.threadId;
    return this.req<any>('user_message', payload, undefined).then((p) => ({
      runId: p.run_id,
      threadId: p.thread_id,
      message: p.message,
    }));
  }

  startAgent(threadId: string): Promise<{ runId: string; threadId: string }> {
    return this.req<any>('start_agent', { thread_id: threadId }, undefined).then((p) => ({
      runId: p.run_id,
      threadId: p.thread_id,
    }));
  }

  stopRun(runId: string): Promise<void> {
    return this.req('stop_agent', { run_id: runId }, undefined).then(() => undefined);
  }

  /** The run's events from the first one this client saw, across
   * reconnects; ends after agent_completed. Throws WsgateError
   * 'history_lost' if the thread's recovery reports a gap, the
   * subscription's error code if the thread cannot be subscribed (deleted,
   * someone else's), 'closed' once the client is closed. */
  runEvents(threadId: string, runId: string): AsyncIterableIterator<RunEvent> {
    if (this._state === 'closed') return this.runs.failed(runId, new WsgateError('closed', 'the client is closed'));
    const it = this.runs.iterate(threadId, runId);
    if (!this.subs.has('thread:' + threadId)) this.subscribe('thread:' + threadId);
    return it;
  }

  // ------------------------------------------------------------ token refresh

  private scheduleRefresh(afterRefresh: boolean): void {
    clearTimeout(this.refreshTimer);
    this.refreshTimer = undefined;
    if (!this.opts.getToken || this.tokenExp === undefined) return;
    let delay = (this.tokenExp - this.opts.refreshMarginSecs) * 1000 - Date.now();
    if (delay < 0) {
      // A token that lives shorter than the margin: refresh now after a
      // connect, else at half its remaining life (never a tight loop).
      delay = afterRefresh ? Math.max(1000, (this.tokenExp * 1000 - Date.now()) / 2) : 0;
    }
    this.refreshTimer = setTimeout(() => void this.refresh(), Math.min(delay, MAX_TIMER_MS));
  }

  /** getToken() → refresh_token on the open connection → token_refreshed. */
  private refresh(): Promise<void> {
    if (this.refreshing) return this.refreshing;
    if (!this.live || !this.opts.getToken) return Promise.resolve();
    const gen = this.gen;
    const refreshing = (async () => {
      try {
        const raw = await this.opts.getToken!();
        if (gen !== this.gen || !this.live) return;
        const token = typeof raw === 'string' ? cleanToken(raw) : undefined;
        if (!token) throw new WsgateError('unauthorized', 'getToken returned no token, or one with characters a subprotocol cannot carry');
        const claims = decodeToken(token);
        if (!claims) throw new WsgateError('unauthorized', 'getToken returned a token that is not a decodable JWT');
        if (claims.exp <= nowSecs()) throw new WsgateError('token_expired', 'getToken returned an expired token');
        const r = await this.req<{ expires_at?: number }>('refresh_token', { token }, undefined, undefined, 'front');
        if (gen !== this.gen) return;
        this.tokenExp = typeof r.expires_at === 'number' ? r.expires_at : claims.exp;
        this.scheduleRefresh(true);
      } catch (e) {
        // The connection went (its refresh_token rejected 'disconnected' by
        // teardown): the reconnect fetches a new token anyway.
        if (gen !== this.gen || !this.live || (e instanceof WsgateError && (e.code === 'disconnected' || e.code === 'closed')))
          return;
        const err = e instanceof WsgateError ? e : new WsgateError('unauthorized', `token refresh failed: ${(e as Error)?.message ?? e}`);
        this.events.emit('error', err);
        // Try again a little later while the old token still lasts; at exp
        // the server closes with 4001 and the reconnect fetches a new one.
        clearTimeout(this.refreshTimer);
        this.refreshTimer = setTimeout(() => void this.refresh(), 5000);
      }
    })();
    this.refreshing = refreshing;
    // Only our own: teardown() forgets a refresh of an old socket, and a
    // newer one may have started since.
    void refreshing.then(() => {
      if (this.refreshing === refreshing) this.refreshing = undefined;
    });
    return refreshing;
  }

  // ------------------------------------------------------------ heartbeat

  /** Browsers cannot see WebSocket pings, so silence is measured from frames:
   * after heartbeat_secs with nothing received, a frame that draws a quick
   * answer must go out, and some frame must come back within the pong
   * timeout, counted from when it is actually sent (frames may wait in the
   * send line under the rate limit). That frame is a `ping` command, sent
   * ahead of everything (never queue_full) — only then: pings count against
   * the message rate. If frames wait anyway, the next one to go is the probe
   * when it is a ping, subscribe or unsubscribe (answered at once:
   * resubscribes after a reconnect do not wait for pings); any other may take
   * long to answer (stop_agent waits for the run's end), so a ping follows
   * it — one per heartbeat, never starving the commands. No frame in time
   * means the path is dead. */
  private armIdle(): void {
    clearTimeout(this.idleTimer);
    const hbMs = (this._info?.heartbeat_secs ?? 0) * 1000;
    if (!this.live || !(hbMs > 0)) return;
    const check = () => {
      if (!this.live) return;
      const idle = Date.now() - this.lastRx;
      if (idle < hbMs) {
        this.idleTimer = setTimeout(check, hbMs - idle);
        return;
      }
      // Looked at again every hbMs while silent (a probe withdrawn from the
      // line, a ping refused...).
      this.idleTimer = setTimeout(check, hbMs);
      if (this.deadTimer) return; // already waiting for an answer
      if (this.pinging === 'sent') return this.startDeadTimer();
      if (this.pinging) return; // the ping waits in the line: going out starts the timer
      if (this.line.length || (this.flushed && this.queue.peek())) {
        this.probe = (sent) => (QUICK.has(sent.frame.type) ? this.startDeadTimer() : this.heartbeatPing());
        return;
      }
      this.heartbeatPing();
    };
    this.idleTimer = setTimeout(check, Math.max(0, hbMs - (Date.now() - this.lastRx)));
  }

  /** A `ping` first in the line; the dead timer starts when it is sent. */
  private heartbeatPing(): void {
    if (!this.live || this.pinging) return;
    this.pinging = 'waiting';
    const gen = this.gen;
    const done = () => {
      if (gen === this.gen) this.pinging = undefined;
    };
    this.req('ping', undefined, Infinity, undefined, 'front', () => {
      this.pinging = 'sent';
      this.startDeadTimer();
    }).then(done, done);
  }

  /** No frame within the pong timeout from now: the path is dead. */
  private startDeadTimer(): void {
    if (!this.live || this.deadTimer) return;
    const timeout = this.opts.pongTimeoutMs ?? Math.max(2000, (this._info?.heartbeat_secs ?? 0) * 500);
    this.deadTimer = setTimeout(() => {
      this.deadTimer = undefined;
      if (this.live) this.killSocket(`no frame for ${timeout} ms after a ping`);
    }, timeout);
  }
}
