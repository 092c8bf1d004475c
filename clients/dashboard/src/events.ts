// Events: a live feed of channel `events` (publications from backends,
// e.g. {"type":"event","event_type":"SITE_CREATED","timestamp","data":{…}}),
// newest first, with a text filter, a pause button and a bounded DOM.

import type { Publication, Subscription, WsgateClient } from '../../typescript/src/index.ts';
import { h, listen, trimChildren } from './dom.ts';
import { clock, compact, compactJson, toMillis } from './format.ts';

const MAX_ROWS = 500;

interface EventData {
  type?: unknown;
  event_type?: unknown;
  timestamp?: unknown;
  data?: unknown;
}

export class EventsFeed {
  readonly el: HTMLElement;
  private readonly list: HTMLElement;
  private readonly filterInput: HTMLInputElement;
  private readonly pauseButton: HTMLButtonElement;
  private readonly countEl: HTMLElement;
  private readonly empty: HTMLElement;
  private filter = '';
  private paused = false;
  private held: Publication[] = [];
  private seen = 0;
  private sub: Subscription | undefined;
  private offs: (() => void)[] = [];

  constructor() {
    this.filterInput = h('input', {
      id: 'events-filter',
      type: 'search',
      placeholder: 'Filter (type, fields, values)…',
      autocomplete: 'off',
      spellcheck: 'false',
      'aria-label': 'Filter events',
    });
    this.pauseButton = h('button', { id: 'events-pause', type: 'button', class: 'btn', 'aria-pressed': 'false' }, 'Pause');
    const clearButton = h('button', { id: 'events-clear', type: 'button', class: 'btn' }, 'Clear');
    this.countEl = h('span', { id: 'events-count', class: 'muted', 'data-count': '0' }, '0 events');
    this.list = h('ol', { id: 'events-list', class: 'events-list', 'aria-live': 'off' });
    this.empty = h('p', { class: 'muted empty' }, 'No events yet. Backends publish to channel “events” with POST /api/publish.');
    this.el = h(
      'section',
      { class: 'view', id: 'events', 'data-panel': 'events' },
      h('div', { class: 'toolbar' }, this.filterInput, this.pauseButton, clearButton, h('span', { class: 'spacer' }), this.countEl),
      h(
        'div',
        { class: 'events-head' },
        h('span', null, 'time'),
        h('span', null, 'type'),
        h('span', null, 'offset'),
        h('span', null, 'data'),
      ),
      this.empty,
      this.list,
    );
    this.offs.push(
      listen(this.filterInput, 'input', () => {
        this.filter = this.filterInput.value.trim().toLowerCase();
        for (const row of Array.from(this.list.children)) this.applyFilter(row as HTMLElement);
      }),
      listen(this.pauseButton, 'click', () => this.setPaused(!this.paused)),
      listen(clearButton, 'click', () => {
        this.list.replaceChildren();
        this.held = [];
        this.empty.hidden = false;
      }),
    );
  }

  start(client: WsgateClient): void {
    this.sub = client.subscribe('events');
    this.offs.push(this.sub.on('publication', (p: Publication) => this.onPublication(p)));
  }

  private onPublication(p: Publication): void {
    this.seen++;
    this.updateCount();
    if (this.paused) {
      this.held.push(p);
      if (this.held.length > MAX_ROWS) this.held.shift();
      return;
    }
    this.addRow(p);
  }

  private addRow(p: Publication): void {
    const data = (p.data && typeof p.data === 'object' ? p.data : { data: p.data }) as EventData;
    const kind = typeof data.event_type === 'string' ? data.event_type : typeof data.type === 'string' ? data.type : '—';
    const at = toMillis(data.timestamp) ?? Date.now();
    const body = data.event_type !== undefined && data.data !== undefined ? data.data : p.data;
    const json = compactJson(body, 400);
    const row = h(
      'li',
      { class: 'event-row', 'data-event-type': kind, 'data-offset': p.offset },
      h('time', { class: 'event-time', datetime: new Date(at).toISOString() }, clock(at)),
      h('span', { class: 'event-type' }, kind),
      h('span', { class: 'event-offset muted' }, `#${p.offset}`),
      h('code', { class: 'event-json', title: compactJson(p.data, 4000) }, json),
    );
    listen(row, 'click', () => {
      if (window.getSelection()?.toString()) return; // selecting text, not toggling
      const open = row.classList.toggle('open');
      const code = row.querySelector('.event-json');
      if (code) code.textContent = open ? JSON.stringify(p.data, null, 2) : json;
    });
    row.dataset.search = `${kind} ${compactJson(p.data, 4000)}`.toLowerCase();
    this.applyFilter(row);
    this.list.prepend(row);
    trimChildren(this.list, MAX_ROWS, 'last');
    this.empty.hidden = true;
  }

  private applyFilter(row: HTMLElement): void {
    row.hidden = this.filter !== '' && !(row.dataset.search ?? '').includes(this.filter);
  }

  private setPaused(paused: boolean): void {
    this.paused = paused;
    this.pauseButton.textContent = paused ? 'Resume' : 'Pause';
    this.pauseButton.setAttribute('aria-pressed', String(paused));
    this.el.classList.toggle('paused', paused);
    if (!paused) {
      const held = this.held;
      this.held = [];
      for (const p of held) this.addRow(p);
    }
    this.updateCount();
  }

  private updateCount(): void {
    const held = this.held.length ? ` · ${compact(this.held.length)} held while paused` : '';
    this.countEl.textContent = `${compact(this.seen)} event${this.seen === 1 ? '' : 's'} seen${held}`;
    this.countEl.dataset.count = String(this.seen);
  }

  stop(): void {
    for (const off of this.offs) off();
    this.offs = [];
    void this.sub?.unsubscribe().catch(() => {});
    this.sub = undefined;
  }
}
