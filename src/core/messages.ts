/**
 * The chats' domain types: what a stream chat and a request message are, and
 * how history is paged. The store persists them and the transports encode
 * them; both import them from here.
 */

export interface StreamMessage {
  id: string;
  streamKey: string;
  userId: string;
  username: string;
  message: string;
  sentAt: string;
  /** The poster's role in the stream when they posted: `owner`, `moderator`, or none. */
  badges: StreamBadge[];
  /** Set once a moderator deleted the chat; deleted chats are kept for audit. */
  deletedAt?: string;
  deletedBy?: string;
}

export type StreamBadge = 'owner' | 'moderator';

export interface Receipt {
  userId: string;
  at: string;
}

/** A file shared in a request chat: a link, never the bytes (protocol section 8). */
export interface Attachment {
  url: string;
  name: string;
  contentType: string;
  size: number;
}

/** protocol section 3 `Message`, with section 8's attachments, edits and deletions. */
export interface RequestMessage {
  _id: string;
  requestId: string;
  sender: { id: string; username: string; role: string | null };
  message: string;
  createdAt: string;
  attachments: Attachment[];
  /** Present once the sender has edited it. */
  editedAt?: string;
  /** Present once deleted; the text and attachments are then gone. */
  deletedAt?: string;
  deliveredTo: Receipt[];
  readBy: Receipt[];
}

export type NewRequestMessage = Omit<
  RequestMessage,
  'deliveredTo' | 'readBy' | 'attachments' | 'editedAt' | 'deletedAt'
> & {
  /** None when absent. */
  attachments?: Attachment[];
  clientMessageId: string | null;
};

/** A change to a stored message by its sender: new text, or its deletion. */
export type MessageChange = { message: string; editedAt: string } | { deletedAt: string };

/**
 * What a stored or deleted message did to the unread counts of a request:
 * enough to tell each user who may act in it their own count, with no
 * further query. A user with no entry in `readers` has neither sent nor read
 * anything there, so their unread count is `messageCount`.
 */
export interface RequestActivity {
  requestId: string;
  ownerId: string;
  /** Messages of the request, deleted ones left out. */
  messageCount: number;
  lastMessage: RequestMessage | null;
  readers: Array<{ userId: string; unread: number }>;
}

/** One line of a user's inbox (protocol section 8 `listRequests`). */
export interface RequestSummary {
  requestId: string;
  ownerId: string;
  lastMessage: RequestMessage | null;
  unread: number;
  updatedAt: string;
}

export interface InboxQuery {
  userId: string;
  /** A teacher's inbox: only requests this user owns. Absent: the lab's, every request with messages. */
  ownerId?: string | undefined;
  /** A request id: only requests with older activity than it. */
  before?: string | undefined;
  limit: number;
}

export interface UnreadTotals {
  total: number;
  /** Requests with unread messages, most recent activity first, at most the limit asked. */
  requests: Array<{ requestId: string; unread: number }>;
}

export type ReceiptKind = 'delivered' | 'read';

export interface Page<T> {
  /** Oldest first. */
  messages: T[];
  /** True when older messages exist before the first one returned. */
  hasMore: boolean;
}

export interface PageQuery {
  /** A message id: return only messages stored before it. */
  before?: string | undefined;
  limit: number;
}
