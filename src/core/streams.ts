/**
 * Live-stream chat (protocol sections 2 and 7), independent of any transport:
 * which streams exist, who may post and moderate, and fan-out through the Broker.
 *
 * Ordering: a chat is published to the stream's broker topic and delivered
 * to local viewers only when it comes back from the broker, so every viewer
 * on every node sees the broker's one order, the sender included. Moderation
 * (deletions, bans, settings) travels on the same topic, so it is ordered
 * with the chats and reaches every node's cache of the stream's rules.
 *
 * Joining: the history comes from the node's cache of the stream's newest
 * chats (`stream-recent.ts`), kept current by the same topic, so a join reads
 * no store. Taken and sent in the same turn as the viewer is added to the
 * audience, it leaves nothing between history and live. When the cache cannot
 * answer (cold, or `since` older than it holds), the viewer is subscribed
 * first and its live frames are held while the store is read; then the
 * history (the chats before the held ones) goes out, and every held frame
 * after it, so no chat is missed or seen twice.
 *
 * Storage: chats are stored in batches off the fan-out path, one transaction
 * per event-loop turn, or for everything accepted while the previous batch
 * was being written; `flush()` waits for what was accepted (shutdown). As a
 * chat is published before it is stored, every read of the store for a
 * history (the cache's seed, or a join the cache cannot answer) first waits
 * until every node has stored what it published (`stream-settle.ts`).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { type Broker, earliestSince, type Unsubscribe } from '../broker/broker.js';
import type { Limits } from '../config.js';
import type { Logger } from '../observability/log.js';
import { type Metrics, preciseNow } from '../observability/metrics.js';
import type { Store } from '../store/store.js';
import { ChatError, pageAt } from './errors.js';
import type { Identity } from './identity.js';
import { isObjectId, newId } from './ids.js';
import { checkMessageText } from './limits.js';
import type { Page, PageQuery, StreamMessage } from './messages.js';
import {
  ackTopicOf,
  appliedTopicOf,
  parseEvent,
  parseViewersReport,
  type StreamChange,
  type StreamEvent,
  topicOf,
  VIEWERS_TOPIC,
  type ViewersReport,
} from './stream-events.js';
import { type SharedCounterOptions, StreamLimits } from './stream-limits.js';
import { RecentCache, type RecentChats } from './stream-recent.js';
import {
  badgesOf,
  checkPosting,
  isModerator,
  type ModerationAction,
  type ModerationActionKind,
  type ModerationEffect,
  type PostingRules,
  recordBan,
  type StreamBan,
  type StreamControl,
  type StreamSettings,
} from './stream-rules.js';
import { StoreSettle } from './stream-settle.js';
import { type OutboxEntry, streamEvents } from './webhook-events.js';
import type { Webhooks } from './webhooks.js';

export const STREAM_KEY = /^[A-Za-z0-9_-]{1,64}$/;

/** The longest timeout a moderator may give (14 days, as Twitch). */
export const MAX_TIMEOUT_SECONDS = 1_209_600;
export const MAX_SLOW_MODE_SECONDS = 3_600;
/** How long a chat refused while the store catches up is told to wait. */
const STORE_BUSY_RETRY_MS = 1_000;

/** How long after a rules change a node reads the rules again to check them (`verifyRules`). */
const RULES_CHECK_DELAY_MS = 250;

export type StreamStatus = 'open' | 'ended' | 'unknown';

/** The `stream` frame's data. */
export interface StreamInfo {
  key: string;
  title: string | null;
  viewers: number;
  slowModeSeconds: number;
  membersOnly: boolean;
  paused: boolean;
  pinned: StreamMessage | null;
}

/** What the core asks a transport to encode, besides chats. */
export type StreamBroadcast =
  | { type: 'stream'; data: StreamInfo }
  | { type: 'delete'; data: { id: string; by: string } }
  | {
      type: 'moderation';
      data: { action: 'timeout' | 'ban' | 'unban'; userId: string; seconds?: number; by: string };
    };

/** A moderator's request, from a frame or the server API. */
export type ModerationRequest =
  | { type: 'delete'; id: string }
  | { type: 'timeout'; userId: string; seconds: number; reason?: string | undefined }
  | { type: 'ban'; userId: string; reason?: string | undefined }
  | { type: 'unban'; userId: string; reason?: string | undefined }
  | { type: 'settings'; settings: Partial<StreamSettings> }
  | { type: 'pin'; id: string | null };

/** Who asks for a moderation: a user (checked), or the platform's API key. */
export type Moderator = Identity | 'api';

/**
 * A connection watching a stream, as the transport implements it. `F` is the
 * transport's encoded frame: built once per event, handed to every viewer.
 */
export interface StreamViewer<F> {
  /** Queues the frame; false when this viewer was skipped (closing, or dropped for being slow). */
  deliver(frame: F): boolean;
  /** The stream was ended through the API: tell the client and close. */
  streamEnded(): void;
  /**
   * The viewer has joined: its `stream` and `history` frames. Live frames
   * follow through `deliver`, each newer than the history.
   */
  welcome(info: StreamInfo, history: StreamMessage[], gap: boolean): void;
}

/** A stream's posting rules plus what its `stream` frame shows, cached per node. */
interface RoomRules extends PostingRules {
  title: string | null;
  moderators: Set<string>;
  members: Set<string>;
  bans: Map<string, number | null>;
  pinned: StreamMessage | null;
}

interface Held<F> {
  /** The chat's id; null for other frames (deletions, moderation, settings). */
  id: string | null;
  frame: F;
}

interface Joining<F> {
  held: Held<F>[];
  /** More live frames arrived than may be held: the oldest were dropped. */
  overflow: boolean;
}

interface Room<F> {
  viewers: Set<StreamViewer<F>>;
  /** Viewers whose history is being read; their live frames are held. */
  joining: Map<StreamViewer<F>, Joining<F>>;
  unsubscribe: Unsubscribe;
  rules: RoomRules | undefined;
  loading: Promise<RoomRules> | undefined;
  /** Rule changes heard while `loading`, applied in order once it is done. */
  queued: StreamEvent[];
  /** The `viewers` of the last `stream` frame sent to everyone. */
  sentViewers: number;
  /** The read that seeds the stream's cache of recent chats. */
  seeding: { recent: RecentChats; done: Promise<Seeded> } | undefined;
  /** What the viewers here were shown, kept from a recovery until the store is read again. */
  resyncing: Shown | undefined;
  /**
   * The bans and timeouts as the viewers here were told them: the rules first
   * read, then every `moderation` frame sent. Unlike the rules, not changed
   * by this node's own changes until they come back from the broker.
   */
  toldBans: Map<string, number | null> | undefined;
  /** The read of the rules that checks them against the store (`verifyRules`), while due or under way. */
  verifying: Promise<void> | undefined;
  /** A rules event came during that read: read once more after it. */
  verifyAgain: boolean;
  /**
   * Counts every change made to `rules` in memory (heard, made here, a
   * deletion's unpin, a read after a recovery): a read begun before one is
   * older than what is held, and is not taken.
   */
  rulesChanges: number;
}

