// runs.ts — agent run streaming. Run events are publications in
// `thread:<id>` (so they are recovered after a reconnect like any other
// publication); this file turns them into per-run async iterators.
//
// Events are buffered per thread (bounded) because a run's first events can
// arrive before the reply of the command that started it: an iterator
// created from sendMessage's result must still see agent_started.

import { WsgateError } from './errors.js';
import type { RunEvent } from './types.js';

/** How many threads keep a buffer at once (least recently active dropped). */
const MAX_THREADS = 64;

class RunIterator implements AsyncIterableIterator<RunEvent> {
  private items: RunEvent[] = [];
  private waiter: { resolve: (r: IteratorResult<RunEvent>) => void; reject: (e: unknown) => void } | undefined;
  private completed = false; // agent_completed queued: end after it
  private finished = false; // nothing more will be yielded
  private error: WsgateError | undefined;

  constructor(
    readonly runId: string,
    private readonly detach: (it: RunIterator) => void,
  ) {}

  push(ev: RunEvent): void {
    if (this.finished || this.completed) return;
    if (ev.type === 'agent_completed') this.completed = true;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      this.afterYield(ev);
      w.resolve({ value: ev, done: false });
    } else {
      this.items.push(ev);
    }
  }

  fail(err: WsgateError): void {
    if (this.finished || this.completed) return;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      this.finish();
      w.reject(err);
    } else {
      this.error = err; // for the next next()
    }
  }

  next(): Promise<IteratorResult<RunEvent>> {
    const ev = this.items.shift();
    if (ev) {
      this.afterYield(ev);
      return Promise.resolve({ value: ev, done: false });
    }
    if (this.error) {
      const err = this.error;
      this.error = undefined;
      this.finish();
      return Promise.reject(err);
    }
    if (this.finished) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => (this.waiter = { resolve, reject }));
  }

  return(): Promise<IteratorResult<RunEvent>> {
    this.finish();
    this.items = [];
    if (this.waiter) {
      this.waiter.resolve({ value: undefined, done: true });
      this.waiter = undefined;
    }
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<RunEvent> {
    return this;
  }

  private afterYield(ev: RunEvent): void {
    if (ev.type === 'agent_completed') this.finish();
  }

  private finish(): void {
    if (!this.finished) {
      this.finished = true;
      this.detach(this);
    }
  }
}

export class RunTracker {
  private buffers = new Map<string, RunEvent[]>();
  private iterators = new Map<string, Set<RunIterator>>();

  constructor(private readonly bufferSize: number) {}

  /** A new (deduplicated) run event of a thread. */
  push(ev: RunEvent): void {
    let buf = this.buffers.get(ev.threadId);
    if (buf) this.buffers.delete(ev.threadId); // re-insert: Map order is LRU order
    else buf = [];
    buf.push(ev);
    if (buf.length > this.bufferSize) buf.splice(0, buf.length - this.bufferSize);
    this.buffers.set(ev.threadId, buf);
    if (this.buffers.size > MAX_THREADS) {
      const oldest = this.buffers.keys().next().value;
      if (oldest !== undefined) this.buffers.delete(oldest);
    }
    const its = this.iterators.get(ev.threadId);
    if (its) for (const it of Array.from(its)) if (it.runId === ev.runId) it.push(ev);
  }

  /** The thread's channel lost publications: every open iterator on it fails. */
  gap(threadId: string): void {
    const its = this.iterators.get(threadId);
    if (!its) return;
    for (const it of Array.from(its))
      it.fail(new WsgateError('history_lost', `thread:${threadId} lost events while disconnected; reload with getThreadHistory`));
  }

  /** The thread's subscription was refused (a deleted or foreign thread):
   * its open iterators fail with that error — nothing more can arrive. */
  failThread(threadId: string, err: WsgateError): void {
    const its = this.iterators.get(threadId);
    if (its) for (const it of Array.from(its)) it.fail(err);
  }

  /** An iterator that rejects at once (runEvents on a closed client). */
  failed(runId: string, err: WsgateError): AsyncIterableIterator<RunEvent> {
    const it = new RunIterator(runId, () => {});
    it.fail(err);
    return it;
  }

  /** Every open iterator fails (the client was closed for good). */
  failAll(err: WsgateError): void {
    for (const its of this.iterators.values()) for (const it of Array.from(its)) it.fail(err);
  }

  iterate(threadId: string, runId: string): AsyncIterableIterator<RunEvent> {
    let set = this.iterators.get(threadId);
    if (!set) this.iterators.set(threadId, (set = new Set()));
    const it = new RunIterator(runId, (done) => {
      const s = this.iterators.get(threadId);
      if (s) {
        s.delete(done);
        if (!s.size) this.iterators.delete(threadId);
      }
    });
    set.add(it);
    // Replay what this client already saw of the run (from its first event).
    for (const ev of this.buffers.get(threadId) ?? []) if (ev.runId === runId) it.push(ev);
    return it;
  }
}
