// queue.ts — a bounded FIFO for commands waiting to be sent: while not
// connected, and while the client-side rate limit (pacer.ts) holds them.
//
// When full, the NEW item is refused (the caller rejects it at once): the
// older commands were issued first and their callers may already depend on
// them, so they are never evicted to make room.

export class BoundedQueue<T> {
  private items: T[] = [];
  constructor(readonly max: number) {}

  /** false when full: the caller must reject the item. */
  push(item: T): boolean {
    if (this.items.length >= this.max) return false;
    this.items.push(item);
    return true;
  }

  peek(): T | undefined {
    return this.items[0];
  }

  shift(): T | undefined {
    return this.items.shift();
  }

  remove(item: T): void {
    const i = this.items.indexOf(item);
    if (i >= 0) this.items.splice(i, 1);
  }

  /** Takes every item out, oldest first. */
  drain(): T[] {
    const out = this.items;
    this.items = [];
    return out;
  }
}
