// tokencheck.ts — where the HTTP token check (checkTokenOverHttp) asks.
//
// A browser cannot see a refused handshake's 401, so after a handshake
// that failed for no visible reason the client asks the same server over
// HTTP(S) whether the token is refused: `GET …/api/threads?limit=1` next to
// the `/ws` endpoint. The token goes in an Authorization header, so the
// URL must never lose TLS (wss: or https: → https:) nor go to another
// application behind the same reverse proxy (the path prefix before /ws is
// kept; a path that does not end in /ws gets no check at all).

const SCHEMES: Record<string, string> = { 'wss:': 'https:', 'https:': 'https:', 'ws:': 'http:', 'http:': 'http:' };

/**
 * The check's URL for the WebSocket URL `wsUrl` (resolved against `base`,
 * e.g. the page's location, when relative), or undefined when there is to
 * be no check: an unknown scheme, a path that does not end in `/ws`, or a
 * URL that cannot be resolved.
 *
 * `wss://h/gw/ws` → `https://h/gw/api/threads?limit=1`;
 * `ws://h:8080/ws` → `http://h:8080/api/threads?limit=1`.
 */
export function tokenCheckUrl(wsUrl: string, base?: string): string | undefined {
  let url: URL;
  try {
    url = base === undefined ? new URL(wsUrl) : new URL(wsUrl, base);
  } catch {
    return undefined;
  }
  const scheme = SCHEMES[url.protocol];
  if (!scheme || !/\/ws\/?$/.test(url.pathname)) return undefined;
  // Rebuilt from its parts: no user:password (fetch refuses them), no
  // query or fragment of the WebSocket URL.
  return `${scheme}//${url.host}${url.pathname.replace(/\/ws\/?$/, '/api/threads')}?limit=1`;
}

/** An explicit check URL (the `tokenCheckUrl` option) resolved against
 * `base`; undefined unless it is http: or https:. */
export function httpUrl(u: string, base?: string): string | undefined {
  try {
    const url = base === undefined ? new URL(u) : new URL(u, base);
    return url.protocol === 'https:' || url.protocol === 'http:' ? url.href : undefined;
  } catch {
    return undefined;
  }
}