/**
 * What a stream's viewers on this node had been shown when publications may
 * have been missed, to be compared with the store once it is read again.
 */
interface Shown {
  /** `settingsShown` of the last `stream` frame; undefined when none went out yet. */
  settings: string | undefined;
  /** The chats held in memory (sent, and not deleted as far as this node heard); undefined when it was cold. */
  chats: Set<string> | undefined;
  /** From when publications may have been missed (epoch ms), when known. */
  since: number | undefined;
}

/**
 * Whether a stream's cache of recent chats can answer: `ready`; `cold` (off,
 * or the read failed); `unsettled` (not every node confirmed in time that the
 * chats it published were stored, so a read may miss some).
 */
type Seeded = 'ready' | 'cold' | 'unsettled';

export interface StreamsDeps<F> {
  store: Store;
  broker: Broker;
  limits: Limits;
  metrics: Metrics;
  log: Logger;
  /** Encodes a chat for the wire, once per fan-out. */
  encode: (message: StreamMessage) => F;
  /** When set, ending a stream commits its `stream.ended` event with it. */
  webhooks?: Webhooks | undefined;
  /** Encodes any other broadcast, once per fan-out. */
  encodeBroadcast: (broadcast: StreamBroadcast) => F;
  /** Where rate limits and slow mode are counted (Redis for several nodes). */
  counters?: SharedCounterOptions;
}

/** A node's viewer count is forgotten after this many missed reports. */
const STALE_REPORTS = 3;

export class Streams<F> {
  private readonly rooms = new Map<string, Room<F>>();
  private readonly counters: StreamLimits;
  /** This process, among the nodes that report viewer counts. */
  private readonly node = newId();
  private readonly viewersTimer: NodeJS.Timeout;
  private readonly unsubscribeViewers: Unsubscribe;
  private readonly unsubscribeMissed: Unsubscribe;
  /** Recoveries' reads of each room's missed deletions and bans, one room after the other. */
  private resending: Promise<void> = Promise.resolve();
  private readonly unsubscribeApplied: Unsubscribe;
  /** This node's changes whose answers it awaits, by token. */
  private readonly applying = new Map<string, Applying>();
  private changes = 0;
  /** Other nodes' latest reports, by node: when heard and the counts. */
  private readonly remote = new Map<string, { at: number; counts: Map<string, number> }>();
  private pending: StreamMessage[] = [];
  /** Chats accepted and not yet stored: those pending and the batch being written. */
  private unstored = 0;
  private flushing: Promise<void> = Promise.resolve();
  private flushScheduled = false;
  /** A write is chained and not started yet: it takes every chat pending when it starts. */
  private writeWaiting = false;
  /** When each chat fanned out in this event-loop turn was accepted. */
  private deliveredThisTurn: number[] = [];
  /** The newest chats of the streams watched here, for `history` frames. */
  private readonly recent: RecentCache;
  /** Every node's chats stored before a history is read from the store. */
  private readonly settle: StoreSettle;

  constructor(private readonly deps: StreamsDeps<F>) {
    this.counters = new StreamLimits(deps.limits.streamRate, deps.counters);
    this.recent = new RecentCache({
      chats: deps.limits.historyMaxPage,
      bytes: deps.limits.sendBufferMaxBytes,
      streams: deps.limits.streamHistoryCacheStreams,
    });
    this.viewersTimer = setInterval(() => this.shareViewers(), deps.limits.streamViewersIntervalMs);
    this.viewersTimer.unref();
    this.unsubscribeViewers = deps.broker.subscribe(VIEWERS_TOPIC, (payload) =>
      this.onViewers(payload),
    );
    this.unsubscribeMissed = deps.broker.onMissed((since) => this.resync(since));
    this.unsubscribeApplied = deps.broker.subscribe(appliedTopicOf(this.node), (token) =>
      this.onApplied(token),
    );
    this.settle = new StoreSettle({
      broker: deps.broker,
      log: deps.log,
      node: this.node,
      flush: () => this.flush(),
      maxMs: deps.limits.streamHistorySettleMs,
    });
  }

  async status(key: string): Promise<StreamStatus> {
    if (!STREAM_KEY.test(key)) return 'unknown';
    // Watched here: its `ended` would have closed the room.
    if (this.rooms.get(key)?.rules) return 'open';
    const stream = await this.deps.store.getStream(key);
    if (!stream) return 'unknown';
    return stream.endedAt === null ? 'open' : 'ended';
  }

  /** Creates or updates a stream (and reopens an ended one). */
  async put(
    key: string,
    fields: { title?: string | null; ownerId?: string | null },
  ): Promise<{ created: boolean }> {
    const result = await this.deps.store.putStream(key, fields);
    // A new owner or title changes badges, who moderates and the `stream` frame.
    if (!result.created) await this.publishControl(key);
    return result;
  }

  /** Ends a stream: its viewers on every node are told and closed. */
  async end(key: string): Promise<boolean> {
    const { webhooks } = this.deps;
    const ended = await this.deps.store.endStream(key, webhooks && [streamEvents.ended(key)]);
    if (ended) {
      await this.publish(key, { kind: 'ended' });
      webhooks?.nudge();
    }
    return ended;
  }

  /**
   * Adds a viewer: it receives live frames at once (held back until its
   * history is out), then `welcome`. With `since` (a chat id), the history is
   * the chats after it instead of the newest ones.
   */
  join(key: string, viewer: StreamViewer<F>, since?: string): void {
    const room = this.roomOf(key);
    if (room.rules && this.welcomeFromCache(key, room, viewer, since, undefined)) return;
    room.joining.set(viewer, { held: [], overflow: false });
    void this.welcome(key, room, viewer, since);
  }

  leave(key: string, viewer: StreamViewer<F>): void {
    const room = this.rooms.get(key);
    if (!room) return;
    if (!room.viewers.delete(viewer) && !room.joining.delete(viewer)) return;
    if (room.viewers.size === 0 && room.joining.size === 0) {
      room.unsubscribe();
      this.rooms.delete(key);
      // Without the topic it would go stale.
      this.recent.drop(key);
      // The other nodes stop counting this one's viewers now, not when the report goes stale.
      this.reportViewers();
    }
  }

  /**
   * Accepts a chat from `identity` (null: anonymous) or rejects with the
   * ChatError that refuses it. Nothing is stored or sent when it rejects.
   */
  async post(key: string, identity: Identity | null, text: string): Promise<StreamMessage> {
    if (identity === null) throw new ChatError('not_authenticated');
    checkMessageText(text, this.deps.limits.streamMessageMaxChars);
    const message = await this.accepted(key, identity, text);
    this.deps.metrics.messagesIn.inc({ chat: 'stream' });
    this.enqueue(message);
    const chat: StreamEvent = { kind: 'chat', message, at: preciseNow() };
    this.deps.broker.publish(topicOf(key), JSON.stringify(chat));
    return message;
  }

