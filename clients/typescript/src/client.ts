// client.ts — WsgateClient: one logical connection to wsgate's /ws that
// survives reconnects. It owns the socket lifecycle (token → handshake →
// `connected`), request/reply by id, the offline command queue, the
// subscriptions to restore, token refresh and dead-connection detection.
//
// Ordering guarantee on every (re)connect: active subscriptions are re-sent
// first (with `recover` from their last position), then queued commands in
// the order they were issued — so a queued command that depends on a
// subscription (e.g. publish into a channel we listen to) sees it live.

import { backoffDelay } from './backoff.js';
import { Emitter } from './emitter.js';
import { WsgateError } from './errors.js';
import { BoundedQueue } from './queue.js';
import { RunTracker } from './runs.js';
import { Subscription, type SubscriptionHost } from './subscription.js';
import { decodeToken, nowSecs } from './token.js';
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
  timer?: ReturnType<typeof setTimeout>;
  sent: boolean;
}

type Resolved = Required<Omit<ClientOptions, 'token' | 'getToken' | 'WebSocket' | 'pongTimeoutMs'>> &
  Pick<ClientOptions, 'token' | 'getToken' | 'pongTimeoutMs'>;

/** setTimeout's longest delay (~24.8 days); longer ones fire at once. */
const MAX_TIMER_MS = 2_147_483_647;

export class WsgateClient implements SubscriptionHost {
  private readonly opts: Resolved;
  private readonly WS: any;
  private readonly events = new Emitter<ClientEvents>();
  private readonly runs: RunTracker;
  private readonly subs = new Map<string, Subscription>();
  private readonly pending = new Map<string, Pending>();
  private readonly queue: BoundedQueue<Pending>;

