// Time-series charts on uPlot: a bounded window of points, sized to their
// container (a ResizeObserver follows window resizes and a tab becoming
// visible). The container's `data-points` attribute holds the number of
// points shown, for the browser test and for anyone inspecting the page.

import uPlot from 'uplot';
import { h } from './dom.ts';

export interface SeriesSpec {
  label: string;
  color: string;
  /** Formats a value for the legend and the axis. */
  format: (v: number) => string;
}

export interface ChartOptions {
  title: string;
  testid: string;
  series: SeriesSpec[];
  /** Points kept (older ones leave the window). */
  maxPoints: number;
  height?: number;
}

const hms = (t: number): string => {
  const d = new Date(t * 1000);
  return [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, '0')).join(':');
};

const AXIS = '#8b93a7';
const GRID = 'rgba(139, 147, 167, 0.12)';

export class TimeChart {
  readonly el: HTMLElement;
  private readonly body: HTMLElement;
  private readonly xs: number[] = [];
  private readonly ys: (number | null)[][];
  private readonly opts: ChartOptions;
  private readonly plot: uPlot;
  private readonly observer: ResizeObserver;
  private width = 0;

  constructor(opts: ChartOptions) {
    this.opts = opts;
    this.ys = opts.series.map(() => []);
    this.body = h('div', { class: 'chart-body' });
    this.el = h(
      'figure',
      { class: 'chart', 'data-testid': opts.testid, 'data-points': '0' },
      h('figcaption', null, opts.title),
      this.body,
    );
    const height = opts.height ?? 180;
    const fmt = opts.series[0]?.format ?? String;
    this.plot = new uPlot(
      {
        width: 300,
        height,
        cursor: { drag: { x: false, y: false }, points: { size: 6 } },
        legend: { live: true },
        scales: { x: { time: true }, y: { range: (_u, min, max) => [Math.min(0, min), Math.max(1, max * 1.1)] } },
        axes: [
          {
            stroke: AXIS,
            grid: { stroke: GRID, width: 1 },
            ticks: { stroke: GRID, width: 1 },
            font: '11px system-ui, sans-serif',
            space: 70,
            incrs: [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600],
            values: (_u, splits) => splits.map((t) => hms(t)),
          },
          {
            stroke: AXIS,
            grid: { stroke: GRID, width: 1 },
            ticks: { stroke: GRID, width: 1 },
            font: '11px system-ui, sans-serif',
            size: 64,
            values: (_u, splits) => splits.map((v) => fmt(v)),
          },
        ],
        series: [
          { label: 'time', value: (_u, v) => (v === null || v === undefined ? '–' : hms(v)) },
          ...opts.series.map((s) => ({
            label: s.label,
            stroke: s.color,
            width: 1.5,
            fill: `${s.color}1f`,
            points: { show: false },
            spanGaps: false,
            value: (_u: uPlot, v: number | null) => (v === null || v === undefined ? '–' : s.format(v)),
          })),
        ],
      },
      [[], ...opts.series.map(() => [])],
      this.body,
    );
    this.observer = new ResizeObserver(() => this.resize());
    this.observer.observe(this.body);
  }

  /** Adds a point at `t` (Unix seconds); `values` in the order of the series, null for a gap. */
  push(t: number, values: (number | null)[]): void {
    this.xs.push(t);
    this.ys.forEach((ys, i) => ys.push(values[i] ?? null));
    while (this.xs.length > this.opts.maxPoints) {
      this.xs.shift();
      for (const ys of this.ys) ys.shift();
    }
    this.plot.setData([this.xs, ...this.ys] as uPlot.AlignedData);
    // Not hovering: the legend shows the latest values.
    if ((this.plot.cursor.left ?? -1) < 0) this.plot.setLegend({ idx: this.xs.length - 1 });
    this.el.dataset.points = String(this.xs.length);
  }

  get points(): number {
    return this.xs.length;
  }

  resize(): void {
    const width = Math.floor(this.body.clientWidth);
    if (width <= 0 || width === this.width) return; // hidden, or unchanged
    this.width = width;
    this.plot.setSize({ width, height: this.opts.height ?? 180 });
  }

  destroy(): void {
    this.observer.disconnect();
    this.plot.destroy();
  }
}
