/**
 * What the server sends, as the client sees it (protocol sections 2, 3, 7 and
 * 8). Extra fields a newer server adds pass through untouched.
 */

/** A live-stream chat (`chat` frame data, and the entries of a `history` frame). */
export interface StreamChatMessage {
  id: string;
  user: string;
  message: string;
  userId: string;
  sentAt: string;
  /** `["owner"]`, `["moderator"]` or `[]` on servers with moderation. */
  badges?: string[];
}

/** The `stream` frame: the stream's state, sent on join and whenever it changes. */
export interface StreamState {
  key: string;
  title: string;
  viewers: number;
  slowModeSeconds: number;
  membersOnly: boolean;
  paused: boolean;
  pinned: StreamChatMessage | null;
}

export interface StreamHistory {
  /** Chats not seen before on this client, oldest first. */
  messages: StreamChatMessage[];
  /**
   * More chats were missed than the server returns: some are lost to this
   * client. Also set after a drop before any chat was seen (nothing to resume
   * from): the server's newest chats may not be all that were missed.
   */
  gap: boolean;
  /** True when this history follows a reconnect, false on the first join. */
  resumed: boolean;
}

export interface StreamDelete {
  id: string;
  by: string;
}

export interface StreamModeration {
  action: 'timeout' | 'ban' | 'unban';
  userId: string;
  seconds?: number;
  by: string;
}

/** A moderator frame (protocol section 7), as `StreamChat.moderate()` sends it. */
export type StreamModerationRequest =
  | { type: 'delete'; id: string }
  | { type: 'timeout'; userId: string; seconds: number; reason?: string }
  | { type: 'ban' | 'unban'; userId: string; reason?: string }
  | { type: 'settings'; slowModeSeconds?: number; membersOnly?: boolean; paused?: boolean }
  | { type: 'pin'; id: string | null };

export interface Receipt {
  userId: string;
  at: string;
}

export interface Attachment {
  url: string;
  name: string;
  contentType: string;
  size: number;
}

/** protocol section 3 `Message`, with the section 8 additions. */
export interface RequestMessage {
  _id: string;
  requestId: string;
  sender: { id: string; username: string; role: string | null };
  message: string;
  createdAt: string;
  deliveredTo: Receipt[];
  readBy: Receipt[];
  attachments?: Attachment[];
  editedAt?: string;
  deletedAt?: string;
}

export interface ReceiptEvent {
  requestId: string;
  userId: string;
  messages: string[];
  at: string;
}

export interface RoomHistory {
  requestId: string;
  /** Every message this client holds for the room, oldest first, de-duplicated. */
  messages: RequestMessage[];
  /** Older messages exist before the first one. */
  hasMore: boolean;
  /**
   * Messages this history added that the client had not seen (after a
   * re-join, those emitted as `message`); one deleted before the client saw
   * it is held in `messages` but is not here.
   */
  added: RequestMessage[];
  /** True when the room was joined again after a reconnect. */
  rejoined: boolean;
  /**
   * RequestChat: true when more messages were missed than the re-join's
   * catch-up fetched (`catchUpPages`). The messages held from before are then
   * dropped, so `messages` has no hole; older ones come with `loadHistory`.
   */
  gap: boolean;
}

export interface TypingEvent {
  requestId: string;
  userId: string;
  username: string;
}

export interface MessageDeletedEvent {
  requestId: string;
  messageId: string;
  deletedAt: string;
}

export interface InboxEntry {
  requestId: string;
  ownerId: string;
  lastMessage: RequestMessage | null;
  unread: number;
  updatedAt: string;
}

export interface Inbox {
  requests: InboxEntry[];
  hasMore: boolean;
}

export interface RequestUpdatedEvent {
  requestId: string;
  lastMessage: RequestMessage | null;
  unread: number;
}

/** The `exception` event: a refused Socket.IO event. */
export interface RequestException {
  event: string;
  error_code: string;
  message: string;
  requestId?: string;
  retry_after_ms?: number;
}