  /**
   * The chat `identity` may post now, or the ChatError that refuses it. An
   * accepted chat is counted in `unstored` from here, until its batch is written.
   */
  private async accepted(key: string, identity: Identity, text: string): Promise<StreamMessage> {
    const rules = await this.rulesFor(key);
    const { slowed } = checkPosting(rules, identity, Date.now());
    const badges = badgesOf(rules, identity);
    // Checked and counted in one step, so that chats checked together cannot
    // all pass. The store has stalled or is slower than the chat: what waits
    // for it is bounded, and a chat that would never reach history is not
    // sent. Moderators are never rate-limited (a handful of users).
    if (badges.length === 0 && this.unstored >= this.deps.limits.streamStoreQueueMax) {
      throw new ChatError('rate_limited', 'The server is busy storing chats; try again.', {
        retryAfterMs: STORE_BUSY_RETRY_MS,
      });
    }
    this.unstored++;
    try {
      if (badges.length === 0) {
        await this.counters.take(key, identity.userId, slowed ? rules.slowModeSeconds : 0);
      }
    } catch (err) {
      this.unstored--;
      throw err;
    }
    return {
      id: newId(),
      streamKey: key,
      userId: identity.userId,
      username: identity.username,
      message: text,
      sentAt: new Date().toISOString(),
      badges,
    };
  }

  /** Every stored chat, deleted ones included (the server API's view). */
  async history(key: string, query: PageQuery): Promise<Page<StreamMessage>> {
    // A chat goes out a moment before it is stored: whoever has just seen one
    // live expects it on the newest page. Every node stores what it published
    // first (within STREAM_HISTORY_SETTLE_MS); older pages hold older chats.
    if (query.before === undefined) await this.settle.settled();
    let page = await this.deps.store.streamHistory(key, query);
    if (page === undefined) {
      // An id seen live may be a moment from storage: wait for it once.
      await this.settle.settled();
      page = await this.deps.store.streamHistory(key, query);
    }
    return pageAt(page, 'chat of this stream');
  }

  /** The `GET /api/streams/{key}` view; undefined for an unknown stream. */
  async describe(key: string): Promise<
    | (StreamInfo & {
        ownerId: string | null;
        moderators: string[];
        live: boolean;
      })
    | undefined
  > {
    const [stream, control] = await Promise.all([
      this.deps.store.getStream(key),
      this.deps.store.getStreamControl(key),
    ]);
    if (!stream || !control) return undefined;
    const pinned =
      control.pinnedId === null
        ? null
        : ((await this.deps.store.getStreamMessage(key, control.pinnedId)) ?? null);
    return {
      key,
      title: control.title,
      ownerId: control.ownerId,
      moderators: control.moderators,
      live: stream.endedAt === null,
      viewers: this.viewersOf(key),
      slowModeSeconds: control.slowModeSeconds,
      membersOnly: control.membersOnly,
      paused: control.paused,
      pinned,
    };
  }

  /**
   * Carries out a moderator's request, or rejects (`forbidden` for anyone who
   * is not a moderator of the stream). Its effect reaches every node's viewers
   * through the broker; the moderator hears it that way too.
   */
  async moderate(
    key: string,
    who: Moderator,
    request: ModerationRequest,
  ): Promise<StreamBan | undefined> {
    const by = who === 'api' ? 'api' : who.userId;
    if (who !== 'api') {
      const rules = await this.rulesFor(key);
      if (!isModerator(rules, who))
        throw new ChatError('forbidden', 'Only moderators may do this.');
    }
    const store = this.deps.store;
    const { webhooks } = this.deps;
    const at = new Date().toISOString();
    // The action's effect and webhook event commit with its entry in the moderation log.
    const log = async (
      action: ModerationActionKind,
      fields: Partial<ModerationAction> = {},
      event?: OutboxEntry,
      effect?: ModerationEffect,
    ) => {
      const logged = await store.addModerationAction(
        key,
        {
          action,
          userId: fields.userId ?? null,
          messageId: fields.messageId ?? null,
          by,
          at,
          reason: fields.reason ?? null,
        },
        webhooks && event ? [event] : [],
        effect,
      );
      if (logged && webhooks && event) webhooks.nudge();
      return logged;
    };
    switch (request.type) {
      case 'delete': {
        // A chat seen a moment ago may still wait for its batch on this node,
        // or on the node that took it: wait for every node's store once.
        await this.flush();
        let chat = await store.getStreamMessage(key, request.id);
        if (!chat && (await this.settle.settled()))
          chat = await store.getStreamMessage(key, request.id);
        if (!chat) throw new ChatError('not_found', 'There is no such chat in this stream.');
        // Deleting a deleted chat again stores nothing (no log entry, no event),
        // but is still answered with its broadcast, as every moderator frame is.
        await log(
          'delete',
          { userId: chat.userId, messageId: request.id },
          streamEvents.messageDeleted({ key, id: request.id, by }),
          { kind: 'delete', id: request.id, by, at },
        );
        await this.publish(key, { kind: 'delete', id: request.id, by });
        if (await store.unpinStreamMessage(key, request.id)) await this.publishControl(key);
        return;
      }
      case 'timeout':
      case 'ban': {
        const control = await this.controlOf(key);
        if (control.ownerId === request.userId) {
          throw new ChatError('forbidden', "The stream's owner cannot be banned.");
        }
        const seconds = request.type === 'timeout' ? request.seconds : undefined;
        const until = seconds === undefined ? undefined : Date.now() + seconds * 1000;
        const ban: StreamBan = {
          userId: request.userId,
          until: until === undefined ? null : new Date(until).toISOString(),
          reason: request.reason ?? null,
          by,
          at,
        };
        const reason = request.reason === undefined ? {} : { reason: request.reason };
        const data = { key, userId: request.userId, by, ...reason };
        await log(
          request.type,
          { userId: request.userId, reason: request.reason ?? null },
          seconds === undefined
            ? streamEvents.userBanned(data)
            : streamEvents.userTimedOut({ ...data, seconds }),
          { kind: 'ban', ban },
        );
        await this.publish(key, {
          kind: 'moderation',
          action: request.type,
          userId: request.userId,
          by,
          ...(seconds === undefined ? {} : { seconds, until }),
        });
        return ban;
      }
      case 'unban': {
        await this.controlOf(key);
        // Lifting a ban that is not there stores nothing, and is still answered with its broadcast.
        await log('unban', { userId: request.userId, reason: request.reason ?? null }, undefined, {
          kind: 'unban',
          userId: request.userId,
        });
        await this.publish(key, {
          kind: 'moderation',
          action: 'unban',
          userId: request.userId,
          by,
        });
        return;
      }
      case 'settings': {
        await this.update(key, request.settings, by);
        return;
      }
      case 'pin': {
        if (request.id !== null) {
          await this.flush();
          const m = await store.getStreamMessage(key, request.id);
          if (!m || m.deletedAt !== undefined) {
            throw new ChatError('not_found', 'There is no such chat in this stream.');
          }
        }
        if (!(await store.updateStreamControl(key, { pinnedId: request.id }))) {
          throw new ChatError('stream_not_found');
        }
        // A deletion that committed meanwhile may have found the chat not
        // pinned yet, and left it so: then it is unpinned here. (A deletion
        // after this read finds it pinned, and unpins it itself.)
        if (request.id !== null && (await store.getStreamMessage(key, request.id))?.deletedAt) {
          if (await store.unpinStreamMessage(key, request.id)) await this.publishControl(key);
          throw new ChatError('not_found', 'There is no such chat in this stream.');
        }
        await log(request.id === null ? 'unpin' : 'pin', { messageId: request.id });
        await this.publishControl(key);
        return;
      }
    }
  }