  private _state: ClientState = 'idle';
  private _info: ConnectedInfo | undefined;
  private ws: any;
  /** Bumped on every open/close so a stale async step (getToken resolving
   * after close()) knows to stop. */
  private gen = 0;
  /** `connected` received on the current socket: commands may be sent. */
  private live = false;
  /** The queue has been flushed on this socket: new commands go straight
   * out (before that they queue behind the older ones, keeping the order). */
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
    this.teardown();
    if (ws) {
      try {
        ws.close(1000, 'client closed');
      } catch {
        /* already closing */
      }
    }
    this.failAll(new WsgateError('closed', 'the client was closed'));
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
      this.scheduleReconnect(0, '', true);
      return;
    }
    if (gen !== this.gen) return;
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
      this.events.emit('error', new WsgateError('disconnected', `cannot open the WebSocket: ${(e as Error)?.message ?? e}`));
      this.scheduleReconnect(1006, '', false);
      return;
    }
    this.ws = ws;
    let saw401 = false;
    ws.onmessage = (ev: any) => {
      if (this.ws === ws) this.onData(ev.data);
    };
    ws.onerror = (ev: any) => {
      // Node's `ws` reports a refused handshake as "Unexpected server
      // response: 401"; a browser only says the connection failed.
      const msg = String(ev?.message ?? ev?.error?.message ?? '');
      if (/\b401\b/.test(msg)) saw401 = true;
    };
    ws.onclose = (ev: any) => {
      if (this.ws !== ws) return;
      this.onSocketClosed(ev?.code ?? 1006, ev?.reason ?? '', saw401);
    };
  }

  /** The token was refused (locally or by a 401): try one fresh token from
   * getToken, then give up — retrying a bad credential forever only feeds
   * the server's handshake rate limit. */
  private refused(code: 'unauthorized' | 'token_expired', message: string): void {
    this.authFailures++;
    const err = new WsgateError(code, message);
    this.events.emit('error', err);
    if (this.opts.getToken && this.opts.reconnect && this.authFailures < 2) {
      this.scheduleReconnect(0, message, true, 401);
    } else {
      this.stop(err, 401, message);
    }
  }

  private onSocketClosed(code: number, reason: string, was401: boolean): void {
    const wasLive = this.live;
    if (wasLive && Date.now() - this.connectedAt >= this.opts.stableAfterMs) this.attempt = 0;
    this.teardown();
    if (was401) {
      this.refused('unauthorized', 'the server refused the token (HTTP 401)');
      return;
    }
    if (code === 4003) {
      this.stop(new WsgateError('closed', 'disconnected by the server (4003)'), code, reason);
      return;
    }
    if (!this.opts.reconnect) {
      this.stop(new WsgateError('closed', `connection closed (${code})`), code, reason);
      return;
    }
    // 1001: the server is restarting or draining — another node (or it,
    // restarted) is likely ready now. 4001: the token expired — a new one
    // fixes it at once. Both get one immediate retry, then backoff.
    const immediate = code === 1001 || code === 4001;
    this.scheduleReconnect(code, reason, immediate);
  }

  private scheduleReconnect(code: number, reason: string, immediate: boolean, reportCode = code): void {
    const delayMs = immediate
      ? 0
      : backoffDelay(this.attempt++, this.opts.minReconnectDelayMs, this.opts.maxReconnectDelayMs);
    this.setState('reconnecting');
    this.events.emit('disconnected', { code: reportCode, reason, reconnecting: true, delayMs });
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
    this.teardown();
    this.failAll(err);
    this.setState('closed');
    this.events.emit('disconnected', { code, reason, reconnecting: false });
  }

  /** Forget the current socket: timers off, sent requests fail (they may or
   * may not have run — the SDK never re-sends a command silently). */
  private teardown(): void {
    const ws = this.ws;
    this.ws = undefined;
    this.live = false;
    this.flushed = false;
    if (ws) ws.onmessage = ws.onerror = ws.onclose = null;
    clearTimeout(this.idleTimer);
    clearTimeout(this.deadTimer);
    clearTimeout(this.refreshTimer);
    this.idleTimer = this.deadTimer = this.refreshTimer = undefined;
    for (const [id, p] of Array.from(this.pending)) {
      if (!p.sent) continue;
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
        if (sub.state !== 'unsubscribed') sub._onSubscribed(p);
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
      for (const p of this.queue.drain()) this.send(p);
    };
    if (resubscribed.length) void Promise.all(resubscribed).then(flush);
    else flush();
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

  // ------------------------------------------------------------ requests

  private send(p: Pending): void {
    try {
      this.ws.send(JSON.stringify(p.frame));
      p.sent = true;
    } catch {
      // The socket is closing; its close event fails this request.
      p.sent = true;
    }
  }

  private req<T>(type: string, payload: object | undefined, timeoutMs: number | undefined, onReply?: (p: any) => void): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this._state === 'closed') return reject(new WsgateError('closed', 'the client is closed'));
      const id = String(++this.nextId);
      const frame: RawFrame = payload === undefined ? { type, id } : { type, id, payload };
      const p: Pending = { frame, resolve, reject, onReply, sent: false };
      const ms = timeoutMs ?? this.opts.requestTimeoutMs;
      if (ms > 0 && ms < Infinity)
        p.timer = setTimeout(() => {
          this.pending.delete(id);
          this.queue.remove(p);
          reject(new WsgateError('timeout', `no reply to ${type} within ${ms} ms`));
        }, Math.min(ms, MAX_TIMER_MS));
      if (this.live && this.flushed) {
        this.pending.set(id, p);
        this.send(p);
      } else if (this.queue.push(p)) {
        this.pending.set(id, p);
      } else {
        clearTimeout(p.timer);
        reject(new WsgateError('queue_full', `${this.opts.maxQueue} commands already wait for a connection`));
      }
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

  /** Sends the subscription's subscribe now (bypassing the queue); the
   * promise settles (never rejects) when it is answered or the socket goes. */
  private sendSubscribe(sub: Subscription): Promise<void> {
    // No timeout: a recovering subscribe may wait behind a long backlog;
    // a dead connection is caught by the heartbeat instead.
    const id = String(++this.nextId);
    const reply = new Promise<any>((resolve, reject) => {
      const p: Pending = { frame: { type: 'subscribe', id, payload: sub._subscribePayload() }, resolve, reject, sent: false };
      p.onReply = (payload) => this.onSubscribeReply(sub, payload);
      this.pending.set(id, p);
      this.send(p);
    });
    return reply.then(() => undefined, (err: WsgateError) => this.onSubscribeError(sub, err));
  }

  private onSubscribeReply(sub: Subscription, p: any): void {
    if (this.subs.get(sub.channel) !== sub) return;
    const recovering = sub._recovering;
    const info = sub._onSubscribed(p);
    if (recovering && !info.recovered && sub.channel.startsWith('thread:'))
      this.runs.gap(sub.channel.slice('thread:'.length));
  }

  private onSubscribeError(sub: Subscription, err: WsgateError): void {
    if (this.subs.get(sub.channel) !== sub) return;
    if (err.code === 'disconnected' || err.code === 'closed') return; // re-sent on reconnect
    if (err.code === 'conflict' && sub.state === 'subscribed') return; // the server subscribed us meanwhile
    if (err.code === 'rate_limited' || err.code === 'unavailable') {
      sub._error(err);
      const gen = this.gen;
      setTimeout(() => {
        if (gen === this.gen && this.live && this.subs.get(sub.channel) === sub && sub.state === 'subscribing')
          void this.sendSubscribe(sub);
      }, err.retryAfterMs ?? 1000);
      return;
    }
    this.subs.delete(sub.channel);
    sub._fail(err);
  }

  /** @internal (Subscription.unsubscribe) */
  _unsubscribe(sub: Subscription): Promise<void> {
    if (this.subs.get(sub.channel) === sub) this.subs.delete(sub.channel);
    if (!this.live) return Promise.resolve(); // the server already forgot it
    return this.req('unsubscribe', { channel: sub.channel }, undefined).then(
      () => undefined,
      (e: WsgateError) => {
        if (e.code !== 'not_found' && e.code !== 'disconnected') throw e;
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
   * reconnects; ends after agent_completed; throws WsgateError
   * 'history_lost' if the thread's recovery reports a gap. */
  runEvents(threadId: string, runId: string): AsyncIterableIterator<RunEvent> {
    if (!this.subs.has('thread:' + threadId)) this.subscribe('thread:' + threadId);
    return this.runs.iterate(threadId, runId);
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
    this.refreshing = (async () => {
      try {
        const token = await this.opts.getToken!();
        if (gen !== this.gen || !this.live) return;
        const claims = decodeToken(token);
        if (!claims) throw new WsgateError('unauthorized', 'getToken returned a token that is not a decodable JWT');
        if (claims.exp <= nowSecs()) throw new WsgateError('token_expired', 'getToken returned an expired token');
        const r = await this.req<{ expires_at?: number }>('refresh_token', { token }, undefined);
        if (gen !== this.gen) return;
        this.tokenExp = typeof r.expires_at === 'number' ? r.expires_at : claims.exp;
        this.scheduleRefresh(true);
      } catch (e) {
        if (gen !== this.gen) return; // the connection went: connect() fetches a new token anyway
        const err = e instanceof WsgateError ? e : new WsgateError('unauthorized', `token refresh failed: ${(e as Error)?.message ?? e}`);
        this.events.emit('error', err);
        // Try again a little later while the old token still lasts; at exp
        // the server closes with 4001 and the reconnect fetches a new one.
        clearTimeout(this.refreshTimer);
        this.refreshTimer = setTimeout(() => void this.refresh(), 5000);
      } finally {
        this.refreshing = undefined;
      }
    })();
    return this.refreshing;
  }

  // ------------------------------------------------------------ heartbeat

  /** Browsers cannot see WebSocket pings, so silence is measured from frames:
   * after heartbeat_secs with nothing received, send a `ping` command (only
   * then: pings count against the message rate); no frame within the pong
   * timeout means the path is dead. */
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
      const timeout = this.opts.pongTimeoutMs ?? Math.max(2000, hbMs / 2);
      this.deadTimer = setTimeout(() => {
        this.deadTimer = undefined;
        if (this.live) this.killSocket(`no frame for ${hbMs + timeout} ms`);
      }, timeout);
      this.req('ping', undefined, Infinity).catch(() => undefined);
    };
    this.idleTimer = setTimeout(check, Math.max(0, hbMs - (Date.now() - this.lastRx)));
  }
}
