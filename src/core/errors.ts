/**
 * The one registry of error codes (protocol section 5) and how each reaches a
 * client: as an error frame / `exception`, an HTTP status, or a close code.
 */

export const ERROR_CODES = [
  'invalid_json',
  'invalid_payload',
  'unknown_type',
  'not_authenticated',
  'invalid_token',
  'token_expired',
  'unauthorized',
  'forbidden',
  'not_found',
  'method_not_allowed',
  'stream_not_found',
  'stream_ended',
  'not_in_room',
  'empty_message',
  'message_too_long',
  'rate_limited',
  'internal_error',
  'edit_window_passed',
  'banned',
  'timed_out',
  'slow_mode',
  'members_only',
  'chat_paused',
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

const DEFAULT_MESSAGES: Record<ErrorCode, string> = {
  invalid_json: 'The frame is not valid JSON.',
  invalid_payload: 'The payload does not have the expected shape.',
  unknown_type: 'Unknown message type.',
  not_authenticated: 'Authenticate before sending messages.',
  invalid_token: 'The token is not valid.',
  token_expired: 'The token has expired.',
  unauthorized: 'Authentication required.',
  forbidden: 'You may not do this.',
  not_found: 'Not found.',
  method_not_allowed: 'This method is not allowed here.',
  stream_not_found: 'There is no stream with this key.',
  stream_ended: 'This stream has ended.',
  not_in_room: 'Join the room first.',
  empty_message: 'The message is empty.',
  message_too_long: 'The message is too long.',
  rate_limited: 'Too many messages; slow down.',
  internal_error: 'Something went wrong on our side.',
  edit_window_passed: 'This message can no longer be edited or deleted.',
  banned: 'You are banned from this chat.',
  timed_out: 'You are timed out in this chat.',
  slow_mode: 'Slow mode is on; wait before sending again.',
  members_only: 'Only members may chat here.',
  chat_paused: 'The chat is paused.',
};

const HTTP_STATUS: Record<ErrorCode, number> = {
  invalid_json: 400,
  invalid_payload: 422,
  unknown_type: 400,
  not_authenticated: 401,
  invalid_token: 401,
  token_expired: 401,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  method_not_allowed: 405,
  stream_not_found: 404,
  stream_ended: 410,
  not_in_room: 409,
  empty_message: 422,
  message_too_long: 422,
  rate_limited: 429,
  internal_error: 500,
  edit_window_passed: 409,
  banned: 403,
  timed_out: 403,
  slow_mode: 429,
  members_only: 403,
  chat_paused: 403,
};

/** A refusal the client caused or can act on; anything else is `internal_error`. */
export class ChatError extends Error {
  readonly code: ErrorCode;
  readonly retryAfterMs: number | undefined;
  readonly httpStatus: number;

  constructor(
    code: ErrorCode,
    message?: string,
    opts: { retryAfterMs?: number; httpStatus?: number } = {},
  ) {
    super(message ?? DEFAULT_MESSAGES[code]);
    this.name = 'ChatError';
    this.code = code;
    this.retryAfterMs = opts.retryAfterMs;
    this.httpStatus = opts.httpStatus ?? HTTP_STATUS[code];
  }

  /** The wire shape shared by both protocols and the HTTP API. */
  toPayload(): { error_code: ErrorCode; message: string; retry_after_ms?: number } {
    return this.retryAfterMs === undefined
      ? { error_code: this.code, message: this.message }
      : { error_code: this.code, message: this.message, retry_after_ms: this.retryAfterMs };
  }
}

/** Turns anything thrown into a ChatError; the caller logs the non-ChatError case once. */
export function asChatError(err: unknown): ChatError {
  return err instanceof ChatError ? err : new ChatError('internal_error');
}

/**
 * WebSocket close codes of the chat protocol. 1001/1008/1013 are from RFC 6455 and the
 * IANA registry; 4404/4410 are charla's, in the private range, mirroring HTTP.
 */
export const CloseCode = {
  goingAway: 1001,
  policyViolation: 1008,
  tryAgainLater: 1013,
  streamNotFound: 4404,
  streamEnded: 4410,
} as const;

/**
 * A page read with a `before` cursor, or `not_found` when the store knows no
 * such cursor (`what`: what it should name). An empty page would tell the
 * client there is nothing older, and it would stop paging.
 */
export function pageAt<T>(page: T | undefined, what: string): T {
  if (page === undefined) throw new ChatError('not_found', `"before" names no ${what}.`);
  return page;
}
