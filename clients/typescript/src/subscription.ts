// subscription.ts — one channel subscription as an object (the model is
// centrifuge-js). It remembers the position (offset, epoch) of the last
// publication it delivered, so after a reconnect the client re-subscribes
// with `recover` from exactly there and the server replays what was missed;
// it also drops a publication it has already delivered, so each arrives once.

import { Emitter } from './emitter.js';
import { WsgateError } from './errors.js';
import type { PresenceClient, Publication, SubscribedInfo } from './types.js';

export type SubscriptionState = 'subscribing' | 'subscribed' | 'unsubscribed' | 'failed';

interface SubscriptionEvents {
  publication: Publication;
  subscribed: SubscribedInfo;
  error: WsgateError;
  join: PresenceClient;
  leave: PresenceClient;
}

/** What a Subscription needs from its client (kept narrow to avoid a cycle). */
export interface SubscriptionHost {
  _unsubscribe(sub: Subscription): Promise<void>;
}

export class Subscription {
  readonly channel: string;
  private _state: SubscriptionState = 'subscribing';
  private _offset: number | undefined;
  private _epoch: string | undefined;
  private readonly events = new Emitter<SubscriptionEvents>();
  private waiters: { resolve: (s: SubscribedInfo) => void; reject: (e: WsgateError) => void }[] = [];
  private lastInfo: SubscribedInfo | undefined;
  private failure: WsgateError | undefined;
  /** Has it been subscribed at least once (so the next `subscribed` is a re-subscription)? */
  private everSubscribed = false;
  /** Did the last subscribe we sent ask for recovery? */
  private recovering = false;

  /** @internal */
  constructor(
    private readonly host: SubscriptionHost,
    channel: string,
    /** @internal */ readonly _filter?: Record<string, unknown>,
    since?: { offset: number; epoch: string },
  ) {
    this.channel = channel;
    if (since) {
      this._offset = since.offset;
      this._epoch = since.epoch;
    }
  }

  get state(): SubscriptionState {
    return this._state;
  }
  /** Offset of the last publication delivered (or the position subscribed at). */
  get offset(): number | undefined {
    return this._offset;
  }
  get epoch(): string | undefined {
    return this._epoch;
  }

  on(ev: 'publication', fn: (p: Publication) => void): () => void;
  on(ev: 'subscribed', fn: (s: SubscribedInfo) => void): () => void;
  on(ev: 'error', fn: (e: WsgateError) => void): () => void;
  on(ev: 'join' | 'leave', fn: (p: PresenceClient) => void): () => void;
  on(ev: keyof SubscriptionEvents, fn: (arg: any) => void): () => void {
    return this.events.on(ev, fn);
  }

  /** Resolves at the first `subscribed` (at once if already subscribed).
   * Created on demand, so a failure nobody waits for is not an unhandled
   * rejection. */
  ready(): Promise<SubscribedInfo> {
    if (this.lastInfo) return Promise.resolve(this.lastInfo);
    if (this.failure) return Promise.reject(this.failure);
    if (this._state === 'unsubscribed') return Promise.reject(new WsgateError('closed', 'unsubscribed'));
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  unsubscribe(): Promise<void> {
    if (this._state === 'unsubscribed') return Promise.resolve();
    this._state = 'unsubscribed';
    this.rejectWaiters(new WsgateError('closed', 'unsubscribed'));
    return this.host._unsubscribe(this);
  }

  // ---- internal: driven by the client ----

  /** @internal The payload of the subscribe command to send now. */
  _subscribePayload(): Record<string, unknown> {
    const p: Record<string, unknown> = { channel: this.channel };
    if (this._filter) p.filter = this._filter;
    this.recovering = this._offset !== undefined && this._epoch !== undefined;
    if (this.recovering) p.recover = { offset: this._offset, epoch: this._epoch };
    return p;
  }

  /** @internal Whether the last subscribe asked for recovery (a `recovered:
   * false` answer then means a gap). */
  get _recovering(): boolean {
    return this.recovering;
  }

  /** @internal */
  _onSubscribed(p: { offset: number; epoch: string; recovered?: boolean }): SubscribedInfo {
    // Keep our own position when the epoch is unchanged: the server replays
    // from it (recover) and dropping "≤ offset" must not eat the backlog,
    // whose offsets are below the position the reply names. A new epoch
    // (history lost, or a first subscribe) starts from the reply's position.
    if (this._offset === undefined || this._epoch !== p.epoch) {
      this._offset = p.offset;
      this._epoch = p.epoch;
    }
    const info: SubscribedInfo = {
      channel: this.channel,
      offset: p.offset,
      epoch: p.epoch,
      recovered: !!p.recovered,
      resubscribed: this.everSubscribed,
    };
    this.everSubscribed = true;
    this._state = 'subscribed';
    this.lastInfo = info;
    this.failure = undefined;
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w.resolve(info);
    this.events.emit('subscribed', info);
    return info;
  }

  /** @internal Adopt a position without a `subscribed` frame (switch_thread's
   * reply subscribes the connection itself). */
  _adopt(offset: number, epoch: string): void {
    this._offset = offset;
    this._epoch = epoch;
    this._onSubscribed({ offset, epoch, recovered: false });
  }

  /** @internal true when the publication is new (and delivers it). */
  _deliver(pub: Publication): boolean {
    if (this._state === 'unsubscribed') return false;
    if (pub.epoch === this._epoch && this._offset !== undefined && pub.offset <= this._offset) return false;
    this._offset = pub.offset;
    this._epoch = pub.epoch;
    this.events.emit('publication', pub);
    return true;
  }

  /** @internal */
  _presence(kind: 'join' | 'leave', p: PresenceClient): void {
    this.events.emit(kind, p);
  }

  /** @internal The connection dropped: the server forgot us. */
  _disconnected(): void {
    if (this._state === 'subscribed') this._state = 'subscribing';
  }

  /** @internal */
  _fail(err: WsgateError): void {
    this._state = 'failed';
    this.failure = err;
    this.rejectWaiters(err);
    this.events.emit('error', err);
  }

  /** @internal Report an error without giving up (e.g. a retried resubscribe). */
  _error(err: WsgateError): void {
    this.events.emit('error', err);
  }

  private rejectWaiters(err: WsgateError): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w.reject(err);
  }
}
