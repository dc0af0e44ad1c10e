/**
 * Ending a Redis connection on shutdown, whatever state Redis is in. Kept
 * apart from `redis.ts` so that `app.ts` can use it without loading ioredis
 * on a node that has no Redis.
 */
import type { Redis } from 'ioredis';

/**
 * How long QUIT may wait for its answer. Redis answers it after every
 * command sent before it, so a Redis that answers lets those complete; one
 * that stopped answering must not hold the node's shutdown.
 */
const QUIT_TIMEOUT_MS = 1_000;

/**
 * QUIT when connected, for at most QUIT_TIMEOUT_MS; then, or when not
 * connected, disconnect. Commands still waiting fail then: whoever sent
 * them must handle that.
 */
export async function endConnection(conn: Redis): Promise<void> {
  if (conn.status === 'ready') {
    let timer: NodeJS.Timeout | undefined;
    const answered = await Promise.race([
      conn.quit().then(
        () => true,
        () => false,
      ),
      new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(false), QUIT_TIMEOUT_MS);
      }),
    ]);
    clearTimeout(timer);
    if (answered) return;
  }
  conn.disconnect();
}
