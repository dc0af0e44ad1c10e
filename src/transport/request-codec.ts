/**
 * Seed 001 event payloads (protocol section 3). Socket.IO hands over whatever
 * JSON the client sent; these schemas turn it into typed values or into one
 * `invalid_payload` naming the field. `docs/asyncapi.yaml` is checked against
 * them.
 */
import { z } from 'zod';
import { ChatError } from '../core/errors.js';
import { normalizeId } from '../core/ids.js';
import { storable } from './fields.js';

const objectId = z
  .string()
  .regex(/^[0-9a-fA-F]{24}$/, { message: 'must be a 24-hex id' })
  .transform(normalizeId);

/** `requestId`, or the seed's misspelling `resquestId` when `requestId` is absent. */
const room = z
  .object({ requestId: z.unknown().optional(), resquestId: z.unknown().optional() })
  .transform((v, ctx) => {
    const id = v.requestId ?? v.resquestId;
    const parsed = objectId.safeParse(id);
    if (!parsed.success) {
      ctx.addIssue({ code: 'custom', path: ['requestId'], message: 'must be a 24-hex id' });
      return z.NEVER;
    }
    return parsed.data;
  });

/**
 * A file shared as a link (protocol section 8). Which URLs and how many per
 * message are configuration, checked by the core.
 */

const attachment = z.object({
  url: storable(1, 2048),
  name: storable(1, 255),
  contentType: z
    .string()
    .max(127)
    .regex(/^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*\/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*$/, {
      message: 'must be a media type such as image/png',
    }),
  size: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
});

/** The schemas as they validate the fields, for the AsyncAPI comparison. */
export const requestClientFields = {
  joinRoom: z.object({ requestId: objectId }),
  leaveRoom: z.object({ requestId: objectId }),
  message: z.object({
    requestId: objectId,
    message: z.string(),
    clientMessageId: storable(1, 128).optional(),
    attachments: z.array(attachment).max(100).optional(),
  }),
  ackMessages: z.object({ requestId: objectId, messages: z.array(objectId).min(1) }),
  readMessages: z.object({ requestId: objectId, messages: z.array(objectId).min(1) }),
  loadHistory: z.object({
    requestId: objectId,
    before: objectId.optional(),
    limit: z.number().int().min(1).optional(),
  }),
  typing: z.object({ requestId: objectId }),
  editMessage: z.object({ requestId: objectId, messageId: objectId, message: z.string() }),
  deleteMessage: z.object({ requestId: objectId, messageId: objectId }),
  listRequests: z.object({
    before: objectId.optional(),
    limit: z.number().int().min(1).optional(),
  }),
} as const;

/** Events about the user's requests as a whole, not one room: no `requestId`. */
export const ROOMLESS_EVENTS = ['listRequests'] as const;

export type RoomlessEvent = (typeof ROOMLESS_EVENTS)[number];
export type RoomEvent = Exclude<keyof typeof requestClientFields, RoomlessEvent>;

export function isRoomless(event: RequestEvent): event is RoomlessEvent {
  return (ROOMLESS_EVENTS as readonly string[]).includes(event);
}

export type RequestEvent = keyof typeof requestClientFields;

export const REQUEST_EVENTS = Object.keys(requestClientFields) as RequestEvent[];

export function isRequestEvent(name: unknown): name is RequestEvent {
  return typeof name === 'string' && Object.hasOwn(requestClientFields, name);
}

export type RequestPayload<E extends RequestEvent> = z.infer<(typeof requestClientFields)[E]>;

/** Validates the payload of `event`; `resquestId` is accepted for `requestId`. */
export function decodeRequestEvent<E extends RequestEvent>(
  event: E,
  payload: unknown,
): RequestPayload<E> {
  if (isRoomless(event) && payload === undefined) payload = {};
  if (typeof payload !== 'object' || payload === null || Array.isArray(payload)) {
    throw new ChatError('invalid_payload', `The "${event}" payload must be an object.`);
  }
  if (isRoomless(event)) return parseFields(event, payload);
  const requestId = room.safeParse(payload);
  if (!requestId.success) {
    throw new ChatError('invalid_payload', '"requestId" must be a 24-hex id.');
  }
  return parseFields(event, { ...payload, requestId: requestId.data });
}

function parseFields<E extends RequestEvent>(event: E, payload: object): RequestPayload<E> {
  const parsed = requestClientFields[event].safeParse(payload);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const field = issue?.path.join('.') || 'payload';
    throw new ChatError('invalid_payload', `"${field}": ${issue?.message ?? 'invalid'}`);
  }
  return parsed.data as RequestPayload<E>;
}
