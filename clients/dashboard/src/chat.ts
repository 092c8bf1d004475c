// Chat: the user's threads (listThreads, then kept current from channel
// user:<sub>: thread_created / thread_renamed / thread_deleted), the
// selected thread's messages (switchThread), a composer (Enter sends,
// Shift+Enter is a new line), the agent run streamed into its bubble and a
// Stop button while it runs. After a reload the selected thread (kept in
// sessionStorage) is switched to again: the server replays the run in
// progress so far, then the live events.

import type { Message, Publication, RunEvent, Subscription, Thread, ThreadLoaded, WsgateClient } from '../../typescript/src/index.ts';
import { h, listen, trimChildren } from './dom.ts';
import { RunBubble } from './run.ts';
import { session } from './session.ts';
import { ThreadList } from './threads.ts';

const MAX_MESSAGES = 200;
/** Runs kept in memory (their bubbles, on screen or not). */
const MAX_RUNS = 30;

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
  private readonly runs = new Map<string, RunBubble>();
  private selected: string | null = null;
  private switching = 0;
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
      this.list.reset(threads);
      this.list.setSelected(this.selected);
      for (const run of this.runs.values()) if (run.status === 'running') this.list.setRunning(run.threadId, true);
      if (first) {
        const stored = session.thread();
        if (stored && this.list.has(stored)) await this.select(stored);
        else if (stored) session.setThread(null);
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
    let run = this.runs.get(ev.runId);
    if (!run) run = this.track(new RunBubble(ev.runId, ev.threadId));
    if (!run.apply(ev)) return;
    if (ev.threadId === this.selected && !this.switching && !run.el.isConnected) this.appendMessage(run.el);
  }

  private track(run: RunBubble): RunBubble {
    this.runs.set(run.runId, run);
    run.onChange = (r) => {
      this.list.setRunning(r.threadId, r.status === 'running');
      if (r.threadId === this.selected) {
        this.updateButtons();
        if (r.el.isConnected) this.scrollToEnd();
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

  private activeRun(): RunBubble | undefined {
    for (const run of this.runs.values()) if (run.threadId === this.selected && run.status === 'running') return run;
    return undefined;
  }

  private async create(): Promise<void> {
    if (!this.client) return;
    this.newButton.disabled = true;
    try {
      const thread = await this.client.createThread('New thread');
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
      session.setThread(null);
      this.list.setSelected(null);
      this.title.textContent = 'No thread selected';
      this.messages.replaceChildren(this.placeholder);
      this.updateButtons();
    }
  }

  async select(id: string): Promise<void> {
    if (!this.client) return;
    this.selected = id;
    session.setThread(id);
    this.list.setSelected(id);
    this.title.textContent = this.list.get(id)?.title || 'Untitled';
    this.hideError();
    const seq = ++this.switching;
    this.messages.replaceChildren(h('li', { class: 'muted empty' }, 'Loading…'));
    this.updateButtons();
    let loaded: ThreadLoaded;
    try {
      loaded = await this.client.switchThread(id);
    } catch (e) {
      if (seq === this.switching) {
        this.switching = 0;
        this.messages.replaceChildren(this.placeholder);
        this.showError(`Could not open the thread: ${errorText(e)}`);
        this.updateButtons();
      }
      return;
    }
    if (seq !== this.switching || this.selected !== id) return; // another thread was picked meanwhile
    this.switching = 0;
    this.render(loaded);
  }

  private render(loaded: ThreadLoaded): void {
    this.list.upsert(loaded.thread);
    this.title.textContent = loaded.thread.title || 'Untitled';
    const byMessage = new Map<string, RunBubble>();
    for (const run of this.runs.values()) if (run.messageId) byMessage.set(run.messageId, run);
    const items: HTMLElement[] = loaded.messages.slice(-MAX_MESSAGES).map((m) => byMessage.get(m.id)?.el ?? this.renderMessage(m));
    if (loaded.messages.length > MAX_MESSAGES) {
      items.unshift(h('li', { class: 'muted empty' }, `${loaded.messages.length - MAX_MESSAGES} older messages not shown`));
    }
    this.messages.replaceChildren(...items);
    if (loaded.messages.length === 0 && !loaded.active_run) this.messages.append(h('li', { class: 'muted empty' }, 'No messages yet: say something.'));
    // The run in progress: its events so far follow thread_loaded (and
    // those already seen are skipped by offset); show its bubble now.
    if (loaded.active_run) {
      let run = this.runs.get(loaded.active_run.run_id);
      if (!run) run = this.track(new RunBubble(loaded.active_run.run_id, loaded.thread.id));
      this.appendMessage(run.el);
    }
    for (const run of this.runs.values()) {
      if (run.threadId === loaded.thread.id && run.status === 'running' && !run.el.isConnected) this.appendMessage(run.el);
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
    if (!client || !content || this.sendButton.disabled) return;
    this.hideError();
    this.sendButton.disabled = true;
    try {
      if (!this.selected) {
        const thread = await client.createThread(content.slice(0, 60));
        this.list.upsert(thread);
        await this.select(thread.id);
      }
      const threadId = this.selected;
      if (!threadId) return;
      this.composer.value = '';
      // Shown at once, so that it stays above the answer whatever comes first.
      const mine = this.renderMessage({ id: '', thread_id: threadId, role: 'user', content, created_at: Date.now() }, true);
      this.appendMessage(mine);
      try {
        const { message } = await client.sendMessage(content, { threadId });
        mine.dataset.id = message.id;
        mine.classList.remove('pending');
      } catch (e) {
        mine.classList.remove('pending');
        mine.classList.add('failed');
        if (!this.composer.value) this.composer.value = content;
        this.showError(`Not sent: ${errorText(e)}`);
      }
    } catch (e) {
      this.showError(errorText(e));
    } finally {
      this.updateButtons();
    }
  }

  private async stopActiveRun(): Promise<void> {
    const run = this.activeRun();
    if (!run || !this.client) return;
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
    this.sendButton.disabled = !ready || this.switching !== 0 || running; // one run per thread
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
    void this.userSub?.unsubscribe().catch(() => {});
    this.userSub = undefined;
    this.client = undefined;
  }
}
