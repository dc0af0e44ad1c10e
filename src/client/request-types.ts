/**
 * The public shapes of `RequestChat` (request.ts): its options, its events,
 * and what its calls take and return.
 */
import type { io as ioFunction, ManagerOptions, SocketOptions } from 'socket.io-client';
import type { BackoffOptions } from './bounded.js';
import type { ChatClientError } from './errors.js';
import type { TokenSource } from './stream.js';
import type {
  Attachment,
  MessageDeletedEvent,
  ReceiptEvent,
  RequestException,
  RequestMessage,
  RequestUpdatedEvent,
  RoomHistory,
  TypingEvent,
} from './types.js';

export interface RequestChatOptions {
  token: TokenSource;
  /** `socket.io-client`'s `io`; imported on demand when absent (pass it in browsers without a bundler). */
  io?: typeof ioFunction;
  /**
   * Reconnect backoff: 500 ms doubling to 30 s, half of it random, reset only
   * by a connection that lasts 5 s. `maxAttempts`: attempts in a row before
   * `connect` rejects (or, later, an `error` event) with `timeout`; default:
   * never give up.
   */
  reconnect?: BackoffOptions & { maxAttempts?: number };
  /** Aborting it closes the client; `connect` still under way rejects with `closed`. */
  signal?: AbortSignal;
  /** How long one acknowledgement may take before the event is retried, in ms. Default 5000. */
  ackTimeoutMs?: number;
  /**
   * Attempts per message (or join) before `send` gives up, a connection that
   * drops while the message is in flight included (and the third such drop
   * gives it up). Default 10.
   */
  maxSendAttempts?: number;
  /** The longest a message or a `join` may wait in all, offline time included, in ms. Default 120 000. */
  sendTimeoutMs?: number;
  /**
   * The largest message packet `send` lets leave, in bytes; past it `send`
   * rejects with `message_too_long`. The server closes the connection for a
   * packet over its `MAX_FRAME_BYTES`: keep the two equal. Default 65 536.
   */
  maxPacketBytes?: number;
  /** Messages that may wait to be sent, over every room. Default 100. */
  outboxSize?: number;
  /** Rooms that may be joined at once. Default 100. */
  maxRooms?: number;
  /** Messages kept per room (the newest). Default 500. */
  historySize?: number;
  /** Message ids remembered for de-duplication. Default 5000. */
  dedupeSize?: number;
  /**
   * Pages of older history fetched after a re-join to close a gap. Default 5;
   * when more were missed, the history says `gap: true`.
   */
  catchUpPages?: number;
  /** Acknowledge incoming messages as delivered. Default true. */
  autoDeliver?: boolean;
  /** Extra Socket.IO options (the transport defaults to WebSocket only; the manager's own `reconnection` stays off). */
  socket?: Partial<ManagerOptions & SocketOptions>;
}

export interface RequestChatEvents {
  /** Connected (again): rooms are being re-joined. */
  connect: () => void;
  disconnect: (reason: string) => void;
  reconnecting: (info: { attempt: number; delayMs: number }) => void;
  /** A room's history after a join or re-join, merged with what the client held. */
  history: (history: RoomHistory) => void;
  /** A message from someone else (live, or found missing after a re-join), never twice. */
  message: (message: RequestMessage) => void;
  messagesDelivered: (event: ReceiptEvent) => void;
  messageReads: (event: ReceiptEvent) => void;
  messageUpdated: (message: RequestMessage) => void;
  messageDeleted: (event: MessageDeletedEvent) => void;
  userTyping: (event: TypingEvent) => void;
  requestUpdated: (event: RequestUpdatedEvent) => void;
  /** Every `exception` the server sends, as it is. */
  exception: (event: RequestException) => void;
  /**
   * The connection was refused (`unauthorized`, `token_expired`), reconnecting
   * gave up (`timeout`, after `reconnect.maxAttempts`), or a re-join failed.
   */
  error: (error: ChatClientError) => void;
}

export interface SendOptions {
  attachments?: Attachment[];
  /** Defaults to a random UUID; pass your own to make a send idempotent across page reloads. */
  clientMessageId?: string;
}

/** What a receipt recorded: the ids that were new for this user (the others are ignored). */
export interface ReceiptResult {
  requestId: string;
  messages: string[];
  at: string;
}
