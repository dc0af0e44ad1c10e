/**
 * Seed 000 frames: JSON text `{type, data}` in both directions (protocol
 * sections 2 and 7). Decoding never trusts the input: anything that is not exactly a
 * known frame becomes a ChatError naming what is wrong.
 */
import { z } from 'zod';
import { ChatError } from '../core/errors.js';
import { USER_ID_MAX_CHARS } from '../core/limits.js';
import type { StreamMessage } from '../core/messages.js';
import {
  MAX_SLOW_MODE_SECONDS,
  MAX_TIMEOUT_SECONDS,
  type StreamBroadcast,
  type StreamInfo,
} from '../core/streams.js';
import { storable } from './fields.js';

const chatId = z.string().regex(/^[0-9a-fA-F]{24}$/);
/** A user id; a number is taken as its decimal string, as in tokens (protocol section 1). */
const userId = z
  .union([storable(1, USER_ID_MAX_CHARS), z.number().int().safe()])
  .transform((v) => String(v));
const reason = storable(0, 500).optional();

/** Payload schemas of the client frames, by `type`. */
export const streamClientData = {
  auth: z.object({ token: z.string() }),
  chat: z.object({ message: z.string() }),
  delete: z.object({ id: chatId }),
  timeout: z.object({
    userId,
    seconds: z.number().int().min(1).max(MAX_TIMEOUT_SECONDS),
    reason,
  }),
  ban: z.object({ userId, reason }),
  unban: z.object({ userId, reason }),
  settings: z.object({
    slowModeSeconds: z.number().int().min(0).max(MAX_SLOW_MODE_SECONDS).optional(),
    membersOnly: z.boolean().optional(),
    paused: z.boolean().optional(),
  }),
  pin: z.object({ id: chatId.nullable() }),
} as const;

type StreamClientType = keyof typeof streamClientData;
const CLIENT_TYPES = Object.keys(streamClientData) as StreamClientType[];

export type StreamClientFrame = {
  [T in StreamClientType]: { type: T; data: z.infer<(typeof streamClientData)[T]> };
}[StreamClientType];

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
  const type = value.type as StreamClientType;
  if (!CLIENT_TYPES.includes(type)) {
    throw new ChatError(
      'unknown_type',
      `Unknown message type; expected one of ${CLIENT_TYPES.map((t) => `"${t}"`).join(', ')}.`,
    );
  }
  const data = Object.hasOwn(value, 'data') ? value.data : undefined;
  if (!isPlainObject(data)) {
    throw new ChatError('invalid_payload', '"data" must be an object.');
  }
  const parsed = streamClientData[type].safeParse(data);
  if (!parsed.success) {
    if (type === 'auth' || type === 'chat') {
      const field = type === 'auth' ? 'token' : 'message';
      throw new ChatError('invalid_payload', `"data.${field}" must be a string.`);
    }
    const issue = parsed.error.issues[0];
    const field = ['data', ...(issue?.path ?? [])].join('.');
    throw new ChatError('invalid_payload', `"${field}": ${issue?.message ?? 'invalid'}`);
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

/** A chat's data as clients see it, in `chat`, `history` and `stream.pinned`. */
export function chatData(m: StreamMessage) {
  return {
    user: m.username,
    message: m.message,
    id: m.id,
    userId: m.userId,
    sentAt: m.sentAt,
    badges: m.badges,
  };
}

export function encodeChat(m: StreamMessage): string {
  return JSON.stringify({ type: 'chat', data: chatData(m) });
}

export function streamInfoData(info: StreamInfo) {
  return { ...info, pinned: info.pinned && chatData(info.pinned) };
}

export function encodeStreamInfo(info: StreamInfo): string {
  return JSON.stringify({ type: 'stream', data: streamInfoData(info) });
}

/** `stream`, `delete` and `moderation` frames. */
export function encodeBroadcast(b: StreamBroadcast): string {
  if (b.type === 'stream') return encodeStreamInfo(b.data);
  return JSON.stringify(b);
}

/**
 * The `history` frame from chats already encoded with `chatData`, as JSON
 * texts: the transport measures them to fit the send buffer.
 */
export function encodeHistory(chats: readonly string[], gap: boolean): string {
  return `{"type":"history","data":{"messages":[${chats.join(',')}],"gap":${gap}}}`;
}

export function encodeAuth(authenticated: boolean): string {
  return authenticated
    ? '{"type":"auth","data":{"authenticated":true}}'
    : '{"type":"auth","data":{"authenticated":false}}';
}

export function encodeError(err: ChatError): string {
  return JSON.stringify({ type: 'error', data: err.toPayload() });
}