  /** `PATCH /api/streams/{key}`: title, moderators and settings at once. */
  async update(
    key: string,
    patch: Partial<StreamSettings> & { title?: string | null; moderators?: string[] },
    by = 'api',
  ): Promise<void> {
    if (!(await this.deps.store.updateStreamControl(key, patch))) {
      throw new ChatError('stream_not_found');
    }
    const { slowModeSeconds, membersOnly, paused } = patch;
    if (slowModeSeconds !== undefined || membersOnly !== undefined || paused !== undefined) {
      await this.deps.store.addModerationAction(key, {
        action: 'settings',
        userId: null,
        messageId: null,
        by,
        at: new Date().toISOString(),
        reason: null,
      });
    }
    await this.publishControl(key);
  }

  /** Replaces the members-only allowlist. */
  async setMembers(key: string, userIds: string[]): Promise<void> {
    await this.controlOf(key);
    const unique = [...new Set(userIds)];
    await this.deps.store.setStreamMembers(key, unique);
    await this.deps.store.addModerationAction(key, {
      action: 'members',
      userId: null,
      messageId: null,
      by: 'api',
      at: new Date().toISOString(),
      reason: null,
    });
    await this.publish(key, { kind: 'members', userIds: unique });
  }

  async bans(key: string): Promise<StreamBan[]> {
    await this.controlOf(key);
    return this.deps.store.streamBans(key, new Date().toISOString());
  }

  async moderationLog(
    key: string,
    query: { before?: string | undefined; limit: number },
  ): Promise<{ actions: ModerationAction[]; hasMore: boolean }> {
    await this.controlOf(key);
    return pageAt(await this.deps.store.moderationLog(key, query), "action of this stream's log");
  }

  /** Resolves when every chat accepted so far is stored (or failed and was logged). */
  async flush(): Promise<void> {
    this.flushScheduled = false;
    if (this.pending.length > 0 && !this.writeWaiting) {
      this.writeWaiting = true;
      // The batch is taken when the write before it is done, not now: while the
      // store is slow, what is accepted meanwhile goes in one transaction, not
      // one per event-loop turn behind the other.
      this.flushing = this.flushing.then(() => {
        this.writeWaiting = false;
        const batch = this.pending;
        this.pending = [];
        return this.write(batch);
      });
    }
    await this.flushing;
  }

  /** Stops sharing viewer counts and answering other nodes' settle requests; for shutdown. */
  close(): void {
    clearInterval(this.viewersTimer);
    this.unsubscribeViewers();
    this.unsubscribeMissed();
    this.unsubscribeApplied();
    for (const applying of this.applying.values()) applying.done();
    this.settle.close();
  }

  /** Connections watching, on this node. */
  get viewerCount(): number {
    let n = 0;
    for (const r of this.rooms.values()) n += r.viewers.size + r.joining.size;
    return n;
  }

  /** Connections watching `key` on every node, as far as this node has heard. */
  viewersOf(key: string): number {
    const room = this.rooms.get(key);
    const fresh = Date.now() - STALE_REPORTS * this.deps.limits.streamViewersIntervalMs;
    let n = room ? room.viewers.size + room.joining.size : 0;
    for (const [node, report] of this.remote) {
      if (report.at < fresh) this.remote.delete(node);
      else n += report.counts.get(key) ?? 0;
    }
    return n;
  }

  private reportViewers(): void {
    const counts: Record<string, number> = {};
    for (const [key, room] of this.rooms) counts[key] = room.viewers.size + room.joining.size;
    const report: ViewersReport = { node: this.node, counts };
    this.deps.broker.publish(VIEWERS_TOPIC, JSON.stringify(report));
  }

  private onViewers(payload: string): void {
    const report = parseViewersReport(payload);
    if (report === undefined) {
      this.deps.log.warn({ bytes: payload.length }, 'ignored a malformed viewers report');
      return;
    }
    if (report.node === this.node) return;
    this.remote.set(report.node, {
      at: Date.now(),
      counts: new Map(Object.entries(report.counts)),
    });
  }

  private async controlOf(key: string): Promise<StreamControl> {
    const control = await this.deps.store.getStreamControl(key);
    if (!control) throw new ChatError('stream_not_found');
    return control;
  }

  private roomOf(key: string): Room<F> {
    let room = this.rooms.get(key);
    if (!room) {
      const created: Room<F> = {
        viewers: new Set(),
        joining: new Map(),
        unsubscribe: () => {},
        rules: undefined,
        loading: undefined,
        queued: [],
        sentViewers: -1,
        seeding: undefined,
        resyncing: undefined,
        toldBans: undefined,
        verifying: undefined,
        verifyAgain: false,
        rulesChanges: 0,
      };
      room = created;
      this.rooms.set(key, room);
      // Subscribed before the rules are read: a change made meanwhile is heard, then applied.
      room.unsubscribe = this.deps.broker.subscribe(topicOf(key), (payload) =>
        this.onEvent(key, created, payload),
      );
      this.rulesOf(key, room).catch(() => {});
    }
    return room;
  }

  /** The rules of `key`: the cached ones while someone watches here, else read now. */
  private rulesFor(key: string): Promise<RoomRules> {
    const room = this.rooms.get(key);
    if (room?.rules) return Promise.resolve(room.rules);
    return room ? this.rulesOf(key, room) : this.loadRules(key);
  }

  private rulesOf(key: string, room: Room<F>): Promise<RoomRules> {
    if (room.rules) return Promise.resolve(room.rules);
    if (room.loading) return room.loading;
    const loading = this.loadRules(key).then(
      (rules) => {
        if (room.loading === loading) {
          room.loading = undefined;
          const heard = room.queued.length;
          for (const event of room.queued) applyRule(rules, event);
          room.queued = [];
          room.rules = rules;
          room.toldBans ??= new Map(rules.bans);
          // Changes heard during the read, applied in the order heard: checked as any change is.
          if (heard > 0) this.verifyRules(key, room);
        }
        return rules;
      },
      (err: unknown) => {
        // The next chat or join reads again; changes queued meanwhile are in what it reads.
        if (room.loading === loading) {
          room.loading = undefined;
          room.queued = [];
        }
        this.deps.log.error({ err, key }, 'reading stream rules failed');
        throw new ChatError('internal_error');
      },
    );
    room.loading = loading;
    return loading;
  }

