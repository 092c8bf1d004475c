// token.ts — local JWT inspection. Only reads the payload's `exp` (no
// signature check: the server verifies), so the SDK can refresh before the
// server closes with 4001, and in a browser — where a refused handshake's
// HTTP 401 is invisible — refuse to even try a token that cannot work.

export interface TokenInfo {
  /** Seconds since the epoch. */
  exp: number;
  sub?: string;
}

function base64UrlDecode(s: string): string {
  let b64 = s.replace(/-/g, '+').replace(/_/g, '/');
  while (b64.length % 4) b64 += '=';
  const bin = atob(b64);
  // Decode UTF-8 so a non-ASCII `sub` does not break JSON.parse.
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new TextDecoder().decode(bytes);
}

/** The payload's exp (and sub), or undefined when the token is not a JWT
 * with a numeric exp. */
export function decodeToken(token: string): TokenInfo | undefined {
  const parts = token.split('.');
  if (parts.length !== 3 || !parts[1]) return undefined;
  try {
    const claims = JSON.parse(base64UrlDecode(parts[1]));
    if (!claims || typeof claims.exp !== 'number' || !isFinite(claims.exp)) return undefined;
    return { exp: claims.exp, sub: typeof claims.sub === 'string' ? claims.sub : undefined };
  } catch {
    return undefined;
  }
}

export function nowSecs(): number {
  return Date.now() / 1000;
}

/** RFC 6455 subprotocols are HTTP tokens (RFC 7230 tchar): a JWT
 * (base64url and dots) always is one. */
const TCHARS = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/** The token trimmed of surrounding whitespace (a trailing newline from a
 * `.text()` body), or undefined when it has a character that cannot travel
 * in the `bearer.<token>` subprotocol. */
export function cleanToken(token: string): string | undefined {
  const t = token.trim();
  return TCHARS.test(t) ? t : undefined;
}
