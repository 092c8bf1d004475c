// One agent run as an assistant bubble: thinking and tool steps as small
// collapsible steps, partial_result deltas appended as they come,
// final_report replacing the text, the status at the end. The bubble is
// the run's state too, whether or not it is on screen. Each event comes
// once: the SDK drops a publication its subscription has delivered already
// (replayed after switch_thread, recovered after a reconnect); the chat view
// starts a new bubble when a thread's events had a gap.

import type { RunEvent } from '../../typescript/src/index.ts';
import { h, trimChildren } from './dom.ts';
import { compactJson } from './format.ts';

export type RunStatus = 'running' | 'completed' | 'stopped' | 'failed';

const MAX_STEPS = 40;

/** One line for a step's summary. */
const preview = (text: string): string => {
  const line = text.replace(/\s+/g, ' ').trim();
  return line.length > 90 ? `${line.slice(0, 89)}…` : line;
};

export class RunBubble {
  readonly el: HTMLElement;
  readonly runId: string;
  readonly threadId: string;
  status: RunStatus = 'running';
  messageId: string | undefined;
  private readonly body: HTMLElement;
  private readonly text: Text;
  private readonly steps: HTMLElement;
  private readonly statusEl: HTMLElement;
  private lastStep:
    | { kind: 'thinking' | 'tool'; tool?: string; el: HTMLElement; pre: HTMLElement; preview: HTMLElement }
    | undefined;
  /** Called after each applied event (the chat view updates its buttons). */
  onChange: (bubble: RunBubble) => void = () => {};

  constructor(runId: string, threadId: string) {
    this.runId = runId;
    this.threadId = threadId;
    this.text = document.createTextNode('');
    this.body = h('div', { class: 'msg-body' }, this.text);
    this.steps = h('div', { class: 'steps' });
    this.statusEl = h('div', { class: 'run-status', 'data-status': 'running' }, 'running…');
    this.el = h(
      'li',
      { class: 'msg assistant streaming', 'data-run-id': runId, 'data-status': 'running' },
      h('div', { class: 'msg-role' }, 'assistant'),
      this.steps,
      this.body,
      this.statusEl,
    );
  }

  /** Applies one event (each comes once: see the top of the file). */
  apply(ev: RunEvent): void {
    const p = ev.payload ?? {};
    switch (ev.type) {
      case 'agent_started':
        this.setStatus('running');
        break;
      case 'agent_thinking': {
        const text = typeof p.text === 'string' ? p.text : compactJson(p.text);
        if (this.lastStep?.kind === 'thinking') {
          this.lastStep.pre.textContent += text;
          this.lastStep.preview.textContent = preview(this.lastStep.pre.textContent ?? '');
        } else {
          this.addStep('thinking', 'thinking', text, preview(text));
        }
        break;
      }
      case 'tool_executing': {
        const tool = typeof p.tool === 'string' ? p.tool : 'tool';
        this.addStep('tool', `tool ${tool}`, `input ${compactJson(p.input, 2000)}`, preview(compactJson(p.input)), tool);
        break;
      }
      case 'tool_result': {
        const tool = typeof p.tool === 'string' ? p.tool : 'tool';
        const line = `output ${compactJson(p.output, 2000)}`;
        if (this.lastStep?.kind === 'tool' && this.lastStep.tool === tool && !this.lastStep.el.classList.contains('done')) {
          this.lastStep.pre.textContent += `\n${line}`;
          this.lastStep.preview.textContent = `→ ${preview(compactJson(p.output))}`;
          this.lastStep.el.classList.add('done');
        } else {
          this.addStep('tool', `tool ${tool}`, line, `→ ${preview(compactJson(p.output))}`, tool).classList.add('done');
        }
        break;
      }
      case 'partial_result':
        if (typeof p.delta === 'string') this.text.appendData(p.delta);
        break;
      case 'final_report':
        if (typeof p.content === 'string') this.text.data = p.content;
        if (typeof p.message_id === 'string') {
          this.messageId = p.message_id;
          this.el.dataset.id = p.message_id;
        }
        break;
      case 'agent_completed': {
        const status = p.status === 'completed' || p.status === 'stopped' || p.status === 'failed' ? p.status : 'failed';
        const error = typeof p.error === 'string' ? p.error : p.error !== undefined ? compactJson(p.error) : undefined;
        this.setStatus(status, error);
        break;
      }
      default:
        break;
    }
    this.onChange(this);
  }

  /** Shows the run's status (running…, completed, stopped, failed: why). */
  setStatus(status: RunStatus, error?: string): void {
    this.status = status;
    this.el.dataset.status = status;
    this.el.classList.toggle('streaming', status === 'running');
    this.statusEl.dataset.status = status;
    this.statusEl.textContent =
      status === 'running' ? 'running…' : status === 'failed' ? `failed${error ? `: ${error}` : ''}` : status;
    this.statusEl.title = error ?? '';
  }

  private addStep(kind: 'thinking' | 'tool', label: string, text: string, summary: string, tool?: string): HTMLElement {
    const pre = h('pre', null, text);
    const previewEl = h('span', { class: 'step-preview' }, summary);
    const el = h('details', { class: `step ${kind}` }, h('summary', null, h('span', { class: 'step-label' }, label), previewEl), pre);
    this.steps.append(el);
    trimChildren(this.steps, MAX_STEPS, 'first');
    this.lastStep = { kind, tool, el, pre, preview: previewEl };
    return el;
  }
}
