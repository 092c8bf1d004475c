// Overview: the server's own figures from channel `metrics`
// ({"type":"metrics","timestamp","node","metrics":{…}} every
// metrics_interval_secs), as number tiles and three charts. With several
// nodes each one publishes its own figures: tiles and charts show the sum
// over the nodes heard from lately (the latency: the worst node).

import type { Subscription, WsgateClient, Publication } from '../../typescript/src/index.ts';
import { TimeChart } from './charts.ts';
import { h } from './dom.ts';
import { clock, compact, millis, toMillis } from './format.ts';

export interface NodeMetrics {
  connections: number;
  users: number;
  messages_in_per_sec: number;
  messages_out_per_sec: number;
  deliveries_per_sec: number;
  publications_per_sec: number;
  publish_latency_ms: { p50: number; p99: number; p999: number; samples: number };
}

interface MetricsPublication {
  type: 'metrics';
  timestamp: number;
  node: string;
  metrics: NodeMetrics;
}

const MAX_POINTS = 360;
/** A node not heard from for this long no longer counts in the sums. */
const STALE_MS = 60_000;

const num = (v: unknown): number => (typeof v === 'number' && Number.isFinite(v) ? v : 0);

function isMetrics(data: unknown): data is MetricsPublication {
  if (!data || typeof data !== 'object') return false;
  const d = data as Partial<MetricsPublication>;
  return d.type === 'metrics' && typeof d.metrics === 'object' && d.metrics !== null;
}

export class Overview {
  readonly el: HTMLElement;
  private readonly tiles = new Map<string, HTMLElement>();
  private readonly charts: TimeChart[];
  private readonly connections: TimeChart;
  private readonly rates: TimeChart;
  private readonly latency: TimeChart;
  private readonly note: HTMLElement;
  private readonly nodes = new Map<string, { at: number; metrics: NodeMetrics }>();
  private sub: Subscription | undefined;
  private offs: (() => void)[] = [];
  /** Called with the node name of each publication (for the header). */
  onNode: (node: string) => void = () => {};

  constructor() {
    const count = (v: number): string => compact(v);
    const rate = (v: number): string => `${compact(v)}/s`;
    const ms = (v: number): string => millis(v);
    this.connections = new TimeChart({
      title: 'Connections',
      testid: 'chart-connections',
      maxPoints: MAX_POINTS,
      series: [
        { label: 'connections', color: '#5aa9ff', format: count },
        { label: 'users', color: '#b48cff', format: count },
      ],
    });
    this.rates = new TimeChart({
      title: 'Messages per second',
      testid: 'chart-messages',
      maxPoints: MAX_POINTS,
      // Deliveries (publications written to subscribers) are what a
      // gateway mostly sends; in/out are the clients' commands and replies.
      series: [
        { label: 'delivered', color: '#5aa9ff', format: rate },
        { label: 'published', color: '#b48cff', format: rate },
        { label: 'in', color: '#4fd1a5', format: rate },
        { label: 'out', color: '#f5b94f', format: rate },
      ],
    });
    this.latency = new TimeChart({
      title: 'Publish → write latency',
      testid: 'chart-latency',
      maxPoints: MAX_POINTS,
      series: [
        { label: 'p50', color: '#5aa9ff', format: ms },
        { label: 'p99', color: '#ff6b6b', format: ms },
      ],
    });
    this.charts = [this.connections, this.rates, this.latency];

    const tile = (key: string, label: string): HTMLElement => {
      const value = h('div', { class: 'tile-value', id: `tile-${key}` }, '–');
      this.tiles.set(key, value);
      return h('div', { class: 'tile', 'data-tile': key }, h('div', { class: 'tile-label' }, label), value);
    };
    this.note = h('p', { class: 'muted', id: 'metrics-note' }, 'Waiting for the first figures on channel “metrics”…');
    this.el = h(
      'section',
      { class: 'view', id: 'overview', 'data-panel': 'overview', 'data-points': '0' },
      h(
        'div',
        { class: 'tiles' },
        tile('connections', 'Connections'),
        tile('users', 'Users'),
        tile('in', 'Msgs in/s'),
        tile('out', 'Msgs out/s'),
        tile('deliveries', 'Deliveries/s'),
        tile('publications', 'Publications/s'),
        tile('p50', 'Latency p50'),
        tile('p99', 'Latency p99'),
        tile('p999', 'Latency p99.9'),
        tile('nodes', 'Nodes'),
      ),
      this.note,
      h('div', { class: 'charts' }, ...this.charts.map((c) => c.el)),
    );
  }

