// Small DOM helpers: element creation without innerHTML (so no markup is
// ever built from data), lookups that fail loudly, and list trimming.

export type Child = Node | string | number | null | undefined | false;
export type Attrs = Record<string, string | number | boolean | null | undefined>;

/** Creates an element. Attributes set to false/null/undefined are left out; `class` sets className. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs?: Attrs | null,
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [name, value] of Object.entries(attrs)) {
      if (value === false || value === null || value === undefined) continue;
      if (name === 'class') el.className = String(value);
      else el.setAttribute(name, value === true ? '' : String(value));
    }
  }
  append(el, ...children);
  return el;
}

export function append(parent: Node, ...children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    parent.appendChild(typeof child === 'object' ? child : document.createTextNode(String(child)));
  }
}

/** The element matching `selector` under `root`; throws when missing (a broken page should say so). */
export function $<T extends Element = HTMLElement>(selector: string, root: ParentNode = document): T {
  const el = root.querySelector<T>(selector);
  if (!el) throw new Error(`dashboard: missing element ${selector}`);
  return el;
}

export function clear(el: Element): void {
  el.replaceChildren();
}

/** Removes children beyond `max`, from the end (`'last'`) or the start (`'first'`). Returns how many went. */
export function trimChildren(list: Element, max: number, from: 'first' | 'last'): number {
  let removed = 0;
  while (list.childElementCount > max) {
    const victim = from === 'last' ? list.lastElementChild : list.firstElementChild;
    if (!victim) break;
    victim.remove();
    removed++;
  }
  return removed;
}

type EventMap = HTMLElementEventMap & WindowEventMap;

/** Adds a listener and returns the function that removes it. */
export function listen<K extends keyof EventMap>(target: EventTarget, type: K, fn: (ev: EventMap[K]) => void): () => void {
  const handler = fn as EventListener;
  target.addEventListener(type, handler);
  return () => target.removeEventListener(type, handler);
}
