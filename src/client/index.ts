/**
 * charla's client library (`charla/client`): `StreamChat` for the live-stream
 * chat and `RequestChat` for the request chat, with reconnect, resume,
 * de-duplication and acknowledged sends built in. Runs in browsers and Node.
 */
export { type BackoffOptions, BoundedSet, backoffDelay } from './bounded.js';
export type { EventMap } from './emitter.js';
export {
  ChatClientError,
  type ClientErrorCode,
  type ErrorCode,
  type ErrorPayload,
  type ServerErrorCode,
} from './errors.js';
export {
  type ReceiptResult,
  RequestChat,
  type RequestChatEvents,
  type RequestChatOptions,
  type SendOptions,
} from './request.js';
export {
  StreamChat,
  type StreamChatEvents,
  type StreamChatOptions,
  type StreamCloseEvent,
  streamEndpoint,
  type TokenSource,
  type WebSocketConstructor,
} from './stream.js';
export type * from './types.js';
