/**
 * The one error type of the client library. `code` is the server's
 * `error_code` (protocol section 5 and the round-2 additions) when the server
 * refused something, or one of the client's own codes when the client gave up.
 */

/** Codes the server sends (both chats). Kept open: a newer server may add codes. */
export type ServerErrorCode =
  | 'invalid_json'
  | 'invalid_payload'
  | 'unknown_type'
  | 'not_authenticated'
  | 'invalid_token'
  | 'token_expired'
  | 'unauthorized'
  | 'forbidden'
  | 'not_found'
  | 'stream_not_found'
  | 'stream_ended'
  | 'not_in_room'
  | 'empty_message'
  | 'message_too_long'
  | 'rate_limited'
  | 'internal_error'
  | 'banned'
  | 'timed_out'
  | 'slow_mode'
  | 'members_only'
  | 'chat_paused'
  | 'edit_window_passed';

/** Codes the client itself raises. */
export type ClientErrorCode =
  /** No acknowledgement within the timeout (retries exhausted). */
  | 'timeout'
  /** The client was closed before the operation finished. */
  | 'closed'
  /** Too many operations waiting (the bounded queue is full). */
  | 'queue_full'
  /** The room was never joined (or was left) on this client. */
  | 'not_joined'
  /** A moderator frame needs an open, answered connection. */
  | 'not_connected';

export type ErrorCode = ServerErrorCode | ClientErrorCode | (string & {});

/** The wire shape of a server error: `{error_code, message, retry_after_ms?}`. */
export interface ErrorPayload {
  error_code: string;
  message?: string;
  retry_after_ms?: number;
}

export class ChatClientError extends Error {
  readonly code: ErrorCode;
  /** When the server asks to wait (`rate_limited`, `slow_mode`, `timed_out`), in ms. */
  readonly retryAfterMs: number | undefined;
  /** The event or frame type that was refused, when known. */
  readonly event: string | undefined;

  constructor(
    code: ErrorCode,
    message?: string,
    opts: { retryAfterMs?: number; event?: string } = {},
  ) {
    super(message ?? code);
    this.name = 'ChatClientError';
    this.code = code;
    this.retryAfterMs = opts.retryAfterMs;
    this.event = opts.event;
  }

  static fromPayload(p: ErrorPayload, event?: string): ChatClientError {
    const opts: { retryAfterMs?: number; event?: string } = {};
    if (typeof p.retry_after_ms === 'number') opts.retryAfterMs = p.retry_after_ms;
    if (event !== undefined) opts.event = event;
    return new ChatClientError(String(p.error_code), p.message ?? String(p.error_code), opts);
  }
}

export function isErrorPayload(v: unknown): v is ErrorPayload {
  return (
    typeof v === 'object' &&
    v !== null &&
    typeof (v as { error_code?: unknown }).error_code === 'string'
  );
}