  private async loadRules(key: string): Promise<RoomRules> {
    const store = this.deps.store;
    const [control, members, bans] = await Promise.all([
      store.getStreamControl(key),
      store.streamMembers(key),
      store.streamBans(key, new Date().toISOString()),
    ]);
    const pinned = control?.pinnedId == null ? null : await this.pinnedChat(key, control.pinnedId);
    return {
      title: control?.title ?? null,
      ownerId: control?.ownerId ?? null,
      moderators: new Set(control?.moderators ?? []),
      slowModeSeconds: control?.slowModeSeconds ?? 0,
      membersOnly: control?.membersOnly ?? false,
      paused: control?.paused ?? false,
      members: new Set(members),
      bans: new Map(bans.map((b) => [b.userId, b.until === null ? null : Date.parse(b.until)])),
      pinned,
    };
  }

  private async welcome(
    key: string,
    room: Room<F>,
    viewer: StreamViewer<F>,
    since: string | undefined,
  ): Promise<void> {
    const limits = this.deps.limits;
    let history: StreamMessage[] = [];
    let gap = false;
    /** The chat the history starts after; undefined: the newest chats. */
    let resumed = since;
    try {
      await this.rulesOf(key, room);
      const seeded = await this.seeded(key, room);
      if (seeded === 'ready') {
        const joining = room.joining.get(viewer);
        // It left meanwhile, or the stream ended.
        if (!joining || this.rooms.get(key) !== room) return;
        if (this.welcomeFromCache(key, room, viewer, since, joining)) return;
      }
      // Chats published before this viewer joined may still wait for their
      // batch, on this node or another: stored first, they are in the history
      // read below. Unconfirmed in time, the history is flagged as a gap.
      const reads = since !== undefined || limits.streamHistoryOnJoin > 0;
      const settled = reads && seeded !== 'unsettled' && (await this.settled(key));
      if (reads && !settled) gap = true;
      if (since !== undefined) {
        // A malformed id names no chat and is not asked for: the store might
        // not even take it (U+0000 in PostgreSQL).
        const wellFormed = isObjectId(since);
        const r = await this.deps.store.streamRecent(key, {
          ...(wellFormed ? { after: since } : {}),
          limit: limits.historyMaxPage,
        });
        const known = wellFormed && r.known;
        history = r.messages;
        // An id this stream never had: the usual join history, flagged as a gap.
        if (!known) resumed = undefined;
        gap ||= r.more || !known;
      } else if (limits.streamHistoryOnJoin > 0) {
        history = await this.newestStored(key, room.joining.get(viewer));
      }
      // A broker that did not answer the settle would not answer this either.
      if (settled) await this.caughtUp();
    } catch (err) {
      if (!(err instanceof ChatError))
        this.deps.log.error({ err, key }, 'reading stream history failed');
      gap = true;
    }
    const joining = room.joining.get(viewer);
    // It left meanwhile, or the stream ended.
    if (!joining || this.rooms.get(key) !== room) return;
    this.deps.metrics.streamHistory.inc({ source: 'store' });
    this.admitJoined(key, room, viewer, joining, history, resumed, gap);
  }

  /**
   * The newest STREAM_HISTORY_ON_JOIN chats in the store, with room for the
   * held chats it may have too (they are taken out when the viewer is
   * admitted). Chats heard during the read can push the ones before the
   * join out of it: then it reads once more, with room for those.
   */
  private async newestStored(
    key: string,
    joining: Joining<F> | undefined,
  ): Promise<StreamMessage[]> {
    const onJoin = this.deps.limits.streamHistoryOnJoin;
    const heldBefore = heldChats(joining);
    const r = await this.deps.store.streamRecent(key, { limit: onJoin + heldBefore });
    const heldAfter = heldChats(joining);
    if (heldAfter === heldBefore || !r.more) return r.messages;
    return (await this.deps.store.streamRecent(key, { limit: onJoin + heldAfter })).messages;
  }

  /**
   * Admits a viewer whose live frames were held while its history was read,
   * and sends it the history, then every held frame in the broker's order.
   * The history is what came before the held chats: one the read found too
   * is taken out of it (it goes out live, in its place). Not "everything up
   * to the last one found": with several nodes, a chat another node accepted
   * earlier may be stored after a later one. And not the newest found: when
   * more chats were heard during the read than the history holds, they would
   * push out the chats before the join, and go out before older held ones.
   */
  private admitJoined(
    key: string,
    room: Room<F>,
    viewer: StreamViewer<F>,
    joining: Joining<F>,
    found: StreamMessage[],
    since: string | undefined,
    gap: boolean,
  ): void {
    const held = new Set<string>();
    for (const h of joining.held) if (h.id !== null) held.add(h.id);
    let history = held.size === 0 ? found : found.filter((m) => !held.has(m.id));
    const onJoin = this.deps.limits.streamHistoryOnJoin;
    if (since === undefined) history = onJoin > 0 ? history.slice(-onJoin) : [];
    room.joining.delete(viewer);
    this.admit(key, room, viewer);
    viewer.welcome(this.infoOf(key, room), history, gap || joining.overflow);
    for (const h of joining.held) viewer.deliver(h.frame);
  }

  /**
   * Welcomes `viewer` with a history from the cache, in this turn, or returns
   * false when the cache cannot answer. Every chat heard so far is in the
   * cache, so held chats are either in this history or older than it: only
   * the other held frames (deletions, moderation, settings) go out after it.
   */
  private welcomeFromCache(
    key: string,
    room: Room<F>,
    viewer: StreamViewer<F>,
    since: string | undefined,
    joining: Joining<F> | undefined,
  ): boolean {
    const recent = this.recent.get(key);
    if (!recent?.ready) return false;
    const onJoin = this.deps.limits.streamHistoryOnJoin;
    // Held chats are in the cache too, and taken out of the history again.
    const newest = Math.min(onJoin + heldChats(joining), this.deps.limits.historyMaxPage);
    const history =
      since !== undefined ? recent.after(since) : onJoin > 0 ? recent.newest(newest) : [];
    if (history === undefined) return false;
    this.recent.touch(key, recent);
    this.deps.metrics.streamHistory.inc({ source: 'cache' });
    if (joining) this.admitJoined(key, room, viewer, joining, history, since, false);
    else {
      this.admit(key, room, viewer);
      viewer.welcome(this.infoOf(key, room), history, false);
    }
    return true;
  }

  /** Adds a viewer to the audience, before its `stream` frame goes out. */
  private admit(key: string, room: Room<F>, viewer: StreamViewer<F>): void {
    room.viewers.add(viewer);
    // The first viewer here hears the count in its own `stream` frame; only changes go out later.
    if (room.sentViewers === -1) room.sentViewers = this.viewersOf(key);
  }

  /**
   * Whether the stream's cache can answer, seeding it from the store first
   * when it is cold. The room is subscribed already: what is heard during the
   * read is merged in.
   */
  private seeded(key: string, room: Room<F>): Seeded | Promise<Seeded> {
    if (!this.recent.enabled) return 'cold';
    const recent = this.recent.get(key);
    if (recent?.ready) return 'ready';
    if (recent && room.seeding?.recent === recent) return room.seeding.done;
    const opened = this.recent.open(key);
    const done = this.seed(key, room, opened);
    room.seeding = { recent: opened, done };
    return done;
  }

