// types.ts — the public data shapes (docs/protocol.md, docs/channels.md) and
// the client's options. Payload field names stay as the server sends them
// (snake_case) so the wire docs apply directly; only SDK-made objects
// (RunEvent, sendMessage's result) use camelCase.

import type { WsgateError } from './errors.js';

export type ClientState = 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'closed';

export interface ClientOptions {
  /** ws://host:port/ws */
  url: string;
  /** A fixed token, or use getToken. */
  token?: string;
  /** Called before each connect and ~refreshMarginSecs before exp (refresh). */
  getToken?: () => string | Promise<string>;
  /** WebSocket constructor; default globalThis.WebSocket (Node < 22: pass `ws`). */
  WebSocket?: any;
  /** Reconnect after an unexpected close. Default true. */
  reconnect?: boolean;
  /** Default 500. */
  minReconnectDelayMs?: number;
  /** Default 20000. */
  maxReconnectDelayMs?: number;
  /** Default 10000, counted from the call (time queued or paced included). */
  requestTimeoutMs?: number;
  /** Commands waiting to be sent (not connected, or held by the pacing
   * under the server's rate limit); one more rejects queue_full. Default 100. */
  maxQueue?: number;
  /** Refresh this long before the token's exp. Default 60. */
  refreshMarginSecs?: number;
  /** After heartbeat_secs of silence a `ping` is sent; no frame within this
   * long after it went out means the connection is dead. Default max(2000,
   * heartbeat_secs * 500). */
  pongTimeoutMs?: number;
  /** A connection that stayed open this long resets the backoff. Default 5000. */
  stableAfterMs?: number;
  /** Recent run events kept per thread for runEvents(). Default 1000. */
  runBufferSize?: number;
  /** When a handshake fails before the socket opens and the WebSocket
   * cannot show the HTTP status (browsers, Node's built-in WebSocket), ask
   * the server over HTTP whether the token is the problem: `GET
   * …/api/threads?limit=1` beside the `/ws` endpoint (wss: → https:, ws: →
   * http:, the path before /ws kept; no check when the path does not end
   * in /ws or the scheme is another) with `Authorization: Bearer <token>`;
   * a 401 is then handled like a refused handshake. Default true where
   * `fetch` exists. A server on another origin must allow it with CORS,
   * else the check fails and the client keeps backing off. */
  checkTokenOverHttp?: boolean;
  /** The URL that check asks instead (absolute, or relative to the page;
   * http: or https: only), for a gateway whose WebSocket path does not end
   * in /ws. */
  tokenCheckUrl?: string;
}

export interface ConnectedInfo {
  connection_id: string;
  user: string;
  protocol: string;
  heartbeat_secs: number;
  max_message_bytes: number;
  messages_per_minute: number;
  /** The limiter's burst (servers that predate it omit it). */
  message_burst?: number;
  expires_at: number | null;
}

export interface Publication<T = unknown> {
  channel: string;
  offset: number;
  epoch: string;
  data: T;
}

export interface SubscribedInfo {
  channel: string;
  offset: number;
  epoch: string;
  /** false after a resubscription means publications were lost (a gap). */
  recovered: boolean;
  /** true when this `subscribed` follows a reconnect (or another re-send). */
  resubscribed: boolean;
}

export interface Thread {
  id: string;
  title: string;
  created_at: number;
  updated_at: number;
}

export interface Message {
  id: string;
  thread_id: string;
  role: 'user' | 'assistant';
  content: string;
  created_at: number;
}

export interface ThreadLoaded {
  thread: Thread;
  messages: Message[];
  offset: number;
  epoch: string;
  active_run: { run_id: string; started_at: number } | null;
}

export type RunEventType =
  | 'agent_started'
  | 'agent_thinking'
  | 'tool_executing'
  | 'tool_result'
  | 'partial_result'
  | 'final_report'
  | 'agent_completed';

export interface RunEvent {
  type: RunEventType;
  runId: string;
  threadId: string;
  offset: number;
  epoch: string;
  /** As the server sent it: {run_id, thread_id, delta | text | tool,input |
   * tool,output | content,message_id | status,error?} */
  payload: Record<string, any>;
}

export interface PresenceClient {
  channel: string;
  user: string;
  connection_id: string;
}

export interface RawFrame {
  type: string;
  id?: string;
  payload?: any;
}

export interface ClientEvents {
  state: ClientState;
  connected: ConnectedInfo;
  disconnected: { code: number; reason: string; reconnecting: boolean; delayMs?: number };
  /** Errors not tied to a request (refused token, unsolicited server error). */
  error: WsgateError;
  /** Every publication on any channel. */
  publication: Publication;
  /** Every run event on any thread:<id> channel (each once). */
  run_event: RunEvent;
  /** Every server frame, raw. */
  frame: RawFrame;
}

export const RUN_EVENT_TYPES: ReadonlySet<string> = new Set<RunEventType>([
  'agent_started',
  'agent_thinking',
  'tool_executing',
  'tool_result',
  'partial_result',
  'final_report',
  'agent_completed',
]);
