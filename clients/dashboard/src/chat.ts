// Chat: the user's threads (listThreads, then kept current from channel
// user:<sub>: thread_created / thread_renamed / thread_deleted), the
// selected thread's messages (switchThread), a composer (Enter sends,
// Shift+Enter is a new line), the agent run streamed into its bubble and a
// Stop button while it runs. After a reload the selected thread (kept in
// sessionStorage) is switched to again: the server replays the run in
// progress so far, then the live events.
//
// Subscriptions: switch_thread (and sending into a thread) subscribes the
// connection to thread:<id>. Only the selected thread stays followed, and a
// thread left while its run goes on until that run ends; the others are
// unsubscribed (the server allows limits.max_subscriptions per connection).
// Commands may wait a moment (the SDK paces them to the server's message
// rate): nothing here assumes an instant reply, and a command in flight
// keeps its button from sending it twice.

import type {
  Message,
  Publication,
  RunEvent,
  SubscribedInfo,
  Subscription,
  Thread,
  ThreadLoaded,
  WsgateClient,
} from '../../typescript/src/index.ts';
import { h, listen, trimChildren } from './dom.ts';
import { RunBubble } from './run.ts';
import { session } from './session.ts';
import { ThreadList } from './threads.ts';

const MAX_MESSAGES = 200;
/** Runs kept in memory (their bubbles, on screen or not). */
const MAX_RUNS = 30;
/** Runs given up on, remembered so that a late event of theirs is ignored. */
const MAX_ENDED = 100;

const channelOf = (threadId: string): string => `thread:${threadId}`;

function errorText(e: unknown): string {
  if (e && typeof e === 'object') {
    const { code, message } = e as { code?: unknown; message?: unknown };
    if (code === 'conflict') return `${typeof message === 'string' ? message : 'conflict'} (a run is already going on this thread, or you are at the run limit)`;
    if (typeof message === 'string' && message) return typeof code === 'string' && !message.includes(code) ? `${code}: ${message}` : message;
  }
  return String(e);
}

export class Chat {
  readonly el: HTMLElement;
  private client: WsgateClient | undefined;
  private readonly list: ThreadList;
  private readonly messages: HTMLOListElement;
  private readonly title: HTMLElement;
  private readonly errorEl: HTMLElement;
  private readonly composer: HTMLTextAreaElement;
  private readonly sendButton: HTMLButtonElement;
  private readonly stopButton: HTMLButtonElement;
  private readonly newButton: HTMLButtonElement;
  private readonly placeholder: HTMLElement;
  /**
   * The bubbles of the runs seen (DOM and status, on screen or not): what
   * the page shows of a run, which the SDK's events do not keep. Bounded
   * (MAX_RUNS); a thread loaded later shows older answers as messages.
   */
  private readonly runs = new Map<string, RunBubble>();
  private selected: string | null = null;
  /** The thread whose messages are on screen (its switch_thread answered). */
  private shown: string | null = null;
  /** Bumped by every select() (and when the selection goes): the answer or
   * error of an older one changes nothing on screen. */
  private switchSeq = 0;
  /** The selected thread's switch_thread is not answered yet. */
  private loading = false;
  /** A message is being sent (its reply not in yet). */
  private sending = false;
  /** Threads this connection may follow (switched to, or sent into). */
  private readonly opened = new Set<string>();
  /** switch_thread calls in flight, per thread: not unsubscribed under them. */
  private readonly switchingTo = new Map<string, number>();
  /** Unsubscribes in flight, per thread: switching back waits for its end. */
  private readonly leaving = new Map<string, Promise<void>>();
  /** Thread subscriptions watched for a gap, by thread id, with their
   * listener's off. */
  private readonly watched = new Map<string, { sub: Subscription; off: () => void }>();
  /** Runs whose end was missed (switch_thread reports no run going). */
  private readonly ended = new Set<string>();
  private userSub: Subscription | undefined;
  private offs: (() => void)[] = [];

