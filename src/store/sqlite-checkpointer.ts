/**
 * A worker thread that checkpoints the SQLite WAL of the main connection.
 *
 * SQLite's automatic checkpoint runs inside whichever commit crosses the WAL
 * size limit, fsyncs there, and so stalls charla's event loop for as long as
 * the disk takes. Here the same work happens on a connection of its own in
 * this thread; PASSIVE checkpoints never wait for, or block, the writer.
 */
import { parentPort, workerData } from 'node:worker_threads';
import Database from 'better-sqlite3';

const { path, intervalMs } = workerData as { path: string; intervalMs: number };
const db = new Database(path);
db.pragma('busy_timeout = 1000');

const timer = setInterval(() => {
  try {
    db.pragma('wal_checkpoint(PASSIVE)');
  } catch {
    // Busy or briefly locked: the next tick tries again.
  }
}, intervalMs);

parentPort?.on('message', (message) => {
  if (message !== 'stop') return;
  clearInterval(timer);
  db.close();
  // Nothing is left to keep the thread alive: it exits, and the store's close() resolves.
  parentPort?.close();
});
