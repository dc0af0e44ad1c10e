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

/** CONTRACT section 3 `Message`. */
export interface RequestMessage {
  _id: string;
  requestId: string;
  sender: { id: string; username: string; role: string | null };
  message: string;
  createdAt: string;
  deliveredTo: Receipt[];
  readBy: Receipt[];
}

export type NewRequestMessage = Omit<RequestMessage, 'deliveredTo' | 'readBy'> & {
  clientMessageId: string | null;
};

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