  private async seed(key: string, room: Room<F>, recent: RecentChats): Promise<Seeded> {
    let outcome: Seeded = 'cold';
    try {
      // Chats published before the subscription took effect, by any node, are
      // stored first; those published after it are heard and merged in.
      if (!(await this.settled(key))) outcome = 'unsettled';
      else {
        const limit = this.deps.limits.historyMaxPage;
        const r = await this.deps.store.streamRecent(key, { limit });
        // A chat still on its way would be added to the cache a second time, for
        // every later join to see twice: a seed not known to be complete is not kept.
        if (!(await this.caughtUp())) outcome = 'unsettled';
        // Dropped meanwhile: nobody watches here any more, or another stream took its place.
        else if (
          this.rooms.get(key) === room &&
          this.recent.get(key) === recent &&
          recent.seed(r)
        ) {
          return 'ready';
        }
      }
    } catch (err) {
      this.deps.log.error({ err, key }, 'reading stream history failed');
    } finally {
      if (room.seeding?.recent === recent) room.seeding = undefined;
    }
    recent.fail();
    this.recent.drop(key, recent);
    return outcome;
  }

  /**
   * Resolves true once every chat published on `key`'s topic before this call,
   * by any node, is stored (false: not confirmed within STREAM_HISTORY_SETTLE_MS).
   * Asked only once this node's subscription took effect: what comes later is heard.
   */
  private settled(key: string): Promise<boolean> {
    // A SUBSCRIBE that Redis does not answer (stalled, or not up yet) must
    // not hold the join's history past the same bound.
    return this.withinSettle(
      this.deps.broker.subscribed(topicOf(key)).then(() => this.settle.settled()),
    );
  }

  /**
   * Waits, after a read of the store for a history, until every chat the read
   * can have found has been heard here: a chat is published before it is
   * stored, but its publication may still be on its way to this node (or
   * read after the store's answer in the same turn). Heard later, it would be
   * both in the history and live. Bounded as the settle is: false past it,
   * when such a chat may come twice to that one join (a client's
   * de-duplication by id absorbs it), and the cache is not seeded.
   */
  private caughtUp(): Promise<boolean> {
    return this.withinSettle(this.deps.broker.caughtUp().then(() => true));
  }