  start(client: WsgateClient): void {
    this.sub = client.subscribe('metrics');
    this.offs.push(this.sub.on('publication', (p: Publication) => this.onPublication(p)));
  }

  private onPublication(p: Publication): void {
    if (!isMetrics(p.data)) return;
    const data = p.data;
    const at = toMillis(data.timestamp) ?? Date.now();
    const node = typeof data.node === 'string' ? data.node : '?';
    const m = data.metrics;
    this.nodes.set(node, {
      at,
      metrics: {
        connections: num(m.connections),
        users: num(m.users),
        messages_in_per_sec: num(m.messages_in_per_sec),
        messages_out_per_sec: num(m.messages_out_per_sec),
        deliveries_per_sec: num(m.deliveries_per_sec),
        publications_per_sec: num(m.publications_per_sec),
        publish_latency_ms: {
          p50: num(m.publish_latency_ms?.p50),
          p99: num(m.publish_latency_ms?.p99),
          p999: num(m.publish_latency_ms?.p999),
          samples: num(m.publish_latency_ms?.samples),
        },
      },
    });
    this.onNode(node);

    const live = [...this.nodes.entries()].filter(([, n]) => at - n.at < STALE_MS);
    for (const [name, n] of this.nodes) if (at - n.at >= STALE_MS) this.nodes.delete(name);
    const sum = (f: (m: NodeMetrics) => number): number => live.reduce((acc, [, n]) => acc + f(n.metrics), 0);
    const max = (f: (m: NodeMetrics) => number): number => live.reduce((acc, [, n]) => Math.max(acc, f(n.metrics)), 0);
    const samples = sum((m) => m.publish_latency_ms.samples);
    const agg = {
      connections: sum((m) => m.connections),
      users: sum((m) => m.users),
      in: sum((m) => m.messages_in_per_sec),
      out: sum((m) => m.messages_out_per_sec),
      deliveries: sum((m) => m.deliveries_per_sec),
      publications: sum((m) => m.publications_per_sec),
      p50: max((m) => m.publish_latency_ms.p50),
      p99: max((m) => m.publish_latency_ms.p99),
      p999: max((m) => m.publish_latency_ms.p999),
    };

    this.set('connections', compact(agg.connections));
    this.set('users', compact(agg.users));
    this.set('in', compact(agg.in));
    this.set('out', compact(agg.out));
    this.set('deliveries', compact(agg.deliveries));
    this.set('publications', compact(agg.publications));
    this.set('p50', samples ? millis(agg.p50) : '–');
    this.set('p99', samples ? millis(agg.p99) : '–');
    this.set('p999', samples ? millis(agg.p999) : '–');
    this.set('nodes', String(live.length), live.map(([name]) => name).join(', '));
    this.note.textContent = `Last figures ${clock(at)} from ${node} · ${compact(samples)} latency samples in the last interval`;

    const t = at / 1000;
    this.connections.push(t, [agg.connections, agg.users]);
    this.rates.push(t, [agg.deliveries, agg.publications, agg.in, agg.out]);
    // No samples in an interval: a gap, not a misleading zero.
    this.latency.push(t, samples ? [agg.p50, agg.p99] : [null, null]);
    this.el.dataset.points = String(this.connections.points);
  }

  private set(key: string, text: string, title?: string): void {
    const el = this.tiles.get(key);
    if (!el) return;
    el.textContent = text;
    if (title !== undefined) el.title = title;
  }

  stop(): void {
    for (const off of this.offs) off();
    this.offs = [];
    void this.sub?.unsubscribe().catch(() => {});
    this.sub = undefined;
    for (const c of this.charts) c.destroy();
  }
}
