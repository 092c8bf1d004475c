// pacer.ts — a client-side mirror of the server's per-connection message
// limiter, so the SDK never sends a frame the server would drop.
//
// The server counts every client frame (pings included) against a GCRA
// (token bucket) of `messages_per_minute`, burst `message_burst`, starting
// full when the connection opens; dropped frames are refused
// `rate_limited`, and 10 in a row close the connection with 1008. This
// bucket has the same burst and starts full at `connected` (the server's
// started a little earlier, so it holds at least as much), but refills at
// 90% of the server's rate so clock skew or a frame delayed on the way can
// never make the server see more than it allows.

/** Share of the server's rate the client allows itself. */
const RATE_SHARE = 0.9;

export class TokenBucket {
  private tokens: number;
  private last: number;
  private readonly perMs: number;

  constructor(
    perMinute: number,
    private readonly burst: number,
    now = Date.now(),
  ) {
    this.perMs = (perMinute * RATE_SHARE) / 60_000;
    this.tokens = burst;
    this.last = now;
  }

  /** Takes one token: 0 when taken, else how many ms until one is there. */
  take(now = Date.now()): number {
    if (now > this.last) {
      this.tokens = Math.min(this.burst, this.tokens + (now - this.last) * this.perMs);
      this.last = now;
    }
    if (now >= this.last && this.tokens >= 1) {
      this.tokens -= 1;
      return 0;
    }
    return Math.max(1, Math.ceil(this.last - now + (1 - this.tokens) / this.perMs));
  }

  /** The server refused a frame (`rate_limited`, `retry_after_ms`): nothing
   * more until then. */
  pause(ms: number, now = Date.now()): void {
    this.tokens = Math.min(this.tokens, 0);
    this.last = Math.max(this.last, now + Math.max(0, ms));
  }
}
