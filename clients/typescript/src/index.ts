// index.ts — the package's public surface (the names in the agreed API).

export { WsgateClient } from './client.js';
export { Subscription, type SubscriptionState } from './subscription.js';
export { WsgateError, type SdkErrorCode } from './errors.js';
export { backoffDelay } from './backoff.js';
export { decodeToken } from './token.js';
export type {
  ClientState,
  ClientOptions,
  ClientEvents,
  ConnectedInfo,
  Publication,
  SubscribedInfo,
  Thread,
  Message,
  ThreadLoaded,
  RunEventType,
  RunEvent,
  PresenceClient,
  RawFrame,
} from './types.js';
