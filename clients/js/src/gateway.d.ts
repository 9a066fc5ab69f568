// Types of the realtime gateway's browser client (realtime-gateway-client,
// static/gateway.js). One file for the ES module, the CommonJS build and the
// global `Gateway`.

/** The gateway's three ways to read a channel, tried in the order given. */
export type Transport = "websocket" | "sse" | "poll";

/** A message as every transport delivers it. `data` is text (JSON travels as its text). */
export interface Message {
  id: string;
  channel: string;
  event: string;
  data: string;
}

/** What came with a message: the transport that brought it. */
export interface MessageMeta {
  transport: Transport;
}

/** A user's first connection to a channel arrived (`join`) or their last one left (`leave`). */
export interface PresenceEvent {
  type: "join" | "leave";
  user: string;
  info?: Record<string, unknown> | null;
}

/** `GET /presence/{channel}`. `members` is null past GATEWAY_PRESENCE_MAX_MEMBERS. */
export interface PresenceSnapshot {
  channel: string;
  users: number;
  connections: number;
  members: Array<{ user: string; info?: Record<string, unknown> | null; connections: number }> | null;
}

/** A token, or a function that gives one (called before each connect, before expiry, after `expired`). */
export type TokenSource = string | (() => string | null | undefined | Promise<string | null | undefined>);

/** The state of a subscription's connection. */
export type Status = "connecting" | "open" | "closed";

/**
 * Where the one connection of the browser lives: "worker" a SharedWorker,
 * "leader" a tab elected with Web Locks, false this page alone, "auto" the
 * first of those the browser has.
 */
export type ShareMode = "auto" | "worker" | "leader" | false | true;

export interface SubscribeOptions {
  /** Each message, once, in order. */
  onMessage?: (message: Message, meta: MessageMeta) => void;
  /** History no longer holds all that was missed; what remains follows. */
  onGap?: () => void;
  /** The transport in use, on every switch. */
  onTransport?: (transport: Transport) => void;
  /** Join and leave events of the channel (asks the gateway for them). Not on long-poll. */
  onPresence?: (event: PresenceEvent) => void;
  /** "connecting", "open", "closed". After "open" following a drop, ask `presence()` again. */
  onStatus?: (status: Status) => void;
  /** The gateway refused for good (bad channel, token, rights, revoked): the subscription is closed. */
  onError?: (error: GatewayError) => void;
  /** Order and set of transports to try. Default: all three, in this order. */
  transports?: Transport[];
  /** Resume after this message id ("0": all history). */
  since?: string | null;
  /** Start with the last N messages of history, then live ones. */
  last?: number;
  /** A JWT (HS256) from your app, or a function giving one. */
  token?: TokenSource;
  /** The gateway's URL when it is not this page's origin, e.g. "https://rt.example.com". */
  baseUrl?: string;
  /** Who you are on an open gateway (no GATEWAY_SECRET); otherwise the token's `sub`. */
  user?: string;
  /** How long (ms) a transport has to say it is subscribed. Default 5000. */
  connectTimeout?: number;
  /** The wait between reconnects (ms): doubling from `initial`, capped at `max`, with jitter. Default {initial: 250, max: 3000}. */
  backoff?: { initial?: number; max?: number };
  /** The gateway's GATEWAY_HEARTBEAT (s): a connection silent for 2.5 of them is dead. Default 15. */
  heartbeat?: number;
  /** How long (s) a long-poll waits for a message, 1-29. Default 25. */
  pollTimeout?: number;
  /** Where the connection is held. Default "auto". */
  share?: ShareMode;
  /**
   * The SharedWorker's script: the client's global build (`realtime-gateway-client/global`),
   * served from this page's origin. Default: the global build's own URL, else
   * `${baseUrl}/static/gateway.js` when that is of this page's origin, else no worker.
   */
  workerUrl?: string;
}

export interface Subscription {
  /** The channel subscribed. */
  readonly channel: string;
  /** The transport in use, or null while connecting. */
  readonly transport: Transport | null;
  /** The id of the last message delivered, or null. */
  readonly cursor: string | null;
  /** Drop this channel (the shared connection goes on for the others). */
  close(): void;
}

export interface PublishOptions {
  /** The event name (default "message"). */
  event?: string;
  token?: TokenSource;
  baseUrl?: string;
}

export interface PresenceOptions {
  token?: TokenSource;
  baseUrl?: string;
  /** ms. Default 10000. */
  timeout?: number;
}

export interface Connection {
  baseUrl: string;
  transport: Transport | null;
  status: Status;
  channels: number;
  holder: "page" | "worker" | "this tab" | "other tab";
}

export declare class GatewayError extends Error {
  constructor(message: string, options?: { fatal?: boolean; status?: number; code?: number; expired?: boolean });
  readonly name: "GatewayError";
  /** Trying again, or elsewhere, will not help. */
  fatal: boolean;
  /** The HTTP status, when one said it. */
  status?: number;
  /** The WebSocket close code, when one said it. */
  code?: number;
  /** The token expired. */
  expired: boolean;
}

/** Subscribe to a channel. Options are checked at once (TypeError). */
export declare function subscribe(channel: string, options?: SubscribeOptions): Subscription;
/** Publish over the open WebSocket when there is one, else `POST /publish/{channel}`. Non-strings are sent as JSON. */
export declare function publish(channel: string, data: unknown, options?: PublishOptions): Promise<{ id: string }>;
/** Who is on a channel now. */
export declare function presence(channel: string, options?: PresenceOptions): Promise<PresenceSnapshot>;
/** What this page's subscriptions ride on. */
export declare function connections(): Connection[];
export declare const transports: Transport[];

export interface GatewayApi {
  subscribe: typeof subscribe;
  publish: typeof publish;
  presence: typeof presence;
  connections: typeof connections;
  GatewayError: typeof GatewayError;
  transports: Transport[];
}

declare const Gateway: GatewayApi;
export default Gateway;

declare global {
  /** Defined by the global build (a plain <script>). */
  interface Window {
    Gateway: GatewayApi;
  }
}
