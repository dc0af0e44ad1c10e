/**
 * Who may post in a stream, and when (protocol section 7): the classroom's
 * domain types and one pure decision over them, so every node and every
 * transport refuses a chat for the same reason.
 */
import { ChatError } from './errors.js';
import type { Identity } from './identity.js';
import type { StreamBadge } from './messages.js';

/** Platform staff: a moderator of every stream. */
export const MODERATOR_ROLE = 'MODERATOR';

/** What a moderator can change with a `settings` frame or `PATCH /api/streams/{key}`. */
export interface StreamSettings {
  slowModeSeconds: number;
  membersOnly: boolean;
  paused: boolean;
}

/** A stream's moderation state, as stored. */
export interface StreamControl extends StreamSettings {
  key: string;
  title: string | null;
  ownerId: string | null;
  moderators: string[];
  pinnedId: string | null;
}

/** A ban (`until` null) or a timeout (`until` when it ends). */
export interface StreamBan {
  userId: string;
  until: string | null;
  reason: string | null;
  by: string;
  at: string;
}

export type ModerationActionKind =
  | 'delete'
  | 'timeout'
  | 'ban'
  | 'unban'
  | 'settings'
  | 'pin'
  | 'unpin'
  | 'members';

/** One entry of a stream's moderation log; `id` orders the log and pages it. */
export interface ModerationAction {
  id: string;
  action: ModerationActionKind;
  userId: string | null;
  messageId: string | null;
  by: string;
  at: string;
  reason: string | null;
}

export type NewModerationAction = Omit<ModerationAction, 'id'>;

/** What a logged moderation action changes, stored in the same transaction as its log entry. */
export type ModerationEffect =
  | { kind: 'delete'; id: string; by: string; at: string }
  | { kind: 'ban'; ban: StreamBan }
  | { kind: 'unban'; userId: string };

/** The posting rules of one stream, as a node holds them in memory. */
export interface PostingRules extends StreamSettings {
  ownerId: string | null;
  moderators: ReadonlySet<string>;
  members: ReadonlySet<string>;
  /** User id → epoch ms when the timeout ends, or null for a ban. */
  bans: ReadonlyMap<string, number | null>;
}

/** Each node's bans map and its size after the last sweep of ended timeouts. */
const sweptSize = new WeakMap<Map<string, number | null>, number>();

/**
 * Records a ban (`until` null) or a timeout ending at `until` in a node's
 * cached rules. Ended timeouts are swept out whenever the map has doubled
 * since the last sweep, so a moderator who times out ever new user ids
 * leaves a map proportional to the bans still in force, at O(1) amortized
 * per ban (README "Security").
 */
export function recordBan(
  bans: Map<string, number | null>,
  userId: string,
  until: number | null,
  now = Date.now(),
): void {
  bans.set(userId, until);
  if (bans.size < 2 * (sweptSize.get(bans) ?? 0) + 64) return;
  for (const [id, end] of bans) if (end !== null && end <= now) bans.delete(id);
  sweptSize.set(bans, bans.size);
}

export function badgesOf(
  rules: Pick<PostingRules, 'ownerId' | 'moderators'>,
  who: Identity,
): StreamBadge[] {
  if (rules.ownerId !== null && who.userId === rules.ownerId) return ['owner'];
  if (rules.moderators.has(who.userId) || who.roles.includes(MODERATOR_ROLE)) return ['moderator'];
  return [];
}

export function isModerator(
  rules: Pick<PostingRules, 'ownerId' | 'moderators'>,
  who: Identity,
): boolean {
  return badgesOf(rules, who).length > 0;
}

/**
 * Refusals with nothing of their own, made once: a crowd of banned users
 * posting into a busy stream would otherwise pay for a stack trace per chat,
 * which nobody reads (a ChatError is never changed once made).
 */
const BANNED = new ChatError('banned');
const CHAT_PAUSED = new ChatError('chat_paused');
const MEMBERS_ONLY = new ChatError('members_only');

/**
 * Throws the ChatError that refuses a chat from `who` at `now`, or returns
 * whether slow mode applies to it. A ban or timeout refuses anyone it names,
 * moderators too (protocol section 7); moderators pass pause, members-only
 * and slow mode. Slow mode itself is counted elsewhere (it is shared across
 * nodes); this only says whether it applies.
 */
export function checkPosting(rules: PostingRules, who: Identity, now: number): { slowed: boolean } {
  const ban = rules.bans.get(who.userId);
  if (ban === null) throw BANNED;
  if (ban !== undefined && ban > now) {
    throw new ChatError('timed_out', undefined, { retryAfterMs: ban - now });
  }
  if (isModerator(rules, who)) return { slowed: false };
  if (rules.paused) throw CHAT_PAUSED;
  if (rules.membersOnly && !rules.members.has(who.userId)) throw MEMBERS_ONLY;
  return { slowed: rules.slowModeSeconds > 0 };
}
