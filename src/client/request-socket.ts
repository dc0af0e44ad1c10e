/**
 * The Socket.IO connection under `RequestChat`: how it is opened (WebSocket
 * only, the token asked again on every connect) and the wait for its first
 * connection. Reconnecting is `RequestChat`'s own job (request.ts), not the
 * Socket.IO manager's: the manager resets its backoff on every connection, so
 * a server that accepts and then drops would be hit again every half second.
 */
import type { Socket } from 'socket.io-client';
import type { Emitter } from './emitter.js';
import { ChatClientError } from './errors.js';
import type { RequestChatEvents, RequestChatOptions } from './request-types.js';
import type { TokenSource } from './stream.js';

/**
 * Where Socket.IO connects for charla at the base URL `url`: its origin, and
 * `socket.io/` under the URL's path. Socket.IO would take that path for a
 * namespace (charla has only `/`); as for StreamChat, a path is where a
 * reverse proxy serves charla (`https://example.com/chat` → `/chat/socket.io/`).
 */
export function socketTarget(url: string): { origin: string; path: string } {
  const u = new URL(url);
  return { origin: u.origin, path: `${u.pathname.replace(/\/+$/, '')}/socket.io/` };
}

/**
 * Opens the socket to `url`, with the manager's own reconnection off.
 * `token()` is the token source in force at each (re)connect, so `auth()` and
 * token functions take effect on the next one.
 */
export async function openSocket(
  url: string,
  opts: RequestChatOptions,
  token: () => TokenSource,
): Promise<Socket> {
  const io = opts.io ?? (await import('socket.io-client')).io;
  const { origin, path } = socketTarget(url);
  return io(origin, {
    path,
    transports: ['websocket'],
    forceNew: true,
    ...opts.socket,
    reconnection: false,
    // Called on every (re)connect: a token function gives a fresh token each time.
    auth: (cb: (data: object) => void) => {
      const source = token();
      Promise.resolve(typeof source === 'function' ? source() : source).then(
        (value) => cb({ token: value }),
        () => cb({}),
      );
    },
  });
}

/**
 * Resolves once `chat` is connected. Rejects with its first `error` (the
 * server's refusal, `unauthorized` or `token_expired`, or `timeout` once
 * `reconnect.maxAttempts` run out), or with `closed` when `signal` aborts; a
 * server that is not up yet is retried meanwhile.
 */
export function firstConnect(
  chat: Emitter<RequestChatEvents>,
  signal: AbortSignal | undefined,
): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const done = () => {
      offConnect();
      offError();
      signal?.removeEventListener('abort', onAbort);
    };
    const offConnect = chat.once('connect', () => {
      done();
      resolve();
    });
    const offError = chat.once('error', (err) => {
      done();
      reject(err);
    });
    const onAbort = () => {
      done();
      reject(new ChatClientError('closed', 'connect() was aborted.'));
    };
    if (signal?.aborted) onAbort();
    else signal?.addEventListener('abort', onAbort);
  });
}