  /** `wait`'s answer, or false when it fails or takes longer than STREAM_HISTORY_SETTLE_MS. */
  private async withinSettle(wait: Promise<boolean>): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), this.deps.limits.streamHistorySettleMs);
      timer.unref();
    });
    try {
      return await Promise.race([wait, late]);
    } catch {
      return false;
    } finally {
      clearTimeout(timer);
    }
  }

  private infoOf(key: string, room: Room<F>): StreamInfo {
    const rules = room.rules;
    return {
      key,
      title: rules?.title ?? null,
      viewers: this.viewersOf(key),
      slowModeSeconds: rules?.slowModeSeconds ?? 0,
      membersOnly: rules?.membersOnly ?? false,
      paused: rules?.paused ?? false,
      pinned: rules?.pinned ?? null,
    };
  }

  private enqueue(message: StreamMessage): void {
    this.pending.push(message);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(() => void this.flush());
    }
  }

  private async write(batch: StreamMessage[]): Promise<void> {
    try {
      await this.deps.metrics.timeCommit('stream_messages', () =>
        this.deps.store.appendStreamMessages(batch),
      );
    } catch (err) {
      // Already delivered: the chats stay visible to those watching but are
      // missing from stored history. Logged once per batch, with its size.
      this.deps.log.error({ err, count: batch.length }, 'storing stream chats failed');
    } finally {
      this.unstored -= batch.length;
    }
  }

  /**
   * Publishes a change (anything but a chat) and resolves once every node
   * that serves the stream has applied it, so the call that made it answers
   * after that: the next chat of a user just banned, sent through any node,
   * is refused. Every node that hears the change answers its token; PUBLISH
   * says how many heard it. Bounded by STREAM_HISTORY_SETTLE_MS (a node
   * stalled or gone); while the broker is away the change is stored all the
   * same, and every node reads it again once the broker is back.
   */
  private publish(key: string, change: StreamChange): Promise<void> {
    // A rule change holds on this node as soon as the call that made it returns;
    // it is applied again, in the broker's order, when it comes back.
    if (change.kind === 'moderation' || change.kind === 'members' || change.kind === 'control') {
      const room = this.rooms.get(key);
      if (room?.rules) {
        applyRule(room.rules, change);
        room.rulesChanges++;
      }
    }
    const ack = `${this.node}:${++this.changes}`;
    return new Promise<void>((resolve) => {
      const timer = setTimeout(() => applying.done(), this.deps.limits.streamHistorySettleMs);
      timer.unref();
      const applying: Applying = {
        nodes: undefined,
        answers: 0,
        done: () => {
          clearTimeout(timer);
          this.applying.delete(ack);
          resolve();
        },
      };
      this.applying.set(ack, applying);
      this.deps.broker.publishCounted(topicOf(key), JSON.stringify({ ...change, ack })).then(
        (nodes) => {
          applying.nodes = nodes;
          if (applying.answers >= nodes) applying.done();
        },
        () => applying.done(),
      );
    });
  }

  private onApplied(token: string): void {
    const applying = this.applying.get(token);
    if (applying === undefined) return;
    applying.answers++;
    if (applying.nodes !== undefined && applying.answers >= applying.nodes) applying.done();
  }

  /** Tells every node the stream's current settings, title, owner and pin. */
  private async publishControl(key: string): Promise<void> {
    const control = await this.deps.store.getStreamControl(key);
    if (!control) return;
    const pinned = control.pinnedId === null ? null : await this.pinnedChat(key, control.pinnedId);
    await this.publish(key, { kind: 'control', control, pinned });
  }

  /**
   * The pinned chat, as viewers are shown it: none when it is deleted (its
   * deletion unpins it a moment after it is stored, and a read in between
   * must not show it again).
   */
  private async pinnedChat(key: string, id: string): Promise<StreamMessage | null> {
    const chat = await this.deps.store.getStreamMessage(key, id);
    return chat && chat.deletedAt === undefined ? chat : null;
  }

  /** Each node reports its own count; the `stream` frame goes out again when the sum changed. */
  private shareViewers(): void {
    this.reportViewers();
    for (const [key, room] of this.rooms) {
      const viewers = this.viewersOf(key);
      if (viewers !== room.sentViewers && room.rules) {
        room.sentViewers = viewers;
        this.broadcast(
          room,
          this.deps.encodeBroadcast({ type: 'stream', data: this.infoOf(key, room) }),
        );
      }
    }
  }

  private onEvent(key: string, room: Room<F>, payload: string): void {
    const event = parseEvent(payload);
    if (event === undefined) {
      // Another deployment's prefix, or a node of another version: never fatal here.
      this.deps.log.warn({ key, bytes: payload.length }, 'ignored a malformed stream event');
      return;
    }
    this.apply(key, room, event);
    // Answered once applied, also by a node that no longer serves the stream:
    // the node that made the change counted every subscriber.
    const answerTo =
      event.kind === 'chat' || event.ack === undefined ? undefined : ackTopicOf(event.ack);
    if (answerTo !== undefined)
      this.deps.broker.publish(answerTo, (event as StreamChange).ack as string);
  }

  private apply(key: string, room: Room<F>, event: StreamEvent): void {
    if (this.rooms.get(key) !== room) return;
    switch (event.kind) {
      case 'chat': {
        this.recent.get(key)?.add(event.message);
        const frame = this.deps.encode(event.message);
        let delivered = 0;
        for (const viewer of room.viewers) if (viewer.deliver(frame)) delivered++;
        if (room.joining.size > 0) this.hold(room, event.message.id, frame);
        this.deps.metrics.messagesOut.inc({ chat: 'stream' }, delivered);
        const acceptedAt = event.at ?? Date.parse(event.message.sentAt);
        if (delivered > 0 && Number.isFinite(acceptedAt)) this.observeDelivery(acceptedAt);
        return;
      }
      case 'ended': {
        this.closeEnded(key, room);
        return;
      }
      case 'delete': {
        this.recent.get(key)?.remove(event.id);
        if (room.rules?.pinned?.id === event.id) {
          room.rules.pinned = null;
          room.rulesChanges++;
        }
        this.send(room, { type: 'delete', data: { id: event.id, by: event.by } });
        return;
      }
      case 'moderation':
      case 'control':
      case 'members': {
        room.rulesChanges++;
        if (room.rules) applyRule(room.rules, event);
        else if (room.loading) room.queued.push(event);
        if (event.kind === 'moderation') {
          const { action, userId, seconds, by } = event;
          if (room.toldBans) applyModeration(room.toldBans, event);
          this.send(room, {
            type: 'moderation',
            data: seconds === undefined ? { action, userId, by } : { action, userId, seconds, by },
          });
        } else if (event.kind === 'control') {
          room.sentViewers = this.viewersOf(key);
          this.send(room, { type: 'stream', data: this.infoOf(key, room) });
        }
        this.verifyRules(key, room);
        return;
      }
    }
  }

  /** The stream ended: its viewers here are told and closed, and the node forgets it. */
  private closeEnded(key: string, room: Room<F>): void {
    this.rooms.delete(key);
    this.recent.drop(key);
    room.unsubscribe();
    for (const viewer of room.viewers) viewer.streamEnded();
    for (const viewer of room.joining.keys()) viewer.streamEnded();
  }

  /**
   * Some node was cut off from the broker and is back, so rule changes, ends,
   * deletions and chats published meanwhile may not have been heard here (its
   * own were dropped; it missed everyone else's). What this node keeps of the
   * streams watched here is read again from the store: their rules (a
   * `stream` frame goes out where what it shows changed), whether they ended,
   * and their newest chats (forgotten, so the next join reads its history
   * from the store). Chats its viewers were sent and that are deleted now get
   * their `delete` frame.
   */
  private resync(since: number | undefined): void {
    for (const [key, room] of this.rooms) {
      const recent = this.recent.get(key);
      const chats = recent?.ready ? recent.ids() : undefined;
      this.recent.drop(key);
      // A recovery while the last one's read is under way: what was shown
      // before that one still holds, and the earlier `since`.
      // (Rules or chats read since then come from that read: not what was shown.)
      const earlier = room.resyncing;
      room.resyncing = earlier
        ? { ...earlier, since: earliestSince(earlier.since, since) }
        : {
            settings: room.rules ? settingsShown(this.infoOf(key, room)) : undefined,
            chats,
            since,
          };
      // Read again as on a first join: chats and joins wait for the read, and
      // changes heard during it are applied after it.
      room.rules = undefined;
      room.loading = undefined;
      room.queued = [];
      room.rulesChanges++;
      this.reload(key, room).catch((err: unknown) =>
        this.deps.log.error({ err, key }, 'reading stream rules again failed'),
      );
    }
  }

  private async reload(key: string, room: Room<F>): Promise<void> {
    const [stream] = await Promise.all([
      this.deps.store.getStream(key),
      // A failed read is logged there; the next chat or join reads again.
      this.rulesOf(key, room).catch(() => {}),
    ]);
    if (this.rooms.get(key) !== room) return;
    if (stream?.endedAt != null) {
      this.closeEnded(key, room);
      return;
    }
    const shown = room.resyncing;
    // Another read (a later recovery's) took over, and compares when it is done.
    if (shown === undefined || room.rules === undefined) return;
    room.resyncing = undefined;
    if (shown.settings !== undefined) this.announceIfChanged(key, room, shown.settings);
    // One room at a time, so that a recovery does not crowd the store; each
    // part on its own, so that a failed read does not keep back the other.
    const resend = async () => {
      if (this.rooms.get(key) !== room) return;
      const done = await Promise.allSettled([
        this.resendDeletions(key, room, shown),
        this.resendBans(key, room),
      ]);
      for (const r of done) {
        if (r.status === 'rejected') {
          this.deps.log.error({ err: r.reason, key }, 'sending missed stream changes failed');
        }
      }
    };
    this.resending = this.resending.then(resend);
    await this.resending;
  }

  /**
   * Reads the stream's rules again after a change to them was heard, and
   * corrects what this node holds where the store differs, telling its
   * viewers (a `stream` frame, `moderation` frames) as after a Redis outage.
   * Each change is published after it commits, so two moderators' changes
   * (a ban and an unban of one user, two settings) can be heard in the other
   * order than they were stored, and every node would go on enforcing the
   * older one. One read at a time per room; a change heard during a read
   * asks for one more after it, so the last read begins after every change
   * heard and what is held ends as what is stored.
   */
  private verifyRules(key: string, room: Room<F>): void {
    if (room.verifying) {
      room.verifyAgain = true;
      return;
    }
    room.verifying = (async () => {
      do {
        room.verifyAgain = false;
        // A moment after the change: the changes of a burst (a raid's bans)
        // are read once, and one stored with it is heard by then, not only read.
        await sleep(RULES_CHECK_DELAY_MS);
        if (this.rooms.get(key) !== room) break;
        try {
          await this.correctRules(key, room);
        } catch (err) {
          this.deps.log.error({ err, key }, 'checking stream rules against the store failed');
        }
      } while (room.verifyAgain && this.rooms.get(key) === room);
      room.verifying = undefined;
    })();
  }

  private async correctRules(key: string, room: Room<F>): Promise<void> {
    const changes = room.rulesChanges;
    const fresh = await this.loadRules(key);
    if (this.rooms.get(key) !== room || room.rules === undefined) return;
    // Changed in memory during the read: what was read may be older; read again.
    if (room.rulesChanges !== changes) {
      room.verifyAgain = true;
      return;
    }
    const shown = settingsShown(this.infoOf(key, room));
    room.rules = fresh;
    this.announceIfChanged(key, room, shown);
    await this.resendBans(key, room);
  }

  /** Sends the `stream` frame when what it shows is no longer `shown` (see `settingsShown`). */
  private announceIfChanged(key: string, room: Room<F>, shown: string): void {
    const info = this.infoOf(key, room);
    if (settingsShown(info) === shown) return;
    room.sentViewers = info.viewers;
    this.send(room, { type: 'stream', data: info });
  }

  /**
   * Sends a `moderation` frame for each user whose ban or timeout in the
   * store differs from what the viewers here were told: `ban` or `timeout`
   * (its `seconds` and `by` from the store) for one in force, `unban` (its
   * `by` from the moderation log) for one lifted. A timeout that ran out
   * meanwhile sends nothing, as it sends nothing live.
   */
  private async resendBans(key: string, room: Room<F>): Promise<void> {
    const told = room.toldBans;
    const rules = room.rules;
    if (told === undefined || rules === undefined) return;
    const now = Date.now();
    const inForce = (until: number | null | undefined) =>
      until !== undefined && (until === null || until > now);
    const put = new Set<string>();
    const lifted: string[] = [];
    for (const [userId, until] of rules.bans) {
      if (inForce(until) && told.get(userId) !== until) put.add(userId);
    }
    for (const [userId, until] of told) {
      if (inForce(until) && !inForce(rules.bans.get(userId))) lifted.push(userId);
    }
    if (put.size === 0 && lifted.length === 0) return;
    const store = this.deps.store;
    const [bans, log] = await Promise.all([
      put.size > 0 ? store.streamBans(key, new Date(now).toISOString()) : [],
      lifted.length > 0
        ? store.moderationLog(key, { limit: this.deps.limits.historyPage })
        : undefined,
    ]);
    // A later recovery's read took over (it compares again), or nobody watches here now.
    if (this.rooms.get(key) !== room || room.rules !== rules || room.toldBans !== told) return;
    for (const ban of bans) {
      const until = ban.until === null ? null : Date.parse(ban.until);
      // Changed again since the comparison, or told live meanwhile.
      const current = rules.bans.get(ban.userId);
      if (!put.has(ban.userId) || current !== until || told.get(ban.userId) === until) {
        continue;
      }
      const { userId, by } = ban;
      this.send(room, {
        type: 'moderation',
        data:
          until === null
            ? { action: 'ban', userId, by }
            : {
                action: 'timeout',
                userId,
                seconds: Math.round((until - Date.parse(ban.at)) / 1000),
                by,
              },
      });
      recordBan(told, userId, until);
    }
    for (const userId of lifted) {
      if (!inForce(told.get(userId)) || inForce(rules.bans.get(userId))) continue;
      const unban = log?.actions.find((a) => a.action === 'unban' && a.userId === userId);
      this.send(room, {
        type: 'moderation',
        data: { action: 'unban', userId, by: unban?.by ?? '' },
      });
      told.delete(userId);
    }
  }

  /**
   * Sends `delete` for the chats deleted while publications were missed: of
   * the newest HISTORY_MAX_PAGE chats in the store, each deleted one that
   * this node's memory of the stream still held (its viewers were sent it,
   * and no deletion of it was heard). With that memory cold, each one deleted
   * since `shown.since` (some may have been heard already; a `delete` frame
   * repeated removes nothing more).
   */
  private async resendDeletions(key: string, room: Room<F>, shown: Shown): Promise<void> {
    const { chats, since } = shown;
    if (chats === undefined && since === undefined) return;
    if (chats !== undefined && chats.size === 0) return;
    const page = await this.deps.store.streamHistory(key, {
      limit: this.deps.limits.historyMaxPage,
    });
    if (this.rooms.get(key) !== room) return;
    for (const m of page.messages) {
      if (m.deletedAt === undefined) continue;
      const missed =
        chats !== undefined
          ? chats.has(m.id)
          : since !== undefined && Date.parse(m.deletedAt) >= since;
      if (missed) this.send(room, { type: 'delete', data: { id: m.id, by: m.deletedBy ?? '' } });
    }
  }

  /**
   * Delivery latency, once per chat rather than per viewer, to keep the fan-out
   * loop as it is. Observed at the end of the turn: the transport writes what
   * it corked for this turn first (its callback was queued before this one).
   */
  private observeDelivery(acceptedAt: number): void {
    if (this.deliveredThisTurn.length === 0) setImmediate(this.observeTurn);
    this.deliveredThisTurn.push(acceptedAt);
  }

  private readonly observeTurn = (): void => {
    const now = preciseNow();
    for (const at of this.deliveredThisTurn) {
      // Clocks of two nodes may disagree by a little: never a negative latency.
      this.deps.metrics.deliveryLatency.observe({ chat: 'stream' }, Math.max(0, now - at) / 1000);
    }
    this.deliveredThisTurn = [];
  };

  private send(room: Room<F>, broadcast: StreamBroadcast): void {
    const frame = this.deps.encodeBroadcast(broadcast);
    this.broadcast(room, frame);
    if (room.joining.size > 0) this.hold(room, null, frame);
  }

  private broadcast(room: Room<F>, frame: F): void {
    for (const viewer of room.viewers) viewer.deliver(frame);
  }

  /** Holds a live frame for each joining viewer; the oldest go once HISTORY_MAX_PAGE are held. */
  private hold(room: Room<F>, id: string | null, frame: F): void {
    const max = this.deps.limits.historyMaxPage;
    for (const joining of room.joining.values()) {
      if (joining.held.length >= max) {
        joining.held.shift();
        joining.overflow = true;
      }
      joining.held.push({ id, frame });
    }
  }
}

