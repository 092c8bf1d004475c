// backoff.ts — reconnect delays: exponential backoff with full jitter
// (AWS architecture blog, "Exponential Backoff And Jitter"): spreading the
// whole interval at random keeps a fleet of clients that lost the same
// server from reconnecting in lockstep.

/** delay = random(0, min(max, min * 2^attempt)) */
export function backoffDelay(attempt: number, minMs: number, maxMs: number, random: () => number = Math.random): number {
  // Cap the exponent so 2^attempt never overflows into Infinity/NaN.
  const ceiling = Math.min(maxMs, minMs * Math.pow(2, Math.min(attempt, 30)));
  return Math.floor(random() * ceiling);
}
