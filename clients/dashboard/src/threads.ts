// The thread list: items with inline rename (an input in place of the
// title: Enter saves, Escape cancels) and a two-click delete (the button
// asks "Delete?" for a few seconds), no window.prompt/confirm.

import type { Thread } from '../../typescript/src/index.ts';
import { h, listen } from './dom.ts';
import { shortDate } from './format.ts';

export interface ThreadListActions {
  select(id: string): void;
  rename(id: string, title: string): Promise<void>;
  remove(id: string): Promise<void>;
}

const MAX_THREADS = 200;
const CONFIRM_MS = 4000;

export class ThreadList {
  readonly el: HTMLElement;
  private readonly threads = new Map<string, Thread>();
  private readonly items = new Map<string, HTMLElement>();
  private readonly empty: HTMLElement;
  private selected: string | null = null;
  private readonly actions: ThreadListActions;

  constructor(actions: ThreadListActions) {
    this.actions = actions;
    this.el = h('ul', { id: 'thread-list', class: 'thread-list', role: 'listbox', 'aria-label': 'Threads' });
    this.empty = h('li', { class: 'muted empty' }, 'No threads yet.');
    this.el.append(this.empty);
  }

  has(id: string): boolean {
    return this.threads.has(id);
  }

  get(id: string): Thread | undefined {
    return this.threads.get(id);
  }

  /** Replaces the whole list (listThreads). */
  reset(threads: Thread[]): void {
    for (const item of this.items.values()) item.remove();
    this.items.clear();
    this.threads.clear();
    for (const t of threads.slice(0, MAX_THREADS)) this.upsert(t, 'end');
    this.update();
  }

  /** Adds a thread (at the top, or the end while loading) or updates one in place. */
  upsert(thread: Thread, where: 'top' | 'end' = 'top'): void {
    this.threads.set(thread.id, thread);
    const existing = this.items.get(thread.id);
    if (existing) {
      const title = existing.querySelector('.thread-title');
      if (title) title.textContent = thread.title || 'Untitled';
      const date = existing.querySelector('.thread-date');
      if (date) date.textContent = shortDate(thread.updated_at);
      return;
    }
    const item = this.render(thread);
    this.items.set(thread.id, item);
    if (where === 'top') this.el.prepend(item);
    else this.el.append(item);
    while (this.items.size > MAX_THREADS) {
      const last = this.el.lastElementChild as HTMLElement | null;
      const id = last?.dataset.threadId;
      if (!last || !id || id === this.selected) break;
      this.remove(id);
    }
    this.update();
  }

  remove(id: string): void {
    this.items.get(id)?.remove();
    this.items.delete(id);
    this.threads.delete(id);
    this.update();
  }

  setSelected(id: string | null): void {
    this.selected = id;
    for (const [tid, item] of this.items) item.setAttribute('aria-selected', String(tid === id));
  }

  setRunning(id: string, running: boolean): void {
    this.items.get(id)?.classList.toggle('running', running);
  }

  private update(): void {
    this.empty.hidden = this.items.size > 0;
  }

  private render(thread: Thread): HTMLElement {
    const title = h('span', { class: 'thread-title' }, thread.title || 'Untitled');
    const open = h(
      'button',
      { type: 'button', class: 'thread-open', title: thread.title },
      h('span', { class: 'thread-dot', 'aria-hidden': 'true' }),
      title,
      h('span', { class: 'thread-date muted' }, shortDate(thread.updated_at)),
    );
    const renameButton = h('button', { type: 'button', class: 'icon thread-rename', title: 'Rename', 'aria-label': 'Rename thread' }, '✎');
    const deleteButton = h('button', { type: 'button', class: 'icon thread-delete', title: 'Delete', 'aria-label': 'Delete thread' }, '✕');
    const item = h(
      'li',
      { class: 'thread-item', role: 'option', 'data-thread-id': thread.id, 'aria-selected': String(thread.id === this.selected) },
      open,
      h('span', { class: 'thread-actions' }, renameButton, deleteButton),
    );
    listen(open, 'click', () => this.actions.select(thread.id));
    listen(renameButton, 'click', () => this.startRename(thread.id, item, open));
    let confirmTimer: number | undefined;
    listen(deleteButton, 'click', () => {
      if (deleteButton.dataset.confirm !== 'true') {
        deleteButton.dataset.confirm = 'true';
        deleteButton.textContent = 'Delete?';
        deleteButton.classList.add('confirm');
        confirmTimer = window.setTimeout(() => {
          delete deleteButton.dataset.confirm;
          deleteButton.textContent = '✕';
          deleteButton.classList.remove('confirm');
        }, CONFIRM_MS);
        return;
      }
      window.clearTimeout(confirmTimer);
      deleteButton.disabled = true;
      void this.actions.remove(thread.id).finally(() => {
        deleteButton.disabled = false;
      });
    });
    return item;
  }

  private startRename(id: string, item: HTMLElement, open: HTMLElement): void {
    if (item.querySelector('.thread-rename-input')) return;
    const current = this.threads.get(id)?.title ?? '';
    const input = h('input', {
      class: 'thread-rename-input',
      type: 'text',
      maxlength: 200,
      value: current,
      'aria-label': 'New title',
    });
    open.hidden = true;
    item.prepend(input);
    input.focus();
    input.select();
    let done = false;
    const finish = async (save: boolean): Promise<void> => {
      if (done) return;
      done = true;
      const title = input.value.trim();
      if (save && title && title !== current) {
        input.disabled = true;
        try {
          await this.actions.rename(id, title);
        } catch {
          // the chat view shows the error
        }
      }
      input.remove();
      open.hidden = false;
    };
    listen(input, 'keydown', (ev) => {
      if (ev.key === 'Enter') {
        ev.preventDefault();
        void finish(true);
      } else if (ev.key === 'Escape') {
        ev.preventDefault();
        void finish(false);
      }
    });
    listen(input, 'blur', () => void finish(true));
  }
}
