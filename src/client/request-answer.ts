/**
 * The acknowledgements of the request chat's events, as `RequestChat` and its
 * parts read them: `{ok: true, …}`, or `{ok: false, error_code, message}`
 * which becomes a `ChatClientError`.
 */
import { ChatClientError, isErrorPayload } from './errors.js';

/** `emitWithAck`'s answer: `{ok: true, …}` or `{ok: false, error_code, message}`. */
export type Answer = Record<string, unknown> & { ok?: unknown };

/** The refusal in `answer` as a ChatClientError (an answer of no known shape is `internal_error`). */
export function answerError(answer: Answer, event: string): ChatClientError {
  return isErrorPayload(answer)
    ? ChatClientError.fromPayload(answer, event)
    : new ChatClientError('internal_error', `Unexpected answer to "${event}".`, { event });
}

/** Emits `event` and resolves with its acknowledgement; rejects when none comes in time. */
export type Ask = (event: string, payload: object) => Promise<Answer>;
