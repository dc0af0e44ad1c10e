/**
 * What travels between the nodes about streams, on the broker: a stream's
 * own topic carries its chats, deletions, moderation and settings, in the
 * one order every node applies them; the viewers topic carries each node's
 * viewer counts. The broker is shared infrastructure: what arrives is checked
 * here like anything else that crosses a process boundary.
 */
import type { StreamMessage } from './messages.js';
import type { StreamControl } from './stream-rules.js';

/**
 * What flows on a stream's broker topic. A change other than a chat may carry
 * `ack`: every node that hears it answers that token on `appliedTopicOf` the
 * node that made the change, once it applied it.
 */
export type StreamEvent =
  /** `at`: when the chat was accepted (epoch ms, sub-millisecond), for the delivery latency metric. */
  { kind: 'chat'; message: StreamMessage; at?: number } | StreamChange;

/** A change of a stream other than a chat, as published. */
export type StreamChange = Change & { ack?: string };

type Change =
  | { kind: 'ended' }
  | { kind: 'delete'; id: string; by: string }
  | {
      kind: 'moderation';
      action: 'timeout' | 'ban' | 'unban';
      userId: string;
      /** Epoch ms when a timeout ends. */
      until?: number;
      seconds?: number;
      by: string;
    }
  | { kind: 'control'; control: StreamControl; pinned: StreamMessage | null }
  | { kind: 'members'; userIds: string[] };

/** What each node reports on the viewers topic: its own viewer count per stream. */
export interface ViewersReport {
  node: string;
  counts: Record<string, number>;
}

/** `<node id>:<sequence>`: which node awaits the answers, and for which change. */
const ACK_TOKEN = /^([0-9a-f]{24}):\d{1,15}$/;

/** Where the nodes answer the `ack` tokens of a node's changes. */
export const appliedTopicOf = (node: string) => `streams:applied:${node}`;

/** The topic on which `token`'s answers are awaited, or undefined for a malformed token. */
export function ackTopicOf(token: string): string | undefined {
  const m = ACK_TOKEN.exec(token);
  return m ? appliedTopicOf(m[1] as string) : undefined;
}

/** A stream's topic. */
export const topicOf = (key: string) => `stream:${key}`;
/** Every node's viewer counts, heard by every node (also those not serving a stream). */
export const VIEWERS_TOPIC = 'streams:viewers';

const isString = (v: unknown): v is string => typeof v === 'string';
const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);
const isStringArray = (v: unknown): v is string[] => Array.isArray(v) && v.every(isString);
const isCount = (v: unknown): v is number =>
  typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

function isMessage(m: unknown): m is StreamMessage {
  if (!isObject(m)) return false;
  const fields = [m.id, m.streamKey, m.userId, m.username, m.message, m.sentAt];
  return fields.every(isString) && isStringArray(m.badges);
}

function isControl(c: unknown): c is StreamControl {
  return (
    isObject(c) &&
    isString(c.key) &&
    (c.title === null || isString(c.title)) &&
    (c.ownerId === null || isString(c.ownerId)) &&
    isStringArray(c.moderators) &&
    isCount(c.slowModeSeconds) &&
    typeof c.membersOnly === 'boolean' &&
    typeof c.paused === 'boolean' &&
    (c.pinnedId === null || isString(c.pinnedId))
  );
}

/**
 * A broker payload as a StreamEvent, or undefined when it is not one. The
 * broker is shared infrastructure: what arrives on a topic is checked like
 * anything else that crosses a process boundary.
 */
export function parseEvent(payload: string): StreamEvent | undefined {
  let value: unknown;
  try {
    value = JSON.parse(payload);
  } catch {
    return undefined;
  }
  if (!isObject(value)) return undefined;
  const event = parseBody(value);
  if (event === undefined || event.kind === 'chat') return event;
  // A malformed token is dropped: the change still applies, unanswered.
  const { ack } = value;
  if (isString(ack) && ackTopicOf(ack) !== undefined) return { ...event, ack };
  if ('ack' in event) {
    const { ack: _, ...rest } = event;
    return rest as StreamChange;
  }
  return event;
}

function parseBody(e: Record<string, unknown>): StreamEvent | undefined {
  const value = e;
  switch (e.kind) {
    case 'ended':
      return { kind: 'ended' };
    case 'chat': {
      if (!isMessage(e.message)) return undefined;
      // A missing or bad `at` (an older node, a foreign publisher) falls back to `sentAt`.
      const chat = { kind: 'chat', message: e.message } as const;
      return typeof e.at === 'number' && Number.isFinite(e.at) ? { ...chat, at: e.at } : chat;
    }
    case 'delete':
      return isString(e.id) && isString(e.by) ? (value as StreamEvent) : undefined;
    case 'moderation': {
      const ok =
        (e.action === 'timeout' || e.action === 'ban' || e.action === 'unban') &&
        isString(e.userId) &&
        isString(e.by) &&
        (e.until === undefined || isCount(e.until)) &&
        (e.seconds === undefined || isCount(e.seconds));
      return ok ? (value as StreamEvent) : undefined;
    }
    case 'control':
      return isControl(e.control) && (e.pinned === null || isMessage(e.pinned))
        ? (value as StreamEvent)
        : undefined;
    case 'members':
      return isStringArray(e.userIds) ? (value as StreamEvent) : undefined;
    default:
      return undefined;
  }
}

/** A viewers report from the broker, or undefined when it is not one. */
export function parseViewersReport(payload: string): ViewersReport | undefined {
  let value: unknown;
  try {
    value = JSON.parse(payload);
  } catch {
    return undefined;
  }
  if (!isObject(value) || !isString(value.node) || !isObject(value.counts)) return undefined;
  for (const count of Object.values(value.counts)) if (!isCount(count)) return undefined;
  return value as unknown as ViewersReport;
}
