// errors.ts — the one error type the SDK rejects and emits with.
//
// Server refusals keep the server's code (forbidden, not_found, conflict,
// rate_limited, ...) so callers can switch on it; the SDK adds its own codes
// for failures that never reached the server (see SdkErrorCode).

/** Codes the SDK itself produces (the server's codes pass through as they are). */
export type SdkErrorCode =
  | 'timeout'
  | 'queue_full'
  | 'closed'
  | 'disconnected'
  | 'unauthorized'
  | 'token_expired'
  | 'history_lost'
  | 'too_large';

export class WsgateError extends Error {
  /** A server error code or one of SdkErrorCode. */
  code: string;
  /** With rate_limited: how long the server asks us to wait. */
  retryAfterMs?: number;

  constructor(code: string, message?: string, retryAfterMs?: number) {
    super(message || code);
    this.name = 'WsgateError';
    this.code = code;
    if (retryAfterMs !== undefined) this.retryAfterMs = retryAfterMs;
  }
}
