// emitter.ts — a minimal typed event emitter shared by the client and
// subscriptions. No dependency on Node's EventEmitter so the bundle runs in
// browsers unchanged; on() returns its own off() so callers never need to
// keep the listener reference around.

export class Emitter<E extends { [K in keyof E]: unknown }> {
  private listeners = new Map<keyof E, Set<(arg: any) => void>>();

  on<K extends keyof E>(ev: K, fn: (arg: E[K]) => void): () => void {
    let set = this.listeners.get(ev);
    if (!set) this.listeners.set(ev, (set = new Set()));
    set.add(fn);
    return () => {
      set!.delete(fn);
    };
  }

  /** Calls every listener; a throwing listener must not break the SDK's own
   * state machine, so its exception is rethrown asynchronously. */
  emit<K extends keyof E>(ev: K, arg: E[K]): void {
    const set = this.listeners.get(ev);
    if (!set) return;
    for (const fn of Array.from(set)) {
      try {
        fn(arg);
      } catch (e) {
        setTimeout(() => {
          throw e;
        }, 0);
      }
    }
  }
}