/** A change this node published, waiting for every node that heard it to apply it. */
interface Applying {
  /** How many nodes heard it; undefined until PUBLISH has answered. */
  nodes: number | undefined;
  answers: number;
  done: () => void;
}

/** What a `stream` frame shows of a stream's settings, title and pin, to tell a change. */
function settingsShown(info: StreamInfo): string {
  const { viewers: _, ...shown } = info;
  return JSON.stringify(shown);
}

/** How many of the frames held for a joining viewer are chats. */
function heldChats(joining: Joining<unknown> | undefined): number {
  let n = 0;
  for (const h of joining?.held ?? []) if (h.id !== null) n++;
  return n;
}

/** Applies a rule change heard on the broker to a node's cached rules. */
/** A ban, timeout or unban heard, in a map of bans: the rules', or what viewers were told. */
function applyModeration(
  bans: Map<string, number | null>,
  event: Extract<StreamEvent, { kind: 'moderation' }>,
): void {
  if (event.action === 'unban') bans.delete(event.userId);
  else recordBan(bans, event.userId, event.until ?? null);
}

function applyRule(rules: RoomRules, event: StreamEvent): void {
  if (event.kind === 'moderation') {
    applyModeration(rules.bans, event);
  } else if (event.kind === 'members') {
    rules.members = new Set(event.userIds);
  } else if (event.kind === 'control') {
    const c = event.control;
    rules.title = c.title;
    rules.ownerId = c.ownerId;
    rules.moderators = new Set(c.moderators);
    rules.slowModeSeconds = c.slowModeSeconds;
    rules.membersOnly = c.membersOnly;
    rules.paused = c.paused;
    rules.pinned = event.pinned;
  }
}
