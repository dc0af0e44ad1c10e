/**
 * The requests of one HTTP connection, answered one after the other. Node
 * hands a handler every request of a read at once, pipelined ones too, and
 * queues their answers: a client that sends a hundred requests for history
 * pages in one write, and never reads, would have the server build and hold
 * a hundred pages. Here a connection's next request is handled only once the
 * answer before it has been handed to the network, at most `PIPELINED_MAX`
 * wait their turn (past it the connection is cut), and a connection that
 * closes drops what waited. An answer the client does not take is cut after
 * HTTP_RESPONSE_TIMEOUT_SECONDS (`cutUntaken`), and with it the connection.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';

/** Requests of one connection waiting for the answer before them; more cut the connection. */
export const PIPELINED_MAX = 32;

interface Turns {
  busy: boolean;
  waiting: Array<() => void>;
}

const turnsOf = new WeakMap<Socket, Turns>();

/**
 * Runs `handle` for this request once every earlier request of its
 * connection has been answered and that answer taken, then arms `cutUntaken`.
 */
export function inTurn(
  req: IncomingMessage,
  res: ServerResponse,
  handle: () => Promise<void>,
  responseTimeoutMs: number,
): void {
  const socket = req.socket;
  let turns = turnsOf.get(socket);
  if (turns === undefined) {
    const created: Turns = { busy: false, waiting: [] };
    turnsOf.set(socket, created);
    socket.once('close', () => {
      created.waiting.length = 0;
    });
    turns = created;
  }
  const own = turns;
  const run = () => {
    own.busy = true;
    // `handle` answers its own errors; one thrown while answering ends the connection.
    void handle()
      .catch(() => res.destroy())
      .finally(() => {
        cutUntaken(res, responseTimeoutMs);
        let passed = false;
        const next = () => {
          if (passed) return;
          passed = true;
          own.busy = false;
          if (!socket.destroyed) own.waiting.shift()?.();
        };
        if (res.writableFinished || res.destroyed) next();
        else {
          res.once('finish', next);
          res.once('close', next);
        }
      });
  };
  if (!own.busy) run();
  else if (own.waiting.length < PIPELINED_MAX) own.waiting.push(run);
  else socket.destroy();
}

/**
 * Cuts the connection of a response the peer has not taken within `ms` of
 * its end (called once the handler is done with it). Node reads no further
 * requests of a connection while a response waits to be written, and times
 * nothing out then: a client that pipelines requests and never reads would
 * otherwise hold its connection, and what its response left in memory, for
 * as long as it likes. The handler's own time (a slow store) does not count.
 */
function cutUntaken(res: ServerResponse, ms: number): void {
  if (res.writableFinished || res.destroyed) return;
  const timer = setTimeout(() => res.destroy(), ms);
  timer.unref();
  const done = () => clearTimeout(timer);
  res.once('finish', done);
  res.once('close', done);
}
