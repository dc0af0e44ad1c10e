/**
 * The Socket.IO connection under `RequestChat`: how it is opened (WebSocket
 * only, the reconnect backoff, the token asked again on every connect) and
 * the wait for its first connection.
 */
import type { Socket } from 'socket.io-client';
import { ChatClientError } from './errors.js';
import type { RequestChatOptions } from './request-types.js';
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
 * Opens the socket to `url`. `token()` is the token source in force at each
 * (re)connect, so `auth()` and token functions take effect on the next one.
 */
export async function openSocket(
  url: string,
  opts: RequestChatOptions,
  token: () => TokenSource,
): Promise<Socket> {
  const io = opts.io ?? (await import('socket.io-client')).io;
  const r = opts.reconnect ?? {};
  const { origin, path } = socketTarget(url);
  return io(origin, {
    path,
    transports: ['websocket'],
    forceNew: true,
    reconnection: true,
    reconnectionDelay: r.initialDelayMs ?? 500,
    reconnectionDelayMax: r.maxDelayMs ?? 10_000,
    randomizationFactor: r.jitter ?? 0.5,
    reconnectionAttempts: r.maxAttempts ?? Number.POSITIVE_INFINITY,
    ...opts.socket,
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
 * Resolves once `socket` is connected. Rejects with the server's refusal
 * (`unauthorized`, `token_expired`: retrying the same token cannot help), or
 * with `timeout` once `reconnect.maxAttempts` run out; a server that is not up
 * yet is retried meanwhile.
 */
export function firstConnect(socket: Socket): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const done = () => {
      socket.off('connect', onConnect);
      socket.off('connect_error', onError);
      socket.io.off('reconnect_failed', onGiveUp);
    };
    const onConnect = () => {
      done();
      resolve();
    };
    const onError = (err: Error) => {
      // `active` is false when the server refused the handshake.
      if (socket.active) return;
      done();
      reject(new ChatClientError(err.message || 'unauthorized', err.message));
    };
    const onGiveUp = () => {
      done();
      reject(new ChatClientError('timeout', 'Could not connect (reconnect.maxAttempts).'));
    };
    socket.once('connect', onConnect);
    socket.on('connect_error', onError);
    socket.io.once('reconnect_failed', onGiveUp);
  });
}