  constructor() {
    this.list = new ThreadList({
      select: (id) => void this.select(id),
      rename: (id, title) => this.rename(id, title),
      remove: (id) => this.remove(id),
    });
    this.newButton = h('button', { id: 'new-thread', type: 'button', class: 'btn primary' }, '+ New thread');
    this.title = h('h2', { id: 'thread-title' }, 'No thread selected');
    this.placeholder = h('li', { class: 'muted empty' }, 'Pick a thread on the left, or create one, then write a message.');
    this.messages = h('ol', { id: 'messages', class: 'messages', 'aria-live': 'polite' }, this.placeholder);
    this.errorEl = h('p', { id: 'chat-error', class: 'error', role: 'alert', hidden: true });
    this.composer = h('textarea', {
      id: 'composer',
      rows: 2,
      placeholder: 'Message the agent… (Enter sends, Shift+Enter for a new line)',
      'aria-label': 'Message',
      disabled: true,
    });
    this.sendButton = h('button', { id: 'send', type: 'submit', class: 'btn primary', disabled: true }, 'Send');
    this.stopButton = h('button', { id: 'stop', type: 'button', class: 'btn danger', hidden: true }, 'Stop');
    const form = h('form', { id: 'composer-form', class: 'composer' }, this.composer, h('div', { class: 'composer-buttons' }, this.stopButton, this.sendButton));
    this.el = h(
      'section',
      { class: 'view', id: 'chat', 'data-panel': 'chat' },
      h('aside', { class: 'threads' }, h('div', { class: 'threads-head' }, h('h2', null, 'Threads'), this.newButton), this.list.el),
      h('div', { class: 'conversation' }, h('div', { class: 'conversation-head' }, this.title), this.messages, this.errorEl, form),
    );
    this.offs.push(
      listen(this.newButton, 'click', () => void this.create()),
      listen(form, 'submit', (ev) => {
        ev.preventDefault();
        void this.send();
      }),
      listen(this.composer, 'keydown', (ev) => {
        if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
          // Enter never inserts a newline; it sends unless a run is going.
          ev.preventDefault();
          void this.send();
        }
      }),
      listen(this.stopButton, 'click', () => void this.stopActiveRun()),
    );
  }

  /** Called at each `connected` (the first and every reconnect). */
  async connected(client: WsgateClient, user: string): Promise<void> {
    const first = this.client === undefined;
    this.client = client;
    if (first) {
      this.offs.push(client.on('run_event', (ev: RunEvent) => this.onRunEvent(ev)));
      this.userSub = client.subscribe(`user:${user}`);
      this.offs.push(this.userSub.on('publication', (p: Publication) => this.onUserPublication(p)));
    }
    try {
      const threads = await client.listThreads({ limit: 100 });
      if (client !== this.client) return;
      this.list.reset(threads);
      this.list.setSelected(this.selected);
      for (const run of this.runs.values()) if (run.status === 'running') this.list.setRunning(run.threadId, true);
      if (first) {
        const stored = session.thread();
        if (stored && this.list.has(stored)) await this.select(stored);
        else if (stored) session.setThread(null);
      } else if (this.selected && this.shown !== this.selected && !this.loading) {
        // Its switch_thread went down with the last connection: again.
        await this.select(this.selected);
      }
    } catch (e) {
      this.showError(`Could not load the threads: ${errorText(e)}`);
    }
  }

  private onUserPublication(p: Publication): void {
    const data = p.data as { type?: unknown; thread?: Thread; thread_id?: unknown } | null;
    if (!data || typeof data !== 'object') return;
    if ((data.type === 'thread_created' || data.type === 'thread_renamed') && data.thread && typeof data.thread.id === 'string') {
      this.list.upsert(data.thread);
      if (data.thread.id === this.selected) this.title.textContent = data.thread.title || 'Untitled';
    } else if (data.type === 'thread_deleted' && typeof data.thread_id === 'string') {
      this.forget(data.thread_id);
    }
  }

  private onRunEvent(ev: RunEvent): void {
    if (this.ended.has(ev.runId)) return;
    let run = this.runs.get(ev.runId);
    if (!run) {
      // An event of a thread just left (published before the server had
      // our unsubscribe) starts nothing: that thread is not followed now.
      const sub = this.client?.getSubscription(channelOf(ev.threadId));
      if (!sub || sub.state === 'unsubscribed' || sub.state === 'failed') return;
      this.opened.add(ev.threadId);
      run = this.track(new RunBubble(ev.runId, ev.threadId));
    }
    run.apply(ev);
    if (ev.threadId === this.selected && this.shown === ev.threadId && !run.el.isConnected) this.appendMessage(run.el);
  }

  private track(run: RunBubble): RunBubble {
    this.runs.set(run.runId, run);
    run.onChange = (r) => {
      this.list.setRunning(r.threadId, this.hasRunningRun(r.threadId));
      if (r.threadId === this.selected) {
        this.updateButtons();
        if (r.el.isConnected) this.scrollToEnd();
      } else if (r.status !== 'running') {
        // The run that kept a thread left behind followed is over.
        queueMicrotask(() => this.prune());
      }
    };
    this.list.setRunning(run.threadId, true);
    // Forget the oldest runs that are over and off screen.
    if (this.runs.size > MAX_RUNS) {
      for (const [id, r] of this.runs) {
        if (this.runs.size <= MAX_RUNS) break;
        if (r.status !== 'running' && !r.el.isConnected) this.runs.delete(id);
      }
    }
    return run;
  }

  /** Drops a run's bubble; `missed`: its end will not come (ignore stragglers). */
  private drop(run: RunBubble, missed: boolean): void {
    this.runs.delete(run.runId);
    run.el.remove();
    if (missed) {
      this.ended.add(run.runId);
      if (this.ended.size > MAX_ENDED) this.ended.delete(this.ended.values().next().value as string);
    }
    this.list.setRunning(run.threadId, this.hasRunningRun(run.threadId));
  }

  private hasRunningRun(threadId: string): boolean {
    for (const run of this.runs.values()) if (run.threadId === threadId && run.status === 'running') return true;
    return false;
  }

  private activeRun(): RunBubble | undefined {
    if (this.shown !== this.selected) return undefined;
    for (const run of this.runs.values()) if (run.threadId === this.selected && run.status === 'running') return run;
    return undefined;
  }

  private async create(): Promise<void> {
    const client = this.client;
    if (!client || this.newButton.disabled) return;
    this.newButton.disabled = true;
    try {
      const thread = await client.createThread('New thread');
      if (client !== this.client) return;
      this.list.upsert(thread);
      await this.select(thread.id);
      this.composer.focus();
    } catch (e) {
      this.showError(`Could not create a thread: ${errorText(e)}`);
    } finally {
      this.newButton.disabled = false;
    }
  }

  private async rename(id: string, title: string): Promise<void> {
    if (!this.client) return;
    try {
      const thread = await this.client.renameThread(id, title);
      this.list.upsert(thread);
      if (id === this.selected) this.title.textContent = thread.title;
    } catch (e) {
      this.showError(`Could not rename the thread: ${errorText(e)}`);
      throw e;
    }
  }

  private async remove(id: string): Promise<void> {
    if (!this.client) return;
    try {
      await this.client.deleteThread(id);
      this.forget(id);
    } catch (e) {
      this.showError(`Could not delete the thread: ${errorText(e)}`);
    }
  }

  private forget(id: string): void {
    this.list.remove(id);
    for (const [runId, run] of this.runs) if (run.threadId === id) this.runs.delete(runId);
    if (this.selected === id) {
      this.selected = null;
      this.shown = null;
      this.switchSeq++;
      this.loading = false;
      session.setThread(null);
      this.list.setSelected(null);
      this.title.textContent = 'No thread selected';
      this.messages.replaceChildren(this.placeholder);
      this.updateButtons();
    }
    // The server dropped the deleted thread's subscription; drop ours.
    this.leave(id);
  }

  async select(id: string): Promise<void> {
    const client = this.client;
    if (!client) return;
    this.selected = id;
    this.shown = null;
    session.setThread(id);
    this.list.setSelected(id);
    this.title.textContent = this.list.get(id)?.title || 'Untitled';
    this.hideError();
    const seq = ++this.switchSeq;
    this.loading = true;
    this.messages.replaceChildren(h('li', { class: 'muted empty' }, 'Loading…'));
    this.updateButtons();
    this.opened.add(id);
    // Bubbles running now that the answer does not report as the run going
    // missed their end; one that starts meanwhile is newer than the answer.
    const before = new Set<string>();
    for (const run of this.runs.values()) if (run.threadId === id && run.status === 'running') before.add(run.runId);
    this.switchingTo.set(id, (this.switchingTo.get(id) ?? 0) + 1);
    let loaded: ThreadLoaded | undefined;
    let error: unknown;
    try {
      // Left a moment ago? Its unsubscribe goes first (else the server
      // could drop the subscription this switch makes).
      await this.leaving.get(id);
      loaded = await client.switchThread(id);
    } catch (e) {
      error = e;
    } finally {
      const n = (this.switchingTo.get(id) ?? 1) - 1;
      if (n > 0) this.switchingTo.set(id, n);
      else this.switchingTo.delete(id);
    }
    if (client !== this.client) return;
    if (loaded) this.watch(id);
    if (seq === this.switchSeq) {
      this.loading = false;
      if (loaded) {
        this.shown = id;
        this.render(loaded, before);
      } else {
        this.messages.replaceChildren(this.placeholder);
        this.showError(`Could not open the thread: ${errorText(error)}`);
        this.updateButtons();
      }
    }
    // Another thread was picked meanwhile, or this one replaces the last:
    // unsubscribe what is no longer watched.
    this.prune();
  }

  /** Unsubscribes the threads left: not selected, no switch to them in
   * flight, no run of theirs going (that one is followed to its end). */
  private prune(): void {
    for (const id of Array.from(this.opened)) {
      if (id === this.selected || this.switchingTo.has(id) || this.hasRunningRun(id)) continue;
      this.leave(id);
    }
  }

  private leave(id: string): void {
    this.opened.delete(id);
    // First: the SDK may already have dropped the subscription (refused).
    this.watched.get(id)?.off();
    this.watched.delete(id);
    const client = this.client;
    const sub = client?.getSubscription(channelOf(id));
    if (!client || !sub) return;
    if (sub.state === 'unsubscribed') return;
    const done: Promise<void> = sub
      .unsubscribe()
      .catch(() => {}) // not followed any more either way
      .finally(() => {
        if (this.leaving.get(id) === done) this.leaving.delete(id);
      });
    this.leaving.set(id, done);
  }

  /** Watches a thread's subscription for a gap after a reconnect. */
  private watch(id: string): void {
    const sub = this.client?.getSubscription(channelOf(id));
    const old = this.watched.get(id);
    if (!sub || old?.sub === sub) return;
    old?.off(); // a subscription the SDK replaced
    this.watched.set(id, {
      sub,
      off: sub.on('subscribed', (info: SubscribedInfo) => {
        if (info.resubscribed && !info.recovered) void this.onGap(id, sub);
      }),
    });
  }

  /**
   * thread:<id> lost publications while disconnected (a restarted memory
   * broker, a trimmed history): its running bubbles may miss events, or an
   * end that will never come. Drop them and start over from a fresh
   * subscription: for the selected thread switch_thread then shows the
   * stored messages and replays a run still going from its first event;
   * a thread left behind is simply no longer followed.
   */
  private async onGap(id: string, sub: Subscription): Promise<void> {
    if (this.client?.getSubscription(channelOf(id)) !== sub) return;
    let dropped = 0;
    for (const run of Array.from(this.runs.values())) {
      if (run.threadId === id && run.status === 'running') {
        this.drop(run, false);
        dropped++;
      }
    }
    this.leave(id);
    if (id !== this.selected) return this.updateButtons();
    await this.select(id);
    if (dropped && this.selected === id && this.shown === id && !this.activeRun()) {
      this.showError('Events of this thread were lost while disconnected (a server restart?): the run in progress then is gone; the stored messages are shown.');
    }
  }

  /** Shows a loaded thread; `before`: the runs that were running when it was asked for. */
  private render(loaded: ThreadLoaded, before: ReadonlySet<string>): void {
    const threadId = loaded.thread.id;
    const active = loaded.active_run?.run_id;
    this.list.upsert(loaded.thread);
    this.title.textContent = loaded.thread.title || 'Untitled';
    // A bubble that was running before the switch but is not the run the
    // server reports going missed its end (lost while disconnected): the
    // stored messages say how it ended.
    for (const runId of before) {
      const run = this.runs.get(runId);
      if (run && run.status === 'running' && runId !== active) this.drop(run, true);
    }
    const byMessage = new Map<string, RunBubble>();
    for (const run of this.runs.values()) if (run.messageId) byMessage.set(run.messageId, run);
    const items: HTMLElement[] = loaded.messages.slice(-MAX_MESSAGES).map((m) => byMessage.get(m.id)?.el ?? this.renderMessage(m));
    if (loaded.messages.length > MAX_MESSAGES) {
      items.unshift(h('li', { class: 'muted empty' }, `${loaded.messages.length - MAX_MESSAGES} older messages not shown`));
    }
    this.messages.replaceChildren(...items);
    if (loaded.messages.length === 0 && !active) this.messages.append(h('li', { class: 'muted empty' }, 'No messages yet: say something.'));
    // The run in progress: its events so far follow thread_loaded (the SDK
    // skips those it delivered already); show its bubble now.
    if (active) {
      let run = this.runs.get(active);
      if (!run) run = this.track(new RunBubble(active, threadId));
      this.appendMessage(run.el);
    }
    // A run that started while the thread loaded.
    for (const run of this.runs.values()) {
      if (run.threadId === threadId && run.status === 'running' && !run.el.isConnected) this.appendMessage(run.el);
    }
    this.updateButtons();
    this.scrollToEnd();
  }

  private renderMessage(m: Message, pending = false): HTMLElement {
    return h(
      'li',
      { class: `msg ${m.role === 'assistant' ? 'assistant' : 'user'}${pending ? ' pending' : ''}`, 'data-id': m.id || false },
      h('div', { class: 'msg-role' }, m.role),
      h('div', { class: 'msg-body' }, m.content),
    );
  }

  private appendMessage(el: HTMLElement): void {
    for (const empty of Array.from(this.messages.querySelectorAll(':scope > .empty'))) empty.remove();
    this.messages.append(el);
    trimChildren(this.messages, MAX_MESSAGES, 'first');
    this.scrollToEnd();
  }

  private scrollToEnd(): void {
    this.messages.scrollTop = this.messages.scrollHeight;
  }

  private async send(): Promise<void> {
    const client = this.client;
    const content = this.composer.value.trim();
    if (!client || !content || this.sending || this.sendButton.disabled) return;
    this.sending = true;
    this.hideError();
    this.composer.value = '';
    this.updateButtons();
    let mine: HTMLElement | undefined;
    try {
      if (!this.selected) {
        const thread = await client.createThread(content.slice(0, 60));
        if (client !== this.client) return;
        this.list.upsert(thread);
        await this.select(thread.id);
        if (this.shown !== thread.id) throw new Error('the new thread did not open');
      }
      const threadId = this.selected;
      if (!threadId) throw new Error('no thread selected');
      // Shown at once, so that it stays above the answer whatever comes first.
      mine = this.renderMessage({ id: '', thread_id: threadId, role: 'user', content, created_at: Date.now() }, true);
      this.appendMessage(mine);
      this.opened.add(threadId);
      const { message } = await client.sendMessage(content, { threadId });
      mine.dataset.id = message.id;
      mine.classList.remove('pending');
    } catch (e) {
      if (client !== this.client) return;
      if (mine) {
        mine.classList.remove('pending');
        mine.classList.add('failed');
      }
      if (!this.composer.value) this.composer.value = content;
      this.showError(mine ? `Not sent: ${errorText(e)}` : errorText(e));
    } finally {
      this.sending = false;
      this.updateButtons();
    }
  }

  private async stopActiveRun(): Promise<void> {
    const run = this.activeRun();
    if (!run || !this.client || this.stopButton.disabled) return;
    this.stopButton.disabled = true;
    try {
      await this.client.stopRun(run.runId);
    } catch (e) {
      this.showError(`Could not stop the run: ${errorText(e)}`);
    } finally {
      this.stopButton.disabled = false;
    }
  }

  private updateButtons(): void {
    const ready = this.client !== undefined;
    const running = this.activeRun() !== undefined;
    this.composer.disabled = !ready;
    // One run per thread; one message in flight; not while a thread loads.
    this.sendButton.disabled = !ready || this.loading || this.sending || running;
    this.stopButton.hidden = !running;
    this.el.classList.toggle('run-active', running);
  }

  private showError(text: string): void {
    this.errorEl.textContent = text;
    this.errorEl.hidden = false;
  }

  private hideError(): void {
    this.errorEl.hidden = true;
    this.errorEl.textContent = '';
  }

  stop(): void {
    for (const off of this.offs) off();
    this.offs = [];
    for (const w of this.watched.values()) w.off();
    this.watched.clear();
    void this.userSub?.unsubscribe().catch(() => {});
    this.userSub = undefined;
    this.client = undefined;
  }
}
