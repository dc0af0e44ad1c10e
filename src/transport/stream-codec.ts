/**
 * Seed 000 frames: JSON text `{type, data}` in both directions (CONTRACT
 * section 2). Decoding never trusts the input: anything that is not exactly a
 * known frame becomes a ChatError naming what is wrong.
 */
import { z } from 'zod';
import { ChatError } from '../core/errors.js';
import type { StreamMessage } from '../core/messages.js';

/** Payload schemas of the client frames, by `type`. */
export const streamClientData = {
  auth: z.object({ token: z.string() }),
  chat: z.object({ message: z.string() }),
} as const;

export type StreamClientFrame =
  | { type: 'auth'; data: z.infer<typeof streamClientData.auth> }
  | { type: 'chat'; data: z.infer<typeof streamClientData.chat> };

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function decodeStreamFrame(text: string): StreamClientFrame {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new ChatError('invalid_json');
  }
  if (!isPlainObject(value) || !Object.hasOwn(value, 'type') || typeof value.type !== 'string') {
    throw new ChatError('invalid_payload', 'A frame is an object with a string "type".');
  }
  const type = value.type;
  if (type !== 'auth' && type !== 'chat') {
    throw new ChatError('unknown_type', 'Unknown message type; expected "auth" or "chat".');
  }
  const data = Object.hasOwn(value, 'data') ? value.data : undefined;
  if (!isPlainObject(data)) {
    throw new ChatError('invalid_payload', '"data" must be an object.');
  }
  const parsed = streamClientData[type].safeParse(data);
  if (!parsed.success) {
    const field = type === 'auth' ? 'token' : 'message';
    throw new ChatError('invalid_payload', `"data.${field}" must be a string.`);
  }
  return { type, data: parsed.data } as StreamClientFrame;
}

/** The `type` a frame that failed to decode claims to be, if it is an object that names one. */
export function claimedType(text: string): string | undefined {
  try {
    const value: unknown = JSON.parse(text);
    return isPlainObject(value) && typeof value.type === 'string' ? value.type : undefined;
  } catch {
    return undefined;
  }
}

export function encodeChat(m: StreamMessage): string {
  return JSON.stringify({
    type: 'chat',
    data: { user: m.username, message: m.message, id: m.id, userId: m.userId, sentAt: m.sentAt },
  });
}

export function encodeAuth(authenticated: boolean): string {
  return authenticated
    ? '{"type":"auth","data":{"authenticated":true}}'
    : '{"type":"auth","data":{"authenticated":false}}';
}

export function encodeError(err: ChatError): string {
  return JSON.stringify({ type: 'error', data: err.toPayload() });
}
