// What the page keeps across reloads, in this tab only (sessionStorage):
// the token (never in the URL) and the selected thread. Also the dev token
// (`/dashboard/dev.json`, served only by `wsgate serve --dev` to loopback
// clients with a loopback Host).

const TOKEN_KEY = 'wsgate.dashboard.token';
const THREAD_KEY = 'wsgate.dashboard.thread';

function storage(): Storage | undefined {
  try {
    return window.sessionStorage;
  } catch {
    return undefined; // storage disabled: the page still works, a reload asks again
  }
}

export const session = {
  token(): string | null {
    return storage()?.getItem(TOKEN_KEY) ?? null;
  },
  setToken(token: string): void {
    storage()?.setItem(TOKEN_KEY, token);
  },
  thread(): string | null {
    return storage()?.getItem(THREAD_KEY) ?? null;
  },
  setThread(id: string | null): void {
    if (id === null) storage()?.removeItem(THREAD_KEY);
    else storage()?.setItem(THREAD_KEY, id);
  },
  signOut(): void {
    storage()?.removeItem(TOKEN_KEY);
    storage()?.removeItem(THREAD_KEY);
  },
};

/** The ready token `--dev` offers, or undefined (404 outside dev mode, or from another host). */
export async function devToken(): Promise<string | undefined> {
  try {
    const res = await fetch('/dashboard/dev.json', { cache: 'no-store', credentials: 'omit' });
    if (res.status !== 200) return undefined;
    const body: unknown = await res.json();
    if (body && typeof body === 'object' && typeof (body as { token?: unknown }).token === 'string') {
      return (body as { token: string }).token;
    }
  } catch {
    // not in dev mode, or the server is down: the prompt stays empty
  }
  return undefined;
}

/** The WebSocket endpoint of the server that served this page. */
export function wsUrl(): string {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
}
