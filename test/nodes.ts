/**
 * What the multi-node suites do to their charla processes: open stream
 * viewers and request-chat sockets on a given node, and wait for it to be ready.
 */
import { io, type Socket } from 'socket.io-client';
import { type ChildServer, type Frame, StreamClient, userToken } from './helpers.js';

/** The node's WebSocket base URL. */
export const ws = (node: ChildServer) => node.url.replace(/^http/, 'ws');

/** Whether the node answers `/readyz` with 200 (storage and broker reachable, caught up). */
export const ready = async (node: ChildServer) =>
  (await fetch(`${node.url}/readyz`)).status === 200;

/** A viewer of `key` on `node`, signed in as `userId`, past its `history` frame. */
export async function viewer(
  node: ChildServer,
  key: string,
  userId: string,
): Promise<StreamClient> {
  const c = await StreamClient.connect(ws(node), key, { token: await userToken(userId) });
  await c.next('history');
  return c;
}

/** The answer to `c`'s chat `text`: its echo, or the error refusing it. */
export async function answerTo(c: StreamClient, text: string): Promise<Frame> {
  c.chat(text);
  for (;;) {
    const f = await c.next(undefined, 5_000);
    if (f.type === 'error' || (f.type === 'chat' && f.data.message === text)) return f;
  }
}

/** A request-chat socket on `node`, connected, recording every event it receives. */
export async function requestSocket(
  node: ChildServer,
  token: string,
): Promise<{
  socket: Socket;
  events: Array<[string, any]>;
  of: (event: string) => any[];
}> {
  const socket = io(node.url, { auth: { token }, transports: ['websocket'], reconnection: false });
  const events: Array<[string, any]> = [];
  socket.onAny((event: string, payload: unknown) => events.push([event, payload]));
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('connect_error', reject);
  });
  const of = (event: string) => events.filter(([e]) => e === event).map(([, p]) => p);
  return { socket, events, of };
}

/** An event with an acknowledgement, answered within 5 s. */
export const ask = (socket: Socket, event: string, payload: unknown): Promise<any> =>
  socket.timeout(5_000).emitWithAck(event, payload);
