/** The measurement window every load-generator scenario shares. */

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface Window {
  windowMs: number;
  /** This generator's own CPU use over the window (100 = one core). */
  cpuPercent: number;
}

/**
 * Lets the warm-up pass, then measures for `durationMs`, telling the parent
 * when the window opens and closes (it samples the server's CPU in between).
 * `onOpen` and `onClose` run right at the edges, for counters of their own.
 */
export async function measureWindow(
  warmupMs: number,
  durationMs: number,
  onOpen: () => void,
  onClose: () => void,
): Promise<Window> {
  await sleep(warmupMs);
  onOpen();
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  process.send?.('window-start');
  await sleep(durationMs);
  process.send?.('window-end');
  onClose();
  const windowMs = performance.now() - t0;
  const used = process.cpuUsage(cpu0);
  return { windowMs, cpuPercent: ((used.user + used.system) / 1000 / windowMs) * 100 };
}
